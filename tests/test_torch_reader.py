"""How fusedclip.torch reads tensors and makes its result (``_torchread``):
the three readers agree with torch's accessors on every layout, the handles
taken in place are checked before use, and the norm tensor made in C is
torch.scalar_tensor's, bit for bit, owned once.

The readers: torch's AOTI C shim over each tensor's own ``at::Tensor`` field
(no handle made: the default where this torch holds that field by value),
the shim over handles made per call by ``torch._C._aoti``, and torch's
Python accessors called from C.  The guard-page tests
(tests/test_torch_guard.py) run the whole clip under each of them.
"""
import math
import sys
import weakref

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

import fusedclip.torch as fct  # noqa: E402
from fusedclip import _torchread as tr  # noqa: E402

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16, torch.int32, torch.complex64]
OFF = tr.cdata_offset()


@pytest.fixture
def reader():
    """Switch readers (``reader("inplace" | "handles" | "accessors")``),
    restoring the installed one afterwards."""
    def use(name):
        if name == "accessors":
            tr.use_aoti(None)
        else:
            tr.use_aoti(*fct._AOTI_ARGS, OFF if name == "inplace" else -1)

    yield use
    tr.use_aoti(*fct._AOTI_ARGS, OFF) if fct._AOTI_ARGS else tr.use_aoti(None)


def test_torch_2_13_is_read_in_place_and_its_results_made_in_c():
    """The torch the suite pins holds a tensor's at::Tensor by value right
    after the object header: the default reader takes the handles there,
    and the result is made in C; so the fast path the bars measure is the
    one tested here."""
    if not torch.__version__.startswith("2.13."):
        pytest.skip(f"the layout is pinned down for torch 2.13 only (this is {torch.__version__})")
    assert OFF == object.__basicsize__, fct.READER
    assert tr.making_results(), fct.READER
    assert "handles in place" in fct.READER and "made in C" in fct.READER


def test_the_in_place_field_is_checked_against_made_handles():
    """cdata_matches: the field at the offset is the TensorImpl a made handle
    holds, for plain tensors and Parameters; anywhere else it is not, and
    the installer would then make handles per call."""
    if not fct._AOTI_ARGS:
        pytest.skip(fct.READER)
    tr.use_aoti(*fct._AOTI_ARGS, -1)
    try:
        p = torch.nn.Parameter(torch.ones(3))
        p.grad = torch.ones(3)
        ts = [torch.zeros(5), torch.arange(10.0)[2:], p, p.grad, torch.zeros((), dtype=torch.float16)]
        assert tr.cdata_matches(ts, object.__basicsize__) == (OFF >= 0)
        for off in (object.__basicsize__ + 8, object.__basicsize__ + 16, 0, 8):
            assert not tr.cdata_matches(ts, off)
        assert not tr.cdata_matches([], object.__basicsize__)
    finally:
        tr.use_aoti(*fct._AOTI_ARGS, OFF)


@st.composite
def tensors(draw):
    dt = draw(st.sampled_from(DTYPES))
    shape = draw(st.lists(st.integers(0, 5), min_size=0, max_size=3))
    t = torch.zeros(shape, dtype=dt)
    kind = draw(st.sampled_from(["plain", "slice", "transpose", "param", "grad", "requires_grad", "expand"]))
    if kind == "slice" and t.dim() and t.shape[0] > 1:
        t = t[1:]
    elif kind == "transpose" and t.dim() >= 2:
        t = t.transpose(0, 1)
    elif kind == "param" and dt.is_floating_point:
        t = torch.nn.Parameter(t)
    elif kind == "grad" and dt.is_floating_point:
        p = torch.nn.Parameter(torch.zeros_like(t))
        p.grad = t
        t = p.grad
    elif kind == "requires_grad" and dt.is_floating_point:
        t = t.requires_grad_()
    elif kind == "expand" and t.dim():
        t = t[:1].expand(t.shape) if t.shape[0] else t
    return t


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(tensors(), min_size=1, max_size=6))  # (the fixture only switches readers)
def test_the_three_readers_read_every_layout_alike(reader, items):
    """The same record, addresses and verdict (simple or not) from each
    reader, over dtypes, shapes, views, Parameters, grads and strides."""
    if not fct._AOTI_ARGS:
        pytest.skip(fct.READER)
    got = {}
    for name in ("inplace", "handles", "accessors") if OFF >= 0 else ("handles", "accessors"):
        reader(name)
        got[name] = tr.read_tensors(items, False)
    want = got.pop("accessors")
    for name, g in got.items():
        assert g[3] == want[3], name
        if want[3] >= 0:
            assert np.array_equal(g[1], want[1]) and np.array_equal(g[2], want[2]), name
            assert all(a is b for a, b in zip(g[0], want[0])), name


