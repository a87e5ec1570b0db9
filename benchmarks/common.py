"""Shared pieces of the benchmarks: the two hubs, timing a spawn, statistics, cleanup.

Both hubs are real JupyterHub processes with the real proxy, started and driven
by ``hubdriver`` (as in the integration tests), talking to the same engine and
starting the same image. One runs plain ``dockerspawner.DockerSpawner``
configured the way an admin would to make this image start; the other runs
``HardenedSpawner``. Everything a benchmark creates on the engine carries the
run's prefix (``hsbench`` unless told otherwise) and is removed at the end.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import docker
import requests

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from hardened_spawner import labels
from hubdriver import SINGLEUSER_IMAGE, Hub, HubError

IMAGE = SINGLEUSER_IMAGE
BASE_IMAGE = os.environ.get("BASE_IMAGE", "hardened-spawner-base:bookworm")
MEM_LIMIT = "2G"
#: Both spawners get the same limits. One CPU per core of this machine: the limit is
#: there (HardenedSpawner requires one) but does not throttle a server that is alone.
CPU_LIMIT = float(os.cpu_count() or 1)


@dataclass
class Settings:
    """What one run is made of; `--quick` shrinks every count."""

    quick: bool
    prefix: str
    uid_base: int
    workdir: Path
    latency_rounds: int = 10
    burst_users: int = 20
    restart_containers: int = 200
    restart_reps: int = 3
    training_reps: int = 6
    training_seconds: float = 6.0
    #: sample the hubs with py-spy during each burst, and keep their top frames
    profile: bool = False
    #: both hubs' start and HTTP timeouts (None: long enough for the whole burst)
    spawn_timeout: int | None = None

    @classmethod
    def make(cls, quick: bool, prefix: str, uid_base: int, workdir: Path, **overrides) -> Settings:
        if quick:
            small = {
                "latency_rounds": 1,
                "burst_users": 3,
                "restart_containers": 20,
                "restart_reps": 1,
                "training_reps": 1,
                "training_seconds": 1.0,
            }
        else:
            small = {}
        values = {**small, **{k: v for k, v in overrides.items() if v is not None}}
        return cls(quick=quick, prefix=prefix, uid_base=uid_base, workdir=workdir, **values)


# --------------------------------------------------------------------- hubs


@dataclass
class BenchHub(Hub):
    """A hubdriver Hub that starts without ``--debug`` (as in production) and times its start."""

    debug: bool = False

    def wait_api(self, timeout: float = 60) -> float:
        """Seconds from process start until ``GET /hub/api/`` answers (polled every 20 ms)."""
        deadline = self.started_at + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HubError(f"hub exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.url}/hub/api/", timeout=2).ok:
                    return time.monotonic() - self.started_at
            except requests.ConnectionError:
                pass
            time.sleep(0.02)
        raise HubError(f"hub did not answer within {timeout}s:\n{self.log_tail()}")

    def wait_ready(self, timeout: float = 60) -> None:
        self.wait_api(timeout)

    def log_time_since_start(self, needle: str) -> float | None:
        """Seconds from this process's start to the first log line (since then) containing
        ``needle``, from the log's own timestamps (local time, ms); None if not there."""
        with open(self.log_path, "rb") as f:
            f.seek(self.log_offset)
            text = f.read().decode(errors="replace")
        for line in text.splitlines():
            if needle in line and line.startswith("["):
                try:
                    stamp = datetime.strptime(line[3:26], "%Y-%m-%d %H:%M:%S.%f")
                except ValueError:
                    continue
                return stamp.timestamp() - self.started_wall
        return None

    def restart(self) -> float:
        """Stop the hub (and its proxy) and start it again on the same database.

        Returns the seconds from the new process's start to its API answering."""
        self.stop()
        self.start(wait=False)
        return self.wait_api()


