"""Progress bars that move inside a chunk, and no other library's bars inside them.

    with chunk_progress(bar, rows=64):       # chunks.map_in_chunks, around one chunk
        step = steps(total_tokens)           # deep in the work: the student's batches, the teacher's replies
        ...; step(tokens_of_this_batch)      # the bar moves by the matching share of the chunk's 64 rows

A chunk is the unit of resumption (64 rows by default); a bar that moved only per chunk sat at 0 for minutes
on a slow teacher or a CPU student. The work inside a chunk reports through :func:`steps` (the student per
scored batch, weighted by its tokens; the teacher per finished row), which turns done/total into rows of the
chunk's bar, so tqdm's rows/s and ETA follow the work as it happens. Work that finishes no row for a long time
(a local teacher decoding a whole batch at once) says where it is with :func:`note`, shown beside the bar. With
no chunk running, both are no-ops. :func:`quiet_foreign_bars` switches off transformers' and datasets' own bars
(their official switches) while srt_hf's bars run, and restores them after.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

_lock = threading.Lock()
_sink: Callable[[float], None] | None = None  # takes the share (0-1) of the running chunk's work done
_note: Callable[..., None] | None = None  # shows a short status beside the running chunk's bar
NOTE_INTERVAL = 0.5  # seconds between two redraws of a note


@contextlib.contextmanager
def chunk_progress(bar: Any, rows: int) -> Iterator[None]:
    """While one chunk of ``rows`` rows runs, work reported by :func:`steps` moves ``bar`` (a tqdm bar) by rows;
    when the chunk finishes the bar has moved by exactly ``rows``."""
    global _sink, _note
    shown = 0

    def sink(share: float) -> None:
        nonlocal shown
        target = min(rows, int(rows * max(0.0, share)))
        with _lock:
            if target > shown:  # a second pass over the same chunk never moves the bar back
                bar.update(target - shown)
                shown = target

    last_note = 0.0

    def show(text: str, *args: Any) -> None:
        nonlocal last_note
        with _lock:
            if time.monotonic() - last_note >= NOTE_INTERVAL or not text:
                bar.set_postfix_str(text % args if args else text)
                last_note = time.monotonic()

    _sink, _note = sink, show
    try:
        yield
    finally:
        _sink = _note = None
    if last_note:  # a note was shown: clear it
        show("")
    with _lock:
        if rows > shown:
            bar.update(rows - shown)


def steps(total: float) -> Callable[[float], None]:
    """A counter of ``total`` units of work (tokens, replies) in the running chunk: call it with the units just
    finished. A no-op when no chunk is running (a transform used on its own)."""
    sink = _sink
    if sink is None or total <= 0:
        return lambda units: None
    done = 0.0

    def step(units: float) -> None:
        nonlocal done
        done += units
        sink(done / total)

    return step


def note(text: str, *args: Any) -> None:
    """Show ``text % args`` beside the running chunk's bar (redrawn at most every :data:`NOTE_INTERVAL` s, formatted
    only then; cleared when the chunk ends): for work that moves no row for a while. Safe from any thread; a no-op
    with no chunk running."""
    show = _note
    if show is not None:
        show(text, *args)


@contextlib.contextmanager
def quiet_foreign_bars() -> Iterator[None]:
    """transformers' ("Loading weights") and datasets' (map, filter, "Generating train split") progress bars off;
    each is restored to what it was."""
    import datasets
    from transformers.utils import logging as transformers_logging

    transformers_on = transformers_logging.is_progress_bar_enabled()
    datasets_on = datasets.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if transformers_on:
            transformers_logging.enable_progress_bar()
        if datasets_on:
            datasets.enable_progress_bars()
