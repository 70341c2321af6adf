"""What every demo writes: its numbers as JSON and, unless --no-plot, a PNG."""
from __future__ import annotations

import json


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(doc: dict, out_prefix: str, draw, plot: bool) -> dict:
    """Write ``doc`` to PREFIX.json and, if ``plot``, ``draw(doc, PREFIX.png)``."""
    with open(out_prefix + ".json", "w") as f:
        json.dump(doc, f, indent=1)
    if plot:
        draw(doc, out_prefix + ".png")
    return doc
