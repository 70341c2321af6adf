"""The engine contract (tests/contract_policies.py) on the CPU engine."""
import pytest

from contract_policies import *  # noqa: F401,F403  (the contract's tests)
from engines import CpuEngine


@pytest.fixture
def engine():
    return CpuEngine()

from contract_family import *  # noqa: F401,F403,E402  (the family's contract)
