"""The non-finite policies' writes: the random step, and nothing written when a call raises."""
import math

import ml_dtypes
import numpy as np
import pytest
from conftest import CHUNK, DTYPE_IDS, DTYPES, assert_untouched, ref_norm, snapshot

import fusedclip as fc
from fusedclip.kernels import cpu

# ---------------------------------------------------------------- the random policy checks every buffer's rounded step before it writes
UNIT = {np.dtype(np.float64): 2.0**-53, np.dtype(np.float32): 2.0**-24,
        np.dtype(ml_dtypes.bfloat16): 2.0**-8, np.dtype(np.float16): 2.0**-11}


def test_random_step_too_large_for_float16_raises_and_writes_nothing():
    g = [np.ones(50, np.float32), np.full(1000, np.inf, np.float16), np.ones(3, np.float64)]
    snap = snapshot(g)
    c = fc.Clipper(g, 1e6, nonfinite="random", rng=0)
    with pytest.raises(ValueError, match=r"buffer 1 \(float16") as e:
        c()
    assert "max_norm" in str(e.value) and "'zero'" in str(e.value)
    assert_untouched(g, snap)
    c.max_norm = 10.0  # usable afterwards
    s = c()
    assert s.clipped and not s.finite
    assert np.isfinite(np.concatenate([b.astype(np.float64) for b in g])).all()
    assert abs(ref_norm(g) - 10.0) <= 4 * UNIT[np.dtype(np.float16)] * 10.0


def test_random_step_under_errstate_raise_writes_all_or_nothing():
    g = [np.ones(50, np.float32), np.full(1000, np.inf, np.float16)]
    snap = snapshot(g)
    with np.errstate(all="raise"):
        with pytest.raises(ValueError, match="buffer 1"):  # not a FloatingPointError halfway
            fc.Clipper(g, 1e6, nonfinite="random", rng=0)()
        assert_untouched(g, snap)  # buffer 0 used to be written first
        s = fc.Clipper(g, 2.0, nonfinite="random", rng=0)()
    assert s.clipped and s.nonfinite_buffers == (1,)
    assert abs(ref_norm(g) - 2.0) <= 4 * UNIT[np.dtype(np.float16)] * 2.0


def test_random_step_too_small_for_float16_raises_and_writes_nothing():
    g = [np.ones(3, np.float32), np.full(1000, np.nan, np.float16)]
    snap = snapshot(g)
    with pytest.raises(ValueError, match=r"buffer 1 is float16"):
        fc.Clipper(g, 1e-9, nonfinite="random", rng=0)()
    assert_untouched(g, snap)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("p", [1.0, 2.0, math.inf, 3.0])
def test_random_step_has_the_promised_norm(dtype, p):
    g = [np.ones((3, 5), dtype), np.full(2 * cpu.CHUNK + 9, np.nan, dtype)]
    s = fc.Clipper(g, 0.5, p, nonfinite="random", rng=3)()
    assert s.clipped and not s.finite and s.scale == 0.0
    assert abs(ref_norm(g, p) - 0.5) <= (4 * UNIT[np.dtype(dtype)] + 1e-12) * 0.5


# ---------------------------------------------------------------- no writes when a replacing policy's call raises
def _nan_grads():
    rng = np.random.default_rng(5)
    g = [rng.standard_normal(40) * 10, rng.standard_normal(CHUNK + 3).astype(np.float32),
         rng.standard_normal(9).astype(ml_dtypes.bfloat16)]
    g[0][3] = np.nan
    g[1][7] = np.inf
    return g


def _read_only(n=5):
    ro = np.ones(n)
    ro.flags.writeable = False
    return ro


RAISING = {
    "read-only": (lambda g: g + [_read_only()], ValueError, "read-only"),
    "overlap": (lambda g: g + [g[0][10:20]], ValueError, "overlap"),
    "dtype": (lambda g: g + [np.ones(3, np.int32)], TypeError, "buffer 3"),
    "not-array": (lambda g: g + [[1.0, 2.0]], TypeError, "buffer 3"),
}


@pytest.mark.parametrize("policy", ["zero", "random", "propagate"])
@pytest.mark.parametrize("case", RAISING)
def test_replacing_policies_write_nothing_when_the_call_raises(policy, case):
    make, exc, needle = RAISING[case]
    g = _nan_grads()
    bufs = make(g)
    arrays = [b for b in bufs if isinstance(b, np.ndarray)]
    snap = snapshot(arrays)
    with pytest.raises(exc, match=needle):
        fc.clip_grad_norm_(bufs, 1.0, nonfinite=policy, rng=1)
    with pytest.raises(exc, match=needle):
        fc.Clipper(bufs, 1.0, nonfinite=policy, rng=1)()
    assert_untouched(arrays, snap)
    # the control: without the bad buffer, the same policy does write
    fc.clip_grad_norm_(g, 1.0, nonfinite=policy, rng=1)
    assert not all(np.asarray(a).tobytes() == s for a, s in zip(g, snap))


@pytest.mark.parametrize("policy", ["zero", "random"])
def test_replacing_policies_with_bad_scalars_write_nothing(policy):
    g = _nan_grads()
    snap = snapshot(g)
    for kw, exc in [(dict(max_norm=-1.0), ValueError), (dict(max_norm=1.0, norm_type=0.0), ValueError),
                    (dict(max_norm=1.0, num_threads=0), ValueError),
                    (dict(max_norm=1.0, rng="seed"), TypeError if policy == "random" else None)]:
        if exc is None:
            continue
        with pytest.raises(exc):
            fc.clip_grad_norm_(g, nonfinite=policy, **kw)
    assert_untouched(g, snap)
