"""3. Hub restart with many managed containers on the engine.

How long after a restart is HardenedSpawner's hub ready to serve spawns, when
the engine holds N (200) managed server containers? Measured:

- hub ready: from the hub process's start to ``GET /hub/api/`` answering, for
  the plain DockerSpawner hub (JupyterHub's own start-up: the baseline) and the
  hardened hub, without and with the N containers;
- the first spawn after the restart: HardenedSpawner asks the engine for its
  facts and rebuilds the GPU table from the running servers' labels then, so
  that spawn is timed (a returning user, asking for one GPU), without and with
  the N containers;
- when the hub's background check of the existing server containers (one
  ``docker inspect`` each) has logged its summary, if this version has one;
- the engine queries behind it, timed directly, without and with them.

The N containers are made with docker-py from the base image, labelled as
HardenedSpawner labels its servers (managed, role=server, owner, UID, ...),
all created and two of them running, holding the pool's first two GPUs (labels
only): the restarted hub must hand the spawn one of the other two.

Standalone: ``python benchmarks/restart.py [--quick]``.
"""

from __future__ import annotations

if __package__ in (None, ""):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

from benchmarks.common import BASE_IMAGE, Bench, log, summary, timed_spawn
from hardened_spawner import labels
from hardened_spawner._version import __version__

#: What the hub logs when its start-up check of the existing server containers is done
#: (`hardened_spawner.docker.inspection.hub_start_log_lines`); absent in versions without one.
AUDIT_DONE = "managed server container"


def run(bench: Bench) -> dict:
    s = bench.settings
    user = _returning_user(bench)

    held = bench.gpu_pool[:2]  # held by running fake servers while the hub restarts
    result: dict = {"containers": s.restart_containers, "held_by_running_fakes": held}
    # --quick: the baseline hub alone without the containers, the hardened hub alone with them
    result["without"] = _measure(bench, user, plain=True, hardened=not s.quick, forbidden=set())
    result["engine_queries_without"] = engine_queries(bench)
    names, made_in = make_containers(bench, s.restart_containers, held)
    result["create_seconds"] = made_in
    try:
        result["engine_queries_with"] = engine_queries(bench)
        result["with"] = _measure(bench, user, plain=False, hardened=True, forbidden=set(held))
    finally:
        result["remove_seconds"] = remove_containers(bench, names)
    w, wo = result["with"], result["without"]
    result["hub_ready_plain"] = wo["plain_hub_ready"]["median"]
    result["hub_ready_hardened"] = w["hardened_hub_ready"]["median"]
    result["hub_ready_added_by_spawner"] = result["hub_ready_hardened"] - result["hub_ready_plain"]
    result["first_spawn_added_by_containers"] = (
        w["hardened_first_spawn"]["median"] - wo["hardened_first_spawn"]["median"]
        if wo["hardened_first_spawn"]["n"]
        else 0.0
    )
    return result


def _returning_user(bench: Bench) -> str:
    """A user with a prepared workspace and no server: the latency phase's first hardened
    user when that phase ran, else a new one, spawned once and stopped."""
    hub = bench.hardened
    known = hub.api("GET", f"/users/{bench.user('lat-h', 0)}")
    if known.ok and not known.json()["servers"]:
        return known.json()["name"]
    user = bench.user("restart-h")
    hub.create_user(user)
    spawn = timed_spawn(hub, user)
    if not spawn.ready:
        raise RuntimeError(f"warm-up spawn of {user} failed: {spawn.message}")
    hub.stop_server(user)
    return user


