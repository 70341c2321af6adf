"""The one plan cache: a bounded LRU, used by every cache of plans.

The function API's plans for numpy lists (``_buffers``) and for GPU-only
lists (``_engine``), the torch drop-in's general-path plans (``torch``) and
the CUDA unit plans of ``clip_unitwise_`` (``_family``).  No entry holds a
caller's array: each user keys its entries on what makes a plan valid and
checks a hit itself.  A lookup and a store are each safe against another
thread evicting the entry meanwhile (an ``OrderedDict`` operation holds the
GIL; a ``KeyError`` from a concurrent eviction is ignored).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Hashable

#: entries per cache
PLAN_CACHE_SIZE = 16


class LRU(OrderedDict):
    """An ``OrderedDict`` bounded to ``size`` entries, least recently used first."""

    def __init__(self, size: int = PLAN_CACHE_SIZE) -> None:
        super().__init__()
        self.size = size

    def lookup(self, key: Hashable) -> Any:
        """The entry for ``key`` (now the most recently used), or None."""
        hit = self.get(key)
        if hit is not None:
            try:
                self.move_to_end(key)
            except KeyError:  # evicted by another thread meanwhile
                pass
        return hit

    def store(self, key: Hashable, value: Any) -> Any:
        """Keep ``value`` under ``key``, evicting the least recently used beyond the bound."""
        self[key] = value
        while len(self) > self.size:
            try:
                self.popitem(last=False)
            except KeyError:
                break
        return value
