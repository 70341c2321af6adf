"""fusedclip.torch against torch itself (torch.nn.utils.clip_grad_norm_ and
clip_grad_value_ of the installed torch).

What "the same" means here (docs/TORCH.md):

* the norm: the returned tensor has torch's dtype and device, and holds the
  exact norm (math.fsum reference) rounded once to that dtype; torch's own
  norm agrees to 1e-6 relative for float32/float64 gradients (it rounds each
  tensor's norm to the tensor's dtype, so lists with 16-bit grads agree to
  that dtype's rounding);
* the gradients: ours are bit for bit the scale rule of docs/DESIGN.md §3
  ("Scale arithmetic") applied with s = max_norm / (norm + 1e-6); torch's
  differ from ours by at most |x| * |s - s_torch| plus one rounding each,
  s_torch being torch's coefficient (float32 or the grads' 16-bit dtype
  arithmetic), and |s - s_torch| <= 1e-6 s for float32/float64 lists;
* whether a step clips: the same (the cases keep max_norm away from the
  norm by more than the dtypes' rounding; the eps boundary is tested apart).
"""
import copy
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fusedclip as fc  # noqa: E402
import fusedclip.torch as fct  # noqa: E402
from conftest import ref_norm, scaled  # noqa: E402
from torch_fakes import FakeCudaTensor, fake_params, patch_torch_cuda  # noqa: E402
from launchers import RecordingLauncher  # noqa: E402

TCLIP = torch.nn.utils.clip_grad_norm_
HERE = Path(__file__).parent
NP_OF = {torch.float64: np.float64, torch.float32: np.float32, torch.float16: np.float16,
         torch.bfloat16: ml_dtypes.bfloat16}
#: one ulp, relative, at worst (the spacing just above a power of two)
ULP = {torch.float64: 2.0**-52, torch.float32: 2.0**-23, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}
SMALLEST = {torch.float64: 5e-324, torch.float32: 1.4e-45, torch.bfloat16: 9.2e-41, torch.float16: 6e-8}
SIXTEEN = (torch.bfloat16, torch.float16)


def host(t):
    """A float64 numpy copy of a CPU tensor's values."""
    return t.detach().to(torch.float64).numpy().copy()


def native(t):
    """A numpy copy in the tensor's own dtype (bfloat16 as ml_dtypes')."""
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16).copy()
    return t.numpy().copy()


def bits(ts):
    return [None if t is None else native(t).tobytes() for t in ts]


# ---------------------------------------------------------------- models
class Tied(torch.nn.Module):
    """Embedding and output layer sharing one weight (as GPT-2 does)."""

    def __init__(self, v=13, d=6):
        super().__init__()
        self.emb = torch.nn.Embedding(v, d)
        self.norm = torch.nn.LayerNorm(d)
        self.out = torch.nn.Linear(d, v, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, x):
        return self.out(self.norm(self.emb(x)))


def make_model(kind, g):
    if kind == "mlp":
        return torch.nn.Sequential(torch.nn.Linear(7, 11), torch.nn.Tanh(), torch.nn.Linear(11, 3))
    if kind == "conv":
        return torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 3, 3, padding=1),
                                   torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 5))
    if kind == "embed":
        return torch.nn.Sequential(torch.nn.Embedding(17, 5), torch.nn.LayerNorm(5), torch.nn.Linear(5, 4))
    if kind == "lstm":
        return torch.nn.LSTM(5, 8, num_layers=2)
    if kind == "tied":
        return Tied()
    raise ValueError(kind)


def run_backward(kind, model, g):
    if kind == "mlp":
        y = model(torch.randn(6, 7, generator=g))
    elif kind == "conv":
        y = model(torch.randn(2, 2, 6, 6, generator=g))
    elif kind in ("embed", "tied"):
        y = model(torch.randint(0, 13, (9,), generator=g))
    else:
        y = model(torch.randn(4, 3, 5, generator=g))[0]
    (y.float() * torch.randn(y.shape, generator=g)).sum().backward()


