"""The engine interface: one contract for the CPU and the CUDA engines.

A caller's list may hold CPU buffers (numpy, DLPack, torch CPU tensors...)
and CUDA buffers (torch, CuPy, numba...).  ``plan_buffers`` validates the
whole list -- every check, on every buffer, before anything is written --
and splits it **once** into engine segments: a ``Buffers``.  Each engine
implements the same contract (``Engine`` below):

============================  =================================================
``map``                       its ``CallerMap``: rows <-> caller indices
``reduce(kind, p, nt)``       the norm of its rows: a ``Reduction`` whose
                              ``norm``, ``flags``, ``scale_of(v)`` and
                              ``callers()`` are read lazily (CUDA: no host
                              wait until one is read)
``row_reduce(kind, p, nt,     each row's norm, flags and (given ``max_norm``)
max_norm)``                   clip scale: a ``RowReduction`` that ``fill``\\ s
                              caller-indexed arrays
``apply(action, scale, nt)``  scale or zero every row (``_policy.A_*``)
``apply_rows(actions,         per-caller decisions applied to its rows
scales, nt)``
``clamp(v, nt)``              element-wise clip
``write(rows, values)``       host values (already in each row's dtype)
``release()``                 drop the caller's objects (a cached plan)
``shapes()``, ``dtypes()``    per row (the random step draws in them)
============================  =================================================

``Buffers`` runs each step over its engines and combines their reductions
(one engine: its own; several: ``_policy.combine_norms``, the one local
combiner, and ``_reduce.combine`` for the scale where a finite total
overflows).  So clipping, the family, thresholds, history, distributed
reduction and the torch drop-in each have one path over a list of engines.
A list whose every non-empty buffer is on a CUDA device is ``device_only``,
decided here at plan time: callers then let the device decide
(``CudaEngine.clip``, ``row_clip``) with no host wait.

How to add an engine: a class with the members above, built in
``plan_buffers`` from the caller indices it takes.
"""
from __future__ import annotations

import weakref
from typing import Any, Protocol, Sequence

import numpy as np

from . import _policy, _reduce
from ._buffers import Plan, as_list, check_immutable, cpu_cached, make_plan
from ._cache import LRU
from ._policy import A_SCALE, A_ZERO
from ._reduce import HostReduction  # noqa: F401  (a Reduction on the host; re-exported)
from ._rows import CallerMap
from .kernels import cpu


# ---------------------------------------------------------------- the contract
class Reduction(Protocol):
    """One reduction's result, read lazily."""

    @property
    def norm(self) -> float: ...

    @property
    def flags(self) -> int: ...

    def scale_of(self, v: float) -> float:
        """``v / norm``, right where finite data have a norm beyond float64."""
        ...

    def callers(self) -> tuple[int, ...]:
        """The caller indices of the buffers holding inf/NaN, sorted."""
        ...


class RowReduction(Protocol):
    def fill(self, out: Sequence[np.ndarray]) -> None:
        """Write this engine's per-row (norms, flags[, scales]) into caller-indexed arrays."""
        ...


class Engine(Protocol):
    map: CallerMap
    device: bool

    def reduce(self, kind: int, p: float, nt: int | None) -> Reduction: ...

    def row_reduce(self, kind: int, p: float, nt: int | None,
                   max_norm: float | None = None) -> RowReduction: ...

    def apply(self, action: int, scale: float, nt: int | None, refresh: bool = True) -> None: ...

    def apply_rows(self, actions: np.ndarray, scales: np.ndarray, nt: int | None) -> None: ...

    def clamp(self, v: float, nt: int | None) -> None: ...

    def write(self, rows: list[int], values: list[np.ndarray]) -> None: ...

    def release(self) -> bool: ...

    def shapes(self) -> list[tuple[int, ...]]: ...

    def dtypes(self) -> list[np.dtype]: ...


