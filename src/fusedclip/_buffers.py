"""Turn the caller's buffers into a kernel chunk table, checking everything first.

``make_plan`` is the CPU engine's door between user objects and the kernels
(``_engine.plan_buffers`` calls it for every list, with CUDA slots emptied).  It
raises before anything is written, and it does no per-buffer Python work for
the common case (contiguous, aligned, native, non-overlapping numpy arrays):
``kernels.cpu.describe`` reads every buffer's attributes in one C loop, the
checks below are vectorised, and only the rare rows (foreign objects, strided
views, suspected overlap) get Python attention.
"""
from __future__ import annotations

import sys
import warnings
from typing import Any

import numpy as np

from . import _launch, _policy
from ._cache import PLAN_CACHE_SIZE, LRU  # noqa: F401  (PLAN_CACHE_SIZE: the bound, re-exported)
from ._rows import CallerMap
from ._overlap import overlap_clusters, partial_overlap
from .kernels import cpu, dtypes

_F = cpu  # field and flag constants live with describe()


class Plan:
    """Validated buffers as one chunk table over unique, contiguous memory.

    Row ``r`` of the table is the caller's buffer ``rows[r]``; further caller
    indices that name exactly the same memory are in ``dups[r]``.  Buffers that
    the kernels cannot address directly (strided or misaligned views) are
    *staged*: the table points at a contiguous copy, ``refresh`` fills it from
    the caller's view and ``write_back`` copies results back.
    """

    __slots__ = ("table", "arrays", "rows", "dups", "map", "staged", "n_inputs", "extra",
                 "_owners", "_snap", "_foreign")

    def __init__(self, table, arrays, rows, dups, staged, n_inputs, extra=(), foreign=()):
        self.table = table          # kernels.cpu.Table
        self.arrays = arrays        # the caller's array of each row (kept alive)
        self.rows = rows            # row -> caller index (np.int64 array)
        self.dups = dups            # row -> [further caller indices]
        self.map = CallerMap(rows, dups)
        self.staged = staged        # [(caller's view, contiguous copy)]
        self.n_inputs = n_inputs
        self.extra = list(extra)    # [(Table, k, caller)]: read-only zero-stride views, see norm()
        # the array owning each row's memory, with its data pointer and size now
        self._owners, self._snap = cpu.owners(arrays)
        # [(caller index, foreign object, where its memory was)]: objects read
        # through DLPack or __array_interface__, whose owner numpy cannot see
        self._foreign = list(foreign)

    def release(self) -> bool:
        """Drop the references to the caller's arrays, keeping the table's raw
        addresses, so that the plan does not keep the memory alive (the torch
        drop-in's cache: it re-checks the addresses on every use).  False,
        and nothing dropped, where the plan needs its arrays (staged views)."""
        if self.staged or self.extra:
            return False
        self.arrays, self._owners, self._snap, self._foreign = None, None, None, []
        return True

    def hold(self) -> None:
        """Record the owners of the arrays' memory (a bound plan has none),
        so that ``check`` finds a resized array: a plan kept across calls."""
        if self._owners is None and self.arrays is not None:
            self._owners, self._snap = cpu.owners(self.arrays)

    def bound(self, arrays: list, owners: list | None = None, snap=None) -> "Plan":
        """A copy of this (released) plan over ``arrays``, one per row (a
        list the copy may keep: ``cpu.bind``'s, of the same memory as when it
        was planned): the copy holds the caller's arrays; the table is
        shared, the partials are its own.  ``owners`` and ``snap``: what
        ``hold`` would record for ``arrays`` (bind reads them in its pass)."""
        p = object.__new__(Plan)
        for k in Plan.__slots__:
            setattr(p, k, getattr(self, k))
        p.table = self.table.fresh()  # partials of its own: calls may run concurrently
        p.arrays, p._owners, p._snap = arrays, owners, snap
        return p

    def check(self) -> None:
        """RuntimeError if an array's memory moved since planning (``a.resize``,
        a torch tensor's ``resize_`` or ``set_``): the table would read and
        write freed memory.  numpy owners: one C loop, no Python work per
        buffer; foreign owners (DLPack, ``__array_interface__``): each asked
        where its memory is now (``where``).  Buffer-protocol exporters need
        no check: the export locks them (a bytearray or array.array cannot
        be resized while viewed).  A released plan: its user checks the
        addresses."""
        if self._owners is None:
            return
        r = cpu.moved(self._owners, self._snap)
        if r >= 0:
            raise _moved(int(self.rows[r]), "ndarray.resize?")
        for i, obj, was in self._foreign:
            if where(obj) != was:
                raise _moved(i, "a tensor's resize_ or set_, or its storage resized?"
                             if _torch_module(obj) else
                             f"the {type(obj).__name__} gave it new memory?")

    def norm(self, kind: int, p: float, nthreads=None) -> tuple[float, int]:
        """The table's norm, combined with the ``extra`` rows: a zero-stride view
        with core norm c that holds its core k times has norm k**(1/p)*c."""
        norm, flags = self.table.norm(kind, p, nthreads)
        if not self.extra:
            return norm, flags
        parts = [(norm, 1)]
        for t, k, _ in self.extra:
            c, f = t.norm(kind, p, nthreads)
            parts.append((c, k))
            flags |= f
        return _policy.combine_norms(parts, kind, p), flags

    def buffer_norms(self, kind: int, p: float, nthreads=None, max_norm=None):
        """Each caller buffer's own norm, from one fused pass: ``(norms, flags)``
        indexed by caller (duplicates share their row's values; empty and GPU
        slots are 0), and, given ``max_norm``, each row's clip scale as
        ``Table.row_norms`` gives it, per caller too."""
        res = self.table.row_norms(kind, p, nthreads, max_norm)
        n = self.n_inputs
        if len(self.rows) == n and not self.extra:  # rows are the callers: nothing to scatter
            return res
        out = [np.zeros(n), np.zeros(n, np.int32)] + ([np.ones(n)] if max_norm is not None else [])
        for o, r in zip(out, res):
            self.map.scatter(o, r)
        for t, k, i in self.extra:  # read-only zero-stride views: the core k times
            c, f = t.norm(kind, p, nthreads)
            out[0][i] = _policy.combine_norms([(c, k)], kind, p) if not f else c
            out[1][i] = f
        return tuple(out)

    def refresh(self) -> None:
        for view, copy in self.staged:
            np.copyto(copy, view)

    def write_back(self, only=None) -> None:
        """Copy staged results back; ``only``: the ids of the views to copy."""
        for view, copy in self.staged:
            if only is None or id(view) in only:
                np.copyto(view, copy)


