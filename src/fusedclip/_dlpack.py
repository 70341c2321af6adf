"""CPU objects that speak only DLPack, viewed in place as numpy arrays.

``np.from_dlpack`` does the work (DLPack 1.0's read-only flag included: a
read-only export gives a read-only view, which the writing functions
refuse; so does an export through the pre-1.0 protocol, which cannot say
that the memory may be written: numpy, and this module, view it read-only).  Two gaps are filled here:

* the device is checked first, so a non-CPU export (ROCm, Metal, oneAPI…)
  is a TypeError naming the buffer and the device, not numpy's generic text;
* bfloat16, which numpy's ``from_dlpack`` does not know, is read from the
  capsule itself (ctypes over ``DLManagedTensorVersioned`` or the legacy
  ``DLManagedTensor``): a zero-copy ``ml_dtypes.bfloat16`` view that owns
  the capsule's tensor and calls its deleter when the view dies.

Every failure is a TypeError that names the buffer, so that the plan raises
before anything is written.
"""
from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from .kernels import dtypes

#: DLPack device types whose memory the CPU can address (numpy accepts these)
CPU_DEVICES = {1: "CPU", 3: "CUDA host", 11: "ROCm host", 13: "CUDA managed"}
DEVICE_NAMES = {2: "CUDA", 4: "OpenCL", 7: "Vulkan", 8: "Metal", 9: "VPI", 10: "ROCm",
                12: "ExtDev", 14: "oneAPI", 15: "WebGPU", 16: "Hexagon", 17: "MAIA"}
_CODE_NAMES = {0: "int", 1: "uint", 2: "float", 3: "opaque handle", 4: "bfloat", 5: "complex",
               6: "bool"}
_KDL_BFLOAT = 4
_READ_ONLY = 1  # DLPACK_FLAG_BITMASK_READ_ONLY


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", _DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


_Deleter = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class _DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", _Deleter)]


class _DLManagedTensorVersioned(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32),
                ("manager_ctx", ctypes.c_void_p), ("deleter", _Deleter),
                ("flags", ctypes.c_uint64), ("dl_tensor", _DLTensor)]



def _pyfunc(name: str, restype, argtypes):
    """A private function object (``pythonapi[name]`` is not the shared,
    cached ``pythonapi.name``, whose argtypes other code may set)."""
    f = ctypes.pythonapi[name]
    f.restype, f.argtypes = restype, argtypes
    return f


_IsValid = _pyfunc("PyCapsule_IsValid", ctypes.c_int, [ctypes.py_object, ctypes.c_char_p])
_GetPointer = _pyfunc("PyCapsule_GetPointer", ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p])
_SetName = _pyfunc("PyCapsule_SetName", ctypes.c_int, [ctypes.py_object, ctypes.c_char_p])


def device_of(obj: Any):
    """(device type, id) from ``__dlpack_device__``, or None if it has none
    or it fails (then numpy's own error speaks)."""
    dev = getattr(obj, "__dlpack_device__", None)
    if dev is None:
        return None
    try:
        t, d = dev()
        return int(t), int(d)
    except Exception:
        return None


def from_dlpack(obj: Any, i: int, fn: str) -> np.ndarray:
    """Zero-copy numpy view of a CPU DLPack export, or TypeError naming buffer i."""
    name = type(obj).__name__
    dev = device_of(obj)
    if dev is not None and dev[0] not in CPU_DEVICES:
        raise TypeError(
            f"{fn}: buffer {i} ({name}) is on DLPack device "
            f"{DEVICE_NAMES.get(dev[0], 'type ' + str(dev[0]))}:{dev[1]}; fusedclip reads CPU "
            "memory and CUDA buffers; copy it to the CPU, or pass a CUDA array (nothing was "
            "modified)"
        )
    try:
        return np.from_dlpack(obj)
    except (TypeError, ValueError, BufferError, RuntimeError) as e:
        why = str(e)  # not the exception: its traceback would keep this frame alive
    view = _bfloat16_view(obj, i, fn)  # numpy has no bfloat16: read the capsule
    if view is not None:
        return view
    raise TypeError(
        f"{fn}: buffer {i} ({name}) is a DLPack export that numpy cannot view in place "
        f"({why}); pass a CPU array of one of the dtypes fusedclip clips ({dtypes.SUPPORTED}; "
        "nothing was modified)"
    )


def _capsule(obj: Any):
    try:
        return obj.__dlpack__(max_version=(1, 0))
    except TypeError:  # a producer of the legacy protocol
        return obj.__dlpack__()


class _Owner:
    """Holds a consumed DLPack tensor; numpy keeps it as the view's base and
    its deleter runs when the last view goes."""

    def __init__(self, managed: int, deleter, interface: dict) -> None:
        self._managed, self._deleter = managed, deleter
        self.__array_interface__ = interface

    def __del__(self) -> None:
        if self._deleter:
            self._deleter(self._managed)


def _bfloat16_view(obj: Any, i: int, fn: str):
    """A zero-copy ml_dtypes.bfloat16 view of a bfloat16 CPU export; None if
    the export cannot be read here (a float16/32/64 export that numpy refused
    for another reason); TypeError naming the dtype for any other dtype."""
    try:
        cap = _capsule(obj)
    except Exception:
        return None
    if _IsValid(cap, b"dltensor_versioned"):
        cname, used = b"dltensor_versioned", b"used_dltensor_versioned"
        mptr = _GetPointer(cap, cname)
        mt: Any = _DLManagedTensorVersioned.from_address(mptr)
        if mt.major != 1:  # an ABI this reader does not know: touch nothing else
            return None
        t, readonly = mt.dl_tensor, bool(mt.flags & _READ_ONLY)
    elif _IsValid(cap, b"dltensor"):
        cname, used = b"dltensor", b"used_dltensor"
        mptr = _GetPointer(cap, cname)
        mt = _DLManagedTensor.from_address(mptr)
        t, readonly = mt.dl_tensor, True  # pre-1.0: cannot say it is writable (as numpy)
    else:
        return None
    dt = t.dtype
    if (dt.code, dt.bits, dt.lanes) != (_KDL_BFLOAT, 16, 1):
        kind = _CODE_NAMES.get(dt.code, f"type code {dt.code}, ")
        if not (dt.code == 2 and dt.bits in (16, 32, 64) and dt.lanes == 1):
            raise TypeError(
                f"{fn}: buffer {i} ({type(obj).__name__}) has DLPack dtype {kind}{dt.bits}"
                + (" bits" if dt.code not in _CODE_NAMES else "")
                + (f"x{dt.lanes}" if dt.lanes != 1 else "")
                + f"; fusedclip clips {dtypes.SUPPORTED} gradients "
                "(nothing was modified)"
            )
        return None  # the capsule is dropped unconsumed: its destructor frees it
    if t.device.device_type not in CPU_DEVICES:
        return None
    shape = tuple(t.shape[k] for k in range(t.ndim))
    strides = None if not t.strides else tuple(2 * t.strides[k] for k in range(t.ndim))
    if 0 in shape:
        return np.empty(shape, dtype=dtypes.NUMPY[dtypes.BF16])
    addr = (t.data or 0) + t.byte_offset
    interface = {"data": (addr, readonly), "shape": shape, "strides": strides,
                 "typestr": "<u2", "version": 3}
    owner = _Owner(mptr, mt.deleter, interface)
    if _SetName(cap, used) != 0:  # pragma: no cover
        owner._deleter = None
        return None
    return np.asarray(owner).view(dtypes.NUMPY[dtypes.BF16])
