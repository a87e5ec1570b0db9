"""The GPU board and GPU reclaiming, as pure functions of the broker's table.

The board says, for every device in the pool, whether it is free or busy and since
when, who holds it (or "another user", where the admin keeps names private), and for
the person looking: their quota, what they hold, when an idle server of theirs gives
its GPUs back (with a warning once that is near), and their usage this month
(`usage_view`; admins see every user's). Where the hub samples utilisation (`gpu_sampler`),
each device shows its utilisation and memory. `due` says which holders are to be stopped
now and why (``gpu-idle``: no activity the hub has seen for ``gpu_idle_timeout``;
``gpu-max-hold``: held for ``gpu_max_hold``, active or not; ``gpu-underused``: its GPUs
under ``gpu_underused_percent`` at every sample for ``gpu_underused_timeout``, however busy
its kernel). The hub's pages render the board; the GPU culler service acts on `due`.
Nothing here reads traits, the engine or the clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from .core.gpus import GpuAllocator, Holding
from .core.utilisation import DeviceReading
from .usage import Row

SCOPE_READ = "custom:gpus:read"
SCOPE_RECLAIM = "custom:gpus:reclaim"
SCOPES = {
    SCOPE_READ: {"description": "See the GPU board: every GPU, free or busy, and who holds it."},
    SCOPE_RECLAIM: {"description": "Stop a server that holds GPUs, with the reason in the audit trail."},
}
#: the hub service that asks for due GPUs back (`gpu_culler`)
CULLER = "gpu-culler"
IDLE, MAX_HOLD, UNDERUSED = "gpu-idle", "gpu-max-hold", "gpu-underused"
ANOTHER_USER = "another user"


@dataclass(frozen=True)
class ReclaimRule:
    """When a server holding GPUs is stopped; 0 turns a limit off."""

    idle_timeout: int = 0  # seconds without activity the hub has seen
    max_hold: int = 0  # seconds since the GPUs were assigned
    underused_timeout: int = 0  # seconds under underused_percent at every sample
    underused_percent: int = 5
    warning: int = 0  # seconds before the deadline from which the holder is warned

    def deadline(self, since: datetime, last_activity: datetime | None,
                 low_since: datetime | None = None) -> tuple[datetime, str] | None:
        """The earliest time this holding is reclaimed, and why; None when it never is.
        Activity before the GPUs were assigned does not count: a restart starts afresh.
        ``low_since``: since when its GPUs are underused (`core.utilisation.UnderuseWatch`),
        None when they are not (or nobody knows)."""
        found = []
        if self.idle_timeout:
            active = max(since, last_activity) if last_activity else since
            found.append((active + timedelta(seconds=self.idle_timeout), IDLE))
        if self.max_hold:
            found.append((since + timedelta(seconds=self.max_hold), MAX_HOLD))
        if self.underused_timeout and low_since is not None:
            found.append((max(since, low_since) + timedelta(seconds=self.underused_timeout), UNDERUSED))
        return min(found) if found else None

    def warning_text(self, deadline: tuple[datetime, str] | None, now: datetime) -> str:
        """What the holder reads once the deadline is ``warning`` seconds away ("" before)."""
        if deadline is None or not self.warning or now < deadline[0] - timedelta(seconds=self.warning):
            return ""
        at, reason = deadline
        left = _minutes(max(0.0, (at - now).total_seconds()))
        if reason == UNDERUSED:
            gone = _minutes(self.underused_timeout - max(0.0, (at - now).total_seconds()))
            return (f"Your GPU has been under {self.underused_percent} % busy for {gone}; it goes back to "
                    f"the pool in {left}. Run GPU work to keep it, or save your work: the server stops then.")
        if reason == IDLE:
            return (f"Your server holding GPUs has had no activity for a while; its GPUs go back to the pool "
                    f"in {left}. Use the server to keep them, or save your work: the server stops then.")
        return (f"Your server has held its GPUs for the longest time allowed; they go back to the pool in "
                f"{left}. Save your work: the server stops then.")


def _minutes(seconds: float) -> str:
    minutes = round(seconds / 60)
    if minutes < 1:
        return "less than a minute" if seconds < 60 else "1 minute"
    return "1 minute" if minutes == 1 else f"{minutes} minutes"


@dataclass(frozen=True)
class Viewer:
    """Who looks: their name and groups (for the quota), and what they may see."""

    name: str
    groups: tuple[str, ...] = ()
    sees_everyone: bool = False  # admins and the culler see names and server names


def due(holdings: list[Holding], activity: Mapping[str, datetime | None], rule: ReclaimRule,
        now: datetime, low_since: Mapping[str, datetime] | None = None) -> list[dict]:
    """The servers to stop now: ``{"user", "server", "reason"}``, oldest holding first.
    ``low_since``: per holder, since when its GPUs are underused (absent: they are not)."""
    found = []
    low_since = low_since or {}
    for holding in sorted(holdings, key=lambda h: h.since):
        deadline = rule.deadline(holding.since, activity.get(holding.user), low_since.get(holding.user))
        if deadline and deadline[0] <= now:
            found.append({"user": holding.person, "server": holding.server, "reason": deadline[1]})
    return found


def usage_view(rows: Sequence[Row] | None, viewer: Viewer, *, since: datetime, until: datetime,
               problem: str = "") -> dict:
    """The usage part of the board: the viewer's own GPU-hours held and server-hours over the
    period (the month so far), and for those who see everyone, every user's, most GPU time
    first. ``rows``: `usage.totals` by user; None when there is no trail to count from
    (``problem`` says why)."""
    measured = any(row.used_seconds is not None for row in rows or ())

    def hours(row: Row | None) -> dict:
        gpu, server = (row.gpu_seconds, row.server_seconds or 0.0) if row else (0.0, 0.0)
        used = (row.used_seconds or 0.0) if row else 0.0
        return {"gpu_hours": round(gpu / 3600, 2), "server_hours": round(server / 3600, 2),
                "gpu_used_hours": round(used / 3600, 2) if measured else None,
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


@dataclass(frozen=True)
class Sampled:
    """What the GPU sampler knows now: the latest reading per device and since when each
    holder's GPUs are underused; empty where the hub does not sample."""

    readings: Mapping[str, DeviceReading]
    low_since: Mapping[str, datetime]
    at: datetime | None = None


