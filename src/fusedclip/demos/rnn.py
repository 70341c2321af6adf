"""A small recurrent network trained by vectorised BPTT in numpy (float32).

The parametrisation is the paper's equation (2) (Pascanu, Mikolov & Bengio):

    x_t = W_rec f(x_{t-1}) + W_in u_t + b,      y_t = W_out f(x_t) + c,

with f the sigmoid (the paper's experiments) or tanh, one-hot inputs u_t and
a softmax cross-entropy on the outputs of the steps a mask selects (the last
step for the temporal order task, every step for a character model).  The
recurrence is the only Python loop: one (batch, H) x (H, H) product per
step; every weight gradient is one matrix product over all steps.

The gradients live in five arrays allocated once (``grads``), so that one
``fusedclip.Clipper`` plans them once and clips them in place every step.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

import fusedclip as fc


def _sigmoid(x):
    return 0.5 * (np.tanh(0.5 * x) + 1.0)  # no overflow warnings, same values


ACT: dict[str, tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]] = {
    "sigmoid": (_sigmoid, lambda h: h * (1.0 - h)),   # f, and f' as a function of f(x)
    "tanh": (np.tanh, lambda h: 1.0 - h * h),
}


class RNN:
    NAMES = ("W_in", "W_rec", "b", "W_out", "c")

    def __init__(self, n_in: int, n_hidden: int, n_out: int, act: str = "sigmoid", seed: int = 0,
                 rec_scale: float = 1.0, in_scale: float = 1.0):
        rng = np.random.default_rng(seed)
        f32 = np.float32
        H = n_hidden
        self.f, self.df = ACT[act]
        self.params = {
            "W_in": (rng.standard_normal((n_in, H)) * in_scale / np.sqrt(n_in)).astype(f32),
            "W_rec": (rng.standard_normal((H, H)) * rec_scale / np.sqrt(H)).astype(f32),
            "b": np.zeros(H, f32),
            "W_out": (rng.standard_normal((H, n_out)) / np.sqrt(H)).astype(f32),
            "c": np.zeros(n_out, f32),
        }
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.grad_list = [self.grads[k] for k in self.NAMES]

    # -- forward and backward ------------------------------------------------
    def forward(self, U: np.ndarray):
        """U: (T, B, n_in) one-hot float32.  Returns the hidden values h (T+1, B, H), h[0] = f(0)."""
        p = self.params
        T, B, _ = U.shape
        H = p["W_rec"].shape[0]
        dt = p["W_rec"].dtype  # float32 in training; float64 in the gradient check
        h = np.empty((T + 1, B, H), dt)
        h[0] = self.f(np.zeros((B, H), dt))
        drive = (U.reshape(T * B, -1) @ p["W_in"]).reshape(T, B, H) + p["b"]
        W = p["W_rec"]
        for t in range(T):
            h[t + 1] = self.f(h[t] @ W + drive[t])
        return h

    def loss_and_grads(self, U: np.ndarray, targets: np.ndarray, mask: np.ndarray) -> float:
        """Mean cross-entropy over the masked steps; the gradients go into ``self.grads``.

        targets: (T, B) int class indices; mask: (T,) bool, the steps that have a loss."""
        p, g = self.params, self.grads
        T, B, _ = U.shape
        h = self.forward(U)
        steps = np.flatnonzero(mask)
        H = h.shape[-1]
        S = len(steps)
        hs = h[1:][steps].reshape(S * B, H)                 # every product below is one 2-D GEMM
        logits = hs @ p["W_out"] + p["c"]                   # (S*B, O)
        logits -= logits.max(axis=1, keepdims=True)
        prob = np.exp(logits)
        prob /= prob.sum(axis=1, keepdims=True)
        tg = targets[steps].reshape(-1)
        rows = np.arange(S * B)
        loss = float(-np.log(np.maximum(prob[rows, tg], 1e-30)).sum() / (S * B))
        dy = prob
        dy[rows, tg] -= 1.0
        dy /= S * B
        g["W_out"][...] = hs.T @ dy
        g["c"][...] = dy.sum(axis=0)
        dt = h.dtype
        dh_out = np.zeros((T, B, H), dt)
        dh_out[steps] = (dy @ self._WoutT()).reshape(S, B, H)
        dx = np.empty((T, B, H), dt)                        # dL/dx_t, t = 1..T
        WT = np.ascontiguousarray(p["W_rec"].T)
        carry = np.zeros((B, H), dt)
        for t in range(T - 1, -1, -1):
            dx[t] = (dh_out[t] + carry) * self.df(h[t + 1])
            carry = dx[t] @ WT
        dxf = dx.reshape(T * B, H)
        g["W_rec"][...] = h[:-1].reshape(T * B, H).T @ dxf
        g["W_in"][...] = U.reshape(T * B, -1).T @ dxf
        g["b"][...] = dxf.sum(axis=0)
        return loss

    def _WoutT(self) -> np.ndarray:
        return np.ascontiguousarray(self.params["W_out"].T)

    def predict(self, U: np.ndarray) -> np.ndarray:
        """Class scores of the last step, (B, O)."""
        h = self.forward(U)
        return h[-1] @ self.params["W_out"] + self.params["c"]

    def sgd(self, lr: float) -> None:
        for k in self.NAMES:
            self.params[k] -= self.params[k].dtype.type(lr) * self.grads[k]

    def clipper(self, max_norm: float) -> fc.Clipper:
        """One plan over the five gradient arrays, made once, called every step."""
        return fc.Clipper(self.grad_list, max_norm, nonfinite="zero")


def one_hot(idx: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(idx.shape + (n,), np.float32)
    np.put_along_axis(out, idx[..., None], 1.0, axis=-1)
    return out
