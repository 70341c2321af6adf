"""What every demo writes: its numbers as JSON and, unless --no-plot, a PNG."""
from __future__ import annotations

import json
import math


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finite(x):
    """JSON has no inf/NaN: a diverged run's non-finite numbers are written as null."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def save(doc: dict, out_prefix: str, draw, plot: bool) -> dict:
    """Write ``doc`` to PREFIX.json (strict JSON) and, if ``plot``, ``draw(doc, PREFIX.png)``."""
    with open(out_prefix + ".json", "w") as f:
        json.dump(_finite(doc), f, indent=1, allow_nan=False)
    if plot:
        draw(doc, out_prefix + ".png")
    return doc
