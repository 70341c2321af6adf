"""``fusedclip bench --device cuda``: fusedclip on a CUDA GPU against torch and the HBM floor.

The method is that of ``../shared/tools/gpu_bench.py`` (the harness behind
the GPU issue's figures), in one run:

* implementations, each on its own copy of the same gradients:
  ``torch-foreach`` (``torch.nn.utils.clip_grad_norm_(foreach=True)``, the
  peer), ``fusedclip`` (``clip_grad_norm_``: returns a float, so it waits
  once) and ``fusedclip-plan`` (a ``Clipper`` with ``nonfinite="skip"``:
  no host wait);
* **step**: back-to-back steps, ``sync; t0; N calls; sync; t1`` divided by N
  (the GPU queue hides what it can, as in training);
* **host**: the host time inside one call, ``t0; call; t1`` with no sync
  (small means asynchronous);
* **floor**: one contiguous buffer of the same bytes: one read (``torch.sum``,
  or ``vector_norm`` if faster) when not triggered, plus a read-write
  (``mul_``) when triggered, timed back to back like the steps.

Triggered steps shrink the threshold by 1 % per call, so that every call
clips again.  The norm's relative error is taken against a float64
reference of the stored values.

Buffers are torch CUDA tensors.  Without torch's CUDA, numba device arrays
are used (under the Numba CUDA simulator too, which is how the tests run this
module: the figures are then meaningless, the plumbing is not), with no
peer, and a device-to-device copy as the floor.
"""
from __future__ import annotations

import datetime
import math
import statistics
import sys
import time
from dataclasses import dataclass

import numpy as np

import fusedclip as fc
from fusedclip.bench import DTYPES, Workload, exact_norm, gpt_like_shapes, write_outputs


def workloads() -> dict[str, Workload]:
    """The CPU workloads, plus a GPT-medium-like set (292 buffers, 350M elements) and 16-bit variants."""
    gpt, med = tuple(gpt_like_shapes()), tuple(gpt_like_shapes(1024, 24, 50304, 1024))
    w = [
        Workload("big", "float32", ((64 * 2**20,),), "one buffer of 64M float32"),
        Workload("big", "bfloat16", ((64 * 2**20,),), "one buffer of 64M bfloat16"),
        Workload("gpt", "float32", gpt, "GPT-2-small-like: 148 buffers, 24.8M elements"),
        Workload("gpt", "bfloat16", gpt, "the GPT-like set in bfloat16"),
        Workload("gpt", "float16", gpt, "the GPT-like set in float16"),
        Workload("gpt", "float64", gpt, "the GPT-like set in float64"),
        Workload("small", "float32", ((256,),) * 10_000, "10,000 buffers of 256 elements"),
        Workload("medium", "float32", ((2**20,),) * 16, "16 buffers of 1M elements"),
        Workload("gpt-medium", "float32", med, "GPT-medium-like: 292 buffers, 350M elements"),
        Workload("gpt-medium", "bfloat16", med, "the GPT-medium-like set in bfloat16"),
    ]
    return {x.key: x for x in w}


QUICK = ["gpt/float32", "gpt/bfloat16", "small/float32"]


