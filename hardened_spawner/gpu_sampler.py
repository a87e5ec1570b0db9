"""The hub's GPU utilisation sampler: one per hub, started at hub start (`hubstart`).

Every ``gpu_utilisation_interval`` seconds it reads every pooled device through NVML
(`nvml_reader`, in a thread: NVML calls block), attributes the readings to the holders in
the hub's GPU table (`core.utilisation`), and

- keeps the latest reading per device for the GPU board and ``/hub/metrics``;
- feeds the underuse watch, whose ``low_since`` the reclaim rule reads
  (`gpu_board.ReclaimRule`, ``gpu-underused``);
- writes a ``gpu-usage`` audit record per holding every ``gpu_usage_record_interval`` and when
  a holding ends: the GPU-seconds used that the usage ledger adds up.

A device shared by several servers is split by process: the PIDs NVML names are mapped to
containers through their cgroups (``/proc/PID/cgroup``), and containers to servers through
this hub's server labels (`containers`, asked again only when a container it has not asked
about shows up). A PID it cannot map is logged once.

A sample that fails or takes longer than an interval is logged, and the underuse watch
forgets what it knew: nobody counts as underused until samples come in again. A watch that
has not been fed for three intervals (a sampler stuck in the driver) answers nobody too.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone

from prometheus_client import Gauge

from .core.utilisation import (
    DeviceReading,
    UnderuseWatch,
    UseMeter,
    container_id_from_cgroup,
    holders_per_device,
    memory_by_holder,
    use_by_holder,
)
from .gpu_broker import GpuBroker
from .nvml_reader import NvmlReader, cgroup_of

GPU_UTILISATION = Gauge("hardened_spawner_gpu_utilisation_percent",
                        "Each pooled GPU's utilisation at the last sample (NVML)", ["device"])
GPU_MEMORY_USED = Gauge("hardened_spawner_gpu_memory_used_bytes",
                        "Each pooled GPU's memory in use at the last sample (NVML)", ["device"])

#: container id -> holder key (`gpu_broker.holder_key`) of this hub's running servers
ContainersSource = Callable[[], Awaitable[dict[str, str]]]


class GpuSampler:
    """Module docstring. ``broker``: the hub's GPU table; ``containers``: this hub's server
    containers by id (for devices shared by several servers)."""

    def __init__(self, reader: NvmlReader, broker: GpuBroker, containers: ContainersSource, audit, log, *,
                 interval: int, underused_percent: int, record_every: int) -> None:
        self.reader = reader
        self.broker = broker
        self.containers = containers
        self.audit = audit
        self.log = log
        self.interval = interval
        self.watch = UnderuseWatch(underused_percent)
        self.meter = UseMeter(record_every, max_gap=2 * interval)
        #: the latest reading of each pooled device, and when it was taken
        self.readings: dict[str, DeviceReading] = {}
        self.sampled_at: datetime | None = None
        self._holder_of_container: dict[str, str] = {}
        #: containers asked about that are no server of this hub (asked again only with the next new one)
        self._not_servers: set[str] = set()
        self._unmapped_logged = False

    async def sample(self, now: datetime | None = None) -> None:
        """One sample: read, attribute, watch, meter, record."""
        async with self.broker.table() as allocator:
            holdings = allocator.holdings()
            uuids = [device.uuid for device in allocator.pool()]
        shared = {uuid for uuid, count in holders_per_device(holdings).items() if count > 1}
        try:
            readings, containers_of_pids = await asyncio.wait_for(
                asyncio.to_thread(self._read, uuids, shared), timeout=max(5, self.interval))
            holder_of_pid = await self._holders(containers_of_pids)
        except BaseException:
            self._lost()
            raise
        self._log_unmapped(readings, shared, holder_of_pid)
        now = now or datetime.now(timezone.utc)
        use = use_by_holder(readings, holdings, holder_of_pid)
        self.watch.observe(now, holdings, use)
        for record in self.meter.observe(now, holdings, use, memory_by_holder(readings, holdings, holder_of_pid)):
            self.audit.emit("gpu-usage", **record.audit_fields())
        self.readings = {r.uuid: r for r in readings}
        self.sampled_at = now
        for reading in readings:
            _gauge(GPU_UTILISATION, reading.uuid, reading.percent)
            _gauge(GPU_MEMORY_USED, reading.uuid, reading.memory_used)

    def _lost(self) -> None:
        """A sample that failed: nothing is known now (the watch forgets, the board shows no reading)."""
        self.watch.forget()
        self.readings = {}
        for gauge in (GPU_UTILISATION, GPU_MEMORY_USED):
            gauge.clear()

    def _log_unmapped(self, readings: list[DeviceReading], shared: set[str], holder_of_pid: dict[int, str]) -> None:
        if self._unmapped_logged:
            return
        lost = [p.pid for r in readings if r.uuid in shared for p in r.processes if p.pid not in holder_of_pid]
        if lost:
            self._unmapped_logged = True
            self.log.warning(
                "GPU processes %s on shared GPUs belong to no server of this hub (or their cgroups cannot be "
                "read: the hub must run in the host's PID namespace): while they compute, those GPUs' use "
                "cannot be split between their holders, and none of them is reclaimed for underuse", lost[:8])

    def _read(self, uuids: list[str], shared: set[str]) -> tuple[list[DeviceReading], dict[int, str]]:
        """In a thread: NVML, and the cgroups of the processes on shared devices."""
        readings = self.reader.read(uuids, self.interval)
        containers = {}
        for reading in readings:
            if reading.uuid in shared:
                for process in reading.processes:
                    container = container_id_from_cgroup(cgroup_of(process.pid))
                    if container:
                        containers[process.pid] = container
        return readings, containers

    async def _holders(self, containers_of_pids: dict[int, str]) -> dict[int, str]:
        known = self._holder_of_container
        if any(c not in known and c not in self._not_servers for c in containers_of_pids.values()):
            known = self._holder_of_container = await self.containers()
            self._not_servers = {c for c in containers_of_pids.values() if c not in known}
        return {pid: known[c] for pid, c in containers_of_pids.items() if c in known}

    def low_since(self, now: datetime | None = None) -> dict[str, datetime]:
        """Since when each holder's GPUs are underused; nobody when the last sample is more than
        three intervals old (the sampler is stuck: what it knew is no longer known)."""
        now = now or datetime.now(timezone.utc)
        if self.sampled_at is None or (now - self.sampled_at).total_seconds() > 3 * self.interval:
            return {}
        return self.watch.low_since()

    def close(self) -> None:
        """The hub stopping: the open windows are recorded, NVML is let go."""
        for record in self.meter.close_all(datetime.now(timezone.utc)):
            self.audit.emit("gpu-usage", **record.audit_fields())
        with contextlib.suppress(Exception):
            self.reader.close()

    async def run(self) -> None:
        self.log.info("Sampling the GPUs' utilisation every %s s (NVML)", self.interval)
        try:
            while True:
                try:
                    await self.sample()
                except Exception as e:  # the driver, the engine, a read past its time: no reading this round
                    self.log.warning("GPU utilisation sample failed: %s: %s", type(e).__name__, e or "timed out")
                await asyncio.sleep(self.interval)
        finally:
            self.close()


def sampler_for(spawner) -> GpuSampler | None:
    """The hub's sampler for a hardened spawner built from the config (`hubstart`), or None
    when its settings sample nothing (`samples_utilisation`)."""
    if not spawner.samples_utilisation:
        return None
    return GpuSampler(NvmlReader(), spawner.gpus, spawner._containers_source(), spawner.audit, spawner.log,
                      interval=spawner.gpu_utilisation_interval,
                      underused_percent=spawner.gpu_underused_percent,
                      record_every=spawner.gpu_usage_record_interval)


def _gauge(gauge: Gauge, device: str, value: int | None) -> None:
    """Set a device's gauge; remove it when the value is unknown (never show a stale one)."""
    if value is not None:
        gauge.labels(device).set(value)
        return
    with contextlib.suppress(KeyError):
        gauge.remove(device)
