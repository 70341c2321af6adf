# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""fusedclip.torch's fast path: read torch tensors' layouts and addresses in
one C pass, and clip them through the C API (``fusedclip.capi``).

A training step with ``zero_grad(set_to_none=True)`` (torch's default) makes
new gradient tensors at new addresses every step, so nothing about the
previous step's tensors can be reused: their layout must be read and checked
again.  Here that costs nanoseconds per tensor, so no plan is kept at all:

* **the read** goes through torch's stable C ABI, the AOTInductor shim of
  ``libtorch`` (``aoti_torch_get_data_ptr``, ``_get_dtype``,
  ``_get_storage_size``, ...: ``extern "C"`` functions torch keeps
  ABI-stable for compiled AOTI models), whose handle is an ``at::Tensor *``:
  each tensor's own, inside its Python object (``use_aoti``'s
  ``cdata_offset``, checked at import by ``cdata_matches``), or else made
  for the whole list in one call
  (``torch._C._aoti.unsafe_alloc_void_ptrs_from_tensors``) and deleted
  here.  ``fusedclip.torch`` installs it (``use_aoti``) only after a
  self-test against the accessors.  Without it the read goes through torch's
  Python accessors (``dtype``, ``is_cpu``, ``is_contiguous()``, ``nbytes``,
  ``data_ptr()``, ``untyped_storage().nbytes()``, ``storage_offset()``), in
  the same C loop, ~4x slower (DESIGN.md §2b);
* **the checks**: each tensor of an exact plain type, strided, of a
  supported dtype, on the CPU, C-contiguous, aligned to its element, inside
  its storage (a storage freed or shrunk under the tensor is caught), and
  the tensors pairwise disjoint in memory;
* **the work**: the C API's ``fc_global_norm``, ``fc_clip_grad_norm_eps``,
  ``fc_scale``, ``fc_clamp`` over the pointer table (the chunk table is
  built there, per call: ~10 ns a tensor);
* **the result** (``clip_norm_tensor``, ``ClipCall``): the version bump
  and the returned 0-d tensor, made in C where ``use_result`` installed the
  shim's scalar makers and torch's ``THPVariable_Wrap``.

