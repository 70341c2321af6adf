"""fusedclip's benchmark: the same data, one run, next to what users would run otherwise.

Every workload is timed in two modes:

* **triggered**: ``max_norm`` is below the norm, so every implementation
  reads the gradient and rescales it (the threshold shrinks by 1 % per call
  so each call clips again);
* **not triggered**: ``max_norm`` is far above the norm.

Competitors run interleaved (A B C, B C A, C A B, ...) on the same buffers
and the median of the repetitions is reported:

* ``fusedclip``: ``clip_grad_norm_`` (validates and plans every call);
* ``fusedclip-plan``: a ``Clipper`` built once;
* ``naive-numpy``: Algorithm 1 of Pascanu et al. as a user writes it, a
  per-buffer ``np.linalg.norm`` in a Python loop, then ``g *= scale``;
* ``torch-foreach``: ``torch.nn.utils.clip_grad_norm_(..., foreach=True)``
  on tensors sharing the buffers' memory, if torch is installed;
* ``floor``: the memory-bandwidth floor for the same number of bytes in one
  contiguous buffer, measured in the same run: one plain read pass (not
  triggered), or a read pass plus a read-write pass (triggered).

Before each timed call the machine idles for 2 ms (so that no other
implementation's OpenMP workers are still spinning: torch brings its own
runtime), then the data that call will touch is read once with that
implementation's own threads.  Every implementation, the floor included,
starts from the same cache state: the one a clip finds right after backward
wrote the gradient.

The norm's relative error is taken against an exact reference (float64
widening, power-of-two scaling, ``math.fsum``).
"""
from __future__ import annotations

import datetime
import gc
import json
import math
import os
import platform
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import ml_dtypes
import numpy as np

import fusedclip as fc
from fusedclip.kernels import cpu

DTYPES = {
    "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float16": np.dtype(np.float16),
}


def gpt_like_shapes(d: int = 384, layers: int = 12, vocab: int = 8192, ctx: int = 1024) -> list[tuple[int, ...]]:
    """A GPT-2-small-like parameter set (GPT-2's layout, narrower): 148 buffers, ~24.8M elements."""
    shapes: list[tuple[int, ...]] = [(vocab, d), (ctx, d)]          # token and position embeddings
    for _ in range(layers):
        shapes += [
            (d,), (d,),                      # ln_1 weight, bias
            (d, 3 * d), (3 * d,),            # attention qkv
            (d, d), (d,),                    # attention output projection
            (d,), (d,),                      # ln_2
            (d, 4 * d), (4 * d,),            # MLP in
            (4 * d, d), (d,),                # MLP out
        ]
    shapes += [(d,), (d,)]                                          # ln_f
    return shapes


