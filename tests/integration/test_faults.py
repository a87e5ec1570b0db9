"""Issue 15: the hub never crashes and never locks anyone out.

Each test breaks something for real (the hub SIGKILLed, the engine stopped or out of
reach, the hub's database started over, rules made for another hub) and asserts what
the user and the admin then see. Every module's hub here has names, networks and a UID
range of its own, so nothing touches the other modules' servers.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import docker
import pytest
import requests

from hardened_spawner import labels
from hubdriver import TEST_PREFIX, Hub, Kernel, docker0_address

from .hubtools import UID_BASE, firewall, remove_named

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DEVICES = [f"GPU-00000000-0000-0000-0000-0000000000f{i}" for i in range(4)]


def names(tag: str) -> str:
    """Containers, workspaces and the users' network of one test, by name."""
    prefix = f"{TEST_PREFIX}-{tag}"
    return f"""
c.HardenedSpawner.name_template = "{prefix}-{{username}}--{{servername}}"
c.HardenedSpawner.workspace_volume_name = "{prefix}-workspace-{{username}}"
c.HardenedSpawner.network_name = "{prefix}-users"
c.HardenedSpawner.mem_limit = "1G"
"""


def fatal_errors(hub: Hub) -> list[str]:
    text = hub.log_path.read_text(errors="replace")
    return [line for line in text.splitlines() if "Fatal Python error" in line or "Segmentation fault" in line]


def run_as_user(hub: Hub, user: str, code: str) -> str:
    kernel = Kernel(hub, user)
    try:
        return kernel.run(code).strip()
    finally:
        kernel.close()


def running_hub(workdir: Path, config: str, uid_min: int) -> Hub:
    return Hub(workdir=workdir, extra_config=config, uid_min=uid_min).start()


@pytest.fixture
def cleanup(engine):
    """Hubs and engine objects of one test, removed at its end (even when it fails)."""
    hubs: list[Hub] = []
    prefixes: list[str] = []
    yield hubs, prefixes
    for hub in hubs:
        hub.stop()
    for prefix in prefixes:
        remove_named(prefix)


# --- UIDs survive a database that starts over ----------------------------------------


def test_a_fresh_database_lets_new_users_in_and_returning_users_keep_their_files(
        engine, tmp_path, cleanup):
    hubs, prefixes = cleanup
    prefixes.append(f"{TEST_PREFIX}-fresh")
    config, uid_min = names("fresh"), UID_BASE + 900_000
    old = running_hub(tmp_path / "old", config, uid_min)
    hubs.append(old)
    before = {}
    for user in ("fd-alice", "fd-bob"):
        old.create_user(user)
        assert old.spawn(user).ready
        before[user] = int(run_as_user(old, user, f"open('mine.txt', 'w').write('{user}'); import os; print(os.getuid())"))
        old.stop_server(user)
    assert before == {"fd-alice": uid_min + 1, "fd-bob": uid_min + 2}
    old.stop()

    # a new database: ids start over at 1, so the new user's derived UID is fd-alice's
    new = running_hub(tmp_path / "new", config, uid_min)
    hubs.append(new)
    new.create_user("fd-newbie")
    first = new.spawn("fd-newbie")
    assert first.ready, first.message
    newbie_uid = int(run_as_user(new, "fd-newbie", "import os; print(os.getuid())"))
    assert newbie_uid == uid_min + 3  # the first UID that no one's files carry
    assert f"fd-newbie gets UID {uid_min + 3}: {uid_min + 1} is held by another user's files" in new.log_path.read_text()

    for user in ("fd-bob", "fd-alice"):  # fd-bob's new id is 2 (his own UID), fd-alice's 3
        new.create_user(user)
        assert new.spawn(user).ready
        seen = run_as_user(new, user, "import os; print(os.getuid(), open('mine.txt').read())")
        assert seen == f"{before[user]} {user}"

    uids = {}
    for volume in engine.volumes.list(filters={"name": f"{TEST_PREFIX}-fresh-workspace"}):
        uids[volume.attrs["Labels"][labels.OWNER]] = int(volume.attrs["Labels"][labels.UID])
    assert uids == {"fd-alice": uid_min + 1, "fd-bob": uid_min + 2, "fd-newbie": uid_min + 3}
    assert fatal_errors(new) == []


