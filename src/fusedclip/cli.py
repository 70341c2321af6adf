"""The ``fusedclip`` command: ``info`` (build and run-time facts) and ``bench``."""
from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys


def _gpu_state() -> str:
    if importlib.util.find_spec("numba") is None:
        return "unavailable: numba-cuda is not installed (pip install 'fusedclip[cuda]')"
    from fusedclip._gpu import gpu_state
    from fusedclip.kernels import cuda as ck

    return f"{gpu_state()}; {ck.K} buffers per launch, {ck.THREADS} threads, chunks of {ck.CHUNK}"


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
        ("float16 conversion", i["float16_conversion"]),
        ("OpenMP threads", f"{i['openmp_max_threads']} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})"),
        ("chunk", f"{i['chunk_elements']} elements; one thread below {i['parallel_min_elements']} elements"),
        ("CUDA", _gpu_state()),
    ]
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{w}}  {v}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from fusedclip import bench

    return bench.main(args)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fusedclip", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="version, compiler flags, SIMD level, OpenMP threads, CUDA state")
    b = sub.add_parser(
        "bench",
        help="time fusedclip against naive numpy, torch and the bandwidth floor",
        description="Runs the built-in workloads (all of them by default), prints a table "
        "and writes JSON. Ratios are measured in one run, interleaved.",
    )
    b.add_argument("--quick", action="store_true", help="fewer workloads and repetitions (< 30 s)")
    b.add_argument("--workload", action="append", metavar="NAME",
                   help="big, gpt, small or medium (or NAME/DTYPE); repeatable")
    b.add_argument("--dtype", action="append", choices=["float32", "float64", "bfloat16", "float16"],
                   help="keep only these dtypes; repeatable")
    b.add_argument("--mode", action="append", choices=["triggered", "not-triggered"],
                   help="keep only this mode; repeatable")
    b.add_argument("--threads", type=int, default=None, help="threads for every implementation")
    b.add_argument("--reps", type=int, default=None, help="timed repetitions (default 21, quick 5)")
    b.add_argument("--json", default="bench.json", metavar="PATH", help="where to write the results")
    b.add_argument("--plot", action="store_true", help="also write a PNG beside the JSON")
    b.add_argument("--markdown", metavar="PATH", help="also write a Markdown summary table")
    args = p.parse_args(argv)
    return {"info": cmd_info, "bench": cmd_bench}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
