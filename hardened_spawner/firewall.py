"""Put the users' network rules on the host, check them, take them away.

The imperative half of `network`: it runs ``iptables``/``ip6tables`` and talks to the
engine, and decides nothing itself. Admins use it through the command

    hardened-spawner firewall apply|status|remove [-f jupyterhub_config.py] [options]

run once as root on the Docker host (rules do not survive a reboot: run ``apply``
from a boot unit, after the engine starts). The hub uses `verify` at start and
before spawns (cached): it compares the rules with ``iptables -S`` where it can read
them (a hub on the host, as root), and otherwise asks the marker ``apply`` leaves on
the engine and a throwaway probe container on the users' network.
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets
import socket
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import docker.errors

from ._version import __version__
from .network import (
    FamilyPlan,
    IsolationPolicy,
    NetworkConfigError,
    NetworkFacts,
    Tables,
    apply_script,
    bridge_name,
    hub_blocked,
    marker_labels,
    marker_name,
    marker_problems,
    network_create_spec,
    network_facts,
    network_problems,
    parse_addresses,
    parse_cidrs,
    parse_egress,
    parse_tables,
    plan_problems,
    probe_spec,
    probe_verdict,
    remove_script,
    rule_plan,
    unreachable_resolvers,
)

_COMMAND = {4: "iptables", 6: "ip6tables"}


class FirewallError(RuntimeError):
    """The rules could not be read or written; the message says why and what to do."""


# --- iptables ----------------------------------------------------------------------


def _run_as_given(argv: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=30, check=False)


#: iptables has two backends (nf_tables and legacy) whose rules the kernel keeps apart;
#: ours must go where the engine's are. The system's default ``iptables`` first, then each.
BACKENDS = ("", "-nft", "-legacy")


def detect_backend(run: Callable = _run_as_given) -> str:
    """The suffix of the iptables front end whose tables hold the engine's DOCKER-USER
    chain ("" for the default one, or when none shows it): a container built on
    another distribution than the host's may default to the other backend."""
    for suffix in BACKENDS:
        try:
            result = run([f"iptables{suffix}", "-w", "5", "-S"])
        except (OSError, subprocess.SubprocessError):
            continue
        if result.returncode == 0 and "-N DOCKER-USER" in result.stdout.splitlines():
            return suffix
    return ""


def with_backend(argv: Sequence[str], suffix: str) -> list[str]:
    """``iptables-restore`` becomes ``iptables-legacy-restore`` for suffix ``-legacy``."""
    command, *rest = argv
    for base in ("ip6tables", "iptables"):
        if command.startswith(base):
            return [base + suffix + command[len(base):], *rest]
    return list(argv)


_BACKEND_LOCK = threading.Lock()
_BACKEND: list[str] = []


def _engine_backend() -> str:
    """Detected once per process, under a lock (the hub's Docker threads may ask at the same
    moment): the host's backend does not change under it."""
    with _BACKEND_LOCK:
        if not _BACKEND:
            _BACKEND.append(detect_backend())
        return _BACKEND[0]


