"""``fusedclip demo``: the source paper's exploding-gradient experiments, with fusedclip clipping.

Pascanu, Mikolov & Bengio, *On the difficulty of training recurrent neural
networks* (2013; ``../shared/seeds/003_*``), at laptop scale:

* ``cliff`` (Fig. 3, §2.4): the wall in the error surface of a one-unit RNN,
  and gradient descent with and without norm clipping (``cliff.py``);
* ``temporal-order`` (Fig. 7, §4.3): success rate against sequence length,
  SGD against clipped SGD, from the same seeds (``temporal.py``);
* ``lr``: a learning-rate sweep of a character RNN, with and without
  clipping (``charlm.py``);
* ``thresholds``: that RNN with a fixed threshold against the adaptive ones
  (Percentile/AutoClip, ZScore/ZClip), from each Clipper's history
  (``adaptive.py``).

The trainers are numpy, float32, vectorised BPTT (``rnn.py``); the gradients
are clipped in place by a ``fusedclip.Clipper`` planned once per run.
docs/EXPERIMENTS.md sets the findings beside the paper's.
"""
from __future__ import annotations

import math
from typing import Any
import os
import sys

NAMES = ("cliff", "temporal-order", "lr", "thresholds")


def add_parser(sub) -> None:
    d = sub.add_parser(
        "demo",
        help="reproduce the paper's experiments: cliff, temporal-order, lr, thresholds (PNG + JSON/CSV)",
        description="Runs one of the source paper's experiments at laptop scale and writes a PNG "
        "and the numbers (JSON, or CSV for temporal-order) into --out.",
    )
    d.add_argument("name", choices=NAMES)
    d.add_argument("--out", default=".", metavar="DIR", help="where to write the files (default: .)")
    d.add_argument("--no-plot", action="store_true", help="write the numbers only (no matplotlib needed)")
    d.add_argument("--full", action="store_true",
                   help="temporal-order at the paper's scale (50 seeds x 100k steps x batch 1000: days), "
                   "with a progress bar and the time left")
    d.add_argument("--lengths", metavar="T,T,...", help="temporal-order: sequence lengths")
    d.add_argument("--seeds", type=int, metavar="N", help="temporal-order: runs per length and method")
    d.add_argument("--steps", type=int, metavar="N", help="training steps per run (every demo)")
    d.add_argument("--lrs", metavar="LR,LR,...", help="lr: the learning rates to sweep")
    d.add_argument("--lr", type=float, metavar="LR",
                   help="temporal-order and thresholds: the learning rate (default 10 and 2)")


def temporal_min_length() -> int:
    from .temporal import MIN_LENGTH

    return MIN_LENGTH


def outputs(args) -> list[str]:
    """The files the demo writes into --out (all of them at its end)."""
    ext = {"temporal-order": ["csv", "json"]}.get(args.name, ["json"]) + ([] if args.no_plot else ["png"])
    return [f"{args.name}.{e}" for e in ext]


def check(args) -> str | None:
    """A usage error, or None (checked before anything runs)."""
    from .._outputs import output_problem

    if not os.path.isdir(args.out):
        return f"--out {args.out}: not a directory"
    if not os.access(args.out, os.W_OK):
        return f"--out {args.out}: not writable"
    for name in outputs(args):  # each file, as the run would write it at its end
        path = os.path.join(args.out, name)
        if (why := output_problem(path)) is not None:
            return f"--out {args.out}: the demo writes {path}, which {why}"
    for flag in ("seeds", "steps"):
        v = getattr(args, flag)
        if v is not None and v < 1:
            return f"--{flag} must be >= 1, got {v}"
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        return f"--lr must be finite and > 0, got {args.lr}"
    only = {"lengths": ("temporal-order",), "seeds": ("temporal-order",),
            "lr": ("temporal-order", "thresholds"), "full": ("temporal-order",), "lrs": ("lr",)}
    for flag, demos in only.items():
        if getattr(args, flag) not in (None, False) and args.name not in demos:
            return f"--{flag} applies to the {' and '.join(demos)} demo{'s' if len(demos) > 1 else ''} only"
    for flag, conv in (("lengths", int), ("lrs", float)):
        v = getattr(args, flag)
        if v is not None:
            try:
                xs = [conv(x) for x in v.split(",")]
            except ValueError:
                return f"--{flag}: expected a comma-separated list, got {v!r}"
            if flag == "lengths" and min(xs) < temporal_min_length():
                return f"--lengths: every length must be >= {temporal_min_length()} (E, B and two slots), got {v!r}"
            if flag == "lrs" and not all(math.isfinite(x) and x > 0 for x in xs):
                return f"--lrs: every value must be finite and > 0, got {v!r}"
    if not args.no_plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            return "the plots need matplotlib (pip install matplotlib), or pass --no-plot"
    return None


def main(args) -> int:
    out = lambda name: os.path.join(args.out, name)
    prefix = out(args.name)  # PREFIX.json, .png, .csv: the files outputs() names
    plot = not args.no_plot
    if args.name == "cliff":
        from . import cliff

        doc = cliff.run(prefix, plot=plot, **({"steps": args.steps} if args.steps else {}))
        print(cliff.report(doc))
    elif args.name == "temporal-order":
        from . import temporal

        cfg: dict[str, Any] = dict(temporal.FULL if args.full else temporal.DEFAULT)
        if args.lengths:
            cfg["lengths"] = tuple(int(x) for x in args.lengths.split(","))
        if args.seeds:
            cfg["seeds"] = args.seeds
        if args.steps:
            cfg["steps"] = args.steps
        if args.lr:
            cfg["lr"] = args.lr
        doc = temporal.run(prefix, plot=plot, progress=True, **cfg)
        print(temporal.report(doc))
    elif args.name == "thresholds":
        from . import adaptive

        kw = {k: v for k, v in (("steps", args.steps), ("lr", args.lr)) if v}
        doc = adaptive.run(prefix, plot=plot, **kw)
        print(adaptive.report(doc))
    else:
        from . import charlm

        kw = {}
        if args.lrs:
            kw["lrs"] = tuple(float(x) for x in args.lrs.split(","))
        if args.steps:
            kw["steps"] = args.steps
        doc = charlm.run(prefix, plot=plot, **kw)
        print(charlm.report(doc))
    for f in outputs(args):
        print(f"wrote {out(f)}", file=sys.stderr)
    return 0