def as_list(buffers: Any, fn: str) -> list:
    """The caller's buffers as a list; a single array is a list of one.

    A single array is anything a list may hold as one buffer (``is_buffer``):
    an array-like object, or an object with the buffer protocol.  So a lone
    ``memoryview``, ``array.array``, ``bytearray`` or ``bytes`` is one buffer
    (read in place; a non-float one is a dtype error), never iterated as
    a list of Python numbers."""
    if isinstance(buffers, list):
        return buffers
    if isinstance(buffers, tuple):
        return list(buffers)
    if is_buffer(buffers):
        return [buffers]
    if isinstance(buffers, (str, dict)) or not hasattr(buffers, "__iter__"):
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


def is_buffer(x: Any) -> bool:
    """One buffer, alone or in a list: array-like, or the buffer protocol."""
    return _is_array_like(x) or _has_buffer(x)


def _is_array_like(x: Any) -> bool:
    return isinstance(x, np.ndarray) or any(
        hasattr(x, a)
        for a in ("__array_interface__", "__dlpack__")
    ) or _launch.is_cuda_array(x)


def _to_ndarray(obj: Any, i: int, fn: str) -> np.ndarray:
    """Zero-copy numpy view of a foreign CPU array, or TypeError."""
    if not hasattr(obj, "__array_interface__") and hasattr(obj, "__dlpack__"):
        from ._dlpack import from_dlpack  # device check, read-only flag, bfloat16

        return from_dlpack(obj, i, fn)
    try:
        if hasattr(obj, "__array_interface__"):
            return np.asarray(obj)
        return np.asarray(memoryview(obj))
    except (TypeError, ValueError, BufferError, RuntimeError) as e:
        raise TypeError(
            f"{fn}: buffer {i} ({type(obj).__name__}) is not an array fusedclip can "
            f"read in place ({e}); pass numpy arrays or objects with "
            "__array_interface__, __dlpack__ or the buffer protocol"
        ) from None


