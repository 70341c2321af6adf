"""A kept Clipper: its attributes are assigned between calls, validated like the arguments, and take effect."""
import math

import numpy as np
import pytest
from conftest import assert_untouched, ref_norm, rel, snapshot
from helpers import grads

import fusedclip as fc
from fusedclip.kernels import cpu


# ---------------------------------------------------------------- assigning a Clipper's attributes: validated, and takes effect
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
