"""fusedclip.torch: drop-ins for ``torch.nn.utils.clip_grad_norm_`` and
``clip_grad_value_``, and a ``Clipper`` for parameters whose grads change.

>>> import fusedclip.torch as fct
>>> norm = fct.clip_grad_norm_(model.parameters(), max_norm=1.0)   # as torch's

The signatures and return types are torch 2.13's.  The gradients are read in
place: CPU tensors (bfloat16 included) as numpy views by the CPU engine, CUDA
tensors by the CUDA engine on torch's current stream.  The returned norm is a
tensor on the first gradient's device in the dtype torch returns; on a GPU it
is written by a device-to-device copy of the engine's state, so the call
never waits for the device (except with ``error_if_nonfinite=True``, which
must know, and lists that mix CPU and CUDA gradients).

The clipping rule is torch's: scale by ``max_norm / (norm + 1e-6)`` when that
is below 1.  Differences (documented in docs/TORCH.md): the norm is exact
(float64 accumulation; finite gradients whose squares overflow get a finite
norm and a correct clip), nothing is written when nothing is clipped,
``max_norm`` must be > 0, ``norm_type`` > 0 or inf, ``clip_value`` >= 0, and
the same gradient passed twice counts once.

Repeated calls over the same parameters whose grads sit at the same
addresses reuse one plan (a bounded cache that keeps no tensor alive), so
the per-call host work is reading ``p.grad`` and ``data_ptr()`` of each.
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
import types
import warnings
import weakref
from collections import OrderedDict
from typing import Any, Iterable, Union

import ml_dtypes
import numpy as np

from . import _policy
from ._api import Clipper as _ArrayClipper
from ._policy import NonFiniteError

__all__ = ["Clipper", "clip_grad_norm_", "clip_grad_value_", "EPS"]

#: torch's eps in ``clip_coef = max_norm / (total_norm + 1e-6)``
EPS = 1e-6
_TensorOrTensors = Union[torch.Tensor, Iterable[torch.Tensor]]
_NO_GRAD = np.zeros(0, np.float32)  # stands in for a None grad: indices stay the parameters'
_BF16 = np.dtype(ml_dtypes.bfloat16)


def _number(name: str, x: Any) -> float:
    """What torch's ``float(x)`` accepts (a number, a numeric string such as
    'inf', a one-element tensor), except bools (TypeError, fusedclip's rule)."""
    if isinstance(x, torch.Tensor):
        if x.numel() != 1:
            raise TypeError(f"{name} must be a real number or a one-element tensor, "
                            f"got a tensor of {x.numel()} elements")
        x = x.item()
    elif isinstance(x, str):
        try:
            x = float(x)
        except ValueError:
            raise ValueError(f"{name} must be a real number, got {x!r}") from None
    return _policy.real(name, x)


def _param_list(parameters: Any, fn: str, warn_empty_generator: bool) -> list:
    if isinstance(parameters, torch.Tensor):
        return [parameters]
    if parameters is None or isinstance(parameters, (str, bytes, dict)) or not hasattr(parameters, "__iter__"):
        raise TypeError(f"{fn}: parameters must be a tensor or an iterable of tensors, "
                        f"got {type(parameters).__name__}")
    is_generator = isinstance(parameters, types.GeneratorType)
    params = list(parameters)
    if warn_empty_generator and is_generator and not params:
        warnings.warn("`parameters` is an empty generator, no gradient clipping will occur.",
                      stacklevel=3)
    return params


def _grads(params: list, fn: str) -> list:
    try:
        return [p.grad for p in params]
    except AttributeError:
        i = next(i for i, p in enumerate(params) if not hasattr(p, "grad"))
        raise TypeError(f"{fn}: parameter {i} is a {type(params[i]).__name__}, not a tensor "
                        "(nothing was modified)") from None


def _pointers(grads: list, fn: str) -> tuple:
    try:
        return tuple([None if g is None else g.data_ptr() for g in grads])
    except RuntimeError:  # a sparse grad has no data pointer
        for i, g in enumerate(grads):
            if g is not None and g.layout is not torch.strided:
                raise TypeError(f"{fn}: parameter {i}'s grad is a {g.layout} tensor; fusedclip clips "
                                "dense gradients; use torch.nn.utils.clip_grad_norm_ for sparse ones; "
                                "nothing was modified") from None
        raise


def _cpu_view(g, i: int, fn: str) -> np.ndarray:
    """A zero-copy numpy view of a CPU grad (bfloat16 through an int16 view)."""
    try:
        t = g.detach() if g.requires_grad else g
        if g.layout is not torch.strided:
            raise TypeError(f"it is a {g.layout} tensor")
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy().view(_BF16)
        return t.numpy()
    except (TypeError, RuntimeError) as e:
        raise TypeError(
            f"{fn}: parameter {i}'s grad ({g.dtype}, {g.device}) cannot be clipped in place ({e}); "
            "fusedclip clips dense float16, bfloat16, float32 and float64 gradients on the CPU or "
            "a CUDA device; use torch.nn.utils.clip_grad_norm_ for others; nothing was modified"
        ) from None


def _device_empty(device) -> torch.Tensor:
    """A float64 scalar on ``device`` for the norm (a test hook: the CUDA
    tests without a GPU put it on the CPU)."""
    return torch.empty((), dtype=torch.float64, device=device)


def _bump(grads: list) -> None:
    """Tell autograd the grads were modified in place (as torch's mul_ does)."""
    torch._C._increment_version(grads)


class _Plan:
    """One planned gradient list: an array-level Clipper over the grads that
    keeps no reference to them (its table has raw addresses), the addresses
    it was built for, and the return dtype and device."""

    __slots__ = ("clipper", "ptrs", "dtype", "device", "gpu_only", "cached", "__weakref__")

    def __init__(self, grads: list, ptrs: tuple, fn: str, max_norm: float, norm_type: float,
                 policy: str, num_threads):
        bufs, dtypes, device = [], set(), None
        for i, g in enumerate(grads):
            if g is None:
                bufs.append(_NO_GRAD)
                continue
            if device is None:
                device = g.device
            dtypes.add(g.dtype)
            if getattr(g, "is_cuda", False):
                if g.layout is not torch.strided:
                    raise TypeError(f"{fn}: parameter {i}'s grad is a {g.layout} tensor; fusedclip "
                                    "clips dense gradients; use torch.nn.utils.clip_grad_norm_ for "
                                    "sparse ones; nothing was modified")
                bufs.append(g)
            else:
                bufs.append(_cpu_view(g, i, fn))
        c = _ArrayClipper.__new__(_ArrayClipper)
        # every check (scalars, dtypes, overlap, devices) runs here, before anything is written
        c._setup(bufs, max_norm, norm_type, policy, num_threads, None, fn)
        c._eps = EPS
        self.clipper = c
        self.ptrs = ptrs
        self.dtype = functools.reduce(torch.promote_types, sorted(dtypes, key=str)) if dtypes else None
        self.device = device
        self.gpu_only = c._gpu is not None and c._plan.table.nchunks == 0
        # keep no reference to the grads: set_to_none must free them
        self.cached = c._plan.release()
        if c._gpu is not None:
            c._gpu.release()

    def configure(self, max_norm: float, norm_type: float, policy: str) -> None:
        c = self.clipper
        if c._max_norm != max_norm:
            c.max_norm = max_norm
        if c._norm_type != norm_type:
            c.norm_type = norm_type
        if c._nonfinite_policy != policy:
            c.nonfinite = policy

    def norm_clip(self, grads: list, fn: str):
        """Clip; (norm tensor, stats)."""
        c = self.clipper
        try:
            stats = c()
        except NonFiniteError as e:
            e.args = (
                f"{fn}: the total norm of order {c.norm_type} for gradients from `parameters` is "
                f"non-finite ({e.norm}), so it cannot be clipped: parameters {list(e.buffers)} hold "
                "inf or NaN; nothing was modified. To disable this error and scale the gradients by "
                "the non-finite norm anyway, set `error_if_nonfinite=False`",)
            raise
        if self.gpu_only:  # the norm stays on the device: a device-to-device copy, no wait
            g = c._gpu
            out = _device_empty(self.device)
            g.copy_norm(g.calls, out.data_ptr())
            _bump([x for x in grads if x is not None])  # the device may have written
        else:
            out = torch.tensor(stats.norm, dtype=torch.float64, device=self.device)
            if stats.clipped:
                _bump([x for x in grads if x is not None])
        return (out if self.dtype == torch.float64 else out.to(self.dtype)), stats

    def clamp(self, grads: list, v: float) -> None:
        # the plumbing of fusedclip.clip_grad_value_, over this plan
        c = self.clipper
        plan, g = c._plan, c._gpu
        plan.refresh()
        plan.table.clamp(v, c._num_threads)
        plan.write_back()
        if g is not None:
            g.clamp(v)
        _bump([x for x in grads if x is not None])


# ---------------------------------------------------------------- the function API's plans
#: Plans of recent calls, keyed by the parameters' ids and their grads' data
#: pointers.  An entry is dropped when one of its parameters dies (weak
#: references), so equal ids mean the same live parameters; torch keeps a
#: grad's shape and dtype equal to its parameter's, so equal pointers mean the
#: same memory.  No entry references a gradient.  As for the array API's GPU
#: cache, an in-place change of a grad's metadata that keeps its pointer
#: (set_, as_strided_, resize_) is not seen.
PLAN_CACHE_SIZE = 16
_cache: "OrderedDict[tuple, tuple]" = OrderedDict()


def _evict(key, plan_ref):
    def cb(_):
        hit = _cache.get(key)
        if hit is not None and hit[0] is plan_ref():
            del _cache[key]
    return cb


def _cached_plan(params: list, grads: list, fn: str, max_norm: float, norm_type: float,
                 policy: str) -> _Plan:
    ptrs = _pointers(grads, fn)
    key = (tuple(map(id, params)), ptrs)
    hit = _cache.get(key)
    if hit is not None:
        _cache.move_to_end(key)
        plan = hit[0]
        plan.configure(max_norm, norm_type, policy)
        return plan
    plan = _Plan(grads, ptrs, fn, max_norm, norm_type, policy, None)
    if plan.cached:
        try:
            cb = _evict(key, weakref.ref(plan))
            refs = [weakref.ref(p, cb) for p in params]
        except TypeError:  # parameters without weak references: not cached
            return plan
        _cache[key] = (plan, refs)
        if len(_cache) > PLAN_CACHE_SIZE:
            _cache.popitem(last=False)
    return plan


def _check_norm_args(max_norm: Any, norm_type: Any) -> tuple[float, float]:
    v = _policy.check_max_norm(_number("max_norm", max_norm))
    p = _number("norm_type", norm_type)
    _policy.norm_kind(p)  # ValueError for p <= 0 (torch's 0, negative and -inf "norms")
    return v, p


# ---------------------------------------------------------------- the drop-ins
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
    ``NonFiniteError`` (a RuntimeError) before anything is written; else a
    NaN/inf norm scales by NaN/0 as torch does.
    """
    fn = "fusedclip.torch.clip_grad_norm_"
    params = _param_list(parameters, fn, warn_empty_generator=True)
    v, p = _check_norm_args(max_norm, norm_type)
    grads = _grads(params, fn)
    if all(g is None for g in grads):
        return torch.tensor(0.0)
    policy = "error" if error_if_nonfinite else "propagate"
    plan = _cached_plan(params, grads, fn, v, p, policy)
    return plan.norm_clip(grads, fn)[0]


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
    grads = _grads(params, fn)
    if all(g is None for g in grads):
        return None
    _cached_plan(params, grads, fn, _INF, 2.0, "propagate").clamp(grads, v)
    return None


_INF = float("inf")


class Clipper:
    """Clip the same parameters every step: ``clipper()`` is
    ``clip_grad_norm_(parameters, max_norm, norm_type, error_if_nonfinite)``.

    >>> clipper = fusedclip.torch.Clipper(model.parameters(), max_norm=1.0)
    >>> loss.backward(); norm = clipper(); opt.step(); opt.zero_grad()

    It keeps the parameters (as an optimizer does), never their gradients:
    every call reads each parameter's *current* ``.grad`` and re-plans only
    when a grad's address changed (``zero_grad(set_to_none=True)`` frees the
    grads, and the next backward may put them elsewhere).  Compare the
    array-level ``fusedclip.Clipper``, whose plan holds the arrays it was
    given: over last step's grads it measures stale memory (docs/TORCH.md).

    ``max_norm``, ``norm_type`` and ``error_if_nonfinite`` may be assigned
    between calls (validated).  ``stats`` is the last call's ``ClipStats``
    (``DeviceClipStats`` on a GPU: reading it waits); ``replans`` counts the
    plans built.  Not thread-safe.
    """

    _fn = "fusedclip.torch.Clipper"

    def __init__(self, parameters: _TensorOrTensors, max_norm: float, norm_type: float = 2.0,
                 error_if_nonfinite: bool = False, *, num_threads: int | None = None) -> None:
        self._params = _param_list(parameters, self._fn, warn_empty_generator=True)
        self._max_norm, self._norm_type = _check_norm_args(max_norm, norm_type)
        self.error_if_nonfinite = bool(error_if_nonfinite)
        self._num_threads = _policy.check_threads(num_threads)
        self._plan: _Plan | None = None
        self.stats = None
        self.replans = 0

    @property
    def max_norm(self) -> float:
        return self._max_norm

    @max_norm.setter
    def max_norm(self, value: float) -> None:
        self._max_norm = _check_norm_args(value, self._norm_type)[0]

    @property
    def norm_type(self) -> float:
        return self._norm_type

    @norm_type.setter
    def norm_type(self, value: float) -> None:
        self._norm_type = _check_norm_args(self._max_norm, value)[1]

    def __len__(self) -> int:
        return len(self._params)

    def __repr__(self) -> str:
        return (f"fusedclip.torch.Clipper({len(self._params)} parameters, max_norm={self._max_norm}, "
                f"norm_type={self._norm_type}, error_if_nonfinite={self.error_if_nonfinite})")

    def __call__(self) -> torch.Tensor:
        grads = _grads(self._params, self._fn)
        if all(g is None for g in grads):
            self.stats = None
            return torch.tensor(0.0)
        policy = "error" if self.error_if_nonfinite else "propagate"
        ptrs = _pointers(grads, self._fn)
        plan = self._plan
        if plan is None or plan.ptrs != ptrs or not plan.cached:
            plan = _Plan(grads, ptrs, self._fn, self._max_norm, self._norm_type, policy,
                         self._num_threads)
            self.replans += 1
            self._plan = plan if plan.cached else None
        else:
            plan.configure(self._max_norm, self._norm_type, policy)
        norm, self.stats = plan.norm_clip(grads, self._fn)
        return norm
