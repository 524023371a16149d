"""Progress inside a chunk: the student's batches and the teacher's replies move the bar before the chunk ends,
the bar ends at the row count, and no transformers / datasets bar runs inside srt_hf's."""

from __future__ import annotations

import datasets
import pytest
import tqdm.auto
from fault_server import FaultServer
from test_reflection import FAST, tagged_answer

from srt_hf import progress
from srt_hf.chunks import map_in_chunks


class RecordingBar:
    """Stands in for tqdm in map_in_chunks: the position after every update, and whether each came mid-chunk."""

    bars: list[RecordingBar] = []

    def __init__(self, *, total, initial=0, **kwargs):
        self.total, self.n, self.positions, self.notes = total, initial, [], []
        self.bars.append(self)

    def update(self, n):
        self.n += n
        self.positions.append(self.n)

    def set_postfix_str(self, text):
        self.notes.append((text, self.n))

    def close(self):
        pass


@pytest.fixture
def bars(monkeypatch):
    RecordingBar.bars = []
    monkeypatch.setattr(tqdm.auto, "tqdm", RecordingBar)
    return RecordingBar.bars


def test_work_inside_a_chunk_moves_the_bar(tmp_path, bars):
    seen = []

    def fn(batch):
        step = progress.steps(4)
        for _ in range(4):
            step(1)
            seen.append(bars[0].n)
        return {"y": [x * 2 for x in batch["x"]]}

    ds = datasets.Dataset.from_dict({"x": list(range(10))})
    map_in_chunks(ds, fn, tmp_path / "work", key="k", chunk_rows=8)
    assert seen == [2, 4, 6, 8, 8 + 0, 8 + 1, 8 + 1, 8 + 2]  # chunk of 8 rows, then of 2
    assert bars[0].n == bars[0].total == 10
    assert progress.steps(4) is not None and progress._sink is None  # outside a chunk: a no-op counter


def test_a_failing_chunk_leaves_the_bar_where_the_work_stopped(tmp_path, bars):
    def fn(batch):
        progress.steps(2)(1)
        raise RuntimeError("teacher down")

    with pytest.raises(RuntimeError):
        map_in_chunks(datasets.Dataset.from_dict({"x": list(range(4))}), fn, tmp_path / "w", key="k", chunk_rows=4)
    assert bars[0].n == 2 and progress._sink is None


def test_foreign_bars_are_off_inside_and_restored_after(tmp_path, bars):
    from transformers.utils import logging as transformers_logging

    states = []

    def fn(batch):
        states.append((transformers_logging.is_progress_bar_enabled(), datasets.is_progress_bar_enabled()))
        return {}

    datasets.enable_progress_bars()
    transformers_logging.enable_progress_bar()
    map_in_chunks(datasets.Dataset.from_dict({"x": [1, 2]}), fn, tmp_path / "w", key="k", chunk_rows=1)
    assert states == [(False, False), (False, False)]
    assert transformers_logging.is_progress_bar_enabled() and datasets.is_progress_bar_enabled()


def test_the_students_batches_move_the_bar(tmp_path, bars, tiny_model_dir, demo_path):
    from srt_hf.scoring import IFDScorer, ScoringConfig

    ds = datasets.load_dataset("json", data_files=str(demo_path), split="train").select(range(8))
    scorer = IFDScorer(ScoringConfig(student=str(tiny_model_dir), preset="superfiltering", max_batch_tokens=256))
    map_in_chunks(ds, scorer, tmp_path / "w", key="k", chunk_rows=8)
    (bar,) = bars
    assert bar.n == 8 and len(bar.positions) > 2  # several batches reported inside the one chunk
    assert bar.positions == sorted(bar.positions) and bar.positions[0] < 8


def test_the_teachers_replies_move_the_bar(tmp_path, bars):
    from srt_hf.reflection import InstructionReflection
    from srt_hf.teachers import EndpointTeacher

    rows = [{"instruction": f"Describe item-{i}.", "input": "", "output": "It is red."} for i in range(6)]
    with FaultServer(answer=tagged_answer) as server:
        transform = InstructionReflection(EndpointTeacher(server.url, model="m", config=FAST), structured="off")
        map_in_chunks(datasets.Dataset.from_list(rows), transform, tmp_path / "w", key="k", chunk_rows=6)
    (bar,) = bars
    assert bar.positions == [1, 2, 3, 4, 5, 6]  # one step per reply as it arrives, not one jump per chunk


def test_a_local_teachers_batch_says_which_token_it_decodes(tmp_path, bars, tiny_model_dir, monkeypatch):
    """A local batch ends all its rows at once: until then the bar's note follows the decoding, then it is cleared."""
    from srt_hf.reflection import InstructionReflection
    from srt_hf.teachers import GenerationConfig, LocalTeacher

    monkeypatch.setattr(progress, "NOTE_INTERVAL", 0.0)  # every step redrawn
    teacher = LocalTeacher(str(tiny_model_dir), config=GenerationConfig(max_new_tokens=6, batch_size=4), device="cpu")
    rows = [{"instruction": f"Describe item-{i}.", "input": "", "output": "It is red."} for i in range(4)]
    map_in_chunks(datasets.Dataset.from_list(rows), InstructionReflection(teacher, structured="off"), tmp_path / "w",
                  key="k", chunk_rows=4)
    (bar,) = bars
    assert bar.notes[0] == ("teacher: 4 replies at token 1/6", 0)  # shown before any row is done
    assert ("teacher: 4 replies at token 6/6", 0) in bar.notes  # it followed the batch to its last token
    assert bar.notes[-1] == ("", 4) and bar.n == 4  # cleared when the chunk ends
    assert progress._note is None


def test_select_prints_no_datasets_bars(tmp_path, monkeypatch):
    from srt_hf import cli
    from srt_hf.selection import methods

    states, real = [], methods.chosen_method

    def recording(args):
        states.append(datasets.is_progress_bar_enabled())
        return real(args)

    monkeypatch.setattr(methods, "chosen_method", recording)
    path = tmp_path / "scored.parquet"
    datasets.Dataset.from_dict({"instruction": ["q1", "q2"], "output": ["a1", "a2"], "ifd": [0.5, 0.7],
                                "score_status": ["ok", "ok"]}).to_parquet(str(path))
    datasets.enable_progress_bars()
    assert cli.main(["select", str(path), "--top-n", "1", "--out", str(tmp_path / "kept.parquet")]) == 0
    assert states == [False] and datasets.is_progress_bar_enabled()
