"""A launcher for tests: host memory and no kernel at all, only a record of
what would have been launched (fusedclip._launch.use_launcher installs it).
Launch counts, streams, copies, allocations and waits for 10 or 10,000
buffers, without a GPU and without the simulator's slowness."""
import numpy as np

from fusedclip._launch import DeviceArray, HostMemory


class RecordingLauncher(HostMemory):
    """Records launches and runs nothing: for launch counts and host cost."""

    kind = "recording"
    graphs = True
    needs_cuda = False  # runs nothing: numba-cuda and a driver are not required

    def __init__(self):
        super().__init__()
        self.replays = 0
        self.streams: list = []  # the stream of each recorded launch
        self.download_streams: list = []  # ... and of each device-to-host copy
        self.copies: list = []  # (dst, src, nbytes, stream) of each device-to-device copy
        self.allocs = 0  # device allocations: one per plan built
        self.syncs = 0   # synchronisations (a download is a wait too: download_streams)

    def alloc(self, nbytes: int) -> DeviceArray:
        self.allocs += 1
        return super().alloc(nbytes)

    def synchronize(self, stream=None) -> None:
        self.syncs += 1

    def launch(self, name: str, grid: int, args: tuple, stream=None) -> None:
        self.launches.append((name, grid, args))
        self.streams.append(stream)

    def download(self, host: np.ndarray, src, stream=None) -> np.ndarray:
        self.download_streams.append(stream)
        return super().download(host, src, stream)

    def copy(self, dst: int, src: int, nbytes: int, stream=None) -> None:
        self.copies.append((int(dst), int(src), nbytes, stream))
        super().copy(dst, src, nbytes, stream)

    def replay(self, graph, stream=None) -> None:
        self.replays += 1
        self.launches.extend(graph)
        self.streams.extend([stream] * len(graph))