@dataclass(frozen=True)
class Workload:
    name: str
    dtype: str
    shapes: tuple[tuple[int, ...], ...]
    about: str

    @property
    def key(self) -> str:
        return f"{self.name}/{self.dtype}"

    @property
    def elements(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    @property
    def nbytes(self) -> int:
        return self.elements * DTYPES[self.dtype].itemsize

    def make(self, seed: int = 0) -> list[np.ndarray]:
        rng = np.random.default_rng(seed)
        dt = DTYPES[self.dtype]
        return [rng.standard_normal(s, dtype=np.float32).astype(dt) for s in self.shapes]


def workloads() -> dict[str, Workload]:
    gpt = tuple(gpt_like_shapes())
    w = [
        Workload("big", "float32", ((64 * 2**20,),), "one buffer of 64M float32"),
        Workload("gpt", "float32", gpt, "GPT-2-small-like: 148 buffers, 24.8M elements"),
        Workload("small", "float32", ((256,),) * 10_000, "10,000 buffers of 256 elements"),
        Workload("medium", "float32", ((2**20,),) * 16, "16 buffers of 1M elements"),
        Workload("gpt", "float64", gpt, "the GPT-like set in float64"),
        Workload("gpt", "bfloat16", gpt, "the GPT-like set in bfloat16"),
        Workload("gpt", "float16", gpt, "the GPT-like set in float16"),
    ]
    return {x.key: x for x in w}


# --------------------------------------------------------------------------- competitors
def naive_numpy(bufs: list[np.ndarray], max_norm: float) -> float:
    """Algorithm 1 of Pascanu et al., written the way a user would."""
    total = math.sqrt(sum(float(np.linalg.norm(g)) ** 2 for g in bufs))
    if total > max_norm:
        scale = max_norm / total
        for g in bufs:
            g *= scale
    return total


def naive_peer(bufs: list[np.ndarray], max_norm: float) -> float:
    """``naive_numpy`` as the benchmark runs it: numpy's float16 dot product
    overflows to inf (its norm is inf and the gradient is zeroed), which the
    table reports; its "overflow encountered" RuntimeWarning is silenced
    here only, so that it does not land in the user's terminal.  (The
    errstate costs ~1 us inside a timed call of milliseconds.)"""
    with np.errstate(over="ignore"):
        return naive_numpy(bufs, max_norm)


def torch_tensors(bufs: list[np.ndarray]):
    """Leaf tensors whose .grad shares memory with the buffers, or None without torch."""
    try:
        import torch
    except ImportError:
        return None
    params = []
    for b in bufs:
        if b.dtype == DTYPES["bfloat16"]:
            g = torch.from_numpy(b.view(np.int16)).view(torch.bfloat16)
        else:
            g = torch.from_numpy(b)
        p = torch.empty_like(g)
        p.grad = g
        params.append(p)
    return params


def torch_clip(params, max_norm: float) -> float:
    import torch

    return float(torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True))


# --------------------------------------------------------------------------- measurement
@dataclass
class Row:
    workload: str
    dtype: str
    mode: str
    impl: str
    median_s: float
    times_s: list[float]
    bytes_moved: int
    floor_s: float
    norm: float | None = None
    rel_err: float | None = None
    speedup: dict[str, float] = field(default_factory=dict)

    @property
    def gbps(self) -> float:
        return self.bytes_moved / self.median_s / 1e9

    @property
    def x_floor(self) -> float:
        return self.median_s / self.floor_s


def exact_norm(bufs: list[np.ndarray]) -> float:
    m = max((float(np.max(np.abs(b.astype(np.float64)))) for b in bufs if b.size), default=0.0)
    if m == 0.0 or not math.isfinite(m):
        return m
    k = math.frexp(m)[1]
    parts = []
    for b in bufs:
        y = np.ldexp(b.astype(np.float64).ravel(), -k)
        parts.append(math.fsum(y * y))
    return math.ldexp(math.sqrt(math.fsum(parts)), k)


def _time(f: Callable[[], object]) -> float:
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


#: How long an implementation's idle threads keep spinning after it returns,
#: taking a core from whatever runs next: OpenMP's (~2 ms), and OpenBLAS's,
#: whose workers spin for 2^28 cycles (~0.1 s) after naive numpy's
#: ``np.linalg.norm`` (a dot product).  Measured: after naive numpy's
#: bfloat16 call, the next calls ran 3-4x slower, the floor included.
_SETTLE_S = {"naive-numpy": 0.15}


def _timed_rounds(impls, warmers, times, names, reps) -> None:
    prev = None
    rng = random.Random(0)
    for r in range(reps):
        # a new order every round (the same in every run): an implementation
        # that always followed the same one would carry its neighbour's
        # traces.  Measured: whatever ran right after the floor's 50 MB read
        # was 0.2-0.35 ms slower on the GPT-like bfloat16 set, for several
        # calls, even after its own warm-up read; with a fixed rotation the
        # function API always came after the floor.
        order = rng.sample(names, len(names))
        for name in order:
            # let the previous implementation's idle threads stop spinning
            # (_SETTLE_S), then read the data with this implementation's own
            # threads: each timed call finds its data just read, as a clip
            # finds the gradient backward has just written
            time.sleep(_SETTLE_S.get(prev or "", 0.002))
            warmers[name]()
            times[name].append(_time(impls[name]))
            prev = name


