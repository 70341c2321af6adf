"""The clip inside a torch training step: torch's clip against fusedclip.torch.

    python benchmarks/torch_loop.py [--steps 60] [--models small,medium] [--json OUT]

A GPT-style model is trained with AdamW and torch's default
``zero_grad(set_to_none=True)``, so every backward makes new gradient
tensors at new addresses, as in HF Trainer, Lightning and accelerate.  Each
method trains its own copy of the same model; only the clip call right after
the backward is timed.  Methods are interleaved step by step, in an order
that alternates, and the median over the steps (the first tenth left out)
is reported, with torch's time over each method's.

Methods: torch's ``clip_grad_norm_(foreach=True)``; ``fusedclip.torch.
clip_grad_norm_``; a ``fusedclip.torch.Clipper`` built once; and the split
form that accelerate and transformers call (``get_total_norm`` then
``clip_grads_with_norm_``), torch's and fusedclip's.  The threshold is low
enough that every step clips (the gradients are read, then written).

This machine is shared and noisy: quote the ratios of one run, not the
times of different runs.  Not a test; docs/TORCH.md quotes it.
"""
import argparse
import json
import statistics
import sys
import time

import torch

import fusedclip.torch as fct


class Block(torch.nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ln1, self.ln2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
        self.qkv, self.proj = torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d)
        self.fc, self.out = torch.nn.Linear(d, 4 * d), torch.nn.Linear(4 * d, d)
        self.h = max(1, d // 32)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.h, d // self.h).transpose(1, 2) for z in (q, k, v))
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.out(torch.nn.functional.gelu(self.fc(self.ln2(x))))


class GPT(torch.nn.Module):
    def __init__(self, vocab, d, layers, ctx):
        super().__init__()
        self.tok, self.pos = torch.nn.Embedding(vocab, d), torch.nn.Embedding(ctx, d)
        self.blocks = torch.nn.ModuleList(Block(d) for _ in range(layers))
        self.ln = torch.nn.LayerNorm(d)
        self.head = torch.nn.Linear(d, vocab, bias=False)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln(x))


MODELS = {  # name: (vocab, width, layers, context, batch)
    "small": (96, 32, 2, 32, 8),       # 29 tensors, 30K elements: the per-call cost decides
    "medium": (8192, 256, 6, 128, 4),  # 77 tensors, 9M elements (36 MB): memory decides
}
MAX_NORM = 1.0


def _split_torch(ps):
    n = torch.nn.utils.get_total_norm([p.grad for p in ps if p.grad is not None])
    torch.nn.utils.clip_grads_with_norm_(ps, MAX_NORM, n)
    return n


def _split_fusedclip(ps):
    n = fct.get_total_norm([p.grad for p in ps if p.grad is not None])
    fct.clip_grads_with_norm_(ps, MAX_NORM, n)
    return n


def run(name: str, steps: int) -> dict:
    methods = {
        "torch clip_grad_norm_ (foreach)": lambda ps: torch.nn.utils.clip_grad_norm_(ps, MAX_NORM, foreach=True),
        "fusedclip.torch.clip_grad_norm_": lambda ps: fct.clip_grad_norm_(ps, MAX_NORM),
        "fusedclip.torch.Clipper": "clipper",  # a Clipper over its own copy's parameters
        "torch get_total_norm + clip_grads_with_norm_": _split_torch,
        "fusedclip.torch get_total_norm + clip_grads_with_norm_": _split_fusedclip,
    }
    return loop(name, steps, methods)


def loop(name: str, steps: int, methods: dict, before=None) -> dict:
    """Train a copy of model ``name`` per method for ``steps`` steps, timing
    only each method's clip (``methods[m](params)``, returning the norm; the
    string "clipper": a ``fct.Clipper`` built once), interleaved in an order
    that alternates; ``before(m)`` runs untimed before each step of ``m``."""
    vocab, d, layers, ctx, batch = MODELS[name]
    methods = dict(methods)
    copies = {}
    for m in methods:
        torch.manual_seed(0)
        model = GPT(vocab, d, layers, ctx)
        ps = list(model.parameters())
        copies[m] = (model, ps, torch.optim.AdamW(ps, lr=1e-3))
        if methods[m] == "clipper":
            methods[m] = lambda ps, c=fct.Clipper(ps, MAX_NORM): c()
    g = torch.Generator().manual_seed(1)
    times = {m: [] for m in methods}
    order = list(methods)
    clipped = {m: 0 for m in methods}
    for step in range(steps):
        idx = torch.randint(0, vocab, (batch, ctx), generator=g)
        for m in (order if step % 2 == 0 else order[::-1]):
            model, ps, opt = copies[m]
            if before is not None:
                before(m)
            opt.zero_grad(set_to_none=True)
            logits = model(idx)
            loss = torch.nn.functional.cross_entropy(logits.view(-1, vocab), idx.view(-1)) * 50.0
            loss.backward()
            t = time.perf_counter_ns()
            norm = methods[m](ps)
            times[m].append((time.perf_counter_ns() - t) / 1e3)
            clipped[m] += float(norm) > MAX_NORM
            opt.step()
    warm = max(3, steps // 10)
    med = {m: statistics.median(v[warm:]) for m, v in times.items()}
    ps = copies[order[0]][1]
    return {"model": name, "tensors": len(ps), "elements": sum(p.numel() for p in ps), "steps": steps,
            "median_us": med, "clipped_steps": clipped, "times_us": times}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--models", default="small,medium")
    ap.add_argument("--json", default="")
    a = ap.parse_args(argv)
    print(f"fusedclip.torch reads layouts through: {fct.READER}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    out = []
    for name in a.models.split(","):
        r = run(name, a.steps)
        out.append(r)
        base = r["median_us"]["torch clip_grad_norm_ (foreach)"]
        split = r["median_us"]["torch get_total_norm + clip_grads_with_norm_"]
        print(f"\n{name}: {r['tensors']} tensors, {r['elements'] / 1e6:.2f}M elements, {r['steps']} steps "
              f"(clipped: {min(r['clipped_steps'].values())}+)")
        for m, v in r["median_us"].items():
            ref = split if "get_total_norm" in m else base
            print(f"  {m:56s} {v:9.0f} us" + ("" if m.startswith("torch") else f"   {ref / v:5.2f}x torch's"))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
