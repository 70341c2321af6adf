"""One rank of the torch.distributed (gloo, CPU) run of the distributed cases.

    python torch_worker.py RANK WORLD INIT_FILE [CASE ...]

Rendezvous through a file store (no port to pick); prints one line
``RESULT <json>`` with every case's result, or fails with a traceback.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cases  # noqa: E402
import gloo  # noqa: E402
from fusedclip.distributed import torch_reducer  # noqa: E402


def main() -> None:
    rank, world, init = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    gloo.run(rank, world, init, lambda: cases.run_all(rank, world, torch_reducer(), sys.argv[4:] or None))


if __name__ == "__main__":
    main()
