"""The GPU board on the hub: a page, its JSON on the hub's REST API, and the reclaim call.

- ``/hub/gpus``: the board for a logged-in user (admins also see server names and get a
  *Stop* button, which calls JupyterHub's own ``DELETE /hub/api/users/…/servers/…``), with
  the reader's GPU-hours and server-hours this month (admins: every user's), counted by the
  usage ledger (`usage`) from the audit trail file, read on from where the last look ended;
- ``GET /hub/api/gpus``: the same data, for tokens with ``custom:gpus:read`` (every user
  has it once `enable` ran; a token made with fewer scopes does not);
- ``POST /hub/api/gpus/reclaim``: stops every server that is due (`gpu_board.due`), with
  the reason in the audit trail; for ``custom:gpus:reclaim`` (the GPU culler service).

The pages run inside the hub, because the board must show the broker the spawners
assign from: a service would only see the engine's labels, which lag an assignment by
the seconds a start takes. JupyterHub marks ``extra_handlers`` as deprecated in favour
of services and logs a warning at start; it still serves them.
"""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import datetime, timezone

from jupyterhub.apihandlers import APIHandler
from jupyterhub.handlers import BaseHandler
from tornado import web

from . import hub_database, usage, usage_sources
from .core.options import reclaim_text
from .errors import CannotCheck
from .gpu_board import (
    CULLER,
    NOT_SAMPLED,
    SCOPE_READ,
    SCOPE_RECLAIM,
    SCOPES,
    ReclaimRule,
    Sampled,
    Viewer,
    board,
    due,
    usage_view,
)
from .page_templates import TEMPLATES

#: the tornado setting that holds the spawner the hub built from its config at start
#: (`hubstart`): the board reads the hub's GPU broker through it
SPAWNER_SETTING = "hardened_spawner"
#: the tornado setting that holds the hub's GPU sampler (`gpu_sampler`), where it samples
SAMPLER_SETTING = "hardened_spawner_gpu_sampler"


def reclaim_rule(settings) -> ReclaimRule:
    """The reclaim rule a hardened spawner's settings make."""
    return ReclaimRule(settings.gpu_idle_timeout, settings.gpu_max_hold, settings.gpu_underused_timeout,
                       settings.gpu_underused_percent, settings.gpu_reclaim_warning)


class _Board:
    """What the page and the API share: the broker, and the hub's activity data."""

    settings: dict

    @property
    def spawner(self):
        spawner = self.settings.get(SPAWNER_SETTING)
        if spawner is None:
            raise web.HTTPError(503, "The GPU board needs the hub's spawner_class to be a hardened spawner "
                                     "(hardened or hardened-kube).")
        return spawner

    def viewer(self) -> Viewer:
        who = self.current_user  # type: ignore[attr-defined]
        scopes = self.parsed_scopes  # type: ignore[attr-defined]
        return Viewer(
            name=who.name,
            groups=tuple(g.name for g in getattr(who, "groups", ())),
            sees_everyone=SCOPE_RECLAIM in scopes or "admin:servers" in scopes,
        )

    def activity(self, holdings) -> dict[str, datetime | None]:
        """The hub's own last-activity time of each holding's server (proxy and server
        reports), the data the idle culler reads."""
        found: dict[str, datetime | None] = {}
        for holding in holdings:
            user = self.find_user(holding.person)  # type: ignore[attr-defined]
            orm_spawner = user.orm_spawners.get(holding.server) if user else None
            last = orm_spawner.last_activity if orm_spawner else None
            found[holding.user] = last.replace(tzinfo=timezone.utc) if last and last.tzinfo is None else last
        return found

    def rule(self) -> ReclaimRule:
        return reclaim_rule(self.spawner)

    def sampled(self) -> Sampled:
        sampler = self.settings.get(SAMPLER_SETTING)
        if sampler is None:
            return NOT_SAMPLED
        return Sampled(sampler.readings, sampler.low_since(), sampler.sampled_at)

    async def board(self, viewer: Viewer) -> dict:
        broker = self.spawner.gpus
        async with broker.table() as allocator:
            holdings = allocator.holdings()
        now = datetime.now(timezone.utc)
        used = await self.usage(viewer, holdings, now)
        async with broker.table() as allocator:
            return board(allocator, self.activity(allocator.holdings()), self.rule(), viewer,
                         names_public=self.spawner.gpu_board_names_public, now=now, usage=used,
                         sampled=self.sampled())

    async def usage(self, viewer: Viewer, holdings, now: datetime) -> dict:
        """This month's usage (`gpu_board.usage_view`): the ledger of the audit trail file, with
        the GPU table's holdings and the database's running servers as what runs now."""
        since = usage.month_start(now)
        spawner = self.spawner
        try:
            path = usage_sources.trail_file(spawner.audit_log, spawner.setting_owner)
        except CannotCheck:
            return usage_view(None, viewer, since=since, until=now,
                              problem="Usage is counted from the audit trail, and this hub keeps none in a file.")
        db = self.db  # type: ignore[attr-defined]
        running = {key: usage.Running(*key) for key in hub_database.servers_in_database(db) or ()}
        for holding in holdings:
            running[(holding.person, holding.server)] = usage.Running(
                holding.person, holding.server, holding.devices, holding.since.timestamp())
        follower = usage_sources.follower_for(path, exclusive=spawner.gpu_max_users_per_gpu == 1)
        try:
            intervals, used = await asyncio.to_thread(
                follower.read, list(running.values()), now.timestamp(), since.timestamp())
        except OSError as e:
            self.log.error("The GPU board cannot read the audit trail %s: %s", path, e)  # type: ignore[attr-defined]
            return usage_view(None, viewer, since=since, until=now, problem="The audit trail cannot be read now.")
        rows = usage.totals(intervals, since=since.timestamp(), until=now.timestamp(), by="user", used=used)
        return usage_view(rows, viewer, since=since, until=now)


