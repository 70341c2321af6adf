"""One rank of the DTensor (FSDP2, tensor parallel, two meshes) run.

    python dtensor_worker.py RANK WORLD INIT_FILE LAYOUT

LAYOUT ``fsdp`` (2 or 3 ranks): a small GPT-like model under FSDP2, then the
bad inputs; ``tp`` (4 ranks): FSDP + TP on a (dp=2, tp=2) mesh, then the
same model with its untouched layers on the dp slice (two meshes).

Every check is an assert here (a failure exits non-zero with its traceback).
Against: the exact norm (``math.fsum`` over the gathered full gradients,
each parameter once), torch's own result where torch has one, the count of
collectives per call, and nothing written where nothing is clipped.  Prints
``RESULT <json>``: every case's float64 norm and scale as hex, which the test
compares across ranks (the same bits everywhere).
"""
import math
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
import torch.distributed.distributed_c10d as c10d
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

import fusedclip.torch as fct
from fusedclip import NonFiniteError

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gloo  # noqa: E402

warnings.filterwarnings("ignore")
INF = math.inf
OUT: dict = {}


# ---------------------------------------------------------------- counting collectives
class Collectives:
    """Counts every collective started from Python: torch.distributed's and
    the functional ones DTensor uses (each module's attribute, patched)."""

    C10D = ("all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter_tensor", "broadcast",
            "all_to_all_single", "reduce", "gather", "scatter", "barrier", "all_gather_object",
            "broadcast_object_list", "reduce_scatter", "all_to_all")
    FUNCOL = ("all_reduce", "all_gather_tensor", "reduce_scatter_tensor", "all_to_all_single", "broadcast",
              "all_reduce_coalesced", "all_gather_into_tensor_coalesced", "reduce_scatter_tensor_coalesced",
              "all_gather_tensor_autograd", "reduce_scatter_tensor_autograd", "all_reduce_inplace",
              "all_gather_inplace", "permute_tensor")

    def __init__(self) -> None:
        self.n = 0
        for mod, names in ((dist, self.C10D), (c10d, self.C10D), (funcol, self.FUNCOL)):
            for name in names:
                f = getattr(mod, name, None)
                if f is not None and not getattr(f, "_counted", False):
                    setattr(mod, name, self._wrap(f))

    def _wrap(self, f):
        def counted(*a, **k):
            self.n += 1
            return f(*a, **k)

        counted._counted = True
        return counted

    def __call__(self, fn, *a, **k):
        """(fn's result, the collectives it started)."""
        n0 = self.n
        out = fn(*a, **k)
        return out, self.n - n0


COUNT = None


# ---------------------------------------------------------------- helpers
def shards(params):
    return [None if p.grad is None else p.grad._local_tensor.detach().clone() for p in params]


def restore(params, saved):
    for p, s in zip(params, saved):
        if s is not None:
            p.grad._local_tensor.copy_(s)


def same(a, b) -> bool:
    return all((x is None and y is None) or torch.equal(x.view(torch.uint8) if x.numel() else x,
                                                       y.view(torch.uint8) if y.numel() else y)
               for x, y in zip(a, b))


def exact_norm(params, p: float) -> float:
    """The float64 norm of the gathered full gradients, each parameter once."""
    vals = []
    for q in params:
        if q.grad is not None:
            vals.extend(abs(float(v)) for v in q.grad.full_tensor().double().flatten().tolist())
    if p == INF:
        return max(vals, default=0.0)
    if p == 2.0:
        return math.sqrt(math.fsum(v * v for v in vals))
    return math.fsum(vals)


def value(n) -> float:
    return float(n.to_local() if isinstance(n, DTensor) else n)


def check_type(n, mesh) -> None:
    if mesh is None:
        assert type(n) is torch.Tensor, type(n)
    else:
        assert isinstance(n, DTensor) and n.device_mesh == mesh, n
        assert all(pl.is_replicate() for pl in n.placements), n.placements
    assert n.dtype == torch.float32 and n.shape == ()


