"""The rules that saved states are checked by (thresholds, History).

``load_state_dict`` first checks the whole state with these (TypeError for a
wrong type, ValueError for an impossible value; each message names the key,
the value and what is allowed), then changes the object; nothing changes
when a check fails.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np

from . import _policy


@contextmanager
def loading(where: str) -> Iterator[None]:
    """Prefix the TypeError / ValueError of the checks inside with ``where``
    (e.g. "ZScore.load_state_dict")."""
    try:
        yield
    except (TypeError, ValueError) as e:
        if type(e) not in (TypeError, ValueError) or str(e).startswith(where):
            raise
        raise type(e)(f"{where}: {e}") from None


def keys(state: Any, expected: tuple[str, ...], what: str) -> None:
    """ValueError unless ``state`` is a dict with exactly the keys ``expected``."""
    if not isinstance(state, dict):
        raise ValueError(f"expected {what}, got {type(state).__name__}")
    missing = [k for k in expected if k not in state]
    unknown = [k for k in state if k not in expected]
    if missing or unknown:
        raise ValueError(f"expected {what} (keys {', '.join(expected)}); "
                         + "; ".join(([f"missing {', '.join(map(str, missing))}"] if missing else [])
                                     + ([f"unknown {', '.join(map(repr, unknown))}"] if unknown else [])))


#: No count a run can reach is larger (the history indexes with int64 arrays:
#: calls = 10**30 passed the checks, then failed in numpy after the threshold
#: had been restored)
COUNT_MAX = 2**63 - 1


def count(name: str, x: Any, minimum: int = 0, maximum: int | None = None, upto: str = "") -> int:
    """An int in [minimum, maximum] (``upto`` names the maximum; the default
    maximum is ``COUNT_MAX``), or TypeError / ValueError."""
    if maximum is None:
        maximum, upto = COUNT_MAX, upto or "2**63 - 1"
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, int) and not hasattr(x, "__index__"):
        raise TypeError(f"{name} must be an int, got {type(x).__name__} {x!r}")
    x = int(x)
    if x < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {x}")
    if maximum is not None and x > maximum:
        raise ValueError(f"{name} must be <= {upto or maximum}{f' ({maximum})' if upto else ''}, got {x}")
    return x


class Reals:
    """A rule for one real number: ``rule(name, x)`` is x as a float for
    which ``ok`` holds (``allowed`` says which), else TypeError / ValueError.
    ``ok`` takes a float or a float64 array (``&``, ``|``, no ``and``)."""

    fast: type = float  # entries of this type are checked by numpy in column()

    def __init__(self, ok, allowed: str) -> None:
        self.ok, self.allowed = ok, allowed

    def __call__(self, name: str, x: Any) -> float:
        v = _policy.real(name, x)
        if not self.ok(v):
            raise ValueError(f"{name} must be {self.allowed}, got {v}")
        return v

    def column(self, name: str, xs: list) -> np.ndarray:
        """The rule for every entry of ``xs`` (named "name entry i"): a float64
        array, or the first bad entry's error.  Plain entries take one numpy pass."""
        if set(map(type, xs)) <= {self.fast}:
            a = np.array(xs, np.float64).reshape(-1)
            if np.all(self.ok(a)):
                return a
        return np.array([self(f"{name} entry {i}", x) for i, x in enumerate(xs)], np.float64).reshape(-1)


class Flags(Reals):
    """True or False (or 1 or 0), as 1.0 or 0.0."""

    fast = bool

    def __init__(self) -> None:
        super().__init__(lambda v: (v == 0.0) | (v == 1.0), "True or False (or 1 or 0)")

    def __call__(self, name: str, x: Any) -> float:
        if isinstance(x, (bool, np.bool_)):
            return float(x)
        if isinstance(x, (float, np.floating)) or not hasattr(x, "__index__"):
            raise TypeError(f"{name} must be True or False, got {type(x).__name__} {x!r}"[:200])
        if not self.ok(int(x)):
            raise ValueError(f"{name} must be {self.allowed}, got {x}")
        return float(x)


FINITE_NONNEGATIVE = Reals(lambda v: (v >= 0.0) & (v < math.inf), "a finite number >= 0")


def sequence(name: str, x: Any) -> list:
    """A list, tuple or 1-D array as a list, or TypeError."""
    if isinstance(x, np.ndarray) and x.ndim == 1:
        return x.tolist()
    if not isinstance(x, (list, tuple)):
        raise TypeError(f"{name} must be a list, got {type(x).__name__} {x!r}"[:200])
    return list(x)
