"""Server start under the profile: which piece of the hardening costs what (issue 22, part 2).

    .venv/bin/python benchmarks/server_start.py [--rounds 8] [--warmup 1] [--only VARIANT ...]
        [--env KEY=VALUE ...] [--logs] [--out PATH]

Why: measured through the hubs, a single-user server's own start (container start ->
jupyter_server listening) cost 10-15 % more under the hardened profile than under plain
DockerSpawner. This script takes the hub out of the picture: it creates the server
containers itself with docker-py's low-level `APIClient` and times each start alone.

The hardened spec comes from the project's own pure builders, exactly as
`HardenedSpawner.create_object` makes it: a `HardenedSpawner` built the way
`hubconfig.build_spawner` builds it (its defaults, `mem_limit = 2G`, `cpu_limit = nproc`)
gives `security_profile(facts)`; `core.decision.decide` and
`docker.container.build_server_spec` render it. Only the labels are swapped for one
``hsbench-start`` label, so that hubs and checks running on the same engine never take
these containers for managed servers (labels change nothing in how a container starts).
The workspace volume is prepared by the project's own helper (`helper_container_spec`),
which also writes the passwd/group files into an identity volume of this run; the server
binds them read-only from that volume's host path, as the spawner does.

Each variant changes one piece of `hardened` (see `VARIANTS`); `plain` is what plain
DockerSpawner creates with `benchmarks/common.py`'s plain hub config. There is no hub:
jupyterhub-singleuser asks its hub's API for the version before it listens (and exits
after five failed tries), so a small HTTP stub in this process answers ``/hub/api`` on
the run's network gateway (``X-JupyterHub-Version: 6.1.1``) and 200 to activity posts.
The environment is what JupyterHub 6's `Spawner.get_env` and DockerSpawner's add (no
command-line arguments: since JupyterHub 2 the address comes in `JUPYTERHUB_SERVICE_URL`).

Per start: wall seconds from the `start` call to the first 200 of
``GET http://<container ip>:8888/user/NAME/api`` (the readiness the spawner waits for,
polled every 50 ms from this process), the container's cgroup CPU-seconds at that moment
(robust to other load on the machine: the figure that matters on a saturated 2-core host),
and the server's own "is running at:" log time after the engine's `StartedAt`. Rounds
interleave the variants in an order shuffled per round (fixed seed); a warm-up round is not
recorded. Everything is on the run's own bridge network ``hsbench-start``; containers,
volumes and the network (all named ``hsbench-start...``) are removed at the end, and at the
start if a killed run left any. See benchmarks/README.md, "Server start under the profile".
"""

from __future__ import annotations

if __package__ in (None, ""):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import dataclasses
import json
import os
import random
import re
import shutil
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import docker
import docker.errors
import requests
from traitlets.config import Config

from benchmarks.common import (
    CPU_LIMIT,
    IMAGE,
    LISTENING,
    MEM_LIMIT,
    _epoch,
    cgroup_cpu_ns,
    log,
    machine,
    publish,
    summary,
)
from hardened_spawner._version import __version__
from hardened_spawner.core.decision import GpuGrant, decide
from hardened_spawner.core.identity import make_identity
from hardened_spawner.docker.container import DockerPlacement, WorkspaceMount, build_server_spec
from hardened_spawner.docker.workspace import (
    IDENTITY_MOUNT,
    helper_container_spec,
    identity_file_sources,
    interpret_helper_result,
)
from hardened_spawner.hubconfig import build_spawner

PREFIX = "hsbench-start"
NETWORK = PREFIX
WORKSPACE_VOLUME = f"{PREFIX}-workspace"
IDENTITY_VOLUME = f"{PREFIX}-identity"
LABEL = {PREFIX: "1"}
USER = "hsbench-start-user"  # the hub user name; also the POSIX name (posix_name keeps it)
UID = 870001
PORT = 8888
HUB_VERSION = "6.1.1"
POLL_S = 0.05
#: the proposed image fix, for the `+ed25519` variant: jupyter-sshd-proxy runs
#: `ssh-keygen -f ~/.ssh/jupyter_sshd_hostkey -q -N ''` when the key is missing (RSA 3072 by default)
KEYGEN_SHIM = """#!/bin/sh
case " $* " in *" -t "*) ;; *) set -- -t ed25519 "$@" ;; esac
exec /usr/bin/ssh-keygen "$@"
"""
KEYGEN_SHIM_TARGET = "/usr/local/bin/ssh-keygen"
START_TIMEOUT_S = 120.0

