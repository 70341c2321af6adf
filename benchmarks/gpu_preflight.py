"""gpu_check.sh's preflight (~10 s, before anything is built): what the run
will use, and whether everything it needs is here.

Prints the GPU, the driver and its CUDA version, the cuda-core,
cuda-bindings, numba-cuda, nvJitLink and NVVM versions (and that numba-cuda
finds NVVM), and the linker the
runtime will make its cubins with (``kernels.cudacore.linker_in_use``, loaded from
its file: fusedclip is not built yet); imports every module the run needs
and compiles an OpenMP C file with the compiler the build will use.  Exits 1
with every problem listed, so that a lent GPU's minutes are not spent on a
run that cannot finish.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: needed by the build (setup.py), the real-GPU suite and the bench
NEEDED = ["numpy", "ml_dtypes", "pytest", "setuptools", "Cython", "numba", "numba_cuda",
          "cuda.core", "cuda.bindings", "cuda.bindings.driver", "torch", "hypothesis"]
OPTIONAL = ["cupy"]


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def main() -> int:
    t0 = time.perf_counter()
    problems: list[str] = []
    print(f"python {sys.version.split()[0]} ({sys.executable})")
    for mod in NEEDED + OPTIONAL:
        try:
            importlib.import_module(mod)
        except Exception as e:  # noqa: BLE001 - each one is reported
            if mod in NEEDED:
                problems.append(f"import {mod}: {type(e).__name__}: {e}")
            else:
                print(f"optional {mod}: not importable ({type(e).__name__})")
    for dist in ("cuda-core", "cuda-bindings", "numba-cuda", "numba", "nvidia-nvjitlink", "nvidia-nvvm",
                 "cuda-toolkit", "torch", "numpy", "ml_dtypes", "Cython"):
        print(f"{dist}: {version(dist)}")

    try:
        from cuda.bindings import driver

        err, = driver.cuInit(0)
        if int(err):
            problems.append(f"cuInit failed: {err}")
        else:
            v = int(driver.cuDriverGetVersion()[1])
            print(f"driver CUDA version: {v // 1000}.{v % 1000 // 10}")
    except Exception as e:  # noqa: BLE001
        problems.append(f"the CUDA driver: {type(e).__name__}: {e}")
    try:  # numba-cuda compiles the kernels with NVVM (pip's nvidia-nvvm, or a system toolkit's)
        from numba.cuda.cudadrv import nvvm

        print(f"NVVM: {'.'.join(map(str, nvvm.NVVM().get_version()))} (numba-cuda finds it)")
    except Exception as e:  # noqa: BLE001
        problems.append(f"NVVM (numba-cuda's compiler): {type(e).__name__}: {e}")
    smi = shutil.which("nvidia-smi")
    if smi:
        r = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total,compute_cap",
                            "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        print(f"nvidia-smi: {r.stdout.strip() or r.stderr.strip()}")
    try:
        spec = importlib.util.spec_from_file_location("fc_cudacore", ROOT / "src" / "fusedclip" / "kernels" / "cudacore.py")
        launch = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(launch)
        print(f"linker (the cubins that load): {launch.linker_in_use()}")
        dev = launch.core("Device")()
        dev.set_current()
        print(f"device: {getattr(dev, 'name', '?')}, compute capability {tuple(dev.compute_capability)}")
    except Exception as e:  # noqa: BLE001
        problems.append(f"cuda.core (linker, device): {type(e).__name__}: {e}")
    try:
        import torch

        if not torch.cuda.is_available():
            problems.append("torch sees no CUDA device (the real-GPU suite would skip)")
        else:
            print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name()}")
    except Exception:  # noqa: BLE001 - reported by the import loop
        pass

    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        problems.append("no C compiler (cc/gcc) for the build")
    else:
        with tempfile.TemporaryDirectory() as d:
            src = Path(d) / "omp.c"
            src.write_text("#include <omp.h>\nint main(void){return omp_get_max_threads() > 0 ? 0 : 1;}\n")
            r = subprocess.run([cc, "-fopenmp", "-O2", str(src), "-o", str(Path(d) / "omp")],
                               capture_output=True, text=True, timeout=60)
            if r.returncode:
                problems.append(f"{cc} -fopenmp failed: {r.stderr.strip()[:300]}")
            else:
                print(f"C compiler: {cc} (OpenMP ok)")
    print(f"preflight: {time.perf_counter() - t0:.1f} s")
    for p in problems:
        print(f"PREFLIGHT PROBLEM: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