def close(a: list, b: list, rtol: float) -> None:
    for x, y in zip(a, b):
        if x is not None:
            tol = rtol * max(float(y.abs().max()) if y.numel() else 0.0, 1e-30)
            assert (x - y).abs().max() <= tol if x.numel() else True, (x, y)


def storage_bytes(t):
    return torch.empty(0, dtype=torch.uint8).set_(t.untyped_storage()).clone()


# ---------------------------------------------------------------- the cases
def clip_cases(name: str, params: list, mesh, torch_ok: bool) -> None:
    """p = 2, 1, inf, triggered and not, through every entry point."""
    params = [q for q in params if q.grad is not None]
    grads = [q.grad for q in params]
    base = shards(params)
    for p in (2.0, 1.0, INF):
        restore(params, base)
        exact = exact_norm(params, p)
        for trig in (True, False):
            tag = f"{name}/p={p}/{'clip' if trig else 'keep'}"
            v = exact / 4 if trig else exact * 4
            restore(params, base)
            n, k = COUNT(fct.clip_grad_norm_, params, v, p)
            assert k == 1, f"{tag}: {k} collectives"
            check_type(n, mesh)
            assert abs(value(n) - exact) <= 1e-6 * exact, (tag, value(n), exact)
            mine = shards(params)
            if trig:
                coef = v / (exact + 1e-6)
                close(mine, [None if s is None else (s.double() * coef).float() for s in base], 2e-6)
            else:
                assert same(mine, base), f"{tag}: written though not clipped"
            if torch_ok:
                restore(params, base)
                nt, kt = COUNT(torch.nn.utils.clip_grad_norm_, params, v, p)
                OUT[f"{name}/p={p}/torch collectives"] = kt
                # torch's type; its placement may be Partial (p = inf): ours is
                # always Replicate (reading it needs no collective), the same value
                assert isinstance(nt, DTensor) and type(n) is type(nt) and nt.dtype == n.dtype
                assert abs(float(nt.full_tensor()) - exact) <= 1e-5 * exact
                close(mine, shards(params), 1e-5)
            # the Clipper, and the same bits again (deterministic)
            restore(params, base)
            c = fct.Clipper(params, v, p)
            n2, k = COUNT(c)
            assert k == 1 and value(n2) == value(n) and same(shards(params), mine), tag
            OUT[tag] = [c.stats.norm.hex(), c.stats.scale.hex(), c.stats.clipped]
        # get_total_norm (reads only), then clip_grads_with_norm_ with it
        restore(params, base)
        t, k = COUNT(fct.get_total_norm, grads, p)
        assert k == 1 and same(shards(params), base)
        check_type(t, mesh)
        assert abs(value(t) - exact) <= 1e-6 * exact
        if torch_ok:
            tt = torch.nn.utils.get_total_norm(grads, p)
            assert isinstance(tt, DTensor) and abs(float(tt.full_tensor()) - exact) <= 1e-5 * exact
        v = exact / 3
        _, k = COUNT(fct.clip_grads_with_norm_, params, v, t)
        assert k == 0, f"clip_grads_with_norm_: {k} collectives"
        mine = shards(params)
        if torch_ok:
            restore(params, base)
            torch.nn.utils.clip_grads_with_norm_(params, v, t)
            close(mine, shards(params), 1e-6)
        OUT[f"{name}/p={p}/total"] = value(t).hex()
    # clip_grad_value_: each shard clamped, no collective
    restore(params, base)
    c = 0.5 * max(float(s.abs().max()) for s in base if s is not None and s.numel())
    _, k = COUNT(fct.clip_grad_value_, params, c)
    assert k == 0
    mine = shards(params)
    assert same(mine, [None if s is None else s.clamp(-c, c) for s in base])
    assert not same(mine, base)
    restore(params, base)


