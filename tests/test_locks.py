"""One writer per output: a second run into the same output stops at once; a dead holder's lock is taken over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fault_server import SpawnedServer

from srt_hf.cli import main
from srt_hf.errors import LockedError
from srt_hf.locks import lock_path, output_lock

ROOT = Path(__file__).resolve().parents[1]


class Holder:
    """Another process holding the lock of ``output`` until it is killed."""

    def __init__(self, output: Path, folder: bool):
        script = textwrap.dedent(f"""
            import time
            from pathlib import Path
            from srt_hf.locks import output_lock
            with output_lock(Path({str(output)!r}), folder={folder}, command="srt-hf holder"):
                print("locked", flush=True)
                time.sleep(600)
        """)
        self.process = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout.readline().strip() == "locked"

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process.stdout.close()


@pytest.mark.slow
def test_a_held_lock_is_refused_and_a_dead_holders_is_taken_over(tmp_path, caplog):
    out = tmp_path / "run"
    holder = Holder(out, folder=True)
    try:
        with pytest.raises(LockedError) as err:
            with output_lock(out, folder=True):
                pass
        message = str(err.value)
        assert f"PID {holder.pid}" in message and f"kill {holder.pid}" in message and "srt-hf holder" in message
        assert message.endswith("rerun this command, which resumes; or write somewhere else with another --out")
    finally:
        holder.kill()
    assert lock_path(out, folder=True).exists()  # SIGKILL left the file behind
    with output_lock(out, folder=True, command="srt-hf test") as path:
        assert path == out / ".srt-hf.lock" and path.exists()
    assert f"left by PID {holder.pid}" in caplog.text and "no longer runs" in caplog.text
    assert not lock_path(out, folder=True).exists()  # released: removed


@pytest.mark.slow
@pytest.mark.parametrize("command", ["score", "select"])
def test_a_second_cli_run_into_the_same_output_stops_at_once(tmp_path, tiny_model_dir, capsys, command):
    out = tmp_path / "out.parquet"
    holder = Holder(out, folder=False)
    if command == "score":
        argv = ["score", "demo", "--limit", "6", "--student", str(tiny_model_dir), "--out", str(out), "--chunk-rows", "5"]
    else:
        argv = ["select", "demo", "--top-share", "0.5", "--out", str(out)]
    try:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"PID {holder.pid}" in err and "is in use by another run" in err and "Traceback" not in err
        assert not out.exists() and not (tmp_path / "out.parquet.parts").exists()  # nothing written
    finally:
        holder.kill()
    if command == "score":  # the stale lock is taken over and the run is exactly a lone run
        assert main(argv) == 0
        lone = tmp_path / "lone.parquet"
        assert main([*argv[:-3], str(lone), "--chunk-rows", "5"]) == 0
        assert pq.read_table(out).to_pylist() == pq.read_table(lone).to_pylist()
        assert not list(tmp_path.glob(".*.lock"))


def recycle_argv(url: str, tiny_model_dir: Path, out: Path) -> list[str]:
    return ["recycle", "demo", "--limit", "4", "--teacher", url, "--teacher-model", "fake", "--student", str(tiny_model_dir),
            "--out", str(out), "--chunk-rows", "2", "--max-concurrency", "2", "--backoff-base", "0.01"]


@pytest.mark.slow
def test_two_concurrent_recycle_runs_one_refused_the_other_as_a_lone_run(tmp_path, tiny_model_dir, capsys):
    out, lone = tmp_path / "run", tmp_path / "lone"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with SpawnedServer(latency=0.3) as server:
        first = subprocess.Popen([sys.executable, "-m", "srt_hf", *recycle_argv(server.url, tiny_model_dir, out)], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 300
        while server.stats()["requests"] < 1 and time.time() < deadline and first.poll() is None:
            time.sleep(0.05)
        assert first.poll() is None, "the first run ended before the second started"
        assert main(recycle_argv(server.url, tiny_model_dir, out)) == 2  # the second run, while the first runs
        err = capsys.readouterr().err
        assert f"PID {first.pid}" in err and "Traceback" not in err
        _, first_err = first.communicate(timeout=600)
        assert first.returncode == 0, first_err[-3000:]
        assert main(recycle_argv(server.url, tiny_model_dir, lone)) == 0
    assert pq.read_table(out / "rows.parquet").to_pylist() == pq.read_table(lone / "rows.parquet").to_pylist()
    assert not (out / ".srt-hf.lock").exists()


def load_recipe(name: str):
    import importlib.util

    key = f"srt_hf_recipe_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, ROOT / "recipes" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module  # dataclasses resolve their annotations through sys.modules
        spec.loader.exec_module(module)
    return sys.modules[key]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["sft", "diverse_evol", "self_improve"])
def test_a_recipe_into_a_locked_output_dir_stops_at_once(tmp_path, capsys, recipe):
    out = tmp_path / "model"
    holder = Holder(out, folder=True)
    data = [] if recipe == "self_improve" else ["--dataset", "demo"]  # self_improve reads its bundled questions
    argv = [*data, "--model_name_or_path", "default", "--output_dir", str(out), "--use_cpu", "true", "--bf16", "false",
            "--report_to", "none"]
    try:
        assert load_recipe(recipe).main(argv) == 2
        err = capsys.readouterr().err
        assert f"PID {holder.pid}" in err and "is in use by another run" in err and "Traceback" not in err
        assert "another --output_dir" in err and "--out " not in err  # the recipe's own option
        assert sorted(p.name for p in out.iterdir()) == [".srt-hf.lock"]  # nothing written
    finally:
        holder.kill()