def test_concurrent_new_users_never_share_a_uid(engine, tmp_path, cleanup):
    hubs, prefixes = cleanup
    prefixes.append(f"{TEST_PREFIX}-race")
    uid_min = UID_BASE + 910_000
    hub = running_hub(tmp_path / "hub", names("race"), uid_min)
    hubs.append(hub)
    users = [f"rc-{i}" for i in range(6)]
    for user in users:
        hub.create_user(user)
    # earlier workspaces on the engine hold three of the UIDs these users would derive
    for i in (1, 3, 4):
        engine.volumes.create(
            name=f"{TEST_PREFIX}-race-workspace-old{i}",
            labels={labels.MANAGED: "true", labels.ROLE: labels.ROLE_WORKSPACE,
                    labels.OWNER: f"old{i}", labels.UID: str(uid_min + i)},
        )
    with concurrent.futures.ThreadPoolExecutor(len(users)) as pool:
        results = list(pool.map(hub.spawn, users))
    assert all(r.ready for r in results), [r.message for r in results]
    uids = [int(c.attrs["Config"]["Labels"][labels.UID])
            for c in engine.containers.list(filters={"name": f"{TEST_PREFIX}-race-rc-"})]
    assert len(uids) == len(users) == len(set(uids))
    assert not set(uids) & {uid_min + 1, uid_min + 3, uid_min + 4}


def test_a_full_uid_range_is_refused_with_the_setting_to_change(engine, tmp_path, cleanup):
    hubs, prefixes = cleanup
    prefixes.append(f"{TEST_PREFIX}-full")
    uid_min = UID_BASE + 920_000
    hub = running_hub(tmp_path / "hub", names("full") + f"c.HardenedSpawner.uid_max = {uid_min + 1}\n", uid_min)
    hubs.append(hub)
    for i in range(2):
        engine.volumes.create(
            name=f"{TEST_PREFIX}-full-workspace-old{i}",
            labels={labels.MANAGED: "true", labels.OWNER: f"old{i}", labels.UID: str(uid_min + i)},
        )
    hub.create_user("fl-carol")
    refused = hub.spawn("fl-carol")
    assert not refused.ready
    assert refused.message == (
        f"Spawn failed: No UID is free: all 2 UIDs of HardenedSpawner.uid_min..uid_max "
        f"({uid_min}-{uid_min + 1}) are held by workspaces on this engine. Ask your hub admin to "
        "raise HardenedSpawner.uid_max (or remove workspaces no one needs)."
    )


# --- the hub SIGKILLed ---------------------------------------------------------------


def test_the_hub_survives_ten_sigkills_with_spawns_fired_as_it_comes_back(engine, tmp_path, cleanup):
    hubs, prefixes = cleanup
    prefixes.append(f"{TEST_PREFIX}-kill")
    hub = running_hub(tmp_path / "hub", names("kill"), UID_BASE + 930_000)
    hubs.append(hub)
    for user in ("kl-steady1", "kl-steady2"):
        hub.create_user(user)
        assert hub.spawn(user).ready
    results = []
    for round_ in range(10):
        assert hub.proc.poll() is None, f"the hub exited by itself:\n{hub.log_tail()}"
        hub.kill()
        assert hub.proc.returncode == -signal.SIGKILL
        hub.start(wait=False)
        deadline = time.monotonic() + 60
        while True:  # the moment the API answers
            try:
                if requests.get(f"{hub.url}/hub/api/", timeout=1).ok:
                    break
            except requests.ConnectionError:
                pass
            assert hub.proc.poll() is None, f"the hub exited with {hub.proc.returncode}:\n{hub.log_tail()}"
            assert time.monotonic() < deadline, "the hub did not come back"
            time.sleep(0.05)
        user = f"kl-{round_}"
        hub.create_user(user)
        results.append(hub.spawn(user))
        if round_ > 0:
            hub.stop_server(f"kl-{round_ - 1}")
    assert [r.ready for r in results] == [True] * 10, [r.message for r in results]
    assert hub.proc.poll() is None
    assert fatal_errors(hub) == []
    for user in ("kl-steady1", "kl-steady2"):  # servers running through it all still answer
        assert run_as_user(hub, user, "print(1 + 1)") == "2"


