"""The host's DNS resolvers against the policy: which of them servers cannot reach.

Docker's embedded resolver forwards servers' lookups from the container's own network,
so a resolver in a blocked range fails every lookup unless the admin opens it.
"""

from __future__ import annotations

import ipaddress

from ...core.egress import BLOCKED_V4, BLOCKED_V6
from .policy import IsolationPolicy, is_ip


def unreachable_resolvers(resolv_conf: str, policy: IsolationPolicy) -> list[str]:
    """The host's DNS resolvers (from its resolv.conf) that servers' lookups cannot reach
    under this policy. Docker's embedded resolver forwards from the container's own
    network, so a resolver in a blocked range fails every lookup unless it is on
    `allow_dns` or `allow_cidrs`; loopback resolvers are asked from the host and are fine."""
    found = []
    for line in resolv_conf.splitlines():
        words = line.split()
        if len(words) < 2 or words[0] != "nameserver" or not is_ip(words[1].split("%")[0]):
            continue
        ip = ipaddress.ip_address(words[1].split("%")[0])
        if ip.is_loopback:
            continue
        blocked = BLOCKED_V4 if ip.version == 4 else BLOCKED_V6
        in_blocked = any(ip in ipaddress.ip_network(cidr) for cidr, _ in blocked)
        opened = str(ip) in policy.allow_dns or any(
            ip in ipaddress.ip_network(c) for c in policy.allow_cidrs
        )
        if (policy.egress == "none" or in_blocked) and not opened:
            found.append(str(ip))
    return found


#: Where systemd-resolved lists the upstream servers behind its 127.0.0.53 stub.
SYSTEMD_RESOLV_CONF = "/run/systemd/resolve/resolv.conf"


def host_resolv_conf(path: str = "/etc/resolv.conf", systemd_path: str = SYSTEMD_RESOLV_CONF) -> str | None:
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


def dns_note(policy: IsolationPolicy, path: str = "/etc/resolv.conf") -> str:
    resolv_conf = host_resolv_conf(path)
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
    resolv_conf = host_resolv_conf(path, systemd_path)
    return unreachable_resolvers(resolv_conf, IsolationPolicy("127.0.0.1", 1)) if resolv_conf else []
