"""What went wrong in a Kubernetes spawn, said to the user: the Kubernetes backend's rows
of the refusal table (`hardened_spawner.refusals`), among the rows both backends share."""

from __future__ import annotations

import asyncio

import aiohttp
from kubernetes_asyncio.client.rest import ApiException

from .. import refusals
from ..refusals import Row
from .claims import WorkspaceClaimError


def _refused(e) -> bool:
    return isinstance(e, ApiException) and e.status in (400, 403, 422)


CLUSTER_GONE = (
    "The Kubernetes API that runs the servers is not answering, so your server could not be "
    "started. Nothing of yours was changed. Try again in a minute; if it keeps happening, tell "
    "your hub admin (the hub log has the details)."
)

TABLE: tuple[Row, ...] = (
    refusals.IDENTITY,
    Row((WorkspaceClaimError,), lambda e, s: str(e), "workspace", 409),
    Row((ApiException,),
        lambda e, s: f"The cluster refused your server ({e.status} {e.reason}). Your hub admin needs "  # type: ignore[attr-defined]
                     "to fix the HardenedKubeSpawner configuration or the namespace's policies.",
        "cluster", 500, matches=_refused,
        log=lambda e, s: f"The cluster refused the server: {e.status} {e.body}"),  # type: ignore[attr-defined]
    refusals.GPUS,
    # 4xx: an API outage must not count toward consecutive_failure_limit
    Row((aiohttp.ClientConnectionError, asyncio.TimeoutError), lambda e, s: CLUSTER_GONE, "cluster-unavailable",
        424, log=lambda e, s: f"Cannot reach {s.engine_address}: {e}"),
)
