"""Check a folder written by ``recipes/sft.py`` (gpu_check.sh's training steps): weights or adapter, card, loss history.

    python benchmarks/check_trained.py OUTPUT_DIR --steps 10 [-- TRAINING COMMAND ...]

With a command after ``--``, runs it first (its output passes through). Prints one ``RESULT`` line (what was saved,
the steps logged, the last loss, the hub-kernels notice the run printed if any) and exits non-zero when the command
failed or something is missing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], usage="%(prog)s FOLDER --steps N [-- COMMAND ...]")
    ap.add_argument("folder", type=Path)
    ap.add_argument("--steps", type=int, required=True)
    argv = sys.argv[1:] if argv is None else argv
    command = argv[argv.index("--") + 1:] if "--" in argv else []
    args = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    folder, problems, output = args.folder, [], []
    if command:
        run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
        for line in run.stdout:
            sys.stdout.write(line)
            output.append(line)
        if run.wait():
            problems.append(f"the training command exited with {run.returncode}")
    adapter = (folder / "adapter_model.safetensors").is_file()
    weights = bool(list(folder.glob("model*.safetensors")))
    if not (adapter or weights):
        problems.append("no weights or adapter")
    card = folder / "README.md"
    text = card.read_text() if card.is_file() else ""
    if "srt-hf" not in text:
        problems.append("no srt-hf model card")
    history = json.loads((folder / "loss_history.json").read_text()) if (folder / "loss_history.json").is_file() else []
    losses = [h["loss"] for h in history if "loss" in h]
    if len(losses) != args.steps:
        problems.append(f"{len(losses)} logged steps, not {args.steps}")
    notices = [line.strip() for line in output if "hub kernels unavailable" in line]
    notice = f"{len(notices)} notice(s): {notices[0][:140]}" if notices else "no hub-kernels notice"
    saved = "adapter" if adapter else "full model" if weights else "nothing"
    verdict = "; ".join(problems) or "ok"
    last = f"{losses[-1]:.3f}" if losses else "-"
    print(f"RESULT {verdict}: {saved} + card, {len(losses)} steps, last loss {last}; {notice}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
