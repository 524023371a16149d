"""DS weight as a selection method: :mod:`srt_hf.dsweight`'s result as :class:`~srt_hf.selection.Decisions`.

    table, ds_decisions = ds_weight_filter(candidates, valid, DSWeightConfig(quantile=0.79))
    decisions = from_ds_decisions(ds_decisions)   # selected, reasons, the per-candidate columns, methods

:class:`DSWeight` is the ``srt-hf select --ds-weight`` entry of :mod:`srt_hf.selection.methods`.
"""

from __future__ import annotations

from typing import Any

from .decisions import REASON, SELECTED, Decisions


def from_ds_decisions(ds_decisions, info: dict[str, Any] | None = None) -> Decisions:
    """The DS-weight decisions (:class:`srt_hf.dsweight.DSDecisions`) in the shape every method returns."""
    columns = dict(ds_decisions.columns)
    selected, reasons = columns.pop(SELECTED), columns.pop(REASON)
    return Decisions(selected, list(reasons), dict(info or {}), columns, methods=["ds-weight"])


class DSWeight:
    """``--ds-weight``: importance weighting with self-consistency over sampled answers (needs ``--valid``)."""

    name = "ds-weight"

    def add_arguments(self, parser, rule) -> None:
        rule.add_argument("--ds-weight", action="store_true", help="DS weight with self-consistency over sampled answers (needs --valid).")
        w = parser.add_argument_group("DS weight (--ds-weight; the question and answer columns: --instruction-column, --response-column)")
        w.add_argument("--valid", default=None, help="Labelled valid set (file, folder or Hub id) for the mean valid loss.")
        w.add_argument("--valid-question-column", default="question", help="Question column of the valid set.")
        w.add_argument("--valid-answer-column", default="solution", help="Reference answer column of the valid set.")
        w.add_argument("--group-column", default=None, help="Column naming each answer's question (default: the question text).")
        w.add_argument("--quantile", type=float, default=0.79, help="Keep consistent answers with d at or below this quantile.")
        w.add_argument("--min-votes", type=int, default=2, help="Answers that must agree for a majority (1: plain plurality).")
        w.add_argument("--ds-template", default="Question: {question}\nAnswer: {answer}", help="Loss template with {question} and {answer}, or 'chat'.")

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
        config = DSWeightConfig(model=args.student, template=args.ds_template, quantile=args.quantile, max_length=args.max_length,
                                min_votes=args.min_votes)
        valid = load_input(args.valid, args.split)
        table, ds_decisions = ds_weight_filter(
            ds, valid, config, question_column=question, response_column=response, group_column=args.group_column,
            valid_question_column=args.valid_question_column, valid_answer_column=args.valid_answer_column,
        )
        decisions = from_ds_decisions(ds_decisions, {
            "rule": "ds_weight_self_consistency", "quantile": args.quantile, "min_votes": args.min_votes,
            "threshold": ds_decisions.threshold, "mean_valid_loss": ds_decisions.mean_valid_loss, "ds_template": args.ds_template,
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