def test_the_readers_clip_alike(reader):
    """A clip through each reader writes the same grads and returns the same
    norm (the reader changes nothing but how the layout is read)."""
    torch.manual_seed(0)
    base = [torch.randn(n) * 3 for n in (7, 100, 1, 33)] + [torch.randn(4, 5, dtype=torch.float64)]
    out = {}
    for name in ("inplace", "handles", "accessors") if OFF >= 0 else ("accessors",):
        ps = []
        for b in base:
            p = torch.nn.Parameter(torch.zeros_like(b))
            p.grad = b.clone()
            ps.append(p)
        reader(name)
        n = fct.clip_grad_norm_(ps, 1.0)
        out[name] = (n.item(), [p.grad.clone() for p in ps])
    ref = math.sqrt(math.fsum(float(x) ** 2 for b in base for x in b.double().ravel()))
    for name, (n, gs) in out.items():
        assert n == pytest.approx(ref, rel=1e-12), name
        assert all(torch.equal(a, b) for a, b in zip(gs, out["accessors"][1])), name
        assert not all(torch.equal(a, b) for a, b in zip(gs, base)), name  # it did clip


VALUES = [0.0, -0.0, 1.5, 0.1, 2.0 ** -149, 2.0 ** -150, 5e-324, 1e-40, 3.4028234663852886e38,
          3.4028235e38, 3.5e38, 1e300, math.inf, math.nan]


@pytest.mark.parametrize("mask", range(1, 16))
def test_the_result_is_torchs_scalar_tensor_bit_for_bit(mask):
    """For every set of gradient dtypes: the dtype torch promotes them to,
    the value rounded once, a plain leaf CPU tensor owned once, or
    torch.scalar_tensor's RuntimeError for a finite value beyond float32
    (the caller rounds it to inf, as before)."""
    d = fct._RESULT_DTYPE[mask]
    for x in VALUES + [float(v) for v in np.random.default_rng(mask).standard_normal(50) * 1e3]:
        try:
            want = torch.scalar_tensor(x, dtype=d, device="cpu")
        except RuntimeError as e:
            with pytest.raises(RuntimeError, match=str(e)[:30]):
                tr.result_tensor(x, mask)
            continue
        got = tr.result_tensor(x, mask)
        assert type(got) is torch.Tensor and got.dtype is d and got.device.type == "cpu"
        assert got.shape == () and not got.requires_grad and got.grad_fn is None and got.is_leaf
        assert got.reshape(1).view(torch.uint8).tolist() == want.reshape(1).view(torch.uint8).tolist(), x
        assert got._use_count() == want._use_count() == 1  # the handle was deleted: only Python owns it
        assert sys.getrefcount(got) == sys.getrefcount(want)
        got.add_(1.0)  # an ordinary tensor: writable, its own storage
        assert got._version == 1


def test_results_made_in_c_are_freed():
    r = tr.result_tensor(2.5, 2)
    w = weakref.ref(r)
    del r
    assert w() is None


def test_the_result_falls_back_to_torch_scalar_tensor():
    """use_result() (as where this torch lacks the C maker): the same
    tensors, through torch.scalar_tensor."""
    try:
        tr.use_result()
        assert not tr.making_results()
        t = tr.result_tensor(1.25, 2)
        assert t.dtype is torch.float32 and t.item() == 1.25
        p = torch.nn.Parameter(torch.zeros(3))
        p.grad = torch.full((3,), 4.0)
        assert fct.clip_grad_norm_([p], 1.0).item() == pytest.approx(math.sqrt(48))
    finally:
        tr.use_result(*fct._RESULT_ARGS)
    assert tr.making_results() == ("made in C" in fct.READER)


@pytest.mark.parametrize("clips", [True, False])
def test_each_written_grad_is_bumped_once_through_every_entry(clips):
    """clip_grad_norm_, Clipper and clip_grads_with_norm_ tell autograd of
    a write exactly once per grad, and only when they wrote."""
    v = 1.0 if clips else 1e9
    for call in (lambda ps: fct.clip_grad_norm_(ps, v), lambda ps: fct.Clipper(ps, v)(),
                 lambda ps: fct.clip_grads_with_norm_(ps, 1.0, 100.0 if clips else 0.5)):
        ps = [torch.nn.Parameter(torch.zeros(n)) for n in (3, 40, 1)]
        for p in ps:
            p.grad = torch.full_like(p, 7.0)
        call(ps)
        assert [p.grad._version for p in ps] == [int(clips)] * 3


