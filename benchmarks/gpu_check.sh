#!/usr/bin/env bash
# The device check for a lent GPU, as one run: a preflight (~10 s), a build in
# place, the real-GPU suite, then `fusedclip bench --device cuda`.  Everything
# it needs must be on the lent machine already (no network there): the
# preflight says what is missing before anything is built.
#
#   QUICK=1 bash benchmarks/gpu_check.sh      # the lent GPU's run: the whole real-GPU suite and the
#                                             # bench's quick subset, within 10 minutes (~6-8 expected)
#   bash benchmarks/gpu_check.sh              # the same with the full bench: ~15 minutes, more than
#                                             # one device-tool command may run (10)
#   PREFLIGHT=1 bash benchmarks/gpu_check.sh  # the preflight alone
#
# Each step has a time limit (a step past it is stopped, what it printed is
# kept, and the next step runs): QUICK=1 is at most 60 + 180 + 240 + 120 s.
# Results go to $OUT (the device tool's folder) or /tmp/fc-gpu:
# preflight.txt, build.txt, real_suite.txt, gpu_bench.{txt,json,md}, steps.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/fc-gpu}
mkdir -p "$OUT"
t0=$(date +%s)
step() { echo "[gpu_check +$(( $(date +%s) - t0 ))s] $*" | tee -a "$OUT/steps.txt"; }
# numba-cuda 0.30 imports numpy.row_stack, which numpy 2.5 removed
site=$(mktemp -d)
printf 'import numpy\nif not hasattr(numpy, "row_stack"):\n    numpy.row_stack = numpy.vstack\n' > "$site/sitecustomize.py"
export PYTHONPATH="$site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# one cubin cache for the suite and the bench: the suite's compiles serve the bench
export FUSEDCLIP_CACHE_DIR=${FUSEDCLIP_CACHE_DIR:-/tmp/fc-gpu-cache}

step "preflight (limit 60 s)"
timeout 60 python3 benchmarks/gpu_preflight.py 2>&1 | tee "$OUT/preflight.txt"
if [ "${PIPESTATUS[0]}" -ne 0 ]; then
    step "preflight failed: nothing built or run (see PREFLIGHT PROBLEM above)"
    exit 1
fi
[ -n "${PREFLIGHT:-}" ] && exit 0

step "build in place (limit 180 s)"
timeout 180 python3 setup.py -q build_ext --inplace -j "$(nproc)" > "$OUT/build.txt" 2>&1
rc=$?
tail -3 "$OUT/build.txt"
python3 -c "import fusedclip, numba_cuda; print('fusedclip', fusedclip.__version__, 'numba-cuda', numba_cuda.__version__)" \
    || { step "build failed (rc $rc): see build.txt"; exit 1; }

if [ -n "${QUICK:-}" ]; then : "${SUITE_LIMIT:=240}"; else : "${SUITE_LIMIT:=300}"; fi
step "real-GPU suite (limit $SUITE_LIMIT s)"
timeout "$SUITE_LIMIT" python3 -m pytest -q -p no:cacheprovider -rs --durations=15 tests/gpu/real_suite.py \
    -s 2>&1 | tee "$OUT/real_suite.txt" | grep -E "passed|failed|error|FAILED|ERROR|arguments,|per call|^\[" | tail -40
step "real-GPU suite: exit ${PIPESTATUS[0]}"

if [ -n "${QUICK:-}" ]; then bench_limit=${BENCH_LIMIT:-120}; else bench_limit=${BENCH_LIMIT:-480}; fi
step "fusedclip bench --device cuda ${QUICK:+--quick }(limit $bench_limit s)"
timeout "$bench_limit" python3 -m fusedclip.cli bench --device cuda ${QUICK:+--quick} --json "$OUT/gpu_bench.json" \
    --markdown "$OUT/gpu_bench.md" 2>&1 | tee "$OUT/gpu_bench.txt" | tail -45
step "bench: exit ${PIPESTATUS[0]}; done"
