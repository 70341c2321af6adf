"""A numpy MLP trained with manual backprop, its gradients clipped by fusedclip.

    python examples/numpy_mlp.py [--steps 2000] [--max-norm 2.0] [--lr 0.05] [--seed 0]

A two-layer tanh network fits a 1-D regression (y = sin 3x) by minibatch
SGD; 0.5 % of the targets are corrupted outliers, so an occasional batch gives
a gradient spike.  At the default learning rate (0.05) the unclipped run
diverges (``--max-norm inf``: the gradient turns NaN and the Clipper raises
NonFiniteError); clipped at 2.0 it trains.  The gradients live in preallocated arrays that
backprop writes in place, so one ``fusedclip.Clipper`` is built once over
them and called every step: it measures the global L2 norm and rescales the
gradients only when the norm exceeds ``max_norm``.  It prints the loss and
the first clip events, and a summary line that tests/test_example_numpy.py reads.
"""
import argparse
import sys

import numpy as np

import fusedclip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--max-norm", type=float, default=2.0)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)

    rng = np.random.default_rng(a.seed)
    x = rng.uniform(-2, 2, size=(512, 1)).astype(np.float32)
    y = (np.sin(3 * x) + 0.05 * rng.standard_normal(x.shape)).astype(np.float32)
    bad = rng.random(len(x)) < 0.005
    y[bad] = rng.choice([-8.0, 8.0], size=(int(bad.sum()), 1))  # outliers: gradient spikes

    h = a.hidden
    params = {
        "W1": (rng.standard_normal((1, h)) * 1.5).astype(np.float32),
        "b1": np.zeros(h, np.float32),
        "W2": (rng.standard_normal((h, 1)) / np.sqrt(h)).astype(np.float32),
        "b2": np.zeros(1, np.float32),
    }
    grads = {k: np.zeros_like(v) for k, v in params.items()}  # written in place by backprop
    clipper = fusedclip.Clipper(list(grads.values()), max_norm=a.max_norm)

    clips = 0
    def mse(p):  # on the clean targets
        out = np.tanh(x @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"]
        return float(np.mean((out - y)[~bad] ** 2))

    first = mse(params)
    print(f"step    -  loss {first:.5f} (clean targets)")
    for step in range(a.steps):
        idx = rng.integers(0, len(x), a.batch)
        xb, yb = x[idx], y[idx]
        # forward
        z = xb @ params["W1"] + params["b1"]
        hid = np.tanh(z)
        pred = hid @ params["W2"] + params["b2"]
        err = pred - yb
        # backward, into the gradient arrays the Clipper was planned over
        d = (2.0 / len(xb)) * err
        np.matmul(hid.T, d, out=grads["W2"])
        grads["b2"][...] = d.sum(0)
        dz = (d @ params["W2"].T) * (1.0 - hid ** 2)
        np.matmul(xb.T, dz, out=grads["W1"])
        grads["b1"][...] = dz.sum(0)

        stats = clipper()
        if stats.clipped:
            clips += 1
            if clips <= 5:
                print(f"step {step:4d}  clip: norm {stats.norm:.3f} -> {a.max_norm} (scale {stats.scale:.3f})")
        for k in params:
            params[k] -= a.lr * grads[k]
        if step % 250 == 0 or step == a.steps - 1:
            last = mse(params)
            print(f"step {step:4d}  loss {last:.5f}  clip events so far {clips}")
    print(f"summary: first_loss={first:.6f} last_loss={last:.6f} clip_events={clips} steps={a.steps}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
