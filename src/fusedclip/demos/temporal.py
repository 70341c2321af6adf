"""``fusedclip demo temporal-order``: the paper's Fig. 7 (§4.3) at laptop scale.

Task 6a of Hochreiter & Schmidhuber (1997), the temporal order problem: a
sequence of T symbols starts with E and ends with B; the rest are random
distractors a, b, c, d, except two, at a random position in [0.1T, 0.2T]
and one in [0.5T, 0.6T], which are each X or Y.  At the end the network
must say which of XX, XY, YX, YY it saw: it has to remember two symbols
across ~0.4T steps of noise.  The model is the paper's: 50 sigmoid units,
trained by BPTT with minibatch SGD, plain or with the gradient's norm
clipped (fusedclip), from the same seeds.  A run is solved when a held-out
batch of 1000 sequences (drawn once per run from its own generator, never
trained on, scored every 100 steps) is answered without a mistake: the
paper's "1000 consecutive inputs".  (Scoring the same batch repeatedly is a
mild selection; a fresh batch per check would cost a forward pass more.)
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ._out import pyplot, save
from .rnn import RNN, one_hot

SYMBOLS = "abcdXYEB"
#: the shortest sequence with room for E, B and the two relevant slots apart
MIN_LENGTH = 6
N_IN, N_OUT = len(SYMBOLS), 4


def batch(T: int, B: int, rng: np.random.Generator):
    """(one-hot inputs (T, B, 8), targets (T, B), class (B,)); T >= MIN_LENGTH."""
    if T < MIN_LENGTH:
        raise ValueError(f"the temporal order task needs T >= {MIN_LENGTH}, got {T}")
    seq = rng.integers(0, 4, size=(T, B))               # distractors a..d
    seq[0], seq[-1] = 6, 7                               # E ... B
    lo1, hi1 = max(1, int(0.1 * T)), max(2, int(0.2 * T))
    lo2, hi2 = max(hi1 + 1, int(0.5 * T)), max(hi1 + 2, int(0.6 * T))
    p1 = rng.integers(lo1, hi1 + 1, size=B)
    p2 = rng.integers(lo2, min(hi2, T - 2) + 1, size=B)
    s1, s2 = rng.integers(0, 2, size=B), rng.integers(0, 2, size=B)
    cols = np.arange(B)
    seq[p1, cols] = 4 + s1
    seq[p2, cols] = 4 + s2
    cls = 2 * s1 + s2
    targets = np.zeros((T, B), np.int64)
    targets[-1] = cls
    return one_hot(seq, N_IN), targets, cls


def train(T: int, seed: int, steps: int, clip: float | None, lr: float = 0.5, batch_size: int = 100,
          hidden: int = 50, check_every: int = 100, test_size: int = 1000, progress=None):
    """Train one run; returns a dict (solved, step solved at, final loss, largest gradient norm)."""
    rng = np.random.default_rng(seed)  # the batches (the weights' generator is seeded alike)
    net = RNN(N_IN, hidden, N_OUT, "sigmoid", seed=seed, rec_scale=1.0)
    clipper = net.clipper(clip) if clip is not None else None
    mask = np.zeros(T, bool)
    mask[-1] = True
    test_rng = np.random.default_rng(10_000 + seed)
    Ut, _, ct = batch(T, test_size, test_rng)
    out: dict[str, Any] = {"T": T, "seed": seed, "clip": clip, "solved": False, "solved_at": None,
           "max_grad_norm": 0.0, "clipped_steps": 0}
    loss = float("nan")
    for k in range(1, steps + 1):
        U, tg, _ = batch(T, batch_size, rng)
        loss = net.loss_and_grads(U, tg, mask)
        if clipper is not None:
            st = clipper()
            norm = st.norm
            out["clipped_steps"] += int(st.clipped)
        else:
            import fusedclip as fc

            norm = fc.global_norm(net.grad_list)
        out["max_grad_norm"] = max(out["max_grad_norm"], float(norm))
        net.sgd(lr)
        if progress is not None:
            progress()
        if k % check_every == 0 or k == steps:
            acc = float((net.predict(Ut).argmax(axis=1) == ct).mean())
            out["accuracy"] = acc
            if acc == 1.0:
                out["solved"], out["solved_at"] = True, k
                break
    out["final_loss"] = loss
    return out


#: the paper's scale (§4.3): 50 runs, 100k steps, batches of 1000, lr .001 on
#: the batch's summed loss (1.0 on its mean, as here); lengths as in Fig. 7
FULL = {"lengths": (10, 20, 50, 100, 150, 200), "seeds": 50, "steps": 100_000, "batch": 1000, "lr": 1.0}
#: the default: a few minutes on this project's 2-core machine.  lr 10 on
#: the mean loss, where plain SGD's gradient explodes (docs/EXPERIMENTS.md
#: reports lr 1 and 3 too)
DEFAULT = {"lengths": (8, 12, 16, 20), "seeds": 5, "steps": 3000, "batch": 100, "lr": 10.0}


class Progress:
    """A one-line progress bar with an estimated time left, on stderr."""

    def __init__(self, total: int, stream=None):
        import sys
        import time

        self.total, self.done, self.t0, self.last = total, 0, time.perf_counter(), 0.0
        self.stream = stream or sys.stderr
        self._time = time.perf_counter

    def add(self, n: int = 1) -> None:
        self.done += n
        now = self._time()
        if now - self.last >= 1.0 or self.done >= self.total:
            self.last = now
            frac = self.done / self.total if self.total else 1.0
            eta = (now - self.t0) * (1 - frac) / frac if frac > 0 else float("inf")
            bar = "#" * int(30 * frac)
            self.stream.write(f"\r[{bar:<30}] {100 * frac:5.1f}%  eta {_fmt_secs(eta)}   ")
            self.stream.flush()
            if self.done >= self.total:
                self.stream.write("\n")


def _fmt_secs(s: float) -> str:
    if s != s or s == float("inf"):
        return "?"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def run(out_prefix: str, lengths, seeds: int, steps: int, batch: int, lr: float, clip: float = 1.0,
        plot: bool = True, progress: bool = False) -> dict:
    import csv
    import time

    bar = Progress(len(lengths) * seeds * 2 * steps) if progress else None
    rows = []
    t0 = time.perf_counter()
    for T in lengths:
        for seed in range(seeds):
            for c in (None, clip):
                done = [0]

                def tick():
                    done[0] += 1
                    if bar is not None:
                        bar.add()

                r = train(T, seed, steps, c, lr=lr, batch_size=batch, progress=tick)
                if bar is not None:
                    bar.add(steps - done[0])  # a solved run stops early
                r["method"] = "clipped" if c is not None else "plain"
                rows.append(r)
    seconds = time.perf_counter() - t0
    fields = ["T", "method", "seed", "solved", "solved_at", "accuracy", "final_loss", "max_grad_norm",
              "clipped_steps"]
    with open(out_prefix + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    rate = {m: {T: sum(r["solved"] for r in rows if r["T"] == T and r["method"] == m) / seeds
                for T in lengths} for m in ("plain", "clipped")}
    acc = {m: {T: sum(r["accuracy"] for r in rows if r["T"] == T and r["method"] == m) / seeds
               for T in lengths} for m in ("plain", "clipped")}
    scale = (f"{seeds} seeds x {steps} steps x batch {batch}, lr {lr:g}, clip {clip:g}, 50 sigmoid units "
             f"(paper: 50 x 100k x 1000)")
    doc = {"experiment": "temporal order (Hochreiter & Schmidhuber task 6a; paper Fig. 7)",
           "scale": scale, "seconds": seconds, "lengths": list(lengths), "success_rate": rate,
           "mean_accuracy": acc}
    return save(doc, out_prefix, _plot, plot)


def _plot(doc: dict, path: str) -> None:
    plt = pyplot()

    L = doc["lengths"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, lab in ((axes[0], "success_rate", "success rate (all 1000 test sequences right)"),
                         (axes[1], "mean_accuracy", "mean test accuracy (chance: 0.25)")):
        for m, st in (("plain", "o-"), ("clipped", "s--")):
            ax.plot(L, [doc[key][m][T] for T in L], st, label="SGD" if m == "plain" else "SGD + norm clipping")
        ax.set_xlabel("sequence length T")
        ax.set_ylabel(lab, fontsize=9)
        ax.set_ylim(-0.05, 1.05)
        ax.set_xticks(L)
        ax.legend(fontsize=8)
    fig.suptitle(f"Temporal order problem. Scale: {doc['scale']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(doc: dict) -> str:
    lines = [f"scale: {doc['scale']} ({doc['seconds']:.0f} s)",
             "T      success plain / clipped    mean accuracy plain / clipped"]
    for T in doc["lengths"]:
        lines.append(f"{T:<6} {doc['success_rate']['plain'][T]:7.2f} / {doc['success_rate']['clipped'][T]:<7.2f}"
                     f"           {doc['mean_accuracy']['plain'][T]:.3f} / {doc['mean_accuracy']['clipped'][T]:.3f}")
    return "\n".join(lines)
