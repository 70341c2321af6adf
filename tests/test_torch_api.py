"""torch's whole clipping API in fusedclip.torch: get_total_norm and
clip_grads_with_norm_ (torch >= 2.6 splits clip_grad_norm_ into them),
torch's error text, the numbers torch accepts, and patch()/unpatch().

The references: torch's own functions on identical copies, and the exact
norm (conftest.ref_norm); written gradients are checked bit for bit against
the scale rule (conftest.scaled) with torch's coefficient max_norm / (norm +
1e-6).
"""
import decimal
import fractions
import math
import re
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fusedclip as fc  # noqa: E402
import fusedclip.torch as fct  # noqa: E402
from conftest import ref_norm, scaled  # noqa: E402
from test_torch_dropin import NORM_TYPES, bits, case, grad_param, native  # noqa: E402

NU = torch.nn.utils
TORCH_NONFINITE = ("The total norm of order {} for gradients from `parameters` is non-finite, so it cannot "
                   "be clipped. To disable this error and scale the gradients by the non-finite norm "
                   "anyway, set `error_if_nonfinite=False`")


def originals():
    import torch.nn.utils.clip_grad as cg
    return {"nu": {n: NU.__dict__[n] for n in ("clip_grad_norm_", "clip_grad_value_", "get_total_norm",
                                              "clip_grads_with_norm_", "clip_grad_norm")},
            "cg": {n: cg.__dict__[n] for n in ("clip_grad_norm_", "clip_grad_value_", "_get_total_norm",
                                              "_clip_grads_with_norm_", "clip_grad_norm")}}


ORIGINAL = originals()
TORCH_TOTAL = ORIGINAL["cg"]["_get_total_norm"]
TORCH_WITH_NORM = ORIGINAL["cg"]["_clip_grads_with_norm_"]
TORCH_CLIP = ORIGINAL["cg"]["clip_grad_norm_"]


# ---------------------------------------------------------------- get_total_norm
@pytest.mark.parametrize("seed", range(40))
def test_get_total_norm_is_torchs_with_an_exact_value(seed):
    params, _, desc = case(seed)
    grads = [p.grad for p in params if p.grad is not None]
    p = float(NORM_TYPES[seed % len(NORM_TYPES)])
    before = bits(grads)
    got, want = fct.get_total_norm(grads, p), TORCH_TOTAL(grads, p)
    assert bits(grads) == before  # never writes
    assert got.dtype == want.dtype and got.device == want.device and got.shape == want.shape, desc
    exact = ref_norm([native(g) for g in grads], p)
    assert got.item() == torch.tensor(exact, dtype=torch.float64).to(got.dtype).item() or \
        got.item() == pytest.approx(exact, rel=1e-12), desc
    assert got.item() == torch.tensor(fc.global_norm([native(g) for g in grads], p),
                                      dtype=torch.float64).to(got.dtype).item(), desc


def test_get_total_norm_of_tensors_not_grads_and_edge_inputs():
    a, b = torch.tensor([3.0, 0.0]), torch.tensor([[4.0]], dtype=torch.float64)
    assert fct.get_total_norm([a, b]).item() == 5.0 and fct.get_total_norm([a, b]).dtype == torch.float64
    assert fct.get_total_norm(a).item() == 3.0  # a bare tensor
    assert fct.get_total_norm((t for t in [a, b])).item() == 5.0  # a generator
    for empty in ([], ()):
        got, want = fct.get_total_norm(empty), TORCH_TOTAL(empty)
        assert torch.equal(got, want) and got.dtype == want.dtype
    p = torch.nn.Parameter(torch.tensor([6.0, 8.0]))  # a parameter's own values (requires_grad)
    assert fct.get_total_norm([p]).item() == 10.0
    assert fct.get_total_norm([torch.tensor([3.0, 9.0, 4.0])[::2]]).item() == 5.0  # strided: the general path
    with pytest.raises(TypeError, match="tensor 1 is None"):
        fct.get_total_norm([a, None])
    with pytest.raises(TypeError, match="tensor 1 is a float"):
        fct.get_total_norm([a, 3.0])


@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_get_total_norm_nonfinite_raises_torchs_error(bad):
    ts = [torch.tensor([1.0, 2.0]), torch.tensor([bad])]
    assert math.isnan(fct.get_total_norm(ts).item()) == math.isnan(bad)  # no error: the norm
    with pytest.raises(RuntimeError) as ours:
        fct.get_total_norm(ts, 2.0, error_if_nonfinite=True)
    with pytest.raises(RuntimeError) as theirs:
        TORCH_TOTAL(ts, 2.0, error_if_nonfinite=True)
    assert str(theirs.value) == TORCH_NONFINITE.format(2.0)
    assert re.search(re.escape(str(theirs.value)), str(ours.value))  # torch's words, verbatim
    assert isinstance(ours.value, fc.NonFiniteError) and ours.value.buffers == (1,)


