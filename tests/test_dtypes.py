"""The dtype table (kernels/dtypes.py): every layer reads it, and agrees
with the C kernels and with each other about what is clipped."""
import re

import ml_dtypes
import numpy as np
import pytest
import torch
from conftest import DLPackOnly

import fusedclip
import fusedclip.torch as fct
from fusedclip import _gpu
from fusedclip.kernels import cpu, dtypes
from fusedclip.kernels import cuda as ck


def test_the_table_is_in_code_order_and_matches_the_c_kernels():
    assert [d.code for d in dtypes.TABLE] == list(range(dtypes.NDTYPES))
    assert (dtypes.F64, dtypes.F32, dtypes.BF16, dtypes.F16) == (cpu.F64, cpu.F32, cpu.BF16, cpu.F16)
    assert cpu.DTYPES == dtypes.NUMPY
    assert dtypes.NUMPY == (np.dtype(np.float64), np.dtype(np.float32), np.dtype(ml_dtypes.bfloat16),
                            np.dtype(np.float16))
    assert dtypes.ITEMSIZE == (8, 4, 2, 2)
    # what the CUDA kernels' pointers read, per code
    assert [ck._ELEM[d.code] for d in dtypes.TABLE] == ["float64", "float32", "uint16", "uint16"]


def test_code_of_reads_numpy_and_torch_dtypes():
    for d in dtypes.TABLE:
        assert dtypes.code_of(d.numpy) == d.code
        assert dtypes.code_of(getattr(torch, d.name)) == d.code
    assert dtypes.torch_dtypes(torch) == (torch.float64, torch.float32, torch.bfloat16, torch.float16)
    assert fct._DTYPES == dtypes.torch_dtypes(torch)
    for bad in (np.dtype(np.int32), np.dtype(np.complex64), torch.int8, torch.complex64, None, [1]):
        assert dtypes.code_of(bad) is None


def test_the_supported_sentence_names_every_dtype_once():
    s = dtypes.SUPPORTED
    assert s == "float16, bfloat16, float32 and float64"
    for d in dtypes.TABLE:
        assert len(re.findall(rf"\b{d.name}\b", s)) == 1


@pytest.mark.parametrize("entry", ["numpy", "dlpack", "torch", "cuda"])
def test_every_layer_refuses_other_dtypes_with_the_one_sentence(entry):
    a = np.arange(6, dtype=np.int32)
    before = a.copy()
    if entry == "numpy":
        with pytest.raises(TypeError, match="buffer 1 has dtype int32") as e:
            fusedclip.clip_grad_norm_([np.ones(3, np.float32), a], 1.0)
    elif entry == "dlpack":
        t = torch.zeros(3, dtype=torch.complex64)  # a DLPack-only CPU export of a complex64 tensor
        with pytest.raises(TypeError) as e:
            fusedclip.clip_grad_norm_([DLPackOnly(t)], 1.0)
    elif entry == "torch":
        with pytest.raises(TypeError, match=r"get_total_norm: tensor 1 has dtype int32") as e:
            fct.get_total_norm([torch.ones(2), torch.arange(3, dtype=torch.int32)])
    else:
        with pytest.raises(TypeError) as e:
            raise _gpu._bad_dtype(2, "clip_grad_norm_", np.dtype(np.int32))
    assert dtypes.SUPPORTED in str(e.value), str(e.value)
    assert "nothing was modified" in str(e.value)
    assert entry != "torch" or "np." not in str(e.value)  # torch's advice for a tensor
    np.testing.assert_array_equal(a, before)
