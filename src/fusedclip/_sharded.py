"""DTensor gradients (FSDP2, tensor parallel, several meshes) for fusedclip.torch.

A ``DTensor`` gradient is a local shard (``_local_tensor``, a plain tensor
that the engines read and write in place as any other) and a spec: a
device mesh and one placement per mesh dimension.  This module reads the
specs; ``fusedclip.torch`` does the rest with its usual paths:

* every local shard goes through the fused kernels, grouped by **copies**:
  how many ranks of the group hold the same elements.  A ``Replicate``
  mesh dimension multiplies it by its size; a ``Shard`` (or
  ``_StridedShard``) one does not (the shards are disjoint).  A mesh that
  is a slice of a larger one (``mesh["dp"]`` of a (dp, tp) mesh: FSDP over
  the parameters that tensor parallelism left whole) has a sibling slice on
  every other coordinate of the dimensions sliced away; the siblings that
  take part in the call hold the same parameter, so they multiply it too;
* the global norm is ``_reduce.combine`` over those parts: **one**
  all-reduce of a small float64 vector in the common case, over a group
  that covers every mesh involved (the default group when they cover the
  world), with the inf/NaN flags and this module's refusal flags in it;
* every rank reads the same reduced bits, so the norm, the coefficient and
  the decision are the same everywhere.

A ``Partial`` gradient (unreduced terms) is redistributed to ``Replicate``
for its norm (torch's own collective on its mesh, one per such gradient;
FSDP2 and TP gradients are never Partial), and its terms are scaled.

A gradient this module refuses (a non-DTensor among DTensors, a mesh
without this process, mixed devices) leaves its rank a member of the round:
the refusal rides in the vector, so every rank raises and none waits in a
collective (docs/DISTRIBUTED.md §6).
"""
from __future__ import annotations

import math
import sys
from typing import Any, Callable, NamedTuple

#: refusal kinds, one flag each in the round's vector: UnsupportedGradients
#: (patch() hands the call to torch on every rank alike), any other error
REFUSED_UNSUPPORTED, REFUSED_ERROR = 0, 1


class Local:
    """A stand-in parameter whose ``.grad`` is a local shard: the torch
    paths read it as a parameter, so their messages keep the caller's index."""

    __slots__ = ("grad",)

    def __init__(self, grad: Any) -> None:
        self.grad = grad


NO_GRAD = Local(None)


class Sharded(NamedTuple):
    """One call's DTensor gradients, read.

    ``items``: one ``Local`` per input (``NO_GRAD`` for a None grad): the
    shards written; ``norm_items`` the shards measured (the same, except a
    Partial gradient's: its reduced copy); ``classes``: copies -> the inputs
    with that many copies; ``dtensors``: the DTensors (their version
    counters are bumped with their shards');
    ``mesh``: the one mesh, or None for several; ``group``/``device``:
    where the round runs; ``refusal``: this rank's refusal, raised after the
    round (None: accepted)."""

    items: list
    norm_items: list
    classes: dict
    dtensors: list
    mesh: Any
    group: Any
    device: Any
    refusal: BaseException | None


def dtensor_type() -> Any:
    """The DTensor class where torch.distributed.tensor is imported (no DTensor
    can exist otherwise), else None: the check costs nothing without it."""
    m = sys.modules.get("torch.distributed.tensor")
    return None if m is None else getattr(m, "DTensor", None)


def any_dtensor(items: list, grads: bool) -> bool:
    """Is any item a DTensor (where ``grads``: any parameter or its
    ``.grad``)?  The DTensor path's door: every rank of an SPMD call takes
    it alike, whatever its own grads (None on one rank, a plain tensor on
    another: refused through the round).  Free where
    torch.distributed.tensor is not imported."""
    DT = dtensor_type()
    if DT is None:
        return False
    for x in items:
        if isinstance(x, DT) or grads and isinstance(getattr(x, "grad", None), DT):
            return True
    return False


# ---------------------------------------------------------------- meshes and placements
def _ranks(mesh: Any) -> tuple[int, ...]:
    return tuple(int(x) for x in mesh.mesh.flatten().tolist())


def _shard_like(pl: Any) -> bool:
    if pl.is_shard():
        return True
    from torch.distributed.tensor import placement_types as pt

    strided = getattr(pt, "_StridedShard", None)
    return strided is not None and isinstance(pl, strided)


