#!/usr/bin/env bash
# The GPU measurement of issue 5 as one command, under 8 minutes (issue 5), on a lent GPU machine:
#   bash scripts/gpu-check.sh            (results in $OUT where the device tool sets it, else ./gpu-out)
# It runs from the checkout (PYTHONPATH=src, no install): the benchmark needs only torch, numpy and
# rich, which a CUDA image usually has. The quick run goes first so that a crash costs one minute,
# not eight; each step has its own time limit, and every log is written as it goes. --device cuda
# makes a machine whose torch cannot see the GPU fail at once instead of measuring its CPU.
set -uo pipefail
out="${OUT:-gpu-out}"
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python="${PYTHON:-python3}"
{ nvidia-smi || true; "$python" -c "import torch; print(torch.__version__, torch.cuda.is_available())"; } \
  > "$out/device.txt" 2>&1
timeout "${QUICK_LIMIT:-120}" "$python" benchmarks/train_throughput.py --device cuda --quick --json "$out/quick.json" \
  2>&1 | tee "$out/quick.log"
quick=${PIPESTATUS[0]}
if [ "$quick" -ne 0 ]; then
  echo "gpu-check: the quick run failed (exit $quick); see $out/quick.log" >&2
  exit "$quick"
fi
timeout "${FULL_LIMIT:-300}" "$python" benchmarks/train_throughput.py --device cuda --json "$out/full.json" \
  2>&1 | tee "$out/full.log"
exit "${PIPESTATUS[0]}"