#: name -> what it changes (relative to `hardened`, except `plain`)
VARIANTS = {
    "plain": "plain DockerSpawner: image USER 1000:100, HOME=/tmp, mem 2G, cpu_quota=nproc; "
             "Docker defaults otherwise (writable root, default caps and seccomp, 64M shm, no init, "
             "no healthcheck, no pids limit, no tmpfs, no mounts)",
    "hardened": "the full spec HardenedSpawner creates (UID 870001, workspace volume as HOME, "
                "identity binds, read-only root, /tmp tmpfs 1G, shm 1G, caps dropped, "
                "no-new-privileges, default seccomp, init, pids 1024, healthcheck)",
    "hardened new workspace": "a new workspace volume for each start (prepared by the helper "
                              "before it, not timed): a user's first spawn",
    "hardened new workspace +ed25519": "a new workspace, and an ssh-keygen shim bound at "
                                       "/usr/local/bin/ssh-keygen that makes jupyter-sshd-proxy's host "
                                       "key ed25519 instead of RSA 3072 (the proposed image fix)",
    "hardened -read-only": "writable root filesystem",
    "hardened -tmpfs": "no /tmp tmpfs, /dev/shm back to Docker's 64M (root made writable too: "
                       "a read-only root without a writable /tmp cannot start the server)",
    "hardened -identity": "no /etc/passwd, /etc/group binds",
    "hardened -healthcheck": "no healthcheck",
    "hardened -environment": "only plain's environment: HOME=/tmp and the JupyterHub variables",
    "hardened -workspace": "no workspace mount; HOME (and every directory the environment "
                           "names) under /tmp, working dir /tmp",
    "hardened -init": "no docker-init (tini) as PID 1",
    "hardened -limits": "no pids limit",
    "hardened -caps": "Docker's default capabilities, no no-new-privileges",
    "hardened +unconfined": "seccomp=unconfined (the filter's own cost; plain keeps Docker's "
                            "default seccomp, so plain pays it too)",
}


# --------------------------------------------------------------------- the hub's API, stubbed


