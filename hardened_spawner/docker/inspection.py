"""What the admin commands report, from what the engine says (pure).

`docker inspect` dicts in, check reports out; `docker ps` label dicts and a
`GpuAllocator` in, GPU rows out; and their renderings for people (a table)
and for machines (JSON with stable keys). Nothing here talks to the engine:
`cli` fetches, these functions decide and format, so every line an admin
reads can be tested from literal dicts.

The check itself is `guard.check_container`, the very function the spawner
runs before it creates a container: an audit can never disagree with what
the spawner enforces.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from .. import labels
from ..core.gpus import GpuAllocator, GpuSummary, _index_key, relatives
from ..core.violations import Violation
from ..gpu_broker import holder_key
from .guard import GuardPolicy, check_container, rule_for
from .holdings import holdings_from_containers
from .workspace import identity_file_sources

#: The benchmark whose item numbers the reports quote.
CIS_BENCHMARK = "CIS Docker Benchmark v1.6.0"

#: The benchmark's items that a container's own settings decide and that the
#: guard's checks cover, worded as far as the guard checks them (5.2 and 5.3:
#: the guard refuses switching AppArmor or SELinux labelling off; it does not
#: require a profile where the engine has none).
CIS_ITEMS = {
    "4.1": "a user for the container has been created (it does not run as root)",
    "5.2": "AppArmor is not switched off",
    "5.3": "SELinux labelling is not switched off",
    "5.4": "Linux kernel capabilities are restricted",
    "5.5": "privileged containers are not used",
    "5.6": "sensitive host system directories are not mounted",
    "5.8": "privileged ports are not mapped within containers (no port is published)",
    "5.9": "only needed ports are open on the container (none is published)",
    "5.10": "the host's network namespace is not shared",
    "5.11": "memory usage is limited",
    "5.13": "the root filesystem is mounted read-only",
    "5.14": "incoming container traffic is bound to a specific host interface (none is published)",
    "5.15": "the restart policy is not always/unless-stopped, and on-failure retries at most 5 times",
    "5.16": "the host's process namespace is not shared",
    "5.17": "the host's IPC namespace is not shared",
    "5.18": "host devices are not directly exposed",
    "5.20": "the mount propagation mode is not set to shared",
    "5.21": "the host's UTS namespace is not shared",
    "5.22": "the default seccomp profile is not disabled",
    "5.25": "the container's cgroup is the engine's own (no cgroup parent)",
    "5.26": "the container cannot acquire additional privileges",
    "5.27": "container health is checked at runtime",
    "5.29": "the PIDs cgroup limit is used",
    "5.30": "the host's default bridge is not used",
    "5.31": "the host's user namespace is not shared",
    "5.32": "the Docker socket is not mounted",
}

def _cis_key(item: str) -> tuple[int, ...]:
    return tuple(int(part) for part in item.split("."))


def cis_items_of(violation: Violation, host_config: dict) -> tuple[str, ...]:
    """The CIS items one violation fails, as its guard rule says; () for rules of ours the
    benchmark lacks."""
    return rule_for(violation.check).cis_items(violation, host_config)


# --- check ----------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One violation as the admin commands show it."""

    check: str
    key: str
    setting: str
    problem: str
    fix: str
    cis: tuple[str, ...]

    def as_dict(self) -> dict:
        return {
            "check": self.check,
            "key": self.key,
            "setting": self.setting,
            "problem": self.problem,
            "fix": self.fix,
            "cis": list(self.cis),
        }


@dataclass(frozen=True)
class ContainerReport:
    """One container, who it belongs to, and every way it breaks the policy."""

    id: str
    name: str
    state: str
    managed: bool
    owner: str  # the owner label; "" when the container has none
    server_name: str
    user: str  # Config.User as the engine runs it; "" is the image's default user
    image: str
    findings: tuple[Finding, ...]

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def cis_failed(self) -> list[str]:
        return sorted({item for f in self.findings for item in f.cis}, key=_cis_key)

    @property
    def cis_passed(self) -> list[str]:
        failed = set(self.cis_failed)
        return sorted((item for item in CIS_ITEMS if item not in failed), key=_cis_key)

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "state": self.state,
            "managed": self.managed,
            "owner": self.owner,
            "server_name": self.server_name,
            "user": self.user,
            "image": self.image,
            "ok": self.ok,
            "violations": [f.as_dict() for f in self.findings],
            "cis_passed": self.cis_passed,
            "cis_failed": self.cis_failed,
        }


def _uid_of(inspect: dict) -> int | None:
    """The UID the container runs as (``Config.User``), else its UID label."""
    user = (inspect.get("Config") or {}).get("User") or ""
    uid = user.split(":")[0]
    if not uid.isdigit():
        uid = ((inspect.get("Config") or {}).get("Labels") or {}).get(labels.UID, "")
    return int(uid) if uid.isdigit() else None