class _Spec(NamedTuple):
    """What a (mesh, placements) pair means here, worked out once."""

    mesh: Any
    placements: Any
    ranks: tuple[int, ...]   # the mesh's
    blocks: tuple            # its root mesh's ranks cut into the mesh and its siblings (frozensets)
    member: bool             # does it contain this process?
    copies: int              # product of the Replicate dimensions' sizes (and Partial's, reduced)
    bad: tuple               # (mesh dimension, placement, partial?) of a refused placement, or ()
    reduced: tuple           # the placements to redistribute to for the norm (Partial -> Replicate), or ()


#: _Spec by (id(mesh), id(placements)); an entry holds both objects, so
#: neither id is reused while it is kept (and each hit checks them)
_SPECS: dict = {}


def _spec(mesh: Any, placements: Any, me: int, partial: str) -> _Spec:
    e = _SPECS.get((id(mesh), id(placements), partial))
    if e is not None and e.mesh is mesh and e.placements is placements:
        return e
    ranks = _ranks(mesh)
    copies = 1
    bad: tuple = ()
    for d, pl in enumerate(placements):
        if pl.is_replicate():
            copies *= mesh.size(d)
        elif pl.is_partial():
            if partial == "refuse":
                bad = (d, pl, True)
                break
            if partial == "reduce":
                copies *= mesh.size(d)
        elif not _shard_like(pl):
            bad = (d, pl, False)
            break
    reduced: tuple = ()
    if partial == "reduce" and not bad and any(pl.is_partial() for pl in placements):
        from torch.distributed.tensor import Replicate

        reduced = tuple(Replicate() if pl.is_partial() else pl for pl in placements)
    e = _Spec(mesh, placements, ranks, _blocks(mesh, ranks), me in ranks, copies, bad, reduced)
    if len(_SPECS) > 4096:
        _SPECS.clear()
    _SPECS[(id(mesh), id(placements), partial)] = e
    return e


def _blocks(mesh: Any, ranks: tuple[int, ...]) -> tuple:
    """The ranks of ``mesh``'s root mesh cut into ``mesh`` and its sibling
    slices (one per coordinate of the root's dimensions along which
    ``mesh``'s ranks do not vary), as frozensets; just ``mesh``'s ranks
    where it is a root, or not a whole slice of it.  Read from the ranks, so
    named slices, flattened ones (``mesh["dp", "cp"]._flatten()``) and
    slices of slices are cut alike."""
    import numpy as np

    own = (frozenset(ranks),)
    get = getattr(mesh, "_get_root_mesh", None)
    root = get() if get is not None else None
    if root is None or root is mesh:
        return own
    arr = np.asarray(root.mesh.tolist())
    where = {int(r): ix for ix, r in np.ndenumerate(arr)}
    if any(r not in where for r in ranks):
        return own
    at = np.array([where[r] for r in ranks]).reshape(len(ranks), arr.ndim)
    keep = [d for d in range(arr.ndim) if len(set(at[:, d].tolist())) > 1]
    if math.prod(arr.shape[d] for d in keep) != len(ranks):
        return own
    other = [d for d in range(arr.ndim) if d not in keep]
    rows = np.transpose(arr, other + keep).reshape(-1, len(ranks))
    blocks = tuple(frozenset(int(x) for x in row) for row in rows.tolist())
    return blocks if own[0] in blocks else own


def _closure(specs: list) -> frozenset:
    """The ranks of the call: the member meshes' ranks, then every sibling
    slice that meets them, until none is added.  Every rank of an SPMD call
    gets the same set (a rank's meshes are its siblings' meshes), so two
    orthogonal slices (``mesh["dp"]`` and ``mesh["tp"]``) give the whole
    mesh, and pipeline stages (slices that meet nothing of another stage)
    stay apart."""
    group: set = set()
    for e in specs:
        group.update(e.ranks)
    grown = True
    while grown:
        grown = False
        for e in specs:
            for b in e.blocks:
                if not b <= group and not b.isdisjoint(group):
                    group |= b
                    grown = True
    return frozenset(group)


_GROUPS: dict = {}


def _group_of(ranks: tuple[int, ...], meshes: list) -> Any:
    """The process group over ``ranks``: the default group where they are
    the world, a 1-D mesh's own group where one matches, else a new group
    made once (by its members only: ``use_local_synchronization``)."""
    import torch.distributed as dist

    if ranks == tuple(range(dist.get_world_size())):
        return None
    for m in meshes:
        if m.ndim == 1 and _ranks(m) == ranks:  # (its group, made with the mesh)
            return m.get_group()
    g = _GROUPS.get(ranks)
    if g is None:
        g = _GROUPS[ranks] = dist.new_group(list(ranks), use_local_synchronization=True)
    return g


