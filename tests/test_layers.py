"""The package's layers (docs/DESIGN.md §0): the kernels import nothing above
them, and no module imports, even inside a function, a module that imports
it back (directly or through others)."""
import ast
from pathlib import Path

import fusedclip

PKG = Path(fusedclip.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for f in PKG.rglob("*.py"):
        rel = f.relative_to(PKG.parent).with_suffix("")
        name = ".".join(rel.parts)
        out[name[:-len(".__init__")] if name.endswith(".__init__") else name] = f
    for f in PKG.rglob("*.pyx"):
        out[".".join(f.relative_to(PKG.parent).with_suffix("").parts)] = f
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every fusedclip module ``name`` imports, at any depth of its code."""
    if path.suffix == ".pyx":  # Cython: the import statements only, read as Python lines
        lines = [ln.strip() for ln in path.read_text().splitlines()]
        src = "\n".join(ln for ln in lines if ln.startswith(("import ", "from ")) and " cimport " not in ln
                        and not ln.startswith("from libc") and not ln.startswith("cimport"))
    else:
        src = path.read_text()
    pkg = name if path.stem == "__init__" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        out.update(t for t in targets if t in known and t != name)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {m: _imports(m, p, known) for m, p in mods.items()}


def test_the_kernels_import_nothing_above_them():
    for m, deps in _graph().items():
        if m.startswith("fusedclip.kernels"):
            above = sorted(d for d in deps if not d.startswith("fusedclip.kernels"))
            assert not above, f"{m} imports {above}"


def test_no_import_cycle_even_through_function_level_imports():
    g = _graph()
    # the package's __init__ imports its public modules; a module importing
    # ``fusedclip`` itself (to reach those) is not counted as a cycle through it
    g = {m: {d for d in deps if d != "fusedclip"} for m, deps in g.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(g.get(m, ())):
            if state.get(d) == 1:
                cycles.append(path[path.index(d):] + [d])
            elif d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_graph_sees_function_level_imports():
    """Proof that the checker reads imports inside functions: _engine imports
    _gpu only there."""
    assert "fusedclip._gpu" in _graph()["fusedclip._engine"]