Anything else (CUDA tensors, strided or overlapping grads, subclasses,
other dtypes or devices) returns None: ``fusedclip.torch`` plans it the
general way, which checks and explains.  Nothing here imports torch.
"""
from libc.stdint cimport int64_t, int32_t, uintptr_t
from libc.stdlib cimport malloc, free
from libc.math cimport INFINITY, isfinite, fabs
from cpython.object cimport PyObject, PyObject_GetAttr
from cpython.sequence cimport PySequence_Fast_ITEMS
from cpython.ref cimport Py_DECREF
from cpython.exc cimport PyErr_Occurred

from fusedclip.kernels.cpu cimport extents_disjoint
from fusedclip cimport capi as fc

import numpy as np


cdef extern from "Python.h":
    object PyObject_CallMethodNoArgs(object o, object name)
    object PySequence_List(object o)
    bint PyGen_Check(object o)
    void *PyCapsule_GetPointer(object capsule, const char *name) except? NULL

cdef enum:
    _SMALL = 64  # run(): lists of up to this many tensors keep their scratch on the stack
    _DEV_CPU = 0
    _DEV_CUDA = 1
    _NDTYPES = 4
#: the record's device classes (its third column)
DEV_CPU, DEV_CUDA = _DEV_CPU, _DEV_CUDA
#: run()'s operations
OP_NORM, OP_CLIP, OP_CLAMP, OP_SCALE = 0, 1, 2, 3
cdef int64_t _ITEMSIZE[4]
_ITEMSIZE[:] = [8, 4, 2, 2]  # the kernels' codes: float64, float32, bfloat16, float16

cdef object _A_GRAD = "grad", _A_DTYPE = "dtype", _A_IS_CPU = "is_cpu", _A_IS_CUDA = "is_cuda"
cdef object _A_CONTIG = "is_contiguous", _A_NBYTES = "nbytes", _A_DATA_PTR = "data_ptr"
cdef object _A_STORAGE = "untyped_storage", _A_OFFSET = "storage_offset"

# torch's dtypes in the kernels' code order, and the exact tensor types read
# (configure(); subclasses, DTensor among them, go the general way)
cdef tuple _dtypes = ()
cdef tuple _types = ()


# what ClipCall hands the result to (configure())
cdef object _scalar = None, _increment = None, _cpu = None, _modes = None
cdef dict _result_dtype = None


def configure(tuple dtypes, tuple types, scalar=None, increment=None, cpu=None, dict result_dtype=None,
              modes=None):
    """The torch dtypes of the kernels' codes (float64, float32, bfloat16,
    float16) and the exact tensor types the fast path takes; for ClipCall,
    ``torch.scalar_tensor``, ``torch._C._increment_version``, the CPU device
    and the returned norm's dtype per bit set of dtype codes; ``modes()``:
    how many TorchDispatchModes are active (run() leaves the call to the
    general path, which refuses it, when any is)."""
    global _dtypes, _types, _scalar, _increment, _cpu, _result_dtype, _modes
    if len(dtypes) != _NDTYPES:
        raise ValueError("configure: four torch dtypes")
    _dtypes, _types = dtypes, types
    _scalar, _increment, _cpu, _result_dtype, _modes = scalar, increment, cpu, result_dtype, modes


# ------------------------------------------------------------ the AOTI shim
ctypedef int32_t (*f_ptr)(void *, void **) noexcept nogil
ctypedef int32_t (*f_i64)(void *, int64_t *) noexcept nogil
ctypedef int32_t (*f_i32)(void *, int32_t *) noexcept nogil
ctypedef int32_t (*f_bool)(void *, unsigned char *) noexcept nogil
ctypedef int32_t (*f_del)(void *) noexcept nogil

cdef f_ptr _get_data_ptr = NULL
cdef f_i64 _get_numel = NULL, _get_storage_size = NULL, _get_storage_offset = NULL
cdef f_i32 _get_dtype = NULL, _get_device_type = NULL, _get_layout = NULL
cdef f_bool _is_contiguous = NULL
cdef f_del _delete = NULL
cdef object _alloc = None  # torch._C._aoti.unsafe_alloc_void_ptrs_from_tensors
# where a tensor's Python object holds its at::Tensor (an AOTI handle is an
# at::Tensor *): read in place, no handle made (-1: made by _alloc); see
# cdata_matches
cdef Py_ssize_t _cdata_off = -1
cdef int32_t _aoti_dtypes[4]
cdef int32_t _aoti_cpu = -1, _aoti_cuda = -1, _aoti_strided = -1

#: the shim functions use_aoti needs, by name
AOTI_FUNCTIONS = ("aoti_torch_get_data_ptr", "aoti_torch_get_numel", "aoti_torch_get_storage_size",
                  "aoti_torch_get_storage_offset", "aoti_torch_get_dtype", "aoti_torch_get_device_type",
                  "aoti_torch_get_layout", "aoti_torch_is_contiguous", "aoti_torch_delete_tensor_object")


def use_aoti(addresses, alloc=None, dtypes=(), int cpu=-1, int cuda=-1, int strided=-1,
             Py_ssize_t cdata_offset=-1):
    """Read through the AOTI shim from now on: ``addresses`` maps each name
    in AOTI_FUNCTIONS to its address in libtorch, ``alloc`` makes handles for
    a list of tensors, ``dtypes`` are the shim's codes of float64, float32,
    bfloat16 and float16, ``cpu``/``cuda``/``strided`` its device and layout
    codes.  ``cdata_offset`` >= 0: the handles are taken in place, at that
    offset in each tensor's Python object (only where ``cdata_matches`` said
    so for this torch); -1: made by ``alloc`` per call.  ``use_aoti(None)``:
    read through the accessors."""
    global _cdata_off, _get_data_ptr, _get_numel, _get_storage_size, _get_storage_offset, _get_dtype
    global _get_device_type, _get_layout, _is_contiguous, _delete, _alloc, _aoti_cpu, _aoti_cuda, _aoti_strided
    _cdata_off = -1
    if addresses is None:
        _alloc = None
        return
    a = {k: int(addresses[k]) for k in AOTI_FUNCTIONS}
    if any(v == 0 for v in a.values()) or len(dtypes) != _NDTYPES or alloc is None:
        raise ValueError("use_aoti: every shim function, four dtype codes and an allocator are needed")
    _get_data_ptr = <f_ptr><uintptr_t>a["aoti_torch_get_data_ptr"]
    _get_numel = <f_i64><uintptr_t>a["aoti_torch_get_numel"]
    _get_storage_size = <f_i64><uintptr_t>a["aoti_torch_get_storage_size"]
    _get_storage_offset = <f_i64><uintptr_t>a["aoti_torch_get_storage_offset"]
    _get_dtype = <f_i32><uintptr_t>a["aoti_torch_get_dtype"]
    _get_device_type = <f_i32><uintptr_t>a["aoti_torch_get_device_type"]
    _get_layout = <f_i32><uintptr_t>a["aoti_torch_get_layout"]
    _is_contiguous = <f_bool><uintptr_t>a["aoti_torch_is_contiguous"]
    _delete = <f_del><uintptr_t>a["aoti_torch_delete_tensor_object"]
    for k in range(_NDTYPES):
        _aoti_dtypes[k] = <int32_t>dtypes[k]
    _aoti_cpu, _aoti_cuda, _aoti_strided = cpu, cuda, strided
    _alloc = alloc
    _cdata_off = cdata_offset


def cdata_matches(list tensors, Py_ssize_t offset):
    """Does each tensor's Python object hold, at ``offset``, an at::Tensor of
    the same TensorImpl as the handle ``alloc`` makes for it?  (An
    at::Tensor is one pointer, to its TensorImpl; torch's
    ``THPVariable_Unpack`` reads the same field.)  Needs ``use_aoti`` with an
    allocator; the caller then checks reads through it as well."""
    cdef Py_ssize_t i, m = len(tensors)
    cdef void *h
    cdef bint same = True
    if _alloc is None or offset < <Py_ssize_t>sizeof(PyObject) or m == 0:
        return False
    caps = _alloc(tensors)
    if len(caps) != m:
        raise RuntimeError("fusedclip: the AOTI allocator returned a wrong number of handles")
    for i in range(m):
        h = PyCapsule_GetPointer(caps[i], NULL)
        if same and (h == NULL or (<void **>h)[0] == NULL
                     or (<void **>h)[0] != (<void **>(<char *><PyObject *>tensors[i] + offset))[0]):
            same = False
        if h != NULL:
            _delete(h)
    return same


def using_aoti():
    """Whether reads go through the AOTI shim (else the accessors)."""
    return _alloc is not None


def cdata_offset():
    """Where the handles are taken in place (-1: made per call, or no shim)."""
    return _cdata_off if _alloc is not None else -1


def making_results():
    """Whether result_tensor makes the tensors in C (else torch.scalar_tensor)."""
    return _wrap != NULL


# ------------------------------------------------------------ the result
# The returned norm, a 0-d CPU tensor, made in C: the shim's
# aoti_torch_scalar_to_tensor_float32/_float64 make it (a new at::Tensor on
# the heap), torch's own THPVariable_Wrap(const at::TensorBase &) gives it
# its Python object, and the handle is deleted.  torch.scalar_tensor does
# the same behind its Python argument parser, ~3x slower right after a
# backward (DESIGN.md §2b).  fusedclip.torch installs it (use_result) only
# after a self-test against torch.scalar_tensor.
ctypedef int32_t (*f_sc32)(float, void **) noexcept nogil
ctypedef int32_t (*f_sc64)(double, void **) noexcept nogil
ctypedef PyObject *(*f_wrap)(void *)
cdef f_sc32 _sc32 = NULL
cdef f_sc64 _sc64 = NULL
cdef f_wrap _wrap = NULL
cdef signed char _res_code[16]  # per bit set of dtype codes: 0 float64, 1 float32, -1 torch.scalar_tensor


def use_result(f32=0, f64=0, wrap=0, codes=()):
    """Make the returned norm in C from now on: the addresses of the shim's
    ``aoti_torch_scalar_to_tensor_float32`` / ``_float64`` and of
    ``THPVariable_Wrap(const at::TensorBase &)``, and per bit set of dtype
    codes the result's kind (0 float64, 1 float32, -1 torch.scalar_tensor).
    ``use_result()``: torch.scalar_tensor always."""
    global _sc32, _sc64, _wrap
    cdef int k
    _wrap = NULL
    if not (f32 and f64 and wrap):
        return
    if len(codes) != 16 or _delete == NULL:
        raise ValueError("use_result: 16 result codes, after use_aoti")
    for k in range(16):
        _res_code[k] = codes[k]
    _sc32, _sc64 = <f_sc32><uintptr_t>int(f32), <f_sc64><uintptr_t>int(f64)
    _wrap = <f_wrap><uintptr_t>int(wrap)


cdef int _raise_pending() except -1:
    if PyErr_Occurred() != NULL:
        return -1
    return 0


def result_tensor(double x, int mask):
    """The norm ``x`` as the 0-d CPU tensor torch returns for gradients of
    the dtype codes in ``mask``: made in C where use_result allows, else
    ``torch.scalar_tensor`` (which raises RuntimeError for a finite value
    beyond the dtype's range: the caller rounds it)."""
    cdef int c = _res_code[mask & 15] if _wrap != NULL else -1
    cdef void *h = NULL
    cdef PyObject *o
    cdef int32_t err
    if c == 1 and isfinite(x) and fabs(x) > 3.4028234663852886e38:
        c = -1  # float32 overflow: torch's error, the caller's rounding
    if c < 0:
        return _scalar(x, dtype=_result_dtype[mask], device=_cpu)
    err = _sc32(<float>x, &h) if c == 1 else _sc64(x, &h)
    if err or h == NULL:
        _raise_pending()  # (a dispatch mode's exception, which the shim leaves set)
        return _scalar(x, dtype=_result_dtype[mask], device=_cpu)
    o = _wrap(h)  # a new reference to a new Python tensor (holding its own at::Tensor)
    _delete(h)
    if o == NULL:
        raise MemoryError("fusedclip: THPVariable_Wrap failed")
    r = <object>o
    Py_DECREF(r)
    return r


# ------------------------------------------------------------ the read
cdef struct _Read:
    Py_ssize_t n        # items
    Py_ssize_t m        # live tensors (rows)
    void **ptrs         # per row
    int64_t *sizes      # per row: elements
    int32_t *codes      # per row: dtype code
    int32_t *devs       # per row: device class
    int64_t *item       # per row: the item's index
    int64_t nbytes      # all rows
    int mask            # bit set of the dtype codes met
    int devices         # bit set of the device classes met


cdef inline bint _in_storage(int64_t nbytes, int64_t off, int64_t snb, int64_t item) noexcept nogil:
    """[off * item, off * item + nbytes) lies in a storage of snb bytes."""
    return nbytes >= 0 and off >= 0 and snb >= nbytes and off <= (snb - nbytes) // item


cdef bint _set_row(_Read *r, Py_ssize_t j, int code, int dev, int64_t numel, void *p,
                   int64_t off, int64_t snb) noexcept nogil:
    cdef int64_t item = _ITEMSIZE[code]
    if not _in_storage(numel * item, off, snb, item):
        return False
    if numel > 0 and (p == NULL or <uintptr_t>p % <uintptr_t>item != 0
                      or <uintptr_t>p <= <uintptr_t>off * <uintptr_t>item):
        return False  # (no storage memory under it: a functional tensor, a wrapper without data)
    r.ptrs[j], r.sizes[j], r.codes[j], r.devs[j] = p, numel, code, dev
    r.nbytes += numel * item
    r.mask |= 1 << code
    r.devices |= 1 << dev
    return True


cdef bint _row_aoti(_Read *r, Py_ssize_t j, void *h) noexcept nogil:
    cdef int32_t dt, dev, lay
    cdef int64_t numel, snb, off
    cdef void *p
    cdef unsigned char contig
    cdef int code = -1, k
    if _get_layout(h, &lay) or lay != _aoti_strided or _get_dtype(h, &dt):
        return False
    for k in range(_NDTYPES):
        if dt == _aoti_dtypes[k]:
            code = k
            break
    if code < 0 or _get_device_type(h, &dev):
        return False
    if dev == _aoti_cpu:
        dev = _DEV_CPU
    elif dev == _aoti_cuda:
        dev = _DEV_CUDA
    else:
        return False
    if _is_contiguous(h, &contig) or not contig or _get_numel(h, &numel) or _get_data_ptr(h, &p):
        return False
    if _get_storage_size(h, &snb) or _get_storage_offset(h, &off):
        return False
    return _set_row(r, j, code, dev, numel, p, off, snb)


cdef bint _rows_aoti(_Read *r, list live) except -1:
    cdef Py_ssize_t m = r.m, i
    cdef void **h
    cdef PyObject **it
    cdef bint ok = True
    if _cdata_off >= 0:  # the handles are the tensors' own at::Tensor fields: nothing made, nothing freed
        it = PySequence_Fast_ITEMS(live)
        for i in range(m):
            if not _row_aoti(r, i, <void *>(<char *>it[i] + _cdata_off)):
                return False
        return True
    try:
        caps = _alloc(live)
    except Exception:  # pybind refused the list: the accessors
        return _rows_accessors(r, live)
    if len(caps) != m:  # cannot happen; never guess which handle is whose
        raise RuntimeError("fusedclip: the AOTI allocator returned a wrong number of handles")
    h = <void **>malloc(m * sizeof(void *) + 1)
    if h == NULL:
        raise MemoryError()
    try:
        for i in range(m):
            h[i] = PyCapsule_GetPointer(caps[i], NULL)
    except BaseException:  # not capsules of handles: free those taken
        for k in range(i):
            _delete(h[k])
        free(h)
        raise
    for i in range(m):
        if ok and not _row_aoti(r, i, h[i]):
            ok = False
        _delete(h[i])
    free(h)
    return ok


cdef bint _rows_accessors(_Read *r, list live) except -1:
    cdef Py_ssize_t i, k
    cdef object g, dt, st
    cdef int64_t nbytes, ptr, off, snb
    cdef int code, dev
    try:
        for i in range(r.m):
            g = live[i]
            dt = PyObject_GetAttr(g, _A_DTYPE)
            code = -1
            for k in range(_NDTYPES):
                if dt is _dtypes[k]:
                    code = <int>k
                    break
            if code < 0:
                return False
            if PyObject_GetAttr(g, _A_IS_CPU) is True:
                dev = _DEV_CPU
            elif PyObject_GetAttr(g, _A_IS_CUDA) is True:
                dev = _DEV_CUDA
            else:
                return False
            if PyObject_CallMethodNoArgs(g, _A_CONTIG) is not True:  # (a sparse tensor raises)
                return False
            nbytes = PyObject_GetAttr(g, _A_NBYTES)
            ptr = PyObject_CallMethodNoArgs(g, _A_DATA_PTR)
            st = PyObject_CallMethodNoArgs(g, _A_STORAGE)
            snb = PyObject_CallMethodNoArgs(st, _A_NBYTES)
            off = PyObject_CallMethodNoArgs(g, _A_OFFSET)
            if nbytes % _ITEMSIZE[code]:
                return False
            if not _set_row(r, i, code, dev, nbytes // _ITEMSIZE[code], <void *><uintptr_t>ptr, off, snb):
                return False
    except Exception:  # an accessor refused
        return False
    return True


cdef void _release(_Read *r) noexcept:
    free(r.ptrs)
    r.ptrs = NULL


cdef int _read(list items, bint grads, _Read *r, list live) except -2:
    """Read the items (their grads) into r: 0, or -1 where the list is not
    simple.  r's arrays are allocated here (``_release``); ``live`` gets the
    tensors read."""
    cdef list own = PySequence_List(items)  # (a .grad getter or a finalizer may change the caller's list)
    cdef Py_ssize_t n = len(own), i
    cdef PyObject **it = PySequence_Fast_ITEMS(own)
    cdef object g
    cdef char *block
    r.n, r.m, r.nbytes, r.mask, r.devices = n, 0, 0, 0, 0
    r.ptrs = NULL
    block = <char *>malloc(n * (sizeof(void *) + 3 * sizeof(int64_t) + 2 * sizeof(int32_t)) + 8)
    if block == NULL:
        raise MemoryError()
    r.ptrs = <void **>block
    r.sizes = <int64_t *>(block + n * sizeof(void *))
    r.item = r.sizes + n
    r.codes = <int32_t *>(r.item + n)
    r.devs = r.codes + n
    for i in range(n):  # the tensors, and each one's exact type
        if grads:
            try:
                g = PyObject_GetAttr(<object>it[i], _A_GRAD)
            except AttributeError:  # not a parameter: the general path says so
                return -1
            if g is None:
                continue
        else:
            g = <object>it[i]
        if type(g) not in _types:
            return -1
        r.item[r.m] = i
        r.m += 1
        live.append(g)
    if r.m == 0:
        return 0
    if not (_rows_aoti(r, live) if _alloc is not None else _rows_accessors(r, live)):
        return -1
    return 0


def read_tensors(list items, bint grads):
    """The layout and the address of each item (each item's ``.grad`` when
    ``grads``): ``(live, rec, ptrs, devices)``, or ``(None, None, None,
    -1)`` where the list is not simple (see the module's doc).

    ``rec`` is int64 ``(n, 3)``: the dtype code (-1 for a None grad), the
    element count and the device class (DEV_CPU, DEV_CUDA); ``ptrs`` the data
    pointers (0 for None); ``live`` the tensors read, Nones left out;
    ``devices`` the bit set of the device classes met (1 << class).
    The general path's cache key for CUDA tensors.  Reads only."""
    cdef _Read r
    cdef list live = []
    cdef Py_ssize_t i, j
    rec = np.zeros((len(items), 3), dtype=np.int64)
    r.ptrs = NULL
    ptrs = np.zeros(len(items), dtype=np.int64)
    cdef int64_t[:, ::1] R = rec
    cdef int64_t[::1] P = ptrs
    try:
        if _read(items, grads, &r, live) < 0:
            return None, None, None, -1
        R[:, 0] = -1
        for j in range(r.m):
            i = r.item[j]
            R[i, 0], R[i, 1], R[i, 2] = r.codes[j], r.sizes[j], r.devs[j]
            P[i] = <int64_t><uintptr_t>r.ptrs[j]
        return live, rec, ptrs, r.devices
    finally:
        _release(&r)


# ------------------------------------------------------------ the fast path
def run(list items, bint grads, int op, double a, double norm_type, double eps, int nthreads,
        int64_t one_thread_bytes):
    """One call of fusedclip.torch's fast path over CPU tensors (each item's
    ``.grad`` when ``grads``): read and check them (module doc), then

    * OP_NORM: the norm (``fc_global_norm``);
    * OP_CLIP: the norm, then, for finite data with norm + eps > a, scale by
      a / (norm + eps) (``fc_clip_grad_norm_eps``: overflow-safe where
      finite data have a norm beyond float64); non-finite data: nothing
      written (the caller decides, with ``_policy.decide``);
    * OP_CLAMP: clamp to [-a, a] (``fc_clamp``);
    * OP_SCALE: scale by a, unless a is 1.0 (``fc_scale``).

    ``nthreads`` 0 is OpenMP's default, or 1 where the tensors hold fewer
    than ``one_thread_bytes``.  Returns None where the list goes the general
    way (not simple, CUDA tensors, overlapping tensors); else ``(norm,
    flags, scale, live, mask, bad)``: ``scale`` the factor written (1.0:
    nothing), ``live`` the tensors (Nones left out), ``mask`` the bit set of
    their dtype codes, ``bad`` the items holding inf/NaN (when flags).
    Nothing is written before every check has passed."""
    cdef _Read r
    cdef list live = []
    cdef int64_t *ext
    cdef int64_t ext_small[2 * _SMALL]  # (a list this short needs no heap)
    cdef int32_t bf_small[_SMALL]
    cdef int32_t *bf = NULL
    cdef Py_ssize_t j, k
    cdef double norm = 0.0, scale = 1.0
    cdef int flags = 0, rc = 0, nt = nthreads
    cdef tuple bad = ()
    cdef bint ok
    r.ptrs = NULL
    if _modes is not None and _modes():  # a TorchDispatchMode would not see the kernels: the general way
        return None
    try:
        if _read(items, grads, &r, live) < 0 or r.devices & ~(1 << _DEV_CPU):
            return None
        ext = &ext_small[0] if r.m <= _SMALL else <int64_t *>malloc(2 * r.m * sizeof(int64_t) + 8)
        if ext == NULL:
            raise MemoryError()
        k = 0
        for j in range(r.m):
            if r.sizes[j]:
                ext[2 * k] = <int64_t><uintptr_t>r.ptrs[j]
                ext[2 * k + 1] = ext[2 * k] + r.sizes[j] * _ITEMSIZE[r.codes[j]]
                k += 1
        ok = extents_disjoint(ext, k)
        if ext != &ext_small[0]:
            free(ext)
        if not ok:  # the same tensor twice, or overlapping views: the general path
            return None
        if nt == 0 and r.nbytes < one_thread_bytes:
            nt = 1
        if op == 0 or op == 1:
            bf = &bf_small[0] if r.m <= _SMALL else <int32_t *>malloc(r.m * sizeof(int32_t) + 4)
            if bf == NULL:
                raise MemoryError()
        with nogil:
            if op == 0:
                rc = fc.fc_global_norm(r.ptrs, r.sizes, r.codes, r.m, norm_type, nt, &norm, &flags, bf)
            elif op == 1:
                rc = fc.fc_clip_grad_norm_eps(r.ptrs, r.sizes, r.codes, r.m, a, eps, norm_type, nt,
                                              &norm, &scale, &flags, bf)
            elif op == 2:
                rc = fc.fc_clamp(r.ptrs, r.sizes, r.codes, r.m, a, nt)
            elif a != 1.0:
                rc = fc.fc_scale(r.ptrs, r.sizes, r.codes, r.m, a, nt)
                scale = a
        if rc != fc.FC_OK:
            raise ValueError(f"fusedclip: {fc.fc_status_message(rc).decode()}")
        if flags:
            bad = tuple([r.item[j] for j in range(r.m) if bf[j]])
        return norm, flags, scale, live, r.mask, bad
    finally:
        if bf != &bf_small[0]:
            free(bf)
        _release(&r)


cdef list _as_list(object items):
    """A list of the items (a list itself, one tensor, a tuple or a
    generator materialised), or None for anything else."""
    if type(items) is list:
        return <list>items
    if type(items) in _types:
        return [items]
    if type(items) is tuple or PyGen_Check(items):
        return PySequence_List(items)
    return None


cdef bint _positive(object x, double *out):
    """x is a plain float or int > 0 (NaN refused): its value in out."""
    if type(x) is not float and type(x) is not int:
        return False
    try:
        out[0] = x
    except OverflowError:
        return False
    return out[0] > 0.0


def total_norm(tensors, norm_type, bint error_if_nonfinite, int nthreads, int64_t one_thread_bytes):
    """``get_total_norm``'s common case (see ``clip_norm``): ``run``'s tuple
    for CPU tensors that ``run`` takes, with a finite norm or no
    ``error_if_nonfinite``; otherwise the tensors as a list (or None)."""
    cdef double p
    cdef list items = _as_list(tensors)
    if items is None or not items or not _positive(norm_type, &p):
        return items
    r = run(items, False, 0, 1.0, p, 0.0, nthreads, one_thread_bytes)
    if r is None or (r[1] and error_if_nonfinite):
        return items
    return r


def clip_with_norm(parameters, max_norm, total_norm, double eps, int nthreads, int64_t one_thread_bytes):
    """``clip_grads_with_norm_``'s common case (see ``clip_norm``): a finite
    ``total_norm`` >= 0 given as a number or a CPU tensor, CPU grads that
    ``run`` takes: scaled by ``max_norm / (total_norm + eps)`` where that is
    below 1 (else nothing written); ``run``'s tuple.  Otherwise, having
    written nothing, the parameters as a list (or None)."""
    cdef double v, t
    cdef list params = _as_list(parameters)
    if params is None or not _positive(max_norm, &v):
        return params
    if type(total_norm) in _types and PyObject_GetAttr(total_norm, _A_IS_CPU) is True:
        try:
            t = float(total_norm)
        except Exception:  # not one element: the caller's checks say why
            return params
    elif type(total_norm) is float or type(total_norm) is int:
        try:
            t = total_norm
        except OverflowError:
            return params
    else:
        return params
    if not (t >= 0.0 and t < INFINITY):  # NaN, inf, negative: the caller decides or refuses
        return params
    r = run(params, True, 3, v / (t + eps) if t + eps > v else 1.0, 2.0, eps, nthreads, one_thread_bytes)
    return params if r is None else r


def clip_norm(parameters, max_norm, norm_type, double eps, int nthreads, int64_t one_thread_bytes):
    """``clip_grad_norm_``'s common case, with no Python between the call and
    the kernels: ``parameters`` a list, tuple or generator of parameters (or
    one), ``max_norm`` and ``norm_type`` plain numbers > 0, CPU grads that
    ``run`` takes, finite.  Returns ``run``'s tuple (with at least one grad,
    finite: flags 0); otherwise, having written nothing, the parameters as a
    list (or None where they are not an iterable): the caller takes the
    general way with it (a generator has been consumed)."""
    cdef double v, p
    cdef list params = _as_list(parameters)
    if params is None or not _positive(max_norm, &v) or not _positive(norm_type, &p):
        return params  # (the caller's checks say why)
    r = run(params, True, 1, v, p, eps, nthreads, one_thread_bytes)
    if r is None or r[1] or not r[3]:  # the general way; inf/NaN: the policy; no grads
        return params
    return r


def clip_norm_tensor(parameters, max_norm, norm_type, double eps, int nthreads, int64_t one_thread_bytes):
    """``clip_norm``, then the version bump and the returned norm tensor, all
    in C: the tensor where the fast path ran; ``clip_norm``'s tuple where it
    ran but the norm is beyond the result dtype's range (the caller rounds
    it); else ``clip_norm``'s list (or None): the general way."""
    r = clip_norm(parameters, max_norm, norm_type, eps, nthreads, one_thread_bytes)
    return _finish(<tuple>r) if type(r) is tuple else r


cdef object _finish(tuple r):
    """After a fast clip (``run``'s tuple): the version bump where it wrote,
    then the returned tensor; the tuple itself where the norm is beyond the
    result dtype's range (the caller rounds it)."""
    if r[2] != 1.0:
        _increment(r[3])
    try:
        return result_tensor(r[0], r[4])
    except RuntimeError:  # a finite norm beyond the dtype's range
        return r


cdef class ClipCall:
    """The state of a ``fusedclip.torch.Clipper`` in C fields, and its call:
    ``clip_norm`` over the parameters, then (in C) the autograd version bump
    and the returned tensor; anything else goes to ``self._call(r)`` (the
    subclass's general path).  Reading a Python instance's attributes right
    after a backward costs ~3 us each (cold dicts); these cost nothing.  It
    keeps the last call's norm and scale, never its tensors (holding last
    step's grads would keep their memory, and free it in the next call)."""
    cdef list _cparams
    cdef object _cmax_norm, _cnorm_type
    cdef double _ceps
    cdef int _cnt
    cdef int64_t _cone
    cdef readonly bint _fast_last     # the last call took the fast path: _last_* hold its result
    cdef readonly double _last_norm, _last_scale
    cdef readonly object _last_max_norm

    def _configure_call(self, list params, max_norm, norm_type, double eps, int nthreads, int64_t one_thread_bytes):
        self._cparams, self._cmax_norm, self._cnorm_type = params, max_norm, norm_type
        self._ceps, self._cnt, self._cone = eps, nthreads, one_thread_bytes

    def __call__(self):
        r = clip_norm(self._cparams, self._cmax_norm, self._cnorm_type, self._ceps, self._cnt, self._cone)
        if type(r) is not tuple:
            self._fast_last = False
            return self._call(r)
        self._fast_last = True
        self._last_norm, self._last_scale, self._last_max_norm = r[0], r[2], self._cmax_norm
        t = _finish(<tuple>r)
        if type(t) is tuple:  # a finite norm beyond the dtype's range: the subclass rounds it
            return self._norm_tensor(r[0], _result_dtype[r[4]])
        return t
