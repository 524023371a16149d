"""docs/ARCHITECTURE.md names every module of srt_hf, and the module docstrings that cite it find it there."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "ARCHITECTURE.md").read_text()


def test_every_module_has_its_job_in_the_table():
    package = ROOT / "srt_hf"
    missing = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package)
        if rel.name in ("__init__.py", "__main__.py") or rel.parts[0] == "commands":  # commands/: one per command
            continue
        names = {f"`{rel.with_suffix('').as_posix()}`", f"`{rel.stem}`", f"`{rel.name}`"}
        if not any(n in DOC for n in names):
            missing.append(rel.as_posix())
    assert missing == []
    for folder in ("commands/", "cards/", "selection/", "teachers/", "hub_cards/", "assets/", "prompts/", "data/"):
        assert f"`{folder}`" in DOC or f"`{folder[:-1]}/" in DOC, folder
    for section in ("## Data flow", "## Modules, one job each", "## The status vocabulary", "## The run folder",
                    "**A scoring preset.**", "**A teacher backend**", "**A selection method.**"):
        assert section in DOC


def test_status_kinds_are_the_documented_ones():
    from srt_hf import status

    for kind in status.KINDS:
        assert f"| `{kind}` |" in DOC