class Setup:
    """One workload's data, shared by its modes: the buffers, their exact norm,
    the floor's buffer, and the competitors' copies of the same values (a
    competitor that breaks its data, as naive numpy's float16 norm overflows to
    inf and zeroes the gradient, must not change what the others are timed on)."""

    def __init__(self, w: Workload, threads: int | None):
        self.w = w
        self.bufs = w.make()
        self.exact = exact_norm(self.bufs)
        self.floor_buf = np.ones(w.nbytes // 8 + 1, dtype=np.uint64)
        self.naive_bufs = [b.copy() for b in self.bufs]
        self.params = torch_tensors([b.copy() for b in self.bufs])
        self.clipper = fc.Clipper(self.bufs, 1e30, num_threads=threads)
        # each implementation's norm of the untouched data, for the error column
        self.first = {"fusedclip": fc.clip_grad_norm_(self.bufs, 1e30, num_threads=threads),
                      "fusedclip-plan": self.clipper().norm,
                      "naive-numpy": naive_peer(self.naive_bufs, 1e30)}
        if self.params is not None:
            self.first["torch-foreach"] = torch_clip(self.params, 1e30)


def run_workload(setup: Setup, mode: str, reps: int, threads: int | None) -> list[Row]:
    """Time every competitor on ``setup``'s workload in ``mode``, interleaved."""
    w, bufs, exact, floor_buf = setup.w, setup.bufs, setup.exact, setup.floor_buf
    naive_bufs, params, clipper = setup.naive_bufs, setup.params, setup.clipper
    triggered = mode == "triggered"
    # the threshold shrinks by 1% per call, so every call clips again
    state = {"t": exact * 0.5 if triggered else 1e30}

    def next_t() -> float:
        if triggered:
            state["t"] *= 0.99
        return state["t"]

    norms: dict[str, float] = {}

    def fused():
        norms["fusedclip"] = fc.clip_grad_norm_(bufs, next_t(), num_threads=threads)

    def plan():
        clipper.max_norm = next_t()
        norms["fusedclip-plan"] = clipper().norm

    def naive():
        norms["naive-numpy"] = naive_peer(naive_bufs, next_t())

    def floor():
        cpu.floor_read(floor_buf, threads)
        if triggered:
            cpu.floor_rw(floor_buf, threads)

    impls: dict[str, Callable[[], object]] = {"floor": floor, "fusedclip": fused, "fusedclip-plan": plan,
                                              "naive-numpy": naive}
    if not triggered:  # the per-buffer norms: the same one read, kept per buffer
        impls["buffer_norms"] = lambda: fc.buffer_norms(bufs, num_threads=threads)
    read_grads = lambda: fc.global_norm(bufs, num_threads=threads)
    warmers: dict[str, Callable[[], object]] = {"floor": lambda: cpu.floor_read(floor_buf, threads),
                                                "fusedclip": read_grads, "fusedclip-plan": read_grads,
                                                "naive-numpy": lambda: fc.global_norm(naive_bufs, num_threads=threads),
                                                "buffer_norms": read_grads}
    if params is not None:
        import torch

        if threads:
            torch.set_num_threads(threads)

        def torch_foreach():
            norms["torch-foreach"] = torch_clip(params, next_t())

        impls["torch-foreach"] = torch_foreach
        grads = [p.grad for p in params]
        warmers["torch-foreach"] = lambda: torch._foreach_norm(grads)

    first = setup.first
    for f in impls.values():  # warm-up
        f()
    times: dict[str, list[float]] = {k: [] for k in impls}
    names = list(impls)
    gc.collect()
    gc_was = gc.isenabled()
    gc.disable()  # as timeit does: no collection pause inside a timed call
    try:
        _timed_rounds(impls, warmers, times, names, reps)
    finally:
        if gc_was:
            gc.enable()
    floor_s = statistics.median(times["floor"])

    moved = w.nbytes * (3 if triggered else 1)
    rows = []
    for name in impls:
        med = statistics.median(times[name])
        row = Row(w.name, w.dtype, mode, name, med, times[name], moved, floor_s)
        if name in first:
            row.norm = first[name]
            row.rel_err = abs(first[name] - exact) / exact if exact else abs(first[name])
        rows.append(row)
    by = {r.impl: r for r in rows}
    for r in rows:
        if r.impl.startswith("fusedclip"):
            for other in ("naive-numpy", "torch-foreach"):
                if other in by:
                    r.speedup[other] = by[other].median_s / r.median_s
    return rows


# --------------------------------------------------------------------------- output
def machine() -> dict:
    info = cpu.info()
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import torch

        torch_v = torch.__version__
    except ImportError:
        torch_v = None
    return {
        "cpu": model,
        "logical_cpus": os.cpu_count(),
        "simd": info["simd_selected"],
        "openmp_threads": info["openmp_max_threads"],
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch_v,
        "fusedclip": fc.__version__,
    }


def fmt_table(rows: list[Row]) -> str:
    head = ["workload", "mode", "impl", "time ms", "GB/s", "x floor", "vs naive", "vs torch", "rel.err"]
    lines = []
    for r in rows:
        sp = lambda k: f"{r.speedup[k]:.1f}x" if k in r.speedup else ""
        lines.append([
            f"{r.workload}/{r.dtype}", r.mode, r.impl, f"{r.median_s * 1e3:.3f}", f"{r.gbps:.1f}",
            f"{r.x_floor:.2f}", sp("naive-numpy"), sp("torch-foreach"),
            "" if r.rel_err is None else f"{r.rel_err:.1e}",
        ])
    widths = [max(len(h), *(len(l[i]) for l in lines)) for i, h in enumerate(head)]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(l, widths)) for l in lines]
    return "\n".join(out)


