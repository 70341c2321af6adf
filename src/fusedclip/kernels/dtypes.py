"""The dtypes fusedclip clips: one table that every layer reads.

A dtype's code is its index in ``TABLE`` and is the C kernels' code
(``simd.h``'s ``FC_F64 .. FC_F16``, checked when ``kernels.cpu`` loads).
Everything else that differs by dtype is derived from this table: the numpy
dtypes (``NUMPY``), the item sizes (``ITEMSIZE``), the CUDA kernels' element
types (``DType.cuda_elem``), torch's dtypes (``torch_dtypes``), the codes of
numpy and torch dtypes (``code_of``) and the sentence that names them in an
error message (``SUPPORTED``).

Adding a dtype: a row here, its loads/stores in ``simd.h`` (a row of
``FC_OPS``) and in ``kernels/cuda.py`` (a row of ``_device_helpers``'s
table); docs/DESIGN.md "How to add a dtype" lists the rest.  Constants and
pure functions only: the kernels import nothing above them.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import ml_dtypes
import numpy as np


class DType(NamedTuple):
    code: int
    name: str  #: numpy's, torch's and DLPack's name for it
    numpy: np.dtype
    #: how the CUDA kernels load it: 16-bit types are read as uint16 words and
    #: converted by bit manipulation (the algorithms of simd.h)
    cuda_elem: str

    @property
    def itemsize(self) -> int:
        return self.numpy.itemsize


#: in code order (simd.h's FC_F64 = 0 .. FC_F16 = 3)
TABLE: tuple[DType, ...] = (
    DType(0, "float64", np.dtype(np.float64), "float64"),
    DType(1, "float32", np.dtype(np.float32), "float32"),
    DType(2, "bfloat16", np.dtype(ml_dtypes.bfloat16), "uint16"),
    DType(3, "float16", np.dtype(np.float16), "uint16"),
)
F64, F32, BF16, F16 = (d.code for d in TABLE)
NDTYPES = len(TABLE)
#: code -> numpy dtype
NUMPY: tuple[np.dtype, ...] = tuple(d.numpy for d in TABLE)
#: code -> bytes per element
ITEMSIZE: tuple[int, ...] = tuple(d.itemsize for d in TABLE)
#: code -> name
NAMES: tuple[str, ...] = tuple(d.name for d in TABLE)
#: numpy dtype -> code
BY_NUMPY: dict[np.dtype, int] = {d.numpy: d.code for d in TABLE}
#: the dtypes named in error messages, narrowest first
_ORDER = sorted(TABLE, key=lambda d: (d.itemsize, -d.code))
SUPPORTED = ", ".join(d.name for d in _ORDER[:-1]) + " and " + _ORDER[-1].name

_TORCH: dict[Any, int] = {}


def torch_dtypes(torch: Any) -> tuple[Any, ...]:
    """torch's dtypes in code order (``torch`` is the module: the kernels
    never import it themselves)."""
    return tuple(getattr(torch, d.name) for d in TABLE)


def code_of(dtype: Any) -> int | None:
    """The code of a numpy dtype or a torch dtype; None if not clipped."""
    try:
        code = BY_NUMPY.get(dtype)
    except TypeError:  # unhashable
        return None
    if code is not None:
        return code
    if not _TORCH and type(dtype).__module__ == "torch":
        import sys

        _TORCH.update({t: c for c, t in enumerate(torch_dtypes(sys.modules["torch"]))})
    return _TORCH.get(dtype)
