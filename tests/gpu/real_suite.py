"""The CUDA engine on a real GPU: torch CUDA tensors (bfloat16 included),
cuda.core launches, CUDA-graph replays, streams, the plan cache.

Run by tests/test_gpu.py in its own process where a GPU exists (skipped
with the reason elsewhere):

    pytest tests/gpu/real_suite.py

Every result is compared with a float64 reference of the stored values, and
every written element with the scale rule of the CPU engine.
"""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():  # pragma: no cover - collected only with a GPU
    pytest.skip("no CUDA GPU", allow_module_level=True)

import fusedclip as fc  # noqa: E402
from fusedclip import _engine, _launch  # noqa: E402
from fusedclip.kernels import cuda as ck  # noqa: E402
from conftest import ref_norm, rel, scaled  # noqa: E402
# the engine contract (tests/test_contract.py) runs in this suite's process
# (tests/test_gpu.py), with FUSEDCLIP_TEST_ENGINE=gpu

import ml_dtypes  # noqa: E402

TDT = {"f64": torch.float64, "f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
NDT = {"f64": np.float64, "f32": np.float32, "bf16": ml_dtypes.bfloat16, "f16": np.float16}
SIZES = (3, 256, 70_000, 1_000_003)


def host(t):
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).cpu().numpy().view(ml_dtypes.bfloat16)
    return t.cpu().numpy()