def test_a_hub_killed_in_a_burst_of_gpu_spawns_leaves_nothing_behind(engine, tmp_path, cleanup):
    hubs, prefixes = cleanup
    prefixes.append(f"{TEST_PREFIX}-burst")
    gpus = f"""
c.HardenedSpawner.gpu_inventory = {DEVICES!r}
c.HardenedSpawner.gpu_default_per_user = 1
"""
    hub = running_hub(tmp_path / "hub", names("burst") + gpus, UID_BASE + 940_000)
    hubs.append(hub)
    users = [f"bu-{i}" for i in range(4)]
    for user in users:
        hub.create_user(user)
    for user in users:  # fire all four and kill the hub in the middle of them
        assert hub.api("POST", f"/users/{user}/server").status_code in (201, 202)
    time.sleep(1.0)
    hub.kill()
    time.sleep(3)  # let what the engine was asked to do finish

    hub.start()
    # the restarted hub checks each server its database had pending: adopted or stopped
    deadline = time.monotonic() + 120
    while True:
        servers = {u: hub.api("GET", f"/users/{u}").json()["servers"].get("") for u in users}
        if all(s is None or (s["ready"] and not s["pending"]) for s in servers.values()):
            break
        assert time.monotonic() < deadline, servers
        time.sleep(0.5)
    running = {u for u, s in servers.items() if s}
    hub.create_user("bu-after")
    after = hub.spawn("bu-after")  # the first spawn rebuilds the GPU table from the engine
    for container in engine.containers.list(filters={"name": f"{TEST_PREFIX}-burst-"}):
        container_labels = container.attrs["Config"]["Labels"]
        owner = container_labels[labels.OWNER]
        # every running server holding GPUs is one the hub knows
        assert owner == "bu-after" or owner in running, (owner, running)
    # no workspace helper left behind (one the killed hub ran is removed when the hub starts again)
    helpers = [h for h in engine.containers.list(all=True, filters={"label": f"{labels.ROLE}={labels.ROLE_HELPER}"})
               if any(m.get("Name", "").startswith(f"{TEST_PREFIX}-burst-") for m in h.attrs["Mounts"])]
    assert [h.name for h in helpers] == []
    held = [d for c in engine.containers.list(filters={"name": f"{TEST_PREFIX}-burst-"})
            for d in c.attrs["Config"]["Labels"][labels.GPUS].split(",") if d]
    assert len(held) == len(set(held))  # no device twice
    if len(running) == len(DEVICES):
        assert not after.ready and "GPUs are busy" in after.message
    else:
        assert after.ready, after.message
    removed = [e for e in hub.audit_events() if e["event"] == "orphan-removed"]
    assert {e["user"] for e in removed} <= set(users) - set(running)
    # every user of the burst can start (again), with their workspace theirs and intact
    for user in users:
        if user not in running:
            result = hub.spawn(user)
            if not result.ready:
                assert "GPUs are busy" in result.message
                continue
        uid, mode = run_as_user(hub, user, "import os; s = os.stat(os.path.expanduser('~')); "
                                           "print(os.getuid() == s.st_uid, oct(s.st_mode & 0o777))").split()
        assert (uid, mode) == ("True", "0o700")
    assert fatal_errors(hub) == []


# --- the engine out of reach, or restarted ---------------------------------------------


class EngineDoor:
    """A socket the hub uses as its engine: socat forwards it to the real one while open."""

    def __init__(self, path: Path):
        self.path = path
        self.proc: subprocess.Popen | None = None

    def open(self) -> None:
        self.path.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            ["socat", f"UNIX-LISTEN:{self.path},fork,mode=600", "UNIX-CONNECT:/var/run/docker.sock"],
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while not self.path.exists():
            assert time.monotonic() < deadline, "socat did not listen"
            time.sleep(0.05)

    def close(self) -> None:
        """As an engine that goes away: every connection through the door is cut."""
        if self.proc:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None
        self.path.unlink(missing_ok=True)


