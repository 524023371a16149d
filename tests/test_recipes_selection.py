"""The training recipes end to end on CPU with the tiny model: DiverseEvol (2 rounds) and self-improvement (K=4)."""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
TRAIN = ["--use_cpu", "true", "--bf16", "false", "--max_steps", "2", "--per_device_train_batch_size", "2",
         "--save_strategy", "no", "--report_to", "none", "--activation_checkpointing", "false", "--max_length", "256"]


def load_recipe(name: str):
    """Import recipes/<name>.py as a module (recipes/ is a folder of scripts, not a package)."""
    key = f"srt_hf_recipe_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, RECIPES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module  # dataclasses resolve their annotations through sys.modules
        spec.loader.exec_module(module)
    return sys.modules[key]


@pytest.mark.parametrize("name, config", [("diverse_evol", "diverse_evol_demo.yaml"), ("self_improve", "self_improve_demo.yaml")])
def test_demo_configs_parse(name, config):
    args, training = load_recipe(name).make_parser().parse_args_and_config(["--config", str(RECIPES / "configs" / config)])
    assert training.use_cpu and not training.bf16 and training.output_dir.startswith("outputs/")
    assert args.model_name_or_path == "default"


# ------------------------------------------------------------------------------------------------
# DiverseEvol


@pytest.mark.slow
def test_diverse_evol_two_rounds(tiny_model_dir, tmp_path):
    from srt_hf.diversity import kcenter_greedy

    recipe = load_recipe("diverse_evol")
    out = tmp_path / "de"
    argv = ["--dataset", "demo", "--model_name_or_path", str(tiny_model_dir), "--initial_pool", "4", "--step", "3",
            "--rounds", "2", "--embed_max_length", "256", "--output_dir", str(out), *TRAIN]
    args, training = recipe.make_parser().parse_args_and_config(argv)
    meta = recipe.run(args, training)

    pools = [pq.read_table(out / "pools" / f"round_{r:02d}.parquet").column("row").to_pylist() for r in range(3)]
    assert [len(p) for p in pools] == [4, 7, 10] and pools[1][:4] == pools[0] and pools[2][:7] == pools[1]
    for r in (1, 2):  # each round's picks are k-center greedy on that round's checkpoint embeddings
        vectors = np.load(out / f"round_{r:02d}" / "embeddings.npy")
        assert (out / f"round_{r:02d}" / "model" / "model.safetensors").is_file()
        assert kcenter_greedy(vectors, 3, initial=pools[r - 1]) == pools[r][len(pools[r - 1]):]
    rounds_embeddings = [np.load(out / f"round_{r:02d}" / "embeddings.npy") for r in (1, 2)]
    assert not np.allclose(*rounds_embeddings)  # the second round embeds with its own checkpoint
    assert (out / "final" / "model.safetensors").is_file()

    rows = pq.read_table(out / "data" / "rows.parquet").to_pylist()
    assert len(rows) == 20 and sum(r["selected"] for r in rows) == 10
    assert sorted(i for i, r in enumerate(rows) if r["selected"]) == sorted(pools[2])
    assert {r["selection_reason"].split(" (")[0] for r in rows} == {
        "kept: in the initial pool", "kept: round 1 k-center pick", "kept: round 2 k-center pick", "dropped: not picked in 2 rounds"}
    assert [r["selection_order"] for r in rows if r["pool_round"] == 2] and meta["counts"]["sft"] == 10
    assert meta["methods"] == ["diverse-evol", "k-center"]
    assert meta["selection"]["embed_max_length"] == 256  # what the rounds embedded at, kept in each round's picks
    assert json.loads((out / "round_02" / "picks.json").read_text())["embed_max_length"] == 256
    assert "@article{wu2023diverseevol" in (out / "data" / "README.md").read_text()
    assert pq.read_table(out / "data" / "sft" / "train.parquet").num_rows == 10

    # a rerun with the same settings resumes the finished rounds (no new picks file is written)
    stamp = (out / "round_01" / "picks.json").stat().st_mtime_ns
    args.train_final = False
    resumed = recipe.run(args, training)
    assert (out / "round_01" / "picks.json").stat().st_mtime_ns == stamp
    assert resumed["selection"]["embed_max_length"] == 256
    args.step = 2
    from srt_hf.errors import ConfigError

    with pytest.raises(ConfigError, match="other settings"):
        recipe.run(args, training)


# ------------------------------------------------------------------------------------------------
# Self-improvement


