"""The hub-wide GPU table: one `GpuAllocator` per hub process, fed from the engine.

The allocator decides; this shell serialises its calls with one lock, builds
it from the engine's running containers before the first spawn (the labels
of running servers are the truth after a hub restart), and exports the
Prometheus gauges the hub serves at ``/hub/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import datetime, timezone

from prometheus_client import Gauge

from . import labels
from .core.gpus import GpuAllocator, Holding

GPUS_TOTAL = Gauge("hardened_spawner_gpus_total", "GPUs (and MIG devices) in the pool")
GPUS_ASSIGNED = Gauge("hardened_spawner_gpus_assigned", "GPUs in the pool held by a server")
GPUS_FREE = Gauge("hardened_spawner_gpus_free", "GPUs in the pool free to assign")


def holdings_from_containers(containers: list[dict]) -> list[Holding]:
    """Read who holds what from running managed containers (``docker ps`` shape)."""
    found = []
    for container in containers:
        container_labels = container.get("Labels") or {}
        devices = tuple(d for d in container_labels.get(labels.GPUS, "").split(",") if d)
        if not devices:
            continue
        since_text = container_labels.get(labels.GPUS_SINCE, "")
        try:
            since = datetime.fromisoformat(since_text)
        except ValueError:
            since = datetime.fromtimestamp(container.get("Created", 0), timezone.utc)
        owner = container_labels.get(labels.OWNER, "?")
        holder = holder_key(owner, container_labels.get(labels.SERVER_NAME, ""))
        found.append(Holding(holder, devices, since, owner))
    return found


def holder_key(user: str, server_name: str) -> str:
    """Holdings are per server: a user's named servers each hold their own devices
    (and share the user's quota and pins: `Holding.owner`)."""
    return f"{user}/{server_name}" if server_name else user


class GpuBroker:
    def __init__(self, allocator: GpuAllocator, list_running, log):
        """``list_running`` is an async callable returning running managed containers."""
        self.allocator = allocator
        self._list_running = list_running
        self._log = log
        self._lock = asyncio.Lock()
        self._rebuilt = False

    async def _ensure_rebuilt(self) -> None:
        if self._rebuilt:
            return
        holdings = holdings_from_containers(await self._list_running())
        for warning in self.allocator.rebuild(holdings):
            self._log.warning("GPU table: %s", warning)
        self._log.info(
            "GPU table rebuilt from the engine: %s",
            ", ".join(f"{h.user}={','.join(h.devices)}" for h in holdings) or "nothing held",
        )
        self._rebuilt = True
        self._export()

    async def assign(self, holder, groups, count, devices, owner="") -> tuple[tuple[str, ...], datetime]:
        async with self._lock:
            await self._ensure_rebuilt()
            now = datetime.now(timezone.utc)
            try:
                return self.allocator.assign(holder, groups, count, devices, now=now, owner=owner), now
            finally:
                self._export()

    async def release(self, holder) -> tuple[str, ...]:
        async with self._lock:
            if not self._rebuilt:  # nothing assigned yet (every assign rebuilds first)
                return ()
            released = self.allocator.release(holder)
            self._export()
            return released

    async def held_by(self, holder) -> tuple[str, ...]:
        async with self._lock:
            await self._ensure_rebuilt()
            for holding in self.allocator.holdings():
                if holding.user == holder:
                    return holding.devices
            return ()

    @contextlib.asynccontextmanager
    async def table(self) -> AsyncIterator[GpuAllocator]:
        """The allocator to read, under the lock: the GPU board shows exactly what the
        next assignment will see."""
        async with self._lock:
            await self._ensure_rebuilt()
            yield self.allocator

    def _export(self) -> None:
        summary = self.allocator.summary()
        GPUS_TOTAL.set(summary.total)
        GPUS_ASSIGNED.set(summary.assigned)
        GPUS_FREE.set(summary.free)
