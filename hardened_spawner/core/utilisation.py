"""What the GPUs' utilisation means for their holders: pure decisions over NVML readings.

The hub samples each pooled device (`nvml_reader`) and hands the readings here:

- `use_by_holder`: each holding's utilisation per device. A device with one holder is its
  holder's (exclusive assignment, or a shared device that only one server holds now). A
  device shared by several holders is split by process: NVML names the host PIDs that use
  it, `container_id_from_cgroup` maps each PID (through ``/proc/PID/cgroup``) to the server
  container it runs in, and the holder gets the sum of its processes' SM utilisation.
  Anything that cannot be known (no reading, a MIG device, a shared device without
  per-process samples, or with a busy process that maps to none of its holders) is None, and
  None is never read as idle.
- `UnderuseWatch`: since when each holding has been under the threshold at every sample,
  which the reclaim rule (`gpu_board.ReclaimRule`) turns into a deadline.
- `UseMeter`: GPU-seconds used (utilisation times time) per holding and device, closed into
  `UseRecord`s, which the hub writes to the audit trail as ``gpu-usage`` and the usage
  ledger adds up beside the GPU-seconds held.

Nothing here reads NVML, ``/proc``, the engine or the clock.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from .gpus import Holding


@dataclass(frozen=True)
class ProcessUse:
    """One process on a device, as NVML reports it (host PID namespace)."""

    pid: int
    sm_percent: int | None = None  # mean SM utilisation over the sampling period; None: no sample
    memory_bytes: int | None = None


@dataclass(frozen=True)
class DeviceReading:
    """One device at one sample. ``percent``: NVML's GPU utilisation (the share of the last
    sample period in which a kernel ran); None where NVML cannot say (a MIG instance, a lost
    device)."""

    uuid: str
    percent: int | None
    memory_used: int | None = None
    memory_total: int | None = None
    processes: tuple[ProcessUse, ...] = ()
    #: whether NVML gave per-process utilisation samples at all (some devices do not)
    per_process: bool = False


#: a container id in a cgroup path: cgroup v2 with systemd (``docker-<id>.scope``), cgroupfs
#: (``/docker/<id>``), v1 lines of the same, and the CRI runtimes (``cri-containerd-<id>``,
#: ``crio-<id>``)
_CONTAINER_ID = re.compile(r"(?:^|[/-])([0-9a-f]{64})(?:\.scope)?(?=/|$)")


def container_id_from_cgroup(text: str) -> str | None:
    """The container a process runs in, from the text of its ``/proc/PID/cgroup``; None for a
    process in no container (the host's own, or a PID that has gone). The innermost id wins
    (a container's own sub-cgroups keep its id in the path)."""
    found = None
    for line in text.splitlines():
        path = line.split(":", 2)[-1]
        ids = _CONTAINER_ID.findall(path)
        if ids:
            found = ids[-1]
    return found


def holders_per_device(holdings: Iterable[Holding]) -> dict[str, int]:
    """How many holdings hold each device (more than one: a shared device)."""
    found: dict[str, int] = {}
    for holding in holdings:
        for uuid in holding.devices:
            found[uuid] = found.get(uuid, 0) + 1
    return found


def _per_holding(readings: Iterable[DeviceReading], holdings: Sequence[Holding],
                 share: Callable[[DeviceReading, bool, str], int | None]) -> dict[str, dict[str, int | None]]:
    """Holder -> device -> ``share(reading, shared by several holders, holder)``; None for a
    device without a reading."""
    by_uuid = {r.uuid: r for r in readings}
    holders_of = holders_per_device(holdings)
    found: dict[str, dict[str, int | None]] = {}
    for holding in holdings:
        mine = found.setdefault(holding.user, {})
        for uuid in holding.devices:
            reading = by_uuid.get(uuid)
            mine[uuid] = None if reading is None else share(reading, holders_of[uuid] > 1, holding.user)
    return found


def use_by_holder(readings: Iterable[DeviceReading], holdings: Sequence[Holding],
                  holder_of_pid: Mapping[int, str]) -> dict[str, dict[str, int | None]]:
    """Each holding's utilisation per device, keyed by holder (`Holding.user`); see the module
    docstring. ``holder_of_pid``: the holder whose server runs each NVML PID."""
    def share(reading: DeviceReading, shared: bool, holder: str) -> int | None:
        if reading.percent is None or not shared or reading.percent == 0:
            return reading.percent
        if not reading.per_process or unattributed_work(reading, holder_of_pid):
            return None
        # a process with no sample since the last read ran no kernel: 0
        return min(100, sum(p.sm_percent or 0 for p in reading.processes if holder_of_pid.get(p.pid) == holder))

    return _per_holding(readings, holdings, share)


def unattributed_work(reading: DeviceReading, holder_of_pid: Mapping[int, str]) -> bool:
    """Whether a process on the device ran kernels (or may have: its sample is missing while the
    device is busy) and belongs to no holder: a process this hub cannot map (a hub outside the
    host's PID namespace, another hub's server). Then no holder's share can be known."""
    return any(p.pid not in holder_of_pid and (p.sm_percent is None or p.sm_percent > 0)
               for p in reading.processes)


def memory_by_holder(readings: Iterable[DeviceReading], holdings: Sequence[Holding],
                     holder_of_pid: Mapping[int, str]) -> dict[str, dict[str, int | None]]:
    """Each holding's GPU memory in use per device: the device's, where it has one holder;
    its processes' sum where several share it (None when NVML does not say)."""
    def share(reading: DeviceReading, shared: bool, holder: str) -> int | None:
        if not shared:
            return reading.memory_used
        sizes = [p.memory_bytes for p in reading.processes if holder_of_pid.get(p.pid) == holder]
        return None if any(size is None for size in sizes) else sum(size or 0 for size in sizes)

    return _per_holding(readings, holdings, share)


def holding_percent(percents: Mapping[str, int | None], holding: Holding) -> int | None:
    """The one number the reclaim rule reads: the busiest of the holding's devices (a user
    training on one of two GPUs is not idle); None when any of them is unknown."""
    values = [percents.get(uuid) for uuid in holding.devices]
    if not values or any(v is None for v in values):
        return None
    return max(v for v in values if v is not None)


class UnderuseWatch:
    """Since when each holding has been under ``percent`` at every sample (`observe`). A
    sample at or over it, an unknown one, or a new holding of the same server starts afresh;
    so does a hub restart (nothing is remembered), which only ever delays a reclaim."""

    def __init__(self, percent: int) -> None:
        self.percent = percent
        self._low: dict[str, tuple[datetime, datetime]] = {}  # holder -> (holding since, low since)

    def observe(self, now: datetime, holdings: Sequence[Holding], use: Mapping[str, Mapping[str, int | None]]) -> None:
        low = {}
        for holding in holdings:
            percent = holding_percent(use.get(holding.user, {}), holding)
            if percent is None or percent >= self.percent:
                continue
            before = self._low.get(holding.user)
            low[holding.user] = (holding.since, before[1] if before and before[0] == holding.since else now)
        self._low = low

    def low_since(self) -> dict[str, datetime]:
        """Holder -> the first sample of its current run under the threshold."""
        return {holder: since for holder, (_, since) in self._low.items()}

    def forget(self) -> None:
        """A sample that failed: nobody is known to be underused any more."""
        self._low = {}


@dataclass(frozen=True)
class DeviceUse:
    """What one device of a holding did over a record's window."""

    uuid: str
    used_seconds: float  # utilisation times time: 600 s at 50 % is 300 s
    measured_seconds: float  # the part of the window with a known utilisation
    mean_percent: float | None  # over the measured part
    memory_max_bytes: int | None  # the most memory the holder's processes (or the device) used

    def as_dict(self) -> dict:
        return {"uuid": self.uuid, "used_seconds": round(self.used_seconds, 3),
                "measured_seconds": round(self.measured_seconds, 3),
                "mean_percent": None if self.mean_percent is None else round(self.mean_percent, 1),
                "memory_max_bytes": self.memory_max_bytes}


@dataclass(frozen=True)
class UseRecord:
    """A ``gpu-usage`` audit record: one holding's use over ``[start, end]``."""

    person: str
    server: str
    start: datetime
    end: datetime
    devices: tuple[DeviceUse, ...]

    def audit_fields(self) -> dict:
        return {"user": self.person, "server_name": self.server,
                "devices": [d.uuid for d in self.devices],
                "utilisation": {"window_seconds": round((self.end - self.start).total_seconds(), 3),
                                "per_device": [d.as_dict() for d in self.devices]}}


@dataclass
class _Open:
    holding: Holding
    start: datetime
    last: datetime
    used: dict[str, float] = field(default_factory=dict)
    measured: dict[str, float] = field(default_factory=dict)
    memory: dict[str, int] = field(default_factory=dict)


class UseMeter:
    """GPU-seconds used per holding and device (module docstring). Each sample's utilisation (the
    mean since the previous read) counts for the time since the holding's previous sample, at
    most ``max_gap`` seconds (a hub that did not sample for a while does not guess). A holding's
    first sample counts from its start when that is at most ``max_gap`` ago; one found running
    (a hub restart: the hub before it recorded up to its stop) counts from this sample on. A
    holding's record closes every ``record_every`` seconds and when it ends."""

    def __init__(self, record_every: float, max_gap: float) -> None:
        self.record_every = record_every
        self.max_gap = max_gap
        self._open: dict[str, _Open] = {}

    def observe(self, now: datetime, holdings: Sequence[Holding], use: Mapping[str, Mapping[str, int | None]],
                memory: Mapping[str, Mapping[str, int | None]] | None = None) -> list[UseRecord]:
        """Add one sample; the records closed by it (ended holdings, full windows)."""
        records = []
        current = {h.user: h for h in holdings}
        for holder, ended in list(self._open.items()):
            if holder not in current or current[holder].since != ended.holding.since:
                del self._open[holder]
                if ended.last > ended.start:  # not a window just opened
                    # it ended between its last sample and this one: the window runs to now, so that
                    # the ledger, which places a window by its record's time, puts it where it was
                    records.append(self._close(ended, now))
        for holder, holding in current.items():
            if holder not in self._open:
                new = now - holding.since <= timedelta(seconds=self.max_gap)
                start = holding.since if new else now
                self._open[holder] = _Open(holding, start, start)
            opened = self._open[holder]
            step = min((now - opened.last).total_seconds(), self.max_gap)
            percents = use.get(holder, {})
            for uuid in holding.devices:
                percent = percents.get(uuid)
                if percent is not None and step > 0:
                    opened.used[uuid] = opened.used.get(uuid, 0.0) + step * percent / 100
                    opened.measured[uuid] = opened.measured.get(uuid, 0.0) + step
                used_memory = (memory or {}).get(holder, {}).get(uuid)
                if used_memory is not None:
                    opened.memory[uuid] = max(opened.memory.get(uuid, 0), used_memory)
            opened.last = now
            if (now - opened.start).total_seconds() >= self.record_every:
                records.append(self._close(opened, now))
                self._open[holder] = _Open(holding, now, now)
        return records

    def close_all(self, now: datetime) -> list[UseRecord]:
        """Every open window, closed now (the hub stopping: the holdings ran until now)."""
        records = [self._close(o, now) for o in self._open.values() if o.last > o.start]
        self._open.clear()
        return records

    @staticmethod
    def _close(opened: _Open, end: datetime) -> UseRecord:
        devices = []
        for uuid in opened.holding.devices:
            measured = opened.measured.get(uuid, 0.0)
            used = opened.used.get(uuid, 0.0)
            devices.append(DeviceUse(uuid, used, measured, 100 * used / measured if measured else None,
                                     opened.memory.get(uuid)))
        return UseRecord(opened.holding.person, opened.holding.server, opened.start, end, tuple(devices))
