"""A stand-in for the NVIDIA driver behind nvidia-ml-py, at nvidia-ml-py's own function boundary.

`install` replaces the ``nvml*`` functions of the real ``pynvml`` module (nvidia-ml-py) that
the hub calls, and nothing else: the hub gets pynvml's own structures
(``c_nvmlUtilization_t``, ``c_nvmlMemory_t``, ``c_nvmlProcessUtilizationSample_t``), its own
friendly objects and its own error classes (``NVMLError(NVML_ERROR_NOT_SUPPORTED)`` is an
``NVMLError_NotSupported``), as from a driver. What the devices report is a script: a dict,
or a JSON file read at every call, so a test can change a GPU's utilisation while a hub runs::

    {"devices": [{"uuid": "GPU-…", "name": "Stand-in GPU", "utilisation": 0,
                  "memory_used": 0, "memory_total": 85899345920,
                  "processes": [{"pid": 4242, "sm": 80, "memory": 1073741824}],
                  "process_samples": true}]}

``"utilisation": null`` makes the device answer NotSupported (as a MIG instance does);
``"samples": false`` makes it keep no utilisation samples (``nvmlDeviceGetSamples``
NotSupported: the reader falls back to ``nvmlDeviceGetUtilizationRates``);
``"process_samples": false`` makes per-process utilisation NotSupported. Samples are stamped
with the time of the call; a call that asks for samples newer than now gets NotFound. A hub's config
installs it with ``sys.path`` and ``install(path)`` before it names ``gpu_inventory = "nvml"``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pynvml


class StandIn:
    """The scripted driver; ``calls`` counts the calls by function name."""

    def __init__(self, script: dict | str | Path) -> None:
        self.script = script
        self.calls: dict[str, int] = {}

    def devices(self) -> list[dict]:
        if isinstance(self.script, dict):
            return self.script["devices"]
        return json.loads(Path(self.script).read_text())["devices"]

    def device(self, handle) -> dict:
        for device in self.devices():
            if device["uuid"] == handle:
                return device
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)

    def functions(self) -> dict:
        def counted(name, fn):
            def call(*args):
                self.calls[name] = self.calls.get(name, 0) + 1
                return fn(*args)
            return call

        def not_supported():
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

        def utilisation(handle):
            percent = self.device(handle).get("utilisation")
            if percent is None:
                not_supported()
            return pynvml.c_nvmlUtilization_t(gpu=percent, memory=0)

        def memory(handle, version=None):
            d = self.device(handle)
            total, used = d.get("memory_total", 80 * 2**30), d.get("memory_used", 0)
            return pynvml.c_nvmlMemory_t(total=total, free=total - used, used=used)

        def processes(handle):
            return [pynvml.nvmlFriendlyObject({"pid": p["pid"], "usedGpuMemory": p.get("memory"),
                                               "gpuInstanceId": 0xFFFFFFFF, "computeInstanceId": 0xFFFFFFFF})
                    for p in self.device(handle).get("processes", [])]

        def samples(handle, kind, since):
            d = self.device(handle)
            if kind != pynvml.NVML_GPU_UTILIZATION_SAMPLES or d.get("utilisation") is None \
                    or not d.get("samples", True):
                not_supported()
            now = int(time.time() * 1e6)
            if now <= since:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
            value = pynvml.c_nvmlValue_t()
            value.uiVal = d["utilisation"]
            return pynvml.NVML_VALUE_TYPE_UNSIGNED_INT, [pynvml.c_nvmlSample_t(timeStamp=now, sampleValue=value)]

        def process_utilisation(handle, since):
            d = self.device(handle)
            if not d.get("process_samples", True):
                not_supported()
            now = int(time.time() * 1e6)
            samples = [pynvml.c_nvmlProcessUtilizationSample_t(pid=p["pid"], timeStamp=now, smUtil=p.get("sm", 0),
                                                               memUtil=0, encUtil=0, decUtil=0)
                       for p in d.get("processes", []) if now > since]
            if not samples:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
            return samples

        def by_index(i):
            devices = self.devices()
            if not 0 <= i < len(devices):
                raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
            return devices[i]["uuid"]

        return {name: counted(name, fn) for name, fn in {
            "nvmlInit": lambda: None,
            "nvmlShutdown": lambda: None,
            "nvmlDeviceGetCount": lambda: len(self.devices()),
            "nvmlDeviceGetHandleByIndex": by_index,
            "nvmlDeviceGetHandleByUUID": lambda uuid: self.device(uuid)["uuid"],
            "nvmlDeviceGetUUID": lambda handle: self.device(handle)["uuid"],
            "nvmlDeviceGetName": lambda handle: self.device(handle).get("name", "Stand-in GPU"),
            "nvmlDeviceGetMigMode": lambda handle: not_supported(),
            "nvmlDeviceGetUtilizationRates": utilisation,
            "nvmlDeviceGetSamples": samples,
            "nvmlDeviceGetMemoryInfo": memory,
            "nvmlDeviceGetComputeRunningProcesses": processes,
            "nvmlDeviceGetProcessUtilization": process_utilisation,
        }.items()}


def install(script: dict | str | Path) -> StandIn:
    """Put the stand-in under this process's ``pynvml``; returns it (its ``calls``)."""
    stand_in = StandIn(script)
    for name, fn in stand_in.functions().items():
        setattr(pynvml, name, fn)
    return stand_in