# ---------------------------------------------------------------- CPU
class _CpuReduction:
    __slots__ = ("norm", "flags", "_e", "_kind", "_p")

    def __init__(self, e: "CpuEngine", norm: float, flags: int, kind: int, p: float) -> None:
        self.norm, self.flags, self._e, self._kind, self._p = norm, flags, e, kind, p

    def scale_of(self, v: float) -> float:
        return self._e.plan.table.clip_scale(self._kind, self._p, v)

    def callers(self) -> tuple[int, ...]:
        t = self._e.plan.table
        return self._e.map.callers(t.flagged_rows())


class _Filled:
    """Per-caller arrays computed already (the CPU's row results)."""

    __slots__ = ("res",)

    def __init__(self, res: tuple) -> None:
        self.res = res

    def fill(self, out: Sequence[np.ndarray]) -> None:
        for o, r in zip(out, self.res):
            o[...] = r


class CpuEngine:
    """The CPU engine: a validated ``Plan`` (``kernels.cpu.Table`` over unique
    memory, staged copies of strided views, zero-stride cores)."""

    __slots__ = ("plan", "map")
    device = False

    def __init__(self, plan: Plan) -> None:
        self.plan, self.map = plan, plan.map

    def reduce(self, kind: int, p: float, nt: int | None) -> _CpuReduction:
        plan = self.plan
        plan.refresh()
        norm, flags = plan.norm(kind, p, nt)
        return _CpuReduction(self, norm, flags, kind, p)

    def row_reduce(self, kind: int, p: float, nt: int | None,
                   max_norm: float | None = None) -> _Filled:
        self.plan.refresh()
        return _Filled(self.plan.buffer_norms(kind, p, nt, max_norm))

    def apply(self, action: int, scale: float, nt: int | None, refresh: bool = True) -> None:
        plan = self.plan
        if refresh:
            plan.refresh()
        if action == A_SCALE:
            plan.table.scale(scale, nt)
        elif action == A_ZERO:
            plan.table.zero(nt)
        else:
            return
        plan.write_back()

    def apply_rows(self, actions: np.ndarray, scales: np.ndarray, nt: int | None) -> None:
        """Per-caller actions on this plan's rows; only written rows' staged
        copies are copied back."""
        plan = self.plan
        ra, rs = self.map.gather(actions), self.map.gather(scales)
        if not ra.any():
            return
        plan.table.scale_rows(ra, rs, nt)
        if plan.staged:
            written = {id(plan.arrays[r]) for r in np.flatnonzero(ra).tolist()}
            plan.write_back(only=written)

    def clamp(self, v: float, nt: int | None) -> None:
        plan = self.plan
        plan.refresh()
        plan.table.clamp(v, nt)
        plan.write_back()

    def write(self, rows: list[int], values: list[np.ndarray]) -> None:
        for r, z in zip(rows, values):
            self.plan.arrays[r][...] = z

    def release(self) -> bool:
        return self.plan.release()

    def shapes(self) -> list[tuple[int, ...]]:
        return [a.shape for a in self.plan.arrays]

    def dtypes(self) -> list[np.dtype]:
        return [a.dtype for a in self.plan.arrays]


# ---------------------------------------------------------------- CUDA
class CudaReduction:
    """A CUDA reduction's state vector, downloaded (one wait) when first read."""

    __slots__ = ("gpu", "call", "_st", "_kind", "_p")

    def __init__(self, gpu: Any, call: int, kind: int, p: float) -> None:
        self.gpu, self.call, self._kind, self._p = gpu, call, kind, p
        self._st: np.ndarray | None = None

    def state(self) -> np.ndarray:
        if self._st is None:
            self._st = self.gpu.state_of(self.call)
        return self._st

    @property
    def norm(self) -> float:
        from .kernels import cuda as ck

        return float(self.state()[ck.S_NORM])

    @property
    def flags(self) -> int:
        from .kernels import cuda as ck

        return int(self.state()[ck.S_FLAGS])

    def scale_of(self, v: float) -> float:
        from .kernels import cuda as ck

        st = self.state()
        big, t = float(st[ck.S_BIG]), float(st[ck.S_T])
        return (v / big) / _reduce.root(t, _reduce.pw_of(self._kind, self._p))

    def callers(self) -> tuple[int, ...]:
        return self.gpu.flagged_callers(self.call)

    def copy_norm(self, dst: int) -> None:
        """Copy the norm (one float64) to device address ``dst``: no host wait."""
        self.gpu.copy_norm(self.call, dst)


