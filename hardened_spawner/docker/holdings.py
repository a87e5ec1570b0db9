"""Who holds which GPU, read from running server containers' labels (``docker ps`` shape):
what the hub's GPU table is rebuilt from after a restart, and what ``check``/``gpus`` show."""

from __future__ import annotations

from datetime import datetime, timezone

from .. import labels
from ..core.gpus import Holding
from ..gpu_broker import holder_key, read_holding


def holdings_from_containers(containers: list[dict]) -> list[Holding]:
    found = []
    for container in containers:
        container_labels = container.get("Labels") or {}
        holding = read_holding(
            container_labels.get(labels.OWNER, "?"), container_labels.get(labels.SERVER_NAME, ""),
            container_labels.get(labels.GPUS, ""), container_labels.get(labels.GPUS_SINCE, ""),
            datetime.fromtimestamp(container.get("Created", 0), timezone.utc),
        )
        if holding is not None:
            found.append(holding)
    return found


def containers_by_id(containers: list[dict], hub_id: str) -> dict[str, str]:
    """This hub's server containers (``docker ps`` shape) by id, as GPU table holder keys."""
    found = {}
    for container in containers:
        container_labels = container.get("Labels") or {}
        if container_labels.get(labels.HUB) == hub_id:
            found[container["Id"]] = holder_key(container_labels.get(labels.OWNER, ""),
                                                container_labels.get(labels.SERVER_NAME, ""))
    return found
