"""The hub-wide GPU table: one `GpuAllocator` per hub and settings, fed from the backend.

The allocator decides; this shell serialises its calls with one lock, builds
it from the servers that run before the first spawn (the labels or annotations
of running servers are the truth after a hub restart: each backend reads its own
objects into typed `Holding`s), and exports the Prometheus gauges the hub serves
at ``/hub/metrics``. `broker_for` keeps one table per hub and settings, for both
backends; `reset` forgets them (tests that play several hubs in one process).

GPU-seconds held are counters per user and per group (`HeldSeconds`): a holding adds its
devices times its duration when it is released, and until then what it has held so far is
added at each scrape, so ``rate()`` shows a long holding as it goes and never as a jump at
its end. A holding this process found at its rebuild (a hub restart) counts from the rebuild:
the process before it counted the time until then.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from datetime import datetime, timezone

from prometheus_client import REGISTRY, Gauge
from prometheus_client.core import CounterMetricFamily, Metric

from .core.gpus import GpuAllocator, Holding

GPUS_TOTAL = Gauge("hardened_spawner_gpus_total", "GPUs (and MIG devices) in the pool")
GPUS_ASSIGNED = Gauge("hardened_spawner_gpus_assigned", "GPUs in the pool held by a server")
GPUS_FREE = Gauge("hardened_spawner_gpus_free", "GPUs in the pool free to assign")


class HeldSeconds:
    """The Prometheus collector of GPU-seconds held: ``hardened_spawner_gpu_seconds_total`` per
    user and ``hardened_spawner_group_gpu_seconds_total`` per group (module docstring). A user
    in several groups counts in each; a user in none, or whose groups this process has not
    learned (groups come with an assignment; a holding found at a restart has none until its
    user assigns again), in no group."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.by_user: dict[str, float] = {}
        self.by_group: dict[str, float] = {}

    def add(self, user: str, groups: Sequence[str], seconds: float) -> None:
        with self._lock:
            self._add(self.by_user, self.by_group, user, groups, seconds)

    @staticmethod
    def _add(by_user, by_group, user: str, groups: Sequence[str], seconds: float) -> None:
        by_user[user] = by_user.get(user, 0.0) + seconds
        for group in groups:
            by_group[group] = by_group.get(group, 0.0) + seconds

    def describe(self) -> Iterator[Metric]:
        """The names, for the registry (without reading any table)."""
        return self._families({}, {})

    def collect(self) -> Iterator[Metric]:
        now = datetime.now(timezone.utc)
        with self._lock:
            by_user, by_group = dict(self.by_user), dict(self.by_group)
        with _TABLES_LOCK:
            brokers = list(_TABLES.values())
        for broker in brokers:
            for user, groups, seconds in broker.held_so_far(now):
                self._add(by_user, by_group, user, groups, seconds)
        return self._families(by_user, by_group)

    @staticmethod
    def _families(by_user: dict[str, float], by_group: dict[str, float]) -> Iterator[Metric]:
        users = CounterMetricFamily("hardened_spawner_gpu_seconds", "GPU-seconds held, per user "
                                    "(devices times time; holdings not yet released up to now)", labels=["user"])
        for user, seconds in sorted(by_user.items()):
            users.add_metric([user], seconds)
        yield users
        groups_ = CounterMetricFamily("hardened_spawner_group_gpu_seconds", "GPU-seconds held, per group of "
                                      "the holder (a user counts in each of their groups)", labels=["group"])
        for group, seconds in sorted(by_group.items()):
            groups_.add_metric([group], seconds)
        yield groups_


GPU_SECONDS = HeldSeconds()


def read_holding(owner: str, server_name: str, devices: str, since: str, created: datetime) -> Holding | None:
    """One running server's holding, from what its backend object records: the owner, the
    server name, the devices (comma-separated) and since when (ISO 8601; the object's own
    creation time when missing or unreadable). None when it holds no device."""
    held = tuple(d for d in devices.split(",") if d)
    if not held:
        return None
    try:
        when = datetime.fromisoformat(since)
    except ValueError:
        when = created
    return Holding(holder_key(owner, server_name), held, when, owner)


