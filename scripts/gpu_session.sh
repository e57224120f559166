#!/bin/bash
# The one command for a lent GPU machine (Python 3.12, torch 2.11, no internet), run from the repository root:
#   bash scripts/gpu_session.sh [budget_seconds]       (default 420: ends within 8 minutes)
# Builds neva_kernels._C for the GPU present, runs the GPU tests, compute-sanitizer (memcheck, racecheck) on the
# small cases marked `sanitizer`, then the benchmarks. Every log and result goes under $OUT (which the device tool
# brings back): $OUT/summary.txt as it goes, everything else packed into $OUT/session.tgz at the end. It starts no
# new step once the budget is nearly spent.
# Before the call, on the CPU machine: `git rev-parse HEAD > .commit` so the results name their commit.
set -u
BUDGET=${1:-420}
OUT=${OUT:-/tmp/out}; LOGS=/tmp/gpu_session; mkdir -p "$OUT" "$LOGS"
SECONDS=0
left() { echo $(( BUDGET - SECONDS )); }
step() {  # step NAME SECONDS CMD...: run CMD with a timeout, log to $LOGS/NAME.log, never abort the script
  local name=$1 limit=$2; shift 2
  (( $(left) < 20 )) && { echo "skip $name: budget spent" | tee -a "$OUT/summary.txt"; return; }
  (( limit > $(left) )) && limit=$(left)
  local t0=$SECONDS
  timeout -k 5 "$limit" "$@" >"$LOGS/$name.log" 2>&1; local rc=$?
  echo "$name: rc=$rc in $((SECONDS - t0))s" | tee -a "$OUT/summary.txt"
  tail -n 15 "$LOGS/$name.log"
}
export PYTHONUNBUFFERED=1 MAX_JOBS=16 NEVA_BUILD_CUDA=1
cc=$(python3 -c "import torch;p=torch.cuda.get_device_capability();print(f'{p[0]}.{p[1]}')")
[[ $cc == 9.0 ]] && export TORCH_CUDA_ARCH_LIST="9.0a" || export TORCH_CUDA_ARCH_LIST="$cc"
step env 30 bash -c 'nvidia-smi; python3 -c "import sys,torch,triton;print(sys.version);print(torch.__version__,torch.version.cuda,triton.__version__);print(torch.cuda.get_device_name())"; nvcc --version | tail -1; cat .commit 2>/dev/null'
# No internet there: no dependencies, no build isolation (the machine's torch builds the extension).
step build 240 python3 -m pip install --no-deps --no-build-isolation -e .
export NEVA_REQUIRE_CUDA_EXTENSION=1
step tests 180 python3 -m pytest -q -p no:cacheprovider -m gpu tests
for tool in memcheck racecheck; do
  step "sanitizer-$tool" 90 compute-sanitizer --tool "$tool" --error-exitcode 1 \
    python3 -m pytest -q -x -p no:cacheprovider -m "gpu and sanitizer" tests
done
step bench "$(( $(left) - 30 ))" python3 -m benchmarks --out "$LOGS/results" --budget-s "$(( $(left) - 60 ))"
echo "total ${SECONDS}s of budget ${BUDGET}s" | tee -a "$OUT/summary.txt"
tar czf "$OUT/session.tgz" -C "$LOGS" .