# ---------------------------------------------------------------- reading the specs
def read(tensors: list, fn: str, noun: Callable[[int], str],
         unsupported: Callable[[str, Any, str], BaseException], partial: str = "refuse",
         params: list | None = None) -> Sharded:
    """The DTensor gradients' shards, copies, mesh and group.  A refusal is
    kept in ``Sharded.refusal`` (the first one; raise it after the round,
    or at once where no round follows); a process in none of the meshes
    raises at once (it has no group to tell).

    ``partial``: what a Partial placement gets: "reduce" (a norm: the
    gradient is redistributed to Replicate on those dimensions for the
    norm, a collective on its mesh, done by every member whatever else it
    refuses, so that none waits; its shard, the terms, is what is scaled,
    a scale being linear), "keep" (a scale only), "refuse" (a clamp).
    ``params``: the parameters, whose meshes count for the group where
    their grad is None (a rank whose grads are all None still takes part)."""
    import torch
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    me = dist.get_rank()
    items: list = []
    norm_items: list = []
    dtensors: list = []
    specs: list = []  # the distinct _Specs met (grads', and None grads' parameters'), in order
    per: list = []  # (input index, _Spec) of the accepted shards
    reduced: dict = {}  # id(Partial DTensor) -> its reduced shard (the same gradient twice counts once)
    refusal: BaseException | None = None
    kind = None  # the first shard's device type
    last = None

    def refuse(e: BaseException) -> None:
        nonlocal refusal
        if refusal is None:
            refusal = e

    def spec_of(t: Any) -> _Spec:
        nonlocal last
        sp = t._spec
        e = last if last is not None and last.mesh is sp.mesh and last.placements is sp.placements \
            else _spec(sp.mesh, sp.placements, me, partial)
        if e is not last:
            last = e
            if all(x is not e for x in specs):
                specs.append(e)
        return e

    for i, g in enumerate(tensors):
        if g is None or not isinstance(g, DTensor):
            items.append(NO_GRAD)
            norm_items.append(NO_GRAD)
            if g is not None:
                refuse(TypeError(
                    f"{fn}: {noun(i)} is a {type(g).__name__}, not a DTensor, among DTensor gradients: a "
                    "plain tensor's elements would count once per rank; clip DTensor and plain "
                    "gradients in separate calls (or make them DTensors); nothing was modified"))
            elif params is not None and isinstance(params[i], DTensor):
                spec_of(params[i])  # its mesh takes part in the round
            continue
        e = spec_of(g)
        local = g._local_tensor
        dtensors.append(g)
        items.append(Local(local))
        if e.reduced and e.member:
            got = reduced.get(id(g))
            if got is None:
                try:
                    got = reduced[id(g)] = Local(g.redistribute(e.mesh, e.reduced)._local_tensor)
                except Exception as x:  # noqa: BLE001 - a refusal, told to every rank
                    norm_items.append(NO_GRAD)
                    refuse(RuntimeError(f"{fn}: {noun(i)}: reducing its Partial placement failed ({x}); "
                                        "nothing was modified"))
                    continue
            norm_items.append(got)
        else:
            norm_items.append(items[-1])
        if not e.member:
            refuse(TypeError(
                f"{fn}: {noun(i)} is a DTensor on {e.mesh}, which does not contain this process (rank "
                f"{me}): this rank holds no shard of it; pass each rank the parameters of the meshes "
                "it belongs to; nothing was modified"))
        elif e.bad:
            d, pl, is_partial = e.bad
            refuse(unsupported(noun(i), g, f"its placement on mesh dimension {d} is Partial ({pl}): its "
                                           "shards are unreduced terms of a sum, whose norm is not theirs; "
                                           "redistribute it to Replicate() or Shard() first" if is_partial else
                               f"its placement {pl} on mesh dimension {d} is not one fusedclip knows "
                               "(Shard, _StridedShard, Replicate)"))
        else:
            dev = local.device.type
            if kind is None:
                kind = dev
            if dev != kind:
                refuse(TypeError(
                    f"{fn}: {noun(i)} is on {local.device}, the first DTensor gradient on {kind}: one "
                    "call clips the gradients of one device type; clip them in separate calls; nothing "
                    "was modified"))
            else:
                per.append((i, e))

    members = [e for e in specs if e.member]  # a mesh without this process is refused, not joined
    if not members:
        raise refusal if refusal is not None else RuntimeError(
            f"{fn}: no gradient or parameter is a DTensor on a mesh of this process (rank {me}); "
            "nothing was modified")
    meshes: list = []
    for e in members:
        if all(m is not e.mesh for m in meshes) and e.mesh not in meshes:
            meshes.append(e.mesh)
    inside = _closure(members)
    classes: dict = {}
    weight: dict = {}  # id(_Spec) -> copies, siblings included
    for i, e in per:
        c = weight.get(id(e))
        if c is None:
            siblings = sum(1 for b in e.blocks if b <= inside)
            c = weight[id(e)] = float(e.copies * max(siblings, 1))
        classes.setdefault(c, []).append(i)
    if kind is None:
        kind = members[0].mesh.device_type
    device = torch.device("cuda", torch.cuda.current_device()) if kind == "cuda" else None
    return Sharded(items, norm_items, classes, dtensors, meshes[0] if len(meshes) == 1 else None,
                   _group_of(tuple(sorted(inside)), meshes), device, refusal)


