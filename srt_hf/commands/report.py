"""`srt-hf report RUN_DIR`: write RUN_DIR/report.html, one self-contained page to look at what the run did.

    srt-hf report runs/demo-srt                 # -> runs/demo-srt/report.html; open it in any browser, offline
    srt-hf report runs/demo-srt --out demo.html

The page shows the run's provenance, the counts per stage, the IFD / r-IFD distributions before → after and
every row: original, reflected and final texts side by side with word-level differences, the statuses, the
choice at each stage with its reason, and the scores, with filters, a text search and a link per row
(report.html#row-12). `srt-hf recycle` and `srt-hf select` write it at the end of every run.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="Write RUN_DIR/report.html: every row, what the teacher changed and why.",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", type=Path,
                   help="Output folder of `srt-hf recycle` or `srt-hf select`.")
    p.add_argument("--out", type=Path, default=None, help="Write the page here instead of RUN_DIR/report.html.")
    p.add_argument("--compress", action=argparse.BooleanOptionalAction, default=None,
                   help="Embed the data gzip-compressed (default: when it is larger than 1 MB).")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..report import write_report

    path = write_report(args.run_dir, out=args.out, compress=args.compress)
    print(f"srt-hf report: {path} ({_size(path.stat().st_size)}); open it in a browser")
    return 0


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"
