"""The rest of the clipping family: per-buffer norms, per-buffer ("local")
norm clipping and unit-wise adaptive clipping.

Each is the global norm's reduction kept per row of the chunk table
(``Table.row_norms``, and the ``rownorms`` CUDA kernel), then one per-row
write pass (``Table.scale_rows``, ``scale_rows``): at most two fused passes
whatever the number of buffers, and a row that is not clipped is never
written.

* ``clip_by_norm_`` is TensorFlow's ``tf.clip_by_norm`` applied to each
  buffer: every buffer is clipped by its own norm ("local" clipping).
* ``clip_unitwise_`` is adaptive gradient clipping (AGC), Brock, De, Smith &
  Simonyan, *High-Performance Large-Scale Image Recognition Without
  Normalization* (2021), §4: per unit (a row of a matrix, an output channel
  of a convolution kernel, a whole vector), if ||G|| / max(||W||, eps) >
  clipping, G <- G * clipping * max(||W||, eps) / ||G||.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import _policy
from ._buffers import as_list
from ._cache import LRU
from ._engine import Buffers, CudaRows, plan_buffers
from ._overlap import extent_pairs, first_shared
from ._policy import A_NONE, NonFiniteError
from .kernels import cpu, dtypes


# ----------------------------------------------------------------- per-buffer norms
def buffer_norms(buffers: Any, norm_type: float = 2.0, *, num_threads: int | None = None,
                 stream: Any = None) -> np.ndarray | DeviceNorms:
    """Each buffer's own ``norm_type`` norm, from one fused pass over all of them.

    Returns a float64 numpy array, one norm per buffer in the caller's order
    (NaN or inf where a buffer holds NaN or inf).  For a list of GPU buffers
    only, returns a ``DeviceNorms``: the norms stay on the device, and nothing
    waits for the GPU until it is read (``.get()``, ``np.asarray``).  Never
    writes; accepts read-only arrays.
    """
    kind, p = _policy.norm_kind(norm_type)
    nt = _policy.check_threads(num_threads)
    b = plan_buffers(buffers, writable=False, fn="buffer_norms", cache=True, stream=stream)
    if b.device_only:
        return DeviceNorms(b.device.row_reduce(kind, p), b.n_inputs)
    return b.row_reduce(kind, p, nt)[0]


class DeviceNorms:
    """Per-buffer norms still on the GPU; ``get()`` copies them (one wait).

    A plan keeps its last RING calls' results on the device; reading an older
    one raises RuntimeError."""

    def __init__(self, rows: CudaRows, n_inputs: int) -> None:
        self._rows, self._n = rows, n_inputs
        self._host: np.ndarray | None = None

    def rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self._rows.rows()

    def get(self) -> np.ndarray:
        if self._host is None:
            out = np.zeros(self._n)
            self._rows.fill([out])
            self._host = out
        return self._host

    def __array__(self, dtype=None, copy=None):
        a = self.get()
        return a if dtype is None else a.astype(dtype)

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        return f"DeviceNorms({self.get()!r})"


# ----------------------------------------------------------------- local clipping
def clip_by_norm_(buffers: Any, max_norm: float, norm_type: float = 2.0, *,
                  nonfinite: str = "error", num_threads: int | None = None, rng: Any = None,
                  stream: Any = None) -> np.ndarray | DeviceNorms:
    """Clip each buffer by its own ``norm_type`` norm, in place ("local" clipping).

    A buffer whose norm exceeds ``max_norm`` is multiplied by
    ``max_norm / norm``; the others are not written.  Returns the pre-clip
    norms, one per buffer (a ``DeviceNorms`` for GPU-only lists).  A buffer
    holding inf/NaN follows ``nonfinite``, buffer by buffer: "error" raises
    ``NonFiniteError`` naming them before anything is written; "skip" leaves
    them; "zero" zeroes them; "propagate" multiplies them by max_norm / norm;
    "random" replaces each with a random direction of norm ``max_norm``.
    """
    fn = "clip_by_norm_"
    v = _policy.check_max_norm(max_norm)
    kind, p = _policy.norm_kind(norm_type)
    policy = _policy.check_policy(nonfinite)
    nt = _policy.check_threads(num_threads)
    if policy == "random":
        if v == math.inf:
            raise ValueError("nonfinite='random' needs a finite max_norm (the step's length)")
        rng = _policy.make_rng(rng)
    b = plan_buffers(buffers, writable=True, fn=fn, cache=True, stream=stream)
    if b.device_only:  # the device decides
        cu = b.device
        res = DeviceNorms(cu.row_clip(kind, p, v, policy), b.n_inputs)
        if policy in ("error", "random"):
            gn, gf, _ = res.rows()
            if gf.any():  # the device wrote nothing for these policies' bad rows
                bad = np.flatnonzero(gf).tolist()
                if policy == "error":  # nor anything else: any flag stopped every write
                    raise NonFiniteError(float(gn[bad[0]]), cu.map.callers(bad))
                _write_steps(b, _random_steps(b, cu.map.rows[bad].tolist(), v, kind, p, rng, nt))
        return res
    norms, flags, scales = b.row_reduce(kind, p, nt, max_norm=v)
    actions, out, raise_rows, random_rows = _policy.decide_rows(norms, flags, v, policy, scales)
    if raise_rows:
        raise NonFiniteError(float(norms[raise_rows[0]]), tuple(raise_rows))
    steps = _random_steps(b, random_rows, v, kind, p, rng, nt)
    b.apply_rows(actions, out, nt)
    _write_steps(b, steps)
    return norms


def _random_steps(b: Buffers, callers: list[int], v, kind, p, rng, nt) -> list:
    """Each listed buffer's own random step of norm v (a buffer listed twice
    through a duplicate gets one), drawn and checked before anything is
    written (``random_step`` raises otherwise)."""
    out, seen = [], set()
    for c in callers:
        key = b.locate(c)
        if key is None or key in seen:
            continue
        seen.add(key)
        k, r = key
        e = b.engines[k]
        shape, dtype = e.shapes()[r], e.dtypes()[r]
        out.append((key, _policy.random_step([shape], [dtype], [c], v, kind, p, rng, nt)[0]))
    return out


def _write_steps(b: Buffers, steps) -> None:
    for k, e in enumerate(b.engines):
        mine = [(r, z) for (j, r), z in steps if j == k]
        if mine:
            e.write([r for r, _ in mine], [z for _, z in mine])


# ----------------------------------------------------------------- unit-wise (AGC)
def clip_unitwise_(params: Any, grads: Any, clipping: float = 0.01, eps: float = 1e-3, *,
                   nonfinite: str = "error", num_threads: int | None = None) -> None:
    """Adaptive gradient clipping (Brock et al., 2021), unit by unit, in place.

    ``params[i]`` and ``grads[i]`` are a weight and its gradient, of the same
    shape.  A unit is a row of a 2-D weight, an output channel (the first
    axis) of a convolution kernel, or the whole buffer for a vector or a
    scalar.  For each unit, if ||G|| / max(||W||, eps) > clipping, then
    G <- G * clipping * max(||W||, eps) / ||G|| (L2 norms).  One fused pass
    computes every unit's norms of W and G, one pass scales the clipped
    units; the params are never written, and a unit that is not clipped is
    not written either.  A grad that shares memory with a param (the param
    itself, or a view of its memory) is a ValueError naming both, raised
    before anything is written.

    A unit whose W or G holds inf/NaN follows ``nonfinite``: "error" raises
    ``NonFiniteError`` (naming the gradients' indices) before anything is
    written, "skip" leaves it, "zero" zeroes it, "propagate" scales it by
    clipping * max(||W||, eps) / ||G|| ("random" is not defined per unit).
    """
    fn = "clip_unitwise_"
    c = _policy.check_max_norm(clipping, "clipping")
    e = _policy.real("eps", eps)
    if not e >= 0.0 or e == math.inf:
        raise ValueError(f"eps must be a finite number >= 0, got {e}")
    policy = _policy.check_policy(nonfinite)
    if policy == "random":
        raise ValueError(f"{fn}: nonfinite='random' is not defined per unit; "
                         "use 'error', 'skip', 'zero' or 'propagate'")
    nt = _policy.check_threads(num_threads)
    W = as_list(params, fn)
    G = as_list(grads, fn)
    if len(W) != len(G):
        raise ValueError(f"{fn}: {len(W)} params but {len(G)} grads; pass one gradient per parameter")
    wb = plan_buffers(W, writable=False, fn=fn + " (params)")
    gb = plan_buffers(G, writable=True, fn=fn)
    for what, b in (("grads", gb), ("params", wb)):
        if b.cpu.map.dups or (b.cuda is not None and b.cuda.map.dups):
            raise ValueError(f"{fn}: two of the {what} are the same buffer; each parameter needs its "
                             "own entry (nothing was modified)")
    if wb.cuda is not None or gb.cuda is not None:
        if not (wb.device_only and gb.device_only):
            raise TypeError(f"{fn}: params and grads must all be CPU arrays or all CUDA arrays "
                            "(nothing was modified)")
        _unitwise_gpu(W, G, wb.device.gpu, gb.device.gpu, c, e, policy, fn)
        return
    wplan, gplan = wb.cpu.plan, gb.cpu.plan
    wa, ga = _caller_arrays(wplan, W), _caller_arrays(gplan, G)
    for i, (w, g) in enumerate(zip(wa, ga)):
        if w.shape != g.shape:
            raise ValueError(f"{fn}: params[{i}] has shape {w.shape} but grads[{i}] has shape "
                             f"{g.shape}; they must match (nothing was modified)")
    shared = first_shared(wa, ga)
    if shared is not None:
        raise _grad_in_param(fn, *shared)
    # units: contiguous C-ordered rows; other layouts through a C-ordered copy
    wc = [np.ascontiguousarray(w) for w in wa]
    gc = [g if g.flags.c_contiguous and g.flags.aligned else np.ascontiguousarray(g) for g in ga]
    units = np.fromiter((_units(g.shape) for g in gc), np.int64, len(gc))
    table, owner = _unit_table(wc + gc, np.concatenate([units, units]))
    nu = int(units.sum())
    norms, flags = table.row_norms(cpu.NORM_2, 2.0, nt)
    wn, gn = np.maximum(norms[:nu], e), norms[nu:]  # a NaN ||W|| stays NaN, as on the GPU
    bad = (flags[:nu] | flags[nu:]).astype(np.int32)
    with np.errstate(all="ignore"):
        thr = c * wn
        scales = thr / gn
    # finite units whose norms (or clipping * ||W||) leave float64: decide on
    # the units scaled by their largest |value| (the ratio does not change)
    first = np.cumsum(units) - units
    for u in np.flatnonzero((bad == 0) & ~(np.isfinite(thr) & np.isfinite(gn))).tolist():
        i = int(owner[u])
        w_u = wc[i].reshape(units[i], -1)[u - first[i]].astype(np.float64)
        g_u = gc[i].reshape(units[i], -1)[u - first[i]].astype(np.float64)
        m = max(float(np.max(np.abs(w_u), initial=0.0)), float(np.max(np.abs(g_u), initial=0.0)))
        wr, gr = float(np.linalg.norm(w_u / m)), float(np.linalg.norm(g_u / m))
        thr[u] = c * max(wr, e / m)
        gn[u] = gr
        scales[u] = thr[u] / gr if gr > 0.0 else 1.0
    actions, out, raise_rows, _ = _policy.decide_rows(gn, bad, thr, policy, scales)
    gi = owner[nu:] - len(wc)  # unit -> grad index
    if raise_rows:
        raise NonFiniteError(float(gn[raise_rows[0]]), tuple(sorted(set(gi[raise_rows].tolist()))))
    if actions.any():
        table.scale_rows(np.concatenate([np.zeros(nu, np.int8), actions]),
                         np.concatenate([np.ones(nu), out]), nt)
        for i in np.unique(gi[actions != A_NONE]).tolist():
            if gc[i] is not ga[i]:
                np.copyto(ga[i], gc[i])


def _grad_in_param(fn: str, i: int, j: int) -> ValueError:
    """The params are never written: a grad in a param's memory is refused."""
    return ValueError(
        f"{fn}: grads[{j}] shares memory with params[{i}] (it is that param, or a view of its "
        f"memory); {fn} writes the grads in place and never the params, so each gradient "
        "needs memory of its own (nothing was modified)")


def _units(shape) -> int:
    """Units of a buffer: its rows (the first axis) from 2-D on, else one."""
    return int(shape[0]) if len(shape) >= 2 else 1


#: unit plans for the GPU, keyed by the units' memory (LRU, small)
_unit_plans = LRU(8)


def _unitwise_gpu(W, G, wg, gg, c: float, e: float, policy: str, fn: str) -> None:
    from ._gpu import Buf, GpuPlan, c_ordered, shape_of

    wb = {b.caller: b for b in wg.rows}
    gb = {b.caller: b for b in gg.rows}
    pairs: list[tuple[Buf, Buf, int]] = []  # (weight buffer, gradient buffer, units), non-empty ones
    for i in range(len(G)):
        ws, gs = shape_of(W[i]), shape_of(G[i])
        if ws != gs:
            raise ValueError(f"{fn}: params[{i}] has shape {ws} but grads[{i}] has shape "
                             f"{gs}; they must match (nothing was modified)")
        if i not in gb:
            continue  # empty
        for obj in (W[i], G[i]):
            if not c_ordered(obj):
                raise ValueError(f"{fn}: buffer {i} (a CUDA array) is not C-contiguous; unit-wise "
                                 "clipping reads rows: pass .contiguous() / cupy.ascontiguousarray "
                                 "(nothing was modified)")
        pairs.append((wb[i], gb[i], _units(gs)))
    if not pairs:
        return
    # the plan of these units, built once per memory layout (no per-unit work on a hit)
    key = (gg.stream, tuple((w.addr, w.code, g.addr, g.code, g.n, k) for w, g, k in pairs))
    plan = _unit_plans.lookup(key)
    if plan is None:  # (a cached plan's key holds the addresses: they passed this check)
        # the params are never written: no grad may lie in a param's memory.
        # CUDA arrays here are dense, so a shared byte range is a shared element
        ext = [p[0] for p in pairs] + [p[1] for p in pairs]
        lo = np.fromiter((b.lo for b in ext), np.int64, len(ext))
        hi = np.fromiter((b.hi for b in ext), np.int64, len(ext))
        met = extent_pairs(lo, hi, np.lexsort((np.arange(len(ext)), lo)), len(pairs))
        if met:
            i, j = met[0]
            raise _grad_in_param(fn, pairs[i][0].caller, pairs[j][1].caller)
        units: list = []
        for side in (0, 1):
            for w, g, k in pairs:
                b = (w, g)[side]
                per, item = b.n // k, dtypes.ITEMSIZE[b.code]
                units.extend(Buf(len(units), None, b.addr + j * per * item, per, b.code, b.device, b.lib)
                             for j in range(k))
        plan = GpuPlan(units, {}, gg.stream)
        _unit_plans.store(key, plan)
    nu = sum(k for _, _, k in pairs)
    call = plan.unit_clip(nu, c, e, policy)
    if policy == "error":  # the device wrote nothing if anything was non-finite
        _, flags, _ = plan.row_result(call)  # the one wait
        bad = np.flatnonzero(flags[nu:])
        if bad.size:
            owner = np.repeat([g.caller for _, g, _ in pairs], [k for _, _, k in pairs])
            raise NonFiniteError(math.nan, tuple(sorted(set(owner[bad].tolist()))))


def _caller_arrays(plan, objs: list) -> list[np.ndarray]:
    """The numpy view of every caller buffer (empty ones and read-only
    zero-stride views, which have no table row, included)."""
    out: list = [None] * plan.n_inputs
    for _, _, i in plan.extra:
        out[i] = np.asarray(objs[i])
    for i, r in plan.map.pairs():
        out[i] = plan.arrays[r]
    for i, a in enumerate(out):
        if a is None:
            out[i] = np.zeros(0)
    return out


def _unit_table(arrays: list[np.ndarray], units: np.ndarray):
    """A Table whose rows are the units of C-contiguous arrays; (table, owner)
    with owner[row] the index of the array holding that unit."""
    d, _ = cpu.describe(arrays)
    ptr, size, code = d[cpu.F_PTR], d[cpu.F_SIZE], d[cpu.F_CODE]
    units = np.where(size > 0, units, 1)
    per = size // units
    owner = np.repeat(np.arange(len(arrays)), units)
    k = np.arange(owner.size) - np.repeat(np.cumsum(units) - units, units)
    item = np.array(dtypes.ITEMSIZE, np.int64)[np.maximum(code, 0)]
    ptrs = ptr[owner] + k * per[owner] * item[owner]
    return cpu.Table(ptrs, per[owner], np.maximum(code, 0)[owner]), owner
