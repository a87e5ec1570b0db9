"""Reading the pooled devices' utilisation, memory and processes through NVML (nvidia-ml-py).

`NvmlReader` keeps NVML initialised for the hub's life (``nvmlInit`` costs milliseconds and
takes the driver's lock) and reads each device by UUID. Every call that fails for one device
leaves only that value unknown (None): a MIG instance has no utilisation counter
(NVMLError_NotSupported), a device can fall off the bus (NVMLError_GpuIsLost), and
``nvmlDeviceGetProcessUtilization`` answers NotFound when no process ran since the last look.
Unknown is never idle (`core.utilisation`). The ``nvml`` module is injectable: tests hand in a
stand-in with nvidia-ml-py's own function names, structures and errors.

`cgroup_of` reads ``/proc/PID/cgroup`` (NVML's PIDs are the host's: the hub must run in the
host's PID namespace to map them; a hub in a container sees none and says so in its log).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from .core.gpus import nvml_module
from .core.utilisation import DeviceReading, ProcessUse


class NvmlReader:
    """One hub's NVML session (module docstring); `read` is called from one thread at a time."""

    def __init__(self, nvml=None) -> None:
        self.nvml = nvml_module() if nvml is None else nvml
        self.nvml.nvmlInit()
        self._lock = threading.Lock()
        #: per device, NVML's timestamp (microseconds) of the last process sample seen
        self._seen: dict[str, int] = {}

    def read(self, uuids: Sequence[str], period: float) -> list[DeviceReading]:
        """Every device's reading now; ``period``: seconds since the last read (how far back a
        device's per-process samples are read the first time)."""
        with self._lock:
            return [self._device(uuid, period) for uuid in uuids]

    def close(self) -> None:
        with self._lock:
            self.nvml.nvmlShutdown()

    def _device(self, uuid: str, period: float) -> DeviceReading:
        nvml = self.nvml
        try:
            handle = nvml.nvmlDeviceGetHandleByUUID(uuid)
        except nvml.NVMLError:
            return DeviceReading(uuid, None)
        percent = self._ask(lambda: nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        memory = self._ask(lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
        running = self._ask(lambda: nvml.nvmlDeviceGetComputeRunningProcesses(handle)) or []
        samples, per_process = self._process_samples(uuid, handle, period)
        processes = tuple(
            ProcessUse(p.pid, samples.get(p.pid), p.usedGpuMemory if isinstance(p.usedGpuMemory, int) else None)
            for p in running
        )
        return DeviceReading(uuid, percent, memory.used if memory else None, memory.total if memory else None,
                             processes, per_process)

    def _process_samples(self, uuid: str, handle, period: float) -> tuple[dict[int, int], bool]:
        """Mean SM utilisation per PID since the last look; whether the device gives them."""
        nvml = self.nvml
        since = self._seen.get(uuid) or int((time.time() - period) * 1e6)
        try:
            samples = nvml.nvmlDeviceGetProcessUtilization(handle, since)
        except nvml.NVMLError_NotSupported:
            return {}, False
        except nvml.NVMLError:  # NotFound: no process ran since the last look
            return {}, True
        sums: dict[int, list[int]] = {}
        for sample in samples:
            sums.setdefault(sample.pid, []).append(sample.smUtil)
            self._seen[uuid] = max(self._seen.get(uuid, 0), sample.timeStamp)
        return {pid: round(sum(v) / len(v)) for pid, v in sums.items()}, True

    def _ask(self, call):
        try:
            return call()
        except self.nvml.NVMLError:
            return None


def cgroup_of(pid: int, proc: str = "/proc") -> str:
    """The text of a process's cgroup file; "" when it has gone or cannot be read."""
    try:
        with open(f"{proc}/{pid}/cgroup", encoding="utf-8") as f:
            return f.read()
    except OSError:
        return ""
