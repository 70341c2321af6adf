"""Turn the caller's buffers into a kernel chunk table, checking everything first.

``plan_buffers`` is the only door between user objects and the kernels.  It
raises before anything is written, and it does no per-buffer Python work for
the common case (contiguous, aligned, native, non-overlapping numpy arrays):
``kernels.cpu.describe`` reads every buffer's attributes in one C loop, the
checks below are vectorised, and only the rare rows (foreign objects, strided
views, suspected overlap) get Python attention.
"""
from __future__ import annotations

import warnings
from typing import Any, Iterable

import numpy as np

from .kernels import cpu

_F = cpu  # field and flag constants live with describe()


class Plan:
    """Validated buffers as one chunk table over unique, contiguous memory.

    Row ``r`` of the table is the caller's buffer ``rows[r]``; further caller
    indices that name exactly the same memory are in ``dups[r]``.  Buffers that
    the kernels cannot address directly (strided or misaligned views) are
    *staged*: the table points at a contiguous copy, ``refresh`` fills it from
    the caller's view and ``write_back`` copies results back.
    """

    __slots__ = ("table", "arrays", "rows", "dups", "staged", "n_inputs")

    def __init__(self, table, arrays, rows, dups, staged, n_inputs):
        self.table = table          # kernels.cpu.Table
        self.arrays = arrays        # the caller's array of each row (kept alive)
        self.rows = rows            # row -> caller index (np.int64 array)
        self.dups = dups            # row -> [further caller indices]
        self.staged = staged        # [(caller's view, contiguous copy)]
        self.n_inputs = n_inputs

    def refresh(self) -> None:
        for view, copy in self.staged:
            np.copyto(copy, view)

    def write_back(self) -> None:
        for view, copy in self.staged:
            np.copyto(view, copy)

    def callers(self, rows: Iterable[int]) -> tuple[int, ...]:
        """The caller indices (duplicates included) of these table rows."""
        out: list[int] = []
        for r in rows:
            out.append(int(self.rows[r]))
            out.extend(self.dups.get(int(r), ()))
        return tuple(sorted(out))


def as_list(buffers: Any, fn: str) -> list:
    """The caller's buffers as a list; a single array is a list of one."""
    if isinstance(buffers, list):
        return buffers
    if isinstance(buffers, tuple):
        return list(buffers)
    if _is_array_like(buffers):
        return [buffers]
    if isinstance(buffers, (str, bytes, dict)) or not hasattr(buffers, "__iter__"):
        raise TypeError(
            f"{fn}: expected an array or a list, tuple or generator of arrays, "
            f"got {type(buffers).__name__}"
        )
    items = list(buffers)
    if not items and iter(buffers) is buffers:
        warnings.warn(
            f"{fn}: the generator of buffers was empty; the norm is 0.0 "
            "(a generator can be consumed only once: was it used already?)",
            RuntimeWarning,
            stacklevel=3,
        )
    return items


def _is_array_like(x: Any) -> bool:
    return isinstance(x, np.ndarray) or any(
        hasattr(x, a)
        for a in ("__array_interface__", "__cuda_array_interface__", "__dlpack__")
    ) or type(x).__module__.startswith("numba.cuda.simulator")  # its device arrays


def _to_ndarray(obj: Any, i: int, fn: str) -> np.ndarray:
    """Zero-copy numpy view of a foreign CPU array, or TypeError."""
    try:
        if hasattr(obj, "__array_interface__"):
            return np.asarray(obj)
        if hasattr(obj, "__dlpack__"):
            return np.from_dlpack(obj)
        return np.asarray(memoryview(obj))
    except (TypeError, ValueError, BufferError, RuntimeError) as e:
        raise TypeError(
            f"{fn}: buffer {i} ({type(obj).__name__}) is not an array fusedclip can "
            f"read in place ({e}); pass numpy arrays or objects with "
            "__array_interface__, __dlpack__ or the buffer protocol"
        ) from None


def _not_array(obj: Any, i: int, fn: str) -> TypeError:
    return TypeError(
        f"{fn}: buffer {i} is a {type(obj).__name__}, not an array; clipping works "
        "in place, so pass the array itself (np.asarray of a list would clip a copy)"
    )


def _check(arrays: list, first: np.ndarray, writable: bool, fn: str) -> None:
    """Raise for the first buffer that fails a check (describe() found them)."""
    i = int(first[_F.S_BAD_DTYPE])
    if i >= 0:
        raise TypeError(
            f"{fn}: buffer {i} has dtype {arrays[i].dtype}; fusedclip clips float16, "
            "bfloat16, float32 and float64 gradients (cast with .astype(np.float32))"
        )
    i = int(first[_F.S_NON_NATIVE])
    if i >= 0:
        raise TypeError(
            f"{fn}: buffer {i} has non-native byte order ({arrays[i].dtype.str}); convert "
            "it with a.astype(a.dtype.newbyteorder('='))"
        )
    i = int(first[_F.S_READ_ONLY])
    if writable and i >= 0:
        raise ValueError(
            f"{fn}: buffer {i} is read-only and {fn} writes in place; pass a "
            "writable array (nothing was modified)"
        )


def _same_memory(a: np.ndarray, b: np.ndarray, d: np.ndarray, i: int, j: int) -> bool:
    """Exactly the same elements: the same array, a contiguous reshape or transpose."""
    if d[_F.F_CODE, i] != d[_F.F_CODE, j] or d[_F.F_LO, i] != d[_F.F_LO, j]:
        return False
    if d[_F.F_HI, i] != d[_F.F_HI, j]:
        return False
    both_contig = d[_F.F_FLAGS, i] & d[_F.F_FLAGS, j] & _F.CONTIGUOUS
    return bool(both_contig) or (
        a.shape == b.shape and a.strides == b.strides and d[_F.F_PTR, i] == d[_F.F_PTR, j]
    )


