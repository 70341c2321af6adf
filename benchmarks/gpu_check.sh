#!/usr/bin/env bash
# The device check for a lent GPU, as one run: build in place, the real-GPU
# suite, then `fusedclip bench --device cuda`.  Everything it needs is on the
# lent machine already (torch, CuPy, numba-cuda, Cython; no network there).
#
#   bash benchmarks/gpu_check.sh            # full bench (~several minutes)
#   QUICK=1 bash benchmarks/gpu_check.sh    # the bench's quick subset
#
# Results go to $OUT (the device tool's folder) or /tmp/fc-gpu.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/fc-gpu}
mkdir -p "$OUT"
# numba-cuda 0.30 imports numpy.row_stack, which numpy 2.5 removed
site=$(mktemp -d)
printf 'import numpy\nif not hasattr(numpy, "row_stack"):\n    numpy.row_stack = numpy.vstack\n' > "$site/sitecustomize.py"
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || exit 1
python3 -m pip install -q --no-build-isolation --no-deps --no-index -e . 2>&1 | tail -3
python3 -c "import fusedclip, numba_cuda; print('fusedclip', fusedclip.__version__, 'numba-cuda', numba_cuda.__version__)" || exit 1
python3 -m pytest -q -p no:cacheprovider tests/gpu/real_suite.py 2>&1 | tee "$OUT/real_suite.txt" | tail -25
python3 -m fusedclip.cli bench --device cuda ${QUICK:+--quick} --json "$OUT/gpu_bench.json" \
    --markdown "$OUT/gpu_bench.md" 2>&1 | tee "$OUT/gpu_bench.txt" | tail -45
