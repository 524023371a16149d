#!/usr/bin/env bash
# Every GPU check of the project on a lent GPU machine, each step with its own time limit and log under $OUT, the
# summary table rewritten after every step (a killed run still leaves it), most important steps first.
#
#   bash benchmarks/gpu_prepare.sh                       # here: the GPU kit + extra wheels into .gpu/
#   device run, carry [".gpu"]:  bash benchmarks/gpu_check.sh         # every check, most important first, under 8 min
#   device run, carry [".gpu"]:  ONLY='<printed>' BUDGET=<seconds left> bash benchmarks/gpu_check.sh   # if any was cut
# (the first call stops within its BUDGET and names what did not fit as the ONLY= of a second call; estimates for the
# whole: 8-11 minutes on one H200, not measured yet)
#   DEVICE=cpu SMALL=1 OUT=/tmp/gpu-dry bash benchmarks/gpu_check.sh   # the same steps on a CPU, small (a dry run)
#
# ONLY: the steps to run (shell patterns, space-separated; default all). BUDGET: seconds for the whole call
# (default 470, so that a call ends within 8 minutes; 1800 for SMALL=1): a step gets at most what is left, a step
# that would get under half its limit (or 30 s) is skipped, and the last line names what was skipped, or cut by the
# budget, as the ONLY= of the next call.
# The GPU machine has no network: .gpu/env.sh installs the kit's wheels once and sets the offline variables; the
# `prep` step adds what benchmarks/gpu_extras.txt lists where an import is missing there.
# Students are random models of real shapes built with the kit's tokenizer (speed depends on shapes, not weights).
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
SMALL=${SMALL:-0}
OUT=${OUT:-/tmp/gpu_check}
ONLY=${ONLY:-*}
if [ "$SMALL" = 1 ]; then slow=5; BUDGET=${BUDGET:-1800}; else slow=1; BUDGET=${BUDGET:-470}; fi  # a dry run: 2 cores
mkdir -p "$OUT"
if [ -f .gpu/env.sh ] && [ "$DEVICE" != cpu ]; then source .gpu/env.sh; fi  # not on a CPU dry run: cp312 wheels
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} SRT_HF_TEST_DEVICE=$DEVICE TOKENIZERS_PARALLELISM=false
DATA=${SRT_HF_GPU_DATA:-../shared/data}/alpaca_cherry_5_percent.json

