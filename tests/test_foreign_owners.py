"""A kept plan (``fusedclip.Clipper``) over memory that a foreign owner
reallocates: torch tensors read through DLPack (``resize_``, ``set_``,
their storage resized), other DLPack producers and ``__array_interface__``
objects that move their memory.  Each call must refuse, naming the buffer,
before anything is read or written; the buffer protocol cannot move while
fusedclip views it (the export locks it), which is proved here too.

On the code before this check, every refusal case below read the freed
block (a garbage norm, or a segfault for large tensors) and wrote into it.
"""
import array
import math

import ml_dtypes
import numpy as np
import pytest

import fusedclip as fc
from conftest import DLPackOnly, assert_untouched, ref_norm, scaled, snapshot

torch = pytest.importorskip("torch")


class Interface:
    """An ``__array_interface__`` owner that can swap its memory (as a
    growing buffer pool does): numpy's view keeps this object alive, not
    the array it exported."""

    def __init__(self, a):
        self._a = a

    @property
    def __array_interface__(self):
        return self._a.__array_interface__

    def regrow(self, n):
        self._a = np.full(n, 7.0, self._a.dtype)


class Producer(DLPackOnly):
    """A DLPack producer (not torch) that can swap its memory."""

    def regrow(self, n):
        self._a = np.full(n, 7.0, self._a.dtype)


def _torch(dtype):
    return lambda: torch.full((1000,), 10.0, dtype=dtype)


def _grow(t):
    t.resize_(500_000)  # more than the storage holds: torch reallocates, frees the old block


def _shrink(t):
    t.resize_(10)  # the storage stays, the tensor is smaller


def _set(t):
    t.set_(torch.full((1000,), 3.0, dtype=t.dtype))  # a new storage; the old one is freed


def _storage_freed(t):
    t.untyped_storage().resize_(0)  # as FSDP frees a flat parameter's storage


def _reshaped(t):
    t.resize_(10, 100)  # same memory, new layout


CASES = {
    "torch_f32-resize_grow": (_torch(torch.float32), _grow),
    "torch_f32-resize_shrink": (_torch(torch.float32), _shrink),
    "torch_f32-set_": (_torch(torch.float32), _set),
    "torch_f32-storage_freed": (_torch(torch.float32), _storage_freed),
    "torch_f32-reshaped": (_torch(torch.float32), _reshaped),
    "torch_bf16-resize_grow": (_torch(torch.bfloat16), _grow),  # read through the capsule
    "torch_f16-set_": (_torch(torch.float16), _set),
    "torch_f64-resize_grow": (_torch(torch.float64), _grow),
}


def _current(obj):
    """The memory the caller sees now (to prove nothing was written)."""
    if isinstance(obj, torch.Tensor):
        if obj.untyped_storage().nbytes() == 0:
            return None  # no memory left to read (torch's own clone would crash)
        return obj.detach().clone()
    return np.array(obj, copy=True)


@pytest.mark.parametrize("case", list(CASES))
def test_a_reallocated_torch_tensor_is_refused_before_anything_is_read_or_written(case):
    make, mutate = CASES[case]
    other = np.full(50, 10.0)
    t = make()
    clipper = fc.Clipper([other, np.zeros(3), t], 1.0)
    mutate(t)
    before_other, before_t = snapshot([other]), _current(t)
    with pytest.raises(RuntimeError) as e:
        clipper()
    msg = str(e.value)
    assert "buffer 2" in msg and "new Clipper" in msg and "nothing was read or written" in msg
    assert_untouched([other], before_other)
    if before_t is not None:
        assert torch.equal(t.view(torch.uint8), before_t.view(torch.uint8))  # bitwise
    with pytest.raises(RuntimeError):  # and again: the plan stays refused
        clipper()


def test_a_torch_tensor_written_in_place_keeps_its_plan():
    t = torch.full((1000,), 10.0)
    g = np.full(10, 1.0)
    clipper = fc.Clipper([g, t], 1.0)
    for k in range(3):
        t.mul_(2.0)  # new values, same memory: each call reads them
        t.add_(k)
        want = ref_norm([g, t.numpy()])
        stats = clipper()
        assert stats.clipped and stats.norm == pytest.approx(want, rel=1e-14)
    assert math.isclose(ref_norm([g, t.numpy()]), 1.0, rel_tol=1e-6)  # float32


@pytest.mark.parametrize("kind", [Interface, Producer])
def test_a_foreign_owner_that_moves_its_memory_is_refused(kind):
    owner = kind(np.full(1000, 10.0))
    other = np.full(50, 10.0)
    clipper = fc.Clipper([other, owner], 1.0)
    assert clipper().clipped  # planned and used
    owner.regrow(4000)
    snap = snapshot([other, owner._a])
    with pytest.raises(RuntimeError, match="buffer 1.*new Clipper"):
        clipper()
    assert_untouched([other, owner._a], snap)


@pytest.mark.parametrize("kind", [Interface, Producer])
def test_a_foreign_owner_that_keeps_its_memory_keeps_working(kind):
    a = np.full(1000, 10.0)
    owner = kind(a)
    clipper = fc.Clipper([owner], 1.0)
    for _ in range(3):
        a *= 3
        want = ref_norm([a])
        stats = clipper()
        assert stats.clipped and stats.norm == pytest.approx(want, rel=1e-14)
        assert ref_norm([a]) == pytest.approx(1.0, rel=1e-12)  # written through the owner


def test_a_foreign_producer_whose_export_now_fails_is_refused():
    owner = Producer(np.full(100, 10.0))
    clipper = fc.Clipper([owner], 1.0)
    owner._a = None  # __dlpack__ now raises
    with pytest.raises(RuntimeError, match="buffer 0"):
        clipper()


def test_the_buffer_protocol_cannot_move_while_a_clipper_views_it():
    buf = array.array("d", [10.0] * 1000)
    clipper = fc.Clipper([buf], 1.0)
    with pytest.raises(BufferError):
        buf.extend([1.0] * 100_000)  # would reallocate: Python refuses while exported
    stats = clipper()
    assert stats.clipped and math.isclose(math.sqrt(math.fsum(x * x for x in buf)), 1.0,
                                          rel_tol=1e-12)
    del clipper
    import gc

    gc.collect()
    buf.extend([1.0])  # released with the Clipper


def test_plain_numpy_clippers_do_no_foreign_work():
    """The numpy fast path records no foreign owner, and its check stays one
    C call (test_plan_cache measures it)."""
    bufs = [np.ones(4, np.float32) for _ in range(100)]
    assert fc.Clipper(bufs, 1.0)._plan._foreign == []
    t = torch.ones(4)
    plan = fc.Clipper(bufs + [t], 1.0)._plan
    assert [i for i, _, _ in plan._foreign] == [100]


def test_bfloat16_torch_tensor_is_clipped_in_place_by_a_kept_clipper():
    t = torch.full((64,), 10.0, dtype=torch.bfloat16)
    clipper = fc.Clipper([t], 1.0)
    for _ in range(2):
        t.mul_(4)
        x = t.view(torch.int16).numpy().view(ml_dtypes.bfloat16).copy()
        stats = clipper()
        assert stats.clipped
        np.testing.assert_array_equal(t.view(torch.int16).numpy().view(ml_dtypes.bfloat16),
                                      scaled(x, 1.0 / stats.norm))
