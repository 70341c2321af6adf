"""Nothing outside a gradient is read or written, whatever happens to a
parameter between calls: proven with guard pages.

Gradients live in an mmap; the pages around them are made inaccessible
(PROT_NONE) or read-only (PROT_READ) with mprotect, so that a read or write
outside a gradient, or any write to a gradient that must not be written,
kills the process with SIGSEGV.  Each case runs in its own subprocess; a
control case shows the trap works.  Between calls the gradients are
replaced the ways a training loop does (new tensors every step) and the
ways that made a plan keyed by addresses stale (a new layout at the same
address, through ``.data``), for the three readers of tensor layouts
(torch's AOTI C shim over the tensors' own at::Tensor fields, the shim over
handles made per call, and torch's accessors).
"""
import signal
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("torch")

IMPORTS = textwrap.dedent(
    """
    import ctypes, faulthandler, math, mmap, sys, textwrap
    faulthandler.enable()  # a crash says where (and still dies of SIGSEGV)
    import numpy as np, torch
    import fusedclip.torch as fct
    """
)
SETUP = textwrap.dedent(
    """
    PAGE = mmap.PAGESIZE
    m = mmap.mmap(-1, 64 * PAGE)
    base = np.frombuffer(m, dtype=np.uint8)
    ADDR = base.ctypes.data
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]

    def protect(first_page, pages, prot):  # 0: PROT_NONE, 1: PROT_READ, 3: read-write
        assert libc.mprotect(ADDR + first_page * PAGE, pages * PAGE, prot) == 0

    def tensor(page, nbytes, dtype=torch.float32, end=False):
        # a tensor over the mmap at page `page`, or ending where page `page` begins
        start = page * PAGE - nbytes if end else page * PAGE
        return torch.from_numpy(base[start:start + nbytes]).view(dtype)

    def param(t):
        p = torch.nn.Parameter(torch.zeros(t.shape, dtype=t.dtype))
        p.grad = t
        return p

    def exact(ts):
        x = np.concatenate([t.double().numpy().ravel() for t in ts])
        return math.sqrt(math.fsum(x * x))
    """
)
PRELUDE = IMPORTS + SETUP  # one case in a process

CASES = {
    # grads flush against inaccessible pages on both sides, clipped twice
    "edges": """
        protect(0, 1, 0); protect(4, 1, 0); protect(8, 1, 0)
        a, b = tensor(4, 3000, end=True), tensor(5, 4000)
        a.fill_(1.0); b.fill_(-2.0)
        ps = [param(a), param(b)]
        n = fct.clip_grad_norm_(ps, 1e-3).item()
        assert abs(n - exact([torch.ones(750), torch.full((1000,), -2.0)])) <= 1e-6 * n
        fct.Clipper(ps, 1e-3)(); fct.clip_grad_value_(ps, 1e-5)
        assert fct.get_total_norm([a, b]).item() > 0
        fct.clip_grads_with_norm_(ps, 1e-4, 1.0)
    """,
    # a grad shrunk in place at the same address (its old extent now inaccessible)
    "shrunk": """
        p = param(tensor(2, 2 * PAGE))
        p.grad.fill_(1.0)
        c = fct.Clipper([p], 1e9)
        f32 = lambda x: torch.tensor(x, dtype=torch.float32).item()
        assert fct.clip_grad_norm_([p], 1e9).item() == c().item() == f32(math.sqrt(2 * PAGE / 4))
        small = tensor(2, PAGE)  # the same address, half the size
        p.grad.data = small
        protect(3, 1, 0)  # the rest of the old grad: a read of it kills the process
        n = fct.clip_grad_norm_([p], 1e9).item()
        assert n == c().item() == f32(math.sqrt(PAGE / 4)), n
        fct.clip_grad_norm_([p], 1e-3); fct.clip_grad_value_([p], 1e-4)
    """,
    # the same bytes as float64 at the same address: another dtype, the norm of what it now is
    "retyped": """
        p = param(tensor(2, PAGE))
        p.grad.fill_(0.5)
        protect(3, 1, 0)
        assert fct.clip_grad_norm_([p], 1e9).item() == math.sqrt(PAGE / 4) * 0.5
        p.grad.data = p.grad.data.view(torch.float64)
        n = fct.clip_grad_norm_([p], 1e9)
        assert n.dtype == torch.float64 and n.item() == exact([p.grad]), n
    """,
    # new grad tensors every step at addresses inside a window, sizes changing
    "steps": """
        protect(0, 2, 0); protect(12, 1, 0)
        c = None
        for step in range(30):
            k = 1 + step % 5
            ts = [tensor(2 + j, k * 256) for j in range(k)] + [tensor(12, (step % 7 + 1) * 128, end=True)]
            for j, t in enumerate(ts):
                t.fill_(float(j + 1))
            ps = [param(t) for t in ts]
            want = exact(ts)
            if c is None or step % 3 == 0:
                c = fct.Clipper(ps, 1e9)
            assert fct.clip_grad_norm_(ps, 1e9).item() == fct.get_total_norm(ts).item()
            assert abs(fct.clip_grad_norm_(ps, 1e9).item() - want) <= 1e-6 * want
    """,
    # grads in read-only pages: nothing clipped, nothing written
    "readonly": """
        a, b = tensor(2, PAGE), tensor(3, 2 * PAGE, torch.bfloat16)
        a.fill_(1e-3); b.fill_(1e-3)
        protect(2, 3, 1)
        ps = [param(a), param(b)]  # (clip_grad_value_ writes every element, as torch's clamp_)
        fct.clip_grad_norm_(ps, 1e9); fct.Clipper(ps, 1e9)()
        fct.clip_grads_with_norm_(ps, 1.0, 0.5)
        fct.clip_grad_norm_(ps, 1e9, float("inf"))
    """,
}


