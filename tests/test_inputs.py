"""What the functions accept as buffers and arguments: a lone buffer is a list of one, numpy
scalars are read but never written, a bad rng is refused before any write."""
# ---------------------------------------------------------------- a lone buffer is a list of one; rng arguments
# A lone object with the buffer protocol (memoryview, bytearray, array.array,
# bytes) is one buffer, exactly as it is inside a list: iterating it would
# report "buffer 0 is a float" (or an int) for what is one array.
import array  # noqa: E402

import ml_dtypes
import numpy as np
import pytest
from conftest import assert_untouched, ref_norm, snapshot
from helpers import WIDS, WRITERS, good, grads

import fusedclip as fc


@pytest.mark.parametrize("make", [lambda v: array.array("d", v), lambda v: array.array("f", v),
                                  lambda v: memoryview(np.array(v)),
                                  lambda v: memoryview(np.array(v, np.float32)).cast("B").cast("f")],
                         ids=["array-d", "array-f", "memoryview", "memoryview-cast"])
def test_a_lone_float_buffer_is_one_buffer_read_and_clipped_in_place(make):
    obj = make([3.0, 4.0])
    assert fc.global_norm(obj) == 5.0 == fc.global_norm([obj])
    assert fc.clip_grad_norm_(obj, 1.0) == 5.0
    np.testing.assert_allclose(np.asarray(obj), [0.6, 0.8], rtol=1e-6)  # written in place
    assert list(fc.buffer_norms(make([3.0, 4.0]))) == [5.0]


@pytest.mark.parametrize("make,dtype", [(lambda: bytearray(b"abcd"), "uint8"), (lambda: b"abcd", "uint8"),
                                        (lambda: array.array("i", [1, 2]), "int32"),
                                        (lambda: memoryview(bytearray(8)), "uint8")],
                         ids=["bytearray", "bytes", "array-i", "memoryview-bytes"])
@pytest.mark.parametrize("name,call", [("global_norm", lambda b: fc.global_norm(b)),
                                       ("clip_grad_norm_", lambda b: fc.clip_grad_norm_(b, 1e-3)),
                                       ("Clipper", lambda b: fc.Clipper(b, 1e-3)())], ids=lambda x: x
                         if isinstance(x, str) else "")
def test_a_lone_non_float_buffer_is_a_dtype_error_as_in_a_list(make, dtype, name, call):
    for wrap in (lambda o: o, lambda o: [o]):  # alone, and in a list: the same error
        obj = make()
        before = bytes(memoryview(obj).cast("B"))
        with pytest.raises(TypeError) as e:
            call(wrap(obj))
        msg = str(e.value)
        assert "buffer 0" in msg and dtype in msg and "is a int" not in msg, msg
        assert bytes(memoryview(obj).cast("B")) == before


def test_a_lone_buffer_for_clip_unitwise_():
    W, G = array.array("d", [1.0, 0.0]), array.array("d", [3.0, 4.0])
    fc.clip_unitwise_(W, G, 0.1)  # ||G|| / ||W|| = 5 > 0.1: G <- G * 0.1 * 1 / 5
    np.testing.assert_allclose(list(G), [0.06, 0.08], rtol=1e-12)
    assert list(W) == [1.0, 0.0]


def test_str_and_a_list_of_floats_are_still_refused():
    with pytest.raises(TypeError, match="expected an array or a list"):
        fc.global_norm("abc")
    with pytest.raises(TypeError, match="buffer 0 is a float"):
        fc.global_norm([1.0, 2.0])


# rng: a Generator, a non-negative int seed, a SeedSequence or None.  -1
# got numpy's bare "expected non-negative integer" and True was seed 1.
def _bad_grads():
    g = grads()
    g[1][0, 0] = np.inf  # "random" would replace this buffer
    return g


RNG_CALLS = [
    ("clip_grad_norm_", lambda g, r: fc.clip_grad_norm_(g, 1.0, nonfinite="random", rng=r)),
    ("Clipper", lambda g, r: fc.Clipper(g, 1.0, nonfinite="random", rng=r)()),
    ("clip_by_norm_", lambda g, r: fc.clip_by_norm_(g, 1.0, nonfinite="random", rng=r)),
]


def _switch(g, r):
    c = fc.Clipper(g, 1.0, nonfinite="skip", rng=r)
    try:
        c.nonfinite = "random"
    except (TypeError, ValueError):
        assert c.nonfinite == "skip"  # a refused assignment changes nothing
        raise
    c()


@pytest.mark.parametrize("name,call", RNG_CALLS + [("Clipper.nonfinite", _switch)],
                         ids=lambda x: x if isinstance(x, str) else "")
@pytest.mark.parametrize("bad,exc", [(-1, ValueError), (np.int64(-7), ValueError), (-(2**70), ValueError),
                                     (True, TypeError), (False, TypeError), (np.bool_(True), TypeError),
                                     (1.5, TypeError), ("seed", TypeError)], ids=repr)
def test_a_bad_rng_is_refused_naming_rng_before_any_write(name, call, bad, exc):
    g = _bad_grads()
    snap = snapshot(g)
    with pytest.raises(exc) as e:
        call(g, bad)
    msg = str(e.value)
    assert "rng" in msg and "Generator" in msg and "seed" in msg, msg
    assert_untouched(g, snap)


@pytest.mark.parametrize("good", [0, 2**70, np.int64(3), None, np.random.SeedSequence(4),
                                  np.random.default_rng(5)], ids=repr)
def test_good_rngs_are_accepted(good):
    for name, call in RNG_CALLS:
        g = _bad_grads()
        call(g, good)
        assert np.isfinite(g[1]).all(), name  # the bad buffer was replaced


# ---------------------------------------------------------------- numpy scalars
SCALARS = [np.float32(5.0), np.float64(5.0), np.float16(5.0), ml_dtypes.bfloat16(5.0)]


@pytest.mark.parametrize("name,call", WRITERS, ids=WIDS)
@pytest.mark.parametrize("x", SCALARS, ids=lambda x: type(x).__name__)
def test_numpy_scalar_is_rejected_by_writers(name, call, x):
    bufs = good()
    snap = snapshot(bufs)
    with pytest.raises(TypeError) as e:
        call(bufs + [x])
    msg = str(e.value)
    assert "buffer 2" in msg and "numpy scalar" in msg and "np.array" in msg and name in msg
    assert_untouched(bufs, snap)
    assert x == 5.0


def test_global_norm_reads_a_numpy_scalar():
    # never writes, so a numpy scalar is just a value to measure
    bufs = good()
    assert fc.global_norm(bufs + [np.float32(5.0)]) == pytest.approx(
        ref_norm(bufs + [np.float32(5.0)]), rel=1e-14)


def test_zero_d_arrays_are_still_clipped_in_place():
    x = np.array(5.0, np.float32)
    assert fc.clip_grad_norm_(x, 1.0) == 5.0
    assert x == np.float32(1.0)
