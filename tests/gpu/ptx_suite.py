"""Real compilation of every GPU kernel specialisation, without a GPU.

Run by tests/test_gpu.py in its own process, WITHOUT NUMBA_ENABLE_CUDASIM:

    pytest tests/gpu/ptx_suite.py

Each kernel (each handles all four dtypes) is compiled to PTX by numba (kernels.cuda.compile_all_ptx)
for sm_80 and sm_90 and assembled by ptxas -v from the pinned pip toolkit.
The bar: no spills, no stack frame, and at most REGISTER_BOUND registers per
thread (with 256-thread blocks, 64 registers still fit 4 blocks -- 1,024
threads -- per SM on both architectures).  FUSEDCLIP_PTX_REPORT=path writes the
figures as JSON (docs/GPU.md quotes them).
"""
import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

assert os.environ.get("NUMBA_ENABLE_CUDASIM") != "1", "run without the simulator"

from fusedclip.kernels import cuda as ck  # noqa: E402

REGISTER_BOUND = 64
ARCHS = [(8, 0), (9, 0)]
NAMES = list(ck.KERNELS)  # each kernel handles every dtype


def find_ptxas() -> str | None:
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations or []) if spec else []:
        for sub in ("cu13", "cuda_nvcc"):
            p = Path(root) / sub / "bin" / "ptxas"
            if p.exists():
                return str(p)
    return shutil.which("ptxas")


PTXAS = find_ptxas()
_report: dict = {}


@pytest.fixture(scope="module", params=ARCHS, ids=lambda cc: f"sm_{cc[0]}{cc[1]}")
def assembled(request, tmp_path_factory):
    if PTXAS is None:
        pytest.fail("ptxas not found: pip install 'cuda-toolkit[nvcc]==13.0.*'")
    cc = request.param
    ptx = ck.compile_all_ptx(cc)
    out = {}
    d = tmp_path_factory.mktemp(f"sm{cc[0]}{cc[1]}")
    for name, text in ptx.items():
        src = d / f"{name}.ptx"
        src.write_text(text)
        r = subprocess.run([PTXAS, f"-arch=sm_{cc[0]}{cc[1]}", "-v", str(src), "-o", str(d / f"{name}.cubin")],
                           capture_output=True, text=True)
        out[name] = (r.returncode, r.stderr)
    return cc, ptx, out


def figures(stderr: str, kernel_name_hint: str):
    """(registers, spill bytes, stack bytes) of the entry function(s)."""
    regs = [int(x) for x in re.findall(r"Used (\d+) registers", stderr)]
    spills = [int(a) + int(b) for a, b in re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", stderr)]
    stack = [int(x) for x in re.findall(r"(\d+) bytes stack frame", stderr)]
    return max(regs), sum(spills), max(stack)


@pytest.mark.parametrize("name", NAMES)
def test_kernel_assembles_without_spills(assembled, name):
    cc, ptx, out = assembled
    rc, err = out[name]
    assert rc == 0, err
    assert f".target sm_{cc[0]}{cc[1]}" in ptx[name]
    regs, spills, stack = figures(err, name)
    _report[f"sm_{cc[0]}{cc[1]}/{name}"] = {"registers": regs, "spill_bytes": spills, "stack_bytes": stack}
    assert spills == 0 and stack == 0, err
    assert regs <= REGISTER_BOUND, f"{name}: {regs} registers > {REGISTER_BOUND}"


def test_every_specialisation_was_compiled(assembled):
    cc, ptx, out = assembled
    assert sorted(ptx) == sorted(NAMES)


def test_indices_are_64_bit(assembled):
    """The chunk table is int64 and the element index is start + tid: the
    partials loop must compare and advance 64-bit values."""
    cc, ptx, out = assembled
    text = ptx["partials"]
    assert re.search(r"setp\.\w*\.s64", text) and re.search(r"add\.s64", text)


def test_write_report(assembled):
    path = os.environ.get("FUSEDCLIP_PTX_REPORT")
    if path:
        Path(path).write_text(json.dumps(_report, indent=1, sort_keys=True))
