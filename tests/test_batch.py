"""Teacher generation at batch scale: export, import (vLLM and OpenAI formats), rounds, --submit openai."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fake_batch_api import FakeBatchAPI, output_line
from fault_server import FaultServer

from srt_hf.cli import main
from srt_hf.errors import BatchPending
from srt_hf.status import kind_of
from srt_hf.teachers import EndpointTeacher, GenerationConfig, ResponseCache
from srt_hf.teachers.batch import BatchFileError, read_results
from srt_hf.teachers.batch_teacher import BatchConfig, BatchMode

NOWHERE = "http://127.0.0.1:9/v1"  # never contacted: a batch run without --submit talks to no server
STATUSES = ("instruction_reflection_status", "response_reflection_status")
CONVERSATIONS = [[{"role": "user", "content": f"question {i}"}] for i in range(3)]


def write_results(request_file: Path, *, fail: set[int] = frozenset(), length: set[int] = frozenset()) -> Path:
    """What `vllm run-batch -i FILE -o FILE.results.jsonl` writes: one output line per request."""
    requests = [json.loads(line) for line in request_file.read_text().splitlines()]
    out = request_file.with_name(f"{request_file.stem}.results.jsonl")
    lines = [output_line(r, n, fail=n in fail, finish_reason="length" if n in length else "stop") for n, r in enumerate(requests)]
    out.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return out


def batch_mode(tmp_path: Path, run_id: str = "run-a", **config) -> BatchMode:
    teacher = EndpointTeacher(NOWHERE, model="fake", config=GenerationConfig(max_new_tokens=64), cache_path=tmp_path / "cache.sqlite")
    mode = BatchMode(BatchConfig(teacher_batch=str(tmp_path / "batches"), **config), teacher, run_dir=tmp_path, run_id=run_id)
    mode.start()
    return mode


def export(mode: BatchMode) -> Path:
    with pytest.raises(BatchPending) as stop:
        mode.after_stage("teacher")
    return stop.value.files[0]


# -- files and the teacher ------------------------------------------------------------------------
def test_export_import_and_the_next_round(tmp_path):
    mode = batch_mode(tmp_path)
    first = mode.teacher.generate(CONVERSATIONS)
    assert [kind_of(c.status) for c in first] == ["pending"] * 3
    path = export(mode)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert path.name == "teacher-round1.jsonl" and len(lines) == 3
    assert {line["url"] for line in lines} == {"/v1/chat/completions"}
    assert lines[0]["body"]["model"] == "fake" and lines[0]["body"]["max_tokens"] == 64
    assert lines[0]["body"]["messages"] in CONVERSATIONS

    # a rerun before the results came back writes no new file: the same requests still wait
    mode = batch_mode(tmp_path)
    mode.teacher.generate(CONVERSATIONS)
    assert export(mode) == path and not (path.parent / "teacher-round2.jsonl").exists()

    write_results(path, fail={1}, length={2})
    mode = batch_mode(tmp_path)
    by_id = {line["custom_id"]: line["body"]["messages"] for line in lines}
    got = mode.teacher.generate([by_id[line["custom_id"]] for line in lines])
    assert got[0].ok and got[0].cached and "step one" in got[0].text.lower()
    assert kind_of(got[1].status) == "request_failed" and "batch HTTP 500" in got[1].status and "line 2" in got[1].status
    assert kind_of(got[2].status) == "truncated"  # finish_reason length, as online
    mode.after_stage("teacher")  # nothing pending in this run: the failure is final for it

    # the next run asks the failed request again, in the next round's file, alone
    mode = batch_mode(tmp_path)
    again = mode.teacher.generate([by_id[line["custom_id"]] for line in lines])
    assert [kind_of(c.status) for c in again] == ["ok", "pending", "truncated"]
    second = export(mode)
    assert second.name == "teacher-round2.jsonl"
    assert [json.loads(line)["custom_id"] for line in second.read_text().splitlines()] == [lines[1]["custom_id"]]


def test_a_killed_import_imports_again(tmp_path, monkeypatch):
    mode = batch_mode(tmp_path)
    mode.teacher.generate(CONVERSATIONS)
    write_results(export(mode))
    calls = {"n": 0}
    real_put = ResponseCache.put

    def dying_put(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_put(self, *args, **kwargs)

    monkeypatch.setattr(ResponseCache, "put", dying_put)
    with pytest.raises(KeyboardInterrupt):
        batch_mode(tmp_path)
    assert not (tmp_path / "batches" / "imported.json").exists()
    monkeypatch.setattr(ResponseCache, "put", real_put)
    mode = batch_mode(tmp_path)
    assert mode.report.replies == 3
    assert all(c.ok for c in mode.teacher.generate(CONVERSATIONS))


def test_results_of_another_run_or_other_settings_are_refused(tmp_path):
    mode = batch_mode(tmp_path)
    mode.teacher.generate(CONVERSATIONS)
    results = write_results(export(mode))

    stray = tmp_path / "batches" / "other.jsonl"
    stray.write_text(json.dumps({"custom_id": "f" * 64, "response": {"status_code": 200, "body": {}}, "error": None}) + "\n")
    with pytest.raises(BatchFileError, match=r"other\.jsonl, line 1: custom_id f+… is not a request of this run"):
        batch_mode(tmp_path)
    stray.unlink()

    with pytest.raises(BatchFileError, match="holds requests of another run"):
        batch_mode(tmp_path, run_id="run-b")  # other data or settings

    request_file = tmp_path / "batches" / "teacher-round1.jsonl"
    edited = request_file.read_text().replace('"model": "fake"', '"model": "another-model"', 1)
    request_file.write_text(edited)
    with pytest.raises(BatchFileError, match=r"teacher-round1\.jsonl, line 1: the request differs"):
        batch_mode(tmp_path)
    assert results.exists()


def test_vllm_and_openai_result_lines(tmp_path):
    path = tmp_path / "out.jsonl"
    body = {"choices": [{"message": {"content": "hi"}, "finish_reason": "length"}], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}
    lines = [
        {"id": "vllm-1", "custom_id": "a", "response": {"status_code": 200, "request_id": "r", "body": body}, "error": None},
        {"id": "b1", "custom_id": "b", "response": None, "error": {"code": "rate_limit", "message": "slow down"}},
        {"id": "b2", "custom_id": "c", "response": None, "error": {"code": "batch_expired", "message": "too late"}},
        {"id": "b3", "custom_id": "d", "response": {"status_code": 400, "body": {"error": {"message": "bad model"}}}, "error": None},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + "\n")
    a, b, c, d = read_results(path)
    assert (a.text, a.finish_reason, a.usage) == ("hi", "length", {"prompt_tokens": 3, "completion_tokens": 2})
    assert b.error == "batch error rate_limit: slow down" and not b.not_run
    assert c.not_run
    assert d.error == "batch HTTP 400: bad model"
    path.write_text('{"custom_id": "a", "body": {}}\n')
    with pytest.raises(BatchFileError, match="line 1: not a batch result"):
        list(read_results(path))


# -- the pipeline ---------------------------------------------------------------------------------
def recycle_cli(demo_path, tiny_model_dir, out: Path, teacher: str, *extra: str) -> int:
    return main(["recycle", str(demo_path), "--limit", "4", "--out", str(out), "--teacher", teacher, "--teacher-model", "fake",
                 "--student", str(tiny_model_dir), "--chunk-rows", "2", "--max-retries", "0", *extra])


@pytest.fixture(scope="module")
def online(tmp_path_factory, demo_path, tiny_model_dir):
    """The same run, asked online of the fault server (the same replies)."""
    out = tmp_path_factory.mktemp("online") / "run"
    with FaultServer() as server:
        assert recycle_cli(demo_path, tiny_model_dir, out, server.url + "/v1") == 0
    return pq.read_table(out / "rows.parquet").to_pylist()


@pytest.mark.slow
def test_export_results_import_two_rounds_equal_the_online_run(tmp_path, demo_path, tiny_model_dir, online, capsys):
    out, folder = tmp_path / "run", tmp_path / "batches"
    rounds = []
    for _ in range(4):
        code = recycle_cli(demo_path, tiny_model_dir, out, NOWHERE, "--teacher-batch", str(folder))
        if code == 0:
            break
        assert code == 3
        said = capsys.readouterr().out
        exported = sorted(p for p in folder.glob("*.jsonl") if p.with_name(f"{p.stem}.manifest.json").exists())
        new = next(p for p in exported if p not in rounds)
        assert f"vllm run-batch -i {new} -o " in said and "--model fake" in said and "rerun the same command" in said.lower()
        rounds.append(new)
        write_results(new)
    assert [p.name for p in rounds] == ["2-reflect-instruction-round1.jsonl", "4-reflect-response-round1.jsonl"]
    rows = pq.read_table(out / "rows.parquet").to_pylist()
    assert rows == online
    assert all(kind_of(r[c]) == "ok" for r in rows for c in STATUSES)
    meta = json.loads((out / "run.json").read_text())
    usage = meta["teacher_usage"]
    n_instruction = len(rounds[0].read_text().splitlines())
    assert usage["2-reflect-instruction"]["batch"] == {"replies": n_instruction, "prompt_tokens": 7 * n_instruction,
                                                       "completion_tokens": 5 * n_instruction}
    assert usage["2-reflect-instruction"]["online"]["replies"] == 0
    assert usage["4-reflect-response"]["batch"]["replies"] == len(rounds[1].read_text().splitlines())
    summary = capsys.readouterr().out
    assert "teacher stage" in summary and "2-reflect-instruction" in summary


# -- --submit openai ------------------------------------------------------------------------------
def test_submit_to_the_batch_api(tmp_path, monkeypatch):
    from srt_hf.teachers import openai_batch

    monkeypatch.setenv("FAKE_BATCH_KEY", "sk-secret-123")
    with FakeBatchAPI() as api:
        def mode():
            teacher = EndpointTeacher(api.url + "/v1", model="fake", api_key_env="FAKE_BATCH_KEY",
                                      cache_path=tmp_path / "cache.sqlite")
            m = BatchMode(BatchConfig(teacher_batch=str(tmp_path / "batches"), submit="openai"), teacher,
                          run_dir=tmp_path, run_id="run-a")
            m.start()
            return m

        m = mode()
        m.teacher.generate(CONVERSATIONS)
        with pytest.raises(BatchPending, match="Submitted to the batch API as batch-2"):
            m.after_stage("teacher")
        first = api.last_batch
        state = (tmp_path / "batches.json").read_text()
        assert first in state and "sk-secret" not in state
        assert {e["authorization"] for e in api.log} == {"Bearer sk-secret-123"}
        assert len(api.requests_of(first)) == 3 and api.requests_of(first)[0]["body"]["max_completion_tokens"] == 1024

        api.start(first)
        with pytest.raises(BatchPending, match="still running: batch-2 .*in_progress"):
            mode()

        api.finish(first, fail={0}, expire_after=2)  # line 0 fails, line 1 answered, line 2 never ran
        calls = {"n": 0}
        real = openai_batch._download

        def killed(*args):  # the run is killed between the batch's end and the download
            calls["n"] += 1
            raise KeyboardInterrupt

        monkeypatch.setattr(openai_batch, "_download", killed)
        with pytest.raises(KeyboardInterrupt):
            mode()
        monkeypatch.setattr(openai_batch, "_download", real)
        m = mode()
        got = m.teacher.generate(CONVERSATIONS)
        kinds = sorted(kind_of(c.status) for c in got)
        assert kinds == ["ok", "pending", "request_failed"]  # the expired line is asked again, the failed one next run
        with pytest.raises(BatchPending):
            m.after_stage("teacher")
        second = api.last_batch
        assert second != first and len(api.requests_of(second)) == 1  # only the line that never ran

        api.finish(second)
        m = mode()
        got = m.teacher.generate(CONVERSATIONS)
        assert sorted(kind_of(c.status) for c in got) == ["ok", "ok", "pending"]  # the failed one goes again
        with pytest.raises(BatchPending):
            m.after_stage("teacher")
        api.finish(api.last_batch)
        assert all(c.ok for c in mode().teacher.generate(CONVERSATIONS))


def test_a_kill_between_upload_and_batch_creation_resumes_without_a_second_upload(tmp_path, monkeypatch):
    import openai.resources.batches as batches

    monkeypatch.setenv("FAKE_BATCH_KEY", "sk-secret-123")
    with FakeBatchAPI() as api:
        def mode():
            teacher = EndpointTeacher(api.url + "/v1", model="fake", api_key_env="FAKE_BATCH_KEY", cache_path=tmp_path / "c.sqlite")
            m = BatchMode(BatchConfig(teacher_batch=str(tmp_path / "b"), submit="openai"), teacher, run_dir=tmp_path, run_id="r")
            m.start()
            return m

        real = batches.Batches.create
        monkeypatch.setattr(batches.Batches, "create", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
        m = mode()
        m.teacher.generate(CONVERSATIONS)
        with pytest.raises(KeyboardInterrupt):
            m.after_stage("teacher")
        assert len(api.files) == 1 and not api.batches
        monkeypatch.setattr(batches.Batches, "create", real)
        with pytest.raises(BatchPending, match="still running"):
            mode()  # the rerun creates the batch from the recorded upload, then waits for it
        assert len(api.files) == 1 and len(api.batches) == 1
        api.finish(api.last_batch, expire_after=1, ended="cancelled")  # cancelled after one line
        m = mode()
        assert sorted(kind_of(c.status) for c in m.teacher.generate(CONVERSATIONS)) == ["ok", "pending", "pending"]
        with pytest.raises(BatchPending):
            m.after_stage("teacher")
        assert len(api.requests_of(api.last_batch)) == 2  # only the lines it never ran
        api.finish(api.last_batch)
        assert all(c.ok for c in mode().teacher.generate(CONVERSATIONS))


def test_batch_settings_are_checked(tmp_path, monkeypatch, capsys):
    from srt_hf.errors import ConfigError
    from srt_hf.teachers import LocalTeacher

    with pytest.raises(ConfigError, match="--submit needs --teacher-batch"):
        BatchConfig(submit="openai")
    with pytest.raises(ConfigError, match="--submit 'anthropic'"):
        BatchConfig(teacher_batch="x", submit="anthropic")
    with pytest.raises(ConfigError, match="is local"):
        BatchMode(BatchConfig(teacher_batch="x"), LocalTeacher("default"), run_dir=tmp_path, run_id="r")
    with pytest.raises(ConfigError, match="needs --teacher-model"):
        BatchMode(BatchConfig(teacher_batch="x"), EndpointTeacher(NOWHERE, served_model="m"), run_dir=tmp_path, run_id="r")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    teacher = EndpointTeacher("https://api.openai.com/v1", model="gpt-4o-mini", cache_path=tmp_path / "c.sqlite")
    m = BatchMode(BatchConfig(teacher_batch=str(tmp_path / "b"), submit="openai"), teacher, run_dir=tmp_path, run_id="r")
    m.start()
    m.teacher.generate(CONVERSATIONS[:1])
    with pytest.raises(ConfigError, match="needs an API key for api.openai.com: export OPENAI_API_KEY"):
        m.after_stage("teacher")


@pytest.mark.slow
def test_submit_openai_end_to_end_equals_the_online_run(tmp_path, demo_path, tiny_model_dir, online, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_BATCH_KEY", "sk-secret-456")
    out, folder = tmp_path / "run", tmp_path / "batches"
    with FakeBatchAPI() as api:
        def rerun() -> int:
            return recycle_cli(demo_path, tiny_model_dir, out, api.url + "/v1", "--teacher-api-key-env", "FAKE_BATCH_KEY",
                               "--teacher-batch", str(folder), "--submit", "openai")

        assert rerun() == 3 and "Submitted to the batch API" in capsys.readouterr().out
        api.finish(api.last_batch, fail={1})  # one instruction reflection fails
        assert rerun() == 3  # imports, stage 4's requests are submitted; the failed row waits for the next round
        api.finish(api.last_batch, expire_after=1)  # one response reflection ran, the batch expired
        for _ in range(4):
            code = rerun()
            if code == 0:
                break
            assert code == 3
            api.finish(api.last_batch)
    assert code == 0
    assert pq.read_table(out / "rows.parquet").to_pylist() == online
    assert "sk-secret" not in (out / "batches.json").read_text() and "sk-secret" not in (out / "run.json").read_text()
    assert {e["authorization"] for e in api.log} == {"Bearer sk-secret-456"}
    batches = [[r["custom_id"] for r in api.requests_of(b)] for b in api.batches]
    # stage 2 round 1, stage 4 round 1, the failed instruction again, then stage 4 without the line that ran
    assert [len(ids) for ids in batches] == [4, 4, 1, 3]
    assert batches[2] == [batches[0][1]] and batches[1][0] not in batches[3]
    usage = json.loads((out / "run.json").read_text())["teacher_usage"]
    assert usage["2-reflect-instruction"]["batch"]["replies"] == 4 and usage["4-reflect-response"]["batch"]["replies"] == 4


def test_a_run_killed_between_manifest_and_request_file_writes_the_file_again(tmp_path):
    mode = batch_mode(tmp_path)
    mode.teacher.generate(CONVERSATIONS)
    path = export(mode)
    text = path.read_text()
    path.unlink()  # what a kill after the manifest, before the request lines, leaves
    mode = batch_mode(tmp_path)
    mode.teacher.generate(CONVERSATIONS)
    assert export(mode) == path and path.read_text() == text
    assert sorted(p.name for p in path.parent.iterdir()) == ["teacher-round1.jsonl", "teacher-round1.manifest.json"]


def test_pending_rows_are_redone_even_without_retry_failed(tmp_path):
    import pyarrow as pa

    from srt_hf.pipeline import _redo_teacher_rows

    part = tmp_path / "part.parquet"
    pq.write_table(pa.table({"s": ["ok", "pending: in the batch file", "request_failed: HTTP 500"]}), part)
    assert _redo_teacher_rows("s", retry_failed=False)(part) == "1 row pending, read from the batch results"
    assert _redo_teacher_rows("s", retry_failed=True)(part) == "1 row request_failed, asked again; 1 row pending, read from the batch results"
    pq.write_table(pa.table({"s": ["ok", "request_failed: HTTP 500"]}), part)
    assert _redo_teacher_rows("s", retry_failed=False)(part) is None


# -- write-once results ---------------------------------------------------------------------------
def with_reply(text: str, line: int, reply: str) -> str:
    """The results file ``text`` with another reply on ``line``."""
    lines = text.splitlines()
    obj = json.loads(lines[line - 1])
    obj["response"]["body"]["choices"][0]["message"]["content"] = reply
    lines[line - 1] = json.dumps(obj)
    return "\n".join(lines) + "\n"


def test_a_second_different_reply_for_an_imported_request_stops_the_import(tmp_path):
    mode = batch_mode(tmp_path)
    mode.teacher.generate(CONVERSATIONS)
    results = write_results(export(mode))
    batch_mode(tmp_path)  # imported
    key = json.loads(results.read_text().splitlines()[0])["custom_id"]
    first = ResponseCache(tmp_path / "cache.sqlite").get(key)

    same = results.with_name("teacher-round1.results (1).jsonl")  # the same download twice: fine
    same.write_bytes(results.read_bytes())
    assert batch_mode(tmp_path).report.files["teacher-round1.results (1).jsonl"]["replies"] == 3

    other = results.with_name("teacher-round1.results (2).jsonl")  # a second download with another reply
    other.write_text(with_reply(results.read_text(), 1, "A different reply."))
    with pytest.raises(BatchFileError) as stop:
        batch_mode(tmp_path)
    said = str(stop.value)
    assert "teacher-round1.results (2).jsonl, line 1" in said and "(teacher-round1.results.jsonl, line 1)" in said
    assert "keep one of the two files and delete the other" in said
    assert ResponseCache(tmp_path / "cache.sqlite").get(key) == first  # nothing of the second file was stored
    other.unlink()
    batch_mode(tmp_path)


def test_an_imported_results_file_edited_afterwards_stops_the_import(tmp_path):
    mode = batch_mode(tmp_path)
    mode.teacher.generate(CONVERSATIONS)
    results = write_results(export(mode))
    batch_mode(tmp_path)
    original = results.read_text()
    results.write_text(with_reply(original, 2, "Edited after the import."))
    with pytest.raises(BatchFileError, match=r"results\.jsonl, line 2: .*as imported before.*edited after it was imported"):
        batch_mode(tmp_path)
    results.write_text(original)
    assert batch_mode(tmp_path).report.replies == 0  # as it was: nothing new to import


def test_a_request_file_without_its_manifest_is_named_as_such(tmp_path):
    mode = batch_mode(tmp_path)
    mode.teacher.generate(CONVERSATIONS)
    path = export(mode)
    path.with_name("teacher-round1.manifest.json").unlink()
    with pytest.raises(BatchFileError, match=r"teacher-round1\.jsonl, line 1: a request line written by srt_hf, not a result: "
                       r"the manifest teacher-round1\.manifest\.json of this request file is missing"):
        batch_mode(tmp_path)
