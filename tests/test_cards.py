"""Dataset and model cards: metadata the Hub accepts, configs `load_dataset` follows, charts, citations."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest

from srt_hf import cards, charts, runs

# Metadata keys of the Hub's card specs (huggingface/hub-docs datasetcard.md and modelcard.md).
DATASET_CARD_KEYS = {
    "language", "license", "license_name", "license_link", "license_details", "tags", "annotations_creators",
    "language_creators", "language_details", "pretty_name", "size_categories", "source_datasets", "task_categories",
    "task_ids", "paperswithcode_id", "configs", "dataset_info", "viewer", "train-eval-index",
}
MODEL_CARD_KEYS = {
    "language", "license", "license_name", "license_link", "library_name", "tags", "datasets", "metrics",
    "base_model", "base_model_relation", "pipeline_tag", "model-index", "model_name", "new_version", "inference", "widget", "thumbnail",
}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any connection other than to 127.0.0.1 fails the test."""
    real = socket.socket.connect

    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if host not in ("127.0.0.1", "::1", "localhost") and not isinstance(address, (str, bytes)):
            raise AssertionError(f"test tried to reach the network: {address}")
        return real(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


def make_run(root: Path, *, n: int = 40, kind: str = "recycle", license: str | None = "cc-by-nc-4.0",
             selection: str = "ifd < 1 and rifd < 1", meta: bool = True) -> Path:
    """A small run folder written by hand: rows / selected / sft parquet, run.json, cache and work/."""
    import datasets

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = datasets.Dataset.from_dict({
        "id": [str(i) for i in range(n)],
        "instruction": [f"Explain topic {i} in one sentence." for i in range(n)],
        "input": ["" if i % 3 else f"context {i}" for i in range(n)],
        "output": [f"Topic {i} is about a | b and c." for i in range(n)],
        "ifd": rng.uniform(0.4, 1.4, n).tolist(),
        "rifd": rng.uniform(0.5, 1.3, n).tolist(),
        "score_status": ["ok"] * n,
    })
    rows.to_parquet(str(root / runs.ROWS))
    selected = rows.filter(lambda r: r["ifd"] < 1 and r["rifd"] < 1)
    selected.to_parquet(str(root / runs.SELECTED))
    runs.write_sft(selected, root / runs.SFT, instruction="instruction", input="input", response="output", id_column="id")
    (root / runs.CACHE).write_bytes(b"SQLite format 3\x00not a real cache")
    (root / runs.WORK).mkdir(exist_ok=True)
    (root / runs.WORK / "part-000000.parquet").write_bytes(b"half-written part")
    if meta:
        runs.write_meta(root, {
            "kind": kind,
            "source": {"name": "tatsu-lab/alpaca", "split": "train", **({"license": license} if license else {})},
            "teacher": {"model": "meta-llama/Llama-3.1-8B-Instruct", "temperature": 0.7},
            "student": {"model": "HuggingFaceTB/SmolLM2-135M-Instruct"},
            "scoring": {"preset": "reflection", "template": "vicuna"},
            "prompts": {"instruction_reflection": "Improve ```this``` instruction:\n{instruction}\n{output}",
                        "response_reflection": "Write a better answer to {instruction}"},
            "selection": {"rule": selection},
            "counts": {"input": n, "instruction_reflected": n - 3, "response_reflected": n - 5, "selected": len(selected)},
            "columns": {"output": "the chosen response"},
        })
    return root


def read_png(path: Path) -> np.ndarray:
    """A PNG chart as an (height, width, 3) uint8 array."""
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return (imread(path)[..., :3] * 255).round().astype(np.uint8)


def colours(pixels: np.ndarray) -> set[tuple[int, ...]]:
    return {tuple(int(v) for v in c) for c in pixels.reshape(-1, 3)}


def test_dataset_card_metadata_configs_and_load(tmp_path):
    import datasets
    from huggingface_hub import DatasetCard

    run = make_run(tmp_path / "alpaca-srt")
    path = cards.write_dataset_card(run)
    assert path == run / "README.md"

    card = DatasetCard.load(path)
    data = card.data.to_dict()
    assert set(data) <= DATASET_CARD_KEYS, set(data) - DATASET_CARD_KEYS
    assert data["license"] == "cc-by-nc-4.0"
    assert data["task_categories"] == ["text-generation"]
    assert data["size_categories"] == ["n<1K"]
    assert data["source_datasets"] == ["tatsu-lab/alpaca"]
    assert {"srt-hf", "reflection-tuning"} <= set(data["tags"])
    assert [c["config_name"] for c in data["configs"]] == ["sft", "selected", "rows"]
    assert data["configs"][0]["default"] is True

    # load_dataset follows the configs: the SFT data by default, every row by name; cache/work are ignored.
    n_sft = len(datasets.Dataset.from_parquet(str(run / runs.SFT)))
    sft = datasets.load_dataset(str(run), split="train")
    assert sft.column_names == ["id", "prompt", "completion"] and len(sft) == n_sft
    assert sft[0]["completion"][0]["role"] == "assistant"
    assert len(datasets.load_dataset(str(run), "rows", split="train")) == 40

    text = card.text
    for expected in ("meta-llama/Llama-3.1-8B-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct", "ifd < 1 and rifd < 1",
                     "| instruction_reflected | 37 |", "images/ifd_histogram.png", "images/rifd_histogram.png",
                     "@inproceedings{li2024selective", "@article{li2023reflection", "Write a better answer to {instruction}"):
        assert expected in text, expected
    # a prompt holding a ``` fence gets a longer fence; a '|' in a description does not break the table
    assert "````text\nImprove ```this``` instruction:" in text
    assert "loss(response \\| instruction)" in text


def test_histograms_are_valid_pngs_before_and_after(tmp_path):
    run = make_run(tmp_path / "run")
    cards.write_dataset_card(run)
    for name in ("ifd_histogram.png", "rifd_histogram.png"):
        pixels = read_png(run / "images" / name)
        assert pixels.shape == (320, 640, 3)
        assert {charts.BEFORE, charts.AFTER} <= colours(pixels)  # both series are drawn


def test_dataset_card_tolerates_a_bare_run_folder(tmp_path):
    from huggingface_hub import DatasetCard

    run = make_run(tmp_path / "bare", meta=False)
    (run / runs.ROWS).unlink()
    (run / runs.SELECTED).unlink()
    card = DatasetCard.load(cards.write_dataset_card(run))
    assert card.data.license == "unknown"
    assert "source license was not recorded" in card.text
    assert [c["config_name"] for c in card.data.to_dict()["configs"]] == ["sft"]
    assert not (run / "images").exists()  # no scores, no charts
    assert "| sft | 16 |" in card.text


def test_citations_follow_the_methods_used(tmp_path):
    run = make_run(tmp_path / "sel", kind="select", selection="diverse k-center 10% then ifd < 1")
    meta = runs.read_meta(run)
    meta["methods"] = ["ds_weight"]
    runs.write_meta(run, meta)
    text = cards.write_dataset_card(run).read_text()
    assert "@article{wu2023diverseevol" in text and "@article{jiang2024importance" in text
    assert "li2023reflection" not in text  # no teacher reflection in a select run
    assert "synthetic" not in text.split("---")[1]
    # a run.json without a kind is a recycle run; one without ``methods`` has them inferred
    assert cards.run_methods({}) == ["selective-reflection-tuning", "ifd", "reflection-tuning"]


def test_citations_are_keyed_by_the_recorded_methods():
    # recorded methods win over the words of the rule; each paper once, in the table's order
    meta = {"kind": "select", "selection": {"rule": "ds_weight_self_consistency"}, "methods": ["k-center", "diverse-evol"]}
    assert cards.run_methods(meta) == ["k-center", "diverse-evol"]
    bib = cards.citations_for(cards.run_methods(meta))
    assert [b.split(",")[0] for b in bib] == [
        "@inproceedings{li2024selective", "@inproceedings{li2024quantity", "@article{wu2023diverseevol"]
    assert cards.citations_for(["sft", "no-such-method"])[-1].startswith("@misc{vonwerra2020trl")
    assert len(cards.citations_for([])) == 2  # SRT and IFD on every card
    # an older run.json holding citation keys in ``methods`` is read as before
    assert cards.run_methods({"kind": "select", "methods": ["ds_weight"]}) == [
        "selective-reflection-tuning", "ifd", "ds-weight"]


def test_size_categories():
    assert [cards.size_category(n) for n in (0, 999, 1000, 52_002, 2_000_000)] == [
        "n<1K", "n<1K", "1K<n<10K", "10K<n<100K", "1M<n<10M"]


def test_model_card_metadata_and_loss_curve(tmp_path):
    from huggingface_hub import ModelCard

    run = make_run(tmp_path / "run")
    meta = runs.read_meta(run)
    meta["hub"] = {"repo_id": "me/alpaca-srt"}
    history = [{"step": 1, "loss": 2.5}, {"step": 2, "loss": 2.1}, {"step": 2, "eval_loss": 2.3}, {"step": 3, "loss": 1.9}]
    path = cards.write_model_card(
        tmp_path / "model", base_model="HuggingFaceTB/SmolLM2-135M-Instruct", dataset=str(run),
        hyperparameters={"learning_rate": 2e-5, "global_batch_size": 128}, history=history, run_meta=meta,
        repo_id="me/smollm2-srt",
    )
    card = ModelCard.load(path)
    data = card.data.to_dict()
    assert set(data) <= MODEL_CARD_KEYS, set(data) - MODEL_CARD_KEYS
    assert data["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert data["datasets"] == ["me/alpaca-srt"]
    assert data["license"] == "apache-2.0"
    assert {"srt-hf", "reflection-tuning", "trl", "sft"} <= set(data["tags"])
    for expected in ("meta-llama/Llama-3.1-8B-Instruct", "| selected | 16 |", "| global_batch_size | 128 |",
                     "![Training loss](loss_curve.png)", 'model="me/smollm2-srt"', "@misc{vonwerra2020trl",
                     "@inproceedings{li2024selective"):
        assert expected in card.text, expected
    pixels = read_png(tmp_path / "model" / "loss_curve.png")
    assert {charts.LINES[0], charts.LINES[1]} <= colours(pixels)  # train and eval series


def test_model_card_leaves_out_local_paths(tmp_path):
    from huggingface_hub import ModelCard

    local = tmp_path / "local-model"
    local.mkdir()
    card = ModelCard.load(cards.write_model_card(
        tmp_path / "out", base_model=str(local), dataset=str(tmp_path / "data.jsonl"), hyperparameters={}))
    assert "base_model" not in card.data.to_dict() and "datasets" not in card.data.to_dict()
    assert card.data.license == "other"
    assert "not a srt-hf run folder" in card.text
    assert not (tmp_path / "out" / "loss_curve.png").exists()


def test_templates_ship_inside_the_package():
    """srt_hf/hub_cards holds the same templates as hub_cards/, so an installed package finds them."""
    import srt_hf

    package_dir = Path(srt_hf.__file__).parent / "hub_cards"
    repo_dir = Path(srt_hf.__file__).parent.parent / "hub_cards"
    for name in (cards.DATASET_TEMPLATE, cards.MODEL_TEMPLATE):
        assert (package_dir / name).read_text() == (repo_dir / name).read_text()
    assert cards.TEMPLATE_DIRS[0] == package_dir.resolve()


def test_charts_are_reproducible(tmp_path):
    """Same scores, same bytes: a rerun of a card does not change its images (no timestamps, no versions)."""
    rng = np.random.default_rng(0)
    before, after = rng.gamma(2.0, 0.4, 200), rng.gamma(2.0, 0.3, 80)
    for name in ("a.png", "b.png"):
        charts.histogram_png(tmp_path / name, "IFD", before, after, cutoffs=[{"value": 1.0, "label": "rule: IFD < 1"}])
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert charts.THRESHOLD in colours(read_png(tmp_path / "a.png"))  # the dashed line at 1
    charts.histogram_png(tmp_path / "empty.png", "r-IFD", np.array([]), np.array([]))  # nothing scored: still a chart
    assert read_png(tmp_path / "empty.png").shape == (320, 640, 3)


def test_card_of_a_select_run(tmp_path, monkeypatch):
    """`srt-hf select` writes its run folder through write_dataset_card; the card and configs hold up."""
    pytest.importorskip("srt_hf.commands.select")
    import datasets
    from huggingface_hub import DatasetCard

    from srt_hf import cli

    monkeypatch.setitem(cli.COMMANDS, "select", "srt_hf.commands.select")
    out = tmp_path / "selected"
    assert cli.main(["select", str(make_run(tmp_path / "run")), "--top-share", "0.5", "--out", str(out)]) == 0
    card = DatasetCard.load(out / "README.md")
    assert set(card.data.to_dict()) <= DATASET_CARD_KEYS
    assert card.data.license == "cc-by-nc-4.0"  # carried from the input run
    kept = runs.read_meta(out)["counts"]["selected"]
    assert runs.read_meta(out)["methods"] == ["top-ifd", "ifd"]  # the rule's, then the scoring preset's
    assert len(datasets.load_dataset(str(out), split="train")) == kept > 0
    assert "top_ifd_share" in card.text and "kept: top 50% by IFD" in card.text
    assert (out / "images" / "ifd_histogram.png").is_file()