def guard_policy_for(
    inspect: dict, allowed_cap_add: frozenset[str], identity_mountpoint: str | None
) -> GuardPolicy:
    """The policy the spawner applied to this container: the configured
    capability allowlist, and as the only allowed binds the two account files
    the spawner generates for the UID the container runs as."""
    uid = _uid_of(inspect)
    sources: frozenset[str] = frozenset()
    if identity_mountpoint and uid is not None:
        sources = frozenset(identity_file_sources(identity_mountpoint, uid))
    return GuardPolicy(allowed_cap_add=frozenset(allowed_cap_add), allowed_bind_sources=sources)


def report_container(
    inspect: dict, allowed_cap_add: frozenset[str], identity_mountpoint: str | None
) -> ContainerReport:
    """Check one container (a `docker inspect` dict) with the spawner's own guard."""
    config = inspect.get("Config") or {}
    host_config = inspect.get("HostConfig") or {}
    container_labels = config.get("Labels") or {}
    policy = guard_policy_for(inspect, allowed_cap_add, identity_mountpoint)
    findings = tuple(
        Finding(v.check, v.key, v.setting, v.problem, v.fix, cis_items_of(v, host_config))
        for v in check_container(config, host_config, policy)
    )
    return ContainerReport(
        id=inspect.get("Id", ""),
        name=(inspect.get("Name") or "").lstrip("/"),
        state=(inspect.get("State") or {}).get("Status", ""),
        managed=container_labels.get(labels.MANAGED) == "true",
        owner=container_labels.get(labels.OWNER, ""),
        server_name=container_labels.get(labels.SERVER_NAME, ""),
        user=config.get("User") or "",
        image=config.get("Image", ""),
        findings=findings,
    )


@dataclass(frozen=True)
class NetworkReport:
    """Is the users' network isolation in place, as the hub would check it?"""

    network: str
    checked_by: str  # "iptables", "probe", or "none" when it could not be checked
    problems: tuple[str, ...]
    fix: str = ""  # the admin command that puts the rules in place

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        return {"network": self.network, "checked_by": self.checked_by, "ok": self.ok,
                "problems": list(self.problems), "fix": self.fix}


def check_exit_status(reports: list[ContainerReport], network: NetworkReport | None = None) -> int:
    """0 when every container keeps the policy (and the network isolation is in place), 1 otherwise."""
    return 0 if all(r.ok for r in reports) and (network is None or network.ok) else 1


def check_as_json(reports: list[ContainerReport], network: NetworkReport | None = None) -> str:
    """``{"containers": [...], "network_isolation": {...}}``; the network is null when only
    named containers were checked."""
    return json.dumps(
        {"containers": [r.as_dict() for r in reports],
         "network_isolation": network.as_dict() if network else None},
        indent=2,
    )


def network_as_text(network: NetworkReport) -> str:
    if network.ok:
        return f"Network isolation of {network.network}: in place (checked by {network.checked_by}).\n"
    lines = [f"Network isolation of {network.network}: NOT in place (checked by {network.checked_by}):"]
    lines += [f"    {problem}" for problem in network.problems]
    if network.fix:
        lines.append(f"      fix: {network.fix}")
    return "\n".join(lines) + "\n"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _owner_text(report: ContainerReport) -> str:
    if not report.managed:
        return "(not managed)"
    owner = report.owner or "?"
    return f"{owner}/{report.server_name}" if report.server_name else owner


