import pytest

from fusedclip import bench

_cache = {}


@pytest.fixture(scope="session")
def data():
    """Workload buffers, built once per session (64M float32 takes a moment)."""

    def get(key):
        if key not in _cache:
            _cache.clear()  # keep one workload's memory at a time
            _cache[key] = bench.workloads()[key].make()
        return _cache[key]

    return get
