"""The ``fusedclip`` command: ``info`` (build and run-time facts) and ``bench``."""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys

from ._outputs import output_problem  # noqa: F401  (the CLI's and the demos' one rule)

# argparse prints descriptions as they are: no reST markup in them.
DESCRIPTION = ("fusedclip: build and run-time facts (info), the benchmark (bench) and the paper's "
               "experiments (demo).")



def _gpu_state() -> str:
    if importlib.util.find_spec("numba") is None:
        return "unavailable: numba-cuda is not installed (pip install 'fusedclip[cuda]')"
    from fusedclip._gpu import gpu_state
    from fusedclip.kernels import cuda as ck

    return (f"{gpu_state()}; one chunk table, 3 launches per norm clip, {ck.THREADS} threads, "
            f"chunks of {ck.CHUNK}")


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
        ("scale (correctly rounded)", i["scale"]),
        ("OpenMP threads", f"{i['openmp_max_threads']} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})"),
        ("chunk", f"{i['chunk_elements']} elements; one thread below {i['parallel_min_elements']} elements"),
        ("CUDA", _gpu_state()),
    ]
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{w}}  {v}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.device == "cuda":
        from fusedclip import bench_gpu

        return bench_gpu.main(args)
    from fusedclip import bench

    return bench.main(args)


def _count(what: str, most: int | None = None):
    """An argparse type: an int in [1, most]; anything else is a usage error (exit 2)."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
        if v < 1 or (most is not None and v > most):
            bound = f"between 1 and {most}" if most is not None else ">= 1"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {v}")
        return v

    parse.__name__ = what  # argparse names the type in some messages
    return parse


def _max_threads() -> int:
    from fusedclip.kernels import cpu

    return cpu.MAX_THREADS


def _shown(path: str) -> str:
    return path if path else "''"


def check_bench_outputs(args: argparse.Namespace) -> str | None:
    """What would make the run fail at its end (it writes its results last), or None."""
    if args.device == "cuda":
        for flag, given in (("--plot", args.plot), ("--threads", args.threads is not None)):
            if given:
                return f"{flag} applies to the CPU bench only (not to --device cuda)"
    for flag, path in (("--json", args.json), ("--markdown", args.markdown)):
        if path is not None and (why := output_problem(path)) is not None:
            return f"{flag} {_shown(path)}: the path {why}"
    if args.plot:
        png = os.path.splitext(args.json)[0] + ".png"
        if (why := output_problem(png)) is not None:
            return f"--plot writes {png}, which {why}"
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            return "--plot needs matplotlib, which is not installed (pip install matplotlib)"
    return None


def main(argv: list[str] | None = None) -> int:
    import fusedclip

    p = argparse.ArgumentParser(prog="fusedclip", description=DESCRIPTION)
    p.add_argument("--version", action="version", version=f"fusedclip {fusedclip.__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="version, compiler flags, SIMD level, OpenMP threads, CUDA state")
    b = sub.add_parser(
        "bench",
        help="time fusedclip against naive numpy, torch and the bandwidth floor",
        description="Runs the built-in workloads (all of them by default), prints a table "
        "and writes JSON. Ratios are measured in one run, interleaved.",
    )
    b.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cpu (default), or cuda: torch CUDA tensors against torch's clip and the HBM floor")
    b.add_argument("--quick", action="store_true", help="fewer workloads and repetitions (< 30 s)")
    b.add_argument("--workload", action="append", metavar="NAME",
                   help="big, gpt, small or medium; with --device cuda also gpt-medium (or NAME/DTYPE); repeatable")
    b.add_argument("--dtype", action="append", choices=["float32", "float64", "bfloat16", "float16"],
                   help="keep only these dtypes; repeatable")
    b.add_argument("--mode", action="append", choices=["triggered", "not-triggered"],
                   help="keep only this mode; repeatable")
    most = _max_threads()
    b.add_argument("--threads", type=_count("--threads", most), default=None, metavar="N",
                   help=f"threads for every implementation, 1 to {most} (default: OpenMP's)")
    b.add_argument("--reps", type=_count("--reps"), default=None, metavar="N",
                   help="timed repetitions, >= 1 (default 21, quick 5)")
    b.add_argument("--json", default="bench.json", metavar="PATH", help="where to write the results")
    b.add_argument("--plot", action="store_true", help="also write a PNG beside the JSON (needs matplotlib)")
    b.add_argument("--markdown", metavar="PATH", help="also write a Markdown summary table")
    from fusedclip import demos

    demos.add_parser(sub)
    args = p.parse_args(argv)
    if args.cmd == "bench" and (why := check_bench_outputs(args)) is not None:
        b.error(why)  # exit code 2, before the run rather than after it
    if args.cmd == "demo":
        if (why := demos.check(args)) is not None:
            sub.choices["demo"].error(why)
        return demos.main(args)
    return {"info": cmd_info, "bench": cmd_bench}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
