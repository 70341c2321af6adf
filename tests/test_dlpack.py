"""CPU objects that speak only DLPack: zero-copy, read-only flag, bfloat16,
unsupported dtypes and devices; torch CPU tensors and JAX arrays if installed.

Every error names the buffer's index and leaves every buffer unmodified.
"""
import ctypes
import gc

import ml_dtypes
import numpy as np
import pytest
from conftest import CHUNK, DLPackOnly, assert_untouched, clamped, ref_norm, rel, scaled, snapshot

import fusedclip as fc

BF16 = np.dtype(ml_dtypes.bfloat16)
WRITERS = {
    "clip_grad_norm_": lambda b: fc.clip_grad_norm_(b, 1e-3),
    "clip_grad_value_": lambda b: fc.clip_grad_value_(b, 1e-3),
    "Clipper": lambda b: fc.Clipper(b, 1e-3)(),
}


class Only:
    """Exposes nothing but the DLPack protocol (DLPack 1.0 keywords passed on)."""

    def __init__(self, a):
        self.a = a
        self.calls = 0

    def __dlpack__(self, **kw):
        self.calls += 1
        return self.a.__dlpack__(**kw)

    def __dlpack_device__(self):
        return self.a.__dlpack_device__()


class Legacy(Only):
    """A producer of the pre-1.0 protocol (no max_version, no read-only flag)."""

    def __dlpack__(self, stream=None):
        self.calls += 1
        return self.a.__dlpack__()


class OnDevice:
    def __init__(self, device_type):
        self.t, self.calls = device_type, 0

    def __dlpack__(self, **kw):  # must never be asked
        self.calls += 1
        raise AssertionError("__dlpack__ called for a non-CPU device")

    def __dlpack_device__(self):
        return (self.t, 0)


# ---------------------------------------------------------------- a ctypes producer
class _Dev(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _Tensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _Dev), ("ndim", ctypes.c_int32),
                ("dtype", _DType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


_DELETER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class _Managed(ctypes.Structure):
    _fields_ = [("dl_tensor", _Tensor), ("manager_ctx", ctypes.c_void_p), ("deleter", _DELETER)]


class _Versioned(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32),
                ("manager_ctx", ctypes.c_void_p), ("deleter", _DELETER),
                ("flags", ctypes.c_uint64), ("dl_tensor", _Tensor)]




def _pyfunc(name, restype, argtypes):
    f = ctypes.pythonapi[name]  # a private function object, not the shared pythonapi.name
    f.restype, f.argtypes = restype, argtypes
    return f


_New = _pyfunc("PyCapsule_New", ctypes.py_object, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p])
_IsValid = _pyfunc("PyCapsule_IsValid", ctypes.c_int, [ctypes.py_object, ctypes.c_char_p])


_LIVE = {}  # managed-tensor address -> its Producer


@_DELETER
def _deleter(ptr):  # one static deleter, as a C library has
    _LIVE[ptr]._delete(ptr)


class Producer:
    """A bfloat16 (or any DLPack dtype) producer written with ctypes, as a C
    library would: it exports ``mem``'s bytes and counts its deleter's calls.
    Its capsules have no destructor (a Python callback cannot run while the
    consumer's exception is set); it keeps them, and ``check`` proves that
    exactly the consumed ones (renamed ``used_*``) were deleted, once."""

    def __init__(self, mem, dtype=(4, 16, 1), shape=None, strides=None, readonly=False,
                 versioned=True, device=(1, 0)):
        self.mem, self.readonly, self.versioned, self.dev = mem, readonly, versioned, device
        self.shape = tuple(mem.shape if shape is None else shape)
        self.strides = strides  # in elements, or None (C order)
        self.dtype = dtype
        self.deleted = 0
        self.capsules = []
        self._keep = {}

    def _delete(self, ptr):
        self.deleted += 1
        self._keep.pop(ptr)
        del _LIVE[ptr]

    def check(self):
        """Every consumed export deleted once; the others left to their owner."""
        gc.collect()
        consumed = [c for c in self.capsules
                    if not _IsValid(c, b"dltensor_versioned") and not _IsValid(c, b"dltensor")]
        assert self.deleted == len(consumed)
        assert len(self._keep) == len(self.capsules) - len(consumed)
        return len(consumed)

    def __dlpack_device__(self):
        return self.dev

    def __dlpack__(self, stream=None, max_version=None, dl_device=None, copy=None):
        versioned = self.versioned and max_version is not None and max_version[0] >= 1
        shape = (ctypes.c_int64 * max(len(self.shape), 1))(*self.shape)
        strides = None if self.strides is None else (ctypes.c_int64 * len(self.strides))(*self.strides)
        t = _Tensor(self.mem.ctypes.data, _Dev(*self.dev), len(self.shape), _DType(*self.dtype),
                    shape, strides, 0)
        if versioned:
            m = _Versioned(1, 0, None, _deleter, 1 if self.readonly else 0, t)
        else:
            m = _Managed(t, None, _deleter)
        ptr = ctypes.addressof(m)
        _LIVE[ptr] = self
        self._keep[ptr] = (m, shape, strides)
        name = b"dltensor_versioned" if versioned else b"dltensor"
        cap = _New(ptr, name, None)
        self.capsules.append(cap)
        return cap


