"""The users' Docker network: how it is made, and what the rules need to know of it.

A bridge network the spawner manages, with a fixed bridge interface name (so rules can
match ``-i <bridge>``) and ``enable_icc=false``, so the engine drops traffic between
containers on it even before any rule of ours exists. The pure half (`network_create_spec`,
`network_facts`, `network_problems`) turns settings and ``docker network inspect`` into
plain values; `load_network` and `ensure_network` do the engine calls (blocking docker-py:
the hub runs them on its Docker threads).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

import docker.errors

from ... import labels
from ..._version import __version__
from ...core.egress import NetworkConfigError

ICC_OPTION = "com.docker.network.bridge.enable_icc"

BRIDGE_OPTION = "com.docker.network.bridge.name"

ROLE_NETWORK = "network"


#: On a users' network made with a reserved hub address (the compose deployment).
HUB_ADDRESS = f"{labels.PREFIX}.hub-address"

IFNAMSIZ = 15  # longest Linux interface name

_IFNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def check_bridge_name(name: str, setting: str = "network_bridge_name") -> str:
    if not (0 < len(name) <= IFNAMSIZ and _IFNAME.match(name)):
        raise NetworkConfigError(
            f"{setting}: {name!r} is not a usable interface name (1-{IFNAMSIZ} characters: "
            "letters, digits, '.', '_', '-')."
        )
    return name


def bridge_name(network_name: str) -> str:
    """The bridge interface for a network the spawner creates: ``hs-<name>``, so every
    bridge of ours is recognisable in ``ip link`` and in rules; names too long for an
    interface lose a ``hardened-spawner-`` prefix, then fall back to a short hash."""
    for candidate in (network_name, network_name.removeprefix("hardened-spawner-")):
        name = "hs-" + candidate
        if len(name) <= IFNAMSIZ and _IFNAME.match(name):
            return name
    return "hs-" + hashlib.sha256(network_name.encode()).hexdigest()[:12]


def reserved_layout(subnet: str) -> dict[str, str]:
    """Addresses of a users' subnet with room for fixed ones: the engine hands out
    addresses from the upper half only (``ip_range``), so the lower half stays free
    for containers that need a fixed address, such as the hub in compose, whose
    address the rules name. The hub gets the first address after the gateway."""
    try:
        net = ipaddress.ip_network(subnet, strict=True)
    except ValueError as e:
        raise NetworkConfigError(f"the users' subnet {subnet!r} is not a CIDR like '172.30.0.0/24' ({e}).") from None
    if net.version != 4 or not 8 <= net.prefixlen <= 28:
        raise NetworkConfigError(
            f"the users' subnet {subnet} must be IPv4, from /8 to /28 (half of it is for servers)."
        )
    return {
        "subnet": str(net),
        "gateway": str(net.network_address + 1),
        "ip_range": str(list(net.subnets(prefixlen_diff=1))[1]),
        "hub_address": str(net.network_address + 2),
    }


def network_create_spec(network_name: str, bridge: str, isolation: bool, version: str,
                        subnet: str = "") -> dict:
    """Keyword arguments for docker-py's ``create_network``; with a ``subnet``, its
    lower half is kept for fixed addresses and the hub's is recorded in a label."""
    options = {BRIDGE_OPTION: bridge}
    if isolation:
        options[ICC_OPTION] = "false"  # the engine drops container-to-container traffic
    network_labels = {labels.MANAGED: "true", labels.ROLE: ROLE_NETWORK, labels.VERSION: version}
    spec: dict = {"name": network_name, "driver": "bridge", "options": options, "labels": network_labels}
    if subnet:
        layout = reserved_layout(subnet)
        # docker-py's IPAMConfig is this dict; built here so this module needs no docker
        spec["ipam"] = {
            "Driver": "default",
            "Config": [{"Subnet": layout["subnet"], "IPRange": layout["ip_range"],
                        "Gateway": layout["gateway"]}],
            "Options": {},
        }
        network_labels[HUB_ADDRESS] = layout["hub_address"]
    return spec


@dataclass(frozen=True)
class NetworkFacts:
    """What the rules and checks need to know about the users' network, from ``docker network inspect``."""

    name: str
    bridge: str
    subnets: tuple[str, ...]
    ipv6: bool
    icc: bool
    driver: str = "bridge"
    managed: bool = False
    hub_address: str = ""  # the fixed address reserved for the hub, if the network has one

    def subnets_of(self, family: int) -> tuple[str, ...]:
        return tuple(s for s in self.subnets if ipaddress.ip_network(s).version == family)


def network_facts(inspect: Mapping) -> NetworkFacts:
    options = inspect.get("Options") or {}
    subnets = tuple(
        str(ipaddress.ip_network(c["Subnet"], strict=False))
        for c in ((inspect.get("IPAM") or {}).get("Config") or [])
        if c.get("Subnet")
    )
    return NetworkFacts(
        name=inspect["Name"],
        # the engine names an unnamed bridge after the network's id
        bridge=options.get(BRIDGE_OPTION) or "br-" + inspect["Id"][:12],
        subnets=subnets,
        ipv6=bool(inspect.get("EnableIPv6")),
        icc=str(options.get(ICC_OPTION, "true")).lower() != "false",
        driver=inspect.get("Driver") or "",
        managed=(inspect.get("Labels") or {}).get(labels.MANAGED) == "true",
        hub_address=(inspect.get("Labels") or {}).get(HUB_ADDRESS, ""),
    )


def network_problems(facts: NetworkFacts) -> list[str]:
    """What is wrong with an existing network, for users' isolation (empty: nothing)."""
    problems = []
    if facts.driver != "bridge":
        problems.append(
            f"The users' network {facts.name} uses the {facts.driver!r} driver; isolation "
            "needs a bridge network. Set HardenedSpawner.network_name to a new name, so the "
            "spawner creates one."
        )
    if facts.icc:
        problems.append(
            f"The users' network {facts.name} lets containers talk to each other (it was "
            f"created without {ICC_OPTION}=false); only the firewall rules stand between "
            "users' servers. Stop all servers and remove it (docker network rm "
            f"{facts.name}): the spawner recreates it with isolation."
        )
    return problems

# --- the engine ---------------------------------------------------------------------


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
