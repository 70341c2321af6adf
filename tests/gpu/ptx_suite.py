"""Real compilation of every GPU kernel, without a GPU, the way the runtime
builds what it loads.

Run by tests/test_gpu.py in its own process, WITHOUT NUMBA_ENABLE_CUDASIM:

    pytest tests/gpu/ptx_suite.py

Each kernel (each handles all four dtypes) is compiled to PTX by numba
(``kernels.cuda.compile_all_ptx``) for sm_80 and sm_90 and linked to a cubin
by ``kernels.cuda.link_cubin`` -- cuda.core's Linker, nvJitLink here: the
runtime's own path (``cubin()``), not a separate ptxas.  The figures come
from ``tools/ptx_report.py``'s ``measure`` (the cubin's own ELF record, and
the linker's -v log for spills).  The bar: no spills, no stack frame, and at
most REGISTER_BOUND registers per thread (with 256-thread blocks, 64
registers still fit 4 blocks -- 1,024 threads -- per SM on both
architectures).  ``docs/ptx_report.json`` must be within the bar, and, where
the linker here is the one it names, exactly what is measured here.
"""
import importlib.util
import json
import os
import re
from pathlib import Path

import pytest

assert os.environ.get("NUMBA_ENABLE_CUDASIM") != "1", "run without the simulator"

from fusedclip._launch import linker_in_use  # noqa: E402
from fusedclip.kernels import cuda as ck  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("ptx_report", ROOT / "tools" / "ptx_report.py")
ptx_report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ptx_report)

REGISTER_BOUND = 64
ARCHS = ptx_report.ARCHS
NAMES = list(ck.KERNELS)  # each kernel handles every dtype


@pytest.fixture(scope="module", params=ARCHS, ids=lambda cc: f"sm_{cc[0]}{cc[1]}")
def linked(request):
    cc = request.param
    ptx = ck.compile_all_ptx(cc)
    return cc, ptx, ptx_report.measure(cc, ptx)


@pytest.mark.parametrize("name", NAMES)
def test_kernel_links_without_spills(linked, name):
    cc, ptx, figs = linked
    assert f".target sm_{cc[0]}{cc[1]}" in ptx[name]
    f = figs[name]
    assert f["spill_store_bytes"] == f["spill_load_bytes"] == f["stack_bytes"] == 0, f
    assert f["registers"] <= REGISTER_BOUND, f"{name}: {f['registers']} registers > {REGISTER_BOUND}"
    assert f["blocks_per_sm"] >= 4, f


def test_every_kernel_was_linked(linked):
    cc, ptx, figs = linked
    assert sorted(ptx) == sorted(figs) == sorted(NAMES)


def test_indices_are_64_bit(linked):
    """The chunk table is int64 and the element index is start + tid: the
    partials loop must compare and advance 64-bit values."""
    cc, ptx, figs = linked
    text = ptx["partials"]
    assert re.search(r"setp\.\w*\.s64", text) and re.search(r"add\.s64", text)


def test_the_report_describes_what_ships(linked):
    """docs/ptx_report.json covers every kernel and architecture within the
    bar; where its linker and NVVM are the ones here, its figures are the
    ones measured now (regenerate with python tools/ptx_report.py)."""
    cc, ptx, figs = linked
    doc = json.loads((ROOT / "docs" / "ptx_report.json").read_text())
    arch = f"sm_{cc[0]}{cc[1]}"
    got = {k.split("/", 1)[1]: v for k, v in doc["kernels"].items() if k.startswith(arch + "/")}
    assert sorted(got) == sorted(NAMES)
    for name, f in got.items():
        assert f["registers"] <= REGISTER_BOUND and f["spill_store_bytes"] == f["stack_bytes"] == 0, name
    t = doc["toolchain"]
    nvvm = re.search(r"V([\d.]+)", ptx["clamp"]).group(1)
    if (t["linker"], t["nvvm"]) != (linker_in_use(), nvvm):
        pytest.skip(f"the report was made with {t['linker']} / NVVM {t['nvvm']}, this is "
                    f"{linker_in_use()} / NVVM {nvvm}: its figures are not comparable")
    assert got == figs, "docs/ptx_report.json is stale: python tools/ptx_report.py"


def test_the_runtime_loads_what_link_cubin_makes(tmp_path, monkeypatch):
    """cubin() -- what CoreLauncher loads -- is link_cubin of the kernel's PTX."""
    cc = (9, 0)
    ptx = ck.compile_ptx("clamp", cc)  # numba names each compilation apart: compile once
    monkeypatch.setattr(ck, "CACHE_DIR", tmp_path)
    monkeypatch.setattr(ck, "compile_ptx", lambda name, c: ptx if (name, c) == ("clamp", cc) else None)
    data, entry = ck.cubin("clamp", cc)
    assert data == ck.link_cubin(ptx, cc)[0] and entry == ck.entry_name(ptx)
    assert ck.cubin("clamp", cc) == (data, entry)  # and from the disk cache
    assert "registers" in ck.cubin_resources(data, entry)