summary=() skipped=()
selected() {  # selected NAME...: whether ONLY names any of them
  local - name pattern
  set -f  # the patterns are ONLY's, not file names here
  for name in "$@"; do
    for pattern in $ONLY; do
      # shellcheck disable=SC2053  # a pattern on purpose
      [[ $name == $pattern ]] && return 0
    done
  done
  return 1
}
write_summary() {  # the table so far; skipped steps as the ONLY= of the next call (prep first: a fresh machine needs it)
  local rerun=(prep) name
  for name in "${skipped[@]}"; do [ "$name" = prep ] || rerun+=("$name"); done
  { printf '%-36s %-14s %6s  %s\n' step verdict time result; printf '%s\n' "${summary[@]}"
    [ ${#skipped[@]} -eq 0 ] || echo "skipped for time: ONLY='${rerun[*]}'"; } >"$OUT/summary.txt"
}
# step NAME SECONDS COMMAND...: runs COMMAND under min(SECONDS, what BUDGET leaves), output to $OUT/NAME.log, one row.
step() {
  local name=$1 limit=$2; shift 2
  selected "$name" || return 0
  local left=$((BUDGET - SECONDS)) cut=0
  # under half its limit left (at least 30 s): most likely it would be cut, so it goes to the next call whole
  if [ "$left" -lt 30 ] || [ $((2 * left)) -lt "$limit" ]; then skipped+=("$name"); write_summary; return 0; fi
  [ "$limit" -gt "$left" ] && limit=$left cut=1
  local start=$SECONDS
  echo "== $name (limit ${limit}s, $((BUDGET - SECONDS))s left)"
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  local verdict=ok timed_out=0; [ $rc -eq 124 ] || [ $rc -eq 137 ] && timed_out=1  # 137: killed after the grace
  [ $rc -ne 0 ] && verdict="FAILED rc=$rc"; [ $timed_out = 1 ] && verdict="TIMED OUT"
  [ $timed_out = 1 ] && [ $cut = 1 ] && skipped+=("$name")  # cut by the budget, not by its own limit: run it again
  tail -n 15 "$OUT/$name.log"
  summary+=("$(printf '%-36s %-14s %5ss  %s' "$name" "$verdict" $((SECONDS - start)) \
    "$(grep '^RESULT' "$OUT/$name.log" | cut -c8- | paste -sd ';')")")
  write_summary
}

# ---- prep: the device, the versions, and the extra wheels where an import is missing (benchmarks/gpu_extras.txt)
prep() {
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')"
  local module wheels missing=()
  while read -r module wheels; do
    [[ -z $module || $module == \#* ]] && continue
    python3 -c "import $module" 2>/dev/null && continue
    missing+=("$module")
    # shellcheck disable=SC2086  # one requirement per word
    python3 -m pip install -q --no-index --no-deps --no-compile --find-links .gpu/extra --target /tmp/site $wheels \
      || echo "could not install $module from .gpu/extra (run benchmarks/gpu_prepare.sh before the device run)"
  done <benchmarks/gpu_extras.txt
  python3 - <<'PY'
import importlib
for name in ("torch", "transformers", "datasets", "trl", "accelerate", "peft", "kernels", "liger_kernel", "llguidance",
             "matplotlib", "gguf"):
    try:
        print(f"{name} {getattr(importlib.import_module(name), '__version__', '?')}")
    except Exception as err:  # noqa: BLE001 - a report line, not a failure
        print(f"{name} missing ({type(err).__name__})")
PY
  echo "RESULT installed from .gpu/extra: ${missing[*]:-nothing}"
  python3 -c "import srt_hf, llguidance, matplotlib, jinja2"  # the step fails if srt_hf cannot run here
}
export -f prep  # timeout runs commands, not functions: through bash
step prep 120 bash -c prep

# ---- the scoring engine (issue 19): ~5 min on an H200 (estimated)
# exactness: every architecture, both engines (auto = gpu on CUDA; forced cpu packed/padded), fp32 within 1e-5
if [ "$SMALL" = 1 ]; then pick=(-k "llama or gpu_engine or falls_back or flash"); else pick=(); fi
run_tests() {  # run_tests PYTEST_ARGS...: pytest's last line becomes the step's RESULT row
  local log rc; log=$(python3 -m pytest -q -p no:cacheprovider "$@" 2>&1)
  rc=$?; echo "$log"; echo "RESULT $(echo "$log" | tail -n 1)"; return $rc
}
export -f run_tests
step exactness $((150 * slow)) bash -c 'run_tests "$@"' _ tests/test_architectures.py tests/test_gpu_engine.py "${pick[@]}"
# speed: random students of the four real shapes (kit tokenizer) vs the reference loop and the batched user, most
# telling first; each step measures bf16 and float32 in one process (one model, one reference loop: bf16 must never
# be slower); the 1B shape carries the profile, the 8B one the memory goal; then the dtype table, and last the 1B
# shape through the CPU engine, profiled (the "before").
# SMALL=1 (a dry run on a CPU): each kind of step once, on the tiny shape, the GPU engine forced, generous limits.
declare -A small_done=()
scoring() {  # scoring NAME "DTYPES" SHAPE ROWS REF_ROWS ROUNDS LIMIT [EXTRA...]: one bench_scoring.py step
  local name=$1 dtypes=$2 shape=$3 rows=$4 ref=$5 rounds=$6 limit=$7; shift 7
  local engine=()
  if [ "$SMALL" = 1 ]; then
    local kind=$dtypes; [[ " $* " == *" --engine "* ]] && kind+=" engine"; [ -n "${small_done[$kind]:-}" ] && return 0; small_done[$kind]=1
    shape=tiny rows=4 ref=1 rounds=1 limit=$((limit * slow)); [[ " $* " == *" --engine "* ]] || engine=(--engine gpu)
  fi
  # the tokenizer's threads as a user has them (the kit turns them off); planning is part of the time measured
  # shellcheck disable=SC2086  # one dtype per word
  step "$name" "$limit" env -u TOKENIZERS_PARALLELISM python3 benchmarks/bench_scoring.py --shape "$shape" --device "$DEVICE" \
    --dtype $dtypes --data "$DATA" --rows "$rows" --ref-rows "$ref" --rounds "$rounds" "${engine[@]}" "$@"
}
scoring scoring_llama-3.2-1b "bfloat16 float32" llama-3.2-1b 384 32 2 110 --profile
scoring scoring_llama-3.1-8b "bfloat16 float32" llama-3.1-8b 96 16 1 120
scoring scoring_smollm2-135m "bfloat16 float32" smollm2-135m 1024 32 1 90
scoring scoring_qwen2.5-0.5b "bfloat16 float32" qwen2.5-0.5b 512 32 1 80
# bf16 / fp16 against fp32 on this device (README's dtype table)
if [ "$SMALL" = 1 ]; then tol=(--shape tiny --rows 2 --dtypes bfloat16); else tol=(--shape smollm2-135m --rows 128); fi
step scoring_dtype_tolerance $((75 * slow)) python3 benchmarks/bench_dtype_tolerance.py --device "$DEVICE" --data "$DATA" "${tol[@]}"
scoring scoring_llama-3.2-1b_cpu_engine bfloat16 llama-3.2-1b 256 8 1 90 --engine cpu --profile

# ---- the whole job on a GPU (issue 20): ~5 min on one H200 (estimated)
# Random models of real shapes with the kit's tokenizer, saved as local folders under $SRT_HF_BENCH_CACHE;
# hub kernels left at srt_hf's default (SRT_HF_HUB_KERNELS=auto), USE_HUB_KERNELS not set: offline, training must
# fall back with one notice line and go on.
export SRT_HF_BENCH_CACHE=${SRT_HF_BENCH_CACHE:-/tmp/srt_hf_bench}
unset USE_HUB_KERNELS
TRAIN_OUT=$SRT_HF_BENCH_CACHE/trained
if [ "$SMALL" = 1 ]; then
  small_shape=tiny; big_shape=tiny; cli_rows=(--rows 4 --recycle-rows 2 --max-new-tokens 16); sft_steps=2
  teacher_args=(--rows 4 --batch 2 --max-new-tokens 16 --rounds 1); sft_args=(--steps 3 --batch 2 --max-length 256)
else
  small_shape=smollm2-135m; big_shape=llama-1b; cli_rows=(--rows 256 --recycle-rows 32 --max-new-tokens 128); sft_steps=10
  teacher_args=(--rows 64 --batch 64 --max-new-tokens 128 --rounds 2); sft_args=(--steps 10 --batch 8 --max-length 1024)
fi
if [ "$DEVICE" = cpu ]; then
  launch=(python3 -m accelerate.commands.launch --cpu); on_device=(--use_cpu true --bf16 false --dtype float32)
else
  launch=(python3 -m accelerate.commands.launch --config_file recipes/accelerate_configs/single_gpu.yaml)
  on_device=(--use_cpu false --bf16 true)
fi
# the CLI on the device: score and recycle with local teacher and student folders, bf16
step cli_device 100 python3 benchmarks/gpu_cli_check.py --device "$DEVICE" --dtype bfloat16 --shape "$small_shape" \
  --data "$DATA" "${cli_rows[@]}"
# the same through the CLI's tests on the device (tests/test_cli_device.py: bf16 against the plain float32 run)
step cli_tests 90 bash -c 'run_tests "$@"' _ tests/test_cli_device.py
# the recipes offline, hub kernels at their default: the LoRA demo config and the full fine-tune config (Liger on),
# on a saved random student of the small shape
student=$SRT_HF_BENCH_CACHE/random-$small_shape
if selected sft_lora_demo sft_full_liger && [ $((BUDGET - SECONDS)) -ge 30 ]; then  # not for steps skipped for time
  timeout 120 python3 -c "import sys; sys.path.insert(0, 'benchmarks'); from random_student import build_random_student as b; b('$small_shape')" \
    >"$OUT/build_student.log" 2>&1 || echo "building the random student failed: see $OUT/build_student.log"
fi
recipe_args=(--model_name_or_path "$student" --base_model_id HuggingFaceTB/SmolLM2-135M-Instruct
             --dataset srt_hf/data/demo_alpaca.jsonl --max_steps "$sft_steps" --logging_steps 1 --save_strategy no)
rm -rf "$TRAIN_OUT"
step sft_lora_demo 75 python3 benchmarks/check_trained.py "$TRAIN_OUT/lora" --steps "$sft_steps" -- \
  "${launch[@]}" recipes/sft.py --config recipes/configs/smollm2_srt_lora_demo.yaml "${recipe_args[@]}" \
  "${on_device[@]}" --output_dir "$TRAIN_OUT/lora"
step sft_full_liger 90 python3 benchmarks/check_trained.py "$TRAIN_OUT/full" --steps "$sft_steps" -- \
  "${launch[@]}" recipes/sft.py --config recipes/configs/smollm2_srt.yaml "${recipe_args[@]}" \
  --num_train_epochs 1 --per_device_train_batch_size 8 --gradient_accumulation_steps 1 --max_length 512 \
  "${on_device[@]}" --output_dir "$TRAIN_OUT/full"
# speed: the local teacher (JSON grammar + guards) against plain generate; training tokens/s and MFU (1B shape)
step bench_teacher 100 python3 benchmarks/bench_teacher.py --model "$big_shape" --device "$DEVICE" --dtype bfloat16 \
  --data "$DATA" "${teacher_args[@]}"
step bench_sft 100 python3 benchmarks/bench_sft.py --model "$big_shape" --device "$DEVICE" --data "$DATA" "${sft_args[@]}"

echo
write_summary
cat "$OUT/summary.txt"
