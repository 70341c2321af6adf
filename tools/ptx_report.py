"""Write docs/ptx_report.json: the registers, spills and stack of every GPU
kernel as the runtime builds it, without a GPU.

    python tools/ptx_report.py [--out docs/ptx_report.json] [--arch 80 90]

Each kernel is compiled to PTX by numba (``kernels.cuda.compile_ptx``) and
linked to a cubin by ``kernels.cuda.link_cubin``: the function the runtime's
``cubin()`` calls, so the linker is the one that makes the cubins that load
(cuda.core's Linker: nvJitLink where installed).  The registers and the stack
frame are read from the shipped (non-verbose) cubin's own ELF record
(``cubin_resources``); the spill stores and loads from the linker's -v log of
the same PTX, whose register count must agree with the cubin's.  The
toolchain's versions are recorded with the figures.  ``tests/gpu/ptx_suite.py``
asserts the bounds with ``measure`` and, where the linker here is the one
the report names, that the report is what it measures.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARCHS = [(8, 0), (9, 0)]
#: the CUDA occupancy calculator's numbers for sm_80 and sm_90: registers per
#: SM, the per-warp allocation unit, warps and blocks per SM
REGS_PER_SM, REG_UNIT, WARPS_PER_SM, BLOCKS_PER_SM = 65536, 256, 64, 32


def blocks_per_sm(registers: int, threads: int) -> int:
    """Resident blocks of ``threads`` per SM as registers allow (shared
    memory, a few KiB here, does not bind)."""
    warps = -(-threads // 32)
    per_warp = -(-registers * 32 // REG_UNIT) * REG_UNIT
    return min(REGS_PER_SM // (per_warp * warps), WARPS_PER_SM // warps, BLOCKS_PER_SM)


def parse_log(log: str) -> dict:
    """Registers of the entry ("Used N registers") and the spills and stack
    summed / maxed over every function the linker compiled."""
    regs = [int(x) for x in re.findall(r"Used (\d+) registers", log)]
    sp = [(int(a), int(b)) for a, b in re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)]
    stack = [int(x) for x in re.findall(r"(\d+) bytes stack frame", log)]
    if len(regs) != 1 or not sp:
        raise RuntimeError(f"unexpected linker log:\n{log}")
    return {"registers": regs[0], "spill_store_bytes": sum(a for a, _ in sp),
            "spill_load_bytes": sum(b for _, b in sp), "stack_bytes": max(stack or [0])}


def measure(cc: tuple[int, int], ptxs: dict | None = None) -> dict:
    """{kernel: figures} for compute capability ``cc`` (``ptxs``: the kernels'
    PTX, compiled already)."""
    from fusedclip.kernels import cuda as ck

    out = {}
    for name in ck.KERNELS:
        ptx = ptxs[name] if ptxs else ck.compile_ptx(name, cc)
        entry = ck.entry_name(ptx)
        shipped, _ = ck.link_cubin(ptx, cc)
        _, log = ck.link_cubin(ptx, cc, verbose=True)
        own = ck.cubin_resources(shipped, entry)
        fig = parse_log(log)
        if fig["registers"] != own["registers"]:
            raise RuntimeError(f"{name}: the -v log says {fig['registers']} registers, the cubin "
                               f"that loads {own['registers']}")
        fig["stack_bytes"] = max(fig["stack_bytes"], own["stack_bytes"])
        fig["blocks_per_sm"] = blocks_per_sm(fig["registers"], ck.THREADS)
        out[name] = fig
    return out


def toolchain() -> dict:
    from fusedclip.kernels import cuda as ck

    def version(dist):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    ptx = ck.compile_ptx("clamp", ARCHS[0])
    nvvm = re.search(r"Cuda compilation tools, release ([\d.]+), V([\d.]+)", ptx)
    from fusedclip._launch import linker_in_use

    return {"linker": linker_in_use(), "nvvm": nvvm.group(2) if nvvm else None,
            "cuda-core": version("cuda-core"), "cuda-bindings": version("cuda-bindings"),
            "numba-cuda": version("numba-cuda"), "nvidia-nvjitlink": version("nvidia-nvjitlink"),
            "threads_per_block": ck.THREADS, "unroll": ck.UNROLL}


def report(archs=ARCHS) -> dict:
    kernels = {}
    for cc in archs:
        for name, fig in measure(cc).items():
            kernels[f"sm_{cc[0]}{cc[1]}/{name}"] = fig
    return {"generated_by": "python tools/ptx_report.py", "toolchain": toolchain(), "kernels": kernels}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "ptx_report.json"))
    ap.add_argument("--arch", nargs="+", type=int, default=[80, 90], help="compute capabilities, e.g. 80 90")
    a = ap.parse_args(argv)
    doc = report([(x // 10, x % 10) for x in a.arch])
    Path(a.out).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    t = doc["toolchain"]
    print(f"{a.out}: linker {t['linker']}, NVVM {t['nvvm']}, cuda-core {t['cuda-core']}")
    for k, f in doc["kernels"].items():
        print(f"  {k:18s} {f['registers']:3d} registers, spills {f['spill_store_bytes']}/"
              f"{f['spill_load_bytes']} B, stack {f['stack_bytes']} B, {f['blocks_per_sm']} blocks/SM")
    return 0


if __name__ == "__main__":
    sys.exit(main())
