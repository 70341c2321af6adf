"""Build the example extension against the installed fusedclip:

    python setup.py build_ext --inplace

``cimport fusedclip.capi`` needs nothing but fusedclip on sys.path; the
chunk-table API (``fusedclip.kernels.cpu``) also needs its header directory,
``fusedclip.get_include()``.
"""
from Cython.Build import cythonize
from setuptools import Extension, setup

import fusedclip

ext = Extension(
    "capi_example",
    sources=["capi_example.pyx"],
    include_dirs=[fusedclip.get_include()],  # simd.h, for fusedclip.kernels.cpu's cimports
    extra_compile_args=["-O1", "-Wno-unused-function"],
)
setup(name="capi_example", ext_modules=cythonize([ext], language_level=3, quiet=True))