def bf16_mem(rng, n, scale=10.0):
    return (rng.standard_normal(n) * scale).astype(BF16).view(np.uint16)


# ---------------------------------------------------------------- numpy through DLPack only
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_legacy_export_is_read_not_written(dtype, rng):
    # the pre-1.0 protocol cannot say the memory may be written: numpy views it read-only
    good = rng.standard_normal(100) * 10
    x = (rng.standard_normal(40000) * 10).astype(dtype)
    snap = snapshot([good, x])
    assert fc.global_norm([good, Legacy(x)]) == fc.global_norm([good, x])
    for w in WRITERS.values():
        with pytest.raises(ValueError, match=r"buffer 1 is read-only.*pre-1\.0 protocol"):
            w([good, Legacy(x)])
        assert_untouched([good, x], snap)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
@pytest.mark.parametrize("wrap", [Only])
def test_zero_copy_through_dlpack_only(dtype, wrap, rng):
    bufs = [(rng.standard_normal(n) * 10).astype(dtype) for n in (5, 40000)]
    before = [b.copy() for b in bufs]
    wrapped = [wrap(b) for b in bufs]
    assert fc.global_norm(wrapped) == fc.global_norm(before)
    norm = fc.clip_grad_norm_(wrapped, 1.0)
    assert norm == fc.global_norm(before) and rel(norm, ref_norm(before)) <= 1e-13
    for b, o in zip(bufs, before):  # the caller's memory was clipped
        np.testing.assert_array_equal(b, scaled(o, 1.0 / norm))
    fc.clip_grad_value_(wrapped, 1e-3)
    assert all(np.abs(b).max() <= b.dtype.type(1e-3) for b in bufs)
    n0 = fc.global_norm(bufs)
    st = fc.Clipper([wrap(b) for b in bufs], n0 / 2)()
    assert st.clipped and st.norm == n0
    assert rel(fc.global_norm(bufs), n0 / 2) <= 1e-2


def test_read_only_export_is_refused_by_writers_and_read_by_global_norm(rng):
    good = rng.standard_normal(100) * 10
    ro = rng.standard_normal(10) * 10
    ro.flags.writeable = False
    bufs = [good, Only(ro)]
    snap = snapshot([good, ro])
    assert fc.global_norm(bufs) == fc.global_norm([good, ro])
    for name, w in WRITERS.items():
        with pytest.raises(ValueError, match=r"buffer 1 is read-only"):
            w(bufs)
        assert_untouched([good, ro], snap)


def test_read_only_legacy_export_is_a_type_error(rng):
    good = rng.standard_normal(100) * 10
    ro = rng.standard_normal(10) * 10
    ro.flags.writeable = False
    snap = snapshot([good, ro])
    for w in list(WRITERS.values()) + [fc.global_norm]:
        with pytest.raises(TypeError, match=r"buffer 1 \(Legacy\) is a DLPack export that numpy cannot"):
            w([good, Legacy(ro)])
        assert_untouched([good, ro], snap)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.complex64, np.bool_])
def test_unsupported_dtypes_name_the_buffer(dtype, rng):
    good = rng.standard_normal(100) * 10
    bad = np.ones(5, dtype=dtype)
    snap = snapshot([good, bad])
    for w in list(WRITERS.values()) + [fc.global_norm]:
        with pytest.raises(TypeError, match=rf"buffer 1 has dtype {np.dtype(dtype)}"):
            w([good, Only(bad)])
        assert_untouched([good, bad], snap)