def nonfinite_cases(name: str, params: list, rank: int, torch_ok: bool) -> None:
    params = [q for q in params if q.grad is not None]
    base = shards(params)
    for bad in (INF, math.nan):
        restore(params, base)
        if rank == 0:  # one rank's shard: every rank must decide alike
            q = next(q for q in params if q.grad._local_tensor.numel())
            q.grad._local_tensor.view(-1)[0] = bad
        before = shards(params)
        try:
            _, k = COUNT(fct.clip_grad_norm_, params, 1.0, 2.0, True)
            raise AssertionError("no NonFiniteError")
        except NonFiniteError as e:
            assert ("parameters [" in str(e)) == (rank == 0), str(e)
        assert same(shards(params), before), "written before raising"
        n = fct.clip_grad_norm_(params, 1.0)  # propagate: scale 0 (inf) or NaN, as torch
        assert math.isnan(value(n)) if bad != bad else value(n) == INF
        mine = shards(params)
        if torch_ok:
            restore(params, before)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            for x, y in zip(mine, shards(params)):
                assert torch.equal(x.isnan(), y.isnan()) and torch.equal(x.nan_to_num(), y.nan_to_num())
        OUT[f"{name}/nonfinite/{bad}"] = repr(value(n))
    restore(params, base)


def expect_refusal(fn, params, rank: int, refusing: set, want: str, index: int,
                   noun: str = "parameter {}'s grad") -> None:
    """Every rank raises (the refusing ones their own error naming the
    parameter, the others "another rank"), nothing is written, and the
    next call works (no rank was left in a collective)."""
    mine = [q for q in params if isinstance(q.grad, DTensor) and q.grad._local_tensor.device.type == "cpu"]
    before = shards(mine)
    try:
        fn(params, 1e-3)
        raise AssertionError("no error")
    except (TypeError, RuntimeError) as e:
        msg = str(e)
        if rank in refusing:
            assert want in msg and noun.format(index) in msg, msg
            assert "nothing was modified" in msg, msg
        else:
            assert "another rank" in msg, msg
    assert same(shards(mine), before)


