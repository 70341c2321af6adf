"""The ``fusedclip`` command: ``info`` (build and run-time facts) and ``bench``."""
from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys


def _gpu_state() -> str:
    if importlib.util.find_spec("numba") is None or importlib.util.find_spec("numba.cuda") is None:
        return "unavailable (numba-cuda not installed; pip install 'fusedclip[cuda]')"
    sim = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
    return "numba-cuda installed" + (" (simulator requested)" if sim else "") + "; no GPU backend in this build"


def cmd_info(args: argparse.Namespace) -> int:
    import numpy as np

    import fusedclip
    from fusedclip.kernels import cpu

    i = cpu.info()
    rows = [
        ("fusedclip", fusedclip.__version__),
        ("python", platform.python_version()),
        ("numpy", np.__version__),
        ("machine", f"{platform.machine()}, {os.cpu_count()} logical CPUs"),
        ("compiler flags", i["build_flags"]),
        ("SIMD dispatch", i["simd_dispatch"]),
        ("SIMD selected", i["simd_selected"]),
        ("OpenMP threads", f"{i['openmp_max_threads']} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})"),
        ("chunk", f"{i['chunk_elements']} elements; one thread below {i['parallel_min_elements']} elements"),
        ("CUDA", _gpu_state()),
    ]
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{w}}  {v}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fusedclip", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="version, compiler flags, SIMD level, OpenMP threads, CUDA state")
    args = p.parse_args(argv)
    return {"info": cmd_info}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
