"""Selection methods that explain themselves, and the run folder they write.

    from srt_hf.selection import select_top_ifd, top_ifd_decisions, write_selection_run
    kept = select_top_ifd(scored, rate=0.05)                       # the kept rows, in their original order
    decisions = top_ifd_decisions(scored["ifd"], scored["score_status"], rate=0.05)
    write_selection_run(Path("runs/top5"), decisions.table(scored), decisions.meta())

Every method returns one :class:`Decisions` (a keep flag and a ``kept: …`` / ``dropped: …`` reason per
row, the run.json ``selection`` entry, extra columns, the methods used): top-IFD share
(:mod:`.top_ifd`), k-center (:mod:`.kcenter`), DS weight (:mod:`.ds_weight`). ``srt-hf select`` walks
the list in :mod:`.methods`. Every rule is deterministic: the same input gives the same rows.
"""

from .decisions import (
    REASON,
    SELECTED,
    Decisions,
    apply_decisions,
    kept_rows,
    quantiles,
    reason_counts,
    with_decisions,
)
from .ds_weight import from_ds_decisions
from .kcenter import kcenter_decisions, pick_reason
from .run_folder import write_selection_run
from .top_ifd import select_top_ifd, top_ifd_decisions

__all__ = [
    "REASON", "SELECTED", "Decisions", "apply_decisions", "from_ds_decisions", "kcenter_decisions", "kept_rows",
    "pick_reason", "quantiles", "reason_counts", "select_top_ifd", "top_ifd_decisions", "with_decisions",
    "write_selection_run",
]
