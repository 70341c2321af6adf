"""cuda.core, whichever release is installed, and the linker it links with.

Standalone on purpose (it imports nothing of fusedclip): ``kernels.cuda``
links cubins with it, ``_launch`` launches with it, and
``benchmarks/gpu_preflight.py`` loads this file alone on a bare machine.
"""
from __future__ import annotations


def core(name: str):
    """A name from cuda.core (newer releases) or cuda.core.experimental."""
    try:
        import cuda.core as m

        return getattr(m, name)
    except (ImportError, AttributeError):
        import cuda.core.experimental as m

        return getattr(m, name)


def linker_in_use() -> str:
    """The linker ``kernels.cuda.link_cubin`` uses here (cuda.core's
    Linker: nvJitLink where installed, else the driver's), with its version:
    "nvJitLink 13.5" or "driver (CUDA 13.0)".  Needs no GPU, and nothing
    compiled of fusedclip: ``benchmarks/gpu_preflight.py`` loads this
    file alone."""
    Linker = core("Linker")
    which = getattr(Linker, "which_backend", None)  # cuda.core >= 1.0
    if which is not None:
        name = str(getattr(which(), "value", which()))
    else:  # older: a linker instance says which it chose
        tiny = b".version 7.0\n.target sm_80\n.address_size 64\n.visible .entry k()\n{\n ret;\n}\n"
        linker = Linker(core("ObjectCode").from_ptx(tiny), options=core("LinkerOptions")(arch="sm_80"))
        name = str(linker.backend)
        linker.close()
    try:
        if "nvjitlink" in name.lower():
            from cuda.bindings import nvjitlink

            return "nvJitLink %d.%d" % tuple(nvjitlink.version())
        from cuda.bindings import driver

        v = int(driver.cuDriverGetVersion()[1])
        return f"driver (CUDA {v // 1000}.{v % 1000 // 10})"
    except Exception:  # pragma: no cover - a version we cannot read
        return name