def check_immutable(objs: list, d: np.ndarray, fn: str) -> None:
    """JAX arrays are immutable, on every device: a function that writes in
    place must not clip one through a DLPack or CUDA-array-interface view."""
    for i in np.flatnonzero(d[_F.F_CODE] == _F.CODE_NOT_ARRAY).tolist():
        if type(objs[i]).__module__.split(".")[0] in ("jax", "jaxlib"):
            raise ValueError(
                f"{fn}: buffer {i} is a JAX array; JAX arrays are immutable and {fn} writes "
                "in place; read its norm with fusedclip.global_norm and scale functionally "
                "(optax.clip_by_global_norm); see docs/EMBEDDING.md; nothing was modified"
            )


def _not_array(obj: Any, i: int, fn: str) -> TypeError:
    return TypeError(
        f"{fn}: buffer {i} is a {type(obj).__name__}, not an array; clipping works "
        "in place, so pass the array itself (np.asarray of a list would clip a copy)"
    )


def _check(arrays: list, first: np.ndarray, writable: bool, fn: str, objs=None) -> None:
    """Raise for the first buffer that fails a check (describe() found them)."""
    i = int(first[_F.S_BAD_DTYPE])
    if i >= 0:
        raise TypeError(
            f"{fn}: buffer {i} has dtype {arrays[i].dtype}; fusedclip clips {dtypes.SUPPORTED} "
            "gradients (cast with .astype(np.float32)); nothing was modified"
        )
    i = int(first[_F.S_NON_NATIVE])
    if i >= 0:
        raise TypeError(
            f"{fn}: buffer {i} has non-native byte order ({arrays[i].dtype.str}); convert "
            "it with a.astype(a.dtype.newbyteorder('='))"
        )
    i = int(first[_F.S_READ_ONLY])
    if writable and i >= 0:
        hint = ""
        if objs is not None and objs[i] is not arrays[i] and hasattr(objs[i], "__dlpack__"):
            hint = ("; a DLPack export is read-only when its producer flags it so, or when "
                    "it comes through the pre-1.0 protocol, which cannot say that the memory "
                    "may be written (a producer must accept __dlpack__(max_version=(1, 0)))")
        raise ValueError(
            f"{fn}: buffer {i} is read-only and {fn} writes in place; pass a "
            f"writable array (nothing was modified){hint}"
        )


# ------------------------------------------------------------ layouts
#: Views up to this many elements get an exact element-address check when the
#: cheap stride test cannot decide (self-overlap, or "the same elements").
EXACT_LIMIT = 1 << 22


