"""4. Training throughput inside a hardened server vs the same image with Docker's defaults.

`train_loop.py` (PyTorch CPU, ``DataLoader(num_workers=2)``) runs with
``docker exec`` in:

- hardened: a server HardenedSpawner started through the hub (its own UID, no
  capabilities, read-only root, seccomp, pids/memory/CPU limits, its /dev/shm);
  an exec'd process gets all of that, exactly as the user's kernel does;
- defaults + shm: ``docker run`` of the same image with Docker's defaults, except
  ``--shm-size`` set to the hardened server's /dev/shm size;
- defaults: Docker's defaults as they are (64 MB /dev/shm), run once to show
  whether the loader survives.

Hardened and defaults + shm alternate, ``reps`` times each; the medians are compared.

Standalone: ``python benchmarks/training.py [--quick]``.
"""

from __future__ import annotations

if __package__ in (None, ""):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import json
import statistics
import time
from pathlib import Path

import docker

from benchmarks.common import IMAGE, Bench, cgroup_cpu_ns, log, timed_spawn
from hardened_spawner import labels

SCRIPT = (Path(__file__).parent / "train_loop.py").read_text()
#: seconds a run may take beyond its measuring time (torch import, warm-up) before it counts as hung
HANG_AFTER = 90


def run(bench: Bench) -> dict:
    s = bench.settings
    user = bench.user("train")
    bench.hardened.create_user(user)
    spawn = timed_spawn(bench.hardened, user)
    if not spawn.ready:
        raise RuntimeError(f"could not start the hardened server for training: {spawn.message}")
    defaults = shm = None
    try:
        (hardened,) = bench.client.containers.list(filters={"label": f"{labels.OWNER}={user}"})
        host = hardened.attrs["HostConfig"]
        shm_size = host["ShmSize"]
        defaults = _sleeper(bench, "train-defaults")
        shm = _sleeper(bench, "train-defaults-shm", shm_size=shm_size)
        runs = {"hardened": [], "defaults_same_shm": []}
        pair = [("hardened", hardened), ("defaults_same_shm", shm)]
        for rep in range(s.training_reps):
            # ABBA order: a drift in the machine's load hits both alike
            for name, container in pair if rep % 2 == 0 else pair[::-1]:
                runs[name].append(train(container, s.training_seconds))
            log(
                f"training rep {rep + 1}: "
                + ", ".join(f"{k}={_rate(v[-1])}" for k, v in runs.items())
            )
        default_shm = train(defaults, s.training_seconds)
        log(f"training with Docker's default /dev/shm: {_rate(default_shm)}")
        probe = healthcheck_cost(hardened, 1 if s.quick else 10)
    finally:
        for container in (defaults, shm):
            if container is not None:
                container.remove(force=True)
        bench.hardened.stop_server(user)

    medians = {k: _median(v) for k, v in runs.items()}
    per_cpu = {k: _median(v, "samples_per_cpu_second") for k, v in runs.items()}
    return {
        "hardened_flags": {
            "User": hardened.attrs["Config"]["User"],
            "CapDrop": host.get("CapDrop"),
            "CapAdd": host.get("CapAdd"),
            "ReadonlyRootfs": host.get("ReadonlyRootfs"),
            "SecurityOpt": host.get("SecurityOpt"),
            "PidsLimit": host.get("PidsLimit"),
            "Memory": host.get("Memory"),
            "NanoCpus": host.get("NanoCpus"),
            "ShmSize": shm_size,
            "Tmpfs": host.get("Tmpfs"),
            "Init": host.get("Init"),
        },
        "runs": runs,
        "hardened_samples_per_second": medians["hardened"],
        "defaults_same_shm_samples_per_second": medians["defaults_same_shm"],
        "ratio": (medians["hardened"] / medians["defaults_same_shm"])
        if medians["hardened"] and medians["defaults_same_shm"]
        else float("nan"),
        "hardened_samples_per_cpu_second": per_cpu["hardened"],
        "defaults_same_shm_samples_per_cpu_second": per_cpu["defaults_same_shm"],
        "ratio_per_cpu_second": (per_cpu["hardened"] / per_cpu["defaults_same_shm"])
        if per_cpu["hardened"] and per_cpu["defaults_same_shm"]
        else float("nan"),
        "hardened_cfs_throttled_periods": sum(r.get("cfs_throttled_periods", 0) for r in runs["hardened"]),
        "healthcheck": probe,
        "docker_default_shm": default_shm,
        "docker_default_shm_crashed": not default_shm.get("ok"),
    }