# ------------------------------------------------------------ found by an adversarial review
class _NoData(torch.Tensor):
    """A wrapper subclass: a storage of any claimed size and no memory."""

    @staticmethod
    def __new__(cls, n, off):
        return torch.Tensor._make_wrapper_subclass(cls, (n,), (1,), off, dtype=torch.float32,
                                                   storage_size=(off + n) * 4)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise NotImplementedError(str(func))


def _no_memory_tensors(victim):
    """Tensors of exact type torch.Tensor with elements but no memory under
    their storage: their data pointer is their offset (an address the
    caller chooses: here, the victim's)."""
    w = _NoData(8, victim.data_ptr() // 4)
    w.__class__ = torch.Tensor
    x = torch.ones(4096)
    return [w, torch._to_functional_tensor(x[1024:]), torch._to_functional_tensor(x[:8])]


@pytest.mark.parametrize("which", range(3))
@pytest.mark.parametrize("reader_name", ["inplace", "handles", "accessors"])
def test_tensors_without_memory_are_refused_and_nothing_is_touched(reader, reader_name, which):
    if reader_name != "accessors" and (OFF < 0 and reader_name == "inplace" or not fct._AOTI_ARGS):
        pytest.skip(fct.READER)
    reader(reader_name)
    victim = torch.full((8,), 7.0)
    g = _no_memory_tensors(victim)[which]
    assert type(g) is torch.Tensor
    p = torch.nn.Parameter(torch.zeros(g.shape))
    p.grad = g
    calls = [lambda: fct.clip_grad_norm_([p], 1e-3), lambda: fct.clip_grad_value_([p], 0.5),
             lambda: fct.get_total_norm([g]), lambda: fct.clip_grads_with_norm_([p], 1.0, 100.0),
             lambda: fct.Clipper([p], 1e-3)()]
    for call in calls:
        with pytest.raises(fct.UnsupportedGradients, match="no memory of its own"):
            call()
    assert victim.tolist() == [7.0] * 8


def test_under_patch_functionalize_gets_torchs_answer():
    with fct.patch() as h:
        got = torch.func.functionalize(lambda x: torch.nn.utils.get_total_norm([x[1024:]]))(torch.ones(4096))
    assert got.item() == pytest.approx(math.sqrt(3072)) and h.fallbacks


def test_a_grad_getter_that_changes_the_list_reads_the_list_as_called():
    params = []

    class Odd:  # a parameter-like object (its grad None) whose getter empties the caller's list
        @property
        def grad(self):
            params.clear()
            [bytearray(1600) for _ in range(50)]  # (reuse what was freed)
            return None

    params[:] = [Odd()] + [torch.nn.Parameter(torch.ones(4)) for _ in range(200)]
    for p in params[1:]:
        p.grad = torch.ones(4)
    kept = list(params)
    assert fct.clip_grad_norm_(params, 1e9).item() == pytest.approx(math.sqrt(800))
    assert all(p.grad.tolist() == [1.0] * 4 for p in kept[1:])


def test_a_dispatch_mode_sees_torchs_function_or_nothing_is_modified():
    """fusedclip's kernels bypass TorchDispatchModes (FakeTensorMode,
    FlopCounterMode, a mode that refuses): under one the call is refused
    before anything is read or written, and under patch() torch's own
    function runs, so the mode sees it."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Deny(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            raise KeyError(f"denied {func}")

    p = torch.nn.Parameter(torch.ones(4))
    p.grad = torch.full((4,), 3.0)
    for call in (lambda: fct.clip_grad_norm_([p], 1.0), lambda: fct.clip_grad_value_([p], 1.0),
                 lambda: fct.get_total_norm([p.grad]), lambda: fct.clip_grads_with_norm_([p], 1.0, 6.0),
                 lambda: fct.Clipper([p], 1.0)()):
        with Deny(), pytest.raises(fct.UnsupportedGradients, match="TorchDispatchMode is active"):
            call()
        assert p.grad.tolist() == [3.0] * 4
    with fct.patch() as h, Deny(), pytest.raises(KeyError, match="denied"):
        torch.nn.utils.clip_grad_norm_([p], 1.0)
    assert h.fallbacks
    with Deny(), pytest.raises(KeyError, match="denied"):  # the mode's error, not a SystemError
        tr.result_tensor(1.5, 2)
    assert fct.clip_grad_norm_([p], 1.0).item() == pytest.approx(6.0)  # and with no mode: clipped
