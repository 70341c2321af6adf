"""fusedclip.torch: torch's gradient-clipping API on fusedclip's kernels.

>>> import fusedclip.torch as fct
>>> norm = fct.clip_grad_norm_(model.parameters(), max_norm=1.0)   # as torch's
>>> fct.patch()     # or: torch.nn.utils.clip_grad_norm_ & co. become fusedclip's

``clip_grad_norm_``, ``clip_grad_value_``, ``get_total_norm`` and
``clip_grads_with_norm_`` have torch 2.13's signatures and return types;
``Clipper`` clips the same parameters every step; ``patch()`` installs the
four functions into ``torch.nn.utils`` so that code written against torch
(HF Trainer, Lightning, accelerate) uses them unchanged.

The gradients are read in place: CPU tensors (bfloat16 included) by the CPU
engine, CUDA tensors by the CUDA engine on torch's current stream; a
``DTensor``'s local shard likewise (FSDP2, tensor parallel, several meshes:
one all-reduce per call gives the global norm; docs/DISTRIBUTED.md §6).  The
returned norm is a tensor on the first gradient's device in the dtype torch
returns; on a GPU it is written by a device-to-device copy of the engine's
state, so the call never waits for the device (except with
``error_if_nonfinite=True``, which must know, and lists that mix CPU and
CUDA gradients).

The clipping rule is torch's: scale by ``max_norm / (norm + 1e-6)`` when that
is below 1.  Differences (documented in docs/TORCH.md): the norm is exact
(float64 accumulation; finite gradients whose squares overflow get a finite
norm and a correct clip), nothing is written when nothing is clipped,
``max_norm`` must be > 0, ``norm_type`` > 0 or inf, ``clip_value`` >= 0, and
the same gradient passed twice counts once.

**Plans are layouts.**  ``zero_grad(set_to_none=True)`` (torch's default)
makes every backward create new gradient tensors at new addresses, so a plan
keyed by addresses is rebuilt every step.  Here a plan is keyed by the
gradients' *layout* (each one's dtype, element count and device, read with
its address in one C pass: ``kernels.cpu.read_tensors``), and the addresses
are bound per call (``Table.rebased``: the new addresses are checked for
overlap, and each tensor was checked to lie inside its storage).  A gradient
whose dtype, size, strides or storage changed, at the same address or not,
has another layout: it gets another plan, or the general path, which checks
everything again.  Nothing outside a gradient is read or written.
"""
from __future__ import annotations

try:
    import torch
except ImportError as _e:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "fusedclip.torch needs PyTorch (pip install torch, or 'fusedclip[torch]'); "
        "the array API, `import fusedclip`, works without it"
    ) from _e

import functools
import math
import re
import sys
import types
import warnings
from typing import Any, Iterable, Union

import numpy as np

from . import _policy, _reduce, _sharded, _torchread
from ._api import Clipper as _ArrayClipper
from ._cache import LRU
from ._policy import NonFiniteError
from .kernels import cpu
from .kernels import dtypes as _dtypes

__all__ = ["Clipper", "clip_grad_norm_", "clip_grad_value_", "get_total_norm", "clip_grads_with_norm_",
           "patch", "unpatch", "EPS"]

#: torch's eps in ``clip_coef = max_norm / (total_norm + 1e-6)``
EPS = 1e-6
_TensorOrTensors = Union[torch.Tensor, Iterable[torch.Tensor]]
_NO_GRAD = np.zeros(0, np.float32)  # stands in for a None grad: indices stay the parameters'
_BF16 = _dtypes.NUMPY[_dtypes.BF16]
#: torch's dtypes in the kernels' code order (kernels/dtypes.py): what read_tensors reports
_DTYPES = _dtypes.torch_dtypes(torch)
#: the tensor types whose memory read_tensors may take from their accessors
#: (subclasses go the general way; DTensor's shards then the DTensor path)
_TYPES = (torch.Tensor, torch.nn.Parameter)
_CPU = torch.device("cpu")
_INF = float("inf")


# ---------------------------------------------------------------- arguments
def _number(name: str, x: Any) -> float:
    """What torch's ``float(x)`` accepts (a number, ``Decimal``, ``Fraction``,
    a numeric string such as 'inf', a one-element tensor), except bools
    (TypeError, fusedclip's rule)."""
    if type(x) is float:
        return x
    if isinstance(x, torch.Tensor):
        if x.numel() != 1:
            raise TypeError(f"{name} must be a real number or a one-element tensor, "
                            f"got a tensor of {x.numel()} elements")
        if x.dtype == torch.bool:
            raise TypeError(f"{name} must be a real number, got a bool tensor")
        return float(x.item())
    if isinstance(x, str):
        try:
            return float(x)
        except ValueError:
            raise ValueError(f"{name} must be a real number, got {x!r}") from None
    if isinstance(x, (bool, np.bool_)) or isinstance(x, complex) or not hasattr(x, "__float__"):
        return _policy.real(name, x)  # the TypeError, worded as everywhere
    try:
        return float(x)
    except (TypeError, ValueError, OverflowError) as e:
        raise TypeError(f"{name} must be a real number, got {type(x).__name__} {x!r} ({e})") from None


def _check_norm_args(max_norm: Any, norm_type: Any) -> tuple[float, int, float]:
    """(max_norm, kernel norm kind, p), checked as everywhere in fusedclip."""
    v = _policy.check_max_norm(_number("max_norm", max_norm))
    kind, p = _policy.norm_kind(_number("norm_type", norm_type))  # ValueError for p <= 0
    return v, kind, p


def _param_list(parameters: Any, fn: str, warn_empty_generator: bool, what: str = "parameters") -> list:
    if isinstance(parameters, torch.Tensor):
        return [parameters]
    if type(parameters) is list:
        return parameters
    if parameters is None or isinstance(parameters, (str, bytes, dict)) or not hasattr(parameters, "__iter__"):
        raise TypeError(f"{fn}: {what} must be a tensor or an iterable of tensors, "
                        f"got {type(parameters).__name__}")
    is_generator = isinstance(parameters, types.GeneratorType)
    params = list(parameters)
    if warn_empty_generator and is_generator and not params:
        warnings.warn(f"`{what}` is an empty generator, no gradient clipping will occur.",
                      stacklevel=3)
    return params


def _grads(params: list, fn: str) -> list:
    try:
        return [p.grad for p in params]
    except AttributeError:
        i = next(i for i, p in enumerate(params) if not hasattr(p, "grad"))
        raise TypeError(f"{fn}: parameter {i} is a {type(params[i]).__name__}, not a tensor "
                        "(nothing was modified)") from None


