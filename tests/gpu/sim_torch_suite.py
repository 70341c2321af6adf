"""fusedclip.torch's CUDA path with the real kernels, under the Numba CUDA
simulator, against torch on the CPU.  Run by tests/test_torch_dropin.py in
its own process:

    NUMBA_ENABLE_CUDASIM=1 pytest tests/gpu/sim_torch_suite.py

The gradients are tests/torch_fakes.py's stand-ins for torch CUDA tensors
over host memory (the simulator's device memory is host memory), so the
partials, finalize (with torch's eps read from the params) and scale kernels
run on them, and the returned norm comes through the device-to-device copy.
"""
import math
import os

import numpy as np
import pytest

assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", "run with NUMBA_ENABLE_CUDASIM=1"
torch = pytest.importorskip("torch")

import fusedclip.torch as fct  # noqa: E402
from fusedclip import _launch  # noqa: E402
from fusedclip.kernels import cuda as ck  # noqa: E402
from conftest import ref_norm, scaled  # noqa: E402
from torch_fakes import NP_OF, fake_params, patch_torch_cuda  # noqa: E402

assert (ck.THREADS, ck.CHUNK) == (16, 48), "conftest sets the simulator's small geometry"
LAUNCHER = _launch.launcher()
pytestmark = [pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")]
ULP = {torch.float64: 2.0**-52, torch.float32: 2.0**-23, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}


@pytest.fixture(autouse=True)
def cuda_torch(monkeypatch):
    patch_torch_cuda(monkeypatch)


@pytest.fixture
def no_host_wait(monkeypatch):
    """Every device-to-host copy and synchronisation raises while active."""
    def boom(*a, **k):
        raise AssertionError("the host waited for the device")

    def arm():
        monkeypatch.setattr(LAUNCHER, "download", boom)
        monkeypatch.setattr(LAUNCHER, "synchronize", boom)
    return arm


def pair(dtypes, seed, mag=3.0):
    rs = np.random.default_rng(seed)
    hosts = [(rs.standard_normal(20 + 37 * i) * mag).astype(NP_OF[dt]) for i, dt in enumerate(dtypes)]
    twin = []
    for h, dt in zip(hosts, dtypes):
        q = torch.nn.Parameter(torch.zeros(h.size, dtype=dt))
        q.grad = torch.from_numpy(h.astype(np.float64)).to(dt)
        twin.append(q)
    return hosts, fake_params(hosts, dtypes), twin


CASES = [((torch.float32,), 2.0), ((torch.bfloat16,), 2.0), ((torch.float16,), 1.0),
         ((torch.float64,), math.inf), ((torch.float32, torch.bfloat16, torch.float16), 2.0),
         ((torch.float16, torch.float64), 3.0)]


@pytest.mark.parametrize("dtypes,p", CASES)
@pytest.mark.parametrize("factor", [0.3, 3.0])
def test_cuda_path_matches_torch(dtypes, p, factor, no_host_wait):
    hosts, params, twin = pair(dtypes, seed=len(dtypes) + int(factor))
    x0 = [h.copy() for h in hosts]
    exact = ref_norm(x0, p)
    max_norm = factor * exact
    c = fct.Clipper(params, 1e300, p)
    c()  # plans (a new plan synchronises once) and measures: nothing clipped
    c.max_norm = max_norm  # 16 bytes uploaded, no wait
    no_host_wait()
    got = c()  # three launches and a device-to-device copy of the norm: the host never waits
    assert c.replans == 1
    theirs = torch.nn.utils.clip_grad_norm_(twin, max_norm, p)
    assert got.dtype == theirs.dtype and got.shape == ()
    assert abs(got.item() - exact) <= ULP[got.dtype] * exact  # the device's norm, rounded once


@pytest.mark.parametrize("dtypes,p", CASES)
@pytest.mark.parametrize("factor", [0.3, 3.0])
def test_cuda_path_clips_as_the_rule_and_as_torch(dtypes, p, factor):
    hosts, params, twin = pair(dtypes, seed=10 + len(dtypes) + int(factor))
    x0 = [h.copy() for h in hosts]
    exact = ref_norm(x0, p)
    max_norm = factor * exact
    c = fct.Clipper(params, max_norm, p)
    got = c()
    theirs = torch.nn.utils.clip_grad_norm_(twin, max_norm, p)
    norm = c.stats.norm  # the device's float64 norm (this read waits)
    assert norm == pytest.approx(exact, rel=1e-12)
    assert got.item() == torch.tensor(norm, dtype=torch.float64).to(got.dtype).item()
    clip = norm + 1e-6 > max_norm
    assert clip == (factor < 1) and c.stats.clipped == clip
    s = max_norm / (norm + 1e-6)
    s_t = float(torch.clamp(max_norm / (theirs + 1e-6), max=1.0))
    for h, x, q, dt in zip(hosts, x0, twin, dtypes):
        want = scaled(x, s) if clip else x
        assert h.tobytes() == want.tobytes()  # the scale rule, bit for bit, on the device
        a, b = h.astype(np.float64), q.grad.to(torch.float64).numpy()
        assert (np.abs(a - b) <= np.abs(x.astype(np.float64)) * abs(s - s_t) * 1.001
                + ULP[dt] * np.maximum(np.abs(a), np.abs(b)) + 1e-300).all()


def test_the_device_decides_with_torchs_eps():
    for max_norm, clips in ((5.0, True), (5.0 + 0.5e-6, True), (5.0 + 2e-6, False)):
        h = np.array([3.0, 4.0])
        got = fct.clip_grad_norm_(fake_params([h], [torch.float64]), max_norm)
        assert got.item() == 5.0
        want = scaled(np.array([3.0, 4.0]), max_norm / (5.0 + 1e-6)) if clips else np.array([3.0, 4.0])
        assert h.tobytes() == want.tobytes(), max_norm


def test_nonfinite_propagates_as_torch_on_the_device():
    for bad in (math.inf, math.nan):
        h = np.array([bad, -1.0, 2.0], np.float32)
        got = fct.clip_grad_norm_(fake_params([h], [torch.float32]), 1.0)
        q = torch.nn.Parameter(torch.zeros(3))
        q.grad = torch.tensor([bad, -1.0, 2.0])
        want = torch.nn.utils.clip_grad_norm_([q], 1.0)
        assert (math.isnan(got.item()) and math.isnan(want.item())) or got.item() == want.item()
        b = q.grad.numpy()
        assert np.array_equal(np.isnan(h), np.isnan(b))
        ok = ~np.isnan(b)
        assert np.array_equal(h[ok], b[ok]) and np.array_equal(np.signbit(h[ok]), np.signbit(b[ok]))


def test_dtensor_path_on_cuda_shards(monkeypatch):
    """fusedclip.torch's DTensor path (``_sharded_norm``, ``_sharded_write``)
    where the local shards are CUDA tensors: each copies class through the
    CUDA engine (the host reads its norm: docs/DISTRIBUTED.md §6), the round
    (here one rank's), then the scale kernel on every shard."""
    from fusedclip import _sharded
    from fusedclip.kernels import cpu

    dtypes = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
    hosts, params, _ = pair(dtypes, seed=11)
    x0 = [h.copy() for h in hosts]
    classes = {1.0: [0, 2], 2.0: [1], 4.0: [3]}  # a shard, and parts held by 2 and 4 ranks
    items = [_sharded.Local(q.grad) for q in params]
    sh = _sharded.Sharded(items, items, classes, [], None, None, None, None)
    rounds = []
    monkeypatch.setattr(_sharded, "reducer", lambda sh: lambda x, op: rounds.append((op, len(x))) or x)
    for p, kind in ((2.0, cpu.NORM_2), (1.0, cpu.NORM_1), (math.inf, cpu.NORM_INF)):
        g, bad = fct._sharded_norm(sh, kind, p, None, "t", True, True)
        per = {i: ref_norm([x0[i]], p) for i in range(4)}
        if p == math.inf:
            want = max(per.values())
        else:
            want = math.fsum(per[i] ** p / c for c, idx in classes.items() for i in idx) ** (1 / p)
        assert abs(g.norm - want) <= 1e-12 * want and g.flags == 0 and bad == (), (p, g.norm, want)
    assert rounds == [("sum", 8), ("sum", 8), ("max", 5)]  # one round each, the two refusal flags in it
    fct._sharded_write(sh, fct._OP_SCALE, 0.25, None, "t")
    for h, x in zip(hosts, x0):
        np.testing.assert_array_equal(h, scaled(x, 0.25))
