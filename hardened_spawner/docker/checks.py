"""The checks both the hub (at its start) and the admin's `hardened-spawner check` run.

Plain functions over a docker-py ``APIClient`` (or anything with its methods) and a
validated spawner; the decisions and renderings are pure, in `inspection`. The hub's
start (`hubstart`) and the CLI (`cli`) import this module; it imports neither.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import docker.errors
from traitlets.config import Config

from .. import labels
from ..core.egress import NetworkConfigError
from ..core.quota import BTRFS, NO_QUOTA
from ..errors import CannotCheck
from ..labels import MANAGED_SERVERS
from . import quota
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


# --- workspace quotas (issue 28) ----------------------------------------------------

#: the engine's filter for every hardened hub's workspace volumes
WORKSPACES = {"label": [f"{labels.MANAGED}=true", f"{labels.ROLE}={labels.ROLE_WORKSPACE}"]}


@dataclass(frozen=True)
class WorkspaceQuota:
    """One workspace volume's quota as the engine and the host say it: ``method`` is
    `core.quota`'s (``btrfs``, ``xfs``, ``none``); ``limit`` the XFS size or the btrfs
    qgroup's limit, ``used`` what the qgroup counts (None where it cannot be read)."""

    volume: str
    owner: str
    uid: str
    method: str
    limit: int | None = None
    used: int | None = None
    problem: str = ""  # why the limit could not be read


@dataclass(frozen=True)
class WorkspaceQuotaReport:
    """The workspaces, judged against the quota settings (``asked``: their words)."""

    asked: str
    required: bool
    setting: str  # "HardenedSpawner"
    workspaces: tuple[WorkspaceQuota, ...]

    @property
    def without_quota(self) -> list[WorkspaceQuota]:
        return [w for w in self.workspaces if w.method == NO_QUOTA or (w.method == BTRFS and w.limit is None
                                                                          and not w.problem)]


def workspace_quotas(client, btrfs_root: str, run: quota.Runner = quota.run_as_given) -> list[WorkspaceQuota]:
    """Every hardened workspace volume on the engine with its quota; a btrfs one's limit and
    use are read on the host (as root), else its problem says why not."""
    found = []
    for volume in client.volumes(filters=WORKSPACES).get("Volumes") or []:
        volume_labels = volume.get("Labels") or {}
        held = quota.volume_quota(volume, btrfs_root)
        row = WorkspaceQuota(volume["Name"], volume_labels.get(labels.OWNER, ""), volume_labels.get(labels.UID, ""),
                             held.method, held.size)
        if held.method == BTRFS:
            try:
                used, limit = quota.read_limit(held.path, run)
                row = WorkspaceQuota(row.volume, row.owner, row.uid, BTRFS, limit, used)
            except quota.BtrfsError as e:
                row = WorkspaceQuota(row.volume, row.owner, row.uid, BTRFS, problem=str(e))
        found.append(row)
    return sorted(found, key=lambda w: w.volume)


def workspace_quota_report(client, spawner, run: quota.Runner = quota.run_as_given) -> WorkspaceQuotaReport | None:
    """The workspaces and their quotas, when the settings ask for quotas (None otherwise)."""
    if not spawner.quota_policy().asks_for_quotas:
        return None
    return WorkspaceQuotaReport(spawner.quota_summary(), spawner.workspace_quota_required,
                                type(spawner).__name__, tuple(workspace_quotas(client, spawner.workspace_btrfs_root, run)))


def workspace_quota_as_text(report: WorkspaceQuotaReport | None) -> str:
    """``check``'s paragraph: the workspaces without a quota (made before quotas were set, or
    where none could be enforced), each with its owner; btrfs limits that cannot be read."""
    if report is None or not report.workspaces:
        return ""
    missing = report.without_quota
    lines = [f"Workspaces without a quota ({report.setting}.workspace_quota is {report.asked}): "
             f"{len(missing)} of {len(report.workspaces)}."]
    lines += [f"    {w.volume}  owner={w.owner or '?'}  uid={w.uid or '?'}" for w in missing]
    unread = [w for w in report.workspaces if w.problem]
    lines += [f"    {w.volume}: its btrfs limit could not be read ({w.problem})" for w in unread]
    if missing:
        lines.append("  They are used as they are; move their files into a new workspace to give them one"
                     + (f" ({report.setting}.workspace_quota_required refuses their spawns)." if report.required
                        else "."))
    return "\n".join(lines) + "\n"


def workspace_quota_as_json(report: WorkspaceQuotaReport | None) -> dict | None:
    if report is None:
        return None
    return {
        "asked": report.asked,
        "required": report.required,
        "workspaces": [
            {"volume": w.volume, "owner": w.owner, "uid": w.uid, "method": w.method, "limit": w.limit,
             "used": w.used, "problem": w.problem or None} for w in report.workspaces
        ],
        "without_quota": [w.volume for w in report.without_quota],
    }


def workspace_quota_exit_status(report: WorkspaceQuotaReport | None) -> int:
    """1 when quotas are required and a workspace has none; informational otherwise."""
    return int(bool(report and report.required and report.without_quota))