class CudaRows:
    """A CUDA row reduction: per-row (norms, flags, scales), downloaded when read."""

    __slots__ = ("gpu", "call", "_rows")

    def __init__(self, gpu: Any, call: int) -> None:
        self.gpu, self.call = gpu, call
        self._rows: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._rows is None:
            self._rows = self.gpu.row_result(self.call)
        return self._rows

    def fill(self, out: Sequence[np.ndarray]) -> None:
        for o, r in zip(out, self.rows()):
            self.gpu.map.scatter(o, r)


class CudaEngine:
    """The CUDA engine: a ``_gpu.GpuPlan`` (one device chunk table, a state
    ring, captured graphs).  Besides the contract it decides on the device
    (``clip``, ``row_clip``), for device-only lists."""

    __slots__ = ("gpu", "map")
    device = True

    def __init__(self, gpu: Any) -> None:
        self.gpu, self.map = gpu, gpu.map

    def reduce(self, kind: int, p: float, nt: int | None = None) -> CudaReduction:
        return CudaReduction(self.gpu, self.gpu.reduce(kind, p), kind, p)

    def clip(self, kind: int, p: float, max_norm: float, policy: str, threshold: Any = None,
             eps: float = 0.0) -> int:
        return self.gpu.clip(kind, p, max_norm, policy, threshold=threshold, eps=eps)

    def row_reduce(self, kind: int, p: float, nt: int | None = None,
                   max_norm: float | None = None) -> CudaRows:
        return CudaRows(self.gpu, self.gpu.row_norms(kind, p, max_norm=max_norm))

    def row_clip(self, kind: int, p: float, max_norm: float, policy: str) -> CudaRows:
        return CudaRows(self.gpu, self.gpu.row_clip(kind, p, max_norm, policy))

    def apply(self, action: int, scale: float, nt: int | None = None, refresh: bool = True) -> None:
        self.gpu.apply(action, scale)

    def apply_rows(self, actions: np.ndarray, scales: np.ndarray, nt: int | None = None) -> None:
        self.gpu.row_apply(self.map.gather(actions), self.map.gather(scales))

    def clamp(self, v: float, nt: int | None = None) -> None:
        self.gpu.clamp(v)

    def write(self, rows: list[int], values: list[np.ndarray]) -> None:
        self.gpu.write_rows(rows, values)

    def release(self) -> bool:
        self.gpu.release()
        return True

    def shapes(self) -> list[tuple[int, ...]]:
        return self.gpu.shapes()

    def dtypes(self) -> list[np.dtype]:
        return self.gpu.dtypes()


# ---------------------------------------------------------------- the split list
class _Combined:
    """Several engines' reductions as one (a mixed list): one host wait for
    each CUDA part's numbers, when the norm is read."""

    __slots__ = ("parts", "_kind", "_p", "_norm", "_flags")

    def __init__(self, parts: list, kind: int, p: float) -> None:
        self.parts, self._kind, self._p = parts, kind, p
        self._norm: float | None = None
        self._flags = 0

    def _read(self) -> float:
        flags = 0
        for r in self.parts:
            flags |= r.flags
        self._flags = flags
        self._norm = n = _policy.combine_norms([(r.norm, 1.0) for r in self.parts], self._kind, self._p, flags)
        return n

    @property
    def norm(self) -> float:
        return self._read() if self._norm is None else self._norm

    @property
    def flags(self) -> int:
        if self._norm is None:
            self._read()
        return self._flags

    def scale_of(self, v: float) -> float:
        if self.norm < float("inf"):
            return v / self.norm
        parts = [_reduce.Part(r.norm, r.flags, r.scale_of, False) for r in self.parts]
        return _reduce.combine(parts, self._kind, self._p, _reduce.LOCAL).scale_of(v)

    def callers(self) -> tuple[int, ...]:
        out: set[int] = set()
        for r in self.parts:
            if r.flags:
                out.update(r.callers())
        return tuple(sorted(out))