def plain_config(prefix: str) -> str:
    """Plain DockerSpawner, configured as an admin would to make this image start.

    - same image, same user-defined bridge network with ``use_internal_ip``, same
      limits, ``remove=True`` (HardenedSpawner always removes);
    - the image's ``USER 1000:100`` has no passwd entry and no writable HOME, and
      jupyterhub-singleuser must write its runtime files under HOME: ``HOME=/tmp``
      makes it start. A named volume for HOME would not help: a new volume comes
      up root-owned (docs/environment.md), which plain DockerSpawner cannot fix.
      So plain DockerSpawner here has no persistent workspace at all.
    """
    return textwrap.dedent(
        f"""
        c.JupyterHub.spawner_class = "docker"
        c.DockerSpawner.image = "{IMAGE}"
        c.DockerSpawner.name_template = "{prefix}-plain-{{username}}"
        c.DockerSpawner.network_name = "{prefix}-plain"
        c.DockerSpawner.use_internal_ip = True
        c.DockerSpawner.remove = True
        c.DockerSpawner.mem_limit = "{MEM_LIMIT}"
        c.DockerSpawner.cpu_limit = {CPU_LIMIT}
        c.DockerSpawner.environment = {{"HOME": "/tmp"}}
        """
    )


def spawn_timeouts(burst_users: int, seconds: int | None = None) -> str:
    """The same start and HTTP timeouts for both hubs: ``seconds``, or long enough for the last
    of a burst (the hub driver's 120 s and 60 s hold up to a burst of about 30 on this machine)."""
    seconds = seconds or max(120, 6 * burst_users)
    return f"\nc.Spawner.start_timeout = {seconds}\nc.Spawner.http_timeout = {seconds}\n"


def gpu_pool(prefix: str) -> list[str]:
    """Four fake device UUIDs (the engine's stub NVIDIA hook lets them start), named after
    the run, so that two runs on one engine never see each other's devices as held."""
    return [f"GPU-{prefix}-{i}" for i in range(4)]


def hardened_config(pool: list[str]) -> str:
    """HardenedSpawner with its defaults, the harness's names and a pool of fake GPUs."""
    return textwrap.dedent(
        f"""
        c.HardenedSpawner.mem_limit = "{MEM_LIMIT}"
        c.HardenedSpawner.cpu_limit = {CPU_LIMIT}
        c.HardenedSpawner.gpu_inventory = {pool!r}
        c.HardenedSpawner.gpu_default_per_user = 0
        c.HardenedSpawner.gpu_max_per_user = 1
        """
    )


@dataclass
class Bench:
    """The engine, the two hubs and the names a run uses."""

    settings: Settings
    client: docker.DockerClient = field(default_factory=docker.from_env)
    plain: BenchHub | None = None
    hardened: BenchHub | None = None

    @property
    def prefix(self) -> str:
        return self.settings.prefix

    @property
    def gpu_pool(self) -> list[str]:
        return gpu_pool(self.prefix)

    def user(self, tag: str, i: int | str = "") -> str:
        """Hub user names carry the prefix, so leftovers can be found by owner label."""
        return f"{self.prefix}-{tag}{i}"

    def start_hubs(self) -> None:
        self.ensure_network(f"{self.prefix}-plain")
        work = self.settings.workdir
        # a burst of N on 2 cores brings the last server up after ~N CPU-seconds: both hubs
        # wait long enough for it, as an admin expecting a whole class at once would set them
        timeouts = spawn_timeouts(self.settings.burst_users, self.settings.spawn_timeout)
        self.plain = BenchHub(
            workdir=work / "plain",
            extra_config=plain_config(self.prefix) + timeouts,
            uid_min=self.settings.uid_base,
            prefix=self.prefix,
        ).start(wait=False)
        self.hardened = BenchHub(
            workdir=work / "hardened",
            extra_config=hardened_config(self.gpu_pool) + timeouts,
            uid_min=self.settings.uid_base + 10000,
            prefix=self.prefix,
        ).start(wait=False)
        self.plain.wait_api()
        self.hardened.wait_api()

    def stop_hubs(self) -> None:
        for hub in (self.plain, self.hardened):
            if hub is not None:
                hub.stop()

    def ensure_network(self, name: str) -> None:
        if not self.client.networks.list(names=[name]):
            self.client.networks.create(name, driver="bridge")

    def cleanup(self) -> dict:
        return cleanup_engine(self.client, self.prefix)