def case(seed):
    """A random model with gradients, per seed: (params of one copy, params of an
    identical copy, description)."""
    rs = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    kind = ["mlp", "conv", "embed", "lstm", "tied"][seed % 5]
    torch.manual_seed(seed)
    model = make_model(kind, g)
    mode = rs.choice(["f32", "f64", "bf16", "f16", "mixed"], p=[0.35, 0.15, 0.15, 0.1, 0.25])
    if mode != "f32" and mode != "mixed":
        model = model.to({"f64": torch.float64, "bf16": torch.bfloat16, "f16": torch.float16}[mode])
    run_backward(kind, model, g) if mode in ("f32", "mixed") else _backward_f32_then_cast(kind, model, g)
    params = list(model.parameters())
    if mode == "mixed":  # per-parameter dtypes
        for p in params:
            dt = [torch.float32, torch.bfloat16, torch.float16, torch.float64][rs.integers(4)]
            p.data = p.data.to(dt)
            p.grad = p.grad.to(dt)
    # a gradient's scale (small, large: float16 and bfloat16 cover different ranges)
    mag = float(10.0 ** rs.uniform(-3, 2 if mode in ("f16", "mixed") else 6))
    for p in params:
        p.grad.mul_(mag)
    for p in params:  # some parameters get no grad (frozen, unused)
        if rs.random() < 0.15:
            p.grad = None
    twin = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for p, q in zip(params, twin):
        q.grad = None if p.grad is None else p.grad.clone()
    return params, twin, f"{kind}/{mode}"


def _backward_f32_then_cast(kind, model, g):
    """16-bit models: backward in float32 (fp16 LSTMs are not on the CPU), grads cast."""
    dt = next(model.parameters()).dtype
    m32 = copy.deepcopy(model).float()
    run_backward(kind, m32, g)
    for p, q in zip(model.parameters(), m32.parameters()):
        p.grad = q.grad.to(dt)


NORM_TYPES = [2.0, 1.0, 3.0, 0.5, math.inf, "inf", 2, 4.5]
FACTORS = [0.05, 0.3, 0.9, 1.1, 3.0, 100.0]  # max_norm / norm: triggered and not


def check_against_torch(params, twin, desc, norm_type, factor, how):
    grads0 = [None if p.grad is None else native(p.grad) for p in params]
    live = [x for x in grads0 if x is not None]
    dts = [p.grad.dtype for p in params if p.grad is not None]
    p_ = float(norm_type)
    exact = ref_norm(live, p_) if live else 0.0
    max_norm = factor * exact if exact > 0 else 1.0
    ours_f64 = fc.global_norm(live, p_) if live else 0.0  # the same kernels, bit for bit
    assert ours_f64 == pytest.approx(exact, rel=1e-12)

    if how == "function":
        got = fct.clip_grad_norm_(params, max_norm, norm_type)
    elif how == "generator":
        got = fct.clip_grad_norm_((p for p in params), max_norm, norm_type)
    else:
        got = fct.Clipper(params, max_norm, norm_type)()
    theirs = TCLIP(twin, max_norm, norm_type)

    # the norm: torch's dtype and device, our float64 norm (exact to 1e-12) rounded once
    assert got.dtype == theirs.dtype and got.device == theirs.device and got.shape == theirs.shape, desc
    assert got.item() == torch.tensor(ours_f64, dtype=torch.float64).to(got.dtype).item(), desc
    tol = 1e-6 if not any(d in SIXTEEN for d in dts) else (2.0**-7 if torch.bfloat16 in dts else 2.0**-9)
    assert theirs.item() == pytest.approx(exact, rel=tol), desc

    # the gradients
    clip = exact > 0 and ours_f64 + fct.EPS > max_norm
    s = max_norm / (ours_f64 + fct.EPS)
    s_t = float(torch.clamp(max_norm / (theirs + 1e-6), max=1.0))  # torch's coefficient, its arithmetic
    assert (s_t < 1.0) == clip, desc  # the same decision
    if clip:
        assert s_t == pytest.approx(s, rel=tol), desc
    changed = False
    for i, (p, q, x0) in enumerate(zip(params, twin, grads0)):
        if x0 is None:
            assert p.grad is None and q.grad is None
            continue
        mine = native(p.grad)
        want = scaled(x0, s) if clip else x0
        assert mine.tobytes() == want.tobytes(), (desc, i, "not the scale rule")
        changed |= mine.tobytes() != x0.tobytes()
        a, b, x = mine.astype(np.float64), host(q.grad), x0.astype(np.float64)
        bound = np.abs(x) * abs(s - s_t) * 1.001 + ULP[p.grad.dtype] * np.maximum(np.abs(a), np.abs(b)) \
            + SMALLEST[p.grad.dtype]
        assert (np.abs(a - b) <= bound).all(), (desc, i, float(np.max(np.abs(a - b) - bound)))
    if clip and any(np.any(x != 0) for x in live):
        assert changed, desc  # a do-nothing clip fails here


@pytest.mark.parametrize("seed", range(240))
def test_random_models_match_torch(seed):
    params, twin, desc = case(seed)
    rs = np.random.default_rng(1000 + seed)
    norm_type = NORM_TYPES[seed % len(NORM_TYPES)]
    factor = FACTORS[rs.integers(len(FACTORS))]
    if "bf16" in desc or "f16" in desc or "mixed" in desc:
        if factor in (0.9, 1.1):  # keep the 16-bit norms' rounding away from the threshold
            factor = 0.7 if factor < 1 else 1.5
    how = ["function", "clipper", "generator"][seed % 3]
    check_against_torch(params, twin, f"{desc} p={norm_type} f={factor} {how}", norm_type, factor, how)


