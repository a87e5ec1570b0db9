"""What the users' network rules must say, as plain values (no Docker, no iptables).

The isolation policy is every input of the rules besides the network itself: where
servers reach the hub, the egress mode and the allowlists. `isolation_settings` reads
them from a validated spawner and `policy_from_settings` turns them into an
`IsolationPolicy`: the hub, ``hardened-spawner check`` and ``hardened-spawner firewall``
all go through these two, so they cannot disagree.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import shlex
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from ...core.egress import NetworkConfigError, parse_addresses, parse_cidrs, parse_egress

if TYPE_CHECKING:
    from .docker_network import NetworkFacts

@dataclass(frozen=True)
class IsolationPolicy:
    """Everything the rules depend on besides the network itself."""

    hub_ip: str  # where servers reach the hub's API
    hub_port: int
    egress: str = "internet"
    allow_cidrs: tuple[str, ...] = ()  # opened on purpose: a dataset server, a package mirror
    allow_dns: tuple[str, ...] = ()  # resolvers in a blocked range, opened on port 53 only
    trusted: tuple[str, ...] = ()  # besides the hub: containers on the network that may open connections to servers (a proxy)

    def __post_init__(self):
        try:
            ipaddress.ip_address(self.hub_ip)
        except ValueError:
            raise NetworkConfigError(f"the hub's address {self.hub_ip!r} is not an IP address.") from None
        if not 0 < self.hub_port < 65536:
            raise NetworkConfigError(f"hub port {self.hub_port} is not a TCP port.")
        parse_egress(self.egress)

    def digest(self, facts: NetworkFacts) -> str:
        """A short fingerprint of every input of `rule_plan`: the marker carries it, so a
        hub that cannot read iptables can still tell the rules were made for its settings."""
        inputs = {
            "plan": 1,
            "bridge": facts.bridge,
            "subnets": sorted(facts.subnets),
            "ipv6": facts.ipv6,
            "hub": [self.hub_ip, self.hub_port],
            "egress": self.egress,
            "allow": sorted(self.allow_cidrs),
            "dns": sorted(self.allow_dns),
            "trusted": sorted(self.trusted),
        }
        return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]

    def summary(self) -> str:
        parts = [f"hub {self.hub_ip}:{self.hub_port}", f"egress {self.egress}"]
        if self.allow_cidrs:
            parts.append("allow " + ",".join(self.allow_cidrs))
        if self.allow_dns:
            parts.append("dns " + ",".join(self.allow_dns))
        if self.trusted:
            parts.append("trusted " + ",".join(self.trusted))
        return "; ".join(parts)


def apply_command(network_name: str, policy: IsolationPolicy) -> str:
    """The admin command that installs the rules this policy expects (for log messages)."""
    args = ["hardened-spawner", "firewall", "apply", "--network", network_name,
            "--hub-ip", policy.hub_ip, "--hub-port", str(policy.hub_port)]
    if policy.egress != "internet":
        args += ["--egress", policy.egress]
    for cidr in policy.allow_cidrs:
        args += ["--allow", cidr]
    for ip in policy.allow_dns:
        args += ["--allow-dns", ip]
    for ip in policy.trusted:
        args += ["--trusted", ip]
    return shlex.join(args)


def hub_endpoint(api_url: str) -> tuple[str, int]:
    """(host, port) servers use to reach the hub, from the hub's API URL."""
    url = urlparse(api_url)
    if not url.hostname:
        raise NetworkConfigError(f"the hub's API URL {api_url!r} names no host.")
    return url.hostname, url.port or (443 if url.scheme == "https" else 80)


def hub_endpoint_from_config(jupyterhub: Mapping) -> tuple[str, int]:
    """(host, port) from ``c.JupyterHub`` settings, as JupyterHub itself derives its connect URL."""
    if jupyterhub.get("hub_connect_url"):
        return hub_endpoint(jupyterhub["hub_connect_url"])
    host = jupyterhub.get("hub_connect_ip") or jupyterhub.get("hub_ip") or "127.0.0.1"
    port = jupyterhub.get("hub_connect_port") or jupyterhub.get("hub_port") or 8081
    return host, int(port)


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


@dataclass(frozen=True)
class IsolationSettings:
    """The isolation settings, as the hub, ``check`` and ``firewall`` read them (the options of
    ``firewall`` replace single fields: `dataclasses.replace`)."""

    network: str  # the users' Docker network
    bridge: str  # its bridge's name, "" for the one Docker derives
    isolation: bool  # whether servers on it may not talk to each other
    hub_ip: str  # where servers reach the hub API (a name is resolved by `policy_from_settings`)
    hub_port: int
    egress: str  # "internet" or "none"
    allow: tuple[str, ...] = ()  # egress_allow_cidrs
    allow_dns: tuple[str, ...] = ()  # egress_allow_dns
    trusted: tuple[str, ...] = ()  # network_trusted_addresses


def isolation_settings(spawner, hub_host: str, hub_port: int) -> IsolationSettings:
    """The isolation settings of a validated spawner, for `firewall.policy_from_settings`:
    the one place they are read, by the hub (with its API URL), by `hardened-spawner check`
    and by `hardened-spawner firewall -f` (with the hub's address from its config)."""
    return IsolationSettings(
        network=spawner.network_name,
        bridge=spawner.network_bridge_name,
        isolation=bool(spawner.network_isolation),
        hub_ip=spawner.network_hub_address or hub_host,
        hub_port=int(hub_port),
        egress=spawner.egress,
        allow=tuple(spawner.egress_allow_cidrs),
        allow_dns=tuple(spawner.egress_allow_dns),
        trusted=tuple(spawner.network_trusted_addresses),
    )


def resolve(host: str) -> str:
    """An address for a host name, IPv4 first (the hub's name on the users' network)."""
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return str(min(infos, key=lambda info: info[0] != socket.AF_INET)[4][0])


def policy_from_settings(settings: IsolationSettings) -> IsolationPolicy:
    """The rules' inputs from the command's settings; the hub's name is resolved here."""
    host = settings.hub_ip
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
        hub_port=int(settings.hub_port),
        egress=parse_egress(settings.egress, "--egress"),
        allow_cidrs=parse_cidrs(list(settings.allow), "--allow"),
        allow_dns=parse_addresses(list(settings.allow_dns), "--allow-dns"),
        trusted=parse_addresses(list(settings.trusted), "--trusted"),
    )
