"""What went wrong in a Docker spawn, said to the user: the Docker backend's rows of the
refusal table (`hardened_spawner.refusals`), among the rows both backends share."""

from __future__ import annotations

import docker.errors

from .. import refusals
from ..errors import SpawnRefused
from ..refusals import Row
from .hub_context import UNREACHABLE, EngineUnavailable, unreachable_message
from .start_queue import QueueTimeout
from .workspace import WorkspaceError


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
    refusals.IDENTITY,
    Row((WorkspaceError,), lambda e, s: str(e), "workspace", 409),
    Row((docker.errors.ImageNotFound,),
        lambda e, s: f"The image {s.image} is not on this server. Ask your hub admin to build or "
                     "load it (HardenedSpawner.image).", "image", 404),
    Row((docker.errors.APIError,),
        lambda e, s: f"The Docker engine refused your server's settings ({e.explanation}). "  # type: ignore[attr-defined]
                     "Your hub admin needs to fix the HardenedSpawner configuration.",
        "engine", 500, matches=_engine_refused,
        log=lambda e, s: f"The engine refused the server: {e.explanation}"),  # type: ignore[attr-defined]
    refusals.GPUS,
    # 429, as JupyterHub's own concurrent_spawn_limit: the hub is busy, nothing is broken
    Row((QueueTimeout,), lambda e, s: e.user_message, "busy", 429,  # type: ignore[attr-defined]
        log=lambda e, s: f"no start slot after {e.waited:.0f}s ({e.ahead} ahead, {e.starting} starting): "  # type: ignore[attr-defined]
                         "raise HardenedSpawner.concurrent_starts or Spawner.start_timeout if this is frequent"),
    # 4xx: an engine outage must not count toward consecutive_failure_limit
    Row(UNREACHABLE, lambda e, s: ENGINE_GONE, "engine-unavailable", 424,
        matches=_engine_gone,
        log=lambda e, s: str(e) if isinstance(e, EngineUnavailable) else unreachable_message(s.engine_address, e)),
)


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
