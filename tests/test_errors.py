"""Every error path: the exception type, the buffer index, and nothing modified."""
import math

import ml_dtypes
import numpy as np
import pytest

import fusedclip as fc
from conftest import assert_untouched, snapshot

WRITERS = [
    ("clip_grad_norm_", lambda b: fc.clip_grad_norm_(b, 1e-3)),
    ("Clipper", lambda b: fc.Clipper(b, 1e-3)()),
    ("clip_grad_value_", lambda b: fc.clip_grad_value_(b, 1e-3)),
]
ALL = WRITERS + [("global_norm", lambda b: fc.global_norm(b))]


def good(n=3):
    rng = np.random.default_rng(0)
    return [rng.standard_normal(50) * 10 for _ in range(n)]


def check(call, bufs, exc, *needles):
    snap = snapshot([b for b in bufs if isinstance(b, np.ndarray)])
    with pytest.raises(exc) as e:
        call(bufs)
    for n in needles:
        assert n in str(e.value), (n, str(e.value))
    assert_untouched([b for b in bufs if isinstance(b, np.ndarray)], snap)
    return e.value


BAD_DTYPES = [np.int32, np.int64, np.uint8, np.complex64, np.complex128, np.bool_, object,
              np.longdouble, ml_dtypes.float8_e4m3fn]


@pytest.mark.parametrize("name,call", ALL, ids=[n for n, _ in ALL])
@pytest.mark.parametrize("dtype", BAD_DTYPES, ids=lambda d: np.dtype(d).name)
def test_unsupported_dtype_is_a_type_error_naming_the_index(name, call, dtype):
    bufs = good() + [np.ones(4, dtype=dtype)] + good(1)
    check(call, bufs, TypeError, "buffer 3", np.dtype(dtype).name, name)


@pytest.mark.parametrize("name,call", ALL, ids=[n for n, _ in ALL])
@pytest.mark.parametrize("obj", [[1.0, 2.0], 3.0, None, "abc", {"a": 1}], ids=repr)
def test_non_array_is_a_type_error_naming_the_index(name, call, obj):
    check(call, good(2) + [obj], TypeError, "buffer 2")


@pytest.mark.parametrize("name,call", ALL, ids=[n for n, _ in ALL])
def test_bytes_are_read_only_bytes(name, call):
    # bytes offer the buffer protocol: uint8, so a dtype error
    check(call, good(1) + [b"abcd"], TypeError, "buffer 1", "uint8")


@pytest.mark.parametrize("name,call", ALL, ids=[n for n, _ in ALL])
def test_non_native_byte_order(name, call):
    check(call, good(2) + [np.ones(3, ">f4")], TypeError, "buffer 2", "byte order")


@pytest.mark.parametrize("name,call", WRITERS, ids=[n for n, _ in WRITERS])
def test_read_only_buffer_is_rejected_before_any_write(name, call):
    ro = np.ones(5)
    ro.flags.writeable = False
    check(call, good(2) + [ro], ValueError, "buffer 2", "read-only")


def test_read_only_rejected_even_when_no_clip_would_happen():
    ro = np.full(3, 1e-9)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="buffer 0"):
        fc.clip_grad_norm_([ro], 1e9)


@pytest.mark.parametrize("name,call", ALL, ids=[n for n, _ in ALL])
def test_partial_overlap_names_both_buffers(name, call):
    a = np.arange(20.0)
    bufs = good(2) + [a[:12], a[8:]]
    check(call, bufs, ValueError, "buffers 2 and 3", "overlap")


@pytest.mark.parametrize("name,call", ALL, ids=[n for n, _ in ALL])
def test_views_of_one_array_with_other_dtype_overlap(name, call):
    a = np.arange(8.0)
    check(call, [a, a.view(np.float32)], ValueError, "buffers 0 and 1")


def test_cuda_array_without_a_gpu_is_a_clear_error():
    class FakeCuda:
        __cuda_array_interface__ = {"shape": (3,), "typestr": "<f4", "data": (0, False), "version": 3}

    check(lambda b: fc.clip_grad_norm_(b, 1.0), good(1) + [FakeCuda()], RuntimeError, "buffer 1", "CUDA")


def test_non_iterable_container():
    with pytest.raises(TypeError, match="expected an array or a list"):
        fc.global_norm(42)


# ---------------------------------------------------------------- scalars
@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, -math.inf])
def test_max_norm_value_errors(bad):
    bufs = good()
    check(lambda b: fc.clip_grad_norm_(b, bad), bufs, ValueError, "max_norm")
    check(lambda b: fc.Clipper(b, bad), bufs, ValueError, "max_norm")


@pytest.mark.parametrize("bad", ["1.0", None, True, 1 + 2j, [1.0]], ids=repr)
def test_max_norm_type_errors(bad):
    check(lambda b: fc.clip_grad_norm_(b, bad), good(), TypeError, "max_norm")


@pytest.mark.parametrize("bad", [0.0, -2.0, math.nan, -math.inf])
def test_norm_type_value_errors(bad):
    check(lambda b: fc.clip_grad_norm_(b, 1e-3, bad), good(), ValueError, "norm_type")
    check(lambda b: fc.global_norm(b, bad), good(), ValueError, "norm_type")


@pytest.mark.parametrize("bad", ["inf", None, False], ids=repr)
def test_norm_type_type_errors(bad):
    check(lambda b: fc.clip_grad_norm_(b, 1e-3, bad), good(), TypeError, "norm_type")


@pytest.mark.parametrize("bad", [-0.5, math.nan, -math.inf])
def test_clip_value_value_errors(bad):
    check(lambda b: fc.clip_grad_value_(b, bad), good(), ValueError, "clip_value")


def test_clip_value_type_error():
    check(lambda b: fc.clip_grad_value_(b, "1"), good(), TypeError, "clip_value")


def test_unknown_policy_lists_the_valid_names():
    e = check(lambda b: fc.clip_grad_norm_(b, 1e-3, nonfinite="ignore"), good(), ValueError)
    for name in fc.POLICIES:
        assert repr(name) in str(e)


@pytest.mark.parametrize("bad,exc", [(0, ValueError), (-3, ValueError), (1.5, TypeError), ("2", TypeError)])
def test_num_threads_errors(bad, exc):
    check(lambda b: fc.clip_grad_norm_(b, 1e-3, num_threads=bad), good(), exc, "num_threads")
    check(lambda b: fc.global_norm(b, num_threads=bad), good(), exc, "num_threads")
    check(lambda b: fc.clip_grad_value_(b, 1e-3, num_threads=bad), good(), exc, "num_threads")


def test_random_policy_needs_a_finite_threshold():
    check(lambda b: fc.Clipper(b, math.inf, nonfinite="random"), good(), ValueError, "random")


def test_bad_rng():
    check(lambda b: fc.Clipper(b, 1.0, nonfinite="random", rng="seed"), good(), TypeError, "rng")
