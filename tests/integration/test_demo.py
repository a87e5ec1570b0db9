"""The README's first command: `scripts/demo.sh` brings up a hub with HardenedSpawner on
the host, the network isolation rules in place, and a person can log in, start a server
and run code in it.

Its own names, so it can run next to other tests: port 18800, network `hsdemo-users`,
containers and volumes `hsdemo-*`, UIDs from 720000. The hub API takes port 8081, as
in the demo (no other test hub uses it).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import docker
import pytest
import requests

from hubdriver import Kernel, docker0_address

from .hubtools import REJECTED, Browser, firewall, reach

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PREFIX = "hsdemo"
NETWORK = f"{PREFIX}-users"
PORT = 18800
BASE = f"http://127.0.0.1:{PORT}"


def remove_own_objects(engine: docker.DockerClient) -> None:
    for container in engine.containers.list(all=True, filters={"name": f"^{PREFIX}-"}):
        container.remove(force=True)
    for volume in engine.volumes.list(filters={"name": f"{PREFIX}-workspace-"}):
        volume.remove(force=True)
    firewall("remove", "--network", NETWORK)
    for network in engine.networks.list(names=[NETWORK]):
        if network.name == NETWORK:
            network.remove()


@pytest.fixture
def demo(engine, tmp_path):
    remove_own_objects(engine)
    env = dict(
        os.environ,
        HUB_BIND_URL=BASE,
        HUB_DATA_DIR=str(tmp_path),
        HARDENED_NETWORK=NETWORK,
        HARDENED_UID_MIN="720000",
        HARDENED_WORKSPACE_VOLUME=f"{PREFIX}-workspace-{{username}}",
        HARDENED_NAME_TEMPLATE=f"{PREFIX}-{{username}}",
        HARDENED_FIREWALL_REQUIRED="true",
        PYTHONFAULTHANDLER="1",  # a crash of the interpreter leaves its threads' stacks in the log
    )
    log = tmp_path / "demo.log"
    with open(log, "w") as out:
        # as `scripts/demo.sh &` starts it from a script: with SIGINT ignored, which its
        # services would inherit (then the hub waits 30 s for each on Ctrl-C)
        process = subprocess.Popen([str(REPO / "scripts" / "demo.sh")], env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        yield SimpleNamespace(process=process, log=log, data_dir=tmp_path)
    finally:
        stop_demo(process, tmp_path)
        print("demo log:\n" + log.read_text()[-4000:])
        remove_own_objects(engine)


def stop_demo(process: subprocess.Popen, data_dir: Path) -> float | None:
    """Ctrl-C, as a person stops the demo; the proxy too, should the hub have died without it.
    How long the hub took to stop, or None when it had to be killed."""
    took = None
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        started = time.monotonic()
        try:
            process.wait(timeout=90)
            took = time.monotonic() - started
            print(f"the demo stopped {took:.1f} s after Ctrl-C")
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    pid_file = data_dir / "jupyterhub-proxy.pid"
    if pid_file.exists():
        try:
            os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
        except (ValueError, ProcessLookupError):
            pass
    return took


def wait_for(what: str, check, demo, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if demo.process.poll() is not None:
            pytest.fail(f"scripts/demo.sh exited ({demo.process.returncode}) before {what}:\n{demo.log.read_text()[-3000:]}")
        try:
            if check():
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    pytest.fail(f"{what} within {timeout} s:\n{demo.log.read_text()[-3000:]}")


def test_the_demo_hub_serves_isolated_servers(demo, engine):
    started = time.monotonic()
    wait_for("the demo hub answers", lambda: requests.get(f"{BASE}/hub/health", timeout=3).ok, demo)
    print(f"demo hub answered after {time.monotonic() - started:.1f} s")
    log = demo.log.read_text()
    assert f"applied the rules for {NETWORK} (bridge " in log, log
    wait_for("the hub finds the rules", lambda: (
        f"Network isolation of {NETWORK} is in place (checked by iptables)" in demo.log.read_text()), demo)

    people = {}
    for user in ("alice", "bob"):
        people[user] = browser = Browser(BASE)
        assert browser.login(user, "any password").url == f"{BASE}/hub/home"
        assert browser.api("POST", f"/users/{user}/server", json={}).status_code in (201, 202)
        events = browser.spawn_progress(user)
        assert events[-1].get("ready"), events
    token = people["alice"].api("POST", "/users/alice/tokens", json={"expires_in": 600}).json()["token"]
    bob = engine.containers.get(f"{PREFIX}-bob").attrs["NetworkSettings"]["Networks"][NETWORK]["IPAddress"]
    hub = docker0_address()

    kernel = Kernel(SimpleNamespace(url=BASE), "alice", token)
    try:
        assert kernel.run("import torch, os; print(torch.ones(2).sum().item(), os.getuid() >= 720000)").split() == [
            "2.0", "True"]
        assert reach(kernel, [(bob, 8888), (hub, 8081), (hub, PORT)]) == {
            f"{bob}:8888": REJECTED,  # bob's server
            f"{hub}:8081": "open",  # the hub API, on the host
            f"{hub}:{PORT}": REJECTED,  # anything else on the host
        }
    finally:
        kernel.close()
    for user, browser in people.items():
        assert browser.api("DELETE", f"/users/{user}/server").status_code in (202, 204)

    # an admin logging in through the form lands on the home page, and no server starts
    admin = Browser(BASE)
    page = admin.session.get(f"{BASE}/hub/login", timeout=10)
    xsrf = re.search(r'name="_xsrf"\s+value="([^"]+)"', page.text).group(1)
    landed = admin.session.post(f"{BASE}/hub/login", data={"username": "admin", "password": "any", "_xsrf": xsrf},
                                timeout=30)
    assert landed.url == f"{BASE}/hub/home", landed.url
    assert 'href="/hub/admin"' in landed.text
    assert admin.session.get(f"{BASE}/hub/admin", timeout=10).ok
    assert admin.api("GET", "/users/admin").json()["servers"] == {}

    # Ctrl-C: the hub stops its services (the idle culler and the GPU culler) and itself at
    # once; a service deaf to SIGINT would hold it for JupyterHub's 30 s interrupt_timeout
    assert {"idle-culler", "gpu-culler"} <= set(admin.api("GET", "/services").json())
    took = stop_demo(demo.process, demo.data_dir)
    assert took is not None and took < 15, (took, demo.log.read_text()[-3000:])
    assert "Cleaning up 2 services..." in demo.log.read_text()
