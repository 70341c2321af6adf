"""Stand-ins for torch CUDA tensors over host memory, for the CUDA path of
fusedclip.torch without a GPU (tests/test_torch_dropin.py with the recording
launcher; tests/gpu/sim_torch_suite.py with the simulator's real kernels).

fusedclip reads a torch CUDA tensor through its module name, ``is_cuda``,
``dtype``, ``numel()``, ``shape``, ``stride()``, ``data_ptr()`` and
``device.index`` (``_gpu._describe``); fusedclip.torch also reads
``layout``, ``device`` and ``requires_grad``.  These objects answer exactly
that, with the address of a numpy array (the launchers' "device memory" is
host memory)."""
import types

import ml_dtypes
import numpy as np
import torch

NP_OF = {torch.float64: np.float64, torch.float32: np.float32, torch.float16: np.float16,
         torch.bfloat16: ml_dtypes.bfloat16}


class FakeCudaTensor:
    is_cuda = True
    requires_grad = False
    layout = torch.strided

    def __init__(self, host: np.ndarray, dtype):
        assert host.flags.c_contiguous and host.dtype == np.dtype(NP_OF[dtype])
        self.host, self.dtype = host, dtype
        self.shape = torch.Size(host.shape)
        self.device = types.SimpleNamespace(type="cuda", index=0)

    def numel(self) -> int:
        return int(self.host.size)

    def stride(self):
        return tuple(s // self.host.itemsize for s in self.host.strides)

    def data_ptr(self) -> int:
        return int(self.host.ctypes.data)


FakeCudaTensor.__module__ = "torch._fusedclip_test_fakes"  # what _gpu recognises as torch's


class FakeParam:
    def __init__(self, grad):
        self.grad = grad


def fake_params(hosts, dtypes):
    return [FakeParam(FakeCudaTensor(h, dt)) for h, dt in zip(hosts, dtypes)]


def patch_torch_cuda(monkeypatch, stream=4242):
    """What fusedclip.torch needs from a CUDA build of torch: the current
    stream's raw handle, a device scalar for the norm (here on the CPU: the
    launchers' device memory is host memory), and no version counters."""
    import fusedclip.torch as fct

    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda idx: stream, raising=False)
    monkeypatch.setattr(fct, "_device_empty", lambda device: torch.empty((), dtype=torch.float64))
    monkeypatch.setattr(fct, "_bump", lambda grads: None)
