"""Issue 6: network isolation, seen from users' kernels on the real engine with real hubs.

Every target is the test's own: bob's server (a listener in his kernel), a container on
another Docker network inside 10.0.0.0/8, and a network namespace on the host holding a
"public" address from a documentation range (198.51.100.0/24) and its host side. Nothing
is sent anywhere else; the link-local block is checked as a rule, not probed.

The rules are installed with the real command (`hardened-spawner firewall`, as root) and
match only this run's bridge, so other test runs on the engine are untouched.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import threading
import time

import docker
import pytest
import requests

from hardened_spawner.docker.isolation.docker_network import bridge_name
from hardened_spawner.docker.isolation.rules import TAG, forward_chain, input_chain
from hubdriver import SINGLEUSER_IMAGE, TEST_PREFIX, Kernel, docker0_address

from .hubtools import REJECTED, firewall, reach

pytestmark = pytest.mark.integration

#: A users' network of this module's own (hubs here set network_name, name_template and
#: workspace_volume_name), so the other modules' servers on `<prefix>-users` are never touched.
NETWORK = f"{TEST_PREFIX}-net"
BRIDGE = bridge_name(NETWORK)
NAMES = f"{TEST_PREFIX}-net"  # containers and workspaces
HUB_CONFIG = f"""
c.HardenedSpawner.network_name = "{NETWORK}"
c.HardenedSpawner.name_template = "{NAMES}-{{username}}--{{servername}}"
c.HardenedSpawner.workspace_volume_name = "{NAMES}-workspace-{{username}}"
c.HardenedSpawner.firewall_check_interval = 0
"""
OURS = f"{TAG}:{BRIDGE}:"

TARGET_NETWORK = f"{TEST_PREFIX}-target"  # another Docker network, inside 10.0.0.0/8
TARGET_SUBNET = "10.213.50.0/24"
TARGET_IP, TARGET_PORT = "10.213.50.10", 7007  # a fixed address in that subnet

NETNS = f"{TEST_PREFIX}-pub"  # a namespace behind a veth: a "public" address we own
VETH_HOST, VETH_NS = f"{TEST_PREFIX[:8]}-pub0", f"{TEST_PREFIX[:8]}-pub1"
HOST_SIDE, PUBLIC_IP = "198.51.100.1", "198.51.100.2"
PUBLIC_PORT, HOST_PORT = 7009, 7010

LISTENER = textwrap.dedent(
    """
    import socket, sys, threading
    def serve(family, address, port, reply):
        s = socket.socket(family)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((address, port))
        s.listen()
        while True:
            c, _ = s.accept()
            c.sendall(reply)
            c.close()
    """
)

def hub_api_status(kernel) -> int:
    return int(kernel.run(textwrap.dedent(
        """
        import os, urllib.request
        with urllib.request.urlopen(os.environ["JUPYTERHUB_API_URL"], timeout=10) as r:
            print(r.status)
        """
    )).strip())


def iptables_rules(family: int = 4) -> list[str]:
    out = subprocess.run([{4: "iptables", 6: "ip6tables"}[family], "-S"], capture_output=True,
                         text=True, check=True).stdout
    return out.splitlines()


def untouched(rules: list[str], family: int) -> list[str]:
    """The chains we jump from, as other parties left them: DOCKER-USER and INPUT (and
    FORWARD for IPv6, which the engine leaves alone), without rules of other runs'
    bridges. IPv4 FORWARD is the engine's, and other runs change it as we go."""
    chains = ("DOCKER-USER", "INPUT") + (("FORWARD",) if family == 6 else ())
    return [r for r in rules if r.split()[0] in ("-A", "-N") and r.split()[1] in chains
            and (TAG not in r or OURS in r)]


