"""fusedclip.torch.clip_grad_norm_ against torch.nn.utils.clip_grad_norm_ on the CPU.

    python benchmarks/torch_dropin.py [--reps 21] [--dtype float32] [--mode not-triggered]

The GPT-2-small-like set of ``fusedclip bench`` (GPT-2's layer layout at width
384: 148 parameters, 24.8M elements), as torch parameters with gradients.
Each implementation clips its own copy of the same values; rounds are
interleaved and rotated, and each timed call first finds its gradients just
read (by its own library), as a clip finds them after backward.  Medians;
the ratios are what to quote (this machine is shared and noisy).  Not a test.
"""
import argparse
import gc
import statistics
import sys
import time

import numpy as np
import torch

import fusedclip as fc
import fusedclip.torch as fct
from fusedclip.bench import gpt_like_shapes

TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
                "float16": torch.float16}


def params_for(shapes, dtype, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for s in shapes:
        g = torch.from_numpy(rng.standard_normal(s, dtype=np.float32)).to(dtype)
        p = torch.nn.Parameter(torch.empty_like(g))
        p.grad = g
        out.append(p)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=21)
    ap.add_argument("--dtype", default="float32", choices=sorted(TORCH_DTYPES))
    ap.add_argument("--mode", default="not-triggered", choices=["not-triggered", "triggered"])
    a = ap.parse_args(argv)
    dt = TORCH_DTYPES[a.dtype]
    shapes = gpt_like_shapes()
    sets = {name: params_for(shapes, dt) for name in ("fusedclip.torch", "fusedclip.torch.Clipper",
                                                       "fusedclip (numpy views)", "torch foreach=True",
                                                       "torch default")}
    arrays = [fct._cpu_view(p.grad, i, "") for i, p in enumerate(sets["fusedclip (numpy views)"])]
    n = sum(p.numel() for p in sets["torch default"])
    exact = fc.global_norm([p.grad.float().numpy() for p in sets["torch default"]])
    triggered = a.mode == "triggered"
    state = {"t": exact * 0.5 if triggered else 1e30}

    def t():
        if triggered:
            state["t"] *= 0.99  # every call clips again
        return state["t"]

    clipper = fct.Clipper(sets["fusedclip.torch.Clipper"], 1e30)

    def run_clipper():
        clipper.max_norm = t()
        return clipper()

    impls = {
        "fusedclip.torch": lambda: fct.clip_grad_norm_(sets["fusedclip.torch"], t()),
        "fusedclip.torch.Clipper": run_clipper,
        "fusedclip (numpy views)": lambda: fc.clip_grad_norm_(arrays, t()),  # the array API: the engine alone
        "torch foreach=True": lambda: torch.nn.utils.clip_grad_norm_(sets["torch foreach=True"], t(), foreach=True),
        "torch default": lambda: torch.nn.utils.clip_grad_norm_(sets["torch default"], t()),
    }
    views = {k: [p.grad for p in v] for k, v in sets.items()}
    warm = {k: (lambda g=g: torch._foreach_norm(g)) if k.startswith("torch") else
            (lambda g=g: fct._cpu_view(g[0], 0, "") is not None and fc.global_norm(
                [fct._cpu_view(x, 0, "") for x in g])) for k, g in views.items()}
    norms = {k: float(f()) for k, f in impls.items()}  # warm-up, and the error column
    times = {k: [] for k in impls}
    names = list(impls)
    gc.collect()
    gc.disable()
    try:
        for r in range(a.reps):
            for name in names[r % len(names):] + names[:r % len(names)]:
                time.sleep(0.002)
                warm[name]()
                t0 = time.perf_counter()
                impls[name]()
                times[name].append(time.perf_counter() - t0)
    finally:
        gc.enable()
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"GPT-2-small-like set: {len(shapes)} parameters, {n / 1e6:.1f}M elements, {a.dtype}, {a.mode}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} torch threads; median of {a.reps}")
    print(f"{'implementation':28s} {'median ms':>10s} {'torch default / this':>21s} "
          f"{'torch foreach / this':>21s} {'norm rel. error':>16s}")
    for k in impls:
        err = abs(norms[k] - exact) / exact
        print(f"{k:28s} {med[k] * 1e3:10.2f} {med['torch default'] / med[k]:21.2f} "
              f"{med['torch foreach=True'] / med[k]:21.2f} {err:16.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