def bad_inputs(params: list, mesh, rank: int, world: int) -> None:
    good = [q for q in params if q.grad is not None]
    n_good = len(good)
    plain = torch.nn.Parameter(torch.ones(3))
    plain.grad = torch.ones(3)
    for fn, noun in ((fct.clip_grad_norm_, "parameter {}'s grad"),
                     (lambda ps, v: fct.get_total_norm([q.grad for q in ps]), "tensor {}")):
        # a plain tensor among DTensors, on every rank
        expect_refusal(fn, good + [plain], rank, set(range(world)), "not a DTensor", n_good, noun)
        # on one rank only: the others learn it from the round
        other = good[:1] if rank == 0 else good[1:2]
        expect_refusal(fn, good + ([plain] if rank == 0 else other), rank, {0}, "not a DTensor", n_good, noun)
    # a mesh without this process: a mesh of rank 0 only
    solo = DeviceMesh("cpu", [0])
    q = torch.nn.Parameter(DTensor.from_local(torch.ones(2), solo, [Replicate()], run_check=False,
                                              shape=torch.Size([2]), stride=(1,)))
    q.grad = DTensor.from_local(torch.ones(2), solo, [Replicate()], run_check=False, shape=torch.Size([2]),
                                stride=(1,))
    expect_refusal(fct.clip_grad_norm_, good + [q], rank, set(range(1, world)), "does not contain this "
                   "process", n_good)
    # mixed devices: a shard on the meta device among CPU shards
    m = torch.nn.Parameter(DTensor.from_local(torch.empty(2, device="meta"), mesh, [Replicate()],
                                              run_check=False))
    m.grad = DTensor.from_local(torch.empty(2, device="meta"), mesh, [Replicate()], run_check=False)
    expect_refusal(fct.clip_grad_norm_, good + [m], rank, set(range(world)), "one device type", n_good)
    # Partial (unreduced terms): reduced for the norm (torch's collective on its
    # mesh: one more), its terms scaled; as torch's own result
    pp = torch.nn.Parameter(DTensor.from_local(torch.ones(2), mesh, [Replicate()], run_check=False))
    pp.grad = DTensor.from_local(torch.full((2,), float(rank + 1)), mesh, [Partial()], run_check=False)
    mixed = good + [pp]
    base = shards(mixed)
    exact = exact_norm(mixed, 2.0)  # pp's full value: the sum of the terms, counted once
    assert abs(exact_norm([pp], 2.0) - math.sqrt(2) * world * (world + 1) / 2) < 1e-12
    n, k = COUNT(fct.clip_grad_norm_, mixed, exact / 2)
    assert k == 2 and abs(value(n) - exact) <= 1e-6 * exact, (k, value(n), exact)
    mine = shards(mixed)
    restore(mixed, base)
    nt = torch.nn.utils.clip_grad_norm_(mixed, exact / 2)
    assert abs(float(nt.full_tensor()) - exact) <= 1e-5 * exact
    close(mine, shards(mixed), 1e-5)
    restore(mixed, base)
    t, k = COUNT(fct.get_total_norm, [q.grad for q in mixed])
    assert k == 2 and abs(value(t) - exact) <= 1e-6 * exact
    OUT["partial"] = value(n).hex()
    # clip_grad_value_ refuses Partial (a clamp of the terms is not a clamp of
    # the sum); clip_grads_with_norm_ scales it (a scale is linear); no collective
    try:
        fct.clip_grad_value_(good + [pp], 1e-3)
        raise AssertionError("Partial clamped")
    except fct.UnsupportedGradients as e:
        assert "Partial" in str(e) and f"parameter {n_good}'s grad" in str(e), str(e)
    base = shards(good)
    _, k = COUNT(fct.clip_grads_with_norm_, good + [pp], 1.0, 4.0)
    assert k == 0 and torch.equal(pp.grad._local_tensor, torch.full((2,), (rank + 1) / (4.0 + 1e-6)))
    restore(good, base)
    # a plain tensor first: the same refusal (any DTensor opens the DTensor path)
    expect_refusal(fct.clip_grad_norm_, [plain] + good, rank, set(range(world)), "not a DTensor", 0)
    try:
        fct.clip_grad_value_([plain] + good, 1e-3)  # no round: this rank's refusal
        raise AssertionError("accepted")
    except TypeError as e:
        assert "parameter 0's grad is a Tensor, not a DTensor" in str(e), e
    assert same(shards(good), base) and torch.equal(plain.grad, torch.ones(3))
    # a plain parameter whose grad exists on rank 0 only (a branch only its data took),
    # first in the list: rank 0 refuses it, the others learn it from the round
    branch = torch.nn.Parameter(torch.ones(3))
    branch.grad = torch.ones(3) if rank == 0 else None
    expect_refusal(fct.clip_grad_norm_, [branch] + good, rank, {0}, "not a DTensor", 0)
    # a rank whose grads are all None still takes part (its parameters' meshes)
    saved = [q.grad for q in good]
    if rank == 0:
        for q in good:
            q.grad = None
    n, k = COUNT(fct.clip_grad_norm_, good, 1e9)
    assert k == 1
    for q, gsv in zip(good, saved):
        q.grad = gsv
    OUT["one rank without grads"] = value(n).hex()
    # and the next call is a normal one
    n, k = COUNT(fct.clip_grad_norm_, good, 1e9)
    assert k == 1 and abs(value(n) - exact_norm(good, 2.0)) <= 1e-6 * exact_norm(good, 2.0)
    OUT["bad/after"] = value(n).hex()