# ---------------------------------------------------------------- the general path's reads
def _check_storage(g, i: int, fn: str) -> None:
    """RuntimeError where a tensor's elements reach outside its storage (a
    storage freed or shrunk under it, e.g. ``untyped_storage().resize_(0)``):
    its data pointer would lead into memory it does not own."""
    if not isinstance(g, torch.Tensor) or g.numel() == 0:
        return
    lo = hi = g.storage_offset()
    for n, s in zip(g.shape, g.stride()):
        if s < 0:
            lo += (n - 1) * s
        else:
            hi += (n - 1) * s
    item, have = g.element_size(), g.untyped_storage().nbytes()
    if lo < 0 or (hi + 1) * item > have:
        raise RuntimeError(
            f"{fn}: parameter {i}'s grad (shape {tuple(g.shape)}, strides {g.stride()}, storage "
            f"offset {g.storage_offset()}) needs {(hi + 1) * item} bytes of its storage, which has "
            f"{have}: the storage was freed or shrunk under it (untyped_storage().resize_?); "
            "nothing was read or modified")


def _check_memory(g, what: str, fn: str) -> None:
    """UnsupportedGradients for a tensor with elements but no memory under
    its storage (a functional tensor, a wrapper subclass without data even
    when retyped to torch.Tensor): its data pointer is its offset, and
    ``.numpy()`` views memory it does not own."""
    if not isinstance(g, torch.Tensor) or g.numel() == 0:
        return
    try:
        ok = g.untyped_storage().data_ptr() != 0
    except RuntimeError:  # "an invalid python storage"
        ok = False
    if not ok:
        raise _unsupported(fn, what, g, "it has no memory of its own (a functional tensor, or a wrapper "
                                        "subclass without data)")


def _cpu_view(g, i: int, fn: str, what: str = "") -> np.ndarray:
    """A zero-copy numpy view of a CPU grad (bfloat16 through an int16 view);
    ``what`` names it in errors (default: parameter i's grad)."""
    what = what or f"parameter {i}'s grad"
    try:
        t = g.detach() if g.requires_grad else g
        if g.layout is not torch.strided:
            raise TypeError(f"it is a {g.layout} tensor")
        _check_storage(t, i, fn)
        _check_memory(g, what, fn)
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy().view(_BF16)
        return t.numpy()
    except UnsupportedGradients:
        raise
    except (TypeError, RuntimeError) as e:
        if "storage was freed" in str(e):
            raise
        raise _unsupported(fn, what, g, str(e)) from None


def _device_empty(device) -> torch.Tensor:
    """A float64 scalar on ``device`` for the norm (a test hook: the CUDA
    tests without a GPU put it on the CPU)."""
    return torch.empty((), dtype=torch.float64, device=device)


def _bump(grads: list, _increment=torch._C._increment_version) -> None:
    """Tell autograd the grads were modified in place (as torch's mul_ does)."""
    _increment(grads)


def _to_torch_message(e: BaseException, grads: bool = True) -> BaseException:
    """The planner's messages say "buffer i" (the array API's word); here
    the index is a parameter's, or a tensor's where the inputs are tensors
    (get_total_norm, clip_grads_with_norm_)."""
    if e.args and isinstance(e.args[0], str):
        if grads:
            msg = re.sub(r"\bbuffers (\d+) and (\d+)", r"the grads of parameters \1 and \2", e.args[0])
            msg = re.sub(r"\bbuffer (\d+)", r"parameter \1's grad", msg)
        else:
            msg = re.sub(r"\bbuffers (\d+) and (\d+)", r"tensors \1 and \2", e.args[0])
            msg = re.sub(r"\bbuffer (\d+)", r"tensor \1", msg)
        msg = re.sub(r"\bbuffer\b", "gradient", msg)
        msg = re.sub(r"\barray\b", "tensor", msg)
        msg = msg.replace(".astype(np.float32)", ".float()")
        e.args = (msg,) + e.args[1:]
    return e


def _promoted(dtypes) -> torch.dtype | None:
    return functools.reduce(torch.promote_types, sorted(dtypes, key=str)) if dtypes else None


def _norm_tensor(x: float, dtype, device, _scalar=torch.scalar_tensor) -> torch.Tensor:
    """The norm as torch returns it: a 0-d tensor of ``dtype`` on ``device``
    holding the float64 ``x`` rounded once (``torch.scalar_tensor`` refuses
    a finite value beyond the dtype's range, which rounds to inf)."""
    try:
        return _scalar(x, dtype=dtype, device=device)
    except RuntimeError:
        return torch.tensor(x, dtype=torch.float64, device=device).to(dtype)


def _nonfinite(norm: float, p: float, bad: tuple, what: str = "parameters") -> NonFiniteError:
    """torch's error_if_nonfinite error, torch's words first (code matching on
    them keeps working), then which parameters hold the inf/NaN."""
    e = NonFiniteError(norm, bad)
    where = f"{what} {list(bad)} hold" if bad else f"another rank's {what} hold"  # (DTensor gradients)
    e.args = (
        f"The total norm of order {float(p)} for gradients from `parameters` is non-finite, so it "
        "cannot be clipped. To disable this error and scale the gradients by the non-finite norm "
        f"anyway, set `error_if_nonfinite=False` (fusedclip: the norm is {norm}; {where} "
        "inf or NaN; nothing was modified)",)
    return e


# ---------------------------------------------------------------- the fast path
#: A call over fewer bytes than this runs on one thread unless told
#: otherwise (the kernels' own rule, PARALLEL_MIN, counts elements: 512 KB
#: of float32, 256 KB of bfloat16).  Inside a training step on 2 cores, two
#: threads were 4-20 % faster from 0.7 MB of float32 grads on and 40 %
#: faster at 9 MB; below 0.5 MB the calls were serial either way (DESIGN.md
#: §2b).
ONE_THREAD_BYTES = 1 << 19
_OP_NORM, _OP_CLIP, _OP_CLAMP, _OP_SCALE = (_torchread.OP_NORM, _torchread.OP_CLIP, _torchread.OP_CLAMP,
                                            _torchread.OP_SCALE)
_clip_norm_tensor, _total_norm, _clip_with_norm = (_torchread.clip_norm_tensor, _torchread.total_norm,
                                                   _torchread.clip_with_norm)
_result = _torchread.result_tensor
#: the returned norm's dtype for each set of gradient dtypes (a bit set of codes)
_RESULT_DTYPE = {m: _promoted([_DTYPES[c] for c in range(_dtypes.NDTYPES) if m >> c & 1])
                 for m in range(1 << _dtypes.NDTYPES)}
_dispatch_modes = getattr(torch._C, "_len_torch_dispatch_stack", lambda: 0)
_torchread.configure(_DTYPES, _TYPES, torch.scalar_tensor, torch._C._increment_version, _CPU, _RESULT_DTYPE,
                     _dispatch_modes)


