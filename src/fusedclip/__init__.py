"""fusedclip: fused, accurate, inf/NaN-safe gradient clipping.

>>> import numpy as np, fusedclip as fc
>>> grads = [np.ones(4, np.float32), np.ones(12, np.float32)]
>>> fc.clip_grad_norm_(grads, max_norm=1.0)
4.0
>>> float(fc.global_norm(grads))
1.0

See docs/DESIGN.md for the architecture and the exact semantics.
"""
from . import thresholds
from ._api import Clipper, clip_grad_norm_, clip_grad_value_, global_norm
from ._family import DeviceNorms, buffer_norms, clip_by_norm_, clip_unitwise_
from ._history import History
from ._policy import POLICIES, ClipStats, NonFiniteError

__version__ = "0.1.0"


def get_include() -> str:
    """The directory of fusedclip's C headers (``simd.h``), for the
    ``include_dirs`` of an extension that cimports ``fusedclip.kernels.cpu``
    (the chunk-table API).  ``cimport fusedclip.capi`` needs no header; its
    ``.pxd`` is found on ``sys.path`` like the package.  See docs/EMBEDDING.md."""
    import os

    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels")

__all__ = [
    "Clipper",
    "ClipStats",
    "DeviceNorms",
    "History",
    "NonFiniteError",
    "POLICIES",
    "buffer_norms",
    "clip_by_norm_",
    "clip_grad_norm_",
    "clip_grad_value_",
    "clip_unitwise_",
    "global_norm",
    "thresholds",
    "__version__",
    "get_include",
]