def test_an_engine_out_of_reach_at_start_and_mid_spawn_is_said_and_retried(engine, tmp_path, cleanup):
    assert shutil.which("socat"), "socat is missing: scripts/setup.sh --gpu-stub installs it"
    hubs, prefixes = cleanup
    prefixes.append(f"{TEST_PREFIX}-door")
    door = EngineDoor(tmp_path / "engine.sock")
    config = names("door") + f"""
c.HardenedSpawner.client_kwargs = {{"base_url": "unix://{door.path}"}}
# servers take 4 s to listen: time to close the door while the hub waits for one
c.HardenedSpawner.cmd = ["sh", "-c", "sleep 4; exec jupyterhub-singleuser \\"$@\\"", "--"]
"""
    hub = running_hub(tmp_path / "hub", config, UID_BASE + 950_000)
    hubs.append(hub)
    try:
        expected_log = f"Cannot reach the Docker engine at unix://{door.path}: "
        deadline = time.monotonic() + 30
        while expected_log not in hub.log_path.read_text():
            assert time.monotonic() < deadline, hub.log_tail()
            time.sleep(0.2)
        assert "Spawns are refused with a clear message until it answers" in hub.log_path.read_text()

        hub.create_user("dr-dana")
        refused = hub.spawn("dr-dana")
        assert not refused.ready
        assert refused.message == (
            "Spawn failed: The Docker engine that runs the servers is not answering, so your "
            "server could not be started. Nothing of yours was changed. Try again in a minute; if "
            "it keeps happening, tell your hub admin (the hub log has the details)."
        )
        door.open()
        assert hub.spawn("dr-dana").ready  # the next spawn asks again, and gets in

        hub.create_user("dr-eli")
        r = hub.api("POST", "/users/dr-eli/server")
        assert r.status_code in (201, 202)
        for event in hub.progress_events("dr-eli", timeout=60):
            if event.get("message") == "Waiting for your server to answer":
                door.close()
        last = event
        assert last.get("failed"), last
        assert "The Docker engine that runs the servers is not answering" in last["message"]
        assert hub.proc.poll() is None
        door.open()
        again = hub.spawn("dr-eli")
        assert again.ready, again.message
        assert run_as_user(hub, "dr-eli", "print('back')") == "back"
        refusals = [e for e in hub.audit_events() if e["event"] == "spawn-refused"]
        assert [e["user"] for e in refusals] == ["dr-dana", "dr-eli"]
    finally:
        door.close()
        hub.stop()
    assert fatal_errors(hub) == []


def stop_engine() -> None:
    """Stop dockerd; its containers die with it."""
    pid = int(Path("/var/run/docker.pid").read_text())
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while Path(f"/proc/{pid}").exists():
        assert time.monotonic() < deadline, "dockerd did not stop"
        time.sleep(0.2)


