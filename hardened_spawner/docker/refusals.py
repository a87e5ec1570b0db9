"""What went wrong in a spawn, said to the user: one table from error type to refusal.

Each row is (the error types, a function that returns the refusal's message and whether
the admin needs the details in the log, its reason, its status code). The first row that
matches decides. Expected refusals are 4xx (they do not count toward JupyterHub's
``consecutive_failure_limit``); anything unexpected keeps its traceback in the hub log
only, and the user is told to ask the admin.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from html import escape

import docker.errors

from ..core.gpus import GpuAllocationError, GpuQuotaExceeded, GpuUnavailable
from ..core.identity import IdentityError
from ..errors import SpawnRefused
from .hub_context import UNREACHABLE, EngineUnavailable, unreachable_message
from .workspace import WorkspaceError


@dataclass(frozen=True)
class Situation:
    """What the messages may name: the image asked for and where the engine was asked."""

    image: str
    engine_address: str
    gpu_board_url: str = ""  # where the GPU board is, "" when the hub has none


@dataclass(frozen=True)
class Row:
    errors: tuple[type[BaseException], ...]
    message: Callable[[BaseException, Situation], str]
    reason: str
    status_code: int
    matches: Callable[[BaseException], bool] = lambda e: True
    #: what the hub log gets besides the user's message ("" for nothing)
    log: Callable[[BaseException, Situation], str] = lambda e, s: ""
    #: the message with links, for the progress page ("" for the plain message)
    html: Callable[[BaseException, Situation], str] = lambda e, s: ""


def _engine_refused(e) -> bool:
    return isinstance(e, docker.errors.APIError) and e.status_code == 400


def _engine_gone(e) -> bool:
    return not isinstance(e, docker.errors.APIError)


ENGINE_GONE = (
    "The Docker engine that runs the servers is not answering, so your server could not be "
    "started. Nothing of yours was changed. Try again in a minute; if it keeps happening, tell "
    "your hub admin (the hub log has the details)."
)

TABLE: tuple[Row, ...] = (
    Row((IdentityError,), lambda e, s: str(e), "identity", 403),
    Row((WorkspaceError,), lambda e, s: str(e), "workspace", 409),
    Row((docker.errors.ImageNotFound,),
        lambda e, s: f"The image {s.image} is not on this server. Ask your hub admin to build or "
                     "load it (HardenedSpawner.image).", "image", 404),
    Row((docker.errors.APIError,),
        lambda e, s: f"The Docker engine refused your server's settings ({e.explanation}). "  # type: ignore[attr-defined]
                     "Your hub admin needs to fix the HardenedSpawner configuration.",
        "engine", 500, matches=_engine_refused,
        log=lambda e, s: f"The engine refused the server: {e.explanation}"),  # type: ignore[attr-defined]
    Row((GpuAllocationError,), lambda e, s: e.user_message, "gpu", 409,  # type: ignore[attr-defined]
        html=lambda e, s: _with_board_link(e.user_message, s) if isinstance(e, GpuUnavailable | GpuQuotaExceeded) else ""),
    # 4xx: an engine outage must not count toward consecutive_failure_limit
    Row(UNREACHABLE, lambda e, s: ENGINE_GONE, "engine-unavailable", 424,
        matches=_engine_gone,
        log=lambda e, s: str(e) if isinstance(e, EngineUnavailable) else unreachable_message(s.engine_address, e)),
)

def _with_board_link(message: str, situation: Situation) -> str:
    """A GPU refusal with the way to the GPU board, where the user sees who holds what."""
    if not situation.gpu_board_url:
        return ""
    return (f"Spawn failed: {escape(message)} "
            f'<a href="{escape(situation.gpu_board_url)}">See the GPU board</a> for who holds the GPUs.')


INTERNAL = (
    "Your server could not be started because of an internal error; the hub admin can find "
    "the details in the hub log."
)


def as_refusal(error: BaseException, situation: Situation, log, name: str) -> SpawnRefused:
    """The refusal the user sees for ``error`` (itself, if it is one already)."""
    if isinstance(error, SpawnRefused):
        return error
    for row in TABLE:
        if isinstance(error, row.errors) and row.matches(error):
            detail = row.log(error, situation)
            if detail:
                log.error("%s's spawn: %s", name, detail)
            return SpawnRefused(row.message(error, situation), reason=row.reason, status_code=row.status_code,
                                html_message=row.html(error, situation))
    log.exception("Unexpected error starting %s", name)
    return SpawnRefused(INTERNAL, reason="error", status_code=500)


def name_taken(container_name: str) -> SpawnRefused:
    """Another hub's running server has the name this one would take."""
    return SpawnRefused(
        f"A server named {container_name} already runs on this engine for another hub "
        "(another hub database), so yours cannot take its place. Two hubs on one engine "
        "need names of their own: the hub admin must set HardenedSpawner.name_template, "
        "HardenedSpawner.workspace_volume_name and HardenedSpawner.network_name to values no "
        f"other hub uses (or, if that hub is gone for good, remove it: docker rm -f {container_name}).",
        reason="name-taken",
        status_code=409,
    )