def wait_for_log(hub, text: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = hub.log_path.read_text(errors="replace")
        if text in log:
            return log
        time.sleep(0.3)
    raise AssertionError(f"{text!r} not in the hub log:\n{hub.log_tail()}")


def server_addresses(engine, user: str) -> tuple[str, str]:
    container = engine.containers.get(f"{NAMES}-{user}--")
    settings = container.attrs["NetworkSettings"]["Networks"][NETWORK]
    return settings["IPAddress"], settings["GlobalIPv6Address"]


def _run(*argv):
    subprocess.run(list(argv), check=True, capture_output=True)


# --- the world the tests own ------------------------------------------------------------


@pytest.fixture(scope="module")
def world(engine):
    """The users' network (IPv4 and IPv6, as the spawner would make it), a target on
    another Docker network, a namespace with a public address, and a host-side listener.
    Removes all of it, and the rules, at the end."""
    firewall("remove", "--bridge", BRIDGE)  # left over from an interrupted run
    before = {4: untouched(iptables_rules(4), 4), 6: untouched(iptables_rules(6), 6)}
    def remove_ours():
        for c in engine.containers.list(all=True, filters={"name": NAMES}):
            c.remove(force=True)
        for c in engine.containers.list(all=True, filters={"name": f"{TEST_PREFIX}-target"}):
            c.remove(force=True)
        for name in (NETWORK, TARGET_NETWORK):
            for n in engine.networks.list(names=[name]):
                if n.name == name:
                    n.remove()

    remove_ours()
    client = engine.api
    # IPv6 on: Docker's enable_icc=false does not cover IPv6, so the rules must
    client.create_network(
        NETWORK, driver="bridge", enable_ipv6=True,
        options={"com.docker.network.bridge.name": BRIDGE,
                 "com.docker.network.bridge.enable_icc": "false"},
        ipam=docker.types.IPAMConfig(pool_configs=[
            docker.types.IPAMPool(subnet="10.213.60.0/24"),
            docker.types.IPAMPool(subnet="fd00:213:60::/64"),
        ]),
        labels={"org.jupyter.hardened-spawner.managed": "true"},
    )
    engine.networks.create(
        TARGET_NETWORK, driver="bridge",
        options={"com.docker.network.bridge.name": f"{TEST_PREFIX[:8]}-tgt"},
        ipam=docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=TARGET_SUBNET)]),
    )
    target = engine.api.create_container(
        SINGLEUSER_IMAGE, ["python3", "-c", LISTENER + f"serve(socket.AF_INET, '0.0.0.0', {TARGET_PORT}, b'target')"],
        name=f"{TEST_PREFIX}-target", user="65534:65534",
        host_config=engine.api.create_host_config(cap_drop=["ALL"], read_only=True, network_mode=TARGET_NETWORK),
        networking_config=engine.api.create_networking_config(
            {TARGET_NETWORK: engine.api.create_endpoint_config(ipv4_address=TARGET_IP)}
        ),
    )
    engine.api.start(target["Id"])

    subprocess.run(["ip", "netns", "del", NETNS], capture_output=True, check=False)
    subprocess.run(["ip", "link", "del", VETH_HOST], capture_output=True, check=False)
    _run("ip", "netns", "add", NETNS)
    _run("ip", "link", "add", VETH_HOST, "type", "veth", "peer", "name", VETH_NS)
    _run("ip", "link", "set", VETH_NS, "netns", NETNS)
    _run("ip", "addr", "add", f"{HOST_SIDE}/24", "dev", VETH_HOST)
    _run("ip", "link", "set", VETH_HOST, "up")
    _run("ip", "netns", "exec", NETNS, "ip", "addr", "add", f"{PUBLIC_IP}/24", "dev", VETH_NS)
    _run("ip", "netns", "exec", NETNS, "ip", "link", "set", VETH_NS, "up")
    _run("ip", "netns", "exec", NETNS, "ip", "link", "set", "lo", "up")
    public = subprocess.Popen(
        ["ip", "netns", "exec", NETNS, sys.executable, "-c",
         LISTENER + f"serve(socket.AF_INET, '{PUBLIC_IP}', {PUBLIC_PORT}, b'public')"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    host_listener = socket.socket()
    host_listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    host_listener.bind((HOST_SIDE, HOST_PORT))
    host_listener.listen()

    def accept():
        while True:
            try:
                c, _ = host_listener.accept()
            except OSError:
                return
            c.sendall(b"host")
            c.close()

    threading.Thread(target=accept, daemon=True).start()
    yield SimpleWorld(before)

    firewall("remove", "--network", NETWORK)
    host_listener.close()
    public.kill()
    public.wait(10)
    subprocess.run(["ip", "link", "del", VETH_HOST], capture_output=True, check=False)
    subprocess.run(["ip", "netns", "del", NETNS], capture_output=True, check=False)
    remove_ours()  # the servers too: the hubs (session-wide) outlive this module


class SimpleWorld:
    def __init__(self, before):
        self.before = before


TARGETS_PRIVATE = [(TARGET_IP, TARGET_PORT)]
TARGETS_PUBLIC = [(PUBLIC_IP, PUBLIC_PORT)]
TARGETS_HOST = [(HOST_SIDE, HOST_PORT)]


@pytest.fixture(scope="module")
def internet_hub(world, hub_factory):
    """A hub with the default isolation settings; its rules are not applied yet."""
    return hub_factory(HUB_CONFIG)


@pytest.fixture(scope="module")
def servers(internet_hub, engine):
    kernels = {}
    for name in ("alice", "bob"):
        internet_hub.create_user(name)
        result = internet_hub.spawn(name)
        assert result.ready, f"{name}: {result.message}\n{internet_hub.log_tail()}"
        kernels[name] = Kernel(internet_hub, name)
    kernels["bob"].run(LISTENER + textwrap.dedent(
        """
        for family, address in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            threading.Thread(target=serve, args=(family, address, 6006, b"bob"), daemon=True).start()
        """
    ))
    yield kernels
    for kernel in kernels.values():
        kernel.close()


# --- without the rules: the hub says so, and Docker alone leaves holes -------------------


def test_without_rules_the_hub_warns_and_docker_alone_leaves_holes(servers, internet_hub, engine):
    log = wait_for_log(internet_hub, "NETWORK ISOLATION IS NOT IN PLACE for the users' network")
    assert f"iptables: chain {forward_chain(BRIDGE)} is missing" in log
    assert "hardened-spawner firewall apply --network " + NETWORK in log
    bob4, bob6 = server_addresses(engine, "bob")
    assert bob6, "the users' network should give servers IPv6 addresses"
    # bob's listener answers bob himself
    assert set(reach(servers["bob"], [(bob4, 6006), (bob6, 6006)]).values()) == {"open"}
    seen = reach(servers["alice"], [(bob4, 6006), (bob6, 6006)] + TARGETS_PUBLIC + TARGETS_HOST)
    assert seen == {
        f"{bob4}:6006": "timeout",  # enable_icc=false: the engine drops IPv4 between containers
        f"{bob6}:6006": "open",  # ... but not IPv6: only the rules close that
        f"{PUBLIC_IP}:{PUBLIC_PORT}": "open",
        f"{HOST_SIDE}:{HOST_PORT}": "open",  # the host itself
    }


# --- with the rules of the default settings ----------------------------------------------


def admin_check(config) -> dict:
    """`hardened-spawner check --json`'s network verdict, as an admin on the host gets it."""
    done = subprocess.run([sys.executable, "-m", "hardened_spawner", "check", "--json", "--config", str(config)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode in (0, 1), done.stderr
    return json.loads(done.stdout)["network_isolation"]


def test_apply_installs_each_rule_once(servers, internet_hub, world):
    config = internet_hub.workdir / "jupyterhub_config.py"
    before = admin_check(config)
    assert (before["ok"], before["checked_by"]) == (False, "iptables"), before
    assert f"iptables: chain {forward_chain(BRIDGE)} is missing" in before["problems"]
    assert before["fix"].startswith(f"as root on the Docker host: hardened-spawner firewall apply --network {NETWORK}")
    first = firewall("apply", config=config)
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"applied the rules for {NETWORK} (bridge {BRIDGE}; hub {docker0_address()}:{internet_hub.hub_port}; egress internet)" in first.stdout
    rules = {4: [r for r in iptables_rules(4) if OURS in r], 6: [r for r in iptables_rules(6) if OURS in r]}
    second = firewall("apply", config=config)
    assert second.returncode == 0, second.stdout + second.stderr
    assert [r for r in iptables_rules(4) if OURS in r] == rules[4]
    assert [r for r in iptables_rules(6) if OURS in r] == rules[6]
    for family in (4, 6):
        jumps = [r for r in rules[family] if r.endswith((f"-j {forward_chain(BRIDGE)}", f"-j {input_chain(BRIDGE)}"))]
        assert len(jumps) == 3 and len(set(jumps)) == 3, jumps
    # the metadata service is checked as a rule, never probed
    assert (f'-A {forward_chain(BRIDGE)} -d 169.254.0.0/16 -m comment --comment "{OURS}link-local" '
            "-j REJECT --reject-with icmp-admin-prohibited") in rules[4]
    assert (f'-A {forward_chain(BRIDGE)} -d fe80::/10 -m comment --comment "{OURS}link-local" '
            "-j REJECT --reject-with icmp6-adm-prohibited") in rules[6]
    status = firewall("status", "--json", config=config)
    assert status.returncode == 0, status.stdout + status.stderr
    assert json.loads(status.stdout)["problems"] == []
    assert admin_check(config) == {"network": NETWORK, "checked_by": "iptables", "ok": True,
                                   "problems": [], "fix": ""}


def test_servers_cannot_reach_each_other_on_any_port(servers, engine):
    bob4, bob6 = server_addresses(engine, "bob")
    alice4, _ = server_addresses(engine, "alice")
    seen = reach(servers["alice"], [(bob4, 6006), (bob4, 8888), (bob4, 22), (bob6, 6006), (bob6, 8888)])
    assert {k: v for k, v in seen.items() if k.startswith(bob4)} == {
        f"{bob4}:6006": REJECTED, f"{bob4}:8888": REJECTED, f"{bob4}:22": REJECTED,
    }
    assert all(v != "open" for v in seen.values()), seen
    # and the other way round, UDP included: nothing bob sends reaches alice's server
    back = servers["bob"].run(textwrap.dedent(
        f"""
        import socket
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect(("{alice4}", 5353))
        s.send(b"x")
        s.settimeout(2)
        try:
            s.recv(10)
        except OSError as e:
            print("errno", e.errno)
        """
    )).strip()
    assert back == "errno 113", back  # the rejection comes back as ICMP
    assert set(reach(servers["bob"], [(bob4, 6006)]).values()) == {"open"}  # bob's listener is alive


def test_the_hub_api_answers_and_the_hub_sees_its_rules(servers, internet_hub):
    assert hub_api_status(servers["alice"]) == 200
    assert hub_api_status(servers["bob"]) == 200
    internet_hub.create_user("erin")
    result = internet_hub.spawn("erin")
    assert result.ready, result.message
    wait_for_log(internet_hub, f"Network isolation of {NETWORK} is in place (checked by iptables)")
    internet_hub.stop_server("erin")


def test_private_targets_and_the_host_are_blocked_public_ones_open(servers):
    seen = reach(servers["alice"], TARGETS_PRIVATE + TARGETS_HOST + TARGETS_PUBLIC)
    assert seen == {
        f"{TARGET_IP}:{TARGET_PORT}": REJECTED,
        f"{HOST_SIDE}:{HOST_PORT}": REJECTED,
        f"{PUBLIC_IP}:{PUBLIC_PORT}": "open",
    }


def test_the_allowlist_opens_a_private_range(servers, internet_hub):
    config = internet_hub.workdir / "jupyterhub_config.py"
    opened = firewall("apply", "--allow", TARGET_SUBNET, config=config)
    assert opened.returncode == 0, opened.stdout + opened.stderr
    try:
        assert reach(servers["alice"], TARGETS_PRIVATE) == {f"{TARGET_IP}:{TARGET_PORT}": "open"}
        # the hub's own settings have no allowlist: its check notices the difference
        status = firewall("status", config=config)
        assert status.returncode == 1 and "unexpected rule" in status.stdout, status.stdout
    finally:
        closed = firewall("apply", config=config)
        assert closed.returncode == 0, closed.stdout + closed.stderr
    assert reach(servers["alice"], TARGETS_PRIVATE) == {f"{TARGET_IP}:{TARGET_PORT}": REJECTED}


def test_the_proxy_routes_to_every_server(servers, internet_hub):
    for name, kernel in servers.items():
        r = requests.get(f"{internet_hub.url}/user/{name}/api/status",
                         headers={"Authorization": f"token {kernel.token}"}, timeout=10)
        assert r.status_code == 200, (name, r.status_code, r.text[:200])


# --- egress none, with a hub that refuses to spawn without its rules -------------------------


@pytest.fixture(scope="module")
def none_hub(servers, hub_factory):
    return hub_factory(
        HUB_CONFIG
        + """
c.HardenedSpawner.egress = "none"
c.HardenedSpawner.firewall_required = True
c.HardenedSpawner.firewall_check_method = "probe"
# the default: a good check is reused for a minute, a refusal never
c.HardenedSpawner.firewall_check_interval = 60
"""
    )


def test_egress_none_refuses_then_only_the_hub_answers(none_hub, servers, engine):
    none_hub.create_user("carol")
    refused = none_hub.spawn("carol")
    assert not refused.ready
    # the rules in force were applied for internet_hub (another port): this hub's servers
    # could never reach it, which is refused at once with the command that fixes it
    assert "the network rules in place on this server stop servers from reaching this hub" in refused.message, refused.message
    assert "hardened-spawner firewall apply --network" in refused.message
    log = none_hub.log_path.read_text()
    assert "(checked by probe)" in log and "other settings" in log

    applied = firewall("apply", config=none_hub.workdir / "jupyterhub_config.py")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "egress none" in applied.stdout
    result = none_hub.spawn("carol")
    assert result.ready, f"{result.message}\n{none_hub.log_tail()}"
    wait_for_log(none_hub, f"Network isolation of {NETWORK} is in place (checked by probe)")
    carol = Kernel(none_hub, "carol")
    try:
        assert hub_api_status(carol) == 200
        bob4, bob6 = server_addresses(engine, "bob")
        seen = reach(carol, TARGETS_PRIVATE + TARGETS_PUBLIC + TARGETS_HOST + [(bob4, 6006)])
        assert seen == {
            f"{TARGET_IP}:{TARGET_PORT}": REJECTED,
            f"{PUBLIC_IP}:{PUBLIC_PORT}": REJECTED,  # egress none: public addresses too
            f"{HOST_SIDE}:{HOST_PORT}": REJECTED,
            f"{bob4}:6006": REJECTED,
        }
        assert reach(carol, [(bob6, 6006)]) != {f"{bob6}:6006": "open"}
        r = requests.get(f"{none_hub.url}/user/carol/api/status",
                         headers={"Authorization": f"token {carol.token}"}, timeout=10)
        assert r.status_code == 200
    finally:
        carol.close()
        none_hub.stop_server("carol")


# --- remove ------------------------------------------------------------------------------------


def test_remove_leaves_the_chains_as_it_found_them(none_hub, world):
    removed = firewall("remove", "--network", NETWORK)
    assert removed.returncode == 0, removed.stdout + removed.stderr
    for family in (4, 6):
        rules = iptables_rules(family)
        ours = (OURS, forward_chain(BRIDGE), input_chain(BRIDGE))
        assert not [r for r in rules if any(o in r for o in ours)], family
        assert untouched(rules, family) == world.before[family], family
    again = firewall("remove", "--network", NETWORK)
    assert again.returncode == 0 and "0 table(s) changed" in again.stdout
    status = firewall("status", config=none_hub.workdir / "jupyterhub_config.py")
    assert status.returncode == 1 and f"chain {forward_chain(BRIDGE)} is missing" in status.stdout
