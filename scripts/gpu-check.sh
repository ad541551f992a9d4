#!/usr/bin/env bash
# The GPU checks of issue 5 on a lent GPU machine, from the checkout (PYTHONPATH=src, no install:
# they need only torch, numpy and rich, which a CUDA image usually has). Results go to $OUT where
# the device tool sets it, else ./gpu-out; every log is written as it goes.
#
#   bash scripts/gpu-check.sh bench   the throughput benchmark's table (issue 5: one command, under
#                                     8 minutes; its batch-32 rows compile, as the tool does there),
#                                     then the equivalence check (as `check` runs it) in what is left of
#                                     DEADLINE seconds (575: one device call's 600 s less the
#                                     script's start); the check compiles the benchmark's graphs
#                                     again, which inductor's cache may hold (QUICK=1 runs the
#                                     benchmark's smoke plan first)
#   bash scripts/gpu-check.sh check   the equivalence check alone: the tool's graphed step, compiled
#                                     where a full run compiles, against eager steps (two cold
#                                     compiles took over 200 s on a fresh H100 machine); the
#                                     unchecked compiled bf16 case runs first, each case prints as
#                                     it ends, and a time limit keeps the cases finished
#   bash scripts/gpu-check.sh stacked K models stacked into one vmapped step (does stacking fill
#                                     the GPU?)
#   bash scripts/gpu-check.sh fast    one real `fast` run (SE-ResNet-52, rr 8,2,16) on CIFAR-10 at
#                                     $SERATIO_DATA, for the goal of >= 93% in under 5 minutes
#                                     (CIFAR-10's 186 MB exceed one device call's 64 MiB: here,
#                                     `python3 scripts/pack-cifar.py pack LAYOUT A B` packs it
#                                     losslessly into two ignored folders of about 51 MB; carry A in
#                                     one call and B in the next, each unpacked there at the call's
#                                     start with `pack-cifar.py unpack A /tmp/cifar10/cifar-10-batches-py`;
#                                     a warm machine keeps the first part for 30 s between calls)
#   bash scripts/gpu-check.sh mps     what `bench` runs, under an NVIDIA MPS daemon of its own,
#                                     started here and stopped at the end (files named bench-mps.*;
#                                     where no CUDA client can use the daemon, `bench` without it):
#                                     without MPS, 4 trials in 4 processes ran 0.93x one trial on an
#                                     H100; under it, 2.06x (fp32) and 2.52x (bf16) on an H200 (2026-11-28)
#
# --device cuda makes a machine whose torch cannot see the GPU fail at once instead of measuring
# its CPU. Each step has its own time limit (BENCH_LIMIT, EQUIVALENCE_LIMIT, STACKED_LIMIT, FAST_LIMIT seconds),
# so one that hangs leaves time for the next. The benchmark starts no round past its --budget, and
# a limit that stops it mid-round still prints the rounds it finished.
set -uo pipefail
mode="${1:-bench}"
out="${OUT:-gpu-out}"
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python="${PYTHON:-python3}"
{ nvidia-smi || true; "$python" -c "import torch; print(torch.__version__, torch.cuda.is_available())"; } \
  > "$out/device-$mode.txt" 2>&1

# The benchmark, then the equivalence check in what is left of DEADLINE seconds.
bench() {
  local start=$SECONDS bench_rc check_rc
  left() { local rest=$(( ${DEADLINE:-575} - (SECONDS - start) )); echo $(( rest < $1 ? (rest > 1 ? rest : 1) : $1 )); }
  if [ "${QUICK:-0}" = 1 ]; then
    timeout "$(left 120)" "$python" benchmarks/train_throughput.py --device cuda --quick 2>&1 | tee "$out/quick$1.log"
  fi
  timeout "$(left "${BENCH_LIMIT:-575}")" "$python" benchmarks/train_throughput.py --device cuda \
    --budget "$(left 420)" --json "$out/bench$1.json" 2>&1 | tee "$out/bench$1.log"
  bench_rc=${PIPESTATUS[0]}
  if [ "$(left 60)" -lt 60 ]; then
    echo "gpu-check: $(left 60) s left, too few for the equivalence check; run gpu-check.sh check" \
      | tee "$out/equivalence.log" >&2
    check_rc="not run"
  else
    timeout "$(left "${EQUIVALENCE_LIMIT:-240}")" "$python" benchmarks/cuda_equivalence.py \
      --json "$out/equivalence.json" 2>&1 | tee "$out/equivalence.log"
    check_rc=${PIPESTATUS[0]}
  fi
  echo "gpu-check: benchmark exit $bench_rc, equivalence exit $check_rc, $((SECONDS - start)) s" >&2
  [ "$bench_rc" -eq 0 ] && [ "$check_rc" = 0 ]
}

# An MPS daemon that a CUDA client can reach within a minute; else $mps_failed says why (a client
# of a daemon that cannot serve it may hang rather than fail, and the device call must not be lost
# to it). It runs in this shell, not a subshell, so that the benchmark inherits the pipe directory.
start_mps() {
  command -v nvidia-cuda-mps-control >/dev/null || { mps_failed="no nvidia-cuda-mps-control here"; return 1; }
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/seratio-mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/seratio-mps-log
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  nvidia-cuda-mps-control -d || { unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY; mps_failed="the MPS daemon did not start"; return 1; }
  if ! timeout 60 "$python" -c "import torch; torch.ones(1, device='cuda').sum().item()"; then
    echo quit | nvidia-cuda-mps-control
    unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
    mps_failed="a CUDA client could not use the MPS daemon within 60 s"
    return 1
  fi
}

case "$mode" in
  bench)
    bench ""
    ;;
  check)
    timeout "${EQUIVALENCE_LIMIT:-420}" "$python" benchmarks/cuda_equivalence.py --json "$out/equivalence.json" \
      2>&1 | tee "$out/equivalence.log"
    exit "${PIPESTATUS[0]}"
    ;;
  stacked)
    timeout "${STACKED_LIMIT:-240}" "$python" benchmarks/stacked_models.py --device cuda --json "$out/stacked.json" \
      2>&1 | tee "$out/stacked.log"
    exit "${PIPESTATUS[0]}"
    ;;
  fast)
    : "${SERATIO_DATA:?set SERATIO_DATA to a directory holding cifar-10-batches-py/}"
    run="${FAST_RUN_DIR:-/tmp/seratio-gpu-fast}"
    rm -rf "$run"
    timeout "${FAST_LIMIT:-420}" "$python" -m seratio train --rr 8,2,16 --recipe fast --device cuda --out "$run" \
      2>&1 | tee "$out/fast.log"
    status=${PIPESTATUS[0]}
    cp "$run/metrics.jsonl" "$run/config.json" "$out/" 2>/dev/null
    cp "$run/result.json" "$out/" 2>/dev/null || echo "gpu-check: no result.json (exit $status)" >&2
    exit "$status"
    ;;
  mps)
    if start_mps; then
      trap 'echo quit | nvidia-cuda-mps-control; cp "$CUDA_MPS_LOG_DIRECTORY/control.log" "$out/mps-control.log" 2>/dev/null' EXIT
      bench -mps
    else
      echo "gpu-check: $mps_failed; the benchmark runs without MPS" | tee "$out/mps-control.log" >&2
      bench ""
    fi
    ;;
  *)
    echo "gpu-check: unknown mode '$mode'; use bench, check, stacked, fast or mps" >&2
    exit 2
    ;;
esac