def _resolve_overlaps(arrays: list, d: np.ndarray, fn: str) -> dict[int, int]:
    """Map duplicate caller index -> the first caller index with that memory.

    Raises ValueError for buffers that share memory without being the same
    buffer.  Interleaved views (a[::2], a[1::2]) share a byte range but no
    element, and pass.
    """
    order, suspects = cpu.overlap_suspects(d)
    if not suspects.size:
        return {}
    lo, hi = d[_F.F_LO, order], d[_F.F_HI, order]
    parent: dict[int, int] = {}

    def root(x: int) -> int:
        while x in parent:
            x = parent[x]
        return x

    for pos in suspects:
        j = int(order[pos])
        for q in np.flatnonzero(hi[:pos] > lo[pos]):
            i = int(order[q])
            a, b = (i, j) if i < j else (j, i)
            if _same_memory(arrays[a], arrays[b], d, a, b):
                ra, rb = root(a), root(b)
                if ra != rb:  # union: the smaller caller index is the root
                    parent[max(ra, rb)] = min(ra, rb)
                continue
            try:
                shared = np.shares_memory(arrays[a], arrays[b])
            except np.exceptions.TooHardError:
                shared = True
            if shared:
                raise ValueError(
                    f"{fn}: buffers {a} and {b} partially overlap in memory; each "
                    "element must belong to one buffer (pass the same array once, "
                    "or non-overlapping views); nothing was modified"
                )
    return {x: root(x) for x in parent}


_NO_BUFFER = np.zeros(0, np.float32)  # stands in for a GPU buffer in the CPU plan


def plan_buffers(buffers: Any, *, writable: bool, fn: str):
    """Validate every buffer, CPU and GPU, and plan both sides: (Plan, GpuPlan or None).

    Raises before anything is written or launched.  The CPU plan is built over
    the caller's list with GPU buffers replaced by empty arrays, so its rows
    keep the caller's indices.
    """
    objs = as_list(buffers, fn)
    d, first = cpu.describe(objs)
    gpu_idx: list[int] = []
    if first[_F.S_NOT_ARRAY] >= 0:
        from ._gpu import is_gpu

        gpu_idx = [i for i in np.flatnonzero(d[_F.F_CODE] == _F.CODE_NOT_ARRAY).tolist()
                   if is_gpu(objs[i])]
    if not gpu_idx:
        return _make_plan(objs, d, first, writable, fn), None
    from ._gpu import make_gpu_plan

    cpu_objs = list(objs)
    for i in gpu_idx:
        cpu_objs[i] = _NO_BUFFER
    d, first = cpu.describe(cpu_objs)
    plan = _make_plan(cpu_objs, d, first, writable, fn)  # CPU checks first, by index
    return plan, make_gpu_plan(objs, gpu_idx, writable, fn)


def _make_plan(objs: list, d: np.ndarray, first: np.ndarray, writable: bool, fn: str) -> Plan:
    arrays = objs
    if first[_F.S_NOT_ARRAY] >= 0:
        arrays = list(objs)
        for i in np.flatnonzero(d[_F.F_CODE] == _F.CODE_NOT_ARRAY).tolist():
            o = objs[i]
            if not _is_array_like(o) and not _has_buffer(o):
                raise _not_array(o, i, fn)
            arrays[i] = _to_ndarray(o, i, fn)
        d, first = cpu.describe(arrays)
    _check(arrays, first, writable, fn)
    # buffers listed in increasing, disjoint address order cannot overlap
    canon = _resolve_overlaps(arrays, d, fn) if first[_F.S_UNORDERED] >= 0 else {}

    if first[_F.S_EMPTY] < 0 and not canon:  # the common case: every buffer is a row
        rows = np.arange(len(arrays))
        kept = list(arrays)
        ptrs, sizes, codes = d[_F.F_PTR], d[_F.F_SIZE], d[_F.F_CODE]
    else:
        keep = d[_F.F_SIZE] > 0
        if canon:
            keep[list(canon)] = False
        rows = np.flatnonzero(keep)
        kept = [arrays[i] for i in rows.tolist()]
        ptrs, sizes, codes = d[_F.F_PTR, rows], d[_F.F_SIZE, rows], d[_F.F_CODE, rows]
    staged = []
    if first[_F.S_STAGE] >= 0:
        ptrs = ptrs.copy()
        direct = _F.CONTIGUOUS | _F.ALIGNED
        for r in np.flatnonzero((d[_F.F_FLAGS, rows] & direct) != direct).tolist():
            view = kept[r]
            copy = np.empty(view.shape, dtype=view.dtype)  # C order, aligned
            np.copyto(copy, view)
            staged.append((view, copy))
            ptrs[r] = copy.ctypes.data
    dups: dict[int, list[int]] = {}
    if canon:
        row_of = {c: r for r, c in enumerate(rows.tolist())}
        for dup, root in canon.items():
            dups.setdefault(row_of[root], []).append(dup)
    return Plan(cpu.Table(ptrs, sizes, codes), kept, rows, dups, staged, len(objs))


def _has_buffer(o: Any) -> bool:
    try:
        memoryview(o)
        return True
    except TypeError:
        return False
