"""The checks both the hub (at its start) and the admin's `hardened-spawner check` run.

Plain functions over a docker-py ``APIClient`` (or anything with its methods) and a
validated spawner; the decisions and renderings are pure, in `inspection`. The hub's
start (`hubstart`) and the CLI (`cli`) import this module; it imports neither.
"""

from __future__ import annotations

import logging

import docker.errors
from traitlets.config import Config

from ..core.egress import NetworkConfigError
from ..errors import CannotCheck
from ..labels import MANAGED_SERVERS
from .hub_context import UNREACHABLE as _ENGINE_ERRORS
from .hub_context import EngineUnavailable, unreachable_message
from .inspection import ContainerReport, NetworkReport, hub_start_log_lines, report_container
from .isolation import docker_network, verify
from .isolation.policy import (
    apply_command,
    hub_endpoint_from_config,
    isolation_settings,
    policy_from_settings,
)
from .workspace import IDENTITY_VOLUME


def engine_client(spawner):
    """The spawner's own docker-py client (same DOCKER_HOST, TLS and client_kwargs as the hub)."""
    try:
        return spawner.client
    except _ENGINE_ERRORS as e:
        raise CannotCheck(cannot_reach_message(spawner, e)) from None


def cannot_reach_message(spawner, error: Exception) -> str:
    if isinstance(error, EngineUnavailable):
        return str(error)
    return unreachable_message(spawner.context.address, error)


def identity_mountpoint(client) -> str | None:
    """Where the engine keeps the generated passwd/group files; None before any spawn."""
    try:
        return client.inspect_volume(IDENTITY_VOLUME)["Mountpoint"]
    except docker.errors.NotFound:
        return None


def audit_containers(
    client,
    allowed_cap_add: frozenset[str],
    *,
    everything: bool = False,
    names: tuple[str, ...] = (),
    running_only: bool = False,
) -> list[ContainerReport]:
    """Reports for the managed server containers, or every container
    (``everything``), or just the ones named (names or ids); stopped ones too
    unless ``running_only``."""
    if names:
        ids = list(names)
    else:
        filters = None if everything else MANAGED_SERVERS
        ids = [c["Id"] for c in client.containers(all=not running_only, filters=filters)]
    mountpoint = identity_mountpoint(client)
    reports = []
    for container_id in ids:
        try:
            inspect = client.inspect_container(container_id)
        except docker.errors.NotFound:
            if names:
                raise CannotCheck(f"There is no container {container_id}.") from None
            continue  # removed since the listing: nothing left to check
        reports.append(report_container(inspect, allowed_cap_add, mountpoint))
    return sorted(reports, key=lambda r: (r.name, r.id))


#: said by the hub at start and by `check` when the admin turned the isolation off
ISOLATION_OFF = ("HardenedSpawner.network_isolation is False: users' servers can reach each other, "
                 "the cloud metadata service and private networks.")


def network_report(client, spawner, config: Config) -> NetworkReport:
    """The users' network isolation, checked as the hub checks it (`isolation.verify`),
    with the hub's address from its config."""
    name = spawner.network_name
    if not spawner.network_isolation:
        return NetworkReport(name, "none", (ISOLATION_OFF,), "set it to True")
    try:
        endpoint = hub_endpoint_from_config(config.get("JupyterHub") or {})
        policy = policy_from_settings(isolation_settings(spawner, *endpoint))
    except NetworkConfigError as e:
        return NetworkReport(name, "none", (f"cannot tell what the rules must allow: {e}",))
    fix = "as root on the Docker host: " + apply_command(name, policy)
    facts = docker_network.load_network(client, name)
    if facts is None:
        return NetworkReport(name, "none", (
            f"the users' network {name} does not exist yet (the hub creates it when it starts)",), fix)
    method, problems = verify.verify(
        client, facts, policy, method=spawner.firewall_check_method, image=spawner.image
    )
    return NetworkReport(name, method, tuple(problems), fix if problems else "")


def audit_at_hub_start(spawner, log: logging.Logger) -> None:
    """Check the managed server containers already there when the hub starts and log what
    is found. Runs in a thread while the hub starts; never raises."""
    try:
        client = engine_client(spawner)
        # running servers only: stopped ones are removed at their next start anyway,
        # and inspecting hundreds of them would slow the hub's start
        reports = audit_containers(client, frozenset(spawner.cap_add), running_only=True)
    except (CannotCheck, *_ENGINE_ERRORS) as e:
        why = e if isinstance(e, CannotCheck) else cannot_reach_message(spawner, e)
        log.warning("Could not check the existing server containers at hub start: %s", why)
        return
    except Exception:
        log.exception("Checking the existing server containers at hub start failed")
        return
    for level, message in hub_start_log_lines(reports):
        log.log(level, message)
