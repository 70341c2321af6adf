"""Randomised soak of the Hardening II defect classes: run it, read the counts.

    python tools/soak_hardening.py [--cases N] [--seed S]

1. scale: random float16/bfloat16/float32 lists (magnitudes from 1e-30 to
   near each dtype's maximum, some strided) clipped by ``clip_grad_norm_``
   and ``clip_by_norm_`` with max_norm from 1e-30 to 1e3; every written
   element must be the correctly rounded ``x * (max_norm / norm)`` and no
   finite gradient may be zeroed.
2. foreign owners: a kept ``Clipper`` over torch CPU tensors, with random
   resize_/set_/storage-resize/in-place writes between calls: every call
   either refuses (RuntimeError, nothing written) or returns the exact norm
   of the memory the caller sees.
3. state dicts: random corruptions of a ``Clipper``'s state (threshold and
   history): each load either succeeds or raises, and a raising load leaves
   ``state_dict()`` as it was.

Prints one line per class: cases tried, and how many held.
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import sys

import ml_dtypes
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
import fusedclip as fc  # noqa: E402
from conftest import scaled  # noqa: E402

DT = [np.float16, ml_dtypes.bfloat16, np.float32]


def exact_norm(arrays) -> float:
    from fractions import Fraction

    s = sum((Fraction(float(v)) ** 2 for a in arrays for v in np.asarray(a, np.float64).ravel()),
            Fraction(0))
    return math.sqrt(s) if s < 1e300 else math.inf


def soak_scale(rng, n):
    held = 0
    for _ in range(n):
        dt = DT[rng.integers(3)]
        top = float(ml_dtypes.finfo(dt).max)
        k = int(rng.integers(1, 5))
        bufs, views = [], []
        for _ in range(k):
            mag = 10.0 ** rng.uniform(-30 if dt != np.float16 else -4, math.log10(top) - 1)
            a = (rng.standard_normal(int(rng.integers(1, 300))) * mag).astype(dt)
            bufs.append(a)
            views.append(a[::2] if rng.random() < 0.3 and a.size > 1 else a)
        before = [v.copy() for v in views]
        max_norm = 10.0 ** rng.uniform(-30, 3)
        local = rng.random() < 0.3
        try:
            if local:
                norms = fc.clip_by_norm_(views, max_norm)
                scales = [max_norm / nm if nm > max_norm else 1.0 for nm in norms]
            else:
                st = fc.Clipper(views, max_norm, nonfinite="skip")()
                scales = [st.scale] * len(views)
        except Exception as e:  # noqa: BLE001
            print("scale: raised", type(e).__name__, e)
            continue
        ok = True
        for v, b, s in zip(views, before, scales):
            want = b if s == 1.0 else scaled(b, s)
            if not np.array_equal(np.ascontiguousarray(v).view(np.uint8),
                                  np.ascontiguousarray(want).view(np.uint8)):
                ok = False
            nz = np.isfinite(b.astype(np.float64)) & (b.astype(np.float64) != 0)
            exact = np.abs(b.astype(np.float64)) * s
            tiny = float(ml_dtypes.finfo(dt).smallest_subnormal) / 2
            if np.any(nz & (exact > tiny) & (v.astype(np.float64) == 0)):
                ok = False  # a finite gradient zeroed although its result is representable
        held += ok
    return held


def soak_owners(rng, n):
    import torch

    held, refusals, exact = 0, 0, 0
    for _ in range(n):
        ts = [torch.randn(int(rng.integers(1, 2000))) * 10 for _ in range(int(rng.integers(1, 5)))]
        clipper = fc.Clipper(ts, 1.0)
        refused = False
        ok = True
        for _ in range(6):
            t = ts[int(rng.integers(len(ts)))]
            op = int(rng.integers(10))  # 0-4 change the memory, 5-9 keep it
            if op == 0:
                t.resize_(int(rng.integers(1, 100_000)))
                t.normal_()
            elif op == 1:
                t.set_(torch.randn(int(rng.integers(1, 3000))))
            elif op in (2, 5, 6):
                t.mul_(float(rng.uniform(0.5, 50)))
            elif op == 3:
                t.resize_(max(1, t.numel() // 2))
            elif op == 4:
                t.untyped_storage().resize_(0)
            else:
                pass  # nothing changes
            try:
                live = [x.clone() for x in ts if x.untyped_storage().nbytes()]
            except RuntimeError:
                live = None
            try:
                stats = clipper()
            except RuntimeError as e:
                if "new Clipper" not in str(e):
                    ok = False
                refused = True
                after = [x.clone() for x in ts if x.untyped_storage().nbytes()]
                if live is not None and not all(torch.equal(a.view(torch.uint8), b.view(torch.uint8))
                                                for a, b in zip(live, after)):
                    ok = False
                break
            want = exact_norm([x.numpy() for x in live])
            if not math.isclose(stats.norm, want, rel_tol=1e-6):
                ok = False
                break
            exact += 1
        refusals += refused
        held += ok
    return held, refusals, exact


def soak_states(rng, n):
    from fusedclip.thresholds import Fixed, Percentile, ZScore

    held = refused = 0
    bad_values = [-1, -1.5, math.nan, math.inf, -math.inf, 0, 1e400 if False else 1e308, "x", None,
                  [], [1.0, math.nan], True, 10**30]
    for _ in range(n):
        thr = [lambda: Fixed(1.0), lambda: Percentile(90, window=8),
               lambda: ZScore(0.9, z=3.0, warmup=2)][int(rng.integers(3))]()
        g = [np.ones(10) * float(rng.uniform(0.1, 10))]
        c = fc.Clipper(g, thr, history=4)
        for _ in range(int(rng.integers(0, 12))):
            g[0] *= float(rng.uniform(0.5, 2))
            c()
        before = copy.deepcopy(c.state_dict())
        state = copy.deepcopy(before)
        # corrupt one field somewhere in the nested dict
        part = state["threshold"] if rng.random() < 0.6 or state["history"] is None else state["history"]
        keys = list(part)
        key = keys[int(rng.integers(len(keys)))]
        part[key] = bad_values[int(rng.integers(len(bad_values)))]
        try:
            c.load_state_dict(state)
            held += 1  # accepted: a value that is possible (e.g. 0 or a large finite number)
        except (ValueError, TypeError):
            refused += 1
            held += c.state_dict() == before or _same(c.state_dict(), before)
        except Exception as e:  # noqa: BLE001 - any other exception is a defect
            print("state: raised", type(e).__name__, e)
    return held, refused


def _same(a, b) -> bool:
    return repr(a) == repr(b)  # NaN-tolerant comparison of nested states


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    n = args.cases
    print(f"scale:  {soak_scale(rng, n)} of {n} random lists exact (correctly rounded, none zeroed)")
    held, refused, exact = soak_owners(rng, n)
    print(f"owners: {held} of {n} kept Clippers held: {refused} refused a reallocation with "
          f"nothing written, {exact} calls over unmoved memory gave its exact norm")
    held, refused = soak_states(rng, n)
    print(f"states: {held} of {n} corrupted state dicts held ({refused} refused with the state "
          "unchanged, the rest held possible values and loaded)")


if __name__ == "__main__":
    main()