def untouched_outside(params: list) -> None:
    """Clipping writes nothing of the shards' storages outside the shards
    (FSDP2's padding; FSDP2 puts a group's shards in one storage)."""
    locals_ = [q.grad._local_tensor for q in params if q.grad is not None]
    stores: dict = {}
    for t in locals_:
        st = stores.setdefault(t.untyped_storage().data_ptr(), [storage_bytes(t), []])
        lo = t.storage_offset() * t.element_size()
        st[1].append((lo, lo + t.numel() * t.element_size()))
        assert t.is_contiguous()
    base = shards(params)
    fct.clip_grad_norm_(params, 1e-3)
    assert not same(shards(params), base)
    outside = 0
    for t in locals_:
        b, spans = stores[t.untyped_storage().data_ptr()]
        keep = torch.ones(b.numel(), dtype=torch.bool)
        for lo, hi in spans:
            keep[lo:hi] = False
        outside += int(keep.sum())
        assert torch.equal(storage_bytes(t)[keep], b[keep])
    print(f"OUTSIDE {outside}", flush=True)  # bytes checked (per rank: not compared)
    restore(params, base)


def dtype_cases(mesh, rank: int) -> None:
    """Each dtype's result dtype; a one-element parameter (empty shards on
    most ranks); float64 gradients whose squares overflow (the exact rounds:
    four collectives, only then) where torch's norm is inf."""
    torch.manual_seed(7)
    for dt in (torch.float64, torch.float32, torch.bfloat16, torch.float16):
        fulls = [torch.randn(7, 3).to(dt), torch.randn(1).to(dt), torch.randn(5).to(dt)]
        params = []
        for f in fulls:
            q = torch.nn.Parameter(distribute_tensor(f, mesh, [Shard(0)]))
            q.grad = distribute_tensor(f.clone(), mesh, [Shard(0)])
            params.append(q)
        exact = exact_norm(params, 2.0)
        n, k = COUNT(fct.clip_grad_norm_, params, 1e9)
        assert k == 1 and n.dtype == dt and isinstance(n, DTensor), (dt, n)
        assert abs(float(n.to_local()) - exact) <= 1e-2 * exact if dt in (torch.bfloat16, torch.float16) \
            else abs(float(n.to_local()) - exact) <= 1e-6 * exact
        OUT[f"dtype/{dt}"] = float(n.to_local()).hex()
    big = [torch.full((6,), 1e200, dtype=torch.float64), torch.full((2,), 3e200, dtype=torch.float64)]
    params = []
    for f in big:
        q = torch.nn.Parameter(distribute_tensor(f, mesh, [Shard(0)]))
        q.grad = distribute_tensor(f.clone(), mesh, [Shard(0)])
        params.append(q)
    want = 1e200 * math.sqrt(6 + 2 * 9)
    c = fct.Clipper(params, 1e199)
    n, k = COUNT(c)
    assert k == 4, k  # round A asks for the exact rounds on every rank
    assert abs(float(n.to_local()) - want) <= 1e-12 * want and c.stats.clipped, (float(n.to_local()), want)
    assert torch.nn.utils.get_total_norm([q.grad for q in params]).full_tensor() == INF
    OUT["overflow"] = [c.stats.norm.hex(), c.stats.scale.hex()]


def accelerate_case(name: str, params: list) -> None:
    """accelerate's FSDP2 clip (``Accelerator._clip_grad_norm_dtensor_aware``:
    get_total_norm per mesh, then clip_grads_with_norm_) through patch():
    every call taken by fusedclip, none handed back, torch's result."""
    try:
        from accelerate import Accelerator
    except ImportError:
        OUT[f"{name}/accelerate"] = "not installed"
        return
    clip = Accelerator._clip_grad_norm_dtensor_aware  # uses nothing of self
    params = [q for q in params if q.grad is not None]
    base = shards(params)
    v = exact_norm(params, 2.0) / 5
    want = clip(None, params, v)
    theirs = shards(params)
    restore(params, base)
    with fct.patch() as h:
        got = clip(None, params, v)
    assert h.calls["get_total_norm"] >= 1 and h.calls["clip_grads_with_norm_"] >= 1, h
    assert sum(h.fallbacks.values()) == 0, h
    assert abs(float(got) - float(want)) <= 1e-5 * float(want)
    close(shards(params), theirs, 1e-5)
    restore(params, base)
    OUT[f"{name}/accelerate"] = float(got).hex()


