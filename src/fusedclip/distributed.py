"""Ready-made ``reduce=`` callables for distributed clipping.

>>> import fusedclip as fc
>>> from fusedclip.distributed import torch_reducer
>>> reduce = torch_reducer()                      # after dist.init_process_group("gloo")
>>> clipper = fc.Clipper(grads, 1.0, reduce=reduce, replicated=[0, 1])
>>> stats = clipper()                             # the global norm, one decision on every rank

A reducer is ``reduce(x, op) -> y``: ``x`` a 1-D float64 numpy array of a
few elements, ``op`` ``"sum"`` or ``"max"``; ``y`` a float64 array of the
same shape with the element-wise sum or max over every rank of the group,
the same bits on every rank.  It is called collectively: every rank calls
it the same number of times, with the same shapes and ops, in the same
order (fusedclip guarantees that on its side).  See docs/DISTRIBUTED.md.

Importing this module imports neither torch nor mpi4py; each reducer
imports its library when it is made.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ._reduce import OPS

Reduce = Callable[[np.ndarray, str], np.ndarray]

__all__ = ["torch_reducer", "mpi_reducer", "OPS"]


def _check_op(op: str) -> None:
    if op not in OPS:
        raise ValueError(f"reduce: op must be 'sum' or 'max', got {op!r}")


def torch_reducer(group: Any = None, device: Any = None) -> Reduce:
    """A reducer over ``torch.distributed.all_reduce`` on ``group`` (None: the
    default group), which must be initialised.

    ``device``: where the vector is reduced.  None: on the CPU, which the
    gloo backend needs.  NCCL reduces only CUDA tensors: pass
    ``device=torch.device("cuda", local_rank)``; the vector is copied there
    and back (a host wait per round; not measured here, there was no GPU).
    """
    import torch
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("torch_reducer: torch.distributed is not initialised; call "
                           "torch.distributed.init_process_group first")
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}
    dev = None if device is None else torch.device(device)

    def reduce(x: np.ndarray, op: str) -> np.ndarray:
        _check_op(op)
        t = torch.from_numpy(np.array(x, dtype=np.float64))  # a copy: x is not changed
        if dev is not None:
            t = t.to(dev)
        dist.all_reduce(t, op=ops[op], group=group)
        return t.cpu().numpy()

    return reduce


def mpi_reducer(comm: Any = None) -> Reduce:
    """A reducer over ``comm.Allreduce`` (mpi4py; None: ``MPI.COMM_WORLD``),
    with ``MPI.SUM`` / ``MPI.MAX`` on float64 buffers."""
    from mpi4py import MPI

    if comm is None:
        comm = MPI.COMM_WORLD
    ops = {"sum": MPI.SUM, "max": MPI.MAX}

    def reduce(x: np.ndarray, op: str) -> np.ndarray:
        _check_op(op)
        send = np.ascontiguousarray(x, dtype=np.float64)
        out = np.empty_like(send)
        comm.Allreduce([send, MPI.DOUBLE], [out, MPI.DOUBLE], op=ops[op])
        return out

    return reduce
