"""Issue 7 (items 2, 3, 6, 8): the Python front end under hostile use.

* num_threads is bounded (cpu.MAX_THREADS) before OpenMP sees it;
* a process forked after a parallel call works (single-threaded);
* assigning a Clipper's attributes is validated and takes effect;
* the "random" policy checks every buffer's rounded step before it writes.

Probes that crashed or hung the interpreter before the fix run in a
subprocess with a timeout, so a regression fails the test instead of
killing or blocking pytest.
"""
import math
import subprocess
import sys
import textwrap

import ml_dtypes
import numpy as np
import pytest

import fusedclip as fc
from conftest import DTYPE_IDS, DTYPES, assert_untouched, ref_norm, rel, snapshot
from fusedclip.kernels import cpu

TOO_MANY = [1025, 20000, 100000, 2**31, 2**63]  # cpu.MAX_THREADS is 1024


def run_probe(code: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Run a Python snippet in a fresh interpreter; a crash or hang fails, not kills, the test."""
    try:
        return subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the probe hung for {timeout} s (stderr: {e.stderr!r})")


def grads(dtype=np.float32, n=3):
    rng = np.random.default_rng(5)
    return [(rng.standard_normal(s) * 3).astype(dtype) for s in [(100,), (7, 9), (1000,)][:n]]


# ------------------------------------------------------------------ item 2: num_threads
def test_max_threads_is_a_documented_bound():
    assert cpu.MAX_THREADS == 1024
    assert fc._policy.MAX_THREADS == cpu.MAX_THREADS


@pytest.mark.parametrize("n", TOO_MANY, ids=str)
def test_too_many_threads_is_a_value_error_and_the_interpreter_survives(n):
    """Every entry point, in a subprocess: libgomp aborted (20000), segfaulted
    (100000) or raised an OverflowError without the argument's name (>= 2**31)."""
    r = run_probe(f"""
        import numpy as np, fusedclip as fc
        from fusedclip.kernels import cpu
        n = {n}
        a = np.linspace(-3, 3, 4 * cpu.PARALLEL_MIN).astype(np.float32)
        snap = a.tobytes()
        calls = [
            lambda: fc.clip_grad_norm_([a], 1e-3, num_threads=n),
            lambda: fc.global_norm([a], num_threads=n),
            lambda: fc.clip_grad_value_([a], 1e-3, num_threads=n),
            lambda: fc.Clipper([a], 1e-3, num_threads=n),
        ]
        c = fc.Clipper([a], 1e-3)
        def assign():
            c.num_threads = n
        calls.append(assign)
        t = cpu.Table([a.ctypes.data], [a.size], [1])
        calls += [lambda: t.norm(cpu.NORM_2, 2.0, n), lambda: t.scale(0.5, n),
                  lambda: t.clamp(1e-3, n), lambda: t.zero(n),
                  lambda: cpu.floor_read(a, n), lambda: cpu.floor_rw(a, n)]
        for k, call in enumerate(calls):
            try:
                call()
            except ValueError as e:
                assert "num_threads" in str(e) and str(cpu.MAX_THREADS) in str(e), (k, e)
            else:
                raise AssertionError(f"call {{k}} accepted num_threads={{n}}")
        assert a.tobytes() == snap, "modified"
        assert c.num_threads is None
        print("survived")
    """)
    assert r.returncode == 0 and "survived" in r.stdout, r.stderr[-2000:]


@pytest.mark.parametrize("n", TOO_MANY, ids=str)
def test_too_many_threads_names_the_argument_and_writes_nothing(n):
    g = grads()
    snap = snapshot(g)
    for call in (lambda: fc.clip_grad_norm_(g, 1e-3, num_threads=n),
                 lambda: fc.global_norm(g, num_threads=n),
                 lambda: fc.clip_grad_value_(g, 1e-3, num_threads=n),
                 lambda: fc.Clipper(g, 1e-3, num_threads=n)):
        with pytest.raises(ValueError, match="num_threads"):
            call()
    assert_untouched(g, snap)


@pytest.mark.parametrize("bad", [0, -1, True, 1.0, "2"], ids=repr)
def test_table_rejects_bad_thread_counts_without_overflow_error(bad):
    a = np.ones(10, np.float64)
    t = cpu.Table([a.ctypes.data], [a.size], [0])
    exc = ValueError if isinstance(bad, int) and not isinstance(bad, bool) else TypeError
    with pytest.raises(exc, match="num_threads"):
        t.norm(cpu.NORM_2, 2.0, bad)
    with pytest.raises(exc, match="num_threads"):
        t.scale(0.5, bad)
    assert (a == 1.0).all()


@pytest.mark.parametrize("n", [1, 2, 7, 1024])
def test_thread_counts_up_to_the_bound_give_the_exact_norm(n):
    """More threads than chunks are accepted (the team is capped at the chunk count)."""
    g = [np.linspace(-2, 2, 3 * cpu.CHUNK + 5), np.arange(4 * cpu.PARALLEL_MIN, dtype=np.float32) % 5]
    want = ref_norm(g)
    got = fc.global_norm(g, num_threads=n)
    assert rel(got, want) <= 1e-12
    assert got == fc.global_norm(g, num_threads=1)  # bitwise, any thread count


# ------------------------------------------------------------------ item 3: fork
FORK_PROBE = """
    import os, signal, sys
    import multiprocessing as mp
    import numpy as np, fusedclip as fc
    from fusedclip.kernels import cpu

    a = (np.arange(4 * cpu.PARALLEL_MIN, dtype=np.float64) % 7) - 3
    assert a.size >= cpu.PARALLEL_MIN and a.size > 2 * cpu.CHUNK  # the parallel path
    parent = fc.global_norm([a], num_threads=2)  # the OpenMP team now exists

    def child_norms(_=None):
        signal.alarm(40)  # a hung child ends itself
        b = a.copy()
        norms = [fc.global_norm([a], num_threads=2), fc.global_norm([a])]
        fc.clip_grad_norm_([b], 1.0, num_threads=2)
        return norms + [fc.global_norm([b], num_threads=2), float(cpu.forked())]

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(w, repr(child_norms()).encode())
        finally:
            os._exit(0)
    os.close(w)
    raw = os.read(r, 4096).decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and raw, status
    with mp.get_context("fork").Pool(2) as pool:
        pooled = pool.map(child_norms, range(2))
    assert not cpu.forked()
    print(repr([parent, eval(raw)] + pooled))
"""


def test_a_process_forked_after_a_parallel_call_works():
    r = run_probe(FORK_PROBE, timeout=90)
    assert r.returncode == 0, r.stderr[-2000:]
    parent, *children = eval(r.stdout.strip().splitlines()[-1])
    a = (np.arange(4 * cpu.PARALLEL_MIN, dtype=np.float64) % 7) - 3
    want = ref_norm([a])
    assert rel(parent, want) <= 1e-12
    assert len(children) == 3
    for two, default, clipped, forked in children:
        assert two == parent and default == parent  # bitwise: serial gives the same bits
        assert rel(clipped, 1.0) <= 1e-12
        assert forked == 1.0


def test_the_parent_keeps_its_threads_after_forking():
    r = run_probe("""
        import os, numpy as np, fusedclip as fc
        from fusedclip.kernels import cpu
        a = np.ones(8 * cpu.PARALLEL_MIN)  # 2**20 ones: the norm is 2**10
        fc.global_norm([a], num_threads=2)
        pid = os.fork()
        if pid == 0:
            os._exit(0 if cpu.forked() else 1)
        _, st = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(st) == 0 and not cpu.forked()
        assert fc.global_norm([a], num_threads=2) == 2.0 ** 10
        print("ok")
    """)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]


