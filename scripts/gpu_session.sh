#!/bin/bash
# One call on a lent GPU machine (Python 3.12, torch 2.11, triton 3.6, no network) that brings back the most
# evidence it can. From the repository root, after `git rev-parse HEAD > .commit` on the CPU machine:
#   bash scripts/gpu_session.sh [budget_s]              default 480; give the call a time limit of budget_s + 60
#   bash scripts/gpu_session.sh --rehearse [budget_s]   the same steps on a CPU machine (see "Rehearsal" below)
# The steps, in order, each under `timeout` with a positive limit (its share of the time left), each writing its
# log straight into $OUT as it runs, so a call cut at any point returns everything up to that point:
#   probe      GPU, compute capability, driver and versions, each command with a timeout          -> summary.txt
#   build      setup.py build_ext --inplace for this GPU's architecture only (incremental)          -> build.log
#   selfcheck  every op x backend against float64: the first evidence, one table                   -> selfcheck.log
#   tests      the gpu tests in parallel workers, verbose, with a per-test timeout that outlives a hung kernel
#              (a hung worker is ended and replaced); the pass/fail lines also go to summary.txt   -> tests.log
#   sanitizer  memcheck with the caching allocator off; racecheck and synccheck on neva's kernels only, once
#              the filter is shown to match kernels of the built extension                          -> sanitizer.log
#   bench      the benchmarks with a budget that bounds set-up too; results.json after every case  -> bench.log
# $OUT ends with these 8 files: summary.txt, the 5 logs, results.json and session.tgz (the benchmark tables and
# plots, the tests' junit xml). Every run works in a fresh folder, so a rerun on a warm machine packs only its own
# results. The logs are capped at 15 MiB each (the device tool returns files up to 16 MiB).
#
# Rehearsal (--rehearse, CI runs it: tests/scripts/test_gpu_session.py): stand-ins from tests/scripts/standins
# come first on PATH (nvidia-smi that hangs unless queried, a compute-sanitizer that checks nothing, cuobjdump),
# the build compiles nothing (NEVA_BUILD_CUDA=0), the tests are tests/scripts/rehearsal_cases.py (one passes, one
# fails, one hangs), and the benchmarks run --quick on the CPU.
set -u
cd "$(dirname "$0")/.."
REHEARSE=0
[[ ${1:-} == --rehearse ]] && { REHEARSE=1; shift; }
BUDGET=${1:-480}
if ! [[ $BUDGET =~ ^[0-9]+$ ]] || (( BUDGET < 30 )); then
  echo "gpu_session.sh: budget_s must be a whole number of seconds, at least 30; got '$BUDGET'" >&2
  exit 2
fi
OUT=${OUT:-/tmp/gpu_session_out}
WORK=$(mktemp -d /tmp/gpu_session.XXXXXX)
mkdir -p "$OUT"
rm -f "$OUT"/{summary.txt,build.log,selfcheck.log,tests.log,sanitizer.log,bench.log,results.json,session.tgz}
SECONDS=0
clamp() { echo $(( $1 < $2 ? $2 : $1 > $3 ? $3 : $1 )); }  # clamp VALUE LOW HIGH
RESERVE=$(clamp $(( BUDGET / 40 )) 2 10)    # seconds kept for packing session.tgz at the end
GRACE=$(clamp $(( BUDGET / 60 )) 1 5)       # after its limit a step gets SIGTERM, and SIGKILL this much later
PROBE_LIMIT=$(clamp $(( BUDGET / 12 )) 3 30)
MIN_STEP=5                                  # a step that would get less is skipped (and says so)
MAX_LOG=$(( 15 * 1024 * 1024 ))
KERNEL_FILTER=neva  # in the mangled (_ZN4neva...) and plain (neva::...) names of every kernel of the extension

if (( REHEARSE )); then
  export PATH="$PWD/tests/scripts/standins:$PATH"
  TESTS=(tests/scripts/rehearsal_cases.py) SANITIZER_TESTS=(-m sanitizer tests/scripts/rehearsal_cases.py)
  TEST_TIMEOUT=3 WORKERS=2 BENCH_FLAGS=(--quick)
