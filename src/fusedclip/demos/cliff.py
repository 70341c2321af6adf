"""``fusedclip demo cliff``: the paper's Fig. 3 (§2.4), the wall in the error surface.

The one-hidden-unit recurrent network x_t = w·σ(x_{t−1}) + b, with x_0 = 0.5,
no input and 50 steps, is trained so that σ(x_50) = 0.7: the error is
E(w, b) = (σ(x_50) − 0.7)².  Near w ≈ 5, b ≈ −2.5 the map bifurcates, the
gradient explodes, and the surface has a steep wall.  Gradient descent that
reaches the wall jumps far away; with the gradient's norm clipped (fusedclip,
Algorithm 1 of the paper) the same step stays near the valley.

Everything is computed vectorised in float64: the surface over a grid in
one pass, and the exact gradient by backpropagation through the 50 steps.
"""
from __future__ import annotations

import math

import numpy as np

import fusedclip as fc

from ._out import pyplot, save

T, X0, TARGET = 50, 0.5, 0.7
#: starts near the wall, and two far from it (controls: clipping must not matter there)
STARTS = [(4.5, -2.25), (5.0, -2.8), (5.0, -2.2), (5.5, -3.05), (5.5, -2.75), (6.0, -3.0),
          (2.0, -1.0), (8.0, -4.0)]


def _sigma(x):
    return 0.5 * (np.tanh(0.5 * x) + 1.0)


def loss_and_grad(w, b):
    """E(w, b) and its gradient (dE/dw, dE/db), elementwise over arrays of (w, b)."""
    w, b = np.broadcast_arrays(np.asarray(w, np.float64), np.asarray(b, np.float64))
    xs = [np.full(w.shape, X0)]
    for _ in range(T):
        xs.append(w * _sigma(xs[-1]) + b)
    s = _sigma(xs[-1])
    loss = (s - TARGET) ** 2
    d = 2.0 * (s - TARGET) * s * (1.0 - s)        # dE/dx_T
    gw, gb = np.zeros_like(d), np.zeros_like(d)
    for t in range(T, 0, -1):                     # dx_t/dw = σ(x_{t-1}), dx_t/db = 1
        st = _sigma(xs[t - 1])
        gw += d * st
        gb += d
        d = d * w * st * (1.0 - st)               # dx_t/dx_{t-1} = w σ'(x_{t-1})
    return loss, gw, gb


def descend(start, lr: float, steps: int, clip: float | None):
    """Gradient descent from ``start``; the gradient is clipped in place by a
    fusedclip Clipper over its 2-element buffer when ``clip`` is given."""
    p = np.array(start, np.float64)
    g = np.zeros(2)
    clipper = fc.Clipper([g], clip, nonfinite="zero") if clip is not None else None
    path, steps_len, norms = [p.tolist()], [], []
    for _ in range(steps):
        _, gw, gb = loss_and_grad(p[0], p[1])
        g[0], g[1] = gw, gb
        norms.append(float(math.hypot(gw, gb)))
        if clipper is not None:
            clipper()
        step = lr * g
        p = p - step
        steps_len.append(float(math.hypot(*step)))
        path.append(p.tolist())
    final = float(loss_and_grad(p[0], p[1])[0])
    return {"start": list(start), "clip": clip, "path": path, "largest_step": max(steps_len),
            "largest_grad_norm": max(norms), "final_loss": final}


def run(out_prefix: str, lr: float = 0.1, steps: int = 300, clip: float = 1.0, grid: int = 241,
        starts=STARTS, plot: bool = True) -> dict:
    runs = []
    for s in starts:
        runs.append({"plain": descend(s, lr, steps, None), "clipped": descend(s, lr, steps, clip)})
    doc = {
        "experiment": "cliff (Pascanu, Mikolov & Bengio, Fig. 3)",
        "model": "x_t = w*sigmoid(x_{t-1}) + b, x_0 = 0.5, 50 steps, E = (sigmoid(x_50) - 0.7)^2",
        "config": {"lr": lr, "steps": steps, "clip_threshold": clip, "grid": grid},
        "summary": [{"start": r["plain"]["start"],
                     "largest_step": {"plain": r["plain"]["largest_step"],
                                      "clipped": r["clipped"]["largest_step"]},
                     "final_loss": {"plain": r["plain"]["final_loss"],
                                    "clipped": r["clipped"]["final_loss"]}} for r in runs],
        "runs": runs,
    }
    return save(doc, out_prefix, lambda d, path: _plot(runs, grid, path), plot)


def _plot(runs, grid: int, path: str) -> None:
    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2), gridspec_kw={"width_ratios": [1.15, 1]})
    views = [((1.0, 10.0), (-7.0, 3.0), "the surface; solid: no clipping, dashed: norm clipped"),
             ((4.2, 6.3), (-3.3, -1.9), "zoom on the wall: the clipped paths stay near it")]
    for ax, (xl, yl, title) in zip(axes, views):
        W, B = np.meshgrid(np.linspace(*xl, grid), np.linspace(*yl, grid))
        L, _, _ = loss_and_grad(W, B)
        cs = ax.contourf(W, B, np.log10(L + 1e-12), levels=40, cmap="viridis")
        for i, r in enumerate(runs):
            col = f"C{i % 10}"
            for kind, ls, lbl in (("plain", "-", "no clipping"), ("clipped", "--", "norm clipped (fusedclip)")):
                pth = np.array(r[kind]["path"])
                ax.plot(pth[:, 0], pth[:, 1], ls, color=col, lw=1.3 if kind == "plain" else 2.2,
                        label=lbl if i == 0 else None)
            ax.plot(*r["plain"]["start"], "o", color=col, ms=6, mec="w")
        ax.set_xlim(*xl)
        ax.set_ylim(*yl)
        ax.set_xlabel("w")
        ax.set_ylabel("b")
        ax.set_title(title, fontsize=9)
    fig.colorbar(cs, ax=axes, label="log10 E(w, b)", shrink=0.9)
    axes[0].legend(loc="upper left", fontsize=8)
    fig.suptitle("One-unit RNN x_t = w sigmoid(x_(t-1)) + b, 50 steps (Pascanu et al., Fig. 3)", fontsize=10)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report(doc: dict) -> str:
    lines = ["start (w, b)      largest step: plain / clipped    final loss: plain / clipped"]
    for s in doc["summary"]:
        lines.append(f"({s['start'][0]:4.2f}, {s['start'][1]:5.2f})     {s['largest_step']['plain']:9.3g} / "
                     f"{s['largest_step']['clipped']:<9.3g}        {s['final_loss']['plain']:9.3g} / "
                     f"{s['final_loss']['clipped']:.3g}")
    return "\n".join(lines)