# ---------------------------------------------------------------- clip_grads_with_norm_
@pytest.mark.parametrize("seed", range(30))
def test_clip_grads_with_norm_is_torchs_rule(seed):
    params, twin, desc = case(seed)
    live = [p.grad for p in params if p.grad is not None]
    x0 = [native(g) for g in live]
    total = fct.get_total_norm(live)
    max_norm = [0.3, 2.0][seed % 2] * total.item()
    v0 = [g._version for g in live]
    assert fct.clip_grads_with_norm_(params, max_norm, total) is None
    TORCH_WITH_NORM(twin, max_norm, total)
    t = total.item()
    clip = t + 1e-6 > max_norm
    s = max_norm / (t + 1e-6)
    for g, x, v in zip(live, x0, v0):
        assert native(g).tobytes() == (scaled(x, s) if clip else x).tobytes(), desc
        assert (g._version > v) == clip  # autograd is told of a write, and only then
    for p, q in zip(params, twin):  # torch's result to its own rounding of the coefficient
        if p.grad is not None:
            a, b = p.grad.double(), q.grad.double()
            assert torch.allclose(a, b, rtol=2e-2 if p.grad.dtype in (torch.bfloat16, torch.float16) else 1e-5,
                                  atol=1e-30), desc


def test_clip_grads_with_norm_nonfinite_and_bad_norms():
    for total, want in ((math.inf, [0.0, -0.0]), (math.nan, [math.nan, math.nan])):
        p = grad_param([3.0, -4.0])
        q = grad_param([3.0, -4.0])
        fct.clip_grads_with_norm_([p], 1.0, torch.tensor(total))
        TORCH_WITH_NORM([q], 1.0, torch.tensor(total))
        assert bits([p.grad]) == bits([q.grad])  # as torch: 0 for inf, NaN for NaN
    p = grad_param([3.0, -4.0])
    snap = bits([p.grad])
    for bad, exc in ((-1.0, ValueError), (torch.ones(2), TypeError), ("x", ValueError), (None, TypeError)):
        with pytest.raises(exc, match="total_norm"):
            fct.clip_grads_with_norm_([p], 1.0, bad)
    with pytest.raises(ValueError, match="max_norm"):
        fct.clip_grads_with_norm_([p], 0.0, 5.0)
    assert bits([p.grad]) == snap
    fct.clip_grads_with_norm_([p], 1.0, 5.0)  # a plain number works too
    assert native(p.grad).tobytes() == scaled(np.array([3.0, -4.0], np.float32), 1.0 / (5.0 + 1e-6)).tobytes()


def test_the_two_halves_are_clip_grad_norm_():
    a = [grad_param([3.0, 4.0]), grad_param([12.0], torch.bfloat16)]
    b = [grad_param([3.0, 4.0]), grad_param([12.0], torch.bfloat16)]
    n1 = fct.clip_grad_norm_(a, 1.0)
    n2 = fct.get_total_norm([p.grad for p in b])
    fct.clip_grads_with_norm_(b, 1.0, n2)
    assert torch.equal(n1, n2) and bits([p.grad for p in a]) == bits([p.grad for p in b])


# ---------------------------------------------------------------- torch's text and numbers
@pytest.mark.parametrize("norm_type", [2.0, 1, math.inf, "inf", 3.5])
def test_the_nonfinite_error_matches_torchs_regex(norm_type):
    params = [grad_param([1.0, math.nan])]
    with pytest.raises(RuntimeError) as theirs:
        TORCH_CLIP([grad_param([1.0, math.nan])], 1.0, norm_type, error_if_nonfinite=True)
    for clip in (lambda: fct.clip_grad_norm_(params, 1.0, norm_type, error_if_nonfinite=True),
                 lambda: fct.Clipper(params, 1.0, norm_type, error_if_nonfinite=True)()):
        with pytest.raises(RuntimeError) as ours:
            clip()
        assert str(ours.value).startswith(str(theirs.value)), (str(ours.value), str(theirs.value))
        assert "parameters [0] hold inf or NaN" in str(ours.value)
        assert re.search("is non-finite, so it cannot be clipped", str(ours.value))


@pytest.mark.parametrize("mx", [decimal.Decimal("0.5"), fractions.Fraction(1, 2), np.float16(0.5), np.int64(1),
                                torch.tensor(0.5, dtype=torch.float64), "0.5"])
def test_numbers_torch_accepts(mx):
    p = grad_param([3.0, 4.0])
    assert fct.clip_grad_norm_([p], mx, decimal.Decimal(2)).item() == 5.0
    want = float(mx)
    assert p.grad.norm().item() == pytest.approx(want, rel=1e-5)
    q = grad_param([3.0, -4.0])
    fct.clip_grad_value_([q], mx)
    assert q.grad.abs().max().item() == pytest.approx(min(want, 4.0))