def _measure(bench: Bench, user: str, plain: bool, hardened: bool, forbidden: set[str]) -> dict:
    """Restart the hubs ``restart_reps`` times; each time, time the hub's start, and for
    the hardened hub one spawn. The plain hub is the baseline: JupyterHub's own start-up."""
    series = {k: [] for k in ("plain_hub_ready", "hardened_hub_ready", "hardened_first_spawn",
                              "hardened_audit_done")}
    failures, gpus = [], []
    for rep in range(bench.settings.restart_reps):
        if plain:
            series["plain_hub_ready"].append(bench.plain.restart())

        if not hardened:
            continue
        series["hardened_hub_ready"].append(bench.hardened.restart())
        spawn = timed_spawn(bench.hardened, user, {"gpus": 1})
        _record(spawn, series["hardened_first_spawn"], failures)
        if spawn.ready:
            got = _gpus_of(bench, user)
            gpus.append(got)
            if len(got) != 1 or set(got) & forbidden:
                failures.append({"user": user, "message": f"got GPUs {got}; held elsewhere: {sorted(forbidden)}"})
        bench.hardened.stop_server(user)
        audit = _wait_for_log(bench.hardened, AUDIT_DONE, 5)
        if audit is not None:
            series["hardened_audit_done"].append(audit)
        log(
            f"restart rep {rep + 1} ({'with' if forbidden else 'without'} containers): "
            + ", ".join(f"{k}={v[-1]:.2f}s" for k, v in series.items() if v)
        )
    out = {k: summary(v) for k, v in series.items()}
    out.update(failures=failures, gpus_assigned=gpus)
    return out


def _wait_for_log(hub, needle: str, seconds: float) -> float | None:
    deadline = time.monotonic() + seconds
    while True:
        found = hub.log_time_since_start(needle)
        if found is not None or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def _record(spawn, values: list[float], failures: list[dict]) -> None:
    if spawn.ready:
        values.append(spawn.seconds)
    else:
        failures.append({"user": spawn.user, "message": spawn.message})


def _gpus_of(bench: Bench, user: str) -> list[str]:
    found = bench.client.containers.list(filters={"label": f"{labels.OWNER}={user}"})
    return [d for c in found for d in c.labels.get(labels.GPUS, "").split(",") if d]


def make_containers(bench: Bench, n: int, held: list[str]) -> tuple[list[str], float]:
    """N labelled fake servers: all created, the first len(held) running, holding one GPU each."""
    api = bench.client.api
    since = datetime.now(timezone.utc).isoformat()
    uid0 = bench.settings.uid_base + 50000

    def make(i: int) -> str:
        name = f"{bench.prefix}-restart-{i}"
        holds = held[i] if i < len(held) else ""
        container = api.create_container(
            BASE_IMAGE,
            command=["sleep", "infinity"],
            name=name,
            labels={
                labels.MANAGED: "true",
                labels.ROLE: labels.ROLE_SERVER,
                labels.OWNER: f"{bench.prefix}-ghost{i}",
                labels.SERVER_NAME: "",
                labels.UID: str(uid0 + i),
                labels.GID: str(uid0 + i),
                labels.VERSION: __version__,
                labels.GPUS: holds,
                labels.GPUS_SINCE: since if holds else "",
            },
            host_config=api.create_host_config(network_mode="none", init=True),
        )
        if holds:
            api.start(container["Id"])
        return name

    start = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        names = list(pool.map(make, range(n)))
    made_in = time.monotonic() - start
    log(f"created {n} labelled containers in {made_in:.1f}s")
    return names, made_in


def remove_containers(bench: Bench, names: list[str]) -> float:
    start = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda name: bench.client.api.remove_container(name, force=True), names))
    return time.monotonic() - start


def engine_queries(bench: Bench, repeat: int = 5) -> dict:
    """The list calls a restarted hub's first spawn makes, timed with the same client."""
    api = bench.client.api
    running = {"label": [f"{labels.MANAGED}=true", f"{labels.ROLE}={labels.ROLE_SERVER}"]}
    by_uid = {"label": [f"{labels.MANAGED}=true", f"{labels.UID}={bench.settings.uid_base}"]}
    calls = {
        "gpu_table_rebuild (running servers)": lambda: api.containers(filters=running),
        "uid_unique (all containers of a UID)": lambda: api.containers(all=True, filters=by_uid),
        "info": api.info,
    }
    out = {}
    for name, call in calls.items():
        times = []
        for _ in range(repeat):
            t = time.monotonic()
            call()
            times.append(time.monotonic() - t)
        out[name] = summary(times)["median"]
    return out


if __name__ == "__main__":
    from benchmarks.run import standalone

    standalone("restart")