def make(dt, sizes=SIZES, seed=0, scale=10.0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return [(torch.randn(n, device="cuda", generator=g) * scale).to(TDT[dt]) for n in sizes]


@pytest.mark.parametrize("dt", list(TDT))
@pytest.mark.parametrize("p", [2.0, 1.0, math.inf, 3.0])
def test_norm_matches_reference(dt, p):
    ts = make(dt)
    want = ref_norm([host(t) for t in ts], p)
    assert rel(fc.global_norm(ts, p), want) <= (0.0 if p == math.inf else 1e-12)


@pytest.mark.parametrize("dt", list(TDT))
def test_clipper_clips_exactly_and_replays(dt):
    ts = make(dt)
    hs = [host(t) for t in ts]
    c = fc.Clipper(ts, 1.0, nonfinite="skip")
    s = c()
    assert s.clipped and s.finite and rel(s.norm, ref_norm(hs)) <= 1e-12
    for h, t in zip(hs, ts):
        np.testing.assert_array_equal(host(t), scaled(h, s.scale))
    # replays (the graph is captured on the second call): not triggered, then triggered
    c.max_norm = 2.0
    s2 = c()
    assert not s2.clipped and rel(s2.norm, 1.0) <= 1e-2
    c.max_norm = 0.25
    before = [host(t) for t in ts]
    s3 = c()
    assert s3.clipped and s3.threshold == 0.25
    for h, t in zip(before, ts):
        np.testing.assert_array_equal(host(t), scaled(h, s3.scale))


def test_mixed_dtypes_and_cpu_buffers_in_one_list():
    ts = make("f32", (1000,)) + make("bf16", (777,)) + make("f16", (70_001,)) + make("f64", (5,))
    cpu_b = np.linspace(-3, 3, 50)
    mixed = ts[:2] + [cpu_b] + ts[2:]
    want = ref_norm([host(t) for t in ts] + [cpu_b])
    assert rel(fc.global_norm(mixed), want) <= 1e-12
    s = fc.Clipper(mixed, 1.0)()
    assert s.clipped and rel(s.norm, want) <= 1e-12
    assert rel(ref_norm([host(t) for t in ts] + [cpu_b]), 1.0) <= 1e-3


def test_three_launches_for_ten_thousand_buffers():
    ts = [torch.randn(256, device="cuda") for _ in range(10_000)]
    L = _launch.launcher()
    L.launches = []
    try:
        c = fc.Clipper(ts, 1e-3, nonfinite="propagate")
        c()
        assert [n for n, _, _ in L.launches] == ["partials", "finalize", "scale"]
        L.launches.clear()
        c()
        assert [n for n, _, _ in L.launches] == ["graph"]  # one replay
    finally:
        L.launches = None
    want = ref_norm([t.cpu().numpy() for t in ts])
    assert rel(fc.global_norm(ts), want) <= 1e-12


@pytest.mark.parametrize("policy", ["skip", "zero", "propagate", "error"])
def test_policies(policy):
    ts = make("f32", (100, 2000))
    ts[1][7] = float("nan")
    snap = [host(t).copy() for t in ts]
    c = fc.Clipper(ts, 1.0, nonfinite=policy)
    if policy == "error":
        with pytest.raises(fc.NonFiniteError) as e:
            c()
        assert e.value.buffers == (1,)
        for h, t in zip(snap, ts):
            assert host(t).tobytes() == h.tobytes()
        return
    s = c()
    assert not s.finite and s.nonfinite_buffers == (1,)
    if policy == "skip":
        for h, t in zip(snap, ts):
            assert host(t).tobytes() == h.tobytes()
    elif policy == "zero":
        assert all((host(t) == 0).all() for t in ts)
    else:
        assert np.isnan(host(ts[0])).all()


def test_not_triggered_writes_nothing():
    # a write of the same bits cannot be seen by content: compare a buffer's
    # bytes with a NaN-free sentinel after a clip that must not scale
    ts = make("f32", (10_000,))
    before = host(ts[0]).tobytes()
    s = fc.Clipper(ts, 1e30)()
    assert not s.clipped and host(ts[0]).tobytes() == before


def test_runs_on_the_current_torch_stream():
    """A producer kernel on a side stream, then the clip on the same stream:
    the clip must see the produced values (ordering), without a sync."""
    side = torch.cuda.Stream()
    x = torch.zeros(1 << 22, device="cuda")
    c = fc.Clipper([x], 1.0, nonfinite="skip")
    c()  # capture happens on the second call; make two first
    c()
    with torch.cuda.stream(side):
        for _ in range(5):
            x.add_(1.0)  # slow-ish producer on the side stream
        s = c()
        n = fc.global_norm([x])
    torch.cuda.synchronize()
    assert rel(s.norm, math.sqrt(x.numel()) * 5.0) <= 1e-12
    assert rel(n, 1.0) <= 1e-6


def test_explicit_stream_argument_orders_after_a_producer_on_that_stream():
    """stream=side: the clip is queued behind the producer on ``side``, while
    torch's current stream is the default one."""
    side = torch.cuda.Stream()
    x = torch.zeros(1 << 22, device="cuda")
    c = fc.Clipper([x], 1e30, nonfinite="skip", stream=side)
    c(), c()  # the second call captures the graph
    with torch.cuda.stream(side):
        for _ in range(5):
            x.add_(1.0)
    s = c()  # on side, not on the current (default) stream
    side.synchronize()
    assert rel(s.norm, math.sqrt(x.numel()) * 5.0) <= 1e-12
    assert rel(fc.global_norm([x], stream=side), math.sqrt(x.numel()) * 5.0) <= 1e-12


def test_statistics_read_after_leaving_the_stream_block():
    """No global sync: reading the statistics outside the ``with`` block copies
    on the stream the call ran on, so it sees that call's result."""
    side = torch.cuda.Stream()
    x = torch.zeros(1 << 22, device="cuda")
    c = fc.Clipper([x], 1e30, nonfinite="skip")
    c(), c()
    torch.cuda.synchronize()
    with torch.cuda.stream(side):
        for _ in range(20):
            x.add_(1.0)  # keeps side busy
        st = c()
    assert rel(st.norm, math.sqrt(x.numel()) * 20.0) <= 1e-12


def test_explicit_stream_argument_is_not_needed_for_ordering_on_default():
    x = torch.full((1000,), 3.0, device="cuda")
    assert rel(fc.clip_grad_norm_([x], 1.0), math.sqrt(1000) * 3.0) <= 1e-12
    assert rel(float(torch.linalg.vector_norm(x.double())), 1.0) <= 1e-6


def test_function_api_reuses_its_plan():
    ts = make("f32", (100, 200))
    _engine._plan_cache.clear()
    fc.clip_grad_norm_(ts, 1e9)
    fc.clip_grad_norm_(ts, 1e9)
    assert len(_engine._plan_cache) == 1
    other = make("f32", (100, 200), seed=1)
    fc.clip_grad_norm_(other, 1e9)
    assert len(_engine._plan_cache) == 2


def test_bfloat16_is_recognised_and_scaled_by_the_cpu_rule():
    t = make("bf16", (100_000,))[0]
    h = host(t)
    s = fc.Clipper([t], 1.0)()
    np.testing.assert_array_equal(host(t).view(np.uint16), scaled(h, s.scale).view(np.uint16))


def test_transposed_and_permuted_tensors_are_dense():
    a = torch.randn(300, 500, device="cuda")
    b = a.t()
    want = ref_norm([a.cpu().numpy()])
    assert rel(fc.global_norm([b]), want) <= 1e-12
    with pytest.raises(ValueError, match="contiguous"):
        fc.clip_grad_norm_([a[:, ::2]], 1.0)


def test_value_clip():
    x = torch.tensor([float("inf"), -float("inf"), float("nan"), 0.5, -7.0, 3.0], device="cuda")
    fc.clip_grad_value_([x], 1.0)
    np.testing.assert_array_equal(x.cpu().numpy(), [1.0, -1.0, np.nan, 0.5, -1.0, 1.0])


def test_only_the_total_overflows():
    x = torch.full((4 * ck.CHUNK,), 7e151, device="cuda", dtype=torch.float64)
    s = fc.Clipper([x], 1.0)()
    want = math.sqrt(x.numel()) * 7e151
    assert s.finite and rel(s.norm, want) <= 1e-12
    assert rel(float(torch.linalg.vector_norm(x)), 1.0) <= 1e-12


# ---------------------------------------------------------------- the torch drop-in on CUDA
@pytest.mark.parametrize("seed", range(12))
def test_torch_dropin_matches_torch_on_cuda(seed):
    """fusedclip.torch against torch.nn.utils on CUDA tensors: the same norm
    (1e-6 relative) and gradients, the norm a device tensor, no host wait."""
    import fusedclip.torch as fct

    gen = torch.Generator(device="cuda").manual_seed(seed)
    dts = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
    shapes = [(64, 33), (128,), (7, 3, 3, 3), (1000,)]
    p_type = [2.0, 1.0, math.inf, 3.0][seed % 4]
    params = []
    for i, s in enumerate(shapes):
        p = torch.nn.Parameter(torch.zeros(s, device="cuda", dtype=dts[(seed + i) % 4]))
        p.grad = (torch.randn(s, device="cuda", generator=gen) * 10).to(p.dtype)
        params.append(p)
    ref = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for r, p in zip(ref, params):
        r.grad = p.grad.clone()
    max_norm = 1.0 if seed % 2 else 1e6
    want = torch.nn.utils.clip_grad_norm_(ref, max_norm, p_type)
    got = fct.clip_grad_norm_(params, max_norm, p_type)
    assert got.device.type == "cuda" and got.dtype == want.dtype
    assert rel(float(got), float(want)) <= (1e-2 if want.dtype in (torch.bfloat16, torch.float16) else 1e-6)
    for r, p in zip(ref, params):
        tol = {torch.float64: 1e-12, torch.float32: 1e-6}.get(p.dtype, 1e-2)
        torch.testing.assert_close(p.grad.float(), r.grad.float(), rtol=tol, atol=0)


def test_family_on_torch_cuda_tensors():
    ts = make("f32")
    hs = [host(t) for t in ts]
    norms = fc.buffer_norms(ts)
    assert isinstance(norms, fc.DeviceNorms)
    for n, h in zip(norms.get(), hs):
        assert rel(n, ref_norm([h])) <= 1e-12
    pre = fc.clip_by_norm_(ts, 1.0).get()
    for n, h, t in zip(pre, hs, ts):
        np.testing.assert_array_equal(host(t), scaled(h, 1.0 / n) if n > 1.0 else h)
    W = [torch.randn(64, 128, device="cuda"), torch.randn(16, 8, 3, 3, device="cuda")]
    G = [w * 1e-4 for w in W]
    G[0][3] *= 1e4
    before = [host(g) for g in G]
    fc.clip_unitwise_(W, G, 0.01)
    after = host(G[0])
    assert not np.array_equal(after[3], before[0][3]) and np.array_equal(after[4], before[0][4])


# ---------------------------------------------------------------- loaded kernels, before the first run
def _attr(kernel, name):
    v = getattr(kernel.attributes, name)
    return v() if callable(v) else v  # a method in older cuda.core, a property in newer


def test_each_loaded_kernel_takes_the_arguments_its_launches_pass():
    """The loaded cubins' parameter counts are the signatures the launches
    follow (tests/test_gpu_engine.py checks the launches against the same
    table), and their registers are what the cubin records and the report
    bounds (tools/ptx_report.py), with no local memory (no spills)."""
    L = _launch.launcher()
    L.warm()
    for name in ck.KERNELS:
        k = L.kernel(name)
        assert k.num_arguments == len(ck.SIGNATURES[name]), name
        data, entry = ck.cubin(name, L.cc)
        regs = _attr(k, "num_regs")
        print(f"{name}: {k.num_arguments} arguments, {regs} registers, "
              f"{_attr(k, 'local_size_bytes')} B local")
        assert regs == ck.cubin_resources(data, entry)["registers"] and regs <= 64, name
        assert _attr(k, "local_size_bytes") == 0, name


@pytest.mark.parametrize("dt", ["bf16", "f16"])
@pytest.mark.parametrize("offset", [1, 3])
def test_a_16_bit_view_at_an_odd_element_offset(dt, offset):
    """A view 2 bytes past an 8-byte boundary: the int64-word reads and
    writes of 16-bit chunks must not be used on a misaligned head, and the
    elements before the view must not be touched."""
    base = make(dt, (3 * ck.CHUNK + 17,))[0]
    v = base[offset:]
    assert v.data_ptr() % 8 != 0
    before = host(base).copy()
    hv = host(v).copy()
    want = ref_norm([hv])
    assert rel(fc.global_norm([v]), want) <= 1e-12
    s = fc.Clipper([v], 1.0, nonfinite="skip")()
    assert s.clipped and rel(s.norm, want) <= 1e-12
    np.testing.assert_array_equal(host(v).view(np.uint16), scaled(hv, s.scale).view(np.uint16))
    assert host(base)[:offset].tobytes() == before[:offset].tobytes()
    fc.clip_grad_value_([v], 0.01)
    assert float(torch.max(torch.abs(v.float()))) <= 0.01 + 1e-4


def test_a_plan_built_on_one_thread_runs_on_another_on_the_gpu():
    """The launcher sets its context on the calling thread (CUDA keeps it per
    thread); a new thread has none until then."""
    import threading

    ts = make("f32", (1000, 70_000))
    hs = [host(t) for t in ts]
    c = fc.Clipper(ts, 1.0, nonfinite="skip")
    out, errors = [], []

    def work():
        try:
            out.append(c().result())
            out.append(c().result())  # the captured graph's replay
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert not errors, errors
    assert out[0].clipped and rel(out[0].norm, ref_norm(hs)) <= 1e-12 and rel(out[1].norm, 1.0) <= 1e-6


def test_the_per_call_context_check_costs_little():
    import time

    L = _launch.launcher()
    L._enter()
    n = 20_000
    t0 = time.perf_counter()
    for _ in range(n):
        L._enter()
    per = (time.perf_counter() - t0) / n
    print(f"CoreLauncher._enter: {per * 1e6:.3f} us per call")
    assert per < 2e-6


def test_the_function_api_on_numba_arrays_plans_once():
    from numba import cuda as ncuda

    ds = [ncuda.to_device(np.full(n, 3.0, np.float32)) for n in (100, 70_000)]
    _engine._plan_cache.clear()
    n1 = fc.clip_grad_norm_(ds, 1e9)
    assert len(_engine._plan_cache) == 1
    n2 = fc.clip_grad_norm_(ds, 1e9)
    assert len(_engine._plan_cache) == 1 and n1 == n2
    assert rel(n1, math.sqrt(70_100) * 3.0) <= 1e-12
