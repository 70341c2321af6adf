"""The engine contract, run on this process's engine (conftest's ``engine``
fixture): the five non-finite policies (contract_policies.py) and the
clipping family (contract_family.py).  Here, the CPU engine; tests/test_gpu.py
runs this same file under the Numba CUDA simulator and, where one exists, on
a real GPU, each in its own process.  One suite, so the engines cannot drift
apart.  To run it on one engine by hand:

    pytest tests/test_contract.py                                # cpu
    NUMBA_ENABLE_CUDASIM=1 pytest tests/test_contract.py         # simulator
    FUSEDCLIP_TEST_ENGINE=gpu pytest tests/test_contract.py      # a real GPU
"""
import pytest

from contract_family import *  # noqa: F401,F403  (the family's contract)
from contract_policies import *  # noqa: F401,F403  (the policies' contract)

# the simulator runs kernels on numpy scalars: an overflow (rescued) or an
# inf * 0 (the propagate policy) warns where the GPU would not
pytestmark = [pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")]