@pytest.mark.parametrize("dev,name", [(10, "ROCm"), (8, "Metal"), (14, "oneAPI"), (99, "type 99")])
def test_non_cpu_devices_are_refused_before_export(dev, name, rng):
    good = rng.standard_normal(100) * 10
    snap = snapshot([good])
    o = OnDevice(dev)
    for w in list(WRITERS.values()) + [fc.global_norm]:
        with pytest.raises(TypeError, match=rf"buffer 1 \(OnDevice\) is on DLPack device {name}:0"):
            w([good, o])
    assert o.calls == 0
    assert_untouched([good], snap)


# ---------------------------------------------------------------- bfloat16 from the capsule
def test_bfloat16_legacy_export_is_read_only(rng):
    good = rng.standard_normal(100) * 10
    mem = bf16_mem(rng, 70000)
    p = Producer(mem, versioned=False)
    snap = snapshot([good, mem])
    assert fc.global_norm([good, p]) == fc.global_norm([good, mem.view(BF16)])
    for w in WRITERS.values():
        with pytest.raises(ValueError, match=r"buffer 1 is read-only.*pre-1\.0 protocol"):
            w([good, p])
        assert_untouched([good, mem], snap)
    assert p.check() > 0


def test_bfloat16_export_is_viewed_in_place(rng):
    mem = [bf16_mem(rng, n) for n in (3, 70000)]
    ref = [m.view(BF16).copy() for m in mem]
    prods = [Producer(m) for m in mem]
    assert fc.global_norm(prods) == fc.global_norm(ref)
    norm = fc.clip_grad_norm_(prods, 1.0)
    assert norm == fc.global_norm(ref) and rel(norm, ref_norm(ref)) <= 1e-13
    for m, o in zip(mem, ref):  # the producer's memory was clipped
        np.testing.assert_array_equal(m.view(BF16), scaled(o, 1.0 / norm))
    del norm
    for p in prods:  # every consumed export was freed, once
        assert p.check() > 0


def test_bfloat16_strided_export(rng):
    mem = bf16_mem(rng, 6 * 4)
    ref = mem.view(BF16).reshape(6, 4).T.copy()
    p = Producer(mem, shape=(4, 6), strides=(1, 4))  # the transpose, in elements
    assert fc.global_norm([p]) == fc.global_norm([ref])
    n = fc.clip_grad_norm_([p], 1.0)
    np.testing.assert_array_equal(mem.view(BF16).reshape(6, 4).T, scaled(ref, 1.0 / n))
    assert Producer(mem[:0], shape=(0, 3)).shape == (0, 3)
    assert fc.global_norm([Producer(mem[:0], shape=(0, 3))]) == 0.0


def test_bfloat16_read_only_flag(rng):
    good = rng.standard_normal(100) * 10
    mem = bf16_mem(rng, 50)
    p = Producer(mem, readonly=True)
    snap = snapshot([good, mem])
    assert fc.global_norm([good, p]) == fc.global_norm([good, mem.view(BF16)])
    for w in WRITERS.values():
        with pytest.raises(ValueError, match=r"buffer 1 is read-only"):
            w([good, p])
        assert_untouched([good, mem], snap)
    assert p.check() > 0


@pytest.mark.parametrize("dtype,text", [((10, 8, 1), "type code 10, 8 bits"), ((2, 8, 1), "float8"),
                                        ((4, 16, 2), "bfloat16x2"), ((5, 32, 1), "complex32")])
def test_dtypes_numpy_cannot_view_are_named(dtype, text, rng):
    good = rng.standard_normal(100) * 10
    mem = bf16_mem(rng, 8)
    p = Producer(mem, dtype=dtype)
    snap = snapshot([good, mem])
    for w in list(WRITERS.values()) + [fc.global_norm]:
        with pytest.raises(TypeError, match=rf"buffer 1 \(Producer\) has DLPack dtype {text}"):
            w([good, p])
        assert_untouched([good, mem], snap)
    assert p.check() == 0  # never consumed


