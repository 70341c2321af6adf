"""Output files of the CLI's commands: one rule, checked before a run
(``fusedclip bench`` and ``fusedclip demo`` write their results last)."""
from __future__ import annotations

import os


def output_problem(path: str) -> str | None:
    """Why a file cannot be written at ``path``, or None.

    The benchmark and the demos write their results last, so each of their
    output files is checked with this before the run (a usage error then):
    an empty path, a directory or a name ending in a separator, a parent
    that does not exist or is not a directory, no permission to write."""
    if not path:
        return "is empty (a file name is needed)"
    if path.endswith(os.sep) or (os.altsep and path.endswith(os.altsep)):
        return "ends with a path separator, so it names a directory, not a file"
    if os.path.isdir(path):
        return "is a directory"
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        return (f"is in {parent}, which is not a directory" if os.path.exists(parent)
                else f"is in {parent}, which does not exist")
    if os.path.exists(path):
        if not os.access(path, os.W_OK):
            return "is not writable"
    elif not os.access(parent, os.W_OK | os.X_OK):
        return f"is in {parent}, which is not writable"
    return None