def reducer(sh: Sharded) -> Any:
    """The round's all-reduce (``fusedclip.distributed.torch_reducer`` on
    the group; on a CUDA mesh the vector goes through the device: NCCL)."""
    from .distributed import torch_reducer

    return torch_reducer(sh.group, sh.device)


def refusal_error(extra: tuple[float, ...], own: BaseException | None, fn: str,
                  unsupported: type) -> BaseException:
    """What a rank raises when the round says some rank refused: its own
    refusal, else "another rank refused".  UnsupportedGradients only where
    every refusal was one (``patch()`` then hands the call to torch on
    every rank alike; a rank falling back alone would wait in torch's
    collectives for the others)."""
    hard = extra[REFUSED_ERROR] > 0
    if own is not None:
        if hard and isinstance(own, unsupported):
            return RuntimeError(f"{own} (another rank refused its gradients with an error too)")
        return own
    why = (f"{fn}: another rank of the group refused its gradients (its error says which and why); "
           "nothing was modified on any rank")
    return RuntimeError(why) if hard else unsupported(why)


def refusal_flags(own: BaseException | None, unsupported: type) -> tuple[float, float]:
    """This rank's two refusal flags for the round (REFUSED_UNSUPPORTED, REFUSED_ERROR)."""
    if own is None:
        return 0.0, 0.0
    return (1.0, 0.0) if isinstance(own, unsupported) else (0.0, 1.0)


_RESULT_SPECS: dict = {}


def result(sh: Sharded, local: Any) -> Any:
    """The norm as torch returns it: a DTensor replicated on the one mesh;
    a plain tensor where the gradients are on several meshes (torch fails).
    Made from a spec kept per (mesh, dtype): ``DTensor.from_local`` costs
    ten times as much (an autograd function), for the same DTensor."""
    if sh.mesh is None:
        return local
    from torch.distributed.tensor import DTensor, Replicate

    key = (id(sh.mesh), local.dtype)
    got = _RESULT_SPECS.get(key)
    if got is None or got[0] is not sh.mesh:
        try:
            from torch.distributed.tensor._dtensor_spec import DTensorSpec, TensorMeta

            spec = DTensorSpec(sh.mesh, (Replicate(),) * sh.mesh.ndim,
                               tensor_meta=TensorMeta(local.shape, local.stride(), local.dtype))
        except (ImportError, TypeError):  # another torch: the public way
            spec = None
        if len(_RESULT_SPECS) > 256:
            _RESULT_SPECS.clear()
        got = _RESULT_SPECS[key] = (sh.mesh, spec)
    if got[1] is not None:
        return DTensor(local, got[1], requires_grad=False)
    return DTensor.from_local(local, sh.mesh, [Replicate()] * sh.mesh.ndim, run_check=False)


def total_norm_value(x: Any) -> Any:
    """A DTensor ``total_norm`` as a plain tensor: its local value where it is
    replicated (fusedclip's norms are), else its full value (a collective
    where it is Partial: torch's get_total_norm returns that for p = inf);
    anything else unchanged."""
    DT = dtensor_type()
    if DT is not None and isinstance(x, DT):
        if all(pl.is_replicate() for pl in x.placements):
            return x._local_tensor
        return x.full_tensor()
    return x
