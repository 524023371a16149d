"""Crashes, damaged files and full disks: chunks are checked on resume, the cache is moved aside, push stays clean."""

from __future__ import annotations

import errno
import logging
import os

import pyarrow.parquet as pq
import pytest
from test_cards import make_run, no_network  # noqa: F401  (fixture re-used)

from srt_hf import hub, runs
from srt_hf.cli import main
from srt_hf.scoring import IFDScorer
from srt_hf.teachers.cache import ResponseCache


def score(tiny_model_dir, out, *extra):
    return main(["score", "demo", "--limit", "12", "--student", str(tiny_model_dir), "--out", str(out), "--chunk-rows", "3", *extra])


REAL_CALL = IFDScorer.__call__


def interrupted_after(monkeypatch, chunks: int | None) -> list[int]:
    """Record the size of each chunk scored; stop (Ctrl-C) once ``chunks`` are done (None: never)."""
    calls: list[int] = []

    def flaky(self, batch, rank=None):
        if len(calls) == chunks:
            raise KeyboardInterrupt
        calls.append(len(batch["id"]))
        return REAL_CALL(self, batch, rank)

    monkeypatch.setattr(IFDScorer, "__call__", flaky)
    return calls


@pytest.fixture(scope="module")
def lone(tmp_path_factory, tiny_model_dir):
    out = tmp_path_factory.mktemp("lone") / "s.parquet"
    assert score(tiny_model_dir, out) == 0
    return pq.read_table(out).to_pylist()


def test_damaged_chunks_are_redone_on_resume(tmp_path, tiny_model_dir, monkeypatch, caplog, lone):
    out, parts = tmp_path / "s.parquet", tmp_path / "s.parquet.parts"
    calls = interrupted_after(monkeypatch, 3)
    assert score(tiny_model_dir, out) == 130
    (parts / "part-000000.parquet").write_bytes(b"")  # what a power cut can leave
    first = pq.read_table(parts / "part-000002.parquet")
    pq.write_table(first.slice(0, 1), parts / "part-000002.parquet")  # a part with too few rows
    calls = interrupted_after(monkeypatch, None)
    with caplog.at_level(logging.WARNING, logger="srt_hf"):
        assert score(tiny_model_dir, out) == 0
    assert calls == [3, 3, 3]  # the two damaged chunks and the unfinished one; part 1 is kept
    assert "redoing 2 finished chunk(s)" in caplog.text and "part-000000.parquet (unreadable" in caplog.text
    assert "part-000002.parquet (holds 1 rows, expected 3)" in caplog.text
    assert pq.read_table(out).to_pylist() == lone


def test_a_full_disk_keeps_finished_chunks_and_says_where(tmp_path, tiny_model_dir, monkeypatch, capsys, lone):
    import srt_hf.chunks

    out, parts = tmp_path / "s.parquet", tmp_path / "s.parquet.parts"
    real, written = srt_hf.chunks.pq.write_table, []

    def full_after_two(table, where, *args, **kwargs):
        if len(written) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(where)
        return real(table, where, *args, **kwargs)

    monkeypatch.setattr(srt_hf.chunks.pq, "write_table", full_after_two)
    assert score(tiny_model_dir, out) == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and "part-000002.parquet: No space left on device" in err and "free disk space" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in parts.iterdir()) == ["meta.json", "part-000000.parquet", "part-000001.parquet"]  # no .tmp
    monkeypatch.setattr(srt_hf.chunks.pq, "write_table", real)
    assert score(tiny_model_dir, out) == 0
    assert pq.read_table(out).to_pylist() == lone


