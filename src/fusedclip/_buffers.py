"""Turn the caller's buffers into a kernel chunk table, checking everything first.

``make_plan`` is the only door between user objects and the kernels.  It
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
    )


def _to_ndarray(obj: Any, i: int, fn: str) -> np.ndarray:
    """Zero-copy numpy view of a foreign CPU array, or TypeError."""
    if hasattr(obj, "__cuda_array_interface__"):
        raise TypeError(
            f"{fn}: buffer {i} is a CUDA array ({type(obj).__name__}); this build "
            "of fusedclip clips CPU buffers only"
        )
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


def _check_dtypes(arrays: list, d: np.ndarray, fn: str) -> None:
    bad = np.flatnonzero(d[_F.F_CODE] == _F.CODE_BAD_DTYPE)
    if bad.size:
        i = int(bad[0])
        dt = arrays[i].dtype
        raise TypeError(
            f"{fn}: buffer {i} has dtype {dt}; fusedclip clips float16, bfloat16, "
            "float32 and float64 gradients (cast with .astype(np.float32))"
        )
    foreign = np.flatnonzero((d[_F.F_FLAGS] & _F.NATIVE) == 0)
    if foreign.size:
        i = int(foreign[0])
        dt = arrays[i].dtype
        raise TypeError(
            f"{fn}: buffer {i} has non-native byte order ({dt.str}); convert it "
            "with a.astype(a.dtype.newbyteorder('='))"
        )


def _check_writeable(d: np.ndarray, fn: str) -> None:
    ro = np.flatnonzero((d[_F.F_FLAGS] & _F.WRITEABLE) == 0)
    if ro.size:
        i = int(ro[0])
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
    live = np.flatnonzero(d[_F.F_SIZE] > 0)
    if live.size < 2:
        return {}
    order = live[np.argsort(d[_F.F_LO, live], kind="stable")]
    lo, hi = d[_F.F_LO, order], d[_F.F_HI, order]
    reach = np.maximum.accumulate(hi)
    suspects = np.flatnonzero(reach[:-1] > lo[1:]) + 1
    canon: dict[int, int] = {}
    for pos in suspects:
        j = int(order[pos])
        for q in np.flatnonzero(hi[:pos] > lo[pos]):
            i = int(order[q])
            a, b = (i, j) if i < j else (j, i)
            if _same_memory(arrays[a], arrays[b], d, a, b):
                root = canon.get(a, a)
                if canon.get(b, b) != root:
                    canon[b] = root
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
    # canonicalise chains (c -> b -> a) to their root
    for k in list(canon):
        r = canon[k]
        while r in canon:
            r = canon[r]
        canon[k] = r
    return canon


def make_plan(buffers: Any, *, writable: bool, fn: str) -> Plan:
    """Validate ``buffers`` and build their chunk table.  Raises before any write."""
    objs = as_list(buffers, fn)
    d = cpu.describe(objs)
    arrays = objs
    foreign = np.flatnonzero(d[_F.F_CODE] == _F.CODE_NOT_ARRAY)
    if foreign.size:
        arrays = list(objs)
        for i in foreign:
            i = int(i)
            o = objs[i]
            if not _is_array_like(o) and not _has_buffer(o):
                raise _not_array(o, i, fn)
            arrays[i] = _to_ndarray(o, i, fn)
        d = cpu.describe(arrays)
    _check_dtypes(arrays, d, fn)
    if writable:
        _check_writeable(d, fn)
    canon = _resolve_overlaps(arrays, d, fn)

    keep = d[_F.F_SIZE] > 0
    dups: dict[int, list[int]] = {}
    if canon:
        keep[list(canon)] = False
    rows = np.flatnonzero(keep)
    ptrs = d[_F.F_PTR, rows].copy()
    staged = []
    direct = (_F.CONTIGUOUS | _F.ALIGNED)
    for r in np.flatnonzero((d[_F.F_FLAGS, rows] & direct) != direct):
        view = arrays[int(rows[r])]
        copy = np.empty(view.shape, dtype=view.dtype)  # C order, aligned
        np.copyto(copy, view)
        staged.append((view, copy))
        ptrs[r] = copy.ctypes.data
    if canon:
        row_of = {int(c): r for r, c in enumerate(rows)}
        for dup, root in canon.items():
            dups.setdefault(row_of[root], []).append(dup)
    table = cpu.Table(ptrs, d[_F.F_SIZE, rows], d[_F.F_CODE, rows])
    kept = list(arrays) if rows.size == len(arrays) else [arrays[i] for i in rows.tolist()]
    return Plan(table, kept, rows, dups, staged, len(objs))


def _has_buffer(o: Any) -> bool:
    try:
        memoryview(o)
        return True
    except TypeError:
        return False