# ---------------------------------------------------------------- models
class Block(torch.nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.ln = torch.nn.LayerNorm(d)
        self.up = torch.nn.Linear(d, 4 * d)
        self.down = torch.nn.Linear(4 * d, d)

    def forward(self, x):
        return x + self.down(torch.relu(self.up(self.ln(x))))


class GPT(torch.nn.Module):
    def __init__(self, vocab: int = 37, d: int = 10, layers: int = 2) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, d)
        self.blocks = torch.nn.ModuleList(Block(d) for _ in range(layers))
        self.ln = torch.nn.LayerNorm(d)
        self.head = torch.nn.Linear(d, vocab)

    def forward(self, idx):
        x = self.emb(idx)
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln(x))


def backward(model, seed: int) -> None:
    torch.manual_seed(seed)
    idx = torch.randint(0, 37, (3, 5))
    model(idx).square().mean().backward()


def fsdp(rank: int, world: int) -> None:
    mesh = init_device_mesh("cpu", (world,))
    torch.manual_seed(0)
    model = GPT()
    for b in model.blocks:
        fully_shard(b, mesh=mesh)
    fully_shard(model, mesh=mesh)
    backward(model, rank)
    params = list(model.parameters())
    assert all(isinstance(q.grad, DTensor) for q in params)
    untouched_outside(params)
    clip_cases("fsdp", params, mesh, True)
    nonfinite_cases("fsdp", params, rank, True)
    dtype_cases(mesh, rank)
    accelerate_case("fsdp", params)
    bad_inputs(params, mesh, rank, world)


def tp(rank: int, world: int) -> None:
    assert world == 4
    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
    torch.manual_seed(0)
    model = GPT()
    for b in model.blocks:
        parallelize_module(b, mesh["tp"], {"up": ColwiseParallel(), "down": RowwiseParallel()})
        fully_shard(b, mesh=mesh["dp"])
    fully_shard(model, mesh=mesh["dp"])  # emb, ln, head: FSDP only, on the dp slice
    backward(model, mesh["dp"].get_local_rank())  # the same batch across tp
    params = list(model.parameters())
    tp_params = [q for name, q in model.named_parameters() if ".up." in name or ".down." in name]
    others = [q for q in params if all(q is not t for t in tp_params)]
    kinds = {type(pl).__name__ for q in tp_params for pl in q.grad.placements}
    assert {"_StridedShard", "Shard", "Replicate"} <= kinds, kinds
    assert all(q.grad.device_mesh == mesh["dp"] for q in others)
    clip_cases("fsdp+tp", tp_params, mesh, True)  # one (dp, tp) mesh: torch works
    clip_cases("fsdp-only", others, mesh["dp"], True)  # the dp slice alone: torch works
    try:  # both: torch 2.13 fails ("must have the same mesh")
        torch.nn.utils.clip_grad_norm_(params, 1e9)
        torch_two = True
    except RuntimeError as e:
        assert "same mesh" in str(e), str(e)
        torch_two = False
    OUT["two-mesh/torch fails"] = not torch_two
    clip_cases("two-mesh", params, None, torch_two)
    nonfinite_cases("two-mesh", params, rank, torch_two)
    slices(rank, mesh)
    accelerate_case("two-mesh", params)  # accelerate clips per mesh, then combines