# ------------------------------------------------------------------ item 6: Clipper attributes
@pytest.mark.parametrize("p", [1.0, math.inf, 3.0, 0.5])
def test_assigning_norm_type_changes_the_norm_computed(p):
    g = grads()
    c = fc.Clipper(g, 1e9)
    assert rel(c().norm, ref_norm(g)) <= 1e-12
    c.norm_type = p
    assert c.norm_type == p
    s = c()
    assert rel(s.norm, ref_norm(g, p)) <= 1e-12
    assert f"norm_type={p}" in repr(c)


def test_assigning_norm_type_changes_the_clip():
    g = grads(np.float64)
    c = fc.Clipper(g, 1.0)
    c.norm_type = 1.0
    s = c()
    assert s.clipped and rel(ref_norm(g, 1.0), 1.0) <= 1e-12


@pytest.mark.parametrize("bad, exc", [(0.0, ValueError), (-2.0, ValueError), (math.nan, ValueError),
                                      ("2", TypeError), (True, TypeError), (None, TypeError)])
def test_a_bad_norm_type_is_refused_and_nothing_changes(bad, exc):
    g = grads()
    snap = snapshot(g)
    c = fc.Clipper(g, 1e9, 1.0)
    with pytest.raises(exc, match="norm_type"):
        c.norm_type = bad
    assert c.norm_type == 1.0
    assert rel(c().norm, ref_norm(g, 1.0)) <= 1e-12  # still L1
    assert_untouched(g, snap)