def markdown(rows: list[Row]) -> str:
    """One line per workload and mode: fusedclip against the floor and the competitors."""
    head = ("| workload | mode | `Clipper` × floor | `clip_grad_norm_` × floor | `buffer_norms` × floor "
            "| vs naive numpy | vs torch foreach | rel. error (fusedclip / naive / torch) |")
    out = [head, "|" + "---|" * 8]
    groups = list(dict.fromkeys((r.workload, r.dtype, r.mode) for r in rows))
    for g in groups:
        by = {r.impl: r for r in rows if (r.workload, r.dtype, r.mode) == g}
        plan, fn = by["fusedclip-plan"], by["fusedclip"]
        sp = lambda k: (f"{plan.speedup[k]:.1f}× / {fn.speedup[k]:.1f}×" if k in plan.speedup else "–")
        err = lambda k: ("–" if k not in by or by[k].rel_err is None else f"{by[k].rel_err:.0e}")
        bn = f"{by['buffer_norms'].x_floor:.2f}" if "buffer_norms" in by else "–"
        out.append(
            f"| {g[0]}/{g[1]} | {g[2]} | {plan.x_floor:.2f} | {fn.x_floor:.2f} | {bn} "
            f"| {sp('naive-numpy')} | {sp('torch-foreach')} "
            f"| {err('fusedclip')} / {err('naive-numpy')} / {err('torch-foreach')} |"
        )
    return "\n".join(out)