else
  TESTS=(-m gpu tests) SANITIZER_TESTS=(-m "gpu and sanitizer" tests)
  TEST_TIMEOUT=120 WORKERS=$(clamp $(( $(nproc) / 2 )) 1 8) BENCH_FLAGS=()
fi
export PYTHONUNBUFFERED=1

note() { echo "$*" | tee -a "$OUT/summary.txt"; }
left() { echo $(( BUDGET - SECONDS )); }

capped() {  # appends stdin to file $1 while it is under MAX_LOG bytes, then drops the rest (never blocks the writer)
  local room=$(( MAX_LOG - $(stat -c %s "$1" 2>/dev/null || echo 0) ))
  { head -c $(( room > 0 ? room : 0 )); cat > /dev/null; } >> "$1"
}

probe() {  # probe CMD...: the first 4 KB of its output within PROBE_LIMIT seconds; its rc (124: no answer in time)
  timeout -k 2 "$PROBE_LIMIT" "$@" 2>&1 | head -c 4096
  return "${PIPESTATUS[0]}"
}

# step NAME LOG CAP SHARE CMD...: runs CMD with a limit of SHARE% of the time left (at most CAP s), its output
# appended to $OUT/LOG as it comes. Sets RC (124/137: cut at the limit; "skipped") and OFFSET (where its output
# starts in LOG).
step() {
  local name=$1 log=$2 cap=$3 share=$4; shift 4
  local limit=$(( ($(left) - RESERVE - GRACE) * share / 100 ))
  (( limit > cap )) && limit=$cap
  OFFSET=$(stat -c %s "$OUT/$log" 2>/dev/null || echo 0)
  if (( limit < MIN_STEP )); then
    echo "=== $name: skipped, $(left)s of the ${BUDGET}s budget left" >> "$OUT/$log"
    note "$name: skipped, only ${limit}s would be left for it"
    RC=skipped
    return
  fi
  echo "=== $name (limit ${limit}s, $(date -u +%T) UTC): $*" >> "$OUT/$log"
  local start=$SECONDS
  timeout -k "$GRACE" "$limit" "$@" 2>&1 | capped "$OUT/$log"
  RC=${PIPESTATUS[0]}
  local outcome="rc=$RC"
  [[ $RC == 124 || $RC == 137 ]] && outcome="CUT at its ${limit}s limit"
  note "$name: $outcome after $(( SECONDS - start ))s"
}

since_step() { tail -c +$(( OFFSET + 1 )) "$OUT/$1"; }  # the output of the last step in log $1

