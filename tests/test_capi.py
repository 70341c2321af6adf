"""The C-level API (``cimport fusedclip.capi``), through an extension built here.

tests/capi_example/ is a third-party extension: it cimports fusedclip.capi
(and the chunk-table API of fusedclip.kernels.cpu) and calls them inside
``with nogil:``.  It is compiled once per session against the fusedclip that
this interpreter imports (the installed package, or the editable tree).
"""
import math
import os
import shutil
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

import fusedclip as fc
from conftest import CHUNK, DTYPE_IDS, DTYPES, assert_untouched, ref_norm, rel, scaled, snapshot

pytest.importorskip("Cython", minversion="3.1")  # in the [test] extra
HERE = os.path.dirname(os.path.abspath(__file__))
PS = [1.0, 2.0, math.inf, 3.0, 0.5]
TOL = {1.0: 1e-13, 2.0: 1e-13, math.inf: 0.0}


@pytest.fixture(scope="module")
def ce(tmp_path_factory):
    d = tmp_path_factory.mktemp("capi_example")
    for f in ("capi_example.pyx", "setup.py"):
        shutil.copy(os.path.join(HERE, "capi_example", f), d)
    r = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=d,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    sys.path.insert(0, str(d))
    try:
        import capi_example
    finally:
        sys.path.remove(str(d))
    # it calls into the fusedclip this process imported
    assert sys.modules["fusedclip.capi"].__file__.startswith(os.path.dirname(fc.__file__))
    return capi_example


def sumsq_ref(a):
    x = np.asarray(a).astype(np.float64).ravel()
    return math.fsum(x * x)


def mixed(rng, counts):
    """Buffers of every dtype and of sizes around the chunk boundary."""
    sizes = [1, 7, 1000, CHUNK, CHUNK + 3, 3 * CHUNK + 11]
    out = []
    for i in range(counts):
        dt = DTYPES[i % 4]
        out.append((rng.standard_normal(sizes[i % len(sizes)]) * 3).astype(dt))
    return out


def test_constants_are_the_kernels(ce):
    from fusedclip import capi
    from fusedclip.kernels import cpu

    assert ce.DTYPE_CODES == {"float64": cpu.F64, "float32": cpu.F32,
                              "bfloat16": cpu.BF16, "float16": cpu.F16}
    assert (ce.FLAG_NAN, ce.FLAG_INF) == (cpu.HAS_NAN, cpu.HAS_INF)
    assert ce.VERSION == capi.VERSION == 2  # 2: fc_clamp, fc_clip_grad_norm_eps
    assert {"FC_" + k: v for k, v in ce.STATUS.items()} == capi.STATUS
    for v in capi.STATUS.values():
        assert ce.status_message(v) == capi.status_message(v) != "unknown status"
    assert os.path.isfile(os.path.join(fc.get_include(), "simd.h"))
    assert os.path.isfile(os.path.join(os.path.dirname(fc.__file__), "capi.pxd"))


@pytest.mark.parametrize("count", [0, 1, 3, 6, 17])
@pytest.mark.parametrize("p", PS)
def test_global_norm_matches_reference_and_python_api(ce, count, p, rng):
    bufs = mixed(rng, count)
    rc, norm, flags, bf = ce.PointerTable(bufs).global_norm(p)
    assert (rc, flags, bf) == (0, 0, [0] * count)
    assert rel(norm, ref_norm(bufs, p)) <= TOL.get(p, 1e-12)
    assert norm == fc.global_norm(bufs, p)  # the same table and combine: the same bits


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_bitwise_identical_for_any_thread_count(ce, dtype, rng):
    bufs = [(rng.standard_normal(n) * 5).astype(dtype) for n in (5 * CHUNK + 1, 77, 2 * CHUNK)]
    t = ce.PointerTable(bufs)
    for p in PS:
        got = {t.global_norm(p, nt)[1] for nt in (0, 1, 2, 3, 8)}
        assert got == {fc.global_norm(bufs, p, num_threads=1)}, p


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("n", [0, 1, 31, CHUNK - 1, 4 * CHUNK + 5])
def test_sumsq_per_dtype(ce, dtype, n, rng):
    a = (rng.standard_normal(n) * 7).astype(dtype)
    rc, s, flags = ce.sumsq(a)
    assert (rc, flags) == (0, 0)
    assert rel(s, sumsq_ref(a)) <= 1e-13
    rc1, s1, _ = ce.sumsq(a, 1)
    assert s1 == s
    if n:
        assert rel(math.sqrt(s), fc.global_norm(a)) <= 1e-15


