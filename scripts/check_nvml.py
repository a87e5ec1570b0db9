#!/usr/bin/env python3
"""Check the hub's NVML path against a real GPU: discovery, a utilisation read, PID to cgroup.

    python3 scripts/check_nvml.py [--json OUT] [--hold SECONDS]

For a machine with an NVIDIA driver and nvidia-ml-py (``pip install nvidia-ml-py``); nothing
else of the hub is needed (no JupyterHub, no Docker). It runs the hub's own code:

1. discovery: `core.gpus.discover_nvml`, what ``gpu_inventory = "nvml"`` pools (MIG
   instances in place of their GPU);
2. a utilisation read: `nvml_reader.NvmlReader.read`, what the sampler reads every
   ``gpu_utilisation_interval`` (utilisation, memory, compute processes, per-process samples);
3. PID to cgroup: a child process opens a CUDA context on the first device (``libcuda``
   through ctypes, busy for ``--hold`` seconds), the reader must list its PID, and
   `core.utilisation.container_id_from_cgroup` reads each listed PID's ``/proc/PID/cgroup``
   (no container on a bare host; the container's id where the check runs in one).

It prints what it found and writes it as JSON; paste the output into the README's "GPU
utilisation" section with the date. Exit status 0 when every step ran, 1 otherwise.
``--stand-in SCRIPT`` runs it against `tests/nvml_standin.py` (the test suite does), with no
CUDA child.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import json
import multiprocessing
import os
import platform
import sys
import time
import types
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def hub_modules():
    """The hub's NVML modules without its package's imports (JupyterHub, docker-py)."""
    package = types.ModuleType("hardened_spawner")
    package.__path__ = [str(REPO / "hardened_spawner")]
    sys.modules.setdefault("hardened_spawner", package)
    gpus = importlib.import_module("hardened_spawner.core.gpus")
    utilisation = importlib.import_module("hardened_spawner.core.utilisation")
    reader = importlib.import_module("hardened_spawner.nvml_reader")
    return gpus, utilisation, reader


def cuda_context(ready, hold: float) -> None:
    """A child: a CUDA context on device 0, busy copying for ``hold`` seconds."""
    os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # CUDA's device 0 is NVML's
    cuda = ctypes.CDLL("libcuda.so.1")
    device, context = ctypes.c_int(), ctypes.c_void_p()
    assert cuda.cuInit(0) == 0, "cuInit failed"
    assert cuda.cuDeviceGet(ctypes.byref(device), 0) == 0, "cuDeviceGet failed"
    assert cuda.cuCtxCreate_v2(ctypes.byref(context), 0, device) == 0, "cuCtxCreate failed"
    memory = ctypes.c_uint64()
    assert cuda.cuMemAlloc_v2(ctypes.byref(memory), ctypes.c_size_t(256 * 2**20)) == 0, "cuMemAlloc failed"
    ready.set()
    end = time.monotonic() + hold
    while time.monotonic() < end:
        cuda.cuMemsetD8_v2(memory, 1, ctypes.c_size_t(256 * 2**20))
        cuda.cuCtxSynchronize()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default="nvml-check.json", help="where to write the findings")
    parser.add_argument("--hold", type=float, default=8.0, help="seconds the CUDA child stays busy")
    parser.add_argument("--stand-in", help="a tests/nvml_standin.py script instead of the driver")
    args = parser.parse_args()
    gpus, utilisation, reader_module = hub_modules()
    found: dict = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   "host": platform.node(), "steps": {}}
    failed = []
    if args.stand_in:
        sys.path.insert(0, str(REPO))
        importlib.import_module("tests.nvml_standin").install(args.stand_in)

    import pynvml

    # 1. discovery
    try:
        pynvml.nvmlInit()
        found["driver"] = pynvml.nvmlSystemGetDriverVersion() if not args.stand_in else "stand-in"
        pynvml.nvmlShutdown()
        devices = gpus.discover_nvml()
        found["steps"]["discovery"] = [{"uuid": d.uuid, "index": d.index, "name": d.name,
                                        "parent": d.parent_uuid} for d in devices]
        print(f"1. discovery: {len(devices)} device(s), driver {found['driver']}")
        for d in devices:
            print(f"   {d.index:>5}  {d.uuid}  {d.name}" + (f"  (MIG of {d.parent_uuid})" if d.parent_uuid else ""))
    except Exception as e:
        failed.append("discovery")
        found["steps"]["discovery"] = f"{type(e).__name__}: {e}"
        print(f"1. discovery FAILED: {type(e).__name__}: {e}")
        devices = ()

    # 3 (first half): a CUDA process, so that there is a PID to map
    child = None
    if devices and not args.stand_in:
        ready = multiprocessing.Event()
        child = multiprocessing.Process(target=cuda_context, args=(ready, args.hold), daemon=True)
        child.start()
        if not ready.wait(30):
            print("   (the CUDA child did not start: no process to map)")

    # 2. a utilisation read, as the sampler does it
    readings = []
    try:
        reader = reader_module.NvmlReader()
        started = time.process_time()
        readings = reader.read([d.uuid for d in devices], period=1.0)
        cpu = time.process_time() - started
        if child is not None:
            time.sleep(2)  # a sample period of the busy child
            readings = reader.read([d.uuid for d in devices], period=3.0)
        reader.close()
        found["steps"]["read"] = {"cpu_seconds": cpu, "devices": [
            {"uuid": r.uuid, "percent": r.percent, "memory_used": r.memory_used, "memory_total": r.memory_total,
             "per_process": r.per_process,
             "processes": [{"pid": p.pid, "sm_percent": p.sm_percent, "memory": p.memory_bytes} for p in r.processes]}
            for r in readings]}
        print(f"2. read: {len(readings)} device(s) in {cpu * 1000:.1f} ms of CPU")
        for r in readings:
            print(f"   {r.uuid}: {r.percent if r.percent is not None else 'unknown'} %, "
                  f"memory {r.memory_used} of {r.memory_total}, {len(r.processes)} process(es), "
                  f"per-process samples {'yes' if r.per_process else 'no'}")
    except Exception as e:
        failed.append("read")
        found["steps"]["read"] = f"{type(e).__name__}: {e}"
        print(f"2. read FAILED: {type(e).__name__}: {e}")

    # 3. PID -> cgroup -> container
    mapped = []
    for r in readings:
        for p in r.processes:
            text = reader_module.cgroup_of(p.pid)
            mapped.append({"device": r.uuid, "pid": p.pid, "cgroup": text.strip().splitlines()[-1:] or None,
                           "container": utilisation.container_id_from_cgroup(text)})
    found["steps"]["pid_to_cgroup"] = mapped
    print(f"3. PID to cgroup: {len(mapped)} process(es)")
    for m in mapped:
        print(f"   pid {m['pid']} on {m['device']}: {m['cgroup']} -> container {m['container']}")
    if child is not None:
        seen = any(m["pid"] == child.pid for m in mapped)
        found["steps"]["cuda_child_listed"] = seen
        print(f"   the CUDA child (pid {child.pid}) is {'listed' if seen else 'NOT listed'} by NVML")
        if not seen:
            failed.append("pid_to_cgroup")
        busy = max((r.percent for r in readings if r.percent is not None), default=None)
        found["steps"]["busy_device_percent"] = busy
        print(f"   the busiest device while the child copies: {busy} %")
        if not busy:  # unknown or 0 while a kernel runs: the utilisation read does not see work
            failed.append("read")
        child.join(args.hold + 30)

    found["failed"] = failed
    Path(args.json).write_text(json.dumps(found, indent=2) + "\n")
    print(f"{'all steps ran' if not failed else 'FAILED: ' + ', '.join(failed)}; written to {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    if os.environ.get("PYTHONPATH") is None:
        sys.path.insert(0, str(REPO))
    sys.exit(main())