def cleanup_engine(client: docker.DockerClient, prefix: str) -> dict:
    """Remove every container, volume and network whose name starts with ``prefix-``,
    and any workspace helper a killed hub left behind for this run's users."""
    mine = f"{prefix}-"
    removed = {"containers": 0, "volumes": 0, "networks": 0}
    helpers = client.containers.list(
        all=True, filters={"label": [f"{labels.ROLE}={labels.ROLE_HELPER}"]}
    )
    named = client.containers.list(all=True, filters={"name": prefix})
    for container in named + helpers:
        owner = (container.labels or {}).get(labels.OWNER, "")
        if container.name.startswith(mine) or owner.startswith(mine):
            try:
                container.remove(force=True)
                removed["containers"] += 1
            except docker.errors.NotFound:
                pass
    for volume in client.volumes.list(filters={"name": prefix}):
        if volume.name.startswith(mine):
            volume.remove(force=True)
            removed["volumes"] += 1
    for network in client.networks.list(names=[prefix]):
        if network.name.startswith(mine):
            network.remove()
            removed["networks"] += 1
    return removed


# --------------------------------------------------------------------- spawning


@dataclass
class Spawn:
    user: str
    ready: bool
    seconds: float
    message: str = ""
    #: (seconds since the request, progress message) of each progress event, as it arrived
    steps: list = field(default_factory=list)
    posted_at: float = 0.0  # time.time() of the request




def timed_spawn(hub: Hub, user: str, options: dict | None = None, timeout: float = 300) -> Spawn:
    """POST the spawn and follow the progress stream, as the spawn page does.

    ``seconds`` runs from the request to the ``ready`` event; each event's arrival is kept."""
    start, posted_at = time.monotonic(), time.time()
    steps: list = []
    try:
        r = hub.api("POST", f"/users/{user}/server", json=options or {})
        if r.status_code >= 400:
            return Spawn(user, False, time.monotonic() - start, f"HTTP {r.status_code}: {r.text[:300]}")
        for event in hub.progress_events(user, timeout):
            steps.append((round(time.monotonic() - start, 3), event.get("message", "")))
            if event.get("ready") or event.get("failed"):
                seconds = time.monotonic() - start
                return Spawn(user, bool(event.get("ready")), seconds,
                             "" if event.get("ready") else event.get("message", ""), steps,
                             posted_at)
        return Spawn(user, False, time.monotonic() - start, "progress stream ended early", steps)
    except Exception as e:
        return Spawn(user, False, time.monotonic() - start, f"{type(e).__name__}: {e}", steps)


#: what jupyter_server logs once it listens
LISTENING = "is running at:"


def anatomy(client: docker.DockerClient, hub: Hub, spawn: Spawn) -> dict | None:
    """Split a ready spawn in three, from the engine's and the server's own clocks:

    - ``to_container_start``: request -> the container's process started (the spawner's
      work: hub bookkeeping, workspace, GPUs, docker create, docker start);
    - ``server_start``: container started -> jupyter_server logs that it listens;
    - ``to_ready``: listening -> the ready event (noticing that it is up, proxy route).
    """
    try:
        state = hub.api("GET", f"/users/{spawn.user}").json()["servers"][""]["state"]
        container = client.api.inspect_container(state["object_id"])
        started = _epoch(container["State"]["StartedAt"])
        listening = None
        for line in client.api.logs(container["Id"], timestamps=True).decode(errors="replace").splitlines():
            if LISTENING in line:
                listening = _epoch(line.split(" ", 1)[0])
                break
    except Exception:
        return None
    ready = spawn.posted_at + spawn.seconds
    return {
        "to_container_start": started - spawn.posted_at,
        "server_start": (listening - started) if listening else None,
        "to_ready": (ready - listening) if listening else None,
    }