class GpuBoardPage(_Board, BaseHandler):
    @web.authenticated
    async def get(self):
        viewer = self.viewer()
        data = await self.board(viewer)
        rule = data["reclaim"]
        text = reclaim_text(rule["idle_timeout"], rule["max_hold"], rule["underused_timeout"], rule["underused_percent"])
        self.finish(await self.render_template("gpus.html", board=data, reclaim_text=text,
                                               sees_everyone=viewer.sees_everyone))


class GpuBoardAPI(_Board, APIHandler):
    async def get(self):
        if SCOPE_READ not in self.parsed_scopes and "admin:servers" not in self.parsed_scopes:
            raise web.HTTPError(403, f"Reading the GPU board needs the scope {SCOPE_READ}.")
        self.finish(json.dumps(await self.board(self.viewer())))


class GpuReclaimAPI(_Board, APIHandler):
    async def post(self):
        """Stop the servers due now, deciding again here (activity may have come in since
        the culler read the board); answers what it stopped and what it could not."""
        if SCOPE_RECLAIM not in self.parsed_scopes:
            raise web.HTTPError(403, f"Reclaiming GPUs needs the scope {SCOPE_RECLAIM}.")
        broker = self.spawner.gpus
        async with broker.table() as allocator:
            holdings = allocator.holdings()
            now_due = due(holdings, self.activity(holdings), self.rule(), datetime.now(timezone.utc),
                          self.sampled().low_since)
        stopped, failed = [], []
        for entry in now_due:
            problem = await self._stop(entry)
            (failed if problem else stopped).append({**entry, **({"error": problem} if problem else {})})
        self.finish(json.dumps({"stopped": stopped, "failed": failed}))

    async def _stop(self, entry: dict) -> str:
        user = self.find_user(entry["user"])
        spawner = user.spawners.get(entry["server"]) if user else None
        if spawner is None or not spawner.active:
            return "no such running server"
        if spawner.pending:
            return f"a {spawner.pending} of it is in progress"
        self.log.info("Reclaiming the GPUs of %s: %s", spawner._log_name, entry["reason"])
        spawner.stop_reason = entry["reason"]
        try:
            await self.stop_single_user(user, entry["server"])
        except Exception as e:
            spawner.stop_reason = None
            self.log.exception("Reclaiming the GPUs of %s failed", spawner._log_name)
            return str(e) or type(e).__name__
        return ""


def enable(c, *, cull_every: int = 60) -> None:
    """Turn on the GPU board and the GPU culler in a ``jupyterhub_config.py``: the pages,
    their scopes (every user may read the board), the culler service and its role, the
    templates, and the links from the spawn form. The timeouts are
    ``HardenedSpawner.gpu_idle_timeout`` and ``gpu_max_hold`` (``HardenedKubeSpawner.…`` on
    Kubernetes)."""
    c.JupyterHub.custom_scopes.update(SCOPES)
    c.JupyterHub.extra_handlers.extend([
        (r"/gpus", GpuBoardPage),
        (r"/api/gpus", GpuBoardAPI),
        (r"/api/gpus/reclaim", GpuReclaimAPI),
    ])
    c.JupyterHub.load_roles.extend([
        {"name": "user", "scopes": ["self", SCOPE_READ]},
        {"name": CULLER, "scopes": [SCOPE_READ, SCOPE_RECLAIM], "services": [CULLER]},
    ])
    c.JupyterHub.services.append({
        "name": CULLER,
        "command": [sys.executable, "-m", "hardened_spawner.gpu_culler", f"--every={cull_every}"],
    })
    # before JupyterHub's own templates, which are the default: the home page's (warnings, SSH)
    # must win over JupyterHub's home.html
    paths = c.JupyterHub.template_paths
    if isinstance(paths, list):
        if TEMPLATES not in paths:
            paths.insert(0, TEMPLATES)
    else:
        paths.prepend([TEMPLATES])
    c.JupyterHub.template_vars.update({"hardened_gpu_board": True})
    # whichever backend the hub runs (a spawner reads only its own class's section)
    c.HardenedSpawner.gpu_board = True
    c.HardenedKubeSpawner.gpu_board = True