class Buffers:
    """The caller's list, validated and split into engine segments once.

    ``cpu``: the CPU engine (always planned: its rows keep the caller's
    indices; CUDA slots are empty there); ``cuda``: the CUDA engine or None;
    ``engines``: those with work; ``device_only``: every non-empty buffer is
    on a CUDA device (decided here, not per call)."""

    __slots__ = ("cpu", "cuda", "engines", "n_inputs", "device_only")

    def __init__(self, plan: Plan, gpu: Any = None) -> None:
        self.cpu = CpuEngine(plan)
        self.cuda = None if gpu is None else CudaEngine(gpu)
        self.n_inputs = plan.n_inputs
        cpu_work = plan.table.nchunks > 0 or bool(plan.extra)
        self.device_only = gpu is not None and not cpu_work
        es: list = [self.cpu] if cpu_work or gpu is None else []
        self.engines = es + ([self.cuda] if self.cuda is not None else [])

    @property
    def device(self) -> CudaEngine:
        """The CUDA engine of a ``device_only`` list (the device decides)."""
        if self.cuda is None:
            raise RuntimeError("a list with no CUDA buffer has no device engine")
        return self.cuda

    def check(self) -> None:
        """RuntimeError where a kept plan's memory moved (``Plan.check``)."""
        self.cpu.plan.check()

    def reduce(self, kind: int, p: float, nt: int | None) -> Any:
        es = self.engines
        if len(es) == 1:
            return es[0].reduce(kind, p, nt)
        return _Combined([e.reduce(kind, p, nt) for e in es], kind, p)

    def row_reduce(self, kind: int, p: float, nt: int | None, max_norm: float | None = None) -> tuple[np.ndarray, ...]:
        """Per-caller (norms, flags[, scales]): every engine's rows, one array each."""
        if self.cuda is None:
            self.cpu.plan.refresh()
            return self.cpu.plan.buffer_norms(kind, p, nt, max_norm)
        n = self.n_inputs
        out = (np.zeros(n), np.zeros(n, np.int32)) + ((np.ones(n),) if max_norm is not None else ())
        for r in [e.row_reduce(kind, p, nt, max_norm) for e in self.engines]:
            r.fill(out)
        return out

    def apply(self, action: int, scale: float, nt: int | None, refresh: bool = True) -> None:
        for e in self.engines:
            e.apply(action, scale, nt, refresh)

    def apply_rows(self, actions: np.ndarray, scales: np.ndarray, nt: int | None) -> None:
        for e in self.engines:
            e.apply_rows(actions, scales, nt)

    def clamp(self, v: float, nt: int | None) -> None:
        for e in self.engines:
            e.clamp(v, nt)

    def release(self) -> bool:
        """Drop the references to the caller's objects; False where the CPU
        plan needs them (staged views)."""
        kept = self.cpu.release()
        if self.cuda is not None:
            self.cuda.release()
        return kept

    # ---- rows of every engine, in engine order (the random step)
    def shapes(self) -> list[tuple[int, ...]]:
        return [s for e in self.engines for s in e.shapes()]

    def dtypes(self) -> list[np.dtype]:
        return [d for e in self.engines for d in e.dtypes()]

    def row_callers(self) -> list[int]:
        return [c for e in self.engines for c in e.map.rows.tolist()]

    def locate(self, caller: int) -> tuple[int, int] | None:
        """(engine index, row) holding this caller's buffer, or None (empty)."""
        for k, e in enumerate(self.engines):
            r = e.map.row_of(caller)
            if r is not None:
                return k, r
        return None

    def write(self, steps: list[np.ndarray]) -> None:
        """One host value per row of every engine, in engine order."""
        at = 0
        for e in self.engines:
            n = len(e.map)
            e.write(list(range(n)), steps[at:at + n])
            at += n


