"""Publishing to the Hugging Face Hub. Every upload of srt-hf goes through :func:`upload`.

Keeping the one call to ``HfApi.create_repo`` + ``HfApi.upload_folder`` here lets tests replace it
and check what would be uploaded, and gives every caller the same offline check and error messages.
A run folder is uploaded in place: ``allow_patterns`` name the documented outputs, ``ignore_patterns`` the
leftovers of a killed run, and ``delete_patterns`` remove from the repo every file the push does not
upload, so a re-push leaves exactly the run's files. Whether the Hub may be reached is huggingface_hub's
own answer (``HF_HUB_OFFLINE``, read by ``huggingface_hub.constants.is_offline_mode``).
Tokens come from ``hf auth login`` / ``HF_TOKEN`` through huggingface_hub and are never printed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from . import PROJECT_URL
from .errors import ConfigError, InputError, SrtHfError
from .locks import output_lock
from .runs import CARD, IMAGES, META, NOT_UPLOADED, REPORT, ROWS, SFT, UPLOADED, read_meta, write_meta

_LOGIN_HINT = "log in with `hf auth login` (or set HF_TOKEN)"
# Every file of the repo that a push does not upload is deleted in the same commit (.gitattributes is always kept).
REPLACE_ALL = ["*"]
# Never uploaded from any folder: hidden files (locks), temporary files, `.parts` folders of a killed run.
LEFTOVERS = [".*", "*/.*", "*.tmp", "*.lock", "*.parts", "*.parts/*"]


class HubError(SrtHfError):
    """The Hub cannot be reached or refused an upload; the message says what to change."""


def check_online() -> None:
    """Raise :class:`HubError` when huggingface_hub is in offline mode, before anything talks to the Hub."""
    from huggingface_hub import constants

    if constants.is_offline_mode():
        raise HubError(
            "HF_HUB_OFFLINE is set, so nothing can be uploaded to the Hub. Unset it (`unset HF_HUB_OFFLINE`) "
            f"and {_LOGIN_HINT}"
        )


def upload(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    repo_type: str,
    private: bool | None = None,
    revision: str | None = None,
    allow_patterns: Sequence[str] | None = None,
    ignore_patterns: Sequence[str] | None = None,
    delete_patterns: Sequence[str] | None = None,
    commit_message: str | None = None,
    space_sdk: str | None = None,
) -> str:
    """Create ``repo_id`` (if needed) and upload ``folder`` to it; returns the URL of the repo (at ``revision``).

    ``repo_type`` is ``"dataset"``, ``"model"`` or ``"space"`` (then ``space_sdk``, e.g. ``"static"``, is
    required to create it); ``private=None`` keeps the Hub's default visibility; a ``revision`` other than
    main is created as a branch first. The patterns are ``HfApi.upload_folder``'s: which files of ``folder`` go
    up (``allow_patterns`` minus ``ignore_patterns``) and which files of the repo are deleted in the same
    commit (``delete_patterns``; a file uploaded again is replaced, not deleted).
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    check_online()
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"cannot upload {folder}: not a folder", fix="pass the folder to upload")
    api = HfApi()
    try:
        sdk = {"space_sdk": space_sdk} if repo_type == "space" else {}
        url = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True, **sdk)
        repo_id = url.repo_id
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True)
        api.upload_folder(
            repo_id=repo_id, folder_path=str(folder), repo_type=repo_type, revision=revision,
            allow_patterns=list(allow_patterns) if allow_patterns else None,
            ignore_patterns=list(ignore_patterns) if ignore_patterns else None,
            delete_patterns=list(delete_patterns) if delete_patterns else None,
            commit_message=commit_message or "Upload with srt-hf",
        )
    except OfflineModeIsEnabled:
        raise HubError(f"huggingface_hub is in offline mode (HF_HUB_OFFLINE was set when it was imported): restart without it and {_LOGIN_HINT}") from None
    except HfHubHTTPError as err:
        status = getattr(err.response, "status_code", None)
        if status in (401, 403):
            raise HubError(f"the Hub refused to write to {repo_type} repo {repo_id!r} (HTTP {status}): {_LOGIN_HINT} "
                           "with a token that has write access to that namespace") from None
        raise HubError(f"uploading to {repo_type} repo {repo_id!r} failed: {err}") from None
    return f"{url}/tree/{revision}" if revision and revision != "main" else str(url)