def _fast(items: list, grads: bool, op: int, a: float = 1.0, p: float = 2.0, nt: int | None = None):
    """fusedclip.torch's fast path (``_torchread.run``): CPU tensors read and
    checked in C, the work through the C API.  None where the list goes
    the general way; else (norm, flags, scale, live, mask, bad)."""
    return _torchread.run(items, grads, op, a, p, EPS, 0 if nt is None else nt, ONE_THREAD_BYTES)


#: use_aoti's arguments where the shim is usable, and use_result's where the
#: result is made in C (the tests and benchmarks switch with them)
_AOTI_ARGS: list = []
_RESULT_ARGS: list = []


def _install_aoti() -> str:
    """Read layouts through torch's AOTI C shim (``_torchread``) where this
    torch has it and it reads sample tensors exactly as torch's accessors
    do; else through the accessors.  The shim's handles are the tensors' own
    at::Tensor fields where that is checked to hold (``_cdata_offset``), else
    made per call.  Then the result maker (``_install_result``).  Returns
    what ``READER`` says."""
    import ctypes
    import os

    _torchread.use_aoti(None)
    _torchread.use_result()
    want_reader = os.environ.get("FUSEDCLIP_TORCH_READER", "")
    if want_reader == "accessors":
        return "accessors (FUSEDCLIP_TORCH_READER=accessors)"
    try:
        alloc = torch._C._aoti.unsafe_alloc_void_ptrs_from_tensors
        libdir = os.path.join(os.path.dirname(torch.__file__), "lib")
        lib = None
        for name in ("libtorch_cpu.so", "libtorch_cpu.dylib", "torch_cpu.dll"):
            if os.path.exists(os.path.join(libdir, name)):
                lib = ctypes.CDLL(os.path.join(libdir, name))
                break
        if lib is None:
            return "accessors (no libtorch_cpu found)"
        addrs = {n: ctypes.cast(getattr(lib, n), ctypes.c_void_p).value for n in _torchread.AOTI_FUNCTIONS}

        def code(name: str) -> int:
            f = getattr(lib, name)
            f.restype, f.argtypes = ctypes.c_int32, []
            return int(f())

        args = (addrs, alloc, [code(f"aoti_torch_dtype_{n}") for n in ("float64", "float32", "bfloat16", "float16")],
                code("aoti_torch_device_type_cpu"), code("aoti_torch_device_type_cuda"),
                code("aoti_torch_layout_strided"))
        _torchread.use_aoti(*args)
        _AOTI_ARGS[:] = args
    except Exception as e:  # an older torch, another build: the accessors
        _torchread.use_aoti(None)
        return f"accessors (the AOTI shim is not usable here: {type(e).__name__}: {e})"
    if not _reads_as_accessors(args, -1):
        _torchread.use_aoti(None)
        _AOTI_ARGS.clear()
        return "accessors (the AOTI shim read a sample tensor differently)"
    how = "handles made per call"
    off = _cdata_offset(args) if want_reader != "aoti-handles" else -1
    if off >= 0:
        how = f"handles in place, at offset {off}"
    elif want_reader == "aoti-handles":
        how += " (FUSEDCLIP_TORCH_READER=aoti-handles)"
    _torchread.use_aoti(*args, off)
    return f"aoti (torch's AOTInductor C shim; {how}); result: {_install_result(lib)}"


def _samples() -> list:
    base = torch.arange(40, dtype=torch.float32)
    p = torch.nn.Parameter(torch.ones(3, 4))
    p.grad = torch.full((3, 4), 2.0)
    return [
        [base[3:11], torch.zeros(2, 3, dtype=torch.bfloat16), torch.ones(5, dtype=torch.float16)[1:],
         torch.zeros((), dtype=torch.float64), torch.zeros(0), p, p.grad, torch.ones(2, requires_grad=True)],
        [base.view(5, 8).t()], [torch.zeros(3, dtype=torch.int32)], [torch.zeros(3, dtype=torch.complex64)],
        [torch.zeros(4, device="meta")], [torch.zeros(4).to_sparse()],
    ]


def _reads_as_accessors(args: tuple, off: int) -> bool:
    """Does the shim (handles in place at ``off``, or made: -1) read every
    sample exactly as the accessors do?  (Leaves the accessors installed.)"""
    for items in _samples():
        _torchread.use_aoti(*args, off)
        got = _torchread.read_tensors(items, False)
        _torchread.use_aoti(None)
        want = _torchread.read_tensors(items, False)
        same = got[3] == want[3] and (got[3] < 0 or (
            np.array_equal(got[1], want[1]) and np.array_equal(got[2], want[2])
            and all(a is b for a, b in zip(got[0], want[0]))))
        if not same:
            return False
    return True


def _cdata_offset(args: tuple) -> int:
    """Where a tensor's Python object holds its at::Tensor (torch's
    ``THPVariable::cdata``, right after the object header in the torch
    versions that hold it by value), if that is so for this torch: the
    field is the same TensorImpl pointer as a made handle's, for every
    sample of both exact types, and reads through it equal the accessors';
    else -1 (torch versions that hold it as a ``MaybeOwned``, say)."""
    off = object.__basicsize__
    if torch.Tensor.__basicsize__ < off + 8:
        return -1
    _torchread.use_aoti(*args)
    tensors = [t for items in _samples()[:2] for t in items if type(t) in _TYPES]
    if not (tensors and _torchread.cdata_matches(tensors, off) and _reads_as_accessors(args, off)):
        return -1
    return off