# ---- probe ----------------------------------------------------------------------------------------------------
mode=""
(( REHEARSE )) && mode="--rehearse "
note "gpu_session.sh ${mode}budget ${BUDGET}s, commit $(cat .commit 2>/dev/null || echo unknown), $(date -u +%FT%TZ)"
gpu=$(probe nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader | head -n 1)
note "gpu: ${gpu:-nvidia-smi gave no answer within ${PROBE_LIMIT}s}"
cc=$(echo "$gpu" | awk -F', ' '$2 ~ /^[0-9]+\.[0-9]+$/ {print $2}')
[[ -z $cc ]] && cc=$(probe python3 -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" | tail -n 1)
if ! [[ $cc =~ ^[0-9]+\.[0-9]+$ ]]; then
  note "compute capability unknown; building for 9.0a, the lent machines' Hopper"
  cc=9.0
fi
[[ $cc == 9.0 ]] && arch=9.0a || arch=$cc  # wgmma and setmaxnreg need sm_90a
versions=$(probe python3 -c "import sys, torch, triton, numpy; print('Python', sys.version.split()[0], 'torch',
  torch.__version__, 'CUDA', torch.version.cuda, 'triton', triton.__version__, 'numpy', numpy.__version__)" | tail -n 1)
note "versions: ${versions:-python3 gave no answer within ${PROBE_LIMIT}s}"
note "nvcc: $(probe nvcc --version | tail -n 1)"
{ echo "=== nvidia-smi"; probe nvidia-smi || echo "(rc=$?; 124: no answer within ${PROBE_LIMIT}s)"; } >> "$OUT/build.log"

# ---- build ----------------------------------------------------------------------------------------------------
export TORCH_CUDA_ARCH_LIST=$arch MAX_JOBS=$(nproc) NEVA_BUILD_CUDA=$(( REHEARSE ? 0 : 1 ))
step build build.log 300 60 python3 setup.py build_ext --inplace
[[ $RC == 0 && $REHEARSE == 0 ]] && export NEVA_REQUIRE_CUDA_EXTENSION=1  # a missing kernel fails, not skips

# ---- selfcheck ------------------------------------------------------------------------------------------------
step selfcheck selfcheck.log 120 25 python3 -m neva_kernels.selfcheck
since_step selfcheck.log | sed -n '/^neva_kernels self-check on/,$p' | tee -a "$OUT/summary.txt"

# ---- tests ----------------------------------------------------------------------------------------------------
step tests tests.log 420 55 python3 -m pytest -p no:cacheprovider -v -rfE -n "$WORKERS" --timeout "$TEST_TIMEOUT" \
  --timeout-method thread --junitxml "$WORK/tests.xml" "${TESTS[@]}"
test_lines='(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS) +tests/|crashed|^=+ .*(passed|failed|error|skipped|no tests).* in '
since_step tests.log | grep -E "$test_lines" >> "$OUT/summary.txt"

# ---- sanitizers -----------------------------------------------------------------------------------------------
sanitize() {  # sanitize TOOL CAP SHARE [compute-sanitizer options]: the sanitizer tests under one tool
  local tool=$1 cap=$2 share=$3; shift 3
  step "sanitizer-$tool" sanitizer.log "$cap" "$share" compute-sanitizer --tool "$tool" --error-exitcode 1 "$@" \
    python3 -m pytest -p no:cacheprovider -p no:xdist -v --timeout "$(( TEST_TIMEOUT * 3 ))" \
    --timeout-method thread "${SANITIZER_TESTS[@]}"
  since_step sanitizer.log | grep -E 'SUMMARY|^=+ .*(passed|failed|error|no tests).* in ' | sed "s/^/  $tool: /" \
    >> "$OUT/summary.txt"
}
# The caching allocator hands out slices of big blocks, inside which memcheck sees no overrun.
PYTORCH_NO_CUDA_MEMORY_CACHING=1 sanitize memcheck 120 30
extension=$(ls neva_kernels/_C*.so 2>/dev/null | head -n 1)
matched=$(timeout -k 2 "$PROBE_LIMIT" cuobjdump --dump-resource-usage "${extension:-neva_kernels/_C.so}" 2>/dev/null |
  grep -c "Function .*$KERNEL_FILTER")
if (( matched > 0 )); then
  note "sanitizer filter kns=$KERNEL_FILTER selects $matched kernels of ${extension:-the extension}"
  sanitize racecheck 120 40 --kernel-name "kns=$KERNEL_FILTER"  # cuBLAS and torch kernels stay uninstrumented
  sanitize synccheck 90 40 --kernel-name "kns=$KERNEL_FILTER"
else
  note "racecheck, synccheck: skipped, the filter kns=$KERNEL_FILTER selects no kernel of" \
    "${extension:-the extension (not built)}"
fi

# ---- benchmarks -----------------------------------------------------------------------------------------------
bench_limit=$(( $(left) - RESERVE - GRACE ))
bench_budget=$(( bench_limit * 7 / 8 - 5 ))  # the harness stops itself first, with time to write its tables
step bench bench.log "$bench_limit" 100 python3 -m benchmarks "${BENCH_FLAGS[@]}" --out "$WORK/bench" \
  --json "$OUT/results.json" --budget-s "$(clamp "$bench_budget" 1 "$bench_limit")"
if [[ ! -f $OUT/results.json ]]; then
  echo "{\"cases\": [], \"not_measured\": \"the benchmarks wrote no results (step: $RC)\"}" > "$OUT/results.json"
fi

# ---- pack -----------------------------------------------------------------------------------------------------
rm -f "$OUT"/*.partial  # a results.json being replaced when its step was cut
note "total ${SECONDS}s of the ${BUDGET}s budget"
timeout -k 2 "$RESERVE" tar czf "$OUT/session.tgz" -C "$WORK" . || note "session.tgz: tar rc=$?"
ls -l "$OUT"
