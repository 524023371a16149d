#!/usr/bin/env bash
# Everything a device run of benchmarks/gpu_check.sh carries, prepared here (on the machine with the package index):
#   bash benchmarks/gpu_prepare.sh        # then: device run, carry [".gpu"], bash benchmarks/gpu_check.sh
# 1. the GPU kit (../shared/gpu/prepare.sh: its wheels, the embedded model's tokenizer, the benchmark data) into .gpu/
# 2. the wheels of benchmarks/gpu_extras.txt into .gpu/extra/ (installed there only where the GPU machine lacks them)
# and checks that the working tree and .gpu/ together stay under what one call carries (64 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
bash ../shared/gpu/prepare.sh
mapfile -t wanted < <(grep -v '^#' benchmarks/gpu_extras.txt | awk 'NF > 1 { for (i = 2; i <= NF; i++) print $i }')
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux_2_27_x86_64 --platform manylinux_2_12_x86_64 --platform manylinux2010_x86_64 \
  -d .gpu/extra "${wanted[@]}"
carried=$(( $(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- | tail -n 1 | cut -f1) \
  + $(du -sb .gpu | cut -f1) ))
echo "carried with the working tree: $((carried / 1048576)) MiB of 64 MiB ($(ls .gpu/extra | wc -l) extra wheels)"
[ "$carried" -lt $((62 * 1048576)) ] || { echo "over what one device run carries: drop wheels from benchmarks/gpu_extras.txt" >&2; exit 1; }
