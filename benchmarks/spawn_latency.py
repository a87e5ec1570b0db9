"""1. Spawn latency, request to ready: plain DockerSpawner vs HardenedSpawner.

Four series, measured in interleaved rounds so that any noise on the machine
hits all of them alike:

- plain, first spawn  (a new hub user)
- plain, later spawn  (the same user again, after a stop)
- hardened, first spawn (a new user: new workspace volume, prepared by the helper)
- hardened, later spawn (the same user again: the workspace is already prepared)

Each time is from ``POST /hub/api/users/NAME/server`` to the ``ready`` event of
the progress stream, as a browser's spawn page sees it. The stop that follows
each spawn (``DELETE`` until the hub lists no server) is timed too.

Standalone: ``python benchmarks/spawn_latency.py [--quick]``.
"""

from __future__ import annotations

if __package__ in (None, ""):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import statistics
import time

from benchmarks.common import Bench, anatomy, anatomy_summary, log, summary, timed_spawn

SERIES = ("plain_first", "plain_later", "hardened_first", "hardened_later")


def run(bench: Bench) -> dict:
    rounds = bench.settings.latency_rounds
    times: dict[str, list[float]] = {name: [] for name in SERIES}
    steps: dict[str, list] = {name: [] for name in SERIES}
    parts: dict[str, list] = {name: [] for name in SERIES}
    stops: dict[str, list[float]] = {name: [] for name in SERIES}
    failures: list[dict] = []
    for i in range(rounds):
        for hub, kind in ((bench.plain, "plain"), (bench.hardened, "hardened")):
            user = bench.user(f"lat-{kind[0]}", i)
            hub.create_user(user)
            for series in (f"{kind}_first", f"{kind}_later"):
                spawn = timed_spawn(hub, user)
                if spawn.ready:
                    times[series].append(spawn.seconds)
                    steps[series].append(spawn.steps)
                    parts[series].append(anatomy(bench.client, hub, spawn))
                else:
                    failures.append({"series": series, "user": user, "message": spawn.message})
                t = time.monotonic()
                hub.stop_server(user)
                stops[series].append(time.monotonic() - t)
        log(
            f"latency round {i + 1}/{rounds}: "
            + ", ".join(f"{s}={times[s][-1]:.2f}s" for s in SERIES if len(times[s]) == i + 1)
        )
    result = {name: summary(values) for name, values in times.items()}
    for name in SERIES:
        result[name]["steps_median"] = step_medians(steps[name])
        result[name]["anatomy_median"] = anatomy_summary(parts[name])
        result[name]["stop"] = summary(stops[name])
    result["failures"] = failures
    result["ratio_first"] = _ratio(result, "hardened_first", "plain_first")
    result["ratio_later"] = _ratio(result, "hardened_later", "plain_later")
    return result


def step_medians(spawns: list[list]) -> dict[str, float]:
    """Median arrival time (s after the request) of each progress message over the spawns."""
    arrivals: dict[str, list[float]] = {}
    for events in spawns:
        for seconds, message in events:
            key = message.split(" ", 1)[0] if message.startswith("Server ready") else message
            arrivals.setdefault(key[:60], []).append(seconds)
    return {m: round(statistics.median(v), 3) for m, v in arrivals.items()}


def _ratio(result: dict, a: str, b: str) -> float:
    return result[a]["median"] / result[b]["median"] if result[b]["n"] and result[a]["n"] else float("nan")


if __name__ == "__main__":
    from benchmarks.run import standalone

    standalone("latency")
