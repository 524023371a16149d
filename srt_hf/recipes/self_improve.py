"""Self-improvement with DS weight: the model learns from its own majority-consistent answers (Jiang et al., 2024).

    srt-hf self-improve --config self_improve_demo        # = python recipes/self_improve.py --config recipes/configs/self_improve_demo.yaml
    srt-hf self-improve --model_name_or_path HuggingFaceTB/SmolLM2-360M-Instruct --num_samples 8 \
        --output_dir outputs/self-improve                      # the bundled arithmetic set
    srt-hf self-improve --endpoint_url http://127.0.0.1:8000/v1 --endpoint_model my-model ...

1. Sample ``num_samples`` answers per question at ``temperature`` — from the model itself (batched
   ``generate``) or from an OpenAI-compatible server (``--endpoint_url``), both through
   :mod:`srt_hf.teachers` with a response cache in ``output_dir/cache.sqlite`` (a rerun resumes).
2. Extract the final number of each answer and vote per question (self-consistency).
3. DS weight (:mod:`srt_hf.dsweight`): base-model loss of every answer and of the labelled valid
   set, ``w``, ``d``; keep the majority-consistent answers with ``d`` below the 0.79 threshold. The
   defaults are the reference code's rules (rubickkcibur/IWSI): the loss of the whole text
   ``"Q: " + question + "\nA: " + EOS + answer``, a plain plurality vote on the first number after the
   last "the answer is" (as an integer), the pool without ``w = 0``, ``th = sorted(d)[int(N · 0.79)]``
   and ``d < th``. srt_hf's own variant: ``--ds_loss_tokens answer --ds_template "Question: {question}\nAnswer: {answer}"
   --min_votes 2 --ds_threshold_rule quantile --ds_zero_weight_in_pool true --ds_answer_extraction last_number``.
4. SFT the base model on the kept answers (prompt = the sampling prompt, completion = the answer).

By default the data is the small arithmetic word-problem set shipped with srt_hf
(``srt_hf/data/arith_train.jsonl``: 40 questions; ``arith_valid.jsonl``: 10 labelled solutions), so the
recipe runs offline. Training settings are TRL's ``SFTConfig`` flags; without a GPU pass
``--use_cpu true --bf16 false`` (the demo config does).

Writes ``output_dir/data/`` (a run folder: rows.parquet holds every sampled answer with its vote,
loss, w, d, ``selected`` and ``selection_reason``; sft/train.parquet the kept answers) and
``output_dir/model/`` (the fine-tuned model; skipped, with the reason in run.json, when nothing is kept).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from srt_hf.dsweight import DSWeightConfig
from srt_hf.train import recipe_entry_points, recipe_options

DEFAULT_PROMPT = 'Answer in one short line: the calculation, then "The answer is <number>."\n\n{question}'
# The DS-weight options: recipe option -> field of DSWeightConfig (its default and help).
DS_OPTIONS = {"ds_template": "template", "ds_loss_tokens": "loss_tokens", "ds_answer_extraction": "answer_extraction",
              "quantile": "quantile", "ds_threshold_rule": "threshold_rule", "min_votes": "min_votes",
              "ds_zero_weight_in_pool": "zero_weight_in_pool"}


@dataclass
class SelfImproveArguments(recipe_options(DSWeightConfig, DS_OPTIONS)):
    """Where the questions come from, how answers are sampled, and how they are filtered (the DS-weight options:
    :data:`DS_OPTIONS`)."""

    model_name_or_path: str = field(default="default", metadata={"help": "The model that answers (unless endpoint_url), scores (DS weight) and is fine-tuned. 'default' is the embedded SmolLM2-135M-Instruct."})
    train_file: str = field(default="", metadata={"help": "Questions (.jsonl/.json/.csv/.parquet). Default: the bundled arith_train.jsonl."})
    valid_file: str = field(default="", metadata={"help": "Labelled valid set for the mean valid loss. Default: the bundled arith_valid.jsonl."})
    question_column: str = field(default="question", metadata={"help": "Column of the questions (train and valid)."})
    valid_answer_column: str = field(default="solution", metadata={"help": "Column of the valid set's reference answers (worked solutions)."})
    gold_column: str | None = field(default="answer", metadata={"help": "Optional column of the train set's true final answers, only to report accuracy."})
    limit: int | None = field(default=None, metadata={"help": "Use only the first N questions."})
    num_samples: int = field(default=4, metadata={"help": "Answers sampled per question (K)."})
    temperature: float = field(default=0.8, metadata={"help": "Sampling temperature."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling threshold."})
    max_new_tokens: int = field(default=256, metadata={"help": "Longest sampled answer, in tokens."})
    sampling_seed: int = field(default=0, metadata={"help": "Sample k uses seed sampling_seed + k."})
    sampling_batch_size: int = field(default=16, metadata={"help": "Prompts per generate call (local sampling)."})
    endpoint_url: str | None = field(default=None, metadata={"help": "Sample from this OpenAI-compatible server (e.g. http://127.0.0.1:8000/v1) instead of the local model."})
    endpoint_model: str | None = field(default=None, metadata={"help": "Model name sent to the server (vLLM and `transformers serve` need it)."})
    prompt_template: str = field(default=DEFAULT_PROMPT, metadata={"help": "User message of the sampling prompt, with {question}; also the SFT prompt."})

    def ds_config(self) -> DSWeightConfig:
        """The :class:`srt_hf.dsweight.DSWeightConfig` of these arguments."""
        return DSWeightConfig(model=self.model_name_or_path, **{name: getattr(self, option) for option, name in DS_OPTIONS.items()})


def run(args: SelfImproveArguments, training_args) -> dict:
    """Sample, vote, DS-filter, SFT; returns the metadata written to output_dir/data/run.json."""
    from srt_hf.locks import output_lock

    with output_lock(Path(training_args.output_dir), folder=True, command="recipes/self_improve.py",
                     then="rerun this command", elsewhere="--output_dir"):  # one run per output_dir
        return _run(args, training_args)


def _run(args: SelfImproveArguments, training_args) -> dict:
    import datasets

    from srt_hf import models, runs, status
    from srt_hf.dsweight import ds_weight_filter
    from srt_hf.errors import ConfigError, InputError
    from srt_hf.formats import to_prompt_completion
    from srt_hf.selection import write_selection_run
    from srt_hf.teachers import GenerationConfig, load_teacher
    from srt_hf.train import train_sft

    if args.num_samples < 1:
        raise ConfigError(f"num_samples must be >= 1 (got {args.num_samples}).")
    if "{question}" not in args.prompt_template:
        raise ConfigError("prompt_template must contain {question}.")
    out = Path(training_args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    train = _load(args.train_file or str(_bundled("arith_train.jsonl")))
    valid = _load(args.valid_file or str(_bundled("arith_valid.jsonl")))
    for ds, cols, what in ((train, [args.question_column], "train_file"), (valid, [args.question_column, args.valid_answer_column], "valid_file")):
        for c in cols:
            if c not in ds.column_names:
                raise InputError(f"{what} has no column {c!r} (it has {ds.column_names})", column=c, fix="set question_column / valid_answer_column")
    if args.limit is not None:
        train = train.select(range(min(args.limit, len(train))))
    questions = train[args.question_column]
    ids = train["id"] if "id" in train.column_names else [str(i) for i in range(len(train))]
    gold = train[args.gold_column] if args.gold_column and args.gold_column in train.column_names else None
    prompts = [args.prompt_template.replace("{question}", q) for q in questions]

    # 1. sample
    config = GenerationConfig(temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens,
                              seed=args.sampling_seed, batch_size=args.sampling_batch_size)
    sampler_name = args.endpoint_url or args.model_name_or_path
    sampler = load_teacher(sampler_name, model=args.endpoint_model if args.endpoint_url else None, config=config, cache_path=out / "cache.sqlite")
    conversations = [[{"role": "user", "content": p}] for p in prompts]
    samples = []
    for k in range(args.num_samples):
        print(f"self_improve: sampling answer {k + 1} of {args.num_samples} for {len(prompts)} questions")
        samples.append(sampler.generate(conversations, overrides={"seed": args.sampling_seed + k}))
    del sampler
    rows = {"id": [], "question_id": [], "question": [], "instruction": [], "output": [], "sample": [], "sample_status": [], "gold_answer": []}
    for i in range(len(prompts)):
        for k in range(args.num_samples):
            c = samples[k][i]
            rows["id"].append(f"{ids[i]}-s{k}")
            rows["question_id"].append(str(ids[i]))
            rows["question"].append(questions[i])
            rows["instruction"].append(prompts[i])
            rows["output"].append(c.text or "")
            rows["sample"].append(k)
            rows["sample_status"].append(c.status)
            rows["gold_answer"].append(str(gold[i]) if gold is not None else None)
    candidates = datasets.Dataset.from_dict(rows)

    # 2-3. vote and DS weight
    ds_config = args.ds_config()
    table, decisions = ds_weight_filter(
        candidates, valid, ds_config, question_column="question", response_column="output", group_column="question_id",
        valid_question_column=args.question_column, valid_answer_column=args.valid_answer_column,
    )
    failed = [i for i, s in enumerate(rows["sample_status"]) if not status.is_ok(s)]
    if failed:  # a failed request is not an answer: say so instead of "no numeric answer"
        from srt_hf.selection import with_decisions

        reasons, selected = list(table["selection_reason"]), list(table["selected"])
        for i in failed:  # a cut-off text still votes (the reference has no such notion), but is never learnt from
            reasons[i] = f"dropped: sampling failed ({rows['sample_status'][i]})"
            selected[i] = False
        table = with_decisions(table, selected, reasons)
    stats = _stats(table, gold is not None)
    meta = {
        "source": {"name": args.train_file or "srt_hf/data/arith_train.jsonl (bundled)"},
        "student": {"model": models.display_name(args.model_name_or_path)},
        "teacher": {"model": (args.endpoint_model or sampler_name) if args.endpoint_url else models.display_name(sampler_name),
                    "role": "samples the candidate answers", "temperature": args.temperature, "top_p": args.top_p,
                    "max_new_tokens": args.max_new_tokens, "num_samples": args.num_samples, "seed": args.sampling_seed},
        "selection": {"rule": "ds_weight_self_consistency", **ds_config.rule(), "threshold": decisions.threshold,
                      "mean_valid_loss": decisions.mean_valid_loss,
                      "valid_set": args.valid_file or "srt_hf/data/arith_valid.jsonl (bundled)", "valid_rows": len(valid)},
        "prompts": {"sampling": args.prompt_template},
        "methods": ["ds-weight"],
        "stats": stats,
        "columns": {
            "question_id": "id of the question the answer was sampled for", "sample": "sample number k (seed = sampling_seed + k)",
            "sample_status": "ok | request_failed: <reason>", "answer": "final number extracted from the answer",
            "majority_answer": "self-consistency majority of the question's answers", "votes": "answers giving the majority",
            "answered": "answers of the question with a final number", "consistent": "answer equals the majority",
            "loss": f"base-model mean token loss ({ds_config.loss_tokens} tokens of the DS template)",
            "w": "clip(mean_valid_loss / loss, 0, 2)", "d": "w if w > 1 else min(1 / w, 5)",
        },
    }
    meta = write_selection_run(out / "data", table, meta)

    # 4. SFT
    kept = table.filter(lambda r: r["selected"])
    if len(kept):
        sft = datasets.Dataset.from_list([to_prompt_completion(r["instruction"], "", r["output"]) for r in kept])
        model_dir = train_sft(args.model_name_or_path, sft, out / "model", args=training_args).args.output_dir
        meta["training"] = {"status": "trained", "output_dir": model_dir, "rows": len(kept), "max_steps": training_args.max_steps}
    else:
        meta["training"] = {"status": status.make(status.SKIPPED, "no answer was kept (see data/rows.parquet selection_reason)"), "rows": 0}
    runs.write_meta(out / "data", meta)
    _print_summary(meta, out)
    return meta


def _bundled(name: str) -> Path:
    import srt_hf

    return Path(srt_hf.__file__).resolve().parent / "data" / name


def _load(path: str):
    from srt_hf.dataio import load_input

    return load_input(path)


def _stats(table, with_gold: bool) -> dict:
    """Vote and accuracy figures for run.json (accuracy needs the gold answers)."""
    questions: dict[str, dict] = {}
    for r in table.select_columns(["question_id", "majority_answer", "gold_answer", "answer", "selected"]):
        questions.setdefault(r["question_id"], r)
    stats = {
        "questions": len(questions),
        "questions_with_majority": sum(q["majority_answer"] is not None for q in questions.values()),
        "candidates": len(table),
        "kept": sum(table["selected"]),
    }
    if with_gold:
        stats["majority_accuracy"] = sum(q["majority_answer"] == q["gold_answer"] for q in questions.values()) / max(len(questions), 1)
        kept = [r for r in table.select_columns(["answer", "gold_answer", "selected"]) if r["selected"]]
        stats["kept_accuracy"] = sum(r["answer"] == r["gold_answer"] for r in kept) / len(kept) if kept else None
    return stats


def _print_summary(meta: dict, out: Path) -> None:
    from srt_hf.summary import table

    s = meta["stats"]
    print(f"\nself_improve: kept {s['kept']} of {s['candidates']} answers to {s['questions']} questions -> {out}")
    print(f"training: {meta['training']['status']}\n")
    print(table(["reason", "rows"], list(meta["reasons"].items())))
    figures = [[k, v] for k, v in s.items() if k not in ("questions", "candidates", "kept")]
    print("\n" + table(["figure", "value"], figures))


# the recipe's options (its own and TRL's SFTConfig), and its command line
make_parser, main = recipe_entry_points("self_improve", run, SelfImproveArguments)


if __name__ == "__main__":
    sys.exit(main())