def selected_files(folder: str | os.PathLike, *, allow_patterns: Sequence[str] | None = None,
                   ignore_patterns: Sequence[str] | None = None) -> list[str]:
    """The files of ``folder`` (relative, ``/``-separated, sorted) that ``upload`` with these patterns sends.

    The filter is huggingface_hub's own (``filter_repo_objects``), the one ``HfApi.upload_folder`` applies.
    """
    from huggingface_hub.utils import filter_repo_objects

    folder = Path(folder)
    files = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    return sorted(filter_repo_objects(files, allow_patterns=list(allow_patterns) if allow_patterns else None,
                                      ignore_patterns=list(ignore_patterns) if ignore_patterns else None))


# ----------------------------------------------------------------------------------------------
# Datasets: run folders


# What `srt-hf push` uploads from a run folder: the documented outputs only (runs.UPLOADED), never the
# cache, the work folder or what a killed run left.
RUN_ALLOW = [name if "." in name else f"{name}/*" for name in UPLOADED]
RUN_IGNORE = [*(f"{name}*" if "." in name else f"{name}/*" for name in NOT_UPLOADED), *LEFTOVERS]
# What a push writes into the run folder before uploading it: the card (with its charts) and the report.
WRITTEN_BY_PUSH = (CARD, REPORT, IMAGES)


def _check_run_folder(run_dir: Path) -> None:
    if not any((run_dir / name).exists() for name in (META, SFT, ROWS)):
        raise InputError(
            f"{run_dir} is not a srt-hf run folder (no {META}, {SFT} or {ROWS})",
            fix="pass the --out folder of `srt-hf recycle` or `srt-hf select`",
        )


def write_publish_files(run_dir: Path, *, repo_id: str | None = None, license: str | None = None) -> None:
    """Write the run's dataset card (``README.md``, ``images/``) and ``report.html`` into ``run_dir``."""
    from .cards import write_dataset_card

    run_dir = Path(run_dir)
    _check_run_folder(run_dir)
    write_dataset_card(run_dir, repo_id=repo_id, license=license)
    if (run_dir / ROWS).is_file():
        from .report import write_report

        write_report(run_dir)  # uploaded with the data, linked from the card


def prepare_dataset_folder(run_dir: Path, dest: Path, *, repo_id: str | None = None, license: str | None = None) -> Path:
    """A preview of a dataset push in ``dest``, leaving ``run_dir`` untouched (``srt-hf push --dry-run``).

    ``dest`` receives the files the push would upload (data files linked, the card and report written anew), so
    it loads with ``datasets.load_dataset(dest)`` (configs: sft, selected, rows) like the pushed repo.
    """
    run_dir, dest = Path(run_dir), Path(dest)
    _check_run_folder(run_dir)
    for rel in selected_files(run_dir, allow_patterns=RUN_ALLOW, ignore_patterns=RUN_IGNORE):
        if rel.split("/")[0] in WRITTEN_BY_PUSH:
            continue  # written below, never through a link that would reach the run's own file
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(run_dir / rel, target)
        except OSError:
            shutil.copy2(run_dir / rel, target)
    write_publish_files(dest, repo_id=repo_id, license=license)
    return dest


def run_license(run_dir: Path) -> str | None:
    """The license recorded in run.json (``source.license``), if any."""
    meta = read_meta(run_dir) if (Path(run_dir) / META).is_file() else {}
    source = meta.get("source")
    return source.get("license") if isinstance(source, dict) else None


def push_dataset(
    run_dir: Path, repo_id: str, *, private: bool | None = None, revision: str | None = None, license: str | None = None
) -> str:
    """Publish a run folder as a Hub dataset with its card; returns the URL.

    ``license`` is required when run.json does not record the source's; it is then remembered in run.json.
    """
    run_dir = Path(run_dir)
    check_online()
    license = require_license(run_dir, license)
    _check_run_folder(run_dir)
    # No run writes the folder while it goes up; the folder is push's input, so there is no other --out to name.
    with output_lock(run_dir, folder=True, command="srt-hf push", then="push again: the folder goes up as that run left it",
                     elsewhere=None):
        _remember(run_dir, source_license=license)
        write_publish_files(run_dir, repo_id=repo_id)  # the license and its origin come from run.json
        url = upload(run_dir, repo_id, repo_type="dataset", private=private, revision=revision,
                     allow_patterns=RUN_ALLOW, ignore_patterns=RUN_IGNORE, delete_patterns=REPLACE_ALL,
                     commit_message=f"srt-hf push {run_dir.resolve().name}")
        _remember(run_dir, hub={"repo_id": repo_id, "revision": revision or "main", "url": url})
    return url