def run(body: str, reader: str = "aoti"):
    code = PRELUDE + textwrap.dedent(body) + "\nprint('ok')\n"
    return _run(code, reader)


#: each reader, and what fct.READER says of it when it is in use
READERS = {"aoti": "handles in place", "aoti-handles": "handles made per call", "accessors": "accessors"}


def _run(code: str, reader: str):
    import os
    env = dict(os.environ, FUSEDCLIP_TORCH_READER="" if reader == "aoti" else reader)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.parametrize("reader", list(READERS))
def test_nothing_outside_a_grad_is_touched(reader):
    """Every case in one process per reader (torch imports once), each with
    a fresh mmap; a crash leaves the names of the cases that finished."""
    import fusedclip.torch as fct

    if reader == "aoti" and fct._torchread.cdata_offset() < 0:
        pytest.skip(f"this torch's tensors are read through handles made per call: {fct.READER}")
    code = IMPORTS + f"assert {READERS[reader]!r} in fct.READER, fct.READER\n" + "".join(
        f"ns = dict(globals())\nexec({SETUP + textwrap.dedent(body)!r}, ns)\nprint('done', {name!r}, flush=True)\n"
        for name, body in CASES.items())
    r = _run(code, reader)
    done = [line.split()[1] for line in r.stdout.splitlines() if line.startswith("done")]
    assert r.returncode == 0 and done == list(CASES), (r.returncode, done, r.stderr[-3000:])


def test_control_a_read_outside_is_caught():
    r = run("""
        protect(3, 1, 0)
        t = tensor(2, PAGE)
        bad = torch.from_numpy(np.frombuffer(m, dtype=np.float32, count=PAGE // 2, offset=2 * PAGE))
        float(bad.sum())  # reads into page 3
    """)
    assert r.returncode == -signal.SIGSEGV, (r.returncode, r.stderr[-500:])


def test_control_a_write_to_readonly_grads_is_caught():
    r = run(CASES["readonly"].replace("fct.clip_grad_norm_(ps, 1e9); ", "fct.clip_grad_norm_(ps, 1e-9); "))
    assert r.returncode == -signal.SIGSEGV, (r.returncode, r.stderr[-500:])


def test_a_storage_freed_under_a_grad_is_refused():
    import torch

    import fusedclip.torch as fct

    p = torch.nn.Parameter(torch.zeros(1000))
    p.grad = torch.ones(1000)
    assert fct.clip_grad_norm_([p], 1e9).item() == pytest.approx(math.sqrt(1000))
    p.grad.untyped_storage().resize_(0)  # as FSDP frees a flat parameter's storage
    for call in (lambda: fct.clip_grad_norm_([p], 1.0), lambda: fct.clip_grad_value_([p], 1.0),
                 lambda: fct.get_total_norm([p.grad]), lambda: fct.Clipper([p], 1.0)()):
        with pytest.raises(RuntimeError, match="storage was freed or shrunk"):
            call()
    q = torch.nn.Parameter(torch.zeros(1000))
    q.grad = torch.ones(1000)
    q.grad.untyped_storage().resize_(40)  # shrunk: 10 of its 1,000 elements left
    with pytest.raises(RuntimeError, match="needs 4000 bytes of its storage, which has 40"):
        fct.clip_grad_norm_([q], 1.0)


import math  # noqa: E402
