"""What sampling the GPUs' utilisation costs the hub: CPU per sample with 8 devices.

    .venv/bin/python benchmarks/gpu_sampling.py [--samples 300] [--seconds 60] [--out PATH]

Why: with ``gpu_inventory = "nvml"`` the hub samples every pooled device each
``gpu_utilisation_interval`` (30 s by default) in its own process (`gpu_sampler`). The issue
asks what one sample costs with 8 devices. There is no GPU here: NVML is
`tests/nvml_standin.py` under nvidia-ml-py's own functions, so the driver's own time is not in
these numbers (on a real GPU each NVML call is a few microseconds to a millisecond; run
`scripts/check_nvml.py` there). Everything of the hub's is real: the reader, the attribution,
the watch, the meter, the audit records, the gauges, and the ``/proc/PID/cgroup`` reads.

1. One sample in this process (`GpuSampler.sample`), median CPU and wall time over
   ``--samples``: exclusive (8 servers on 8 devices) and shared (16 servers, 2 on each device,
   2 processes each: every process's cgroup is read and mapped to a container).
2. The same in real hubs, side by side, for ``--seconds`` while no one uses them: plain
   DockerSpawner, HardenedSpawner with 8 listed devices (no sampling), and HardenedSpawner
   with 8 NVML stand-in devices sampled every second. The hub processes' CPU time over the
   same seconds, and per sample: (sampling hub - listed hub) / samples.
"""

from __future__ import annotations

if __package__ in (None, ""):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import json
import logging
import os
import statistics
import tempfile
import textwrap
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import docker

from benchmarks.common import IMAGE, ROOT, BenchHub, CpuMeter, cleanup_engine, log, machine, plain_config, publish
from hardened_spawner.audit import AuditTrail
from hardened_spawner.core.gpus import GpuAllocator, GpuPolicy, Holding, discover_nvml
from hardened_spawner.gpu_broker import GpuBroker
from hardened_spawner.gpu_sampler import GpuSampler
from hardened_spawner.nvml_reader import NvmlReader
from tests import nvml_standin

DEVICES = 8
PREFIX = "hsbench-sampling"