def holder_key(user: str, server_name: str) -> str:
    """Holdings are per server: a user's named servers each hold their own devices
    (and share the user's quota and pins: `Holding.owner`)."""
    return f"{user}/{server_name}" if server_name else user


#: what a backend gives the table: an async callable listing the holdings of running servers
HoldingsSource = Callable[[], Awaitable[list[Holding]]]


class GpuBroker:
    def __init__(self, allocator: GpuAllocator, list_holdings: HoldingsSource, log):
        self.allocator = allocator
        self._list_holdings = list_holdings
        self._log = log
        self._lock = asyncio.Lock()
        self._rebuilt = False
        #: when the table was rebuilt, and each person's groups as their last assignment gave
        #: them (for the GPU-seconds counters)
        self._rebuilt_at = datetime.now(timezone.utc)
        self._groups: dict[str, tuple[str, ...]] = {}

    async def _ensure_rebuilt(self) -> None:
        if self._rebuilt:
            return
        holdings = await self._list_holdings()
        for warning in self.allocator.rebuild(holdings):
            self._log.warning("GPU table: %s", warning)
        self._log.info(
            "GPU table rebuilt from the running servers: %s",
            ", ".join(f"{h.user}={','.join(h.devices)}" for h in holdings) or "nothing held",
        )
        self._rebuilt = True
        self._rebuilt_at = datetime.now(timezone.utc)
        self._export()

    async def assign(self, holder, groups, count, devices, owner="") -> tuple[tuple[str, ...], datetime]:
        async with self._lock:
            await self._ensure_rebuilt()
            now = datetime.now(timezone.utc)
            self._groups[owner or holder] = tuple(groups)
            try:
                return self.allocator.assign(holder, groups, count, devices, now=now, owner=owner), now
            finally:
                self._export()

    async def release(self, holder) -> tuple[str, ...]:
        async with self._lock:
            if not self._rebuilt:  # nothing assigned yet (every assign rebuilds first)
                return ()
            now = datetime.now(timezone.utc)
            for user, groups, seconds in self.held_so_far(now, holder):
                GPU_SECONDS.add(user, groups, seconds)
            released = self.allocator.release(holder)
            self._export()
            return released

    def held_so_far(self, now: datetime, holder: str | None = None) -> list[tuple[str, tuple[str, ...], float]]:
        """(person, their groups, GPU-seconds) of each holding (or ``holder``'s) from its
        assignment, or this table's rebuild, to ``now``."""
        found = []
        for holding in self.allocator.holdings() if self._rebuilt else ():
            if holder is None or holding.user == holder:
                since = holding.since if holding.since.tzinfo else holding.since.replace(tzinfo=timezone.utc)
                start = max(since, self._rebuilt_at)
                seconds = len(holding.devices) * max(0.0, (now - start).total_seconds())
                found.append((holding.person, self._groups.get(holding.person, ()), seconds))
        return found

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


_TABLES: dict[tuple[str, str], GpuBroker] = {}
_TABLES_LOCK = threading.Lock()


def broker_for(hub: str, settings: str, build: Callable[[], GpuBroker]) -> GpuBroker:
    """The GPU table of one hub (``hub``: where its servers run, and which database
    started them) for one set of GPU settings, built by ``build`` the first time. Every
    spawner of that hub gets the same table, whichever thread asks first."""
    with _TABLES_LOCK:
        found = _TABLES.get((hub, settings))
        if found is None:
            found = _TABLES[(hub, settings)] = build()
        return found


def reset() -> None:
    """Forget every table (tests that play several hubs, or a hub restart, in one process)."""
    with _TABLES_LOCK:
        _TABLES.clear()


REGISTRY.register(GPU_SECONDS)