class _Layout:
    """The canonical form of a view's element set, for a non-empty array.

    ``key`` is ``(dtype code, lowest byte address, k, dims)``: size-1 dims
    dropped, negative strides flipped, the ``k`` copies that zero strides make
    counted apart, the other dims sorted by stride and merged where one
    continues the other, the element itself a dim ``(1, itemsize)`` in bytes.
    Two views with the same key address the same elements the same number of
    times.  ``nested``: each stride is at least the previous stride times its
    extent, which proves the non-zero-stride dims address distinct bytes;
    then the key is unique for its element set (different keys, different
    sets).  A view that is not nested (a sliding window, odd as_strided
    strides) may still have distinct elements: ``offsets`` settles it exactly.
    """

    __slots__ = ("key", "k", "nested", "dims", "item", "_offs")

    def __init__(self, code: int, lo: int, shape, strides, itemsize: int) -> None:
        k = 1
        dims = [(1, itemsize)]
        for s, n in sorted((abs(s), n) for n, s in zip(shape, strides) if n > 1):
            if s == 0:
                k *= n
                continue
            ps, pn = dims[-1]
            if s == ps * pn:
                dims[-1] = (ps, pn * n)
            else:
                dims.append((s, n))
        self.nested = all(dims[j][0] >= dims[j - 1][0] * dims[j - 1][1] for j in range(1, len(dims)))
        self.k, self.dims, self.item = k, tuple(dims), itemsize
        self.key = (code, lo, k, self.dims)
        self._offs: np.ndarray | None = None

    @classmethod
    def of(cls, a: np.ndarray, d: np.ndarray, i: int) -> "_Layout":
        code, lo = int(d[_F.F_CODE, i]), int(d[_F.F_LO, i])
        if d[_F.F_FLAGS, i] & _F.CONTIGUOUS:  # no need to look at the shape
            return cls(code, lo, (int(d[_F.F_SIZE, i]),), (a.itemsize,), a.itemsize)
        return cls(code, lo, a.shape, a.strides, a.itemsize)

    def offsets(self):
        """Sorted byte offsets (from the lowest address) of every element, with
        the zero-stride copies left out; None if the view is too large."""
        if self._offs is None:
            run = self.dims[0][1] // self.item  # elements merged into the first dim
            size = run
            for _, n in self.dims[1:]:
                size *= n
            if size > EXACT_LIMIT:
                return None
            off = np.arange(run, dtype=np.int64) * self.item
            for s, n in self.dims[1:]:
                off = (off[:, None] + np.arange(n, dtype=np.int64) * s).ravel()
            self._offs = np.sort(off)
        return self._offs

    def self_overlap(self) -> bool | None:
        """Do two of the view's elements share a byte?  None: too large to tell."""
        if self.k > 1:
            return True
        if self.nested:
            return False
        off = self.offsets()
        if off is None:
            return None
        return bool(off.size > 1 and np.diff(off).min() < self.item)

    def same_elements(self, other: "_Layout") -> bool | None:
        """Exactly the same elements, the same number of times?  None: too large."""
        if self.key == other.key:
            return True
        if self.key[:3] != other.key[:3] or (self.nested and other.nested):
            return False  # nested keys are unique for their element set
        a, b = self.offsets(), other.offsets()
        if a is None or b is None:
            return None
        return a.shape == b.shape and bool(np.array_equal(a, b))


def _layouts(arrays: list, d: np.ndarray, idx, cache: dict) -> list:
    out = []
    for i in idx:
        L = cache.get(i)
        if L is None:
            L = cache[i] = _Layout.of(arrays[i], d, i)
        out.append(L)
    return out


def _check_self_overlap(arrays: list, d: np.ndarray, first: np.ndarray, writable: bool,
                        fn: str, cache: dict) -> None:
    """Writers: reject a view that addresses one element more than once."""
    if not writable or first[_F.S_STAGE] < 0:
        return
    # contiguous arrays cannot overlap themselves; only strided views are examined
    idx = np.flatnonzero(((d[_F.F_FLAGS] & _F.CONTIGUOUS) == 0) & (d[_F.F_SIZE] > 0)).tolist()
    for i, L in zip(idx, _layouts(arrays, d, idx, cache)):
        over = L.self_overlap()
        if over is False:
            continue
        a = arrays[i]
        why = ("a zero stride repeats elements" if L.k > 1 else
               "its strides address some elements more than once" if over else
               f"it is too large ({a.size} elements) to prove that its strides never "
               "address an element twice, so it is rejected conservatively")
        raise ValueError(
            f"{fn}: buffer {i} is a view whose elements overlap each other (shape "
            f"{a.shape}, strides {a.strides}): {why}; {fn} writes in place and would "
            "count and scale such an element several times; pass a view whose "
            "elements are distinct (e.g. a copy); nothing was modified"
        )


