"""``fusedclip demo lr``: does clipping let a recurrent net train at a larger learning rate?

The sources' practitioners say that clipping "allowed me to up the learning
rate so that the training converges much faster".  This sweeps the learning
rate of a small character-level RNN (tanh units, truncated BPTT) with and
without norm clipping (fusedclip), from the same initialisation and the
same batches, and records the loss curves and which runs diverge.

The text ships with Python: the docstrings of a fixed list of standard
library modules, so nothing is downloaded (the exact text, and so the exact
numbers, depend on the Python version; the JSON records its size).
"""
from __future__ import annotations

import importlib
import math

import numpy as np

from ._out import pyplot, save
from .rnn import RNN, one_hot

MODULES = ("json", "collections", "functools", "itertools", "textwrap", "string", "random",
           "statistics", "fractions", "decimal", "heapq", "bisect", "argparse", "logging",
           "pathlib", "inspect", "unittest", "typing", "dataclasses", "enum")


def corpus() -> str:
    """The docstrings of MODULES and of their public names (``__all__`` where a
    module has one), printable ASCII only: the same text in any process."""
    import types
    import warnings

    parts = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated attributes (typing.re) warn when read
        for name in MODULES:
            m = importlib.import_module(name)
            parts.append(m.__doc__ or "")
            # the module's own public names: not dir(), which also lists the
            # submodules that something else happened to import (json.decoder,
            # logging.config), so the text would depend on the process's past
            names = getattr(m, "__all__", None) or [a for a in dir(m) if not a.startswith("_")]
            for attr in sorted(names):
                obj = getattr(m, attr, None)
                if isinstance(obj, types.ModuleType):
                    continue
                doc = getattr(obj, "__doc__", None)
                if isinstance(doc, str):
                    parts.append(doc)
    text = "\n".join(parts)
    return "".join(ch for ch in text if 32 <= ord(ch) < 127 or ch == "\n")


def train(text_idx: np.ndarray, vocab: int, lr: float, clip: float | None, steps: int, seed: int = 0,
          hidden: int = 64, seq: int = 32, batch: int = 32):
    """One run; returns (losses per step, diverged at step or None, clipped steps).

    A run has diverged when its loss is inf/NaN, or when its mean over 20
    steps is above ln(vocab) + 1 nats (worse than guessing uniformly); it
    stops there."""
    net = RNN(vocab, hidden, vocab, "tanh", seed=seed)
    clipper = net.clipper(clip) if clip is not None else None
    rng = np.random.default_rng(1000 + seed)           # the same batches for every run
    losses, diverged, clipped = [], None, 0
    mask = np.ones(seq, bool)
    with np.errstate(all="ignore"):                      # a diverging run overflows: that is the point
        for k in range(steps):
            starts = rng.integers(0, len(text_idx) - seq - 1, size=batch)
            win = text_idx[starts[None, :] + np.arange(seq + 1)[:, None]]   # (seq+1, batch)
            loss = net.loss_and_grads(one_hot(win[:-1], vocab), win[1:], mask)
            if clipper is not None:
                clipped += int(clipper().clipped)
            net.sgd(lr)
            losses.append(loss)
            # diverged: inf/NaN, or the 20-step mean is worse than a uniform guess by 1 nat
            recent = losses[-20:]
            if (not math.isfinite(loss) or not all(np.isfinite(p).all() for p in net.params.values())
                    or (len(recent) == 20 and sum(recent) / 20 > math.log(vocab) + 1.0)):
                diverged = k + 1
                break
    return losses, diverged, clipped


def run(out_prefix: str, lrs=(0.3, 1.0, 2.0, 3.0, 5.0, 10.0), clip: float = 1.0, steps: int = 1500,
        plot: bool = True) -> dict:
    text = corpus()
    chars = sorted(set(text))
    idx = np.frombuffer(text.encode("ascii"), np.uint8)
    lut = np.zeros(128, np.int64)
    lut[[ord(c) for c in chars]] = np.arange(len(chars))
    text_idx = lut[idx]
    V = len(chars)
    runs = []
    for lr in lrs:
        for c in (None, clip):
            losses, div, nclip = train(text_idx, V, lr, c, steps)
            tail = losses[-50:] if div is None else []
            runs.append({"lr": lr, "clip": c, "losses": [float(x) for x in losses], "diverged_at": div,
                         "clipped_steps": nclip,
                         "final_loss": float(np.mean(tail)) if tail else None})
    finals = {(r["lr"], r["clip"]): r["final_loss"] for r in runs}

    def best(c):
        ok = [(v, lr) for (lr, cc), v in finals.items() if cc == c and v is not None]
        return min(ok)[1] if ok else None

    doc = {"experiment": "learning-rate sweep, character-level RNN, with and without norm clipping",
           "text": {"source": "docstrings of the standard library modules " + ", ".join(MODULES),
                    "characters": len(text), "vocabulary": V},
           "config": {"hidden": 64, "seq": 32, "batch": 32, "steps": steps, "clip_threshold": clip,
                      "initial_loss_ln_V": math.log(V)},
           "best_lr": {"plain": best(None), "clipped": best(clip)},
           "runs": runs}
    return save(doc, out_prefix, _plot, plot)


def _plot(doc: dict, path: str) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(8, 5))
    top = max(6.0, doc["config"]["initial_loss_ln_V"] + 1.5)
    lrs = sorted({r["lr"] for r in doc["runs"]})
    for i, lr in enumerate(lrs):
        for r in (r for r in doc["runs"] if r["lr"] == lr):
            y = np.array(r["losses"], float)
            k = 20 if len(y) >= 60 else 1          # short (diverged) runs: the raw losses
            sm = np.convolve(y, np.ones(k) / k, mode="valid")
            ls = "--" if r["clip"] is not None else "-"
            lbl = f"lr {lr:g}, {'clipped' if r['clip'] is not None else 'plain'}"
            ax.plot(np.arange(len(sm)) + k - 1, np.minimum(sm, top), ls, color=f"C{i}", label=lbl)
            if r["diverged_at"] is not None:
                ax.plot(r["diverged_at"] - 1, top - 0.15 - 0.12 * i, "x", color=f"C{i}", ms=9, mew=2)
    ax.axhline(doc["config"]["initial_loss_ln_V"], color="k", lw=0.7, ls=":", label="ln V (uniform guess)")
    ax.set_ylim(0, top)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/char), 20-step mean, capped at the top")
    ax.set_title("Character RNN: learning-rate sweep; x = diverged (inf/NaN, or 1 nat worse than uniform)", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(doc: dict) -> str:
    lines = ["lr       plain: final loss (diverged at)     clipped: final loss (diverged at, clipped steps)"]
    by = {(r["lr"], r["clip"] is not None): r for r in doc["runs"]}
    for lr in sorted({r["lr"] for r in doc["runs"]}):
        p, c = by[(lr, False)], by[(lr, True)]
        f = lambda r: ("%.3f" % r["final_loss"]) if r["final_loss"] is not None else f"diverged at {r['diverged_at']}"
        lines.append(f"{lr:<8g} {f(p):<34} {f(c)} ({c['clipped_steps']} clipped)")
    lines.append(f"best lr: plain {doc['best_lr']['plain']}, clipped {doc['best_lr']['clipped']}")
    return "\n".join(lines)