def slices(rank: int, mesh) -> None:
    """Parameters on slices of one (2, 2) mesh: two orthogonal slices (the dp
    slice and the tp slice, no parameter on the whole mesh; each a copy on
    its siblings), and pipeline stages (slices of a (pp, dp) mesh that meet
    nothing of the other stage: each stage's norm its own; a stray
    parameter of the other stage refused, and nobody waits)."""
    torch.manual_seed(3)
    a, b = torch.randn(6, 3), torch.randn(4, 5)
    ps = []
    for f, m, pl in ((a, mesh["dp"], Shard(0)), (b, mesh["tp"], Shard(1))):
        q = torch.nn.Parameter(distribute_tensor(f, m, [pl]))
        q.grad = distribute_tensor(f.clone(), m, [pl])
        ps.append(q)
    want = math.sqrt(math.fsum([float((a.double() ** 2).sum()), float((b.double() ** 2).sum())]))
    assert abs(exact_norm(ps, 2.0) - want) <= 1e-12 * want
    n, k = COUNT(fct.clip_grad_norm_, ps, want / 2)
    assert k == 1 and type(n) is torch.Tensor and abs(float(n) - want) <= 1e-6 * want, (k, float(n), want)
    OUT["orthogonal slices"] = float(n).hex()
    # the same with the dp side a flattened slice (torchtitan's dp_shard_cp): its
    # siblings are read from its ranks' coordinates, not from dimension names
    m3 = init_device_mesh("cpu", (2, 1, 2), mesh_dim_names=("dp", "cp", "tp"))
    flat = m3["dp", "cp"]._flatten("dp_cp")
    ps = []
    for f, m, pl in ((a, flat, Shard(0)), (b, m3["tp"], Shard(1))):
        q = torch.nn.Parameter(distribute_tensor(f, m, [pl]))
        q.grad = distribute_tensor(f.clone(), m, [pl])
        ps.append(q)
    n, k = COUNT(fct.clip_grad_norm_, ps, want / 2)
    assert k == 1 and abs(float(n) - want) <= 1e-6 * want, (k, float(n), want)
    # pipeline: stage s = this rank's pp coordinate; each stage passes its own parameter
    pm = init_device_mesh("cpu", (2, 2), mesh_dim_names=("pp", "dp"))
    stage = pm.get_coordinate()[0]
    fulls = [torch.randn(5, 2) * (s + 1) for s in range(2)]
    q = torch.nn.Parameter(distribute_tensor(fulls[stage], pm["dp"], [Shard(0)]))
    q.grad = distribute_tensor(fulls[stage].clone(), pm["dp"], [Shard(0)])
    n, k = COUNT(fct.clip_grad_norm_, [q], 1e9)
    want = math.sqrt(float((fulls[stage].double() ** 2).sum()))
    assert k == 1 and abs(value(n) - want) <= 1e-6 * want, (value(n), want)
    # rank 0 alone also passes a parameter of stage 1 (a mesh without rank 0, made
    # without process groups): rank 0 refuses it, rank 1 (its stage) is told, and
    # stage 1 clips as usual; nobody waits
    stray = [q]
    if rank == 0:
        far = DeviceMesh("cpu", pm.mesh[1].tolist(), _init_backend=False)
        other = torch.nn.Parameter(DTensor.from_local(torch.empty(0, 2), far, [Shard(0)], run_check=False,
                                                      shape=torch.Size([4, 2]), stride=(2, 1)))
        other.grad = other.detach().clone()
        stray.append(other)
    try:
        fct.clip_grad_norm_(stray, 1e9)
        outcome = "clipped"
    except TypeError as e:
        assert "parameter 1's grad is a DTensor on" in str(e) and "does not contain this process" in str(e), e
        outcome = "refused"
    except RuntimeError as e:
        assert "another rank" in str(e), e
        outcome = "told"
    assert outcome == {0: "refused", 1: "told"}.get(rank, "clipped"), (rank, outcome)
    n, k = COUNT(fct.clip_grad_norm_, [q], 1e9)  # and the next call is a normal one
    assert k == 1 and abs(value(n) - want) <= 1e-6 * want


def main() -> None:
    rank, world, init, layout = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]

    def body() -> dict:
        global COUNT
        COUNT = Collectives()
        {"fsdp": fsdp, "tp": tp}[layout](rank, world)
        return OUT

    gloo.run(rank, world, init, body, timeout_s=60)


if __name__ == "__main__":
    main()