class _HubStub(BaseHTTPRequestHandler):
    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = json.dumps({"version": HUB_VERSION}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-JupyterHub-Version", HUB_VERSION)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args):
        pass


def start_hub_stub(address: str) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((address, 0), _HubStub)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# --------------------------------------------------------------------- the engine


def cleanup(client: docker.APIClient) -> dict:
    """Remove every container and volume named ``hsbench-start...`` and the run's network."""
    removed = {"containers": 0, "volumes": 0, "networks": 0}
    for c in client.containers(all=True, filters={"name": PREFIX}):
        if any(n.lstrip("/").startswith(PREFIX) for n in c["Names"]):
            try:
                client.remove_container(c["Id"], force=True, v=True)
                removed["containers"] += 1
            except docker.errors.NotFound:
                pass
    for net in client.networks(names=[NETWORK]):
        if net["Name"] == NETWORK:
            client.remove_network(net["Id"])
            removed["networks"] += 1
    for v in (client.volumes(filters={"name": PREFIX}) or {}).get("Volumes") or []:
        if v["Name"].startswith(PREFIX):
            client.remove_volume(v["Name"], force=True)
            removed["volumes"] += 1
    return removed


def run_helper(client: docker.APIClient, identity, volume: str = WORKSPACE_VOLUME) -> str:
    """Prepare the workspace (owned by the UID, 0700) and write passwd/group, with the
    project's own helper spec; its identity volume is this run's, not the shared one."""
    create, host = helper_container_spec(image=IMAGE, volume=volume, identity=identity,
                                         owner=USER, allow_adopt=False, version=__version__)
    create["labels"] = dict(LABEL)
    for mount in host["mounts"]:
        if mount["Target"] == IDENTITY_MOUNT:
            mount["Source"] = IDENTITY_VOLUME
    config = client.create_container_config(**create, host_config=client.create_host_config(**host))
    cid = client.create_container_from_config(config, f"{PREFIX}-helper")["Id"]
    try:
        client.start(cid)
        status = client.wait(cid, timeout=120)["StatusCode"]
        output = client.logs(cid).decode(errors="replace")
    finally:
        client.remove_container(cid, force=True)
    return interpret_helper_result(status, output, volume=volume, uid=identity.uid)


# --------------------------------------------------------------------- the specs


def hub_environment(api_url: str) -> dict[str, str]:
    """What JupyterHub 6's `Spawner.get_env` and DockerSpawner's add for this user."""
    prefix = f"/user/{USER}/"
    scopes = json.dumps([f"access:servers!server={USER}/", f"access:servers!user={USER}"])
    return {
        "JUPYTERHUB_API_TOKEN": "hsbench-start-token",
        "JPY_API_TOKEN": "hsbench-start-token",
        "JUPYTERHUB_CLIENT_ID": f"jupyterhub-user-{USER}",
        "JUPYTERHUB_COOKIE_HOST_PREFIX_ENABLED": "0",
        "JUPYTERHUB_HOST": "",
        "JUPYTERHUB_OAUTH_CALLBACK_URL": f"{prefix}oauth_callback",
        "JUPYTERHUB_OAUTH_SCOPES": scopes,
        "JUPYTERHUB_OAUTH_ACCESS_SCOPES": scopes,
        "JUPYTERHUB_OAUTH_CLIENT_ALLOWED_SCOPES": "[]",
        "JUPYTERHUB_USER": USER,
        "JUPYTERHUB_SERVER_NAME": "",
        "JUPYTERHUB_API_URL": api_url,
        "JUPYTERHUB_ACTIVITY_URL": f"{api_url}/users/{USER}/activity",
        "JUPYTERHUB_BASE_URL": "/",
        "JUPYTERHUB_SERVICE_PREFIX": prefix,
        "JUPYTERHUB_SERVICE_URL": f"http://0.0.0.0:{PORT}{prefix}",
        "JUPYTERHUB_PUBLIC_URL": "",
        "JUPYTERHUB_PUBLIC_HUB_URL": "",
        "MEM_LIMIT": str(2 * 1024**3),
        "CPU_LIMIT": str(CPU_LIMIT),
        "JUPYTER_IMAGE_SPEC": IMAGE,
    }


@dataclasses.dataclass
class Builder:
    """Everything a variant's spec is made from, gathered once."""

    client: docker.APIClient
    spawner: object
    profile: object
    identity: object
    identity_files: dict
    command: list
    hub_env: dict
    extra_env: dict = dataclasses.field(default_factory=dict)  # --env, added to every variant
    keygen_shim: str = ""  # host path of KEYGEN_SHIM

    def hardened(self, variant: str, workspace: str = WORKSPACE_VOLUME) -> tuple[dict, dict]:
        """``create_container_config`` and ``create_host_config`` arguments of a hardened variant."""
        profile, identity = self.profile, self.identity
        if variant == "hardened -healthcheck":
            profile = dataclasses.replace(profile, healthcheck=None)
        if variant == "hardened -limits":
            profile = dataclasses.replace(profile, pids_limit=None)
        if variant == "hardened -workspace":
            identity = dataclasses.replace(identity, home="/tmp")
        decision = decide(
            owner=USER, server_name="", image=IMAGE, command=self.command, port=PORT,
            identity=identity, profile=profile, workspace=workspace, gpus=GpuGrant(),
            hub_environment=self.hub_env,
        )
        if variant == "hardened -environment":
            decision = dataclasses.replace(decision, environment={**self.hub_env, "HOME": "/tmp"})
        placement = DockerPlacement(
            workspace=WorkspaceMount(workspace, identity.home),
            identity_files={} if variant == "hardened -identity" else self.identity_files,
            network_name=NETWORK,
            version=__version__,
            extra_binds=self.spawner.volume_binds,
        )
        spec = build_server_spec(decision, placement, {}, {})
        create, host = dict(spec.create), dict(spec.host)
        create["labels"] = dict(LABEL)
        create["environment"].update(self.extra_env)
        if variant == "hardened -read-only":
            host["read_only"] = False
        elif variant == "hardened -tmpfs":
            host["tmpfs"], host["read_only"] = {}, False
            host.pop("shm_size")
        elif variant == "hardened -workspace":
            host["mounts"] = []
        elif variant == "hardened -init":
            host["init"] = False
        elif variant == "hardened -caps":
            host.pop("cap_drop")
            host["security_opt"] = [o for o in host["security_opt"] if not o.startswith("no-new-privileges")]
        elif variant == "hardened new workspace +ed25519":
            host["binds"] = {**host["binds"], self.keygen_shim: {"bind": KEYGEN_SHIM_TARGET, "mode": "ro"}}
        elif variant == "hardened +unconfined":
            host["security_opt"] = [*host["security_opt"], "seccomp=unconfined"]
        return create, host

    def plain(self) -> tuple[dict, dict]:
        """What `DockerSpawner.create_object` makes with common.py's plain hub config."""
        create = {
            "image": IMAGE,
            "command": list(self.command),
            "environment": {**self.hub_env, "HOME": "/tmp", **self.extra_env},
            "volumes": [],
            "ports": {f"{PORT}/tcp": None},
            "labels": dict(LABEL),
        }
        host = {
            "binds": {},
            "mem_limit": MEM_LIMIT,
            "cpu_period": 100_000,
            "cpu_quota": int(CPU_LIMIT * 100_000),
            "network_mode": NETWORK,
        }
        return create, host

    def config(self, variant: str, workspace: str = WORKSPACE_VOLUME) -> dict:
        create, host = self.plain() if variant == "plain" else self.hardened(variant, workspace)
        return self.client.create_container_config(**create, host_config=self.client.create_host_config(**host))


def make_builder(client: docker.APIClient, api_url: str) -> Builder:
    config = Config()
    config.HardenedSpawner.mem_limit = MEM_LIMIT
    config.HardenedSpawner.cpu_limit = CPU_LIMIT
    config.HardenedSpawner.image = IMAGE
    spawner = build_spawner(config)
    profile = spawner.security_profile({"cpus": os.cpu_count(), "apparmor": False})
    identity = make_identity(USER, UID, spawner.home_template)
    mountpoint = client.inspect_volume(IDENTITY_VOLUME)["Mountpoint"]
    command = (spawner.cmd or client.inspect_image(IMAGE)["Config"]["Cmd"]) + spawner.get_args()
    return Builder(client, spawner, profile, identity, identity_file_sources(mountpoint, UID),
                   command, hub_environment(api_url))


# --------------------------------------------------------------------- one start


def slug(variant: str) -> str:
    """A container-name-safe form: ``hardened -read-only`` -> ``hardened-no-read-only``."""
    return re.sub(r"[^a-z0-9]+", "-", variant.replace(" -", " no-").replace(" +", " plus-")).strip("-")


def one_start(builder: Builder, variant: str, n: int, keep_logs: bool = False) -> dict:
    client = builder.client
    name = f"{PREFIX}-{slug(variant)}-{n}"
    workspace = WORKSPACE_VOLUME
    if variant.startswith("hardened new workspace"):
        workspace = f"{name}-ws"
        client.create_volume(workspace, labels=dict(LABEL))
        run_helper(client, builder.identity, workspace)
    config = builder.config(variant, workspace)
    t = time.perf_counter()
    cid = client.create_container_from_config(config, name)["Id"]
    record: dict = {"variant": variant, "create_s": time.perf_counter() - t}
    try:
        t0 = time.perf_counter()
        client.start(cid)
        record["start_call_s"] = time.perf_counter() - t0
        ip = client.inspect_container(cid)["NetworkSettings"]["Networks"][NETWORK]["IPAddress"]
        url = f"http://{ip}:{PORT}/user/{USER}/api"
        session = requests.Session()
        deadline, next_check = t0 + START_TIMEOUT_S, t0 + 2
        while True:
            try:
                if session.get(url, timeout=(0.5, 5)).status_code == 200:
                    wall = time.perf_counter() - t0
                    cpu = cgroup_cpu_ns(cid)
                    break
            except requests.RequestException:
                pass
            now = time.perf_counter()
            if now > deadline:
                raise TimeoutError(f"no 200 from {url} within {START_TIMEOUT_S}s")
            if now > next_check:  # every 2 s: does it still run?
                next_check = now + 2
                state = client.inspect_container(cid)["State"]
                if not state["Running"]:
                    raise RuntimeError(f"exited {state['ExitCode']} before answering")
            time.sleep(POLL_S)
        record.update(wall_s=wall, cpu_s=cpu / 1e9 if cpu is not None else None)
        inspect = client.inspect_container(cid)
        started = _epoch(inspect["State"]["StartedAt"])
        logs = client.logs(cid, timestamps=True).decode(errors="replace")
        marks: dict[str, float] = {}
        for line in logs.splitlines():
            for mark, needle in (("lsp", "jupyter_lsp | extension was successfully loaded"),
                                 ("proxy", "jupyter_server_proxy | extension was successfully loaded"),
                                 ("listening", LISTENING)):
                if needle in line and mark not in marks:
                    marks[mark] = _epoch(line.split(" ", 1)[0])
        if "listening" in marks:
            record["listening_s"] = marks["listening"] - started
        if "lsp" in marks and "proxy" in marks:
            # loading jupyter-server-proxy runs jupyter-sshd-proxy's setup, which generates the
            # SSH host key (ssh-keygen, RSA 3072) when ~/.ssh/jupyter_sshd_hostkey is missing
            record["proxy_load_s"] = marks["proxy"] - marks["lsp"]
        if keep_logs:
            record["logs"] = logs
    except Exception as e:
        tail = client.logs(cid, tail=15).decode(errors="replace")
        record["error"] = f"{type(e).__name__}: {e}\n{tail}"
    finally:
        client.remove_container(cid, force=True, v=True)
        if workspace != WORKSPACE_VOLUME:
            client.remove_volume(workspace, force=True)
    return record


# --------------------------------------------------------------------- the run


def summarise(records: list[dict], variants: list[str]) -> dict:
    out: dict = {}
    for v in variants:
        ok = [r for r in records if r["variant"] == v and "error" not in r]
        out[v] = {
            "what": VARIANTS[v],
            "failures": sum(1 for r in records if r["variant"] == v and "error" in r),
            **{key: summary([r[key] for r in ok if r.get(key) is not None])
               for key in ("wall_s", "cpu_s", "listening_s", "proxy_load_s", "create_s", "start_call_s")},
        }
    by_round = {(r["round"], r["variant"]): r for r in records if "error" not in r}
    for ref in ("plain", "hardened"):
        if ref in out and out[ref]["cpu_s"]["n"]:
            for v in out:
                if out[v]["cpu_s"]["n"]:
                    out[v][f"cpu_ratio_to_{ref}"] = out[v]["cpu_s"]["median"] / out[ref]["cpu_s"]["median"]
                    out[v][f"wall_ratio_to_{ref}"] = out[v]["wall_s"]["median"] / out[ref]["wall_s"]["median"]
                    # the same ratio taken within each round, then the median: load that drifts
                    # from round to round cancels out
                    paired = [by_round[(rnd, v)]["cpu_s"] / by_round[(rnd, ref)]["cpu_s"]
                              for (rnd, var) in by_round if var == v and (rnd, ref) in by_round]
                    out[v][f"cpu_paired_ratio_to_{ref}"] = summary(paired)
    return out


def render(r: dict) -> str:
    m = r["machine"]
    lines = [
        f"server start under the profile, {r['date']}",
        f"machine: {m['nproc']} CPUs, {m['memory_gib']} GiB, kernel {m['kernel']}, Docker engine "
        f"{m['docker_engine']} (API {m['docker_api']}); code {m['code']}",
        f"load average at start {m['loadavg_at_start']}, at end {r['loadavg_at_end']}; other running "
        f"containers at start: {m['other_containers_running']}; {r['rounds']} rounds (+{r['warmup']} warm-up); "
        f"took {r['duration_seconds']} s",
        "",
        f"{'':35}{'n':>3}  {'wall s':>6} {'p95':>5}  {'CPU-s':>6} {'p95':>5}  {'listen':>6} {'proxy':>5}  "
        f"{'CPU/plain':>9} {'CPU/hard':>8}  {'wall/plain':>10} {'wall/hard':>9}  {'paired CPU/plain, /hard':>23}",
    ]

    def ratio(s, key):
        return f"{s[key]:.3f}" if key in s else "-"

    def paired(s, ref):
        p = s.get(f"cpu_paired_ratio_to_{ref}")
        return f"{p['median']:.3f}" if p and p["n"] else "-"

    for v, s in r["variants"].items():
        w, c, listen, proxy = s["wall_s"], s["cpu_s"], s["listening_s"], s["proxy_load_s"]
        if not c["n"]:
            lines.append(f"   {v:32}  FAILED {s['failures']}x")
            continue
        lines.append(
            f"   {v:32}{c['n']:>3}  {w['median']:>6.2f} {w['p95']:>5.2f}  {c['median']:>6.3f} {c['p95']:>5.2f}  "
            f"{listen['median'] if listen['n'] else float('nan'):>6.2f} "
            f"{proxy['median'] if proxy['n'] else float('nan'):>5.2f}  "
            f"{ratio(s, 'cpu_ratio_to_plain'):>9} {ratio(s, 'cpu_ratio_to_hardened'):>8}  "
            f"{ratio(s, 'wall_ratio_to_plain'):>10} {ratio(s, 'wall_ratio_to_hardened'):>9}  "
            f"{paired(s, 'plain'):>11} {paired(s, 'hardened'):>11}"
            + (f"  ({s['failures']} failed)" if s["failures"] else "")
        )
    lines.append("   (medians; wall: start call -> first 200 of /user/NAME/api; CPU-s: the container's cgroup "
                 "then; listen: StartedAt -> 'is running at:' log line;\n    proxy: loading jupyter-server-proxy "
                 "(jupyter-sshd-proxy's host key is made then if missing); paired: the median of the ratios "
                 "within each round)")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=8, help="measured rounds, each starts every variant once (default 8)")
    p.add_argument("--warmup", type=int, default=1, help="unrecorded rounds first (default 1)")
    p.add_argument("--only", nargs="+", choices=list(VARIANTS), metavar="VARIANT",
                   help=f"variants to run (default all): {', '.join(repr(v) for v in VARIANTS)}")
    p.add_argument("--seed", type=int, default=22, help="seed of the per-round order (default 22)")
    p.add_argument("--pause", type=float, default=1.0, help="seconds of quiet between starts (default 1)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="add to every variant's environment, for diagnosis (e.g. PYTHONPROFILEIMPORTTIME=1)")
    p.add_argument("--logs", action="store_true", help="keep every server's log in the JSON")
    p.add_argument("--out", type=Path, help="JSON results (default benchmarks/results/server-start-<date>.json)")
    args = p.parse_args(argv)
    variants = args.only or list(VARIANTS)

    started = time.monotonic()
    client = docker.APIClient(version="auto")
    left = cleanup(client)
    if any(left.values()):
        log(f"removed what an earlier run left: {left}")
    results: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine(PREFIX),
                     "rounds": args.rounds, "warmup": args.warmup, "seed": args.seed, "uid": UID,
                     "image": {"name": IMAGE, "id": client.inspect_image(IMAGE)["Id"]}}
    stub = None
    records: list[dict] = []
    tmp = tempfile.mkdtemp(prefix=f"{PREFIX}-")
    try:
        net = client.create_network(NETWORK, driver="bridge", labels=dict(LABEL))
        gateway = client.inspect_network(net["Id"])["IPAM"]["Config"][0]["Gateway"]
        stub = start_hub_stub(gateway)
        api_url = f"http://{gateway}:{stub.server_address[1]}/hub/api"
        client.create_volume(WORKSPACE_VOLUME, labels=dict(LABEL))
        client.create_volume(IDENTITY_VOLUME, labels=dict(LABEL))
        builder = make_builder(client, api_url)
        builder.extra_env = dict(item.split("=", 1) for item in args.env)
        builder.keygen_shim = os.path.join(tmp, "ssh-keygen")
        Path(builder.keygen_shim).write_text(KEYGEN_SHIM)
        os.chmod(builder.keygen_shim, 0o755)
        os.chmod(tmp, 0o755)
        results["extra_env"] = builder.extra_env
        log(f"workspace {WORKSPACE_VOLUME} for UID {UID}: {run_helper(client, builder.identity)}; hub stub at {api_url}")
        results["hub_stub"] = api_url
        results["specs"] = {v: builder.config(v) for v in variants}
        order = random.Random(args.seed)
        n = 0
        for rnd in range(-args.warmup, args.rounds):
            this = list(variants)
            order.shuffle(this)
            for v in this:
                time.sleep(args.pause)
                n += 1
                rec = one_start(builder, v, n, args.logs)
                rec.update(round=rnd, load=round(os.getloadavg()[0], 2))
                if rnd >= 0:
                    records.append(rec)
                if "error" in rec:
                    log(f"round {rnd}: {v}: FAILED {rec['error']}")
                else:
                    log(f"round {rnd}{' (warm-up)' if rnd < 0 else ''}: {v}: wall {rec['wall_s']:.2f} s, "
                        f"CPU {rec['cpu_s']:.3f} s, listening {rec.get('listening_s', float('nan')):.2f} s")
    finally:
        if stub is not None:
            stub.shutdown()
        results["cleanup"] = cleanup(client)
        shutil.rmtree(tmp, ignore_errors=True)
    results["starts"] = records
    results["variants"] = summarise(records, variants)
    results["duration_seconds"] = round(time.monotonic() - started, 1)
    results["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]

    publish(results, render(results), args.out, "server-start-")
    return 0 if all("error" not in r for r in records) else 2


if __name__ == "__main__":
    raise SystemExit(main())