# ---------------------------------------------------------------- planning
#: The function API's plans for GPU-only lists: most users call
#: clip_grad_norm_(same arrays) every step.  Keyed by the objects' ids,
#: checked through weak references, and their layout record
#: (_gpu.layout_key: for CUDA-array-interface objects -- numba, CuPy, others
#: -- dtype, shape, strides, address and read-only flag, so that a changed
#: layout at the same object is planned and checked again); no entry keeps
#: an array alive.  A hit builds nothing and does not wait for the device.
#: Torch tensors are recorded by data pointer only: an in-place change of a
#: tensor's metadata that keeps its pointer (resize_, as_strided_) is not
#: seen; fusedclip.torch keys on the layout.
_plan_cache = LRU()

_NO_BUFFER = np.zeros(0, np.float32)  # stands in for a GPU buffer in the CPU plan


def plan_buffers(buffers: Any, *, writable: bool, fn: str, cache: bool | str = False,
                 stream: Any = None) -> Buffers:
    """Validate every buffer, CPU and GPU, and split the list into engines.

    Raises before anything is written or launched.  The CPU plan is built over
    the caller's list with GPU buffers replaced by empty arrays, so its rows
    keep the caller's indices.  ``cache``: reuse the plan of an earlier call
    over exactly the same memory: numpy lists (``_buffers.cpu_cached``), and
    GPU-only lists (``_plan_cache``: torch tensors, CUDA-array-interface
    objects; such a plan holds no reference to the caller's arrays).
    ``cache="cpu"`` (a Clipper): numpy lists only, and the plan records the
    arrays' owners, so that it can be kept.
    """
    if stream is not None:  # validated first; an int handle from here on
        from ._launch import stream_handle

        stream = stream_handle(stream)
    objs = as_list(buffers, fn)
    if cache and objs and type(objs[0]) is np.ndarray:
        plan = cpu_cached(objs, writable, fn, hold=cache == "cpu")
        if plan is not None:
            if cache == "cpu":  # a Clipper keeps the plan: it checks for resized arrays
                plan.hold()     # (a hit has recorded the owners already)
            return Buffers(plan)
    if cache is True and objs and type(objs[0]) is not np.ndarray:
        from ._gpu import layout_key

        ptrs = layout_key(objs)
        if ptrs is not None:
            key = (writable, stream, tuple(map(id, objs)))
            hit = _plan_cache.get(key)
            if hit is not None:
                refs, old_ptrs, planned = hit
                # the same objects (alive: weak references) over the same memory
                if old_ptrs == ptrs and all(r() is o for r, o in zip(refs, objs)):
                    _plan_cache.lookup(key)
                    return planned
            planned = _plan(objs, writable, fn, keep_refs=False, stream=stream)
            try:
                refs = [weakref.ref(o) for o in objs]
            except TypeError:  # objects without weak references are not cached
                return planned
            _plan_cache.store(key, (refs, ptrs, planned))
            return planned
    return _plan(objs, writable, fn, keep_refs=True, stream=stream)


def _plan(objs: list, writable: bool, fn: str, keep_refs: bool, stream: Any = None) -> Buffers:
    d, first = cpu.describe(objs)
    gpu_idx: list[int] = []
    if first[cpu.S_NOT_ARRAY] >= 0:
        if writable:
            check_immutable(objs, d, fn)
        from ._gpu import is_gpu

        gpu_idx = [i for i in np.flatnonzero(d[cpu.F_CODE] == cpu.CODE_NOT_ARRAY).tolist()
                   if is_gpu(objs[i])]
    if not gpu_idx:
        return Buffers(make_plan(objs, d, first, writable, fn))
    from ._gpu import make_gpu_plan

    cpu_objs = list(objs)
    for i in gpu_idx:
        cpu_objs[i] = _NO_BUFFER
    d, first = cpu.describe(cpu_objs)
    plan = make_plan(cpu_objs, d, first, writable, fn)  # CPU checks first, by index
    return Buffers(plan, make_gpu_plan(objs, gpu_idx, writable, fn, stream=stream, keep_refs=keep_refs))