def devices_script(pids: list[int], shared: bool) -> dict:
    devices = []
    for i in range(DEVICES):
        mine = pids[4 * i:4 * i + 4] if shared else pids[2 * i:2 * i + 2]
        devices.append({"uuid": f"GPU-{PREFIX}-{i}", "name": "Stand-in H100", "utilisation": 10 * i,
                        "memory_used": 2**30 * i, "memory_total": 80 * 2**30,
                        "processes": [{"pid": pid, "sm": 5 * i // len(mine), "memory": 2**28} for pid in mine]})
    return {"devices": devices}


def container_processes(client) -> tuple[object, list[int]]:
    """A container running 32 sleeping processes, and their host PIDs (real cgroups to read)."""
    box = client.containers.run(IMAGE, ["sh", "-c", "for i in $(seq 32); do sleep 600 & done; wait"], detach=True,
                                remove=True, name=f"{PREFIX}-processes", labels={"purpose": PREFIX})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pids = [int(row[1]) for row in box.top()["Processes"] if "sleep" in row[-1]]
        if len(pids) >= 4 * DEVICES:
            return box, pids[:4 * DEVICES]
        time.sleep(0.2)
    raise RuntimeError("the processes' container did not start its 32 processes")


def in_process(samples: int, shared: bool, workdir: Path, box, pids: list[int]) -> dict:
    """Median CPU and wall seconds of one `GpuSampler.sample`."""
    nvml_standin.install(devices_script(pids, shared))
    since = datetime.now(timezone.utc) - timedelta(hours=1)
    holders = [Holding(f"user{i}", (f"GPU-{PREFIX}-{i // 2 if shared else i}",), since, f"user{i}")
               for i in range(2 * DEVICES if shared else DEVICES)]
    allocator = GpuAllocator(discover_nvml(), GpuPolicy(max_per_user=1, max_users_per_gpu=2 if shared else 1))
    # the processes' real container, as the engine's list of this hub's servers names it (the
    # sampler asks once, then keeps the answer)
    by_container = {box.id: holders[0].user}

    async def holdings():
        return holders

    async def containers():
        return by_container

    log_ = logging.getLogger("bench")
    trail = AuditTrail(str(workdir / f"audit-{'shared' if shared else 'exclusive'}.jsonl"))
    sampler = GpuSampler(NvmlReader(), GpuBroker(allocator, holdings, log_), containers, trail, log_,
                         interval=30, underused_percent=5, record_every=900)
    cpu, wall = [], []

    async def run():
        now = datetime.now(timezone.utc)
        for n in range(samples):
            c, w = time.process_time(), time.perf_counter()
            await sampler.sample(now + timedelta(seconds=30 * n))
            cpu.append(time.process_time() - c)
            wall.append(time.perf_counter() - w)

    asyncio.run(run())
    trail.close()
    return {"mode": "shared" if shared else "exclusive", "holders": len(holders), "samples": samples,
            "cpu_ms_median": statistics.median(cpu) * 1000, "cpu_ms_p95": sorted(cpu)[int(0.95 * len(cpu))] * 1000,
            "wall_ms_median": statistics.median(wall) * 1000}


def hubs(seconds: float, workdir: Path) -> dict:
    """Three idle hubs side by side; their CPU over the same ``seconds``."""
    script = workdir / "nvml.json"
    script.write_text(json.dumps(devices_script([], False)))
    listed = [f"GPU-{PREFIX}-{i}" for i in range(DEVICES)]
    common = 'c.HardenedSpawner.mem_limit = "2G"\nc.HardenedSpawner.gpu_max_per_user = 1\n'
    configs = {
        "plain DockerSpawner": plain_config(PREFIX),
        "HardenedSpawner, 8 listed GPUs": common + f"c.HardenedSpawner.gpu_inventory = {listed!r}\n",
        "HardenedSpawner, 8 NVML GPUs sampled every 1 s": common + textwrap.dedent(f"""
            import sys
            sys.path.insert(0, {str(ROOT)!r})
            from tests import nvml_standin
            nvml_standin.install({str(script)!r})
            c.HardenedSpawner.gpu_inventory = "nvml"
            c.HardenedSpawner.gpu_utilisation_interval = 1
            """),
    }
    started = {}
    for n, (name, config) in enumerate(configs.items()):
        started[name] = BenchHub(workdir=workdir / f"hub{n}", extra_config=config, uid_min=4_600_000 + 10_000 * n,
                                 prefix=PREFIX).start(wait=False)
    try:
        for hub in started.values():
            hub.wait_api()
        time.sleep(10)  # past the hub-start work
        meters = {name: CpuMeter(hub.proc.pid).start() for name, hub in started.items()}
        time.sleep(seconds)
        used = {name: meter.stop()["hub"] for name, meter in meters.items()}
    finally:
        for hub in started.values():
            hub.stop()
    return {"seconds": seconds, "hub_cpu_s": used}


def render(results: dict) -> str:
    lines = [f"GPU utilisation sampling, {DEVICES} devices (NVML: the stand-in; the driver's own time is not in it)",
             "", "1. One sample in the hub's code (this process):",
             f"   {'mode':<12}{'servers':>8}{'CPU ms (median)':>17}{'CPU ms (p95)':>14}{'wall ms':>9}"]
    for row in results["in_process"]:
        lines.append(f"   {row['mode']:<12}{row['holders']:>8}{row['cpu_ms_median']:>17.2f}{row['cpu_ms_p95']:>14.2f}"
                     f"{row['wall_ms_median']:>9.2f}")
    side = results["hubs"]
    lines += ["", f"2. Idle hubs side by side, hub process CPU over the same {side['seconds']:.0f} s:"]
    for name, cpu in side["hub_cpu_s"].items():
        lines.append(f"   {name:<48}{cpu:>7.2f} s")
    names = list(side["hub_cpu_s"])
    per_sample = (side["hub_cpu_s"][names[2]] - side["hub_cpu_s"][names[1]]) / side["seconds"]
    lines += [f"   per sample (sampling hub - listed hub) / {side['seconds']:.0f} samples: {per_sample * 1000:.2f} ms",
              f"   at the default interval (30 s): {per_sample / 30 * 100:.3f} % of one CPU",
              "", f"machine: {os.cpu_count()} CPUs, load average {results['machine']['loadavg_at_start'][0]:.2f} "
              f"at the start; code {results['machine']['code']}"]
    results["per_sample_hub_ms"] = per_sample * 1000
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=300)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    results: dict = {"machine": machine(PREFIX)}
    with tempfile.TemporaryDirectory(prefix="gpu-sampling-") as work:
        workdir = Path(work)
        log("one sample, in this process")
        client = docker.from_env()
        box, pids = container_processes(client)
        try:
            results["in_process"] = [in_process(args.samples, shared, workdir, box, pids) for shared in (False, True)]
        finally:
            box.remove(force=True)
        log(f"three idle hubs for {args.seconds:.0f} s")
        try:
            results["hubs"] = hubs(args.seconds, workdir)
        finally:
            cleanup_engine(client, PREFIX)
    publish(results, render(results), args.out, stem="gpu-sampling-")


if __name__ == "__main__":
    main()