def _install_result(lib) -> str:
    """Make the returned norm in C (``_torchread.use_result``) where this
    torch exports what it needs and the tensors made equal
    torch.scalar_tensor's (dtype, device, shape, bits, autograd state),
    else torch.scalar_tensor; says which."""
    import ctypes

    mangled = "_Z16THPVariable_WrapRKN2at10TensorBaseE"  # THPVariable_Wrap(const at::TensorBase &)
    try:
        f32, f64 = (ctypes.cast(getattr(lib, f"aoti_torch_scalar_to_tensor_{n}"), ctypes.c_void_p).value
                    for n in ("float32", "float64"))
        wrap = ctypes.cast(getattr(ctypes.CDLL(torch._C.__file__), mangled), ctypes.c_void_p).value
    except (AttributeError, OSError) as e:
        return f"torch.scalar_tensor (no C maker here: {e})"
    codes = [0 if d is torch.float64 else 1 if d is torch.float32 else -1 for d in _RESULT_DTYPE.values()]
    _RESULT_ARGS[:] = (f32, f64, wrap, codes)
    _torchread.use_result(*_RESULT_ARGS)
    values = (0.0, 1.5, 0.1, 2.0 ** -149, 5e-324, 3.4028234663852886e38, 1e300, math.inf, math.nan, -0.0)
    for mask, d in ((2, torch.float32), (1, torch.float64), (12, torch.float32), (3, torch.float64)):
        for x in values:
            try:
                want = torch.scalar_tensor(x, dtype=d, device=_CPU)
            except RuntimeError:
                continue
            got = _torchread.result_tensor(x, mask)
            if not (type(got) is torch.Tensor and got.dtype is d and got.device == _CPU and got.shape == ()
                    and not got.requires_grad and got.grad_fn is None and got._version == want._version
                    and got.reshape(1).view(torch.uint8).tolist() == want.reshape(1).view(torch.uint8).tolist()
                    and sys.getrefcount(got) == sys.getrefcount(want)):
                _torchread.use_result()
                _RESULT_ARGS.clear()
                return "torch.scalar_tensor (the C maker made a tensor unlike it)"
    return "made in C (the shim's scalar_to_tensor and THPVariable_Wrap)"


#: How fusedclip.torch reads tensor layouts: "aoti ..." (torch's C shim) or
#: "accessors ..." (torch's Python accessors, from C), with the reason.
READER = _install_aoti()


# ---------------------------------------------------------------- the general path
class UnsupportedGradients(TypeError):
    """Gradients fusedclip does not clip (sparse, tensor subclasses other
    than DTensor, a Partial DTensor in clip_grad_value_, devices other than
    CPU and CUDA, non-float dtypes).  Raised
    before anything is read or written; ``patch()`` hands such calls to
    torch's own function."""


def _unsupported(fn: str, what: str, g, why: str) -> UnsupportedGradients:
    return UnsupportedGradients(
        f"{fn}: {what} ({getattr(g, 'dtype', '?')}, {getattr(g, 'device', '?')}) cannot be clipped "
        f"in place ({why}); fusedclip clips dense {_dtypes.SUPPORTED} "
        "gradients on the CPU or a CUDA device; use torch.nn.utils' function for others; "
        "nothing was modified")


def _noun(grads: bool, i: int) -> str:
    return f"parameter {i}'s grad" if grads else f"tensor {i}"


def _general_key(items: list, grads: bool, tensors: list, writable: bool):
    """The general path's cache key: read_tensors' record and the addresses
    where the list is simple (CUDA tensors), else each tensor's type,
    dtype, shape, strides, address and storage (None: not cacheable)."""
    live, rec, ptrs, devices = _torchread.read_tensors(items, grads)
    if devices > 0:
        return writable, rec.tobytes(), ptrs.tobytes()
    try:
        return (writable,) + tuple(None if g is None else (
            type(g), g.dtype, bool(getattr(g, "is_cuda", False)), tuple(g.shape), tuple(g.stride()),
            g.data_ptr(), _storage(g)) for g in tensors)
    except Exception:  # sparse (no strides) and other oddities: planned every call
        return None


def _storage(g):
    try:
        st = g.untyped_storage()
    except AttributeError:  # not a torch tensor (the tests' CUDA stand-ins)
        return None
    return st.data_ptr(), st.nbytes(), g.storage_offset()


class _Plan:
    """The general path: the tensors as arrays (CPU tensors as zero-copy
    numpy views, CUDA tensors as themselves) in an array-level Clipper whose
    plan keeps no reference to them (its table has raw addresses), so that
    it can be cached under ``_general_key``.  Every check runs when it is
    built, before anything is written."""

    __slots__ = ("clipper", "dtype", "device", "gpu_only", "cached", "key")

    def __init__(self, tensors: list, fn: str, grads: bool = True, writable: bool = True):
        bufs, dtypes, device = [], set(), None
        for i, g in enumerate(tensors):
            if g is None:
                if not grads:
                    raise TypeError(f"{fn}: tensor {i} is None, not a tensor (nothing was modified)")
                bufs.append(_NO_GRAD)
                continue
            what = _noun(grads, i)
            if not (hasattr(g, "dtype") and hasattr(g, "data_ptr")):
                raise TypeError(f"{fn}: {what} is a {type(g).__name__}, not a tensor (nothing was modified)")
            if isinstance(g, torch.Tensor) and type(g) not in _TYPES:
                raise _unsupported(fn, what, g, f"it is a {type(g).__name__}, a tensor subclass")
            if g.layout is not torch.strided:
                raise _unsupported(fn, what, g, f"it is a {g.layout} tensor")
            if device is None:
                device = g.device
            dtypes.add(g.dtype)
            if getattr(g, "is_cuda", False):
                _check_storage(g, i, fn)
                _check_memory(g, what, fn)
                bufs.append(g)
            elif isinstance(g, torch.Tensor) and g.device.type != "cpu":
                raise _unsupported(fn, what, g, f"it is on {g.device}")
            else:
                bufs.append(_cpu_view(g, i, fn, what))
        try:  # every check (dtypes, overlap, devices) runs here, before anything is written
            c = _ArrayClipper.over(bufs, fn, writable=writable, eps=EPS)
        except (TypeError, ValueError, RuntimeError, MemoryError) as e:
            raise _to_torch_message(e, grads) from None
        self.clipper = c
        self.dtype = _promoted(dtypes)
        self.device = device
        self.gpu_only = c.buffers.device_only
        self.key = None
        # keep no reference to the tensors: set_to_none must free them
        self.cached = c.buffers.release()

    def configure(self, max_norm: float, norm_type: float, policy: str, nt) -> None:
        self.clipper.configure(max_norm, norm_type, policy, nt)

    def norm_clip(self, live: list, p: float):
        """Clip; (norm tensor, stats)."""
        c = self.clipper
        try:
            stats = c()
        except NonFiniteError as e:
            raise _nonfinite(e.norm, p, e.buffers) from None
        if self.gpu_only:  # the norm stays on the device: a device-to-device copy, no wait
            g = c.buffers.device.gpu
            out = _device_empty(self.device)
            g.copy_norm(g.calls, out.data_ptr())
            _bump(live)  # the device may have written
            return (out if self.dtype == torch.float64 else out.to(self.dtype)), stats
        if stats.clipped:
            _bump(live)
        return _norm_tensor(stats.norm, self.dtype, self.device), stats

    def norm(self, kind: int, p: float, error: bool, nt) -> torch.Tensor:
        """The norm only (get_total_norm): never writes."""
        red = self.clipper.buffers.reduce(kind, p, nt)
        if self.gpu_only and not error:  # no wait: a device-to-device copy
            out = _device_empty(self.device)
            red.copy_norm(out.data_ptr())
            return out if self.dtype == torch.float64 else out.to(self.dtype)
        if error and red.flags:  # (a CUDA part: the one wait)
            raise _nonfinite(red.norm, p, red.callers(), "tensors")
        return _norm_tensor(red.norm, self.dtype, self.device)

    def scale(self, d: "_policy.Decision", live: list, nt) -> None:
        """Apply a decision taken on the host (clip_grads_with_norm_)."""
        if d.action != _policy.A_SCALE:
            return
        self.clipper.buffers.apply(d.action, d.scale, nt)
        _bump(live)

    def clamp(self, live: list, v: float, nt) -> None:
        # the plumbing of fusedclip.clip_grad_value_, over this plan
        self.clipper.buffers.clamp(v, nt)
        _bump(live)