def test_a_failed_final_write_keeps_the_earlier_output(tmp_path, tiny_model_dir, monkeypatch, capsys):
    out = tmp_path / "s.parquet"
    assert score(tiny_model_dir, out) == 0
    before = out.read_bytes()

    class FullDisk(pq.ParquetWriter):  # pyarrow's own wording: no errno on the exception, only in the text
        def write_table(self, table, *args, **kwargs):
            raise OSError("Error writing bytes to file. Detail: [errno 28] No space left on device")

    import srt_hf.dataio

    monkeypatch.setattr(srt_hf.dataio.pq, "ParquetWriter", FullDisk)
    assert score(tiny_model_dir, out, "--no-rifd") == 2
    err = capsys.readouterr().err
    assert f"cannot write {out}: No space left on device" in err and "Traceback" not in err
    assert out.read_bytes() == before and not (tmp_path / "s.parquet.tmp").exists()


def test_a_read_only_output_folder_is_named(tmp_path, tiny_model_dir, monkeypatch, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() == 0:  # root may write anywhere: make the file system refuse as a read-only mount would
        import srt_hf.locks

        real_open = os.open

        def read_only(path, flags, *args):
            if str(path).startswith(str(folder)) and flags & os.O_CREAT:
                raise OSError(errno.EROFS, "Read-only file system", str(path))
            return real_open(path, flags, *args)

        monkeypatch.setattr(srt_hf.locks.os, "open", read_only)
    else:
        folder.chmod(0o555)
    try:
        assert score(tiny_model_dir, folder / "s.parquet") == 2
    finally:
        folder.chmod(0o755)
    err = capsys.readouterr().err
    assert f"cannot write {folder / 's.parquet'}:" in err and "Traceback" not in err
    assert ("Read-only file system" in err) or ("Permission denied" in err)
    assert list(folder.iterdir()) == []


def test_a_damaged_cache_is_moved_aside(tmp_path, caplog):
    path = tmp_path / "cache.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with caplog.at_level(logging.WARNING, logger="srt_hf"):
        cache = ResponseCache(path)
        cache.put("k", "reply")
        assert cache.get("k") == "reply" and len(cache) == 1
    cache.close()
    (aside,) = tmp_path.glob("cache.sqlite.corrupt-*")
    assert aside.read_bytes() == b"this is not a database" * 100  # kept as it was, for whoever wants to look
    assert "cannot be read" in caplog.text and "moved it to cache.sqlite.corrupt-" in caplog.text


def test_closing_the_cache_closes_every_threads_connection_and_leaves_only_the_file(tmp_path):
    import threading

    path = tmp_path / "cache.sqlite"
    cache = ResponseCache(path)
    wrote, release = threading.Event(), threading.Event()

    def worker():  # a thread that wrote and still holds its connection when the run ends
        cache.put("from-thread", "reply 1")
        wrote.set()
        release.wait(30)

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        assert wrote.wait(30)
        cache.put("from-main", "reply 2")
        assert (tmp_path / "cache.sqlite-wal").exists()  # WAL mode: replies sit in the -wal file until a checkpoint
        cache.close()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.sqlite"]
    finally:
        release.set()
        thread.join()
    assert cache.get("from-thread") == "reply 1" and cache.get("from-main") == "reply 2"  # usable again after close
    cache.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.sqlite"]


def test_push_never_uploads_what_a_killed_run_left(tmp_path):
    run = make_run(tmp_path / "run")
    leftovers = ["cache.sqlite-wal", "cache.sqlite-shm", ".srt-hf.lock", "rows.parquet.tmp", "notes.txt",
                 "scored.parquet.parts/part-000000.parquet", "work/2-reflect-instruction/part-000000.parquet.tmp",
                 "sft/train.parquet.tmp", "images/.ifd_histogram.png.lock"]
    for name in leftovers:
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_bytes(b"left by a killed run")
    staged = hub.prepare_dataset_folder(run, tmp_path / "upload", repo_id="me/run")
    files = sorted(str(p.relative_to(staged)) for p in staged.rglob("*") if p.is_file())
    assert files == ["README.md", "images/ifd_histogram.png", "images/rifd_histogram.png", "report.html", runs.ROWS, runs.META,
                     runs.SELECTED, runs.SFT]