def test_sumsq_float64_beyond_range_and_tiny(ce):
    big = np.full(CHUNK + 2, 1e200)  # each square overflows; the chunks are rescaled
    rc, s, flags = ce.sumsq(big)
    assert (rc, s, flags) == (0, math.inf, 0)  # the true sum, 3e404, is beyond float64: inf, no flags
    mid = np.full(10, 1e150)  # squares fit, no rescue
    assert rel(ce.sumsq(mid)[1], 1e301) <= 1e-15
    tiny = np.full(1000, 1e-160)  # squares below 2^-1022 are rescaled, the sum is 1e-317
    rc, s, flags = ce.sumsq(tiny)
    assert flags == 0 and rel(s, 1e-317) <= 1e-3  # subnormal result: ~1e-3 relative at 1e-317


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_non_finite_flags_per_buffer(ce, dtype, rng):
    bufs = [rng.standard_normal(n).astype(dtype) for n in (10, CHUNK + 9, 5, 100)]
    bufs[1][CHUNK + 4] = np.inf
    bufs[3][7] = np.nan
    for p in PS:
        rc, norm, flags, bf = ce.PointerTable(bufs).global_norm(p)
        assert rc == 0 and math.isnan(norm)
        assert flags == ce.FLAG_NAN | ce.FLAG_INF
        assert bf == [0, ce.FLAG_INF, 0, ce.FLAG_NAN]
    bufs[3][7] = 1.0
    rc, norm, flags, bf = ce.PointerTable(bufs).global_norm(2.0)
    assert (rc, norm, flags, bf) == (0, math.inf, ce.FLAG_INF, [0, ce.FLAG_INF, 0, 0])
    bufs[0][0] = -np.inf
    rc, s, flags = ce.sumsq(bufs[0])
    assert (rc, s, flags) == (0, math.inf, ce.FLAG_INF)
    bufs[0][1] = np.nan
    rc, s, flags = ce.sumsq(bufs[0])
    assert rc == 0 and math.isnan(s) and flags == ce.FLAG_NAN | ce.FLAG_INF


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_scale_and_zero_in_place(ce, dtype, rng):
    bufs = [(rng.standard_normal(n) * 4).astype(dtype) for n in (3, CHUNK + 1, 5 * CHUNK)]
    before = [b.copy() for b in bufs]
    t = ce.PointerTable(bufs)
    assert t.scale(0.3) == 0
    for b, o in zip(bufs, before):
        np.testing.assert_array_equal(b, scaled(o, 0.3))
    assert t.zero() == 0
    for b in bufs:
        assert not b.any()


@pytest.mark.parametrize("p", PS)
def test_clip_is_clip_grad_norm_(ce, p, rng):
    bufs = mixed(rng, 8)
    mine = [b.copy() for b in bufs]
    want = fc.clip_grad_norm_(bufs, 1.0, p)
    rc, norm, s, flags = ce.PointerTable(mine).clip(1.0, p)
    assert (rc, flags) == (0, 0)
    assert norm == want and s == 1.0 / norm
    for a, b in zip(mine, bufs):  # bitwise the Python API's result
        assert a.tobytes() == b.tobytes()