#: General-path plans (CUDA tensors, and lists of stand-ins for them), by
#: _general_key: a bounded LRU; no entry holds a tensor.
_general = LRU()


def _general_plan(items: list, grads: bool, fn: str, writable: bool,
                  last: "_Plan | None" = None) -> tuple[_Plan, list]:
    """(plan, the tensors with their Nones, the live ones) for a list the
    fast path does not take: a cached plan where the key matches, else a
    new one (which checks everything)."""
    if _dispatch_modes():
        raise UnsupportedGradients(
            f"{fn}: a TorchDispatchMode is active (FakeTensorMode, FlopCounterMode, ...); fusedclip's "
            "kernels read and write the gradients' memory directly, unseen by it; use torch.nn.utils' "
            "function (patch() hands such calls to it); nothing was modified")
    tensors = _grads(items, fn) if grads else items
    key = _general_key(items, grads, tensors, writable)
    if key is not None and last is not None and last.key == key:
        return last, tensors
    plan = None if key is None else _general.get(key)
    if plan is None:
        plan = _Plan(tensors, fn, grads, writable)
        if key is not None and plan.cached:
            plan.key = key
            _general.store(key, plan)
    else:
        _general.lookup(key)
    return plan, tensors


def _live(tensors: list) -> list:
    return [g for g in tensors if g is not None]


# ---------------------------------------------------------------- DTensor gradients
# FSDP2, tensor parallel, several meshes: _sharded reads the specs; the local
# shards go through the paths above; one round of _reduce.combine makes the
# global norm (docs/DISTRIBUTED.md §6).
def _read_sharded(tensors: list, fn: str, grads: bool, partial: str,
                  params: list | None = None) -> _sharded.Sharded:
    return _sharded.read(tensors, fn, functools.partial(_noun, grads),
                         lambda what, g, why: _unsupported(fn, what, g, why), partial, params)


def _as_tensor_message(e: BaseException) -> BaseException:
    """get_total_norm's inputs are tensors: its shards' messages say "tensor i"."""
    if e.args and isinstance(e.args[0], str):
        e.args = (re.sub(r"\bparameter (\d+)'s grad", r"tensor \1", e.args[0]),) + e.args[1:]
    return e


def _local_norm(items: list, kind: int, p: float, nt, fn: str, writable: bool):
    """(norm, flags, v -> v / norm, flagged inputs) of the shards in ``items``
    (``_sharded.Local``s): CPU shards on the fast path, else a general plan
    (CUDA shards: the host reads the device's norm)."""
    r = _fast(items, True, _OP_NORM, 1.0, p, nt)
    if r is not None and (r[0] < _INF or r[1]):
        n = r[0]
        return n, r[1], (lambda v: v / n), tuple(r[5])
    plan, _ = _general_plan(items, True, fn, writable)
    red = plan.clipper.buffers.reduce(kind, p, nt)
    return red.norm, red.flags, red.scale_of, red.callers()


def _sharded_norm(sh: _sharded.Sharded, kind: int, p: float, nt, fn: str, grads: bool,
                  writable: bool) -> tuple[_reduce.Global, tuple]:
    """The global norm of DTensor gradients (the same bits on every rank) and
    this rank's flagged inputs.  One all-reduce in the common case; this
    rank's refusal rides in it, so every rank raises alike."""
    parts: list = []
    bad: list = []
    own = sh.refusal
    if own is None:
        try:
            for copies, idx in sh.classes.items():
                items = [_sharded.NO_GRAD] * len(sh.items)
                for i in idx:
                    items[i] = sh.norm_items[i]
                n, f, scale_of, b = _local_norm(items, kind, p, nt, fn, writable)
                parts.append(_reduce.Part(n, f, scale_of, False, copies))
                bad.extend(b)
            if writable and any(a is not b for a, b in zip(sh.items, sh.norm_items)):
                _local_norm(sh.items, kind, p, nt, fn, True)  # a Partial's terms: checked before the round
        except (TypeError, ValueError, RuntimeError, MemoryError) as e:
            own, parts = (e if grads else _as_tensor_message(e)), []
    g = _reduce.combine(parts, kind, p, _reduce.Reducer(_sharded.reducer(sh), fn),
                        _sharded.refusal_flags(own, UnsupportedGradients))
    if any(g.extra):
        raise _sharded.refusal_error(g.extra, own, fn, UnsupportedGradients)
    return g, tuple(sorted(bad))


def _sharded_result(sh: _sharded.Sharded, x: float) -> torch.Tensor:
    shards = [it.grad for it in sh.items if it.grad is not None]
    local = _norm_tensor(x, _promoted({t.dtype for t in shards}) or torch.float32,
                         shards[0].device if shards else sh.device or _CPU)
    return _sharded.result(sh, local)


def _sharded_write(sh: _sharded.Sharded, op: int, a: float, nt, fn: str) -> None:
    """Scale (_OP_SCALE) or clamp (_OP_CLAMP) every local shard by ``a``."""
    r = _fast(sh.items, True, op, a, 2.0, nt)
    if r is not None:
        _bump(r[3])
    else:
        plan, tensors = _general_plan(sh.items, True, fn, True)
        live = _live(tensors)
        if op == _OP_CLAMP:
            plan.clamp(live, a, nt)
        else:
            plan.scale(_policy.Decision(_policy.A_SCALE, a, True), live, nt)
    _bump(sh.dtensors)


def _sharded_clip(params: list, v: float, kind: int, p: float, policy: str, nt,
                  fn: str) -> tuple[torch.Tensor, _policy.ClipStats]:
    """clip_grad_norm_ over DTensor gradients: (norm, stats)."""
    sh = _read_sharded(_grads(params, fn), fn, True, "reduce", params)
    g, bad = _sharded_norm(sh, kind, p, nt, fn, True, True)
    d = _policy.decide(g.norm, g.flags, v, policy, lambda: g.scale_of(v), EPS)
    if d.action == _policy.A_RAISE:
        raise _nonfinite(g.norm, p, bad)
    if d.action == _policy.A_SCALE:
        _sharded_write(sh, _OP_SCALE, d.scale, nt, fn)
    return _sharded_result(sh, g.norm), _policy.ClipStats(g.norm, d.scale, d.clipped, not g.flags, v, bad)