def _resolve_overlaps(arrays: list, d: np.ndarray, fn: str, cache: dict) -> dict[int, int]:
    """Map duplicate caller index -> the smallest caller index with that memory.

    Two buffers are the same buffer when they address exactly the same elements
    with the same dtype (``_Layout``): the same array, a reshape, a transpose,
    a reversal, equal strided views.  Buffers that share memory otherwise
    raise ValueError.  Interleaved views (a[::2], a[1::2]) share a byte range
    but no element, and pass.

    Near-linear: the extents are swept once (C), only the clusters of
    overlapping extents are looked at, buffers with equal keys are grouped
    by a dict, and ``np.shares_memory`` runs only between different views.
    """
    order, suspects = cpu.overlap_suspects(d)
    if not suspects.size:
        return {}
    cid, busy = overlap_clusters(d[_F.F_LO], d[_F.F_HI], order)
    parent: dict[int, int] = {}

    def root(x: int) -> int:
        while x in parent:
            x = parent[x]
        return x

    def union(a: int, b: int) -> None:
        ra, rb = root(a), root(b)
        if ra != rb:  # the smaller caller index is the root
            parent[max(ra, rb)] = min(ra, rb)

    pos = np.flatnonzero(busy)
    idx = order[pos].tolist()
    clusters = cid[pos].tolist()
    layouts = _layouts(arrays, d, idx, cache)
    groups: dict = {}  # (cluster, key) -> smallest caller index
    reps: dict[int, list[int]] = {}  # cluster -> one caller index per distinct key
    for i, c, L in zip(idx, clusters, layouts):
        g = (c, L.key)
        r = groups.get(g)
        if r is None:
            groups[g] = i
            reps.setdefault(c, []).append(i)
        else:
            union(r, i)
    for members in reps.values():
        if len(members) > 1:
            _check_distinct(arrays, d, members, cache, union, fn)
    return {x: root(x) for x in parent}


def _check_distinct(arrays, d, members, cache, union, fn) -> None:
    """Pairwise checks between views with different keys whose extents overlap."""
    members = sorted(members, key=lambda i: d[_F.F_LO, i])
    for q, j in enumerate(members):
        for i in members[:q]:
            if d[_F.F_HI, i] <= d[_F.F_LO, j]:
                continue
            a, b = (i, j) if i < j else (j, i)
            try:
                shared = np.shares_memory(arrays[a], arrays[b])
            except np.exceptions.TooHardError:
                shared = True
            if not shared:
                continue
            same = cache[a].same_elements(cache[b])
            if same:
                union(a, b)
                continue
            raise partial_overlap(fn, a, b, why="" if same is False else (
                " (they are too large to compare element by element, so this is decided "
                "conservatively)"))


def _moved(i: int, why: str) -> RuntimeError:
    return RuntimeError(
        f"buffer {i}'s memory was reallocated or resized after the plan was built "
        f"({why}); its plan points at memory that may be freed; build a new Clipper "
        "(nothing was read or written)"
    )


def where(obj: Any):
    """Where a foreign object's memory is now, and its layout: what a kept
    plan compares with what it recorded (``Plan.check``).  A torch tensor
    is asked directly (data pointer, storage size, shape, strides: a
    ``resize_`` that grows reallocates, ``set_`` swaps the storage, and the
    DLPack export does not stop either); any other DLPack producer is
    exported again; an ``__array_interface__`` is read again.  None for the
    buffer protocol, whose export locks the exporter."""
    torch = _torch_module(obj)
    if torch is not None:
        st = obj.untyped_storage()
        return (obj.data_ptr(), st.data_ptr(), st.nbytes(), tuple(obj.shape), obj.stride())
    try:
        if hasattr(obj, "__array_interface__"):
            ai = obj.__array_interface__
            return (ai["data"][0], tuple(ai["shape"]), ai.get("strides"), ai["typestr"])
        if hasattr(obj, "__dlpack__"):
            from ._dlpack import from_dlpack

            a = from_dlpack(obj, 0, "")
            return (a.ctypes.data, a.shape, a.strides, a.dtype.str)
    except Exception as e:  # an export that fails now: not the memory planned
        return ("gone", type(e).__name__)
    return None


