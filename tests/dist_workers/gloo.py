"""The rank's side of a gloo run on localhost, shared by the workers:
rendezvous through a file store (no port to pick), run the body, meet the
others at a barrier, print one line ``RESULT <json>`` and exit 0."""
import datetime
import json
import os
import sys
from typing import Callable

import torch.distributed as dist


def run(rank: int, world: int, init: str, body: Callable[[], dict], timeout_s: int = 30) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s))
    try:
        out = body()
        dist.barrier()
    finally:
        dist.destroy_process_group()
    print("RESULT " + json.dumps(out, sort_keys=True), flush=True)
    # Leave without the interpreter's teardown: with DeviceMesh subgroups, torch
    # 2.13's gloo threads sometimes abort it ("terminate called without an active
    # exception", exit -6) after every result was printed.
    sys.stderr.flush()
    os._exit(0)