# ---------------------------------------------------------------- torch CPU tensors
def torch_dtypes(torch):
    return [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def test_torch_cpu_tensors_are_clipped_in_place(rng):
    torch = pytest.importorskip("torch")
    ts = [(torch.randn(n, dtype=torch.float64) * 10).to(dt)
          for n, dt in zip((7, 40000, 33, 1000), torch_dtypes(torch))]
    ts.append((torch.randn(30, 20) * 10).t())  # non-contiguous: staged and written back
    ts.append((torch.randn(64) * 10)[::2])
    ref = [t.clone() for t in ts]
    refs = [(r.float() if r.dtype == torch.bfloat16 else r).numpy() for r in ref]
    refs = [r.astype(BF16) if t.dtype == torch.bfloat16 else r for r, t in zip(refs, ts)]
    want = ref_norm(refs)
    norm = fc.clip_grad_norm_(ts, 1.0)
    assert rel(norm, want) <= 1e-13
    got = [(t.float() if t.dtype == torch.bfloat16 else t).numpy() for t in ts]
    for g, r, t in zip(got, refs, ts):
        exp = scaled(np.ascontiguousarray(r), 1.0 / norm)
        np.testing.assert_array_equal(g.astype(np.float64), exp.astype(np.float64))
    c = fc.Clipper(ts, 0.5)
    assert rel(c().norm, 1.0) <= 1e-2 and rel(c().norm, 0.5) <= 1e-2


def test_torch_errors_name_the_buffer_and_write_nothing():
    torch = pytest.importorskip("torch")
    good = torch.randn(100) * 10
    for bad, exc, text in [
        (torch.ones(4, dtype=torch.int32), TypeError, "buffer 1 has dtype int32"),
        (torch.ones(4, dtype=torch.complex64), TypeError, "buffer 1 has dtype complex64"),
        (torch.ones(4, requires_grad=True), TypeError, r"buffer 1 \(Tensor\).*detach"),
    ]:
        snap = [good.clone(), bad.detach().clone()]
        for w in WRITERS.values():
            with pytest.raises(exc, match=text):
                w([good, bad])
            assert torch.equal(good, snap[0]) and torch.equal(bad.detach(), snap[1])


# ---------------------------------------------------------------- JAX: immutable
def test_jax_arrays_are_read_not_written():
    jnp = pytest.importorskip("jax.numpy")
    x = jnp.arange(5.0, dtype=jnp.float32) * 10
    b = jnp.ones(4, dtype=jnp.bfloat16) * 3
    good = np.full(3, 10.0)
    snap = (np.asarray(x).copy(), np.asarray(b).copy(), good.copy())
    want = ref_norm([np.asarray(x), np.asarray(b)])
    assert rel(fc.global_norm([x, b]), want) <= 1e-13
    for w in WRITERS.values():
        with pytest.raises(ValueError, match=r"buffer 1 is a JAX array; JAX arrays are immutable"):
            w([good, x])
        with pytest.raises(ValueError, match=r"buffer 1 is a JAX array"):
            w([good, b])
    np.testing.assert_array_equal(np.asarray(x), snap[0])
    np.testing.assert_array_equal(np.asarray(b), snap[1])
    np.testing.assert_array_equal(good, snap[2])


# ---------------------------------------------------------------- DLPack objects read and written in place
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16], ids=["f64", "f32", "f16"])
def test_dlpack_objects_are_read_and_written_in_place(dtype, rng):
    a = (rng.standard_normal(CHUNK + 7) * 10).astype(dtype)
    b = (rng.standard_normal((7, 9)) * 10).astype(dtype)
    objs = [DLPackOnly(a), DLPackOnly(b)]
    assert not hasattr(objs[0], "__array_interface__") and not hasattr(objs[0], "__array__")
    orig = [a.copy(), b.copy()]
    assert rel(fc.global_norm(objs), ref_norm(orig)) <= 1e-13
    assert_untouched([a, b], snapshot(orig))  # reading wrote nothing
    norm = fc.clip_grad_norm_(objs, 1.0)
    assert rel(norm, ref_norm(orig)) <= 1e-13
    np.testing.assert_array_equal(a, scaled(orig[0], 1.0 / norm))  # written in place
    np.testing.assert_array_equal(b, scaled(orig[1], 1.0 / norm))
    scaled_a = a.copy()
    fc.clip_grad_value_(objs, 0.01)
    np.testing.assert_array_equal(a, clamped(scaled_a, 0.01))


def test_dlpack_of_read_only_array_is_rejected_for_writers():
    a = np.ones(5)
    a.flags.writeable = False
    try:
        np.from_dlpack(DLPackOnly(a))
    except BufferError:
        pytest.skip("this numpy refuses to export read-only arrays through DLPack")
    with pytest.raises(ValueError, match="buffer 0"):
        fc.clip_grad_norm_([DLPackOnly(a)], 1e-3)
    assert (a == 1).all()
