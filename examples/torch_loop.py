"""A small torch training loop clipped by fusedclip.torch (CPU, a few seconds).

    python examples/torch_loop.py [--steps 40]

A 2-layer LSTM learns to output the running sum of its inputs.  The
learning rate is deliberately large, so that some steps' gradients exceed
the threshold: ``fusedclip.torch.clip_grad_norm_`` is a drop-in for
``torch.nn.utils.clip_grad_norm_`` (same signature, same returned tensor),
and ``fusedclip.torch.Clipper`` reads each parameter's current ``.grad`` on
every call, so ``zero_grad(set_to_none=True)`` is safe.  The loop checks
each step's norm against torch's own on a copy of the gradients.
"""
import argparse
import sys

import torch

import fusedclip.torch as fct


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="a torch loop clipped by fusedclip.torch")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--max-norm", type=float, default=1.0)
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(1, 32, num_layers=2, batch_first=True)
    head = torch.nn.Linear(32, 1)
    params = list(lstm.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=0.5)
    clipper = fct.Clipper(params, max_norm=a.max_norm)
    clipped = 0
    first = last = None
    for step in range(a.steps):
        x = torch.randn(16, 20, 1)
        y = x.cumsum(dim=1) / 4
        opt.zero_grad(set_to_none=True)  # new grad tensors every step
        out, _ = lstm(x)
        loss = torch.nn.functional.mse_loss(head(out), y)
        loss.backward()
        ref = torch.nn.utils.get_total_norm([p.grad.clone() for p in params])  # torch's norm
        # every other step the function, else the Clipper: both are the drop-in
        norm = fct.clip_grad_norm_(params, a.max_norm) if step % 2 else clipper()
        if abs(norm.item() - ref.item()) > 1e-5 * ref.item():
            print(f"step {step}: norm {norm.item()} differs from torch's {ref.item()}", file=sys.stderr)
            return 1
        after = torch.nn.utils.get_total_norm([p.grad for p in params]).item()
        if norm.item() > a.max_norm:
            clipped += 1
            assert abs(after - a.max_norm) < 1e-4 * a.max_norm, after
        opt.step()
        first = loss.item() if first is None else first
        last = loss.item()
        if step % 10 == 0 or step == a.steps - 1:
            print(f"step {step:3d}  loss {loss.item():8.4f}  grad norm {norm.item():8.4f}  "
                  f"after clip {after:7.4f}")
    print(f"done: {a.steps} steps, {clipped} clipped, loss {first:.4f} -> {last:.4f}, "
          f"Clipper re-planned {clipper.replans} times")
    return 0 if last < first else 1


if __name__ == "__main__":
    sys.exit(main())
