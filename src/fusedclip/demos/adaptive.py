"""``fusedclip demo thresholds``: fixed against adaptive clipping thresholds.

The character RNN of ``fusedclip demo lr``, at a learning rate where plain
SGD diverges, trained from the same initialisation and batches with a fixed
threshold and with the two adaptive ones of ``fusedclip.thresholds``:
``Percentile`` (AutoClip, Seetharaman et al. 2020: the 10th percentile of
the norms so far) and ``ZScore`` (ZClip-style spike clipping, 2025).  Each
run's ``Clipper(history=...)`` records every step's norm, threshold and
clip event; the plot shows them with the loss curves.
"""
from __future__ import annotations

import math

import numpy as np

import fusedclip as fc

from ._out import pyplot, save
from .charlm import corpus
from .rnn import RNN, one_hot


def thresholds(fixed: float):
    return {"fixed": lambda: fixed,
            "percentile": lambda: fc.thresholds.Percentile(10),
            "zscore": lambda: fc.thresholds.ZScore(alpha=0.97, z=2.5, warmup=25)}


def run(out_prefix: str, lr: float = 2.0, steps: int = 1500, fixed: float = 1.0, plot: bool = True,
        hidden: int = 64, seq: int = 32, batch: int = 32) -> dict:
    text = corpus()
    chars = sorted(set(text))
    lut = np.zeros(128, np.int64)
    lut[[ord(c) for c in chars]] = np.arange(len(chars))
    idx = lut[np.frombuffer(text.encode("ascii"), np.uint8)]
    V = len(chars)
    mask = np.ones(seq, bool)
    runs = []
    for name, make in [("plain", None)] + list(thresholds(fixed).items()):
        net = RNN(V, hidden, V, "tanh", seed=0)
        c = fc.Clipper(net.grad_list, make() if make else math.inf, nonfinite="zero", history=steps)
        rng = np.random.default_rng(1000)
        losses, diverged = [], None
        with np.errstate(all="ignore"):
            for k in range(steps):
                starts = rng.integers(0, len(idx) - seq - 1, size=batch)
                win = idx[starts[None, :] + np.arange(seq + 1)[:, None]]
                loss = net.loss_and_grads(one_hot(win[:-1], V), win[1:], mask)
                c()
                net.sgd(lr)
                losses.append(float(loss))
                recent = losses[-20:]
                if not math.isfinite(loss) or (len(recent) == 20 and sum(recent) / 20 > math.log(V) + 1):
                    diverged = k + 1
                    break
        assert c.history is not None  # made with history=
        h = c.history.as_dict()
        tail = losses[-50:] if diverged is None else []
        runs.append({"threshold": name, "losses": losses, "diverged_at": diverged,
                     "final_loss": float(np.mean(tail)) if tail else None,
                     "clipped_steps": int(h["clipped"].sum()),
                     "history": {k: v.tolist() for k, v in h.items()}})
    doc = {"experiment": "fixed vs adaptive clipping thresholds, character RNN",
           "config": {"lr": lr, "steps": steps, "fixed": fixed, "hidden": hidden, "seq": seq,
                      "batch": batch, "percentile": 10, "zscore": {"alpha": 0.97, "z": 2.5, "warmup": 25},
                      "vocabulary": V},
           "runs": runs}
    return save(doc, out_prefix, _plot, plot)


def _plot(doc: dict, path: str) -> None:
    plt = pyplot()
    fig, (a, b) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    for i, r in enumerate(doc["runs"]):
        h = r["history"]
        x = np.array(h["step"])
        n = np.array([np.nan if v is None else v for v in h["norm"]], float)
        a.plot(x, n, color=f"C{i}", lw=0.6, alpha=0.6, label=f"{r['threshold']}: norm")
        if r["threshold"] != "plain":
            t = np.array([np.nan if v is None else v for v in h["threshold"]], float)
            a.plot(x, t, color=f"C{i}", lw=1.6, label=f"{r['threshold']}: threshold")
        y = np.array(r["losses"], float)
        k = 20 if len(y) >= 60 else 1
        b.plot(np.arange(len(y) - k + 1) + k - 1, np.convolve(y, np.ones(k) / k, "valid"), color=f"C{i}",
               label=r["threshold"] + ("" if r["diverged_at"] is None else f" (diverged at {r['diverged_at']})"))
    a.set_yscale("log")
    a.set_ylabel("gradient norm / threshold")
    a.legend(fontsize=7, ncol=2)
    b.set_ylabel("loss (nats/char), 20-step mean")
    b.set_xlabel("step")
    b.set_ylim(0, doc["config"]["vocabulary"] and math.log(doc["config"]["vocabulary"]) + 1.5)
    b.legend(fontsize=8)
    a.set_title(f"Character RNN at lr {doc['config']['lr']}: thresholds from Clipper(history=...)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(doc: dict) -> str:
    lines = ["threshold    final loss (or diverged)   clipped steps"]
    for r in doc["runs"]:
        f = "%.3f" % r["final_loss"] if r["final_loss"] is not None else f"diverged at {r['diverged_at']}"
        lines.append(f"{r['threshold']:<12} {f:<26} {r['clipped_steps']}")
    return "\n".join(lines)
