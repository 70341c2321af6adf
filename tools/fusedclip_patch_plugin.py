"""A pytest plugin that installs fusedclip.torch.patch() before any test module
is imported (so ``from torch.nn.utils import clip_grad_norm_`` in a test
file gets fusedclip's function) and reports, at the end, how many calls
fusedclip ran and how many it handed to torch.  Used by
tools/torch_upstream_tests.py."""
import fusedclip.torch as fct

HANDLE = fct.patch()


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(f"fusedclip.torch.patch(): calls run by fusedclip {HANDLE.calls}, "
                                f"handed to torch {HANDLE.fallbacks}; reader: {fct.READER}")
