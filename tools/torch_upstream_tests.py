#!/usr/bin/env python3
"""Run PyTorch's own gradient-clipping tests against fusedclip.torch.patch().

    python tools/torch_upstream_tests.py PATH/TO/pytorch/test/test_nn.py [pytest args]

PyTorch's tests are not shipped with the torch wheel, and this repository
does not copy them: fetch ``test/test_nn.py`` of the torch release you test
(it imports its helpers from ``torch.testing._internal``, which the wheel
ships; it needs ``expecttest`` and ``hypothesis``).  The tests run unchanged:
a pytest plugin (tools/fusedclip_patch_plugin.py) calls
``fusedclip.torch.patch()`` before the file imports ``clip_grad_norm_``,
``clip_grad_value_``, ``get_total_norm`` and ``clip_grads_with_norm_`` from
``torch.nn.utils``; the summary line says how many calls fusedclip ran.
docs/TORCH.md lists the results and the deliberate differences.
"""
import os
import subprocess
import sys

SELECT = "clip_grad or total_norm or grads_with_norm"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or not os.path.isfile(argv[0]):
        print(__doc__)
        return 2
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "pytest", argv[0], "-k", SELECT, "-p", "fusedclip_patch_plugin",
           "-p", "no:cacheprovider", "-rA", "-q"] + argv[1:]
    return subprocess.call(cmd, cwd=os.path.dirname(os.path.abspath(argv[0])), env=env)


if __name__ == "__main__":
    sys.exit(main())
