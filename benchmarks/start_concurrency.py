"""How many servers should start at once? (issue 22: why the hub has a start queue)

    .venv/bin/python benchmarks/start_concurrency.py [--servers 30] [--at-once 30 8 6 4 3 2] [--out PATH]

No hub and no spawner: N containers of the single-user image run ``jupyter lab`` (as the
image's own UID, ``HOME=/tmp``), started by this process all at once or through a semaphore of
K at a time. Per K: the time until the last server printed "is running at" (its readiness,
polled every 0.1 s), the median user's time, and each container's cgroup CPU-seconds at that
moment. What it shows is the machine's, not the spawner's: whether starting a whole class at
once costs more per server than a few at a time (`hardened_spawner.docker.start_queue`).
Containers are named and labelled ``hsbench-conc``; they are removed after each K, and at the
start if a killed run left any. See benchmarks/README.md, "A class of 100".
"""

from __future__ import annotations

if __package__ in (None, ""):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import os
import statistics
import threading
import time
from pathlib import Path

import docker

from benchmarks.common import IMAGE, cgroup_cpu_ns, log, machine, publish

PREFIX = "hsbench-conc"
LABEL = {PREFIX: "1"}
COMMAND = ["jupyter", "lab", "--ip=0.0.0.0", "--no-browser", "--ServerApp.token=bench"]


def cleanup(client: docker.DockerClient) -> int:
    found = client.containers.list(all=True, filters={"label": f"{PREFIX}=1"})
    for container in found:
        container.remove(force=True)
    return len(found)


def burst(client: docker.DockerClient, servers: int, at_once: int) -> dict:
    """Start ``servers`` servers, ``at_once`` at a time; when each answered, and its CPU then."""
    gate, slots = threading.Barrier(servers), threading.Semaphore(at_once)
    began = time.monotonic()
    ready: list[tuple[float, float]] = []
    errors: list[str] = []

    def one(i: int) -> None:
        gate.wait()
        with slots:
            try:
                container = client.containers.run(
                    IMAGE, COMMAND, name=f"{PREFIX}-{at_once}-{i}", labels=LABEL, detach=True,
                    user="1000:100", environment={"HOME": "/tmp"})
                while b"is running at" not in container.logs():
                    time.sleep(0.1)
                ready.append((time.monotonic() - began, (cgroup_cpu_ns(container.id) or 0) / 1e9))
            except Exception as e:  # one failed start must not stop the others
                errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(servers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    times, cpus = sorted(t for t, _ in ready), [c for _, c in ready]
    return {
        "at_once": at_once, "ready": len(ready), "errors": errors,
        "all_ready_s": round(times[-1], 2) if times else None,
        "median_user_s": round(statistics.median(times), 2) if times else None,
        "cpu_per_server_median_s": round(statistics.median(cpus), 3) if cpus else None,
        "cpu_sum_s": round(sum(cpus), 1),
    }


def render(r: dict) -> str:
    m = r["machine"]
    lines = [
        f"servers started K at a time, {r['date']}",
        f"machine: {m['nproc']} CPUs, {m['memory_gib']} GiB, kernel {m['kernel']}, Docker engine "
        f"{m['docker_engine']} (API {m['docker_api']}); code {m['code']}; image {IMAGE}",
        f"load average at start {m['loadavg_at_start']}, at end {r['loadavg_at_end']}; other running "
        f"containers at start: {m['other_containers_running']}; {r['servers']} servers per K; took "
        f"{r['duration_seconds']} s",
        "",
        f"   {'K at a time':>11}  {'ready':>7}  {'all answering s':>15}  {'median user s':>13}  "
        f"{'CPU-s/server (median)':>21}  {'CPU-s, all':>10}",
    ]
    for b in r["bursts"]:
        lines.append(
            f"   {b['at_once']:>11}  {b['ready']:>3}/{r['servers']:<3}  {b['all_ready_s'] or float('nan'):>15.1f}  "
            f"{b['median_user_s'] or float('nan'):>13.1f}  {b['cpu_per_server_median_s'] or float('nan'):>21.2f}  "
            f"{b['cpu_sum_s']:>10.1f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--servers", type=int, default=30, help="servers started for each K (default 30)")
    p.add_argument("--at-once", type=int, nargs="+", default=[30, 8, 6, 4, 3, 2],
                   help="the Ks to try, in this order (default 30 8 6 4 3 2)")
    p.add_argument("--out", type=Path, help="JSON results (default benchmarks/results/start-concurrency-<date>.json)")
    args = p.parse_args(argv)

    started = time.monotonic()
    client = docker.from_env()
    if left := cleanup(client):
        log(f"removed {left} containers an earlier run left")
    results: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine(PREFIX),
                     "servers": args.servers, "bursts": []}
    try:
        for k in args.at_once:
            result = burst(client, args.servers, k)
            results["bursts"].append(result)
            log(f"K={k}: {result['ready']}/{args.servers} ready, all after {result['all_ready_s']} s, "
                f"median {result['median_user_s']} s, {result['cpu_per_server_median_s']} CPU-s per server")
            cleanup(client)
    finally:
        cleanup(client)
    results["duration_seconds"] = round(time.monotonic() - started, 1)
    results["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    publish(results, render(results), args.out, "start-concurrency-")
    return 0 if all(b["ready"] == args.servers for b in results["bursts"]) else 2


if __name__ == "__main__":
    raise SystemExit(main())
