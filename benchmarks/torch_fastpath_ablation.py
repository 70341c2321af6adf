"""What each part of fusedclip.torch's fast path is worth inside a training step.

    python benchmarks/torch_fastpath_ablation.py [--steps 200] [--model small] [--many]

The loop of benchmarks/torch_loop.py (a GPT-style model, AdamW,
``zero_grad(set_to_none=True)``, every step clipped, only the clip timed,
methods interleaved in alternating order), with ``fct.clip_grad_norm_`` run
as installed and with parts of the fast path switched off in turn:

* ``made_handles``: the shim's handles made per call by
  ``torch._C._aoti.unsafe_alloc_void_ptrs_from_tensors`` instead of taken in
  place in the tensors' Python objects;
* ``scalar_tensor``: the returned norm made by ``torch.scalar_tensor``
  instead of in C;
* ``neither``: both.

Reports the median clip time per step and torch's time over it.  ``--many``:
instead, 10,000 parameters of 256 float32 elements whose grads stay put
between calls (not clipped), handles in place against made, and torch.  Quote the
ratios of one run.  Not a test; docs/DESIGN.md §2b quotes it.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

import fusedclip.torch as fct
from fusedclip import _torchread as tr

sys.path.insert(0, str(Path(__file__).parent))
from torch_loop import MAX_NORM, MODELS, loop  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--model", default="small", choices=list(MODELS))
    ap.add_argument("--many", action="store_true")
    a = ap.parse_args(argv)
    off, making = tr.cdata_offset(), tr.making_results()
    if off < 0 or not making:
        print(f"nothing to switch off here: {fct.READER}")
        return 1
    if a.many:
        return many(off)

    def setup(v):
        tr.use_aoti(*fct._AOTI_ARGS, -1 if v in ("made_handles", "neither") else off)
        if v in ("scalar_tensor", "neither"):
            tr.use_result()
        else:
            tr.use_result(*fct._RESULT_ARGS)

    names = ["installed", "made_handles", "scalar_tensor", "neither"]
    methods = {v: (lambda ps: fct.clip_grad_norm_(ps, MAX_NORM)) for v in names}
    methods["torch"] = lambda ps: torch.nn.utils.clip_grad_norm_(ps, MAX_NORM, foreach=True)
    try:
        r = loop(a.model, a.steps, methods, before=setup)
    finally:
        setup("installed")
    med = r["median_us"]
    print(f"{a.model}: {r['tensors']} tensors, {a.steps} steps; {fct.READER}")
    for v in methods:
        print(f"  {v:14s} {med[v]:7.1f} us  {med['torch'] / med[v]:5.2f}x torch's")
    return 0


def many(off: int, reps: int = 15) -> int:
    ps = [torch.nn.Parameter(torch.zeros(256)) for _ in range(10000)]
    for p in ps:
        p.grad = torch.randn(256) * 1e-3
    times = {"in_place": [], "made_handles": [], "torch": []}
    try:
        for _ in range(reps):
            for k in times:
                tr.use_aoti(*fct._AOTI_ARGS, -1 if k == "made_handles" else off)
                t = time.perf_counter_ns()
                if k == "torch":
                    torch.nn.utils.clip_grad_norm_(ps, 1e9, foreach=True)
                else:
                    fct.clip_grad_norm_(ps, 1e9)
                times[k].append((time.perf_counter_ns() - t) / 1e6)
    finally:
        tr.use_aoti(*fct._AOTI_ARGS, off)
    print("10,000 parameters of 256 float32, grads kept, not clipped:")
    for k, v in times.items():
        print(f"  {k:14s} {statistics.median(v):7.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
