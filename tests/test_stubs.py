"""The type stubs of the compiled modules (tools/genstub.py) name exactly
what each module has: a stub that lags the .pyx would hide a new function
from mypy, or promise one that is gone."""
import ast
import importlib
from pathlib import Path

import pytest

import fusedclip

STUBS = {"fusedclip.kernels.cpu": "kernels/cpu.pyi", "fusedclip.capi": "capi.pyi",
         "fusedclip._torchread": "_torchread.pyi"}


@pytest.mark.parametrize("mod", sorted(STUBS))
def test_the_stub_names_exactly_the_module_names(mod):
    tree = ast.parse((Path(fusedclip.__file__).parent / STUBS[mod]).read_text())
    stub = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            stub.add(node.name)
        elif isinstance(node, ast.AnnAssign):
            stub.add(node.target.id)
    m = importlib.import_module(mod)
    have = {n for n in dir(m) if not n.startswith("__")}
    assert stub == have, (f"only in the stub: {sorted(stub - have)}; only in the module: "
                          f"{sorted(have - stub)}; rerun python tools/genstub.py {mod} src/fusedclip/{STUBS[mod]}")