def _epoch(rfc3339: str) -> float:
    """Docker's nanosecond RFC 3339 UTC time -> seconds since the epoch."""
    head, _, frac = rfc3339.rstrip("Z").partition(".")
    stamp = datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc).timestamp()
    return stamp + (float("0." + frac[:9]) if frac else 0.0)


def anatomy_summary(parts: list[dict | None]) -> dict:
    """Median of each part over the spawns that have it."""
    out = {}
    for key in ("to_container_start", "server_start", "to_ready"):
        values = [p[key] for p in parts if p and p.get(key) is not None]
        out[key] = round(statistics.median(values), 3) if values else None
    return out


# --------------------------------------------------------------------- CPU accounting


def _process_cpu(pid: int) -> float:
    """User + system CPU seconds of one process so far (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pids_of(name: str) -> list[int]:
    out = subprocess.run(["pidof", name], capture_output=True, text=True, check=False).stdout
    return [int(p) for p in out.split()]


def _machine_busy() -> float:
    """CPU seconds the whole machine spent not idle (all cores), from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds used between `start` and `stop` by the hub process, the engine
    (dockerd, containerd and its shims) and the whole machine."""

    def __init__(self, hub_pid: int):
        self.hub_pid = hub_pid

    def _read(self) -> dict:
        engine = [*_pids_of("dockerd"), *_pids_of("containerd"), *_pids_of("containerd-shim-runc-v2"),
                  *_pids_of("containerd-shim")]
        return {
            "hub": _process_cpu(self.hub_pid),
            "engine_daemons": sum(_process_cpu(p) for p in _pids_of("dockerd") + _pids_of("containerd")),
            "engine_all": sum(_process_cpu(p) for p in engine),
            "machine": _machine_busy(),
        }

    def start(self) -> CpuMeter:
        self._before = self._read()
        return self

    def stop(self) -> dict:
        after = self._read()
        return {k: round(after[k] - self._before[k], 2) for k in after}


class HubProfile:
    """py-spy sampling one hub process while a measurement runs (without pausing it), and the
    frames it spent its CPU in: by self time (the frame on top) and by total time (anywhere
    on the stack). Idle threads (waiting in epoll) are not sampled."""

    RATE = 100  # samples a second

    def __init__(self, pid: int, path: Path):
        self.pid, self.path = pid, path

    def start(self) -> HubProfile:
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        self.proc = subprocess.Popen(
            [py_spy, "record", "--pid", str(self.pid), "--format", "raw", "--rate", str(self.RATE),
             "--nonblocking", "--output", str(self.path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return self

    def stop(self, top: int = 15) -> dict:
        self.proc.send_signal(signal.SIGINT)
        _, err = self.proc.communicate(timeout=60)
        if not self.path.exists():
            return {"error": err.decode(errors="replace")[-500:]}
        own: dict[str, int] = {}
        total: dict[str, int] = {}
        samples = 0
        for line in self.path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack:
                continue
            n = int(count)
            samples += n
            frames = stack.split(";")
            own[frames[-1]] = own.get(frames[-1], 0) + n
            for frame in set(frames):
                total[frame] = total.get(frame, 0) + n

        def ranked(counts):
            return [{"frame": f, "samples": c, "percent": round(100 * c / samples, 1)}
                    for f, c in sorted(counts.items(), key=lambda kv: -kv[1])[:top]]

        return {"samples": samples, "cpu_seconds_sampled": round(samples / self.RATE, 2),
                "self": ranked(own), "total": ranked(total), "collapsed_stacks": str(self.path)}


class LoopLag:
    """How long the hub's event loop stalls while a measurement runs: its own API (on the hub
    port, not through the proxy) asked every 50 ms; the slowest answer bounds the longest
    stall from above (an answer costs the hub about a millisecond)."""

    def __init__(self, hub_port: int):
        self.url = f"http://127.0.0.1:{hub_port}/hub/api/"
        self.times: list[float] = []
        self._stop = threading.Event()

    def start(self) -> LoopLag:
        self.thread = threading.Thread(target=self._probe, daemon=True)
        self.thread.start()
        return self

    def _probe(self) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                session.get(self.url, timeout=30)
            except requests.RequestException:
                pass
            self.times.append(time.monotonic() - started)
            self._stop.wait(0.05)

    def stop(self) -> dict:
        self._stop.set()
        self.thread.join(35)
        return {"probes": len(self.times), "max_ms": round(max(self.times, default=0) * 1000, 1),
                "p99_ms": round(percentile(self.times, 99) * 1000, 1) if self.times else None}


def cgroup_cpu_ns(container_id: str) -> int | None:
    """CPU nanoseconds a container used since it started (its cgroup; v1 or v2), or None."""
    for path in (f"/sys/fs/cgroup/cpuacct/docker/{container_id}/cpuacct.usage",
                 f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope/cpu.stat"):
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        if path.endswith("cpuacct.usage"):
            return int(text)
        return int(dict(line.split() for line in text.splitlines())["usage_usec"]) * 1000
    return None


def container_cpu_seconds(client: docker.DockerClient, container_ids: list[str]) -> float | None:
    """CPU seconds the containers used since they started, or None if no cgroup was found."""
    used = [ns for ns in map(cgroup_cpu_ns, container_ids) if ns is not None]
    return round(sum(used) / 1e9, 2) if used else None


def concurrent(fn, args_list: list[tuple]) -> list:
    """Run ``fn(*args)`` for every entry at once, each in its own thread, released together."""
    results: list = [None] * len(args_list)
    gate = threading.Barrier(len(args_list))

    def work(i, args):
        gate.wait()
        try:
            results[i] = fn(*args)
        except Exception as e:
            results[i] = e

    threads = [threading.Thread(target=work, args=(i, a)) for i, a in enumerate(args_list)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def stop_all(hub: Hub, users: list[str]) -> None:
    """Stop every listed user's server, all at once, and wait until they are gone."""
    for outcome in concurrent(lambda u: hub.stop_server(u, timeout=120), [(u,) for u in users]):
        if isinstance(outcome, Exception):
            raise outcome