def test_the_cases_cover_what_they_claim():
    """Control: the 240 seeds include every model, dtype mode, both decisions,
    None grads and mixed lists (else the test above proves less)."""
    descs, clips, nones = set(), set(), 0  # noqa: F841
    for seed in range(240):
        params, _, desc = case(seed)
        descs.add(desc)
        nones += any(p.grad is None for p in params)
    kinds = {d.split("/")[0] for d in descs}
    modes = {d.split("/")[1] for d in descs}
    assert kinds == {"mlp", "conv", "embed", "lstm", "tied"}
    assert modes == {"f32", "f64", "bf16", "f16", "mixed"}
    assert nones > 50
    assert len(descs) == 25


# ---------------------------------------------------------------- shapes of the input
def grad_param(values, dtype=torch.float32):
    p = torch.nn.Parameter(torch.zeros(len(values), dtype=dtype))
    p.grad = torch.tensor(values, dtype=dtype)
    return p


def test_a_bare_tensor():
    p, q = grad_param([3.0, 4.0]), grad_param([3.0, 4.0])
    got, want = fct.clip_grad_norm_(p, 1.0), TCLIP(q, 1.0)
    assert torch.equal(got, want) and got.dtype == want.dtype
    assert native(p.grad).tobytes() == scaled(np.array([3, 4], np.float32), 1.0 / (5.0 + 1e-6)).tobytes()
    assert torch.allclose(p.grad, q.grad, rtol=2e-7)


def test_no_grads_and_empty_lists_return_what_torch_returns():
    for params in ([], [torch.nn.Parameter(torch.ones(3))], [torch.nn.Parameter(torch.ones(3, dtype=torch.float64))]):
        got, want = fct.clip_grad_norm_(params, 1.0), TCLIP(params, 1.0)
        assert torch.equal(got, want) and got.dtype == want.dtype == torch.float32 and got.device == want.device


