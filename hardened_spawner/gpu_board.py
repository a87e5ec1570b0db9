"""The GPU board and GPU reclaiming, as pure functions of the broker's table.

The board says, for every device in the pool, whether it is free or busy and since
when, who holds it (or "another user", where the admin keeps names private), and for
the person looking: their quota, what they hold, when an idle server of theirs gives
its GPUs back, and their usage this month (`usage_view`; admins see every user's). `due` says which holders are to be stopped now and why
(``gpu-idle``: no activity the hub has seen for ``gpu_idle_timeout``; ``gpu-max-hold``:
held for ``gpu_max_hold``, active or not). The hub's pages render the board; the GPU
culler service acts on `due`. Nothing here reads traits, the engine or the clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from .core.gpus import GpuAllocator, Holding
from .usage import Row

SCOPE_READ = "custom:gpus:read"
SCOPE_RECLAIM = "custom:gpus:reclaim"
SCOPES = {
    SCOPE_READ: {"description": "See the GPU board: every GPU, free or busy, and who holds it."},
    SCOPE_RECLAIM: {"description": "Stop a server that holds GPUs, with the reason in the audit trail."},
}
#: the hub service that asks for due GPUs back (`gpu_culler`)
CULLER = "gpu-culler"
IDLE, MAX_HOLD = "gpu-idle", "gpu-max-hold"
ANOTHER_USER = "another user"


@dataclass(frozen=True)
class ReclaimRule:
    """When a server holding GPUs is stopped; 0 turns either limit off."""

    idle_timeout: int = 0  # seconds without activity the hub has seen
    max_hold: int = 0  # seconds since the GPUs were assigned

    def deadline(self, since: datetime, last_activity: datetime | None) -> tuple[datetime, str] | None:
        """The earliest time this holding is reclaimed, and why; None when it never is.
        Activity before the GPUs were assigned does not count: a restart starts afresh."""
        found = []
        if self.idle_timeout:
            active = max(since, last_activity) if last_activity else since
            found.append((active + timedelta(seconds=self.idle_timeout), IDLE))
        if self.max_hold:
            found.append((since + timedelta(seconds=self.max_hold), MAX_HOLD))
        return min(found) if found else None


@dataclass(frozen=True)
class Viewer:
    """Who looks: their name and groups (for the quota), and what they may see."""

    name: str
    groups: tuple[str, ...] = ()
    sees_everyone: bool = False  # admins and the culler see names and server names


def due(holdings: list[Holding], activity: Mapping[str, datetime | None], rule: ReclaimRule,
        now: datetime) -> list[dict]:
    """The servers to stop now: ``{"user", "server", "reason"}``, oldest holding first."""
    found = []
    for holding in sorted(holdings, key=lambda h: h.since):
        deadline = rule.deadline(holding.since, activity.get(holding.user))
        if deadline and deadline[0] <= now:
            found.append({"user": holding.person, "server": holding.server, "reason": deadline[1]})
    return found


def usage_view(rows: Sequence[Row] | None, viewer: Viewer, *, since: datetime, until: datetime,
               problem: str = "") -> dict:
    """The usage part of the board: the viewer's own GPU-hours held and server-hours over the
    period (the month so far), and for those who see everyone, every user's, most GPU time
    first. ``rows``: `usage.totals` by user; None when there is no trail to count from
    (``problem`` says why)."""
    def hours(row: Row | None) -> dict:
        gpu, server = (row.gpu_seconds, row.server_seconds or 0.0) if row else (0.0, 0.0)
        return {"gpu_hours": round(gpu / 3600, 2), "server_hours": round(server / 3600, 2),
                "gpu_seconds": round(gpu), "server_seconds": round(server),
                "estimated": row.estimated if row else False}

    you, users = hours(None), []
    for row in rows or ():
        if row.key == viewer.name:
            you = hours(row)
        if viewer.sees_everyone:
            users.append({"user": row.key, **hours(row)})
    return {"since": since.isoformat(), "until": until.isoformat(), "available": rows is not None,
            "problem": problem, "you": you, "users": users}


def board(allocator: GpuAllocator, activity: Mapping[str, datetime | None], rule: ReclaimRule,
          viewer: Viewer, *, names_public: bool, now: datetime, usage: dict | None = None) -> dict:
    """The board as JSON-ready data (the page renders the same dict the API returns);
    ``usage``: `usage_view`'s, None where the usage is not shown."""
    holdings = allocator.holdings()
    by_device: dict[str, list[Holding]] = {}
    for holding in holdings:
        for uuid in holding.devices:
            by_device.setdefault(uuid, []).append(holding)
    summary = allocator.summary()
    devices = [
        _device(d, by_device.get(d.uuid, []), allocator, activity, rule, viewer, names_public)
        for d in allocator.pool()
    ]
    mine = [h for h in holdings if h.person == viewer.name]
    return {
        "now": now.isoformat(),
        "summary": {"total": summary.total, "busy": summary.total - summary.free, "free": summary.free},
        "reclaim": {"idle_timeout": rule.idle_timeout, "max_hold": rule.max_hold},
        "devices": devices,
        "you": {
            "user": viewer.name,
            "limit": allocator.user_limit(viewer.name, viewer.groups),
            "holding": [_holding(h, activity, rule) for h in mine],
        },
        "due": due(holdings, activity, rule, now) if viewer.sees_everyone else [],
        "usage": usage,
    }


def _device(device, holders: list[Holding], allocator: GpuAllocator, activity, rule: ReclaimRule,
            viewer: Viewer, names_public: bool) -> dict:
    blocked = not holders and allocator.blocked_by_relative(device.uuid)
    return {
        "uuid": device.uuid,
        "index": device.index,
        "name": device.name,
        "state": "busy" if holders else "blocked" if blocked else "free",
        "since": min(h.since for h in holders).isoformat() if holders else None,
        "holders": [_holder(h, activity, rule, viewer, names_public) for h in holders],
    }


def _holder(holding: Holding, activity, rule: ReclaimRule, viewer: Viewer, names_public: bool) -> dict:
    mine = holding.person == viewer.name
    named = mine or names_public or viewer.sees_everyone
    shown = {"user": holding.person if named else ANOTHER_USER, "mine": mine,
             "since": holding.since.isoformat()}
    if mine or viewer.sees_everyone:  # the server name and its deadline are the holder's business
        shown.update(_holding(holding, activity, rule))
    return shown


def _holding(holding: Holding, activity, rule: ReclaimRule) -> dict:
    last = activity.get(holding.user)
    deadline = rule.deadline(holding.since, last)
    return {
        "server": holding.server,
        "devices": list(holding.devices),
        "since": holding.since.isoformat(),
        "last_activity": last.isoformat() if last else None,
        "reclaim_at": deadline[0].isoformat() if deadline else None,
        "reclaim_reason": deadline[1] if deadline else None,
    }


def culler_missing(rule: ReclaimRule, service_names) -> str:
    """The hub-start warning for timeouts that nothing acts on ("" when all is well)."""
    if (rule.idle_timeout or rule.max_hold) and CULLER not in service_names:
        return ("HardenedSpawner.gpu_idle_timeout / gpu_max_hold are set, but no gpu-culler service "
                "runs, so no GPU is reclaimed: call hardened_spawner.gpu_pages.enable(c) in "
                "jupyterhub_config.py.")
    return ""
