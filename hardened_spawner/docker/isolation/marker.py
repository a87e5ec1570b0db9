"""The mark ``firewall apply`` leaves on the engine, for a hub that cannot read iptables.

A labelled volume named after the network: which bridge and which settings (a digest of
every input of the rules) the rules were made for, and on which boot of the host (rules
do not survive a reboot). A hub in a container compares it with its own settings.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping

import docker.errors

from ... import labels
from ..._version import __version__
from .docker_network import NetworkFacts
from .policy import IsolationPolicy

ROLE_FIREWALL = "firewall"  # the marker volume `firewall apply` leaves for the hub

FIREWALL_BRIDGE = f"{labels.PREFIX}.firewall.bridge"

FIREWALL_DIGEST = f"{labels.PREFIX}.firewall.digest"

FIREWALL_BOOT_ID = f"{labels.PREFIX}.firewall.boot-id"

FIREWALL_APPLIED_AT = f"{labels.PREFIX}.firewall.applied-at"

FIREWALL_SUMMARY = f"{labels.PREFIX}.firewall.summary"


def marker_name(network_name: str) -> str:
    return f"{network_name}-firewall"


def marker_labels(facts: NetworkFacts, policy: IsolationPolicy, boot_id: str,
                  applied_at: str, version: str) -> dict[str, str]:
    return {
        labels.MANAGED: "true",
        labels.ROLE: ROLE_FIREWALL,
        labels.VERSION: version,
        FIREWALL_BRIDGE: facts.bridge,
        FIREWALL_DIGEST: policy.digest(facts),
        FIREWALL_BOOT_ID: boot_id,
        FIREWALL_APPLIED_AT: applied_at,
        FIREWALL_SUMMARY: policy.summary(),
    }


def marker_problems(marker: Mapping | None, facts: NetworkFacts, policy: IsolationPolicy,
                    boot_id: str) -> list[str]:
    """Does the mark `firewall apply` left say the rules were made for this network,
    these settings and this boot of the host (rules do not survive a reboot)?"""
    if marker is None:
        return [(f"no firewall marker (volume {marker_name(facts.name)}): "
                 "`hardened-spawner firewall apply` has not run for this network")]
    problems = []
    if marker.get(FIREWALL_BRIDGE) != facts.bridge:
        problems.append(f"the firewall was applied for bridge {marker.get(FIREWALL_BRIDGE)!r}, "
                        f"not {facts.bridge!r}")
    elif marker.get(FIREWALL_DIGEST) != policy.digest(facts):
        problems.append(f"the firewall was applied with other settings "
                        f"({marker.get(FIREWALL_SUMMARY)}) than this hub's ({policy.summary()})")
    if boot_id and marker.get(FIREWALL_BOOT_ID) != boot_id:
        problems.append(f"the firewall was applied before the host's last reboot "
                        f"({marker.get(FIREWALL_APPLIED_AT)}); iptables rules do not survive one")
    return problems


def read_boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


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