def test_an_empty_generator_warns_as_torch():
    with pytest.warns(UserWarning, match="empty generator") as w_ours:
        fct.clip_grad_norm_((p for p in []), 1.0)
    with pytest.warns(UserWarning, match="empty generator") as w_torch:
        TCLIP((p for p in []), 1.0)
    assert str(w_ours[0].message) == str(w_torch[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fct.clip_grad_norm_([], 1.0)  # a list: no warning, as torch


def test_tied_weights_count_once_as_in_torch():
    torch.manual_seed(0)
    m = Tied()
    run_backward("tied", m, torch.Generator().manual_seed(1))
    params = list(m.parameters())
    assert sum(p is m.emb.weight for p in params) == 1  # model.parameters() dedupes ties
    twin = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for p, q in zip(params, twin):
        q.grad = p.grad.clone()
    check_against_torch(params, twin, "tied", 2.0, 0.5, "function")


def test_the_same_parameter_twice_counts_once_torch_counts_twice():
    """A documented difference: torch adds a repeated tensor's norm twice and
    scales it twice; fusedclip counts the same memory once."""
    p, q = grad_param([3.0, 4.0]), grad_param([3.0, 4.0])
    got = fct.clip_grad_norm_([p, p], 1.0)
    want = TCLIP([q, q], 1.0)
    assert got.item() == 5.0 and want.item() == pytest.approx(math.sqrt(50), rel=1e-6)
    s = 1.0 / (5.0 + 1e-6)
    assert native(p.grad).tobytes() == scaled(np.array([3, 4], np.float32), s).tobytes()
    assert q.grad[0].item() == pytest.approx(3 * (1 / math.sqrt(50)) ** 2, rel=1e-5)  # scaled twice


def test_zero_copy_views_of_cpu_grads():
    for dt in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        g = torch.randn(4, 5).to(dt)
        v = fct._cpu_view(g, 0, "t")
        assert v.ctypes.data == g.data_ptr() and v.dtype == np.dtype(NP_OF[dt]) and v.shape == (4, 5)
        g2 = torch.randn(6, 4).to(dt).t()  # a transposed (F-ordered) grad: still in place
        assert fct._cpu_view(g2, 0, "t").ctypes.data == g2.data_ptr()
    p = grad_param([30.0, 40.0], torch.bfloat16)
    g, ptr = p.grad, p.grad.data_ptr()
    fct.clip_grad_norm_([p], 1.0)
    assert p.grad is g and g.data_ptr() == ptr and g.float().norm().item() == pytest.approx(1.0, rel=1e-2)


def test_strided_grads_are_clipped_in_place():
    base = torch.randn(8, 6)
    p = torch.nn.Parameter(torch.zeros(8, 3))
    p.grad = base[:, ::2]  # not dense: staged through a copy and written back
    q = torch.nn.Parameter(torch.zeros(8, 3))
    q.grad = p.grad.clone()
    x0 = p.grad.numpy().copy()
    n = fct.clip_grad_norm_([p], 0.1)
    TCLIP([q], 0.1)
    assert n.item() == pytest.approx(ref_norm([x0]), rel=1e-7)
    assert np.array_equal(base[:, ::2].numpy(), scaled(x0, 0.1 / (ref_norm([x0]) + 1e-6)))
    assert torch.allclose(p.grad, q.grad, rtol=1e-6)


# ---------------------------------------------------------------- the eps rule and the no-write rule
def test_the_threshold_includes_torchs_eps():
    """norm 5 exactly: torch clips by 5 / (5 + 1e-6); so must we (without eps in
    the rule, norm > max_norm is false here); at max_norm 5 + 2e-6 neither clips."""
    x = np.array([3.0, 4.0])
    for max_norm, clips in ((5.0, True), (5.0 + 0.5e-6, True), (5.0 + 2e-6, False)):
        p, q = grad_param([3.0, 4.0], torch.float64), grad_param([3.0, 4.0], torch.float64)
        v0 = p.grad._version
        fct.clip_grad_norm_([p], max_norm)
        TCLIP([q], max_norm)
        want = scaled(x, max_norm / (5.0 + 1e-6)) if clips else x
        assert native(p.grad).tobytes() == want.tobytes(), max_norm
        assert (not np.array_equal(host(q.grad), x)) == clips, max_norm  # torch decides the same
        assert (p.grad._version > v0) == clips  # autograd is told of a write, and only then


def test_the_cuda_finalize_kernel_reads_eps(monkeypatch):
    """Without a GPU: the eps lands in the plan's params next to max_norm
    (the simulator suite runs the kernel on it: tests/gpu/sim_torch_suite.py)."""
    pytest.importorskip("numba_cuda")
    from fusedclip import _launch
    from fusedclip.kernels import cuda as ck

    rec = RecordingLauncher()
    old = _launch.use_launcher(rec)
    try:
        patch_torch_cuda(monkeypatch)
        params = fake_params([np.ones(10, np.float32)], [torch.float32])
        c = fct.Clipper(params, 0.25)
        c()
        g = c._plan.clipper._gpu
        got = np.empty(ck.PARAMS_LEN)
        rec.download(got, g.params.addr)
        assert got[ck.P_MAX_NORM] == 0.25 and got[ck.P_EPS] == 1e-6
        assert fc.Clipper([FakeCudaTensor(np.ones(4, np.float32), torch.float32)], 1.0,
                          nonfinite="skip")()._plan._config[::7] == (1.0, 0.0)  # array API: max_norm 1, eps 0
    finally:
        _launch.use_launcher(old)


# ---------------------------------------------------------------- where torch is wrong, and other differences
def test_finite_grads_whose_squares_overflow_get_a_finite_norm():
    p, q = grad_param([1e20, -1e20, 3e19]), grad_param([1e20, -1e20, 3e19])
    x0 = native(p.grad)
    n = fct.clip_grad_norm_([p], 1.0)
    assert n.item() == pytest.approx(ref_norm([x0]), rel=1e-7) and math.isfinite(n.item())
    assert native(p.grad).tobytes() == scaled(x0, 1.0 / (ref_norm([x0]) + 1e-6)).tobytes()
    assert fc.global_norm([native(p.grad)]) == pytest.approx(1.0, rel=1e-6)
    assert math.isinf(TCLIP([q], 1.0).item()) and (q.grad == 0).all()  # torch: inf, and zeroes them
    with pytest.raises(RuntimeError):  # and torch's error_if_nonfinite fires on finite data
        TCLIP([grad_param([1e20, 1e20])], 1.0, error_if_nonfinite=True)
    fct.clip_grad_norm_([grad_param([1e20, 1e20])], 1.0, error_if_nonfinite=True)  # ours does not


def test_float16_norms_beyond_65504_saturate_but_the_clip_is_right():
    p = grad_param([60000.0, 60000.0], torch.float16)
    n = fct.clip_grad_norm_([p], 1.0)
    assert n.dtype == torch.float16 and math.isinf(n.item())  # torch's dtype cannot hold 84853
    assert p.grad.float().norm().item() == pytest.approx(1.0, rel=2e-3)
    q = grad_param([60000.0, 60000.0], torch.float16)
    TCLIP([q], 1.0)
    assert (q.grad == 0).all()  # torch zeroes them


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
@pytest.mark.parametrize("dt", [torch.float32, torch.bfloat16, torch.float64])
def test_nonfinite_grads_propagate_exactly_as_torch(bad, dt):
    vals = [[bad, -1.0, 2.0, 0.0], [1.0, -3.0]]
    ours = [grad_param(v, dt) for v in vals]
    theirs = [grad_param(v, dt) for v in vals]
    n, m = fct.clip_grad_norm_(ours, 1.0), TCLIP(theirs, 1.0)
    assert n.dtype == m.dtype
    assert (math.isnan(n.item()) and math.isnan(m.item())) or n.item() == m.item() == math.inf
    for p, q in zip(ours, theirs):  # NaN where torch has NaN, zeros with torch's signs
        a, b = native(p.grad), native(q.grad)
        assert np.array_equal(np.isnan(a.astype(np.float64)), np.isnan(b.astype(np.float64)))
        ok = ~np.isnan(b.astype(np.float64))
        assert np.array_equal(np.signbit(a[ok].astype(np.float64)), np.signbit(b[ok].astype(np.float64)))
        assert np.array_equal(a[ok], b[ok])


@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_error_if_nonfinite_raises_a_runtime_error_and_writes_nothing(bad):
    params = [grad_param([1.0, 2.0]), grad_param([bad, 5.0]), grad_param([7.0])]
    snap = bits([p.grad for p in params])
    with pytest.raises(RuntimeError, match="non-finite") as e:
        fct.clip_grad_norm_(params, 1e-3, error_if_nonfinite=True)
    assert isinstance(e.value, fc.NonFiniteError) and e.value.buffers == (1,)
    assert "parameters [1]" in str(e.value) and "error_if_nonfinite=False" in str(e.value)
    assert bits([p.grad for p in params]) == snap
    twin = [grad_param([1.0, 2.0]), grad_param([bad, 5.0]), grad_param([7.0])]
    with pytest.raises(RuntimeError, match="non-finite"):
        TCLIP(twin, 1e-3, error_if_nonfinite=True)  # torch raises too
    c = fct.Clipper(params, 1e-3, error_if_nonfinite=True)
    with pytest.raises(fc.NonFiniteError):
        c()
    assert bits([p.grad for p in params]) == snap
    params[1].grad = torch.tensor([3.0, 4.0])  # the next step is finite: clipped
    assert c().item() == pytest.approx(math.sqrt(1 + 4 + 9 + 16 + 49))
    assert params[0].grad.norm().item() < 1e-3


def _fresh():
    return [grad_param([3.0, 4.0]), grad_param([1.0, -2.0], torch.bfloat16)]


@pytest.mark.parametrize("max_norm,exc", [(0.0, ValueError), (-1.0, ValueError), (math.nan, ValueError),
                                          (None, TypeError), ("x", ValueError), (True, TypeError),
                                          ([1.0], TypeError), (torch.ones(2), TypeError)])
def test_bad_max_norm_raises_and_writes_nothing(max_norm, exc):
    params = _fresh()
    snap = bits([p.grad for p in params])
    fct.clip_grad_norm_(_fresh(), 1e-3)  # (warm the plan cache for these shapes)
    with pytest.raises(exc, match="max_norm"):
        fct.clip_grad_norm_(params, max_norm)
    with pytest.raises(exc, match="max_norm"):
        fct.Clipper(params, max_norm)
    assert bits([p.grad for p in params]) == snap


def test_what_torch_does_with_the_max_norms_we_refuse():
    """The reasons in docs/TORCH.md: torch zeroes the gradient for 0, flips its
    sign for a negative max_norm (pytorch#31367) and writes NaN for NaN."""
    q = grad_param([3.0, -4.0])
    TCLIP([q], 0.0)
    assert (q.grad == 0).all()
    q = grad_param([3.0, -4.0])
    TCLIP([q], -1.0)
    assert q.grad[0].item() < 0 < q.grad[1].item()
    q = grad_param([3.0, -4.0])
    TCLIP([q], math.nan)
    assert q.grad.isnan().all()


def test_max_norm_and_norm_type_as_torch_accepts_them():
    for mx in ("0.5", torch.tensor(0.5), np.float32(0.5), 1 / 2):
        p = grad_param([3.0, 4.0])
        assert fct.clip_grad_norm_([p], mx, "2").item() == 5.0
        assert p.grad.norm().item() == pytest.approx(0.5, rel=1e-5)
    p = grad_param([3.0, -4.0])
    assert fct.clip_grad_norm_([p], 100.0, "inf").item() == 4.0


@pytest.mark.parametrize("norm_type,exc", [(0, ValueError), (-1.0, ValueError), (-math.inf, ValueError),
                                           (math.nan, ValueError), ("fro", ValueError), (None, TypeError)])
def test_norm_types_we_refuse_write_nothing(norm_type, exc):
    params = _fresh()
    snap = bits([p.grad for p in params])
    with pytest.raises(exc, match="norm_type"):
        fct.clip_grad_norm_(params, 1e-3, norm_type)
    assert bits([p.grad for p in params]) == snap
    if norm_type in (0, -1.0, -math.inf):  # torch computes something for these
        TCLIP(_fresh(), 1e-3, norm_type)


def test_bad_parameters_raise_and_write_nothing():
    good = _fresh()
    snap = bits([p.grad for p in good])
    cplx = torch.nn.Parameter(torch.zeros(2, dtype=torch.complex64))
    cplx.grad = torch.ones(2, dtype=torch.complex64)
    emb = torch.nn.Embedding(5, 3, sparse=True)
    emb(torch.tensor([1, 2])).sum().backward()
    for params, exc, what in ((good + [cplx], TypeError, "parameter 2|buffer 2"),
                              (good + [emb.weight], TypeError, "parameter 2's grad"),
                              (good + [3.0], TypeError, "parameter 2 is a float"),
                              (None, TypeError, "parameters must be"),
                              (5, TypeError, "parameters must be")):
        with pytest.raises(exc, match=what):
            fct.clip_grad_norm_(params, 1e-3)
        with pytest.raises(exc, match=what):
            fct.clip_grad_value_(params, 1e-3)
        assert bits([p.grad for p in good]) == snap, what


def test_foreach_is_accepted_and_ignored():
    for fe in (None, True, False):
        p, q = grad_param([3.0, 4.0]), grad_param([3.0, 4.0])
        assert torch.equal(fct.clip_grad_norm_([p], 1.0, foreach=fe), TCLIP([q], 1.0, foreach=fe))
        fct.clip_grad_value_([p], 0.1, foreach=fe)
        assert p.grad.abs().max().item() == pytest.approx(0.1)


# ---------------------------------------------------------------- clip_grad_value_
@pytest.mark.parametrize("seed", range(20))
def test_clip_grad_value_matches_torch_bit_for_bit(seed):
    params, twin, desc = case(seed)
    rs = np.random.default_rng(seed)
    live = [p.grad for p in params if p.grad is not None]
    v = float(np.quantile(np.concatenate([host(g).ravel() for g in live]).__abs__(), rs.uniform(0.2, 0.9)))
    before = bits([p.grad for p in params])
    assert fct.clip_grad_value_(params, v) is None
    torch.nn.utils.clip_grad_value_(twin, v)
    assert bits([p.grad for p in params]) == bits([q.grad for q in twin]), desc
    assert bits([p.grad for p in params]) != before  # something was clamped


def test_clip_grad_value_nonfinite_and_bad_values():
    vals = [math.inf, -math.inf, math.nan, 0.5, -7.0]
    p, q = grad_param(vals), grad_param(vals)
    fct.clip_grad_value_(p, 1.0)
    torch.nn.utils.clip_grad_value_(q, 1.0)
    assert bits([p.grad]) == bits([q.grad])
    for bad, exc in ((-1.0, ValueError), (math.nan, ValueError), (None, TypeError), ("x", ValueError)):
        params = _fresh()
        snap = bits([x.grad for x in params])
        with pytest.raises(exc, match="clip_value"):
            fct.clip_grad_value_(params, bad)
        assert bits([x.grad for x in params]) == snap


# ---------------------------------------------------------------- the plan cache
class PlanCounter:
    """Counts the general path's plans (CPU grads need none: their layouts
    are read and checked in C on every call)."""

    def __init__(self, monkeypatch):
        self.n = 0
        real = fct._Plan.__init__

        def counting(plan, *a, **k):
            self.n += 1
            real(plan, *a, **k)

        monkeypatch.setattr(fct._Plan, "__init__", counting)


def test_repeated_calls_on_cpu_grads_build_no_plan_and_keep_no_grad_alive(monkeypatch):
    count = PlanCounter(monkeypatch)
    m = torch.nn.Sequential(torch.nn.Linear(30, 40), torch.nn.Linear(40, 5))
    m(torch.randn(3, 30)).sum().backward()
    for k in range(10):
        fct.clip_grad_norm_(m.parameters(), 1e-2 * (k + 1), 2.0 if k % 2 else 1.0)
    fct.clip_grad_value_(m.parameters(), 1e-3)
    assert count.n == 0  # the fast path: read and checked in C, no plan
    import gc
    import weakref

    ref = weakref.ref(m[0].weight.grad)
    for p in m.parameters():
        p.grad = None
    gc.collect()
    assert ref() is None  # nothing keeps the grad alive
    m(torch.randn(3, 30)).sum().backward()
    exact = ref_norm([native(p.grad) for p in m.parameters()])
    assert fct.clip_grad_norm_(m.parameters(), 1e30).item() == pytest.approx(exact, rel=1e-7)


def test_nothing_keeps_a_parameter_or_grad_alive():
    import gc
    import weakref

    fct._general.clear()
    m = torch.nn.Linear(4, 3)
    m(torch.randn(2, 4)).sum().backward()
    fct.clip_grad_norm_(m.parameters(), 1.0)
    fct.get_total_norm([p.grad for p in m.parameters()])
    assert len(fct._general) == 0  # CPU grads: no plan is cached
    refs = [weakref.ref(x) for q in m.parameters() for x in (q, q.grad)]
    del m
    gc.collect()
    assert all(r() is None for r in refs)


def test_new_grads_at_other_addresses_or_of_other_layouts_are_read_anew(monkeypatch):
    """A new grad tensor at another address (what set_to_none gives every
    step), or the same tensor with another layout (torch lets ``.data``
    change it: the stale-plan trap), is read and measured as it is now."""
    count = PlanCounter(monkeypatch)
    p = grad_param([3.0, 4.0])
    keep = p.grad
    assert fct.clip_grad_norm_([p], 1e9).item() == 5.0
    p.grad = torch.tensor([6.0, 8.0])  # a new tensor while the old one is alive: a new address
    assert fct.clip_grad_norm_([p], 1e9).item() == 10.0
    assert keep.data_ptr() != p.grad.data_ptr()
    p.grad.data = torch.tensor([6.0, 8.0, 2.0])  # another layout
    assert fct.clip_grad_norm_([p], 1e9).item() == pytest.approx(math.sqrt(104))
    p.grad.data = torch.tensor([6.0, 8.0], dtype=torch.float64)  # another dtype: float64 returned
    n = fct.clip_grad_norm_([p], 1e9)
    assert n.item() == 10.0 and n.dtype == torch.float64
    assert count.n == 0


# ---------------------------------------------------------------- Clipper: the set_to_none trap
def lstm_step(lstm, opt, seed, set_to_none):
    opt.zero_grad(set_to_none=set_to_none)
    g = torch.Generator().manual_seed(seed)
    out, _ = lstm(torch.randn(6, 2, 4, generator=g))
    (out * torch.randn(out.shape, generator=g)).sum().backward()
    return ref_norm([native(p.grad) for p in lstm.parameters()])


def test_a_plan_over_last_steps_grads_measures_stale_memory_and_clipper_does_not():
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(4, 8, num_layers=2)
    opt = torch.optim.SGD(lstm.parameters(), lr=0.0)  # lr 0: the weights stay; only grads change
    first = lstm_step(lstm, opt, 1, True)
    arrays = fc.Clipper([p.grad.numpy() for p in lstm.parameters()], 1e30)  # the trap
    ours = fct.Clipper(lstm.parameters(), 1e30)
    assert arrays().norm == pytest.approx(first, rel=1e-12)
    assert ours().item() == pytest.approx(first, rel=1e-6) and ours.replans == 0
    for seed in (2, 3, 4):
        true = lstm_step(lstm, opt, seed, set_to_none=True)  # new grad tensors
        assert true != pytest.approx(first, rel=1e-3)
        assert arrays().norm == pytest.approx(first, rel=1e-12)  # stale: last step's memory
        assert ours().item() == pytest.approx(true, rel=1e-6)    # the current grads
        assert ours.stats.norm == pytest.approx(true, rel=1e-12)
    assert ours.replans == 0  # new grad tensors every step: CPU grads need no plan


def test_clipper_keeps_its_plan_while_the_grads_stay():
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(4, 8, num_layers=2)
    opt = torch.optim.SGD(lstm.parameters(), lr=0.0)
    lstm_step(lstm, opt, 1, False)
    ours = fct.Clipper(lstm.parameters(), 1e30)
    arrays = fc.Clipper([p.grad.numpy() for p in lstm.parameters()], 1e30)
    ours()
    for seed in (2, 3):
        true = lstm_step(lstm, opt, seed, set_to_none=False)  # zeroed in place: same memory
        assert ours().item() == pytest.approx(true, rel=1e-6)
        assert arrays().norm == pytest.approx(true, rel=1e-12)  # no trap without set_to_none
    assert ours.replans == 0


def test_clipper_clips_and_its_settings_are_validated():
    params = [grad_param([3.0, 4.0]), grad_param([0.0, 12.0], torch.bfloat16)]
    c = fct.Clipper(iter(params), 1.0)
    assert len(c) == 2
    assert c().item() == 13.0
    assert fc.global_norm([native(p.grad) for p in params]) == pytest.approx(1.0, rel=4e-3)
    with pytest.raises(ValueError, match="max_norm"):
        c.max_norm = -1
    with pytest.raises(ValueError, match="norm_type"):
        c.norm_type = 0
    assert (c.max_norm, c.norm_type) == (1.0, 2.0)
    c.max_norm, c.norm_type = 0.5, math.inf
    assert c().item() == 0.921875  # 12/13 in bfloat16: the largest element after the first clip
    assert max(p.grad.abs().max().item() for p in params) == pytest.approx(0.5, rel=4e-3)
    for p in params:
        p.grad = None
    assert c().item() == 0.0


# ---------------------------------------------------------------- the CUDA path, without a GPU
@pytest.fixture
def recorder(monkeypatch):
    pytest.importorskip("numba_cuda")
    from fusedclip import _launch

    rec = RecordingLauncher()
    old = _launch.use_launcher(rec)
    patch_torch_cuda(monkeypatch)
    fct._general.clear()  # plans made with another launcher hold its memory
    yield rec
    _launch.use_launcher(old)
    fct._general.clear()


@pytest.mark.parametrize("dtypes,ret", [((torch.float32,), torch.float32),
                                        ((torch.bfloat16,), torch.bfloat16),
                                        ((torch.float32, torch.bfloat16, torch.float16), torch.float32),
                                        ((torch.float16, torch.float64), torch.float64)])
def test_cuda_grads_three_launches_and_a_device_copy_of_the_norm_no_host_wait(recorder, dtypes, ret):
    from fusedclip.kernels import cuda as ck

    hosts = [np.ones(100 + 7 * i, NP_OF[dt]) for i, dt in enumerate(dtypes)]
    params = fake_params(hosts, dtypes) + [type("P", (), {"grad": None})()]  # and a None grad
    c = fct.Clipper(params, 1.0)
    for call in range(1, 11):
        n0, d0, c0 = len(recorder.launches), len(recorder.download_streams), len(recorder.copies)
        if call > 1:  # stand in for the finalize kernel: each slot of the ring holds its own norm
            ring = np.arange(ck.RING * ck.STATE_LEN, dtype=np.float64) + 0.25
            recorder.upload(c._plan.clipper._gpu.state.addr, ring)
        out = c()
        g = c._plan.clipper._gpu
        names = [x[0] for x in recorder.launches[n0:]]
        assert names == ["partials", "finalize", "scale"], names
        assert len(recorder.download_streams) == d0  # the host never waited
        assert len(recorder.copies) == c0 + 1
        dst, src, nbytes, stream = recorder.copies[-1]
        slot = (call - 1) % ck.RING
        assert src == g.state.addr + 8 * (slot * ck.STATE_LEN + ck.S_NORM)
        assert nbytes == 8 and stream == 4242 and set(recorder.streams[n0:]) == {4242}
        assert out.dtype == ret and out.shape == ()
        if call > 1:
            assert out.item() == torch.tensor(slot * ck.STATE_LEN + ck.S_NORM + 0.25,
                                              dtype=torch.float64).to(ret).item()
    assert c.replans == 1


def test_cuda_error_if_nonfinite_waits_once_to_decide(recorder):
    params = fake_params([np.ones(10, np.float32)], [torch.float32])
    d0 = len(recorder.download_streams)
    fct.clip_grad_norm_(params, 1.0, error_if_nonfinite=True)  # the recorder's state: finite
    assert len(recorder.download_streams) > d0  # the host must know to raise (torch syncs here too)


def test_cuda_function_api_reuses_its_plan(recorder, monkeypatch):
    count = PlanCounter(monkeypatch)
    params = fake_params([np.ones(64, np.float32), np.ones(8, np.float32)], [torch.float32] * 2)
    for _ in range(5):
        fct.clip_grad_norm_(params, 1.0)
    assert count.n == 1
    assert recorder.replays == 4  # the second call on replays one captured graph


def test_the_simulator_runs_the_cuda_path_against_torch():
    """The CUDA path with the real kernels (the Numba simulator, own process):
    norms, eps decisions and clipped values against torch on the CPU."""
    pytest.importorskip("numba_cuda")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        str(HERE / "gpu" / "sim_torch_suite.py")], cwd=HERE.parent, env=env,
                       capture_output=True, text=True, timeout=900)
    tail = (r.stdout + r.stderr)[-4000:]
    assert r.returncode == 0 and " passed" in r.stdout, tail


# ---------------------------------------------------------------- importing
def test_import_fusedclip_works_without_torch_and_fusedclip_torch_says_why():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import fusedclip, numpy as np\n"
            "assert fusedclip.clip_grad_norm_([np.ones(4, np.float32)], 1.0) == 2.0\n"
            "try:\n    import fusedclip.torch\nexcept ImportError as e:\n    print('IMPORTERROR', e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "IMPORTERROR fusedclip.torch needs PyTorch" in r.stdout