class _ArithmeticServer:
    """An OpenAI-compatible chat server on 127.0.0.1 that answers the bundled problems: samples 0-2
    give the true answer (worded differently), sample 3 a wrong one — so the majority is right."""

    def __init__(self):
        gold = {}
        data = Path(__file__).resolve().parent.parent / "srt_hf" / "data" / "arith_train.jsonl"
        for line in data.read_text().splitlines():
            row = json.loads(line)
            gold[row["question"]] = row
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests += 1
                prompt = body["messages"][-1]["content"]
                row = next(r for q, r in gold.items() if q in prompt)
                k = int(body.get("seed", 0))
                text = [row["solution"], f"The answer is {row['answer']}.", f"We get {row['answer']}",
                        f"I think it is {int(float(row['answer'])) + 1}."][k % 4]
                reply = {"id": "x", "object": "chat.completion", "created": 0, "model": body.get("model") or "stub",
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.slow
def test_self_improve_from_an_endpoint_votes_filters_and_trains(tiny_model_dir, tmp_path):
    recipe = load_recipe("self_improve")
    out = tmp_path / "si"
    with _ArithmeticServer() as server:
        argv = ["--model_name_or_path", str(tiny_model_dir), "--endpoint_url", server.url, "--endpoint_model", "stub",
                "--num_samples", "4", "--limit", "8", "--output_dir", str(out), *TRAIN]
        meta = recipe.make_parser().parse_args_and_config(argv)
        meta = recipe.run(*meta)
        assert server.requests == 32
    rows = pq.read_table(out / "data" / "rows.parquet").to_pylist()
    assert len(rows) == 32 and all(r["selection_reason"] for r in rows)
    assert all(r["majority_answer"] == r["gold_answer"] for r in rows)  # 3 of 4 samples agree on the truth
    wrong = [r for r in rows if r["sample"] == 3]
    assert not any(r["selected"] or r["consistent"] for r in wrong)
    assert all(r["selection_reason"].startswith("dropped: disagrees with the majority answer") for r in wrong)
    consistent = [r for r in rows if r["consistent"]]
    kept = [r for r in consistent if r["selected"]]
    threshold = meta["selection"]["threshold"]
    pool = sorted(r["d"] for r in consistent if r["w"] > 0)  # the reference's rule: sorted(d)[int(N * 0.79)], d < th
    assert threshold == pool[int(len(pool) * 0.79)] and meta["selection"]["threshold_rule"] == "rank"
    assert {r["id"] for r in kept} == {r["id"] for r in consistent if r["w"] > 0 and r["d"] < threshold}
    assert 0 < len(kept) < len(consistent)
    assert meta["stats"]["majority_accuracy"] == 1.0 and meta["stats"]["kept_accuracy"] == 1.0
    assert meta["training"]["status"] == "trained" and (out / "model" / "model.safetensors").is_file()
    sft = pq.read_table(out / "data" / "sft" / "train.parquet").to_pylist()
    assert len(sft) == len(kept) and "The answer is <number>." in sft[0]["prompt"][0]["content"]
    assert json.loads((out / "data" / "run.json").read_text())["training"]["status"] == "trained"
    assert meta["methods"] == ["ds-weight"] and "@article{jiang2024importance" in (out / "data" / "README.md").read_text()


@pytest.mark.slow
def test_self_improve_samples_locally_with_k4(tiny_model_dir, tmp_path):
    recipe = load_recipe("self_improve")
    out = tmp_path / "si-local"
    argv = ["--model_name_or_path", str(tiny_model_dir), "--num_samples", "4", "--limit", "3", "--max_new_tokens", "8",
            "--temperature", "1.0", "--output_dir", str(out), *TRAIN]
    meta = recipe.run(*recipe.make_parser().parse_args_and_config(argv))
    rows = pq.read_table(out / "data" / "rows.parquet").to_pylist()
    assert len(rows) == 12 and {r["sample"] for r in rows} == {0, 1, 2, 3}
    assert len({r["output"] for r in rows if r["question_id"] == rows[0]["question_id"]}) > 1  # K different samples
    # a random tiny model never stops within 8 tokens: its samples are truncated, and dropped with that reason
    assert all(r["sample_status"].startswith(("ok", "truncated: ")) and r["selection_reason"] for r in rows)
    assert all(r["selection_reason"].startswith("dropped: sampling failed (truncated") for r in rows if r["sample_status"] != "ok")
    assert all(np.isfinite(r["loss"]) for r in rows if r["output"])
    # a random tiny model writes no numbers: nothing is kept, and the run says so instead of training on nothing
    if meta["stats"]["kept"] == 0:
        assert meta["training"]["status"].startswith("skipped: no answer was kept")
        assert not (out / "model").exists()
    else:
        assert (out / "model" / "model.safetensors").is_file()
