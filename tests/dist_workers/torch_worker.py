"""One rank of the torch.distributed (gloo, CPU) run of the distributed cases.

    python torch_worker.py RANK WORLD INIT_FILE [CASE ...]

Rendezvous through a file store (no port to pick); prints one line
``RESULT <json>`` with every case's result, or fails with a traceback.
"""
import datetime
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch.distributed as dist  # noqa: E402

import cases  # noqa: E402
from fusedclip.distributed import torch_reducer  # noqa: E402


def main() -> None:
    rank, world, init = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=30))
    try:
        out = cases.run_all(rank, world, torch_reducer(), sys.argv[4:] or None)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    print("RESULT " + json.dumps(out, sort_keys=True), flush=True)


if __name__ == "__main__":
    main()
