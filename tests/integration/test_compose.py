"""The compose deployment end to end: the hub in its own hardened container.

One scenario, as an admin and a user would live it: build the images from the
local bases and start the stack (`scripts/compose.sh up -d`), log in through the
proxy with a browser-like session, spawn a server, run a cell; a second user's
server is out of reach of the first user's kernel while the hub API answers (the
firewall keeper's rules, with the hub in a container at its fixed address); restart
the hub container while the server runs (the server, its kernel and its owner
survive), audit the hub's own container and the network isolation with
`hardened-spawner check`, flush the rules as a reboot would and watch the keeper put
them back, and `down` the stack, which leaves the users' workspaces (and servers).

Other test sessions use this engine at the same time: everything here is named
`hscompose...` (compose project, users' network and its rules, server containers,
workspace volumes), published on port 18000, with UIDs from 700000; nothing else is
touched.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import docker
import pytest
import requests
import websocket

from hubdriver import Kernel

from .hubtools import REJECTED, Browser, SshClient, firewall, reach

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PROJECT = "hscompose"
NETWORK = f"{PROJECT}-users"
PORT = 18000
BASE = f"http://127.0.0.1:{PORT}"
UID_MIN = 700000
USER = "alice"
OTHER = "bob"
SERVER_CONTAINER = f"{PROJECT}-{USER}"
WORKSPACE = f"{PROJECT}-workspace-{USER}"
HUB_ADDRESS_LABEL = "org.jupyter.hardened-spawner.hub-address"
WATCH_INTERVAL = 5  # the keeper's check interval here (30 s by default)
HUB_DATA = f"{PROJECT}_hub-data"
LOCAL_BASE = "hardened-spawner-base:bookworm"
HUB_IMAGE = "hardened-spawner-hub:latest"
PASSWORD = secrets.token_urlsafe(12)


def compose_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        COMPOSE_PROJECT_NAME=PROJECT,
        HARDENED_NETWORK=NETWORK,
        HUB_PORT=str(PORT),
        HUB_IMAGE=HUB_IMAGE,
        HUB_BASE_IMAGE=LOCAL_BASE,
        BASE_IMAGE=LOCAL_BASE,
        DOCKER_GID=str(os.stat("/var/run/docker.sock").st_gid),
        HUB_DEMO_PASSWORD=PASSWORD,
        HUB_ADMIN_USERS=f"{PROJECT}-admin",
        HARDENED_UID_MIN=str(UID_MIN),
        HARDENED_WORKSPACE_VOLUME=f"{PROJECT}-workspace-{{username}}",
        HARDENED_NAME_TEMPLATE=f"{PROJECT}-{{username}}",
        FIREWALL_WATCH_INTERVAL=str(WATCH_INTERVAL),
    )
    return env


def run(cmd: list[str], timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    started = time.monotonic()
    result = subprocess.run(  # no terminal, as from cron or a script
        cmd, cwd=REPO, env=compose_env(), capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    print(f"$ {' '.join(cmd)}  ({time.monotonic() - started:.1f} s, rc {result.returncode})")
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def compose(*args: str, **kwargs) -> subprocess.CompletedProcess:
    """docker-compose through scripts/compose.sh, which sets what it reads from the host."""
    return run([str(REPO / "scripts" / "compose.sh"), *args], **kwargs)


def hub_logs() -> str:
    return compose("logs", "--no-color", "--tail=60", "hub", check=False).stdout


def remove_own_objects(client: docker.DockerClient) -> None:
    """This test's objects only: its stack, servers, workspaces, users' network and its rules."""
    if client.networks.list(names=[NETWORK]):
        compose("down", "--volumes", "--remove-orphans", "--timeout", "10", check=False)
    else:  # no hub address to read: any will do for `down`
        run(["env", "HUB_USERS_ADDRESS=127.0.0.1", str(REPO / "scripts" / "compose.sh"), "down",
             "--volumes", "--remove-orphans", "--timeout", "10"], check=False)
    for user in (USER, OTHER):
        for container in client.containers.list(all=True, filters={"name": f"^{PROJECT}-{user}$"}):
            container.remove(force=True)
    firewall("remove", "--network", NETWORK)
    for name in (WORKSPACE, f"{PROJECT}-workspace-{OTHER}", HUB_DATA):
        try:
            client.volumes.get(name).remove(force=True)
        except docker.errors.NotFound:
            pass
    for network in client.networks.list(names=[NETWORK]):
        if network.name == NETWORK:
            network.remove()


@pytest.fixture(scope="module")
def client():
    try:
        engine = docker.from_env()
        engine.ping()
    except Exception as e:  # a missing engine is a failure, never a skip
        pytest.fail(f"No Docker engine answers ({e}). Run scripts/setup.sh first.")
    if not shutil.which("docker-compose"):
        pytest.fail("docker-compose is missing. Run scripts/setup.sh first (apt-get install docker-compose).")
    remove_own_objects(engine)
    yield engine
    print("hub log (shown when the test fails):\n" + hub_logs())
    remove_own_objects(engine)


def wait_for(what: str, check, timeout: float = 60, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (requests.RequestException, OSError) as e:
            last = e
        time.sleep(interval)
    pytest.fail(f"{what} within {timeout} s (last error: {last})\nhub log:\n{hub_logs()}")


def iptables_rules() -> str:
    return subprocess.run(["iptables", "-S"], capture_output=True, text=True, check=True).stdout


def hub_answers() -> bool:
    return requests.get(f"{BASE}/hub/health", timeout=3).status_code == 200


class AttachedKernel(Kernel):
    """A new connection to a kernel that already runs, as a reloaded JupyterLab tab makes."""

    def __init__(self, base: str, user: str, token: str, kernel_id: str):
        self.base = f"{base}/user/{user}"
        self.token = token
        self.headers = {"Authorization": f"token {token}"}
        self.id = kernel_id
        ws_url = f"ws{self.base[4:]}/api/kernels/{kernel_id}/channels"
        self.ws = websocket.create_connection(ws_url, header=[f"Authorization: token {token}"], timeout=60)


def address_on(container, network: str) -> str:
    container.reload()
    return container.attrs["NetworkSettings"]["Networks"][network]["IPAddress"]


# Who runs the kernel, in which container (Docker's own bind mounts name the container's id).
CELL = (
    "import os, re; cid = re.search(r'/containers/([0-9a-f]{64})/', open('/proc/self/mountinfo').read())[1]; "
    "print(os.getuid(), os.getgid(), cid, os.environ['HOME'])"
)


def test_compose_stack_keeps_servers_across_hub_restarts(client, tmp_path):
    timings = {}

    # --- prepare (content-hash reuse: a no-op when nothing changed) and start
    started = time.monotonic()
    compose("up", "-d", timeout=1200)
    wait_for("the hub answers through the proxy", hub_answers, timeout=120)
    timings["prepare and up"] = time.monotonic() - started
    for image in (HUB_IMAGE, "hardened-spawner-firewall:latest"):
        assert client.images.get(image).labels.get("org.jupyter.hardened-spawner.build-hash")
    hub = client.containers.get(f"{PROJECT}_hub_1")
    keeper = client.containers.get(f"{PROJECT}_firewall_1")

    # --- the users' network and the firewall keeper
    users_network = client.networks.get(NETWORK).attrs
    hub_address = users_network["Labels"][HUB_ADDRESS_LABEL]
    assert users_network["Options"]["com.docker.network.bridge.enable_icc"] == "false"
    assert address_on(hub, NETWORK) == hub_address  # the fixed address the rules name
    keeper_host = keeper.attrs["HostConfig"]
    assert keeper_host["NetworkMode"] == "host" and keeper.attrs["Config"]["User"] == "0:0"
    assert keeper_host["CapDrop"] == ["ALL"] and sorted(keeper_host["CapAdd"]) == ["NET_ADMIN", "NET_RAW"]
    assert keeper_host["ReadonlyRootfs"] is True and "no-new-privileges:true" in keeper_host["SecurityOpt"]
    assert keeper_host["RestartPolicy"]["Name"] == "unless-stopped"  # back after a reboot
    bridge = users_network["Options"]["com.docker.network.bridge.name"]
    assert f"-N HS-FWD-{bridge}" in iptables_rules()
    # the hub checked the rules itself when it started: no iptables there, so by the probe
    wait_for("the hub finds the isolation in place", lambda: (
        f"Network isolation of {NETWORK} is in place (checked by probe)" in hub_logs()), timeout=60)

    # --- the hub container itself is hardened
    host = hub.attrs["HostConfig"]
    assert hub.attrs["Config"]["User"] == "10000:10000"
    assert hub.exec_run("id -u").output.decode().strip() == "10000"
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert host["Privileged"] is False
    assert host["GroupAdd"] == [compose_env()["DOCKER_GID"]]
    assert host["Memory"] == 1024**3 and host["NanoCpus"] == 2 * 10**9 and host["PidsLimit"] == 512
    assert host["RestartPolicy"]["Name"] == "unless-stopped"
    assert "/tmp" in host["Tmpfs"]
    assert set(hub.attrs["NetworkSettings"]["Networks"]) == {NETWORK, f"{PROJECT}_default"}
    assert hub.exec_run("touch /srv/x").exit_code != 0, "the hub's root filesystem is writable"

    # --- a person logs in through the proxy and starts a server
    browser = Browser(BASE)
    home = browser.login(USER, PASSWORD)
    assert home.status_code == 200 and home.url == f"{BASE}/hub/home", (home.status_code, home.url)
    assert Browser(BASE).login(USER, "not-the-password").status_code == 403

    started = time.monotonic()
    r = browser.api("POST", f"/users/{USER}/server", json={})
    assert r.status_code in (201, 202), (r.status_code, r.text)
    events = browser.spawn_progress(USER)
    assert events and events[-1].get("ready"), f"spawn failed: {events}\n{hub_logs()}"
    timings["spawn"] = time.monotonic() - started

    # JupyterLab opens for the logged-in person (OAuth through the proxy to the hub at `hub`)
    lab = browser.session.get(f"{BASE}/user/{USER}/lab", timeout=60)
    assert lab.status_code == 200 and "JupyterLab" in lab.text, (lab.status_code, lab.url)

    r = browser.api("POST", f"/users/{USER}/tokens", json={"note": "compose test", "expires_in": 3600})
    assert r.status_code == 201, (r.status_code, r.text)
    token = r.json()["token"]

    server = client.containers.get(SERVER_CONTAINER)
    assert server.labels["org.jupyter.hardened-spawner.owner"] == USER
    uid = int(server.labels["org.jupyter.hardened-spawner.uid"])
    assert uid >= UID_MIN

    # a second user's server, on the same network
    other = Browser(BASE)
    assert other.login(OTHER, PASSWORD).status_code == 200
    r = other.api("POST", f"/users/{OTHER}/server", json={})
    assert r.status_code in (201, 202), (r.status_code, r.text)
    events = other.spawn_progress(OTHER)
    assert events and events[-1].get("ready"), f"spawn failed: {events}\n{hub_logs()}"
    bob_address = address_on(client.containers.get(f"{PROJECT}-{OTHER}"), NETWORK)
    gateway = users_network["IPAM"]["Config"][0]["Gateway"]

    kernel = Kernel(SimpleNamespace(url=BASE), USER, token)
    try:
        before = kernel.run(CELL + "; x = 6 * 7").split()
        assert before == [str(uid), str(uid), server.id, f"/home/{USER}"], before
        # SSH through the compose stack's proxy, into the same server, as the same UID
        key = SshClient.make_key(tmp_path / "key")
        kernel.run(f"import os; os.makedirs(os.path.expanduser('~/.ssh'), 0o700, exist_ok=True); "
                   f"open(os.path.expanduser('~/.ssh/authorized_keys'), 'w').write({key.with_suffix('.pub').read_text()!r}); "
                   "os.chmod(os.path.expanduser('~/.ssh/authorized_keys'), 0o600)")
        done = SshClient(tmp_path, BASE, USER, token, key).ssh("id -u; cat /proc/self/status | grep -E '^(CapEff|NoNewPrivs)'")
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == [str(uid), "CapEff:", "0000000000000000", "NoNewPrivs:", "1"], done.stdout
        # From alice's kernel: bob's server on any port, and the host, are refused by a rule;
        # the hub API answers.
        seen = reach(kernel, [(bob_address, 8888), (bob_address, 22), (gateway, PORT), (hub_address, 8081)])
        assert seen == {
            f"{bob_address}:8888": REJECTED,  # bob's server
            f"{bob_address}:22": REJECTED,  # any other port of his
            f"{gateway}:{PORT}": REJECTED,  # the host: here, its published hub port
            f"{hub_address}:8081": "open",  # the hub API
        }, seen
    finally:
        kernel.ws.close()

    # --- restart the hub while the server runs
    started = time.monotonic()
    compose("restart", "hub")
    wait_for("the hub answers again after its restart", hub_answers, timeout=90)
    timings["hub restart"] = time.monotonic() - started

    def server_routed():
        r = requests.get(f"{BASE}/user/{USER}/api/status", headers={"Authorization": f"token {token}"}, timeout=5)
        return r.status_code == 200

    wait_for("the server is routed through the new proxy", server_routed, timeout=60)
    timings["server routed again"] = time.monotonic() - started

    # the same container, never restarted, still the user's
    server.reload()
    assert server.status == "running" and server.attrs["RestartCount"] == 0
    assert client.containers.get(SERVER_CONTAINER).id == server.id
    # the hub knows it is alice's, and her browser session survived (cookie secret on the volume)
    model = browser.api("GET", f"/users/{USER}").json()
    assert model["name"] == USER and model["servers"][""]["ready"] is True, model
    assert browser.session.get(f"{BASE}/hub/home", timeout=10).url == f"{BASE}/hub/home"
    # the same kernel process, reached again through the proxy: its variable is still there
    kernel = AttachedKernel(BASE, USER, token, kernel.id)
    try:
        after = kernel.run(CELL + "; print(x)").split()
        assert after == before + ["42"], after
    finally:
        kernel.close()

    # --- the hub's own container against the servers' policy
    check = compose(
        "exec", "-T", "hub", "hardened-spawner", "check", "--json",
        "--config", "/srv/jupyterhub/jupyterhub_config.py", hub.name, check=False,
    )
    reports = json.loads(check.stdout)["containers"]
    print("hardened-spawner check on the hub container:", json.dumps(reports[0]["violations"], indent=1))
    findings = {v["check"] for v in reports[0]["violations"]}
    # Only the Docker API access the hub exists for (the socket, reached through its group),
    # the port people reach it on, and the restart policy that brings it back after a reboot.
    assert findings == {"docker-socket", "group-add", "published-ports", "restart-policy"}, reports
    assert check.returncode == 1
    # and the server it started passes it whole
    server_check = compose(
        "exec", "-T", "hub", "hardened-spawner", "check",
        "--config", "/srv/jupyterhub/jupyterhub_config.py", SERVER_CONTAINER, check=False,
    )
    assert server_check.returncode == 0, server_check.stdout
    # the network isolation, checked from the hub container as the hub does
    network_check = compose(
        "exec", "-T", "hub", "hardened-spawner", "check", "--json",
        "--config", "/srv/jupyterhub/jupyterhub_config.py", check=False,
    )
    isolation = json.loads(network_check.stdout)["network_isolation"]
    assert isolation == {"network": NETWORK, "checked_by": "probe", "ok": True, "problems": [],
                         "fix": ""}, isolation

    # --- the rules go (a reboot, a flush): the keeper puts them back
    removed = firewall("remove", "--network", NETWORK)
    assert removed.returncode == 0, removed.stderr
    # what the command took away, as it says; reading iptables afterwards would race the
    # keeper, which may already have put them back (it checks every WATCH_INTERVAL s)
    assert f"removed the rules for {NETWORK} (bridge {bridge}; 1 table(s) changed)" in removed.stdout, removed.stdout
    started = time.monotonic()
    wait_for("the keeper puts the rules back", lambda: f"-N HS-FWD-{bridge}" in iptables_rules(),
             timeout=WATCH_INTERVAL * 4)
    timings["rules back"] = time.monotonic() - started
    wait_for("the keeper reports healthy again",
             lambda: client.containers.get(keeper.id).attrs["State"]["Health"]["Status"] == "healthy",
             timeout=30)
    assert "the rules are not in place" in keeper.logs().decode()
    wait_for(
        "Docker reports the hub healthy",
        lambda: client.containers.get(hub.id).attrs["State"]["Health"]["Status"] == "healthy",
        timeout=60,
    )

    # --- down: the stack goes, the users' workspaces (and running servers) stay
    started = time.monotonic()
    compose("down", "--timeout", "20")
    timings["down"] = time.monotonic() - started
    assert not client.containers.list(all=True, filters={"name": f"^{PROJECT}_hub_1$"})
    assert client.volumes.get(WORKSPACE).attrs["Labels"]["org.jupyter.hardened-spawner.owner"] == USER
    assert client.volumes.get(HUB_DATA)  # the hub's database and cookie secret, for the next `up`
    assert client.containers.get(SERVER_CONTAINER).status == "running"

    # --- the README's audit command, as a script runs it (no -T, no terminal)
    up_again = compose("up", "-d", timeout=600)
    wait_for("the hub answers again", lambda: requests.get(f"{BASE}/hub/api/", timeout=3).ok, timeout=120)
    audit = compose("exec", "hub", "hardened-spawner", "check", "--config",
                    "/srv/jupyterhub/jupyterhub_config.py", SERVER_CONTAINER, check=False)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "the input device is not a TTY" not in audit.stderr
    compose("down", "--timeout", "20")
    assert up_again.returncode == 0

    # --- taking the stack away for good: servers first, then the rules
    refused = compose("firewall-remove", check=False)
    assert refused.returncode != 0
    assert "users' servers still run on" in refused.stderr and "scripts/compose.sh stop-servers" in refused.stderr
    assert f"-N HS-FWD-{bridge}" in iptables_rules()
    compose("stop-servers")
    assert not client.containers.list(all=True, filters={"name": f"^{SERVER_CONTAINER}$"})
    assert client.volumes.get(WORKSPACE)  # the workspace stays
    compose("firewall-remove")
    assert f"-N HS-FWD-{bridge}" not in iptables_rules()

    print("timings:", ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))


def test_setup_never_builds_a_stand_in_for_a_missing_base_image(client):
    """A BASE_IMAGE the admin named (a CUDA PyTorch base) that is not there is pulled, or
    setup stops saying what to pull: never a Debian stand-in tagged with that name."""
    missing, image = f"{PROJECT}-missing/pytorch:0-cuda", f"{PROJECT}-never-built:latest"
    done = subprocess.run(
        [str(REPO / "scripts" / "setup.sh")], cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "BASE_IMAGE": missing, "SINGLEUSER_IMAGE": image}, stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 1, done.stdout[-2000:]
    assert (
        f"setup.sh: error: the base image {missing} is not on this engine and cannot be pulled. "
        f"Pull it where a registry answers (docker pull {missing}), or docker load it from a "
        "saved copy, then run this again; or unset BASE_IMAGE for the CPU-only Debian base "
        f"{LOCAL_BASE}." in done.stderr
    ), done.stderr
    for name in (missing, image):
        with pytest.raises(docker.errors.ImageNotFound):
            client.images.get(name)
