"""2. A burst: N users press "Start" at the same moment.

Three bursts, one after the other, each with N users whose spawn requests are
released together (one thread each, behind a barrier):

- plain DockerSpawner, N new users;
- HardenedSpawner, N new users (first spawn: N workspaces prepared at once);
- HardenedSpawner, the same N users again (later spawn: the lecture's second week).

The hardened hub has a pool of 4 fake GPUs (``GPU-<prefix>-0`` ...) and ``gpu_default_per_user = 0``;
the first 4 users ask for one GPU each (user option ``{"gpus": 1}``), so nobody
is refused. While the hardened servers run, `docker inspect` of each container
checks that no device was handed out twice: the ``...gpus`` label and the
container's ``DeviceRequests`` must agree, and no UUID may appear twice.

Where the CPU went during each burst is recorded too: the hub process, the
engine's daemons and shims, the whole machine, and the servers' own containers
(start-up plus the healthchecks that ran, counted from ``State.Health.Log``).

Standalone: ``python benchmarks/burst.py [--quick]``.
"""

from __future__ import annotations

if __package__ in (None, ""):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import time
from collections import Counter
from pathlib import Path

from benchmarks.common import (
    Bench,
    CpuMeter,
    HubProfile,
    LoopLag,
    anatomy,
    anatomy_summary,
    concurrent,
    container_cpu_seconds,
    log,
    stop_all,
    summary,
    timed_spawn,
)
from hardened_spawner import labels


def run(bench: Bench) -> dict:
    n = bench.settings.burst_users
    gpu_users = min(len(bench.gpu_pool), n)
    plain_users = [bench.user("burst-p", i) for i in range(n)]
    hard_users = [bench.user("burst-h", i) for i in range(n)]
    options = [{"gpus": 1} if i < gpu_users else None for i in range(n)]

    result = {"users": n, "gpu_users": gpu_users}
    result["plain"] = _burst(bench, bench.plain, plain_users, [None] * n, "plain")
    stop_all(bench.plain, plain_users)
    for week in ("first", "later"):
        burst = _burst(bench, bench.hardened, hard_users, options, f"hardened {week}")
        burst["gpus"] = check_gpus(bench, hard_users, options)
        stop_all(bench.hardened, hard_users)
        result[f"hardened_{week}"] = burst
    return result


def _burst(bench: Bench, hub, users: list[str], options: list, what: str) -> dict:
    for user in users:
        hub.create_user(user)
    profile = HubProfile(hub.proc.pid, bench.settings.workdir / f"profile-{what.replace(' ', '-')}.txt")
    if bench.settings.profile:
        profile.start()
    lag = LoopLag(hub.hub_port).start()
    meter = CpuMeter(hub.proc.pid).start()
    start = time.monotonic()
    spawns = concurrent(lambda u, o: timed_spawn(hub, u, o), list(zip(users, options)))
    all_done = time.monotonic() - start
    cpu = meter.stop()
    loop_lag = lag.stop()
    ids = _server_ids(hub, users)
    cpu["servers"] = container_cpu_seconds(bench.client, ids)
    cpu["healthcheck_runs"] = sum(
        len((bench.client.api.inspect_container(i)["State"].get("Health") or {}).get("Log") or [])
        for i in ids
    )
    ok = [s for s in spawns if not isinstance(s, Exception) and s.ready]
    failed = [
        {"user": getattr(s, "user", "?"), "message": getattr(s, "message", repr(s))}
        for s in spawns
        if isinstance(s, Exception) or not s.ready
    ]
    out = {
        "all_ready": not failed,
        "time_to_all_ready": max(s.seconds for s in ok) if ok and not failed else None,
        "wall": all_done,
        "per_user": summary([s.seconds for s in ok]),
        "anatomy_median": anatomy_summary([anatomy(bench.client, hub, s) for s in ok]),
        "failures": failed,
        "cpu_seconds": cpu,
        "loop_lag": loop_lag,
        "hub_rss_mib": _rss_mib(hub.proc.pid),
        **({"profile": profile.stop()} if bench.settings.profile else {}),
    }
    log(
        f"burst {what}: {len(ok)}/{len(users)} ready, all ready after "
        f"{out['time_to_all_ready'] or float('nan'):.2f}s, p50 {out['per_user']['median']:.2f}s"
    )
    for message, count in Counter(f["message"][:160] for f in failed).most_common():
        log(f"   {count} failed: {message}")
    return out


def _rss_mib(pid: int) -> dict:
    """The hub's resident memory now and at its peak so far (VmHWM), in MiB."""
    text = Path(f"/proc/{pid}/status").read_text()
    status = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {"now": int(status["VmRSS"].split()[0]) // 1024, "peak": int(status["VmHWM"].split()[0]) // 1024}


def _server_ids(hub, users: list[str]) -> list[str]:
    """The running servers' container ids, from the hub's state of each user."""
    ids = []
    for user in users:
        try:
            ids.append(hub.api("GET", f"/users/{user}").json()["servers"][""]["state"]["object_id"])
        except (KeyError, ValueError):
            continue
    return ids


def check_gpus(bench: Bench, users: list[str], options: list) -> dict:
    """Read the running servers' GPU labels and DeviceRequests from the engine."""
    seen: dict[str, list[str]] = {}
    problems: list[str] = []
    wanted = {u: (o or {}).get("gpus", 0) for u, o in zip(users, options)}
    holders = bench.client.containers.list(
        filters={"label": [f"{labels.MANAGED}=true", f"{labels.ROLE}={labels.ROLE_SERVER}"]}
    )
    for container in holders:
        owner = container.labels.get(labels.OWNER, "")
        if owner not in wanted:
            continue
        from_label = [d for d in container.labels.get(labels.GPUS, "").split(",") if d]
        requests = container.attrs["HostConfig"].get("DeviceRequests") or []
        from_engine = [d for r in requests for d in (r.get("DeviceIDs") or [])]
        if sorted(from_label) != sorted(from_engine):
            problems.append(f"{owner}: label {from_label} but DeviceRequests {from_engine}")
        if len(from_engine) != wanted[owner]:
            problems.append(f"{owner}: asked for {wanted[owner]} GPUs, holds {from_engine}")
        if any(r.get("Count") for r in requests):
            problems.append(f"{owner}: a DeviceRequest by count, not by device: {requests}")
        for device in from_engine:
            seen.setdefault(device, []).append(owner)
    twice = {d: owners for d, owners in seen.items() if len(owners) > 1}
    for device, owners in twice.items():
        problems.append(f"{device} handed to {owners}")
    return {
        "assigned": {d: owners[0] for d, owners in sorted(seen.items())},
        "handed_out_twice": twice,
        "ok": not problems,
        "problems": problems,
    }


if __name__ == "__main__":
    from benchmarks.run import standalone

    standalone("burst")