def _torch_module(obj: Any):
    """torch, if obj is a torch tensor (torch is never imported here)."""
    if type(obj).__module__.partition(".")[0] != "torch":
        return None
    torch = sys.modules.get("torch")
    return torch if torch is not None and isinstance(obj, torch.Tensor) else None


#: The plans for lists of numpy arrays (the function API's, and a Clipper's
#: when it is built), found by the list's length and its first and last data
#: pointers and confirmed by describe()'s record of every array (address,
#: size, dtype, flags, extent): the same record is the same memory in the same
#: layout, so the same plan.  Only lists whose every array is contiguous and
#: aligned are kept: for those the record decides everything.  A cached plan
#: holds no array (``release``); a hit binds a copy to the caller's arrays,
#: with partials of its own (Table.fresh).  A hit costs one C pass over the
#: arrays (cpu.bind: the record compared, the references taken and, for a
#: Clipper, the owners read): ~0.15 ms for 10,000 arrays, against ~0.4 ms
#: to plan them.
_cpu_cache = LRU()


def cpu_cached(objs: list, writable: bool, fn: str, hold: bool = False):
    fl = cpu.first_last(objs)
    key = None if fl is None else (writable, len(objs)) + fl
    hit = None if key is None else _cpu_cache.get(key)
    bound = None
    if hit is not None:
        rows = hit[1].rows  # empty arrays and duplicates have no row
        bound = cpu.bind(objs, hit[0], hold, None if len(rows) == len(objs) else rows)
    if hit is not None and bound is not None:
        _cpu_cache.lookup(key)
        return hit[1].bound(*bound)
    d, first = cpu.describe(objs)
    if first[_F.S_NOT_ARRAY] >= 0:  # foreign or GPU objects: planned the general way
        return None
    if first[_F.S_STAGE] >= 0:
        # a strided view anywhere (a duplicate or an empty entry included) has
        # more layout than the record holds: plan it, and cache nothing
        return make_plan(objs, d, first, writable, fn)
    plan = make_plan(objs, d, first, writable, fn)
    if not plan.staged and not plan.extra:
        kept = plan.bound(plan.arrays)
        kept.release()
        _cpu_cache.store(key, (d, kept))
    return plan