def _sharded_local(tensors: list, fn: str, op: int, a: float | None, partial: str) -> None:
    """clip_grads_with_norm_ / clip_grad_value_ over DTensor gradients: each
    shard on its own, no collective (so a refusal is this rank's only);
    ``a`` None: check only (nothing to write)."""
    sh = _read_sharded(tensors, fn, True, partial)
    if sh.refusal is not None:
        raise sh.refusal
    if a is not None:
        _sharded_write(sh, op, a, None, fn)


# ---------------------------------------------------------------- torch's API
def _policy_for(error_if_nonfinite: bool) -> str:
    return "error" if error_if_nonfinite else "propagate"


def _after_nonfinite(r, items: list, v: float, p: float, policy: str, nt):
    """The fast path wrote nothing for non-finite grads: the policy decides
    (``_policy.decide``, as everywhere): raise, or scale by v / norm (NaN or
    0, as torch).  Returns the scale written."""
    norm, flags, _, live, _, bad = r
    d = _policy.decide(norm, flags, v, policy, None, EPS)
    if d.action == _policy.A_RAISE:
        raise _nonfinite(norm, p, bad)
    if _fast(items, True, _OP_SCALE, d.scale, p, nt) is None:  # cannot happen: the same tensors
        raise RuntimeError("fusedclip.torch: the gradients changed during the call")
    _bump(live)
    return d.scale


