import importlib
import sys
modname, out = sys.argv[1], sys.argv[2]
m = importlib.import_module(modname)
lines = [f'"""Type stub of the compiled module {modname} (generated from its runtime names by\n'
         f'tools/genstub.py; the argument types are loose: the .pyx is the reference)."""',
         "from typing import Any", ""]
def is_func(o):
    return callable(o) and not isinstance(o, type)
names = sorted(n for n in dir(m) if not n.startswith("__"))
consts, funcs, classes = [], [], []
for n in names:
    o = getattr(m, n)
    if isinstance(o, type):
        classes.append(n)
    elif is_func(o):
        funcs.append(n)
    elif isinstance(o, (bool, int, float, str, bytes, tuple, dict, list)):
        consts.append((n, type(o).__name__))
    elif type(o).__module__ == "numpy" or "numpy" in type(o).__module__:
        consts.append((n, "Any"))
    else:
        consts.append((n, "Any"))
for n, t in consts:
    lines.append(f"{n}: {t}")
lines.append("")
for n in funcs:
    lines.append(f"def {n}(*args: Any, **kwargs: Any) -> Any: ...")
for n in classes:
    c = getattr(m, n)
    lines += ["", "", f"class {n}:"]
    body = []
    for a in sorted(vars(c)):
        if a.startswith("__") and a not in ("__init__", "__call__", "__len__", "__reduce_cython__"):
            continue
        if a in ("__reduce_cython__", "__setstate_cython__"):
            continue
        v = getattr(c, a)
        if callable(v):
            ret = "None" if a == "__init__" else "Any"
            body.append(f"    def {a}(self, *args: Any, **kwargs: Any) -> {ret}: ...")
        else:
            body.append(f"    {a}: Any")
    lines += body or ["    ..."]
open(out, "w").write("\n".join(lines) + "\n")
