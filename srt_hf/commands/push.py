"""`srt-hf push RUN_DIR --repo-id ID [--space ID]`: publish a run folder as a Hub dataset with its card and report,
and/or its report as a static Hugging Face Space.

    srt-hf push runs/demo-srt --repo-id me/demo-srt --license apache-2.0             # data + card + report.html
    srt-hf push runs/demo-srt --space me/demo-srt-report --license apache-2.0        # the report as a static Space
    srt-hf push runs/demo-srt --repo-id me/demo-srt --space me/demo-srt-report --dry-run

With both, the Space is published first so the dataset card links it, and the Space links the dataset.
A push writes the card (README.md, images/) and report.html into the run folder, then uploads the folder's
documented outputs; every other file in the repo is deleted in the same commit, so a re-push leaves exactly
the run's files. --dry-run renders them in a temporary folder instead and changes no file.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("push", help="Publish a run folder (data, dataset card, report) and/or its report as a Space.",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="Output folder of `srt-hf recycle` or `srt-hf select`.")
    p.add_argument("--repo-id", default=None, help="Dataset repo on the Hub: owner/name (created if missing).")
    p.add_argument("--space", default=None, metavar="OWNER/NAME",
                   help="Publish the run's report.html as a static Space (sdk: static) under this id "
                   "(created if missing).")
    p.add_argument("--private", action="store_true", default=None,
                   help="Create the repos private (default: the Hub's default, public).")
    p.add_argument("--revision", default=None, help="Branch to upload to (created if missing; default: main).")
    p.add_argument("--license", default=None, help="License id of the data, when run.json does not record the source's (e.g. cc-by-nc-4.0).")
    p.add_argument("--dry-run", action="store_true",
                   help="List what would be uploaded, with the card and report rendered in a temporary folder; "
                   "upload nothing and change no file.")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from .. import hub
    from ..errors import ConfigError

    if not (args.repo_id or args.space):
        raise ConfigError("nothing to publish: pass --repo-id OWNER/NAME (the dataset), --space OWNER/NAME "
                          "(the report as a static Space), or both")
    if args.dry_run:
        return _dry_run(args)
    if args.space:
        url = hub.push_space(args.run_dir, args.space, private=args.private, revision=args.revision,
                             license=args.license, dataset_repo_id=args.repo_id)
        print(f"\nsrt-hf push: {args.run_dir} report -> {url}")
    if args.repo_id:
        url = hub.push_dataset(args.run_dir, args.repo_id, private=args.private, revision=args.revision,
                               license=args.license)
        print(f"\nsrt-hf push: {args.run_dir} -> {url}")
    return 0


def _dry_run(args: argparse.Namespace) -> int:
    from .. import hub

    branch = f" (branch {args.revision})" if args.revision else ""
    with tempfile.TemporaryDirectory(prefix="srt-hf-push-") as tmp:
        targets = []
        if args.space:
            license = args.license or hub.run_license(args.run_dir)
            staged = hub.prepare_space_folder(args.run_dir, Path(tmp) / "space", space_id=args.space, license=license,
                                              dataset_repo_id=args.repo_id)
            targets.append((f"static Space {args.space}", staged))
        if args.repo_id:
            staged = hub.prepare_dataset_folder(args.run_dir, Path(tmp) / "data" / args.run_dir.resolve().name,
                                                repo_id=args.repo_id, license=args.license)
            targets.append((f"dataset repo {args.repo_id}", staged))
        for what, staged in targets:
            files = sorted(p for p in staged.rglob("*") if p.is_file())
            print(f"\nsrt-hf push --dry-run: would upload {len(files)} files to {what}{branch}\n")
            print(_table([(str(p.relative_to(staged)), _size(p.stat().st_size)) for p in files]))
            print("(any other file in the repo would be deleted, .gitattributes excepted)")
    if not (args.license or hub.run_license(args.run_dir)):
        print("\nnote: the data's license is unknown; pass --license ID to push.")
    return 0


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _table(rows: list[tuple[str, str]]) -> str:
    width = max([len(r[0]) for r in rows] + [4])
    lines = [f"{'file':<{width}}  size", f"{'-' * width}  ----"]
    lines += [f"{name:<{width}}  {size}" for name, size in rows]
    return "\n".join(lines)
