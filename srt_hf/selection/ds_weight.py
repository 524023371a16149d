"""DS weight as a selection method: :mod:`srt_hf.dsweight`'s result as :class:`~srt_hf.selection.Decisions`.

    table, ds_decisions = ds_weight_filter(candidates, valid, DSWeightConfig(quantile=0.79))
    decisions = from_ds_decisions(ds_decisions)   # selected, reasons, the per-candidate columns, methods

:class:`DSWeight` is the ``srt-hf select --ds-weight`` entry of :mod:`srt_hf.selection.methods`.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from .decisions import REASON, SELECTED, Decisions

# DSWeightConfig fields that come from the select command's shared options (or --ds-template), not from --ds-weight's own
_SHARED = ("model", "revision", "template", "max_length", "dtype", "device", "max_batch_tokens")


def from_ds_decisions(ds_decisions, info: dict[str, Any] | None = None) -> Decisions:
    """The DS-weight decisions (:class:`srt_hf.dsweight.DSDecisions`) in the shape every method returns."""
    columns = dict(ds_decisions.columns)
    selected, reasons = columns.pop(SELECTED), columns.pop(REASON)
    return Decisions(selected, list(reasons), dict(info or {}), columns, methods=["ds-weight"])


class DSWeight:
    """``--ds-weight``: importance weighting with self-consistency over sampled answers (needs ``--valid``)."""

    name = "ds-weight"

    def add_arguments(self, parser, rule) -> None:
        from ..cli import add_dataclass_arguments
        from ..dsweight import DEFAULT_TEMPLATE, DSWeightConfig

        rule.add_argument("--ds-weight", action="store_true", help="DS weight with self-consistency over sampled answers (needs --valid).")
        w = parser.add_argument_group("DS weight (--ds-weight; the question and answer columns: --instruction-column, --response-column; "
                                      "the defaults follow the reference code)")
        w.add_argument("--valid", default=None, help="Labelled valid set (file, folder or Hub id) for the mean valid loss.")
        w.add_argument("--valid-question-column", default="question", help="Question column of the valid set.")
        w.add_argument("--valid-answer-column", default="solution", help="Reference answer column of the valid set.")
        w.add_argument("--group-column", default=None, help="Column naming each answer's question (default: the question text).")
        w.add_argument("--ds-template", default=DEFAULT_TEMPLATE,
                       help="Loss text with {question}, {answer} and optionally {eos}, or 'chat'. Default: the reference's.")
        add_dataclass_arguments(w, DSWeightConfig, skip=_SHARED)

    def chosen(self, args) -> bool:
        return bool(args.ds_weight)

    def run(self, ds, args, mapping):
        """(table, meta, columns to leave out of the files, column mapping of the SFT texts)."""
        from .. import models
        from ..dataio import load_input
        from ..dsweight import DSWeightConfig, ds_weight_filter
        from ..errors import InputError
        from ..formats import ColumnMapping

        if not args.valid:
            raise InputError("--ds-weight needs a labelled valid set", fix="pass --valid FILE (question + reference answer columns)")
        question = mapping.instruction_column or "question"
        response = mapping.response_column or next((c for c in ("response", "output", "completion") if c in ds.column_names), "response")
        settings = {f.name: getattr(args, f.name) for f in fields(DSWeightConfig) if f.name not in _SHARED}
        config = DSWeightConfig(model=args.student, template=args.ds_template, **settings,
                                **({} if args.max_length is None else {"max_length": args.max_length}))
        valid = load_input(args.valid, args.split)
        table, ds_decisions = ds_weight_filter(
            ds, valid, config, question_column=question, response_column=response, group_column=args.group_column,
            valid_question_column=args.valid_question_column, valid_answer_column=args.valid_answer_column,
        )
        decisions = from_ds_decisions(ds_decisions, {
            "rule": "ds_weight_self_consistency", **config.rule(),
            "threshold": ds_decisions.threshold, "mean_valid_loss": ds_decisions.mean_valid_loss,
            "valid_set": str(args.valid), "valid_rows": len(valid),
        })
        meta = {
            "selection": decisions.info,
            "student": {"model": models.display_name(args.student)},
            "methods": decisions.methods,
            "columns": {"answer": "final number extracted from the answer", "majority_answer": "self-consistency majority of the question's answers",
                        "votes": "answers giving the majority", "answered": "answers of the question with a final number",
                        "consistent": "answer equals the majority", "loss": "base-model mean token loss of the answer given the question",
                        "w": "clip(mean_valid_loss / loss, 0, 2)", "d": "w if w > 1 else min(1 / w, 5)"},
        }
        return table, meta, [], ColumnMapping(instruction_column=question, response_column=response)