# --------------------------------------------------------------------- numbers


def percentile(values: list[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary(values: list[float]) -> dict:
    return {
        "n": len(values),
        "median": statistics.median(values) if values else math.nan,
        "p95": percentile(values, 95),
        "min": min(values) if values else math.nan,
        "max": max(values) if values else math.nan,
        "values": [round(v, 4) for v in values],
    }


def machine(prefix: str) -> dict:
    client = docker.from_env()
    version = client.version()
    meminfo = Path("/proc/meminfo").read_text().split("\n")[0].split()
    load = os.getloadavg()
    return {
        "nproc": os.cpu_count(),
        "memory_gib": round(int(meminfo[1]) / 1024 / 1024, 1),
        "kernel": platform.release(),
        "docker_engine": version.get("Version"),
        "docker_api": version.get("ApiVersion"),
        "python": platform.python_version(),
        "loadavg_at_start": [round(x, 2) for x in load],
        "code": _code_version(),
        "other_containers_running": sum(
            1 for c in client.containers.list() if not c.name.startswith(f"{prefix}-")
        ),
    }


def _code_version() -> str:
    """The commit measured, and whether hardened_spawner/ differs from it."""
    def git(*args):
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    changed = git("status", "--short", "--", "hardened_spawner")
    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + (f" + uncommitted changes in {len(changed.splitlines())} files of hardened_spawner/"
                   if changed else "")


def publish(results: dict, table: str, out: Path | None, stem: str = "") -> Path:
    """Print a measurement's table, keep it in its results and write them as JSON to ``out``
    (default ``benchmarks/results/<stem><date>.json``, which git ignores)."""
    print(table)
    results["table"] = table
    out = out or ROOT / "benchmarks" / "results" / time.strftime(f"{stem}%Y%m%d-%H%M%S.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    log(f"results written to {out}")
    return out


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