@pytest.mark.parametrize("bad", ["bogus", None, "ERROR", 1])
def test_a_bad_nonfinite_is_refused_and_nothing_is_written(bad):
    g = grads()
    g[1][3, 4] = np.inf
    snap = snapshot(g)
    c = fc.Clipper(g, 1.0)
    with pytest.raises(ValueError, match="nonfinite"):
        c.nonfinite = bad
    assert c.nonfinite == "error"
    with pytest.raises(fc.NonFiniteError) as e:
        c()
    assert e.value.buffers == (1,)
    assert_untouched(g, snap)  # "bogus" used to fall through to "propagate": NaN everywhere


@pytest.mark.parametrize("policy", ["skip", "zero", "propagate"])
def test_assigning_nonfinite_takes_effect(policy):
    g = grads()
    g[0][5] = np.nan
    c = fc.Clipper(g, 1.0)
    c.nonfinite = policy
    s = c()
    assert s.finite is False and s.nonfinite_buffers == (0,)
    assert c.nonfinite == policy and f"nonfinite={policy!r}" in repr(c)
    if policy == "skip":
        assert not s.clipped
    if policy == "zero":
        assert all((b == 0).all() for b in g)


@pytest.mark.parametrize("rng", [None, 11])
def test_switching_to_random_makes_the_rng(rng):
    g = grads()
    g[2][0] = -np.inf
    c = fc.Clipper(g, 0.75, rng=rng)
    c.nonfinite = "random"
    s = c()
    assert s.clipped and not s.finite and s.nonfinite_buffers == (2,)
    assert abs(ref_norm(g) - 0.75) <= 4 * 2.0**-24 * 0.75 + 1e-12
    if rng is not None:  # the seed given at construction is the one used
        h = grads()
        h[2][0] = -np.inf
        fc.Clipper(h, 0.75, nonfinite="random", rng=rng)()
        assert snapshot(g) == snapshot(h)


def test_switching_to_random_needs_a_finite_max_norm():
    g = grads()
    g[0][0] = np.inf
    snap = snapshot(g)
    c = fc.Clipper(g, math.inf, nonfinite="skip")
    with pytest.raises(ValueError, match="random"):
        c.nonfinite = "random"
    assert c.nonfinite == "skip"
    assert not c().clipped
    assert_untouched(g, snap)


def test_switching_to_random_checks_the_rng():
    g = grads()
    c = fc.Clipper(g, 1.0, rng="seed")  # not used by "error", so not checked yet
    with pytest.raises(TypeError, match="rng"):
        c.nonfinite = "random"
    assert c.nonfinite == "error"


@pytest.mark.parametrize("bad, exc", [(0, ValueError), (20000, ValueError), (2**31, ValueError),
                                      (2**63, ValueError), (1.5, TypeError), (True, TypeError)])
def test_a_bad_num_threads_assignment_is_refused(bad, exc):
    g = grads()
    snap = snapshot(g)
    c = fc.Clipper(g, 1e-3, num_threads=2)
    with pytest.raises(exc, match="num_threads"):
        c.num_threads = bad
    assert c.num_threads == 2
    assert_untouched(g, snap)
    assert c().clipped  # still usable


def test_assigning_num_threads_takes_effect():
    g = [np.linspace(-1, 1, 4 * cpu.PARALLEL_MIN)]
    c = fc.Clipper(g, 1e9)
    c.num_threads = 1
    assert c.num_threads == 1
    assert rel(c().norm, ref_norm(g)) <= 1e-12
    c.num_threads = None
    assert c.num_threads is None


# ------------------------------------------------------------------ item 8: the random policy
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


# ------------------------------------------------------------------ Hardening II, item 7: small ones
# A lone object with the buffer protocol (memoryview, bytearray, array.array,
# bytes) is one buffer, exactly as it is inside a list: iterating it would
# report "buffer 0 is a float" (or an int) for what is one array.
import array  # noqa: E402


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