def start_engine() -> None:
    """Start dockerd again as setup.sh does (with the GPU stub on its PATH)."""
    done = subprocess.run([str(REPO / "scripts" / "setup.sh"), "--gpu-stub"], capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    docker.from_env().ping()


def test_the_engine_restarted_under_running_servers(engine, tmp_path, cleanup):
    hubs, prefixes = cleanup
    prefixes.append(f"{TEST_PREFIX}-eng")
    config = names("eng") + f"""
c.HardenedSpawner.gpu_inventory = {DEVICES[:1]!r}
c.HardenedSpawner.gpu_default_per_user = 1
c.Spawner.poll_interval = 2
"""
    hub = running_hub(tmp_path / "hub", config, UID_BASE + 960_000)
    hubs.append(hub)
    hub.create_user("en-fay")
    assert hub.spawn("en-fay").ready
    stop_engine()
    try:
        # the engine is gone: the hub still answers at once, and says what is wrong
        t0 = time.monotonic()
        assert hub.api("GET", "/users/en-fay").ok
        assert time.monotonic() - t0 < 5
        hub.create_user("en-gil")
        refused = hub.spawn("en-gil")
        assert not refused.ready and "The Docker engine that runs the servers is not answering" in refused.message
    finally:
        start_engine()
    deadline = time.monotonic() + 60
    while hub.api("GET", "/users/en-fay").json()["servers"]:
        assert time.monotonic() < deadline, "the hub did not notice the dead server"
        time.sleep(0.5)
    died = [e for e in hub.audit_events() if e["event"] == "server-died"]
    assert [e["user"] for e in died] == ["en-fay"] and died[0]["devices"] == DEVICES[:1]
    released = [e for e in hub.audit_events() if e["event"] == "gpus-released"]
    assert released and released[-1]["devices"] == DEVICES[:1]
    # the one GPU is free again: the user who could not start now gets it
    result = hub.spawn("en-gil")
    assert result.ready, result.message
    assert run_as_user(hub, "en-gil", "import os; print(os.environ['NVIDIA_VISIBLE_DEVICES'])") == DEVICES[0]
    assert hub.proc.poll() is None and fatal_errors(hub) == []


# --- rules made for another hub ---------------------------------------------------------


def test_rules_that_block_this_hubs_api_refuse_the_spawn_at_once(engine, tmp_path, cleanup):
    hubs, prefixes = cleanup
    prefix = f"{TEST_PREFIX}-blk"
    prefixes.append(prefix)
    network = f"{prefix}-users"
    hub = Hub(workdir=tmp_path / "hub", extra_config=names("blk"), uid_min=UID_BASE + 970_000)
    hubs.append(hub)
    other_port = hub.hub_port + 1 if hub.hub_port < 65000 else hub.hub_port - 1
    applied = firewall("apply", "--network", network, "--hub-ip", docker0_address(), "--hub-port", str(other_port))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    try:
        hub.start()
        hub.create_user("bl-hana")
        t0 = time.monotonic()
        refused = hub.spawn("bl-hana")
        took = time.monotonic() - t0
        assert not refused.ready
        assert took < 15, took  # no wait for the server's timeout
        assert refused.message.startswith(
            "Spawn failed: Your server was not started: the network rules in place on this server "
            "stop servers from reaching this hub, so it could never finish starting. The hub admin "
            "must update them (Fix: as root on the Docker host, run: hardened-spawner firewall apply "
            f"--network {network} --hub-ip {docker0_address()} --hub-port {hub.hub_port}"
        ), refused.message
        log = hub.log_path.read_text()
        assert "the isolation rules block this hub's API" in log
        assert "were made for another hub" in log
        assert not engine.containers.list(all=True, filters={"name": f"{prefix}-bl-hana"})
        # the admin runs the command the page gave: the next spawn works
        fixed = firewall("apply", "--network", network, "--hub-ip", docker0_address(), "--hub-port", str(hub.hub_port))
        assert fixed.returncode == 0, fixed.stdout + fixed.stderr
        assert hub.spawn("bl-hana").ready
    finally:
        firewall("remove", "--network", network)


# --- two hubs on one engine ----------------------------------------------------------------


def test_a_hub_never_takes_the_place_of_another_hubs_running_server(engine, tmp_path, cleanup):
    hubs, prefixes = cleanup
    prefix = f"{TEST_PREFIX}-two"
    prefixes.append(prefix)
    first = running_hub(tmp_path / "first", names("two"), UID_BASE + 980_000)
    second = running_hub(tmp_path / "second", names("two"), UID_BASE + 985_000)  # same names, left as they were
    hubs += [first, second]
    for hub in (first, second):
        hub.create_user("tw-ivy")
    assert first.spawn("tw-ivy").ready
    [server] = engine.containers.list(filters={"label": f"{labels.OWNER}=tw-ivy"})
    refused = second.spawn("tw-ivy")
    assert not refused.ready
    assert refused.message == (
        f"Spawn failed: A server named {server.name} already runs on this engine for another hub "
        "(another hub database), so yours cannot take its place. Two hubs on one engine need names "
        "of their own: the hub admin must set HardenedSpawner.name_template, "
        "HardenedSpawner.workspace_volume_name and HardenedSpawner.network_name to values no other "
        f"hub uses (or, if that hub is gone for good, remove it: docker rm -f {server.name})."
    )
    assert engine.containers.get(server.name).id == server.id  # untouched, still the first's
    assert run_as_user(first, "tw-ivy", "print('still mine')") == "still mine"