def check_as_table(reports: list[ContainerReport], *, everything: bool = False) -> str:
    """One line per container (OK or its violation count), its violations indented below."""
    if not reports:
        return "No containers found.\n" if everything else "No managed server containers found.\n"
    rows = [
        (
            "OK" if r.ok else _plural(len(r.findings), "violation"),
            r.name,
            f"owner={_owner_text(r)}",
            f"user={r.user or '(image default)'}",
            r.state,
        )
        for r in reports
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = []
    for report, row in zip(reports, rows):
        cells = [cell.ljust(width) for cell, width in zip(row, widths)] + [row[4]]
        lines.append("  ".join(cells).rstrip())
        for f in report.findings:
            where = f.key + (f"; CIS {', '.join(f.cis)}" if f.cis else "")
            lines.append(f"    {f.check} ({where}): {f.problem}")
            lines.append(f"      fix: {f.fix}")
    bad = [r for r in reports if not r.ok]
    lines.append("")
    lines.append(
        f"{_plural(len(reports), 'container')} checked: {len(reports) - len(bad)} OK, "
        f"{len(bad)} breaking the policy"
        + (f" ({_plural(sum(len(r.findings) for r in bad), 'violation')})." if bad else ".")
    )
    lines.append(f"The checks cover {CIS_BENCHMARK} items {', '.join(CIS_ITEMS)}.")
    return "\n".join(lines) + "\n"


def hub_start_log_lines(reports: list[ContainerReport]) -> list[tuple[int, str]]:
    """(log level, message): a warning per container breaking the policy, then a summary."""
    lines = []
    for r in reports:
        if not r.ok:
            message = (
                f"Container {r.name} (owner {_owner_text(r)}) breaks the security policy: "
                f"{', '.join(f.check for f in r.findings)}. "
                "Run `hardened-spawner check` for the details and fixes."
            )
            lines.append((logging.WARNING, message))
    bad = len(lines)
    summary = (
        f"Checked {_plural(len(reports), 'managed server container')} at hub start: "
        f"{len(reports) - bad} OK, {bad} breaking the security policy."
    )
    lines.append((logging.INFO, summary))
    return lines


# --- gpus -----------------------------------------------------------------


@dataclass(frozen=True)
class GpuHolder:
    owner: str
    server_name: str
    since: str  # ISO 8601, from the gpus-since label

    def as_dict(self) -> dict:
        return {"owner": self.owner, "server_name": self.server_name, "since": self.since}


@dataclass(frozen=True)
class GpuRow:
    """One device and who holds it.

    ``state``: "assigned" (held), "free", "blocked" (its whole GPU or one of
    its MIG slices is held), "outside pool" (gpu_pool leaves it out), or
    "not in inventory" (a running server holds a device the config no longer lists).
    """

    index: str
    uuid: str
    name: str
    state: str
    holders: tuple[GpuHolder, ...]

    def as_dict(self) -> dict:
        return {
            "index": self.index,
            "uuid": self.uuid,
            "name": self.name,
            "state": self.state,
            "holders": [h.as_dict() for h in self.holders],
        }


@dataclass(frozen=True)
class GpuReport:
    rows: tuple[GpuRow, ...]
    summary: GpuSummary
    warnings: tuple[str, ...]

    def as_dict(self) -> dict:
        return {
            "devices": [row.as_dict() for row in self.rows],
            "total": self.summary.total,
            "assigned": self.summary.assigned,
            "free": self.summary.free,
            "warnings": list(self.warnings),
        }


def gpu_report(allocator: GpuAllocator, containers: list[dict]) -> GpuReport:
    """Who holds which device, from running managed servers (``docker ps`` shape).

    The allocator is rebuilt from those containers' labels exactly as the hub
    rebuilds its table after a restart, so this shows what the hub would decide.
    """
    holdings = holdings_from_containers(containers)
    warnings = allocator.rebuild(holdings)
    names = {}
    for container in containers:
        found = container.get("Labels") or {}
        owner, server = found.get(labels.OWNER, "?"), found.get(labels.SERVER_NAME, "")
        names[holder_key(owner, server)] = (owner, server)
    since = {h.user: h.since.isoformat() for h in allocator.holdings()}

    def holders_of(uuid: str) -> tuple[GpuHolder, ...]:
        return tuple(
            GpuHolder(*names.get(key, (key, "")), since=since.get(key, ""))
            for key in allocator.holder_of(uuid)
        )

    pool = allocator.policy.pool
    held = {uuid for h in allocator.holdings() for uuid in h.devices}
    inventory = sorted(allocator.inventory, key=lambda d: _index_key(d.index))
    related = relatives(inventory)
    rows = []
    for d in inventory:
        if d.uuid in held:
            state = "assigned"
        elif related.get(d.uuid, set()) & held:
            state = "blocked"
        elif pool is not None and d.uuid not in pool:
            state = "outside pool"
        else:
            state = "free"
        rows.append(GpuRow(d.index, d.uuid, d.name, state, holders_of(d.uuid)))
    known = {d.uuid for d in inventory}
    for uuid in sorted(held - known):
        rows.append(GpuRow("?", uuid, "", "not in inventory", holders_of(uuid)))
    return GpuReport(tuple(rows), allocator.summary(), tuple(warnings))


def gpus_as_json(report: GpuReport) -> str:
    return json.dumps(report.as_dict(), indent=2)


def gpus_as_table(report: GpuReport) -> str:
    header = ("INDEX", "UUID", "NAME", "STATE", "HELD BY", "SINCE")
    rows = []
    for row in report.rows:
        first = (row.index, row.uuid, row.name, row.state)
        if not row.holders:
            rows.append(first + ("", ""))
        for n, h in enumerate(row.holders):
            who = f"{h.owner}/{h.server_name}" if h.server_name else h.owner
            rows.append((first if n == 0 else ("", "", "", "")) + (who, h.since))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    if not report.rows:
        lines = ["No GPUs in the inventory (HardenedSpawner.gpu_inventory)."]
    s = report.summary
    lines.append("")
    lines.append(f"{_plural(s.total, 'GPU')} in the pool: {s.assigned} assigned, {s.free} free.")
    lines.extend(f"warning: {w}" for w in report.warnings)
    return "\n".join(lines) + "\n"