def test_errors_name_the_parameter():
    base = torch.zeros(10)
    a, b = torch.nn.Parameter(torch.zeros(6)), torch.nn.Parameter(torch.zeros(6))
    a.grad, b.grad = base[:6], base[4:]  # partially overlapping grads
    with pytest.raises(ValueError, match="parameters 0 and 1 partially overlap") as e:
        fct.clip_grad_norm_([a, b], 1.0)
    assert "buffer" not in str(e.value)
    c = torch.nn.Parameter(torch.zeros(3, 4))
    c.grad = torch.zeros(1, 4).expand(3, 4)  # a grad that repeats its elements
    with pytest.raises(ValueError, match="parameter 0's grad is a view whose elements overlap"):
        fct.clip_grad_norm_([c], 1.0)


# ---------------------------------------------------------------- patch()
def test_patch_installs_all_four_and_unpatch_restores_them_exactly():
    import torch.nn.utils.clip_grad as cg

    h = fct.patch()
    try:
        assert fct.patch() is h  # patched already: the same handle
        for name in ("clip_grad_norm_", "clip_grad_value_", "get_total_norm", "clip_grads_with_norm_"):
            assert getattr(NU, name).__fusedclip_patch__ is h, name
            assert getattr(NU, name).__wrapped__ is getattr(fct, name)
        assert cg._get_total_norm.__wrapped__ is fct.get_total_norm
        assert cg._clip_grads_with_norm_.__wrapped__ is fct.clip_grads_with_norm_
        p = grad_param([3.0, 4.0])
        n = NU.clip_grad_norm_([p], 1.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            NU.clip_grad_norm([p], 10.0)  # torch's deprecated name calls the module's clip_grad_norm_
        assert n.item() == 5.0 and h.calls["clip_grad_norm_"] == 2
        assert NU.get_total_norm([p.grad]).item() == pytest.approx(1.0, rel=1e-6)
        NU.clip_grads_with_norm_([p], 0.5, torch.tensor(1.0))
        NU.clip_grad_value_([p], 0.1)
        assert h.calls == {"clip_grad_norm_": 2, "clip_grad_value_": 1, "get_total_norm": 1,
                           "clip_grads_with_norm_": 1}
    finally:
        fct.unpatch()
    assert originals() == ORIGINAL  # torch's own objects, exactly
    fct.unpatch()  # a second unpatch is a no-op
    with fct.patch() as h2:
        assert h2 is not h and h2.active
    assert originals() == ORIGINAL and not h2.active


class Sub(torch.Tensor):
    """A tensor subclass other than DTensor: fusedclip does not clip it."""


def sub_param(values):
    p = torch.nn.Parameter(torch.zeros(len(values)))
    p.grad = torch.tensor(values).as_subclass(Sub)
    return p


def test_patch_falls_back_to_torch_for_what_fusedclip_does_not_clip():
    with pytest.raises(fct.UnsupportedGradients, match="subclass"):
        fct.clip_grad_norm_([sub_param([3.0, 4.0])], 0.1)  # directly: a clear TypeError, nothing written
    ours, theirs = [sub_param([3.0, 4.0]), grad_param([0.0, 12.0])], [sub_param([3.0, 4.0]), grad_param([0.0, 12.0])]
    with fct.patch() as h:
        n = NU.clip_grad_norm_((p for p in ours), 0.1)  # a generator: read once, seen by both
        NU.clip_grad_value_(ours, 0.01)
    want = TORCH_CLIP(theirs, 0.1)
    torch.nn.utils.clip_grad_value_(theirs, 0.01)  # (unpatched now: torch's own)
    assert n.item() == want.item() == 13.0 and bits([p.grad for p in ours]) == bits([p.grad for p in theirs])
    assert h.fallbacks["clip_grad_norm_"] == 1 and h.fallbacks["clip_grad_value_"] == 1
    assert h.calls["clip_grad_norm_"] == 0
    emb = torch.nn.Embedding(5, 3, sparse=True)  # torch 2.13's own clip fails on sparse grads too
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(NotImplementedError):
        TORCH_CLIP(emb.parameters(), 0.1)
    with fct.patch():
        with pytest.raises(NotImplementedError):  # patched: what torch does
            NU.clip_grad_norm_(emb.parameters(), 0.1)
    with fct.patch(fallback=False):
        with pytest.raises(fct.UnsupportedGradients, match="sparse"):
            NU.clip_grad_norm_(emb.parameters(), 0.1)
    with fct.patch():  # deliberate differences stay: max_norm 0 is an error
        with pytest.raises(ValueError, match="max_norm"):
            NU.clip_grad_norm_([grad_param([1.0])], 0.0)
    with fct.patch():  # an empty generator warns once, as torch's
        with pytest.warns(UserWarning, match="empty generator") as w:
            NU.clip_grad_norm_((p for p in []), 1.0)
    assert len(w) == 1