NOT_SAMPLED = Sampled({}, {})


def board(allocator: GpuAllocator, activity: Mapping[str, datetime | None], rule: ReclaimRule,
          viewer: Viewer, *, names_public: bool, now: datetime, usage: dict | None = None,
          sampled: Sampled = NOT_SAMPLED) -> dict:
    """The board as JSON-ready data (the page renders the same dict the API returns);
    ``usage``: `usage_view`'s, None where the usage is not shown."""
    holdings = allocator.holdings()
    seen = _Seen(activity, rule, sampled.low_since, now)
    by_device: dict[str, list[Holding]] = {}
    for holding in holdings:
        for uuid in holding.devices:
            by_device.setdefault(uuid, []).append(holding)
    summary = allocator.summary()
    devices = [
        _device(d, by_device.get(d.uuid, []), allocator, seen, viewer, names_public, sampled.readings.get(d.uuid))
        for d in allocator.pool()
    ]
    mine = [h for h in holdings if h.person == viewer.name]
    return {
        "now": now.isoformat(),
        "summary": {"total": summary.total, "busy": summary.total - summary.free, "free": summary.free},
        "reclaim": {"idle_timeout": rule.idle_timeout, "max_hold": rule.max_hold,
                    "underused_timeout": rule.underused_timeout, "underused_percent": rule.underused_percent,
                    "warning": rule.warning},
        "sampled_at": sampled.at.isoformat() if sampled.at else None,
        "devices": devices,
        "you": {
            "user": viewer.name,
            "limit": allocator.user_limit(viewer.name, viewer.groups),
            "holding": [_holding(h, seen) for h in mine],
        },
        "due": due(holdings, activity, rule, now, sampled.low_since) if viewer.sees_everyone else [],
        "usage": usage,
    }


@dataclass(frozen=True)
class _Seen:
    """What a holding's deadline is decided from."""

    activity: Mapping[str, datetime | None]
    rule: ReclaimRule
    low_since: Mapping[str, datetime]
    now: datetime


def _device(device, holders: list[Holding], allocator: GpuAllocator, seen: _Seen, viewer: Viewer,
            names_public: bool, reading: DeviceReading | None) -> dict:
    blocked = not holders and allocator.blocked_by_relative(device.uuid)
    return {
        "uuid": device.uuid,
        "index": device.index,
        "name": device.name,
        "state": "busy" if holders else "blocked" if blocked else "free",
        "since": min(h.since for h in holders).isoformat() if holders else None,
        "holders": [_holder(h, seen, viewer, names_public) for h in holders],
        "utilisation": reading.percent if reading else None,
        "memory_used": reading.memory_used if reading else None,
        "memory_total": reading.memory_total if reading else None,
    }


def _holder(holding: Holding, seen: _Seen, viewer: Viewer, names_public: bool) -> dict:
    mine = holding.person == viewer.name
    named = mine or names_public or viewer.sees_everyone
    shown = {"user": holding.person if named else ANOTHER_USER, "mine": mine,
             "since": holding.since.isoformat()}
    if mine or viewer.sees_everyone:  # the server name and its deadline are the holder's business
        shown.update(_holding(holding, seen))
    return shown


def _holding(holding: Holding, seen: _Seen) -> dict:
    last = seen.activity.get(holding.user)
    low_since = seen.low_since.get(holding.user)
    deadline = seen.rule.deadline(holding.since, last, low_since)
    return {
        "server": holding.server,
        "devices": list(holding.devices),
        "since": holding.since.isoformat(),
        "last_activity": last.isoformat() if last else None,
        "reclaim_at": deadline[0].isoformat() if deadline else None,
        "reclaim_reason": deadline[1] if deadline else None,
        "underused_since": low_since.isoformat() if low_since else None,
        "warning": seen.rule.warning_text(deadline, seen.now) or None,
    }


def culler_missing(rule: ReclaimRule, service_names, owner: str = "HardenedSpawner") -> str:
    """The hub-start warning for timeouts that nothing acts on ("" when all is well)."""
    if (rule.idle_timeout or rule.max_hold or rule.underused_timeout) and CULLER not in service_names:
        return (f"{owner}.gpu_idle_timeout / gpu_max_hold / gpu_underused_timeout are set, but no "
                "gpu-culler service runs, so no GPU is reclaimed: call hardened_spawner.gpu_pages.enable(c) "
                "in jupyterhub_config.py.")
    return ""
