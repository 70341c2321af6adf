"""Build the Cython + OpenMP CPU kernels.

The build is portable by default: simd.h dispatches at run time between
x86-64-v4 (AVX-512), x86-64-v3 (AVX2/FMA/F16C) and baseline clones.
FUSEDCLIP_NATIVE=1 adds -march=native for a machine-specific build.
"""
import os
import sys

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

compile_args = ["-O3", "-fopenmp", "-fno-math-errno", "-std=gnu11"]
link_args = ["-fopenmp"]
if os.environ.get("FUSEDCLIP_NATIVE") == "1":
    compile_args.append("-march=native")
if sys.platform == "darwin":  # Apple clang: OpenMP through libomp
    compile_args = ["-O3", "-Xpreprocessor", "-fopenmp"]
    link_args = ["-lomp"]

flags = " ".join(compile_args)
ext = Extension(
    "fusedclip.kernels.cpu",
    sources=["src/fusedclip/kernels/cpu.pyx"],
    include_dirs=["src/fusedclip/kernels", np.get_include()],
    depends=["src/fusedclip/kernels/simd.h", "src/fusedclip/kernels/tableloop.h", "src/fusedclip/kernels/cpu.pxd"],
    extra_compile_args=compile_args,
    extra_link_args=link_args,
    define_macros=[
        ("NPY_NO_DEPRECATED_API", "NPY_2_0_API_VERSION"),
        ("FC_BUILD_FLAGS", '"' + flags + '"'),
    ],
)
# The C-level API (src/fusedclip/capi.pxd): builds a chunk table from a pointer
# table and calls the cpu module's table_norm & co. through their capsules.
capi = Extension(
    "fusedclip.capi",
    sources=["src/fusedclip/capi.pyx"],
    include_dirs=["src/fusedclip/kernels"],
    depends=["src/fusedclip/kernels/simd.h", "src/fusedclip/kernels/cpu.pxd", "src/fusedclip/capi.pxd"],
    extra_compile_args=compile_args + ["-Wno-unused-function"],  # simd.h's loops live in cpu
    extra_link_args=link_args,
)

# fusedclip.torch's fast path: tensor layouts read in C (torch's AOTI C shim, or its
# accessors), the work through the C API above
torchread = Extension(
    "fusedclip._torchread",
    sources=["src/fusedclip/_torchread.pyx"],
    include_dirs=["src/fusedclip/kernels"],
    depends=["src/fusedclip/kernels/cpu.pxd", "src/fusedclip/capi.pxd"],
    extra_compile_args=compile_args + ["-Wno-unused-function"],
    extra_link_args=link_args,
)

setup(
    # include_path: Cython finds fusedclip/kernels/cpu.pxd and fusedclip/capi.pxd in the package
    ext_modules=cythonize([ext, capi, torchread], include_path=["src"],
                          compiler_directives={"language_level": 3}),
)
