"""Where users' servers may connect, as plain values: shared by both backends.

The egress mode and the allowlists are validated here once; Docker's firewall
(`docker.isolation`) turns them into iptables rules and Kubernetes
(`kubernetes.objects.make_network_policy`) into a NetworkPolicy. Both block the same
ranges, listed below with the purpose each block serves.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable


class NetworkConfigError(ValueError):
    """A setting for the users' network or its firewall is wrong; names the setting."""


EGRESS_MODES = ("internet", "none")


#: Destinations users' servers never reach (unless an admin allowlists a range),
#: with the purpose each rule's comment names.
BLOCKED_V4 = (
    ("169.254.0.0/16", "link-local"),  # cloud metadata (169.254.169.254) and friends
    ("10.0.0.0/8", "private"),
    ("172.16.0.0/12", "private"),
    ("192.168.0.0/16", "private"),
    ("100.64.0.0/10", "cgnat"),  # carrier-grade NAT, also used by some clouds' internals
)

BLOCKED_V6 = (
    ("fe80::/10", "link-local"),
    ("fc00::/7", "private"),  # unique local addresses (AWS IMDS is fd00:ec2::254)
)


#: Never opened by an allowlist: the metadata services live there.
NEVER_ALLOWED = (ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("fe80::/10"))


def parse_cidrs(values: Iterable[str], setting: str) -> tuple[str, ...]:
    """Normalised CIDRs for an allowlist; rejects typos, the default route and link-local."""
    result = []
    for value in values:
        try:
            net = ipaddress.ip_network(str(value).strip(), strict=True)
        except ValueError as e:
            raise NetworkConfigError(
                f"{setting}: {value!r} is not a CIDR like '10.20.0.0/16' ({e})."
            ) from None
        if net.prefixlen == 0:
            raise NetworkConfigError(
                f"{setting}: {value!r} would open every address; use egress='internet' for "
                "public addresses and list the private ranges you need one by one."
            )
        for never in NEVER_ALLOWED:
            if net.version == never.version and net.overlaps(never):
                raise NetworkConfigError(
                    f"{setting}: {value!r} overlaps the link-local range {never}, where cloud "
                    "metadata services hand out the host's credentials; it is never opened."
                )
        if str(net) not in result:
            result.append(str(net))
    return tuple(result)


def parse_addresses(values: Iterable[str], setting: str) -> tuple[str, ...]:
    result = []
    for value in values:
        try:
            address = ipaddress.ip_address(str(value).strip())
        except ValueError:
            raise NetworkConfigError(f"{setting}: {value!r} is not an IP address.") from None
        if address.is_link_local:
            raise NetworkConfigError(f"{setting}: {value!r} is link-local; it is never opened.")
        if str(address) not in result:
            result.append(str(address))
    return tuple(result)


def parse_egress(value: str, setting: str = "egress") -> str:
    mode = str(value).strip().lower()
    if mode not in EGRESS_MODES:
        raise NetworkConfigError(f"{setting}: {value!r} is not one of {', '.join(EGRESS_MODES)}.")
    return mode
