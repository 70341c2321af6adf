"""Type stub of the compiled module fusedclip.capi (generated from its runtime names by
tools/genstub.py; the argument types are loose: the .pyx is the reference)."""
from typing import Any

STATUS: dict
VERSION: int
_cpu: Any

def status_message(*args: Any, **kwargs: Any) -> Any: ...