def _sleeper(bench: Bench, name: str, **kwargs):
    """The image with Docker's defaults (plus ``kwargs``), idling until we exec into it."""
    return bench.client.containers.run(
        IMAGE, ["sleep", "infinity"], name=f"{bench.prefix}-{name}", detach=True, **kwargs
    )


def train(container, seconds: float, batch_size: int = 32) -> dict:
    """Run the loop in ``container`` with ``docker exec``; its JSON line, or why it died.

    A loader starved of /dev/shm may crash, or hang with its workers blocked: the run
    is killed after ``HANG_AFTER`` seconds more than it should take."""
    limit = int(seconds + HANG_AFTER)
    started = time.monotonic()
    try:
        code, output = container.exec_run(
            ["timeout", "--signal=KILL", str(limit), "python3", "-c", SCRIPT, str(seconds), str(batch_size)],
            demux=False,
        )
    except docker.errors.APIError as e:
        return {"ok": False, "error": f"exec failed: {e}"}
    text = (output or b"").decode(errors="replace").strip()
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            try:
                result = json.loads(line)
                break
            except ValueError:
                continue
    else:
        if code == 137 and time.monotonic() - started >= limit - 1:
            result = {"ok": False, "hung": True,
                      "error": f"hung: no progress, killed after {limit} s (/dev/shm: {_shm_use(container)})"}
        else:
            result = {"ok": False, "error": f"exit code {code}, no result: {text[-400:]}"}
    result["exit_code"] = code
    return result


def healthcheck_cost(container, times: int) -> dict:
    """What one run of the server's healthcheck costs: its command, exec'd as the engine
    does every ``interval``; CPU from the container's cgroup (cgroup v1 or v2)."""
    check = container.attrs["Config"].get("Healthcheck") or {}
    test = check.get("Test") or []
    if not test or test[0] == "NONE":
        return {"configured": False}
    command = test[1:] if test[0] == "CMD" else ["/bin/sh", "-c", test[1]]
    cpu, wall = [], []
    for _ in range(times):
        before, t = cgroup_cpu_ns(container.id), time.monotonic()
        container.exec_run(command)
        wall.append(time.monotonic() - t)
        after = cgroup_cpu_ns(container.id)
        if before is not None and after is not None:
            cpu.append((after - before) / 1e9)
    interval = (check.get("Interval") or 30 * 10**9) / 1e9
    cpu_s = statistics.median(cpu) if cpu else None
    return {
        "configured": True,
        "interval_s": interval,
        "probe_cpu_s_in_container": cpu_s,
        "probe_wall_s": statistics.median(wall),
        "cores_used_by_20_servers": 20 * cpu_s / interval if cpu_s else None,
    }


def _shm_use(container) -> str:
    code, out = container.exec_run(["df", "-h", "--output=used,size", "/dev/shm"])
    return " of ".join(out.decode().split()[-2:]) + " used" if code == 0 else "?"


def _rate(result: dict) -> str:
    if result.get("ok"):
        return (f"{result['samples_per_second']:.1f} samples/s, "
                f"{result['samples_per_cpu_second'] or 0:.1f} per CPU-s")
    return "CRASHED (" + result.get("error", "?")[:120] + ")"


def _median(results: list[dict], key: str = "samples_per_second") -> float | None:
    ok = [r[key] for r in results if r.get("ok") and r.get(key)]
    return statistics.median(ok) if ok else None


if __name__ == "__main__":
    from benchmarks.run import standalone

    standalone("training")