def _run(argv: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    return _run_as_given(with_backend(argv, _engine_backend()), stdin)


def read_tables(family: int, run: Callable = _run) -> tuple[Tables | None, str]:
    """The filter table, or None and why it cannot be read (not installed, not root)."""
    try:
        result = run([_COMMAND[family], "-w", "5", "-S"])
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"{_COMMAND[family]} cannot run ({e})"
    if result.returncode != 0:
        return None, f"{_COMMAND[family]} -S failed: {result.stderr.strip()[:200]}"
    return parse_tables(result.stdout), ""


def restore(family: int, script: str, run: Callable = _run) -> None:
    if not script:
        return
    result = run([f"{_COMMAND[family]}-restore", "--noflush", "-w", "10"], script)
    if result.returncode != 0:
        raise FirewallError(
            f"{_COMMAND[family]}-restore refused the rules: {result.stderr.strip()[:500]}"
        )


def ipv6_parent(tables6: Tables | None) -> str:
    """Where forwarded IPv6 is filtered: the engine's DOCKER-USER when it manages
    ip6tables (``"ip6tables": true`` in daemon.json), plain FORWARD otherwise."""
    return "DOCKER-USER" if tables6 is not None and "DOCKER-USER" in tables6.chains else "FORWARD"


def resolve(host: str) -> str:
    """An address for a host name, IPv4 first (the hub's name on the users' network)."""
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return str(min(infos, key=lambda info: info[0] != socket.AF_INET)[4][0])


def read_boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


# --- the engine: the network and the marker ---------------------------------------


def load_network(client, name: str) -> NetworkFacts | None:
    try:
        return network_facts(client.inspect_network(name))
    except docker.errors.NotFound:
        return None


def ensure_network(client, name: str, bridge: str = "", isolation: bool = True,
                   subnet: str = "", require_hub_address: bool = False) -> NetworkFacts:
    """The users' network, made when missing as every part of this project makes it (the
    hub, `firewall apply`, `firewall network`): a labelled bridge with a fixed interface
    name, no traffic between containers, and a subnet whose lower half the engine never
    hands out, so a hub in a container can have a fixed address there (recorded on the
    network). Without a ``subnet``, the engine picks a free one. With
    ``require_hub_address``, an existing network without that address is an error."""
    facts = load_network(client, name)
    if facts is None:
        subnet = subnet or _free_subnet(client, name)
        spec = network_create_spec(name, bridge or bridge_name(name), isolation, __version__, subnet)
        try:
            client.create_network(spec.pop("name"), **spec)
        except docker.errors.APIError as e:
            if e.status_code != 409:  # 409: another hub made it first
                raise
        facts = load_network(client, name)
        if facts is None:
            raise NetworkConfigError(f"the users' network {name} was made but the engine does not show it")
    if require_hub_address and not facts.hub_address:
        raise NetworkConfigError(
            f"the users' network {name} exists but has no address reserved for the hub "
            "(an older version made it). Stop the servers on it and remove it "
            f"(docker network rm {name}); this command makes it again."
        )
    return facts


def _free_subnet(client, name: str) -> str:
    """An IPv4 subnet the engine considers free (it avoids its other networks and the
    host's routes), learnt from a throwaway network."""
    # a name of its own, so a leftover from an interrupted run is never in the way
    probe = client.create_network(f"{name}-picking-subnet-{secrets.token_hex(4)}", driver="bridge")
    try:
        picked = network_facts(client.inspect_network(probe["Id"]))
    finally:
        client.remove_network(probe["Id"])
    subnet = next((s for s in picked.subnets if ipaddress.ip_network(s).version == 4), "")
    if not subnet:
        raise NetworkConfigError(f"the engine gave no IPv4 subnet for the users' network {name}")
    return subnet


def read_marker(client, network_name: str) -> dict | None:
    try:
        return client.inspect_volume(marker_name(network_name)).get("Labels") or {}
    except docker.errors.NotFound:
        return None


def write_marker(client, facts: NetworkFacts, policy: IsolationPolicy) -> None:
    delete_marker(client, facts.name)
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    client.create_volume(
        name=marker_name(facts.name),
        labels=marker_labels(facts, policy, read_boot_id(), now, __version__),
    )


def delete_marker(client, network_name: str) -> None:
    try:
        client.remove_volume(marker_name(network_name), force=True)
    except docker.errors.NotFound:
        pass


def run_probe(client, image: str, network_name: str, policy: IsolationPolicy) -> tuple[list[str], list[str]]:
    """Start a throwaway container on the users' network and see what it reaches:
    (what is missing, what of that keeps servers from the hub API)."""
    create, host = probe_spec(image, network_name, policy, __version__)
    try:
        container = client.create_container(host_config=client.create_host_config(**host), **create)
    except docker.errors.DockerException as e:
        return [f"the network probe could not be created ({e})"], []
    try:
        client.start(container["Id"])
        result = client.wait(container["Id"], timeout=60)
        output = client.logs(container["Id"]).decode(errors="replace")
    except (docker.errors.DockerException, OSError, ValueError) as e:
        # includes the wait's read timeout: the probe's failure is a finding, not a crash
        return [f"the network probe failed ({e})"], []
    finally:
        try:
            client.remove_container(container["Id"], force=True)
        except docker.errors.DockerException:
            pass
    return probe_verdict(output, result.get("StatusCode", -1), policy)


# --- what the admin command and the hub do ------------------------------------------


def plans(facts: NetworkFacts, policy: IsolationPolicy, run: Callable = _run) -> tuple[
    tuple[FamilyPlan, ...], dict[int, Tables]
]:
    """The plan for this host, and the tables it was made against. Root only."""
    tables = {}
    for family in (4, 6) if facts.ipv6 else (4,):
        found, why = read_tables(family, run)
        if found is None:
            raise FirewallError(f"cannot read the host's rules: {why}. Run this as root on the Docker host.")
        tables[family] = found
    if "DOCKER-USER" not in tables[4].chains:
        raise FirewallError(
            "iptables has no DOCKER-USER chain: run this on the Docker host itself, with the "
            "engine running and managing iptables."
        )
    return rule_plan(facts, policy, ipv6_parent(tables.get(6))), tables


def apply(facts: NetworkFacts, policy: IsolationPolicy, run: Callable = _run) -> list[str]:
    """Install the rules (idempotent), then read them back; returns what is still wrong."""
    planned, tables = plans(facts, policy, run)
    for plan in planned:
        restore(plan.family, apply_script(plan, facts.bridge, tables[plan.family]), run)
    if not facts.ipv6:  # rules of ours left from when the network had IPv6
        found, _ = read_tables(6, run)
        if found is not None:
            restore(6, remove_script(facts.bridge, found), run)
    return status(facts, policy, run)


def status(facts: NetworkFacts, policy: IsolationPolicy, run: Callable = _run) -> list[str]:
    planned, tables = plans(facts, policy, run)
    problems = network_problems(facts)
    for plan in planned:
        problems += plan_problems(plan, tables[plan.family])
    return problems


def remove(bridge: str, run: Callable = _run) -> int:
    """Remove every rule and chain of ours for this bridge; returns how many families changed."""
    changed = 0
    for family in (4, 6):
        found, why = read_tables(family, run)
        if found is None:
            if family == 4:
                raise FirewallError(f"cannot read the host's rules: {why}. Run this as root.")
            continue
        script = remove_script(bridge, found)
        if script:
            restore(family, script, run)
            changed += 1
    return changed


def verify(client, facts: NetworkFacts, policy: IsolationPolicy, *, method: str = "auto",
           image: str = "", run: Callable = _run) -> tuple[str, list[str]]:
    """(how it checked, problems): see `check`."""
    verdict = check(client, facts, policy, method=method, image=image, run=run)
    return verdict.method, verdict.problems


@dataclass
class Verdict:
    method: str  # "iptables" or "probe"
    problems: list[str]  # each way the isolation differs from the policy
    blocking: list[str]  # those that keep servers from reaching the hub at all


def check(client, facts: NetworkFacts, policy: IsolationPolicy, *, method: str = "auto",
          image: str = "", run: Callable = _run) -> Verdict:
    """What the hub asks: are the rules it expects in force, and do rules in force block it?

    ``iptables``: compare with ``iptables -S`` (a hub on the host, as root). ``probe``: the
    marker `apply` left must match this network, these settings and this boot, and a
    throwaway container on the users' network must reach the hub API and be rejected on
    another port of the hub's address (needs no privileges beyond the engine's API).
    ``auto``: iptables when it can read the host's rules, the probe otherwise.
    """
    problems = network_problems(facts)
    if method in ("auto", "iptables"):
        tables4, why = read_tables(4, run)
        if tables4 is not None and "DOCKER-USER" in tables4.chains:
            tables6 = read_tables(6, run)[0] if facts.ipv6 else None
            blocking: list[str] = []
            for plan in rule_plan(facts, policy, ipv6_parent(tables6)):
                tables = tables4 if plan.family == 4 else tables6
                if tables is None:
                    problems.append("ip6tables cannot be read, so the IPv6 rules are unchecked")
                    continue
                problems += plan_problems(plan, tables)
                blocking += hub_blocked(plan, tables)
            return Verdict("iptables", problems, blocking)
        if method == "iptables":
            return Verdict("iptables", problems + [
                f"cannot read the host's iptables ({why or 'no DOCKER-USER chain: not the host'})"
            ], [])
    problems += marker_problems(read_marker(client, facts.name), facts, policy, read_boot_id())
    found, blocking = run_probe(client, image, facts.name, policy)
    return Verdict("probe", problems + found, blocking)


# --- the isolation policy, from a spawner's settings --------------------------------


def policy_from_settings(settings: dict) -> IsolationPolicy:
    """The rules' inputs from the command's settings; the hub's name is resolved here."""
    host = settings["hub_ip"]
    if not host or host in ("0.0.0.0", "::"):
        raise NetworkConfigError(
            "the hub's address is unknown: pass --hub-ip (the address servers reach the hub "
            "API at, as in c.JupyterHub.hub_connect_ip) or -f jupyterhub_config.py"
        )
    try:
        ipaddress.ip_address(host)
    except ValueError:
        try:
            host = resolve(host)
        except OSError:
            raise NetworkConfigError(
                f"cannot resolve the hub's address {host!r} here; pass --hub-ip with its IP on "
                "the users' network"
            ) from None
    return IsolationPolicy(
        hub_ip=host,
        hub_port=int(settings["hub_port"]),
        egress=parse_egress(settings["egress"], "--egress"),
        allow_cidrs=parse_cidrs(settings["allow"], "--allow"),
        allow_dns=parse_addresses(settings["allow_dns"], "--allow-dns"),
        trusted=parse_addresses(settings["trusted"], "--trusted"),
    )


#: Where systemd-resolved lists the upstream servers behind its 127.0.0.53 stub.
SYSTEMD_RESOLV_CONF = "/run/systemd/resolve/resolv.conf"


def _host_resolv_conf(path: str = "/etc/resolv.conf", systemd_path: str = SYSTEMD_RESOLV_CONF) -> str | None:
    """The resolv.conf the engine gives containers' DNS: the host's, or systemd-resolved's
    upstream list when the host's names only its loopback stub (as dockerd does)."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    servers = [line.split()[1] for line in text.splitlines()
               if line.startswith("nameserver") and len(line.split()) > 1]
    if servers and all(server == "127.0.0.53" for server in servers):
        try:
            with open(systemd_path) as f:
                return f.read()
        except OSError:
            pass
    return text


def _dns_note(policy: IsolationPolicy, path: str = "/etc/resolv.conf") -> str:
    resolv_conf = _host_resolv_conf(path)
    resolvers = unreachable_resolvers(resolv_conf, policy) if resolv_conf is not None else []
    if not resolvers:
        return ""
    flags = " ".join(f"--allow-dns {ip}" for ip in resolvers)
    return (f"note: servers cannot reach this host's DNS resolver(s) {', '.join(resolvers)} "
            f"(a blocked range, or egress none), so their name lookups fail. To open port 53 "
            f"only: {flags}, and the same in HardenedSpawner.egress_allow_dns.")


def blocked_host_resolvers(path: str = "/etc/resolv.conf", systemd_path: str = SYSTEMD_RESOLV_CONF) -> list[str]:
    """The host's resolvers (which Docker's embedded DNS forwards servers' lookups to)
    inside a range the rules block, whatever the allowlists say: what a deployment
    opens with ``egress_allow_dns`` so that names resolve in users' servers."""
    resolv_conf = _host_resolv_conf(path, systemd_path)
    return unreachable_resolvers(resolv_conf, IsolationPolicy("127.0.0.1", 1)) if resolv_conf else []
