"""What one workspace helper run costs the machine (issue 22: a first spawn's part that plain
DockerSpawner does not have).

    .venv/bin/python benchmarks/helper_cost.py [--runs 20] [--out PATH]

The project's own `helper_container_spec` (root with only CHOWN and FOWNER, no network, a
read-only root) run to its end on a fresh volume, one run after the other, as a user's first
spawn does: create, start, wait, logs, remove. Per run: wall seconds, and the whole machine's
CPU-seconds from ``/proc/stat`` (the engine, runc and the kernel's container set-up count,
not only the helper's own process), so nothing else should run meanwhile. Volumes are named
``hsbench-helper-<i>`` and removed at the end; the passwd/group files the helpers write for
UIDs 870100... stay in the identity volume, as every helper run leaves them (a user later given
one of those UIDs has them rewritten by their own first spawn's helper).
"""

from __future__ import annotations

if __package__ in (None, ""):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import os
import time
from pathlib import Path

import docker

from benchmarks.common import IMAGE, log, machine, publish
from hardened_spawner.core.identity import make_identity
from hardened_spawner.docker.workspace import helper_container_spec

PREFIX = "hsbench-helper"
UID = 870100


def machine_cpu_seconds() -> float:
    """Busy CPU-seconds of the whole machine so far (all but idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=20, help="helper runs, one after the other (default 20)")
    p.add_argument("--out", type=Path, help="JSON results (default benchmarks/results/helper-cost-<date>.json)")
    args = p.parse_args(argv)
    client = docker.APIClient(version="auto")
    results: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine(PREFIX), "runs": args.runs}
    volumes = [f"{PREFIX}-{i}" for i in range(args.runs)]
    statuses = []
    cpu, wall = machine_cpu_seconds(), time.monotonic()
    try:
        for i, volume in enumerate(volumes):
            owner = f"hsbenchhelper{i}"
            create, host = helper_container_spec(image=IMAGE, volume=volume,
                                                 identity=make_identity(owner, UID + i, "/home/{username}"),
                                                 owner=owner, allow_adopt=False, version="bench")
            client.create_volume(volume)
            helper = client.create_container(host_config=client.create_host_config(**host), **create)
            try:
                client.start(helper["Id"])
                statuses.append(client.wait(helper["Id"])["StatusCode"])
                client.logs(helper["Id"])
            finally:
                client.remove_container(helper["Id"], force=True)
        cpu, wall = machine_cpu_seconds() - cpu, time.monotonic() - wall
    finally:
        for volume in volumes:
            try:
                client.remove_volume(volume)
            except docker.errors.NotFound:
                pass
    results.update(statuses=statuses, machine_cpu_s=round(cpu, 2), wall_s=round(wall, 2),
                   loadavg_at_end=[round(x, 2) for x in os.getloadavg()])
    m = results["machine"]
    table = "\n".join([
        f"workspace helper runs, {results['date']}",
        f"machine: {m['nproc']} CPUs, {m['memory_gib']} GiB, Docker engine {m['docker_engine']}; code {m['code']}; "
        f"load at start {m['loadavg_at_start']}, at end {results['loadavg_at_end']}",
        f"   {args.runs} runs (exit 0: {statuses.count(0)}): {cpu:.2f} machine CPU-s ({cpu / args.runs:.3f} each), "
        f"{wall:.2f} s wall ({wall / args.runs:.3f} each)",
    ])
    log(f"helper exit statuses: {statuses}")
    publish(results, table, args.out, "helper-cost-")
    return 0 if statuses.count(0) == args.runs else 2


if __name__ == "__main__":
    raise SystemExit(main())
