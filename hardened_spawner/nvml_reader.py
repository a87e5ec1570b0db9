"""Reading the pooled devices' utilisation, memory and processes through NVML (nvidia-ml-py).

`NvmlReader` keeps NVML initialised for the hub's life (``nvmlInit`` costs milliseconds and
takes the driver's lock) and reads each device by UUID.

- **Utilisation** is the mean of the driver's own utilisation samples since the last read
  (``nvmlDeviceGetSamples``, ``NVML_GPU_UTILIZATION_SAMPLES``: the driver samples several times
  a second and keeps a buffer), so a read every 30 s sees the whole 30 s, not one instant. Where
  a device keeps no samples, ``nvmlDeviceGetUtilizationRates`` (its last sample period, 1/6 to
  1 s) stands in.
- **Processes**: the compute processes (host PIDs, memory) and the mean SM utilisation of each
  since the last read (``nvmlDeviceGetProcessUtilization``; NotFound: none ran since).

Every call that fails for one device leaves only that value unknown (None): a MIG instance has
no utilisation counter (NVMLError_NotSupported), a device can fall off the bus
(NVMLError_GpuIsLost). Unknown is never idle (`core.utilisation`). The ``nvml`` module is
injectable: tests hand in a stand-in with nvidia-ml-py's own function names, structures and
errors.

`cgroup_of` reads ``/proc/PID/cgroup`` (NVML's PIDs are the host's: the hub must run in the
host's PID namespace to map them; the sampler logs when it cannot).
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
        #: per device and kind of sample, NVML's timestamp (microseconds) of the last one seen
        self._seen: dict[tuple[str, str], int] = {}

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
        percent = self._utilisation(uuid, handle, period)
        memory = self._ask(lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
        running = self._ask(lambda: nvml.nvmlDeviceGetComputeRunningProcesses(handle)) or []
        samples, per_process = self._process_samples(uuid, handle, period)
        processes = [
            ProcessUse(p.pid, samples.pop(p.pid, None), p.usedGpuMemory if isinstance(p.usedGpuMemory, int) else None)
            for p in running
        ]
        # a process that ran kernels but is not a compute process (graphics): its share still counts
        processes += [ProcessUse(pid, sm) for pid, sm in samples.items()]
        return DeviceReading(uuid, percent, memory.used if memory else None, memory.total if memory else None,
                             tuple(processes), per_process)

    def _since(self, uuid: str, kind: str, period: float) -> int:
        return self._seen.get((uuid, kind)) or int((time.time() - period) * 1e6)

    def _utilisation(self, uuid: str, handle, period: float) -> int | None:
        """The mean of the driver's utilisation samples since the last read; its last sample
        period's where it keeps none."""
        nvml = self.nvml
        try:
            _, samples = nvml.nvmlDeviceGetSamples(handle, nvml.NVML_GPU_UTILIZATION_SAMPLES,
                                                   self._since(uuid, "gpu", period))
        except nvml.NVMLError:  # NotSupported, or NotFound: no sample since
            samples = []
        if samples:
            self._seen[(uuid, "gpu")] = max(sample.timeStamp for sample in samples)
            return round(sum(sample.sampleValue.uiVal for sample in samples) / len(samples))
        return self._ask(lambda: nvml.nvmlDeviceGetUtilizationRates(handle).gpu)

    def _process_samples(self, uuid: str, handle, period: float) -> tuple[dict[int, int], bool]:
        """Mean SM utilisation per PID since the last look; whether the device gives them."""
        nvml = self.nvml
        try:
            samples = nvml.nvmlDeviceGetProcessUtilization(handle, self._since(uuid, "process", period))
        except nvml.NVMLError_NotSupported:
            return {}, False
        except nvml.NVMLError:  # NotFound: no process ran since the last look
            return {}, True
        sums: dict[int, list[int]] = {}
        for sample in samples:
            sums.setdefault(sample.pid, []).append(sample.smUtil)
            self._seen[(uuid, "process")] = max(self._seen.get((uuid, "process"), 0), sample.timeStamp)
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
