"""Distributed gradient clipping with fusedclip on torch.distributed (gloo, CPU).

    python examples/distributed_torch.py [--world 2] [--steps 30]

Two processes train one small MLP, data parallel with ZeRO-style sharded
weight gradients:

* each rank computes the gradient of its own batch; the gradients are
  all-reduced (averaged), as DDP does;
* the *weights'* gradient is then sharded: rank r keeps only its slice of
  the flattened weight gradient (what a reduce-scatter leaves with
  ZeRO-2/FSDP) and updates only that slice of the weights;
* the *biases'* gradients are replicated: every rank holds all of them
  (as LayerNorm/bias parameters are in tensor parallelism).

fusedclip clips each rank's buffers (its weight shard + the biases) with
``reduce=torch_reducer()``, marking the biases ``replicated``, so the norm
is the true global norm of the whole gradient: the script checks it
against the single-process norm of the full gradient at every step (to
1e-12).  Step 10 multiplies one rank's shard by 1e3 (a spike: clipped on
every rank), step 20 puts an inf into rank 1's shard only (both ranks skip
the step: ``nonfinite="skip"`` decides once for all).  Runs in seconds.
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fusedclip as fc
from fusedclip.distributed import torch_reducer

MAX_NORM = 1.0
LR = 0.1


def run(rank: int, world: int, init: str, steps: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    torch.manual_seed(0)  # the same initial model on every rank
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
    weights = [model[0].weight, model[2].weight]
    biases = [model[0].bias, model[2].bias]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # persistent gradients: the Clipper's plan stays valid
    n = sum(w.numel() for w in weights)
    lo, hi = rank * n // world, (rank + 1) * n // world  # this rank's slice of the weights
    flat_grad = torch.zeros(n)  # the flattened weight gradient; we keep [lo, hi)
    shard = flat_grad[lo:hi]
    buffers = [shard.numpy()] + [b.grad.numpy() for b in biases]
    clipper = fc.Clipper(buffers, MAX_NORM, nonfinite="skip", reduce=torch_reducer(),
                         replicated=[1, 2])
    gen = torch.Generator().manual_seed(1234 + rank)  # each rank its own data
    true_w = torch.linspace(-1, 1, 16)
    worst = 0.0
    for step in range(1, steps + 1):
        x = torch.randn(64, 16, generator=gen)
        y = torch.sin(x @ true_w).unsqueeze(1)
        for p in model.parameters():
            p.grad.zero_()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        for p in model.parameters():  # data parallel: average the gradients
            dist.all_reduce(p.grad)
            p.grad /= world
        torch.cat([w.grad.reshape(-1) for w in weights], out=flat_grad)
        if step == 10 and rank == 0:
            shard *= 1e3  # a spike in one rank's shard
        if step == 20 and rank == world - 1:
            shard[0] = math.inf  # an overflow on one rank only
        # the single-process reference: the full gradient (every rank's shard gathered)
        full = torch.zeros(n, dtype=torch.float64)
        full[lo:hi] = shard.double()
        dist.all_reduce(full)
        ref = torch.linalg.vector_norm(torch.cat([full] + [b.grad.double().reshape(-1)
                                                           for b in biases])).item()
        stats = clipper()  # one all-reduce round: the global norm, one decision on every rank
        if math.isfinite(ref):
            worst = max(worst, abs(stats.norm - ref) / ref)
        else:
            assert not stats.finite and not stats.clipped, stats
        if stats.finite:  # update this rank's weight slice and the (replicated) biases
            with torch.no_grad():
                upd = torch.zeros(n)
                upd[lo:hi] = shard
                dist.all_reduce(upd)  # the updated shards, gathered
                off = 0
                for w in weights:
                    w -= LR * upd[off:off + w.numel()].view_as(w)
                    off += w.numel()
                for b in biases:
                    b -= LR * b.grad
        if rank == 0 and (step % 5 == 0 or step in (10, 20)):
            print(f"step {step:3d}  loss {loss.item():.4f}  norm {stats.norm:10.4g}  "
                  f"clipped {stats.clipped!s:5}  finite {stats.finite}", flush=True)
    # every rank ends with the same model
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double()
    hi_, lo_ = flat.clone(), -flat
    dist.all_reduce(hi_, op=dist.ReduceOp.MAX)
    dist.all_reduce(lo_, op=dist.ReduceOp.MAX)
    same = torch.equal(hi_, -lo_)
    dist.destroy_process_group()
    if rank == 0:
        ok = worst <= 1e-12 and same
        print(f"{'OK' if ok else 'FAILED'}: fusedclip's distributed norm vs the full gradient's norm: "
              f"max relative error {worst:.1e}; the ranks' models are "
              f"{'identical' if same else 'DIFFERENT'}", flush=True)
        if not ok:
            sys.exit(1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    a = ap.parse_args(argv)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(run, args=(a.world, os.path.join(d, "store"), a.steps), nprocs=a.world)
    return 0


if __name__ == "__main__":
    sys.exit(main())
