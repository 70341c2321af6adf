"""The clip inside an FSDP2 training step, 2 ranks: torch's against fusedclip.torch.

    python benchmarks/fsdp2_clip.py [--ranks 2] [--steps 40] [--models small,medium] [--json OUT]

The GPT-style model of benchmarks/torch_loop.py, under FSDP2
(``fully_shard`` per block and at the root) on a 1-D CPU mesh over gloo:
the gradients are ``DTensor`` shards.  AdamW, torch's default
``zero_grad(set_to_none=True)``.  Each method trains its own copy of the
model; only the clip right after the backward is timed, after a barrier
(every rank starts the clip together; the clip's own collectives wait for
the slowest rank), interleaved in an order that alternates.  The median over
the steps (the first tenth left out) of the slower rank is reported, with
torch's time over each method's and the collectives each one starts per
call (counted at torch.distributed's and the functional collectives' Python
entry points).  The threshold is low enough that every step clips.

Methods: one bare all-reduce of the 8 doubles fusedclip reduces (the
floor: what the collective alone costs here), torch's ``clip_grad_norm_(foreach=True)``, ``fusedclip.torch.
clip_grad_norm_``, a ``fusedclip.torch.Clipper`` built once, and the split
form accelerate calls (``get_total_norm`` then ``clip_grads_with_norm_``),
torch's and fusedclip's.

This machine is shared and noisy (2 cores for 2 ranks): quote the ratios of
one run.  Not a test; docs/DISTRIBUTED.md quotes it.
"""
import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _split_torch(ps, v):
    import torch

    n = torch.nn.utils.get_total_norm([p.grad for p in ps if p.grad is not None])
    torch.nn.utils.clip_grads_with_norm_(ps, v, n)
    return n


def _split_fusedclip(ps, v):
    import fusedclip.torch as fct

    n = fct.get_total_norm([p.grad for p in ps if p.grad is not None])
    fct.clip_grads_with_norm_(ps, v, n)
    return n


def rank_main(rank: int, world: int, init: str, models: list[str], steps: int) -> None:
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    import fusedclip.torch as fct

    sys.path[:0] = [str(HERE), str(HERE.parent / "tests" / "dist_workers")]
    from dtensor_worker import Collectives
    from torch_loop import GPT, MODELS

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    mesh = init_device_mesh("cpu", (world,))
    count = Collectives()
    v = 1e-3
    vec = torch.zeros(8, dtype=torch.float64)
    methods = {
        "one all_reduce of 8 float64 (the floor)": lambda ps: (dist.all_reduce(vec), vec[0])[1],
        "torch clip_grad_norm_ (foreach)": lambda ps: torch.nn.utils.clip_grad_norm_(ps, v, foreach=True),
        "fusedclip.torch.clip_grad_norm_": lambda ps: fct.clip_grad_norm_(ps, v),
        "fusedclip.torch.Clipper": "clipper",
        "torch get_total_norm + clip_grads_with_norm_": lambda ps: _split_torch(ps, v),
        "fusedclip.torch get_total_norm + clip_grads_with_norm_": lambda ps: _split_fusedclip(ps, v),
    }
    out = []
    for name in models:
        vocab, d, layers, ctx, batch = MODELS[name]
        copies, calls = {}, dict(methods)
        for m in methods:
            torch.manual_seed(0)
            model = GPT(vocab, d, layers, ctx)
            for b in model.blocks:
                fully_shard(b, mesh=mesh)
            fully_shard(model, mesh=mesh)
            ps = list(model.parameters())
            copies[m] = (model, ps, torch.optim.AdamW(ps, lr=1e-3))
            if methods[m] == "clipper":
                calls[m] = lambda ps, c=fct.Clipper(ps, v): c()
        g = torch.Generator().manual_seed(1 + rank)
        order = list(calls)
        times: dict = {m: [] for m in calls}
        colls: dict = {m: set() for m in calls}
        clipped = dict.fromkeys(calls, 0)
        for step in range(steps):
            idx = torch.randint(0, vocab, (batch, ctx), generator=g)
            for m in (order if step % 2 == 0 else order[::-1]):
                model, ps, opt = copies[m]
                opt.zero_grad(set_to_none=True)
                logits = model(idx)
                torch.nn.functional.cross_entropy(logits.view(-1, vocab), idx.view(-1)).mul(50.0).backward()
                assert isinstance(ps[0].grad, DTensor)
                dist.barrier()
                n0 = count.n
                t = time.perf_counter_ns()
                norm = calls[m](ps)
                times[m].append((time.perf_counter_ns() - t) / 1e3)
                colls[m].add(count.n - n0)
                value = norm.full_tensor() if isinstance(norm, DTensor) else norm
                clipped[m] += float(value) > v or "floor" in m
                opt.step()
        warm = max(3, steps // 10)
        med = {m: statistics.median(x[warm:]) for m, x in times.items()}
        both = [None] * world
        dist.all_gather_object(both, med)
        slow = {m: max(r[m] for r in both) for m in med}
        out.append({"model": name, "ranks": world, "tensors": len(copies[order[0]][1]),
                    "elements": sum(p.numel() for p in copies[order[0]][1]), "steps": steps,
                    "median_us_slowest_rank": slow, "collectives_per_call": {m: sorted(c) for m, c in colls.items()},
                    "clipped_steps": clipped})
    dist.barrier()
    dist.destroy_process_group()
    if rank == 0:
        print("RESULT " + json.dumps(out), flush=True)
    sys.stderr.flush()
    os._exit(0)  # past torch 2.13's gloo teardown, which sometimes aborts (tests/dist_workers/gloo.py)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--models", default="small,medium")
    ap.add_argument("--json", default="")
    ap.add_argument("--rank", type=int, default=-1, help=argparse.SUPPRESS)
    ap.add_argument("--init", default="", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    models = a.models.split(",")
    if a.rank >= 0:
        rank_main(a.rank, a.ranks, a.init, models, a.steps)
        return 0
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME=os.environ.get("GLOO_SOCKET_IFNAME", "lo"))
    with tempfile.TemporaryDirectory() as tmp:
        procs = [subprocess.Popen([sys.executable, __file__, "--rank", str(r), "--ranks", str(a.ranks),
                                   "--steps", str(a.steps), "--models", a.models, "--init", f"{tmp}/store"],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
                 for r in range(a.ranks)]
        texts = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        for r, (p, t) in enumerate(zip(procs, texts)):
            if p.returncode:
                print(f"rank {r} failed:\n{t[-4000:]}", file=sys.stderr)
        return 1
    res = json.loads(next(x for x in texts[0].splitlines() if x.startswith("RESULT "))[7:])
    for r in res:
        med = r["median_us_slowest_rank"]
        base = med["torch clip_grad_norm_ (foreach)"]
        split = med["torch get_total_norm + clip_grads_with_norm_"]
        print(f"\n{r['model']}: {r['tensors']} tensors, {r['elements']:,} elements, FSDP2 over {r['ranks']} "
              f"ranks (gloo, CPU), {r['steps']} steps; median clip time of the slower rank")
        for m, us in med.items():
            ref = split if "get_total_norm" in m else base
            print(f"  {m:56s} {us:9.1f} us  {ref / us:5.2f}x torch  collectives/call "
                  f"{r['collectives_per_call'][m]}  clipped {r['clipped_steps'][m]}/{r['steps']}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
