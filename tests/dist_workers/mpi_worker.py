"""One rank of the MPI (mpi4py) run of the distributed cases.

    mpirun -n K python mpi_worker.py OUT_DIR [CASE ...]

Writes ``OUT_DIR/result-<rank>.json`` with every case's result (a file per
rank: mpirun merges the ranks' stdout, and long lines interleave), or
aborts the job on a failure (MPI_Abort: the other ranks would wait in a
collective for ever).
"""
import json
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mpi4py import MPI  # noqa: E402

import cases  # noqa: E402
from fusedclip.distributed import mpi_reducer  # noqa: E402


def main() -> None:
    comm = MPI.COMM_WORLD
    try:
        out = cases.run_all(comm.rank, comm.size, mpi_reducer(comm), sys.argv[2:] or None)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        comm.Abort(1)
    comm.Barrier()
    (Path(sys.argv[1]) / f"result-{comm.rank}.json").write_text(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    main()