def clip_grad_norm_(
    parameters: _TensorOrTensors,
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
    foreach: bool | None = None,
) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_``: clip the gradients' global norm in place.

    The norm is taken over every ``p.grad`` (None grads skipped) as one
    vector; when ``max_norm / (norm + 1e-6) < 1`` every gradient is multiplied
    by it, else nothing is written.  Returns the norm before clipping: a
    tensor on the first gradient's device, in the promoted dtype of the
    gradients (as torch).  ``foreach`` is accepted and ignored (fusedclip
    always clips all tensors in one fused pass).  ``error_if_nonfinite``:
    ``NonFiniteError`` (a RuntimeError, with torch's message) before
    anything is written; else a NaN/inf norm scales by NaN/0 as torch does.
    DTensor gradients: the global norm over every mesh (one all-reduce),
    returned as a replicated DTensor (a plain tensor for several meshes).
    """
    r = _clip_norm_tensor(parameters, max_norm, norm_type, EPS, 0, ONE_THREAD_BYTES)
    if type(r) is torch.Tensor:  # the fast path ran (CPU grads, finite), all in C
        return r
    if type(r) is tuple:  # it ran; the norm is beyond the result dtype's range
        return _norm_tensor(r[0], _RESULT_DTYPE[r[4]], _CPU)
    return _clip_grad_norm(parameters if r is None else r, parameters, max_norm, norm_type,
                           error_if_nonfinite)


def _clip_grad_norm(params: Any, original: Any, max_norm: Any, norm_type: Any,
                    error_if_nonfinite: bool) -> torch.Tensor:
    """clip_grad_norm_ beyond the fast path's common case: every check, with
    its message; non-finite grads; the general path.  ``params``: the list
    the fast path made (a generator is consumed by then), or the input."""
    fn = "fusedclip.torch.clip_grad_norm_"
    params = _param_list(params, fn, warn_empty_generator=False)
    if not params and isinstance(original, types.GeneratorType):
        warnings.warn("`parameters` is an empty generator, no gradient clipping will occur.", stacklevel=3)
    v, kind, p = _check_norm_args(max_norm, norm_type)
    r = _fast(params, True, _OP_CLIP, v, p)
    # DTensors (or DTensor parameters without grads here: this rank still takes part in the round)
    if (r is None or not r[3]) and _sharded.any_dtensor(params, True):
        return _sharded_clip(params, v, kind, p, _policy_for(error_if_nonfinite), None, fn)[0]
    if r is not None:
        if not r[3]:
            return torch.tensor(0.0)
        if r[1]:
            _after_nonfinite(r, params, v, p, _policy_for(error_if_nonfinite), None)
        elif r[2] != 1.0:
            _bump(r[3])
        return _norm_tensor(r[0], _RESULT_DTYPE[r[4]], _CPU)
    plan, tensors = _general_plan(params, True, fn, True)
    live = _live(tensors)
    if not live:
        return torch.tensor(0.0)
    plan.configure(v, p, _policy_for(error_if_nonfinite), None)
    return plan.norm_clip(live, p)[0]


def clip_grad_value_(
    parameters: _TensorOrTensors,
    clip_value: float,
    foreach: bool | None = None,
) -> None:
    """``torch.nn.utils.clip_grad_value_``: clamp every gradient element to
    ``[-clip_value, clip_value]`` in place (NaN stays NaN, +-inf becomes
    +-clip_value).  ``clip_value`` must be >= 0.  ``foreach`` is ignored."""
    fn = "fusedclip.torch.clip_grad_value_"
    params = _param_list(parameters, fn, warn_empty_generator=False)
    v = _policy.check_clip_value(_number("clip_value", clip_value))
    r = _fast(params, True, _OP_CLAMP, v)
    if r is not None:
        if r[3]:
            _bump(r[3])
        return None
    if _sharded.any_dtensor(params, True):
        return _sharded_local(_grads(params, fn), fn, _OP_CLAMP, v, "refuse")
    plan, tensors = _general_plan(params, True, fn, True)
    live = _live(tensors)
    if live:
        plan.clamp(live, v, None)
    return None


def get_total_norm(
    tensors: _TensorOrTensors,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
    foreach: bool | None = None,
) -> torch.Tensor:
    """``torch.nn.utils.get_total_norm``: the norm of the tensors themselves
    (not of their ``.grad``), as one vector.  Never writes.  Returns a
    tensor on the first tensor's device in their promoted dtype;
    ``tensor(0.)`` for no tensors.  ``error_if_nonfinite``: torch's
    RuntimeError (a ``NonFiniteError``) for an inf/NaN norm."""
    r = _total_norm(tensors, norm_type, error_if_nonfinite, 0, ONE_THREAD_BYTES)
    if type(r) is tuple:  # the fast path ran (CPU tensors)
        try:
            return _result(r[0], r[4])
        except RuntimeError:  # a finite norm beyond the dtype's range
            return _norm_tensor(r[0], _RESULT_DTYPE[r[4]], _CPU)
    fn = "fusedclip.torch.get_total_norm"
    items = _param_list(tensors if r is None else r, fn, warn_empty_generator=False, what="tensors")
    kind, p = _policy.norm_kind(_number("norm_type", norm_type))
    if not items:
        return torch.tensor(0.0)
    r = _fast(items, False, _OP_NORM, 1.0, p)
    if r is not None:
        if error_if_nonfinite and r[1]:
            raise _nonfinite(r[0], p, r[5], "tensors")
        return _norm_tensor(r[0], _RESULT_DTYPE[r[4]], _CPU)
    if _sharded.any_dtensor(items, False):
        sh = _read_sharded(items, fn, False, "reduce")
        g, bad = _sharded_norm(sh, kind, p, None, fn, False, False)
        if error_if_nonfinite and g.flags:
            raise _nonfinite(g.norm, p, bad, "tensors")
        return _sharded_result(sh, g.norm)
    plan, _ = _general_plan(items, False, fn, False)
    return plan.norm(kind, p, error_if_nonfinite, None)


def clip_grads_with_norm_(
    parameters: _TensorOrTensors,
    max_norm: float,
    total_norm: torch.Tensor | float,
    foreach: bool | None = None,
) -> None:
    """``torch.nn.utils.clip_grads_with_norm_``: scale every ``p.grad`` by
    ``max_norm / (total_norm + 1e-6)`` where that is below 1 (torch's rule),
    given the norm (``get_total_norm``'s, or any, e.g. a global one).
    Nothing is written when nothing is clipped; an inf ``total_norm``
    scales by 0 and a NaN one by NaN, as torch does.  ``total_norm`` is a
    one-element tensor or a number; on a CUDA device reading it waits for
    the device once.  ``foreach`` is ignored."""
    r = _clip_with_norm(parameters, max_norm, total_norm, EPS, 0, ONE_THREAD_BYTES)
    if type(r) is tuple:  # the fast path ran (CPU grads, a finite norm)
        if r[2] != 1.0:
            _bump(r[3])
        return None
    fn = "fusedclip.torch.clip_grads_with_norm_"
    params = _param_list(parameters if r is None else r, fn, warn_empty_generator=False)
    v = _policy.check_max_norm(_number("max_norm", max_norm))
    tn = _number("total_norm", _sharded.total_norm_value(total_norm))
    if tn < 0.0:
        raise ValueError(f"{fn}: total_norm must be >= 0 (a norm), got {tn}; nothing was modified")
    flags = cpu.HAS_NAN if tn != tn else cpu.HAS_INF if tn == _INF else 0
    d = _policy.decide(tn, flags, v, "propagate", None, EPS)
    r = _fast(params, True, _OP_SCALE, d.scale if d.action == _policy.A_SCALE else 1.0)
    if r is not None:
        if r[2] != 1.0:
            _bump(r[3])
        return None
    if _sharded.any_dtensor(params, True):
        return _sharded_local(_grads(params, fn), fn, _OP_SCALE,
                              d.scale if d.action == _policy.A_SCALE else None, "keep")
    plan, tensors = _general_plan(params, True, fn, True)
    live = _live(tensors)
    if live:
        plan.scale(d, live, None)
    return None


class Clipper(_torchread.ClipCall):
    """Clip the same parameters every step: ``clipper()`` is
    ``clip_grad_norm_(parameters, max_norm, norm_type, error_if_nonfinite)``.

    >>> clipper = fusedclip.torch.Clipper(model.parameters(), max_norm=1.0)
    >>> loss.backward(); norm = clipper(); opt.step(); opt.zero_grad()

    It keeps the parameters (as an optimizer does), never their gradients:
    every call reads each parameter's *current* ``.grad``, so new grad
    tensors (``zero_grad(set_to_none=True)``) are what it clips.  CPU grads
    need no plan (their layouts are read and checked in C on every call);
    ``replans`` counts the general-path plans it built (CUDA grads: a new
    one when an address or a layout changed).  DTensor grads (FSDP2, tensor
    parallel) are read afresh every call, as ``clip_grad_norm_`` reads them
    (docs/DISTRIBUTED.md §6).  Compare the array-level
    ``fusedclip.Clipper``, whose plan holds the arrays it was given: over
    last step's grads it measures stale memory (docs/TORCH.md).

    ``max_norm``, ``norm_type`` and ``error_if_nonfinite`` may be assigned
    between calls (validated).  ``stats`` is the last call's ``ClipStats``
    (``DeviceClipStats`` on a GPU: reading it waits).  Not thread-safe.
    The call itself is ``_torchread.ClipCall.__call__`` (C: no Python
    attribute is read on the common path).
    """

    _fn = "fusedclip.torch.Clipper"

    def __init__(self, parameters: _TensorOrTensors, max_norm: float, norm_type: float = 2.0,
                 error_if_nonfinite: bool = False, *, num_threads: int | None = None) -> None:
        self._params = list(_param_list(parameters, self._fn, warn_empty_generator=True))
        self._max_norm, self._kind, self._norm_type = _check_norm_args(max_norm, norm_type)
        self.error_if_nonfinite = bool(error_if_nonfinite)
        self._num_threads = _policy.check_threads(num_threads)
        self._plan: _Plan | None = None
        self._stats: Any = None
        self.replans = 0
        self._sync()

    def _sync(self) -> None:
        """Hand the settings to the C call."""
        self._configure_call(self._params, self._max_norm, self._norm_type, EPS,
                             0 if self._num_threads is None else self._num_threads, ONE_THREAD_BYTES)

    @property
    def stats(self) -> Any:
        """The last call's ``ClipStats`` (``DeviceClipStats`` on a GPU), or None."""
        if self._fast_last:  # the fast path's result: finite, written iff the scale is not 1
            s = self._last_scale
            return _policy.ClipStats(self._last_norm, s, s != 1.0, True, self._last_max_norm, ())
        return self._stats

    @property
    def max_norm(self) -> float:
        return self._max_norm

    @max_norm.setter
    def max_norm(self, value: float) -> None:
        self._max_norm = _check_norm_args(value, self._norm_type)[0]
        self._sync()

    @property
    def norm_type(self) -> float:
        return self._norm_type

    @norm_type.setter
    def norm_type(self, value: float) -> None:
        _, self._kind, self._norm_type = _check_norm_args(self._max_norm, value)
        self._sync()

    def __len__(self) -> int:
        return len(self._params)

    def __repr__(self) -> str:
        return (f"fusedclip.torch.Clipper({len(self._params)} parameters, max_norm={self._max_norm}, "
                f"norm_type={self._norm_type}, error_if_nonfinite={self.error_if_nonfinite})")

    def _norm_tensor(self, x: float, dtype) -> torch.Tensor:
        return _norm_tensor(x, dtype, _CPU)

    def _call(self, _r) -> torch.Tensor:
        """Beyond the fast path's common case (``ClipCall.__call__``):
        non-finite grads, and the general path."""
        v, p, nt = self._max_norm, self._norm_type, self._num_threads
        r = _fast(self._params, True, _OP_CLIP, v, p, nt)
        if (r is None or not r[3]) and _sharded.any_dtensor(self._params, True):  # as clip_grad_norm_
            norm_t, self._stats = _sharded_clip(self._params, v, self._kind, p,
                                                _policy_for(self.error_if_nonfinite), nt, self._fn)
            return norm_t
        if r is not None:
            norm, flags, scale, live, mask, bad = r
            if not live:
                self._stats = None
                return torch.tensor(0.0)
            if flags:
                scale = _after_nonfinite(r, self._params, v, p, _policy_for(self.error_if_nonfinite), nt)
            elif scale != 1.0:
                _bump(live)
            self._stats = _policy.ClipStats(norm, scale, bool(flags) or scale != 1.0, not flags, v, bad)
            return _norm_tensor(norm, _RESULT_DTYPE[mask], _CPU)
        last = self._plan
        plan, tensors = _general_plan(self._params, True, self._fn, True, last)
        if plan is not last:
            self._plan = plan
            self.replans += 1
        live = _live(tensors)
        if not live:
            self._stats = None
            return torch.tensor(0.0)
        plan.configure(v, p, _policy_for(self.error_if_nonfinite), nt)
        norm, self._stats = plan.norm_clip(live, p)
        return norm


# ---------------------------------------------------------------- patch()
#: torch.nn.utils' names and the clip_grad module's, for each of ours
_PATCHED = {
    "clip_grad_norm_": ("clip_grad_norm_", "clip_grad_norm_"),
    "clip_grad_value_": ("clip_grad_value_", "clip_grad_value_"),
    "get_total_norm": ("get_total_norm", "_get_total_norm"),
    "clip_grads_with_norm_": ("clip_grads_with_norm_", "_clip_grads_with_norm_"),
}


class Patch:
    """What ``patch()`` installed: ``calls`` counts the calls fusedclip ran,
    per function, and ``fallbacks`` those it handed to torch's own function
    (gradients fusedclip does not clip: sparse, tensor subclasses other than
    DTensor, other devices).  ``unpatch()`` (or leaving the ``with`` block)
    restores torch's functions exactly."""

    def __init__(self, fallback: bool) -> None:
        import torch.nn.utils as nu
        import torch.nn.utils.clip_grad as cg

        self.fallback = fallback
        self.calls = dict.fromkeys(_PATCHED, 0)
        self.fallbacks = dict.fromkeys(_PATCHED, 0)
        self.active = False
        self._saved = [(m, name, m.__dict__[name]) for ours, names in _PATCHED.items()
                       for m, name in zip((nu, cg), names) if name in m.__dict__]
        self._wrappers = {ours: self._wrap(ours, cg.__dict__.get(names[1])) for ours, names in _PATCHED.items()}

    def _wrap(self, ours: str, theirs):
        impl = globals()[ours]
        first = "tensors" if ours == "get_total_norm" else "parameters"

        @functools.wraps(impl)
        def wrapper(*args, **kwargs):
            if self.fallback and theirs is not None:
                if not args or type(args[0]) is not list:
                    # a generator is read once: both functions must see the same parameters
                    args, kwargs = _materialised(args, kwargs, first, ours == "clip_grad_norm_")
                try:
                    out = impl(*args, **kwargs)
                except UnsupportedGradients:
                    self.fallbacks[ours] += 1
                    return theirs(*args, **kwargs)
            else:
                out = impl(*args, **kwargs)
            self.calls[ours] += 1
            return out

        setattr(wrapper, "__fusedclip_patch__", self)  # noqa: B010  (how unpatch() finds it)
        return wrapper

    def _install(self) -> None:
        import torch.nn.utils as nu
        import torch.nn.utils.clip_grad as cg

        for ours, names in _PATCHED.items():
            for m, name in zip((nu, cg), names):
                if name in m.__dict__:
                    setattr(m, name, self._wrappers[ours])
        self.active = True

    def unpatch(self) -> None:
        """Restore torch's own functions (what they were before ``patch()``)."""
        global _active
        if not self.active:
            return
        for m, name, f in self._saved:
            setattr(m, name, f)
        self.active = False
        if _active is self:
            _active = None

    def __enter__(self) -> "Patch":
        return self

    def __exit__(self, *exc) -> None:
        self.unpatch()

    def __repr__(self) -> str:
        return (f"fusedclip.torch.Patch(active={self.active}, calls={self.calls}, "
                f"fallbacks={self.fallbacks})")


def _materialised(args: tuple, kwargs: dict, name: str, warn: bool) -> tuple[tuple, dict]:
    """The call's first argument (``name``) as a list where it is an iterator
    (torch's empty-generator warning kept)."""
    if args:
        x = args[0]
    elif name in kwargs:
        x = kwargs[name]
    else:
        return args, kwargs
    if isinstance(x, (torch.Tensor, list, tuple)) or not hasattr(x, "__next__"):
        return args, kwargs
    items = list(x)
    if warn and not items and isinstance(x, types.GeneratorType):
        warnings.warn("`parameters` is an empty generator, no gradient clipping will occur.", stacklevel=4)
    if args:
        return (items,) + args[1:], kwargs
    return args, dict(kwargs, **{name: items})


_active: Patch | None = None


def patch(*, fallback: bool = True) -> Patch:
    """Install fusedclip's ``clip_grad_norm_``, ``clip_grad_value_``,
    ``get_total_norm`` and ``clip_grads_with_norm_`` into ``torch.nn.utils``
    and ``torch.nn.utils.clip_grad``, so that code that calls torch's (HF
    Trainer, Lightning, accelerate, your own) runs fusedclip's.  Returns a
    ``Patch`` (also a context manager: ``with fct.patch(): ...``).

    ``fallback``: gradients fusedclip does not clip (sparse, tensor
    subclasses other than DTensor, other devices) go to torch's own
    function instead of raising.  fusedclip's deliberate differences stay
    (docs/TORCH.md): ``max_norm <= 0`` is a ValueError, for one.  Calling
    ``patch()`` while patched returns the active ``Patch``.  Code that
    imported the functions by name before ``patch()`` keeps torch's.
    """
    global _active
    if _active is not None and _active.active:
        return _active
    _active = Patch(fallback)
    _active._install()
    return _active


def unpatch() -> None:
    """Restore torch's own functions (a no-op when not patched)."""
    if _active is not None:
        _active.unpatch()