class TorchBackend:
    """torch CUDA tensors; torch's clip is the peer; the floor is torch's own reduction."""

    name = "torch"

    def __init__(self):
        import torch

        self.torch = torch

    def sync(self) -> None:
        self.torch.cuda.synchronize()

    def to_device(self, host: list[np.ndarray]) -> list:
        t = self.torch
        out = []
        for h in host:
            if h.dtype == DTYPES["bfloat16"]:
                out.append(t.from_numpy(h.view(np.int16)).view(t.bfloat16).cuda())
            else:
                out.append(t.from_numpy(h).cuda())
        return out

    def to_host(self, b) -> np.ndarray:
        t = self.torch
        if b.dtype == t.bfloat16:
            return b.view(t.int16).cpu().numpy().view(DTYPES["bfloat16"])
        return b.cpu().numpy()

    def peer(self, bufs):
        t = self.torch
        params = []
        for b in bufs:
            p = t.nn.Parameter(t.empty(0, device=b.device, dtype=b.dtype))
            p.data = t.empty_like(b)
            p.grad = b
            params.append(p)
        return lambda v: t.nn.utils.clip_grad_norm_(params, v, foreach=True)

    def floor(self, nbytes: int, dtype: np.dtype):
        t = self.torch
        tdt = {2: t.bfloat16 if dtype == DTYPES["bfloat16"] else t.float16, 4: t.float32,
               8: t.float64}[dtype.itemsize]
        flat = t.ones(max(nbytes // dtype.itemsize, 1), device="cuda", dtype=tdt)
        return (lambda: flat.sum()), (lambda: t.linalg.vector_norm(flat)), (lambda: flat.mul_(1.0))


class NumbaBackend:
    """numba device arrays (a GPU without torch, or the simulator): no peer."""

    name = "numba"

    def __init__(self):
        from numba import cuda

        self.cuda = cuda

    def sync(self) -> None:
        self.cuda.synchronize()

    def to_device(self, host: list[np.ndarray]) -> list:
        return [self.cuda.to_device(h) for h in host]

    def to_host(self, b) -> np.ndarray:
        return b.copy_to_host()

    def peer(self, bufs):
        return None

    def floor(self, nbytes: int, dtype: np.dtype):
        src = self.cuda.to_device(np.ones(max(nbytes // 8, 1), np.uint64))
        dst = self.cuda.device_array_like(src)
        copy = lambda: dst.copy_to_device(src)  # a read and a write: an upper bound on the read
        return copy, copy, copy


def backend():
    """torch when torch sees a GPU, else numba's device arrays; None when neither works."""
    try:
        import torch

        if torch.cuda.is_available():
            return TorchBackend()
    except ImportError:
        pass
    try:
        from numba import cuda

        if cuda.is_available():
            return NumbaBackend()
    except ImportError:
        pass
    return None


@dataclass
class Row:
    workload: str
    dtype: str
    mode: str
    impl: str
    step_s: float            # back-to-back, per step
    host_s: float            # host time inside one call (no sync)
    floor_s: float
    norm: float | None = None
    rel_err: float | None = None
    vs_torch: float | None = None  # torch's step time / this step time

    @property
    def x_floor(self) -> float:
        return self.step_s / self.floor_s


def _back_to_back(be, f, n: int, rounds: int = 3) -> float:
    best = math.inf
    for _ in range(rounds):
        be.sync()
        t0 = time.perf_counter()
        for _ in range(n):
            f()
        be.sync()
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def _host_time(be, f, reps: int) -> float:
    ts = []
    for _ in range(reps):
        be.sync()
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
        be.sync()
    return statistics.median(ts)


def run_workload(be, w: Workload, modes: list[str], reps: int, steps: int) -> list[Row]:
    host = w.make()
    exact = exact_norm(host)
    impls: dict = {}
    bufs = be.to_device(host)
    impls["fusedclip-plan"] = (bufs, fc.Clipper(bufs, 1e30, nonfinite="skip"))
    impls["fusedclip"] = (be.to_device(host), None)
    peer_bufs = be.to_device(host)
    peer = be.peer(peer_bufs)
    if peer is not None:
        impls["torch-foreach"] = (peer_bufs, peer)

    def caller(name):
        b, obj = impls[name]
        if name == "fusedclip-plan":
            def call(v):
                obj.max_norm = v
                return obj()
            return call
        if name == "fusedclip":
            return lambda v: fc.clip_grad_norm_(b, v)
        return obj

    first = {}
    for name in impls:  # warm-up, compiles and plans; and the norm of the untouched data
        r = caller(name)(1e30)
        first[name] = float(r.norm) if hasattr(r, "norm") else float(r)
    read, norm_read, rw = be.floor(w.nbytes, DTYPES[w.dtype])
    for f in (read, norm_read, rw):
        f()
    floor_read = min(_back_to_back(be, read, steps), _back_to_back(be, norm_read, steps))
    floor_rw = _back_to_back(be, rw, steps)
    rows = []
    for mode in modes:
        trig = mode == "triggered"
        floor = floor_read + (floor_rw if trig else 0.0)
        got = {}
        for name in impls:
            call = caller(name)
            state = {"t": exact * 0.5}

            def step(call=call, state=state):
                if trig:
                    state["t"] *= 0.99
                    return call(state["t"])
                return call(1e30)

            got[name] = (_back_to_back(be, step, steps), _host_time(be, step, reps))
        for name, (st, ht) in got.items():
            row = Row(w.name, w.dtype, mode, name, st, ht, floor, first[name],
                      abs(first[name] - exact) / exact if exact else abs(first[name]))
            if "torch-foreach" in got and name != "torch-foreach":
                row.vs_torch = got["torch-foreach"][0] / st
            rows.append(row)
    return rows


def fmt_table(rows: list[Row]) -> str:
    head = ["workload", "mode", "impl", "step ms", "host us", "x floor", "vs torch", "rel.err"]
    lines = [[f"{r.workload}/{r.dtype}", r.mode, r.impl, f"{r.step_s * 1e3:.3f}", f"{r.host_s * 1e6:.1f}",
              f"{r.x_floor:.2f}", "" if r.vs_torch is None else f"{r.vs_torch:.1f}x",
              "" if r.rel_err is None else f"{r.rel_err:.1e}"] for r in rows]
    widths = [max(len(h), *(len(l[i]) for l in lines)) for i, h in enumerate(head)]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    return "\n".join(out + ["  ".join(c.ljust(w) for c, w in zip(l, widths)) for l in lines])


def markdown(rows: list[Row]) -> str:
    out = ["| workload | mode | floor ms | torch ms | `Clipper` ms (× floor) | `clip_grad_norm_` ms "
           "| Clipper vs torch | host µs (Clipper / function) |", "|" + "---|" * 8]
    for g in dict.fromkeys((r.workload, r.dtype, r.mode) for r in rows):
        by = {r.impl: r for r in rows if (r.workload, r.dtype, r.mode) == g}
        p, f, t = by["fusedclip-plan"], by["fusedclip"], by.get("torch-foreach")
        out.append(f"| {g[0]}/{g[1]} | {g[2]} | {p.floor_s * 1e3:.3f} | "
                   f"{'–' if t is None else f'{t.step_s * 1e3:.3f}'} | {p.step_s * 1e3:.3f} ({p.x_floor:.2f}×) "
                   f"| {f.step_s * 1e3:.3f} | {'–' if p.vs_torch is None else f'{p.vs_torch:.1f}×'} "
                   f"| {p.host_s * 1e6:.0f} / {f.host_s * 1e6:.0f} |")
    return "\n".join(out)


def device_name() -> str:
    try:
        import torch

        return torch.cuda.get_device_name()
    except Exception:
        from fusedclip._gpu import gpu_state

        return gpu_state()


def run(keys: list[str], all_w: dict[str, Workload], modes: list[str], reps: int, steps: int,
        be=None) -> tuple[list[Row], dict]:
    be = be or backend()
    rows: list[Row] = []
    for i, k in enumerate(keys):
        print(f"[{i + 1}/{len(keys)}] {k} (cuda, {be.name}): {all_w[k].about} ...", file=sys.stderr, flush=True)
        rows += run_workload(be, all_w[k], modes, reps, steps)
    doc = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(), "backend": be.name, "fusedclip": fc.__version__,
        "config": {"reps": reps, "steps": steps, "modes": modes},
        "workloads": {k: {"about": all_w[k].about, "buffers": len(all_w[k].shapes),
                          "elements": all_w[k].elements, "bytes": all_w[k].nbytes} for k in keys},
        "results": [{"workload": r.workload, "dtype": r.dtype, "mode": r.mode, "impl": r.impl,
                     "step_s": r.step_s, "host_s": r.host_s, "floor_s": r.floor_s, "x_floor": r.x_floor,
                     "norm": r.norm, "rel_err": r.rel_err, "vs_torch": r.vs_torch} for r in rows],
    }
    return rows, doc


def main(args) -> int:
    be = backend()
    if be is None:
        print("fusedclip bench --device cuda: no CUDA GPU is usable here (torch.cuda and numba.cuda "
              "see none; pip install 'fusedclip[cuda]' on a machine with a GPU)", file=sys.stderr)
        return 2
    all_w = workloads()
    keys = QUICK if args.quick else list(all_w)
    if args.workload:
        unknown = set(args.workload) - {w.name for w in all_w.values()} - set(all_w)
        if unknown:
            print(f"fusedclip bench --device cuda: unknown workload {sorted(unknown)}; choose from "
                  f"{sorted({w.name for w in all_w.values()})}", file=sys.stderr)
            return 2
        keys = [k for k in all_w if all_w[k].name in args.workload or k in args.workload]
    if args.dtype:
        keys = [k for k in keys if all_w[k].dtype in args.dtype]
    if not keys:
        print("fusedclip bench --device cuda: nothing selected; workloads: "
              f"{', '.join(all_w)}", file=sys.stderr)
        return 2
    modes = [m for m in ("not-triggered", "triggered") if m in (args.mode or ["triggered", "not-triggered"])]
    reps = args.reps if args.reps is not None else (5 if args.quick else 21)
    rows, doc = run(keys, all_w, modes, reps, steps=20 if args.quick else 100, be=be)
    print(fmt_table(rows))
    write_outputs(args, doc, markdown(rows))
    return 0
