"""The selection methods of ``srt-hf select``, as one explicit list.

    for method in METHODS:
        method.add_arguments(parser, rule)      # its options, and its flag in the mutually exclusive rule group
    method = chosen_method(args)
    table, meta, drop, mapping = method.run(ds, args, mapping)

A new method is one module (decisions as :class:`~srt_hf.selection.Decisions`, plus a class with
``name``, ``add_arguments(parser, rule)``, ``chosen(args)`` and ``run(ds, args, mapping)``) and one entry
here. ``run`` returns the table with the decision columns, the run.json entries (``selection``, ``methods``,
…), the columns to leave out of the files, and the column mapping of the texts that become SFT data.
"""

from __future__ import annotations

from typing import Any, Protocol

from .ds_weight import DSWeight
from .kcenter import KCenter
from .top_ifd import TopIFD


class Method(Protocol):
    name: str

    def add_arguments(self, parser, rule) -> None: ...

    def chosen(self, args) -> bool: ...

    def run(self, ds, args, mapping) -> tuple[Any, dict[str, Any], list[str], Any]: ...


METHODS: list[Method] = [TopIFD(), KCenter(), DSWeight()]


def chosen_method(args) -> Method:
    """The method whose flag is set (argparse's rule group makes it exactly one)."""
    return next(m for m in METHODS if m.chosen(args))