def make_plan(objs: list, d: np.ndarray, first: np.ndarray, writable: bool, fn: str) -> Plan:
    arrays = objs
    foreign = []
    if first[_F.S_NOT_ARRAY] >= 0:
        arrays = list(objs)
        for i in np.flatnonzero(d[_F.F_CODE] == _F.CODE_NOT_ARRAY).tolist():
            o = objs[i]
            if writable and isinstance(o, np.generic):
                raise _numpy_scalar(o, i, fn)
            if not is_buffer(o):
                raise _not_array(o, i, fn)
            arrays[i] = _to_ndarray(o, i, fn)
            w = where(o)
            if w is not None:
                foreign.append((i, o, w))
        d, first = cpu.describe(arrays)
    _check(arrays, first, writable, fn, objs)
    cache: dict[int, _Layout] = {}
    strided: list[int] = []
    if first[_F.S_STAGE] >= 0:  # only views that need staging can repeat elements
        strided = np.flatnonzero(((d[_F.F_FLAGS] & _F.CONTIGUOUS) == 0)
                                 & (d[_F.F_SIZE] > 0)).tolist()
        _layouts(arrays, d, strided, cache)
        _check_self_overlap(arrays, d, first, writable, fn, cache)
    # buffers listed in increasing, disjoint address order cannot overlap
    canon = _resolve_overlaps(arrays, d, fn, cache) if first[_F.S_UNORDERED] >= 0 else {}
    # read-only views with zero strides (np.broadcast_to): measure the core once
    repeated = [i for i in strided if cache[i].k > 1 and i not in canon]

    if first[_F.S_EMPTY] < 0 and not canon and not repeated:  # the common case
        rows = np.arange(len(arrays))
        kept = list(arrays)
        ptrs, sizes, codes = d[_F.F_PTR], d[_F.F_SIZE], d[_F.F_CODE]
    else:
        keep = d[_F.F_SIZE] > 0
        if canon:
            keep[list(canon)] = False
        keep[repeated] = False
        rows = np.flatnonzero(keep)
        kept = [arrays[i] for i in rows.tolist()]
        ptrs, sizes, codes = d[_F.F_PTR, rows], d[_F.F_SIZE, rows], d[_F.F_CODE, rows]
    staged = []
    if first[_F.S_STAGE] >= 0:
        ptrs = ptrs.copy()
        direct = _F.CONTIGUOUS | _F.ALIGNED
        for r in np.flatnonzero((d[_F.F_FLAGS, rows] & direct) != direct).tolist():
            view = kept[r]
            copy = _stage(view, int(rows[r]), fn)
            staged.append((view, copy))
            ptrs[r] = copy.ctypes.data
    dups: dict[int, list[int]] = {}
    if canon:
        row_of = {c: r for r, c in enumerate(rows.tolist())}
        for dup, root in canon.items():
            if root in row_of:
                dups.setdefault(row_of[root], []).append(dup)
    extra = [_repeated_table(arrays[i], i, cache[i].k, staged, fn) for i in repeated]
    return Plan(cpu.Table(ptrs, sizes, codes), kept, rows, dups, staged, len(objs), extra,
                foreign)


def _stage(view: np.ndarray, i: int, fn: str) -> np.ndarray:
    """A C-ordered, aligned copy of a view; MemoryError naming the buffer."""
    try:
        copy = np.empty(view.shape, dtype=view.dtype)  # C order, aligned
    except (MemoryError, ValueError) as e:  # ValueError: "array is too big"
        raise MemoryError(
            f"{fn}: buffer {i} (shape {view.shape}, strides {view.strides}, "
            f"{view.dtype}) is not contiguous and needs a contiguous staging copy of "
            f"{view.size * view.itemsize} bytes, which could not be allocated ({e}); "
            "pass a contiguous array; nothing was modified"
        ) from None
    np.copyto(copy, view)
    return copy


def _repeated_table(view: np.ndarray, i: int, k: int, staged: list, fn: str):
    """(Table over the core of a zero-stride view, k): the core is the view
    with its zero-stride dims taken once; the view holds it k times."""
    core = view[tuple(0 if s == 0 and n > 1 else slice(None)
                      for n, s in zip(view.shape, view.strides)) + (Ellipsis,)]  # 0-d: an array
    code = int(cpu.describe([core])[0][_F.F_CODE, 0])
    if core.flags.aligned and (core.flags.c_contiguous or core.flags.f_contiguous):
        ptr = core.ctypes.data
    else:
        copy = _stage(core, i, fn)
        staged.append((core, copy))
        ptr = copy.ctypes.data
    return cpu.Table([ptr], [core.size], [code]), k, i


def _numpy_scalar(o: Any, i: int, fn: str) -> TypeError:
    return TypeError(
        f"{fn}: buffer {i} is a numpy scalar ({type(o).__name__}), which is immutable: "
        f"{fn} works in place and could only change a copy; pass an array instead, "
        "e.g. a 0-d array np.array(x), and read the result from it"
    )


def _has_buffer(o: Any) -> bool:
    try:
        memoryview(o).release()  # released at once: a bytearray may be resized again
        return True
    except TypeError:
        return False