def plot(rows: list[Row], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys((r.workload, r.dtype, r.mode) for r in rows))
    impls = [i for i in ("fusedclip", "fusedclip-plan", "torch-foreach", "naive-numpy")
             if any(r.impl == i for r in rows)]
    fig, ax = plt.subplots(figsize=(max(8, 1.3 * len(groups)), 4.5))
    width = 0.8 / len(impls)
    for k, impl in enumerate(impls):
        ys = []
        for g in groups:
            r = next((r for r in rows if (r.workload, r.dtype, r.mode) == g and r.impl == impl), None)
            ys.append(r.x_floor if r else float("nan"))
        ax.bar([i + k * width for i in range(len(groups))], ys, width, label=impl)
    ax.axhline(1.0, color="k", lw=0.8, ls="--", label="bandwidth floor")
    ax.set_yscale("log")
    ax.set_ylabel("time / bandwidth floor (lower is better)")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))])
    ax.set_xticklabels([f"{w}/{d}\n{m}" for w, d, m in groups], fontsize=8)
    ax.legend(fontsize=8)
    ax.set_title("fusedclip benchmark (same machine, same run)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_outputs(args, doc: dict, md: str) -> None:
    """The JSON (``--json``) and the Markdown summary (``--markdown``), both benches."""
    with open(args.json, "w") as f:
        json.dump(doc, f, indent=1)
    print(f"\nwrote {args.json}", file=sys.stderr)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(md + "\n")
        print(f"wrote {args.markdown}", file=sys.stderr)


def main(args) -> int:
    all_w = workloads()
    keys = list(all_w)
    if args.quick:
        keys = ["big/float32", "gpt/float32", "small/float32", "gpt/bfloat16"]
    if args.workload:
        names = set(args.workload)
        unknown = names - {w.name for w in all_w.values()} - set(all_w)
        if unknown:
            print(f"fusedclip bench: unknown workload {sorted(unknown)}; choose from "
                  f"{sorted({w.name for w in all_w.values()})}", file=sys.stderr)
            return 2
        keys = [k for k in all_w if all_w[k].name in names or k in names]
    if args.dtype:
        keys = [k for k in keys if all_w[k].dtype in args.dtype]
        if args.workload:  # a workload in a dtype it has no default variant for
            for n in args.workload:
                for d in args.dtype:
                    if f"{n}/{d}" not in keys and n in {w.name for w in all_w.values()}:
                        base = next(w for w in all_w.values() if w.name == n)
                        all_w[f"{n}/{d}"] = Workload(n, d, base.shapes, f"{base.about} in {d}")
                        keys.append(f"{n}/{d}")
    if not keys:
        print("fusedclip bench: nothing selected", file=sys.stderr)
        return 2
    # not-triggered first: the triggered mode shrinks the data
    modes = [m for m in ("not-triggered", "triggered") if m in (args.mode or ["triggered", "not-triggered"])]
    reps = args.reps if args.reps is not None else (5 if args.quick else 21)
    if reps < 1:  # the CLI's argparse type rejects it first; this guards direct callers
        print(f"fusedclip bench: --reps must be >= 1, got {reps}", file=sys.stderr)
        return 2
    if "torch" not in sys.modules:
        try:
            import torch  # noqa: F401
        except ImportError:
            print("fusedclip bench: torch is not installed; the torch-foreach column is left out "
                  "(pip install torch to include it)", file=sys.stderr)
    rows: list[Row] = []
    total = len(keys) * len(modes)
    t0 = time.perf_counter()
    step = 0
    for k in keys:
        w = all_w[k]
        print(f"[{step + 1}/{total}] {w.key}: {w.about}; making data and its exact norm ...",
              file=sys.stderr, flush=True)
        setup = Setup(w, args.threads)
        for mode in modes:
            step += 1
            print(f"[{step}/{total}] {w.key}, {mode}, {reps} reps ... ",
                  end="", file=sys.stderr, flush=True)
            rs = run_workload(setup, mode, reps, args.threads)
            rows += rs
            best = next(r for r in rs if r.impl == "fusedclip-plan")
            print(f"{best.x_floor:.2f}x floor  ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
        del setup
    print(fmt_table(rows))
    doc = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "config": {"reps": reps, "threads": args.threads, "quick": args.quick, "modes": modes},
        "workloads": {k: {"about": all_w[k].about, "buffers": len(all_w[k].shapes),
                          "elements": all_w[k].elements, "bytes": all_w[k].nbytes} for k in keys},
        "results": [
            {"workload": r.workload, "dtype": r.dtype, "mode": r.mode, "impl": r.impl,
             "median_s": r.median_s, "times_s": r.times_s, "bytes_moved": r.bytes_moved,
             "gbps": r.gbps, "floor_s": r.floor_s, "x_floor": r.x_floor, "norm": r.norm,
             "rel_err": r.rel_err, "speedup": r.speedup}
            for r in rows
        ],
    }
    write_outputs(args, doc, markdown(rows))
    if args.plot:
        png = os.path.splitext(args.json)[0] + ".png"
        plot(rows, png)
        print(f"wrote {png}", file=sys.stderr)
    return 0