def test_clip_writes_nothing_when_not_needed_or_non_finite(ce, rng):
    bufs = mixed(rng, 6)
    t = ce.PointerTable(bufs)
    snap = snapshot(bufs)
    n = fc.global_norm(bufs)
    assert t.clip(n) == (0, n, 1.0, 0)  # norm == max_norm: no clip
    assert t.clip(math.inf) == (0, n, 1.0, 0)  # inf: measure, never clip
    assert_untouched(bufs, snap)
    bufs[2][3] = np.nan
    snap = snapshot(bufs)
    rc, norm, s, flags = t.clip(1e-3)
    assert rc == 0 and math.isnan(norm) and s == 1.0 and flags == ce.FLAG_NAN
    assert_untouched(bufs, snap)


def test_clip_where_the_norm_is_beyond_float64(ce):
    # finite values whose norm (~3.4e308 * 2) overflows: the scale is still right
    bufs = [np.full(4, 1.7e308), np.full(4, -1.7e308)]
    mine = [b.copy() for b in bufs]
    want = fc.clip_grad_norm_(bufs, 1.0)
    rc, norm, s, flags = ce.PointerTable(mine).clip(1.0)
    assert (rc, norm, flags) == (0, math.inf, 0) and want == math.inf
    assert 0.0 < s < 1e-300
    for a, b in zip(mine, bufs):
        assert a.tobytes() == b.tobytes()
    assert rel(ref_norm(mine), 1.0) <= 1e-12


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_clamp_is_clip_grad_value_(ce, dtype, rng):
    bufs = [(rng.standard_normal(n) * 4).astype(dtype) for n in (3, CHUNK + 1, 2 * CHUNK)]
    bufs[0][:3] = [np.inf, -np.inf, np.nan]
    mine = [b.copy() for b in bufs]
    before = [b.copy() for b in bufs]
    fc.clip_grad_value_(bufs, 1.5)
    assert ce.PointerTable(mine).clamp(1.5) == 0
    for a, b in zip(mine, bufs):  # bitwise the Python API's result
        assert a.tobytes() == b.tobytes()
    assert mine[1].tobytes() != before[1].tobytes()  # something was clamped
    assert float(np.abs(mine[1].astype(np.float64)).max()) <= 1.5


def test_clip_eps_is_torchs_rule(ce, rng):
    """fc_clip_grad_norm_eps: clip when norm + eps > max_norm, by
    max_norm / (norm + eps); eps 0 is fc_clip_grad_norm."""
    x = np.array([3.0, 4.0])
    for max_norm, clips in ((5.0, True), (5.0 + 0.5e-6, True), (5.0 + 2e-6, False)):
        a = x.copy()
        rc, norm, s, flags = ce.PointerTable([a]).clip_eps(max_norm, 1e-6)
        assert (rc, norm, flags) == (0, 5.0, 0)
        want = max_norm / (5.0 + 1e-6) if clips else 1.0
        assert s == want and a.tobytes() == (scaled(x, want) if clips else x).tobytes()
    bufs = mixed(rng, 6)
    mine = [b.copy() for b in bufs]
    assert ce.PointerTable(bufs).clip(0.5) == ce.PointerTable(mine).clip_eps(0.5, 0.0)
    for a, b in zip(mine, bufs):
        assert a.tobytes() == b.tobytes()
    good = ce.PointerTable(bufs)
    snap = snapshot(bufs)
    for eps in (-1e-6, math.nan, math.inf):
        assert good.clip_eps(1e-3, eps)[0] == ce.STATUS["EMAXNORM"]
    for v in (-1.0, math.nan):
        assert good.clamp(v) == ce.STATUS["EMAXNORM"]
    assert_untouched(bufs, snap)


def test_chunk_table_api_still_works(ce, rng):
    a = rng.standard_normal(3 * CHUNK + 5).astype(np.float32)
    assert ce.chunk_table_l2(a) == (fc.global_norm(a), 0)