def require_license(run_dir: Path, license: str | None) -> str:
    """``license``, else the one run.json records; when neither is known, a :class:`ConfigError` saying how
    to pass it."""
    license = license or run_license(run_dir)
    if not license:
        raise ConfigError(
            "the license of the source data is unknown (run.json has no source.license): pass --license with the "
            "source data's license id, e.g. `--license cc-by-nc-4.0` for tatsu-lab/alpaca"
        )
    return license


# ----------------------------------------------------------------------------------------------
# Spaces: the run's report as a static page


def prepare_space_folder(run_dir: Path, dest: Path, *, space_id: str, license: str | None = None,
                         dataset_repo_id: str | None = None) -> Path:
    """Stage a static Space in ``dest``: ``index.html`` (the run's report) and ``README.md`` (``sdk: static``)."""
    from huggingface_hub import SpaceCardData

    from .report import write_report

    run_dir, dest = Path(run_dir), Path(dest)
    if not (run_dir / ROWS).is_file():
        raise InputError(f"{run_dir} has no {ROWS}, so there is no report to publish",
                         fix="pass the --out folder of a finished `srt-hf recycle` or `srt-hf select` run")
    dest.mkdir(parents=True, exist_ok=True)
    write_report(run_dir, out=dest / "index.html")
    meta = read_meta(run_dir) if (run_dir / META).is_file() else {}
    dataset = dataset_repo_id or (meta.get("hub") or {}).get("repo_id")
    data = SpaceCardData(
        title=space_id.split("/")[-1], emoji="🔁", colorFrom="indigo", colorTo="yellow", sdk="static",
        app_file="index.html", pinned=False, license=license, datasets=[dataset] if dataset else None,
        tags=["srt-hf", "reflection-tuning", "data-report"],
        short_description=f"srt-hf report of a {meta.get('kind', 'recycle')} run"[:60],
    )
    data_link = f"; the data is [{dataset}](https://huggingface.co/datasets/{dataset})." if dataset else "."
    body = (f"Every row of an [srt-hf]({PROJECT_URL}) run: what the teacher changed, what the student kept and "
            f"why, with the scores before and after{data_link}")
    (dest / "README.md").write_text(f"---\n{data.to_yaml()}\n---\n\n{body}\n", encoding="utf-8")
    return dest


def push_space(run_dir: Path, space_id: str, *, private: bool | None = None, revision: str | None = None,
               license: str | None = None, dataset_repo_id: str | None = None) -> str:
    """Publish the run's report as a static Hugging Face Space (``index.html`` + its README); returns the URL."""
    run_dir = Path(run_dir)
    check_online()
    license = require_license(run_dir, license)
    with tempfile.TemporaryDirectory(prefix="srt-hf-space-") as tmp:
        staged = prepare_space_folder(run_dir, Path(tmp) / "space", space_id=space_id, license=license,
                                      dataset_repo_id=dataset_repo_id)
        url = upload(staged, space_id, repo_type="space", space_sdk="static", private=private, revision=revision,
                     delete_patterns=REPLACE_ALL, commit_message=f"srt-hf push {run_dir.resolve().name} --space")
    _remember(run_dir, source_license=license, space={"repo_id": space_id, "revision": revision or "main", "url": url})
    return url


def _remember(run_dir: Path, *, source_license: str | None = None, hub: dict | None = None,
              space: dict | None = None) -> None:
    """Record the license / Hub repo / Space in run.json so later cards (dataset and model) and reports use them."""
    if not (run_dir / META).is_file():
        return
    meta = read_meta(run_dir)
    before = dict(meta)
    source = meta.get("source") if isinstance(meta.get("source"), dict) else {"name": meta.get("source")}
    if source_license and source_license != source.get("license"):  # given with --license: the card says so
        meta["source"] = {**source, "license": source_license, "license_from": "flag"}
    if hub:
        meta["hub"] = hub
    if space:
        meta["space"] = space
    if meta != before:
        write_meta(run_dir, meta)