def test_empty_buffers_need_no_pointer_or_dtype(ce, rng):
    a = rng.standard_normal(10)
    t = ce.PointerTable(None, ptrs=[0, a.ctypes.data, 12345], sizes=[0, 10, 0], dtypes=[99, 0, -1])
    rc, norm, flags, bf = t.global_norm(2.0)
    assert (rc, flags, bf) == (0, 0, [0, 0, 0]) and norm == fc.global_norm(a)
    assert ce.sumsq_raw(0, 0, 0) == (0, 0.0, 0)


def _bad_tables(ce, bufs):
    """(expected status, PointerTable) for every argument error."""
    P = [b.ctypes.data for b in bufs]
    S = [b.size for b in bufs]
    D = [ce.DTYPE_CODES[b.dtype.name] for b in bufs]
    st = ce.STATUS
    yield st["ECOUNT"], ce.PointerTable(None, P, [S[0], -1, S[2]], D)
    yield st["ECOUNT"], ce.PointerTable(None, P, S, D, nbuf=-1)
    yield st["ECOUNT"], ce.PointerTable(None, P, S, D, nbuf=2 ** 31)
    yield st["EDTYPE"], ce.PointerTable(None, P, S, [D[0], D[1], 4])
    yield st["EDTYPE"], ce.PointerTable(None, P, S, [-1, D[1], D[2]])
    yield st["ENULL"], ce.PointerTable(None, [P[0], 0, P[2]], S, D)
    yield st["EALIGN"], ce.PointerTable(None, [P[0], P[1], P[2] + 2], [S[0], S[1], S[2] - 1], D)


def test_errors_write_nothing(ce, rng):
    bufs = [rng.standard_normal(100) * 10, (rng.standard_normal(CHUNK + 1) * 10).astype(np.float32),
            (rng.standard_normal(50) * 10).astype(np.float32)]
    snap = snapshot(bufs)
    st = ce.STATUS
    for want, t in _bad_tables(ce, bufs):
        assert t.global_norm(2.0)[0] == want
        assert t.global_norm(2.0)[1:3] == (-1.0, -1)  # outputs not written
        assert t.scale(0.5) == want
        assert t.zero() == want
        assert t.clip(1e-3) == (want, -1.0, -1.0, -1)
        assert t.clip_eps(1e-3, 1e-6) == (want, -1.0, -1.0, -1)
        assert t.clamp(1e-3) == want
    good = ce.PointerTable(bufs)
    for p in (0.0, -1.0, math.nan, -math.inf):
        assert good.global_norm(p)[0] == st["ENORMTYPE"]
        assert good.clip(1e-3, p)[0] == st["ENORMTYPE"]
    for v in (0.0, -1.0, math.nan):
        assert good.clip(v)[0] == st["EMAXNORM"]
    assert ce.sumsq_raw(bufs[1].ctypes.data, -1, 1)[0] == st["ECOUNT"]
    assert ce.sumsq_raw(bufs[1].ctypes.data, 10, 7)[0] == st["EDTYPE"]
    assert ce.sumsq_raw(0, 10, 1)[0] == st["ENULL"]
    assert ce.sumsq_raw(bufs[1].ctypes.data + 1, 10, 1)[0] == st["EALIGN"]
    assert ce.sumsq_raw(bufs[1].ctypes.data + 1, 10, 1)[1:] == (-1.0, -1)
    assert_untouched(bufs, snap)


def test_bfloat16_and_float16_bits(ce):
    # the 16-bit entry points take raw uint16 bits: every finite pattern's square, exactly
    for dt in (ml_dtypes.bfloat16, np.float16):
        bits = np.arange(1 << 16, dtype=np.uint16)
        v = bits.view(dt)
        with np.errstate(invalid="ignore"):
            a = v[np.isfinite(v.astype(np.float64))].copy()
        rc, s, flags = ce.sumsq(a)
        assert (rc, flags) == (0, 0)
        assert rel(s, sumsq_ref(a)) <= 1e-13
