"""The usage ledger: GPU-hours held and server-hours, per user, group and device, over any period.

Pure: audit records in (`parse_line`, `Event`), intervals and totals out; the caller says what
runs now (`Running`, from the engine's labels or the hub's own GPU table) and what time it is.
Only the standard library, so the admin command, the hub's GPU board and the benchmark share it.

What counts
    **GPU time** of a device runs from the ``gpus-assigned`` event that gave it to a server to
    the event that ended that holding (normally ``gpus-released``): the time no one else could
    have it. **Server time** runs from ``server-started`` (the server answered) to its end.
    A holder is one server: (user, server name), as `gpu_broker.holder_key` keys the GPU table.

How an interval ends (`Interval.ended_by`)
    - its own event: ``gpus-released`` for GPU time, ``server-stopped``/``server-died`` for both;
    - otherwise the first later evidence of that server that it no longer ran: the same holder's
      ``server-stopped``, ``server-died``, ``orphan-removed``, ``spawn-requested``,
      ``spawn-refused`` or ``gpus-assigned`` (a hub does not start a server that runs), and
      with exclusive devices the ``gpus-assigned`` of one of its devices to another server
      (`REASSIGNED`: the allocator, rebuilt from the running servers' labels, found the
      device free, so that server no longer ran). This is how an assignment left open by a hub
      killed with SIGKILL (no ``gpus-released``: the trail shows nothing at a restart) is
      closed: when the restarted hub finds the server gone it stops it (``server-stopped``),
      when the server still runs its next stop is recorded, an orphan is ``orphan-removed``;
    - ``running`` (`RUNNING`): still open at the end of the trail and the caller's running
      servers hold it: it ends at the report's time;
    - `ESTIMATED`: still open at the end of the trail, not running, and no evidence of its end
      (a hub down since, or a new database that never knew the server): it is closed at the
      trail's last record, the last time the hub is known to have been up, and the report
      says so. A later record moves it to its evidence.

    Every interval has one start and one end, and one holder's intervals never overlap, so
    nothing is counted twice and no interval is lost. Records are keyed by user and server
    names only (never the hub's user ids, UIDs or container ids), so a database reset that
    keeps the trail keeps the ledger. Records are taken in the order the hub wrote them (a
    time earlier than the record before it, a clock stepped back, counts as that record's):
    a device released and handed on in the same second ends one interval where the next
    begins, whichever of the two records came first. A period cuts every interval at its
    ``since`` and ``until``.

GPU time **used**
    Where the hub samples utilisation (`gpu_sampler`), ``gpu-usage`` records say how much of a
    window a holding's devices were busy (utilisation times time). They are kept apart from
    the intervals (`Use`) and added up beside them (`Row.used_seconds`); a period takes the
    share of a record's window that lies in it. Held time is the ledger's own; used time is a
    measurement, and a hub killed hard loses the last unrecorded window of it.

Groups are not in the audit trail: the caller maps users to groups (the hub's database at
report time), so a user who changed groups counts in their groups of today.
"""

from __future__ import annotations

import calendar
import csv
import io
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import NamedTuple

GPU, SERVER = "gpu", "server"
RUNNING = "running"
#: ended because its device was assigned to another server (exclusive devices)
REASSIGNED = "reassigned"
ESTIMATED = "estimated"
BY = ("user", "group", "device")
#: the group key of a user in no group
NO_GROUP = "(no group)"

#: the audit events the ledger reads; the others (image-*) are skipped unread
LEDGER_EVENTS = frozenset({
    "spawn-requested", "spawn-refused", "server-started", "server-stopped", "server-died",
    "gpus-assigned", "gpus-released", "orphan-removed", "gpu-usage",
})
# what each event closes of its holder's open intervals (GPU time, server time)
_ENDS_SERVER_AND_GPUS = frozenset({
    "spawn-requested", "spawn-refused", "server-stopped", "server-died", "orphan-removed", "gpus-assigned"})


class Event(NamedTuple):
    """One audit record, as much as the ledger needs."""

    time: float  # seconds since the epoch, UTC
    kind: str  # the audit event
    user: str
    server: str  # the server name, "" for the default one
    devices: tuple[str, ...] = ()
    #: for gpu-usage: the window it covers (seconds, ending at ``time``) and the seconds used
    #: on each of ``devices``
    window: float = 0.0
    used: tuple[float, ...] = ()


class TrailError(ValueError):
    """A line of the trail is not an audit record."""


# --- reading the trail -----------------------------------------------------------------

#: the start of a line as the hub writes it (jupyter_events' envelope, then the audit fields in
#: `audit._FIELDS` order): the time as hour, minute and seconds, names without escapes
_HEAD_TEXT = (r'\{"__timestamp__": "(\d{4}-\d\d-\d\dT\d\d):([0-5]\d):([0-5]\d(?:\.\d{1,6})?)Z", '
              r'"__schema__": "[^"]*", "__schema_version__": "[^"]*", "__metadata_version__": \d+, '
              r'"event": "([a-z-]+)", "user": "([^"\\]*)", "server_name": "([^"\\]*)", ')
_HEAD = re.compile(_HEAD_TEXT)
_HOUR = re.compile(r"\d{4}-\d\d-\d\dT\d\d")
_DEVICES = ', "devices": ['
_DECODE = json.JSONDecoder().raw_decode
_WITH_DEVICES = frozenset({"gpus-assigned", "gpus-released", "orphan-removed"})
#: read with their utilisation (`_measured`)
_WHOLE = frozenset({"gpu-usage"})
#: a gpu-usage record's utilisation as the hub writes it (`core.utilisation.UseRecord`), its last field
_UTILISATION_AT = ', "utilisation": {"window_seconds": '
_UTILISATION = re.compile(r'([0-9.]+), "per_device": \[(.*)\]\}\}\n?$')
_PER_DEVICE_TEXT = (r'\{"uuid": "([^"\\]+)", "used_seconds": ([0-9.]+), "measured_seconds": [0-9.]+, '
                    r'"mean_percent": (?:[0-9.]+|null), "memory_max_bytes": (?:[0-9]+|null)\}')
_PER_DEVICE = re.compile(_PER_DEVICE_TEXT)
#: the common case, a server with one GPU, in one match
_ONE_DEVICE = re.compile(r'([0-9.]+), "per_device": \[' + _PER_DEVICE_TEXT + r'\]\}\}\n?$')
_HOURS: dict[str, float] = {}


def parse_time(text: str) -> float:
    """An RFC 3339 time (``2026-01-31T09:15:02.123456Z``, or any offset; naive is UTC) as
    seconds since the epoch."""
    when = datetime.fromisoformat(text)
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def parse_line(line: str) -> Event | None:
    """The ledger's view of one line of the trail; None for a blank line or an event the
    ledger does not read. Raises `TrailError` for a line that is not an audit record.

    A line as the hub writes it is read by one strict regular expression over its start (and
    ``json`` for the devices near its end); any other line (keys in another order, a name with
    an escape) through ``json.loads``, so it is read right, only slower."""
    head = _HEAD.match(line)
    if head is None:
        return _slow(line)
    hour, minute, seconds, kind, user, server = head.groups()
    if kind not in LEDGER_EVENTS:
        return None
    try:
        if kind in _WHOLE:
            return _measured(line, _HOURS.get(hour) or _hour(hour), minute, seconds, kind, user, server)
        devices = _devices(line) if kind in _WITH_DEVICES else ()
        base = _HOURS.get(hour) or _hour(hour)
    except (ValueError, TypeError):
        return _slow(line)
    return Event(base + int(minute) * 60 + float(seconds), kind, user, server, devices)


def _measured(line: str, base: float, minute: str, seconds: str, kind: str, user: str, server: str) -> Event | None:
    """A gpu-usage record as the hub writes it, by regular expression (a year of a large hub
    has hundreds of thousands); any other layout through `_slow`."""
    at = line.rfind(_UTILISATION_AT)
    if at < 0:
        return _slow(line)
    one = _ONE_DEVICE.match(line, at + len(_UTILISATION_AT))
    if one is not None:
        window, device, seconds_used = one.groups()
        return _NEW(Event, (base + int(minute) * 60 + float(seconds), kind, user, server, (device,),
                            float(window), (float(seconds_used),)))
    found = _UTILISATION.match(line, at + len(_UTILISATION_AT))
    if found is None:
        return _slow(line)
    window, per_device = found.groups()
    used = _PER_DEVICE.findall(per_device)
    if len(used) != per_device.count('{"uuid"'):
        return _slow(line)
    return _NEW(Event, (base + int(minute) * 60 + float(seconds), kind, user, server, tuple(u for u, _ in used),
                        float(window), tuple(float(s) for _, s in used)))


def _devices(line: str) -> tuple[str, ...]:
    """The record's own devices: the last ``"devices"`` key of the line, after security (an
    object of any keys) and before the strings and the admission object (null for the
    events that carry devices) that end the record. UUIDs need no escapes: a list with one
    goes through ``json``."""
    at = line.rindex(_DEVICES) + 14
    end = line.index("]", at)
    raw = line[at:end]
    if not raw:
        return ()
    if "\\" in raw or raw[0] != '"' or raw[-1] != '"':
        found, _ = _DECODE(line, at - 1)
        if not all(isinstance(d, str) for d in found):
            raise TypeError("devices are not strings")
        return tuple(found)
    devices = tuple(raw[1:-1].split('", "'))
    if any('"' in d for d in devices):
        raise ValueError(f"not a list of strings: [{raw}]")
    return devices


def _hour(text: str) -> float:
    """``YYYY-MM-DDTHH`` (UTC) in seconds since the epoch, remembered: a trail has many
    records an hour."""
    if not _HOUR.fullmatch(text):
        raise ValueError(f"not an hour: {text!r}")
    if len(_HOURS) > 100_000:
        _HOURS.clear()
    value = _HOURS[text] = float(calendar.timegm(
        (int(text[0:4]), int(text[5:7]), int(text[8:10]), int(text[11:13]), 0, 0, 0, 0, 0)))
    return value


def _slow(line: str) -> Event | None:
    """`parse_line` for any layout: the whole line through ``json.loads``."""
    if not line.strip():
        return None
    try:
        record = json.loads(line)
        kind = record["event"]
        if kind not in LEDGER_EVENTS:
            return None
        user, server, devices = record["user"], record.get("server_name") or "", record.get("devices") or ()
        if not isinstance(user, str) or not isinstance(server, str) or not isinstance(devices, (list, tuple)) \
                or not all(isinstance(d, str) for d in devices):
            raise TypeError("user, server_name or devices of the wrong type")
        when = parse_time(record["__timestamp__"])
        if kind == "gpu-usage":
            measured = record["utilisation"]
            per_device = {d["uuid"]: float(d["used_seconds"]) for d in measured["per_device"]}
            return Event(when, kind, user, server, tuple(per_device), float(measured["window_seconds"]),
                         tuple(per_device.values()))
        return Event(when, kind, user, server, tuple(devices))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise TrailError(f"not an audit record ({type(e).__name__}: {e}): {line.rstrip()[:120]!r}") from None


def read_events(lines: Iterable[str], problems: list[str] | None = None, first: int = 1) -> Iterator[Event]:
    """The ledger's events of a trail, in file order: `parse_line` of each line (inlined for
    the lines the hub writes: a year of a large hub's trail is millions of lines). A line that
    is not an audit record is skipped and described in ``problems`` (when given), by its
    number (``first``: the number of the first line given): a trail cut by a full disk, say."""
    match, wanted, with_devices, whole, hours, new, measured = (
        _HEAD.match, LEDGER_EVENTS, _WITH_DEVICES, _WHOLE, _HOURS, tuple.__new__, _measured)
    for number, line in enumerate(lines, first):
        head = match(line)
        if head is not None:
            hour, minute, seconds, kind, user, server = head.groups()
            if kind not in wanted:
                continue
            base = hours.get(hour)
            if base is not None and kind not in with_devices:
                if kind in whole:
                    try:
                        event = measured(line, base, minute, seconds, kind, user, server)
                    except (ValueError, TypeError):
                        pass  # parse_line says what is wrong
                    else:
                        if event is not None:
                            yield event
                        continue
                else:
                    yield new(Event, (base + int(minute) * 60 + float(seconds), kind, user, server, (), 0.0, ()))
                    continue
        try:
            event = parse_line(line)
        except TrailError as e:
            if problems is not None:
                problems.append(f"line {number}: {e}")
            continue
        if event is not None:
            yield event


# --- the ledger --------------------------------------------------------------------------


class Interval(NamedTuple):
    """One stretch of GPU time (one device) or server time of one server."""

    kind: str  # GPU or SERVER
    user: str
    server: str
    device: str  # "" for server time
    start: float
    end: float
    ended_by: str  # the audit event that ended it, RUNNING, REASSIGNED or ESTIMATED (module docstring)

    def seconds(self, since: float = -math.inf, until: float = math.inf) -> float:
        """How much of it lies in [since, until)."""
        return max(0.0, min(self.end, until) - max(self.start, since))


@dataclass(frozen=True)
class Running:
    """A server that runs now, as its labels (or the hub's GPU table) say."""

    user: str
    server: str = ""
    devices: tuple[str, ...] = ()
    #: since when it holds its devices (the gpus-since label), None when unknown
    gpus_since: float | None = None
    #: since when it runs (the container's creation), None when unknown
    started: float | None = None


class Use(NamedTuple):
    """GPU time used on one device by one server over a window (a ``gpu-usage`` record)."""

    user: str
    server: str
    device: str
    start: float
    end: float
    seconds: float  # used: utilisation times time

    def within(self, since: float, until: float) -> float:
        """The share of it in [since, until), spread evenly over its window."""
        if self.end <= self.start:
            return self.seconds if since <= self.end < until else 0.0
        overlap = min(self.end, until) - max(self.start, since)
        return self.seconds * overlap / (self.end - self.start) if overlap > 0 else 0.0


Holder = tuple[str, str]
_NEW = tuple.__new__


@dataclass
class Ledger:
    """The intervals of a trail, fed in order (`feed`, any number of times: the hub feeds the
    lines appended since its last look); `intervals` closes what is still open against the
    servers that run now, without changing what was fed."""

    #: devices are held by one server at a time (gpu_max_users_per_gpu = 1): then a device
    #: assigned to another server ends the holding before it
    exclusive: bool = True
    #: closed intervals that end before this are not kept (a reader that asks only about
    #: later periods: the CLI's --since, the GPU board's month)
    keep_from: float = -math.inf
    closed: list[Interval] = field(default_factory=list)
    #: GPU time used (``gpu-usage`` records), as fed
    used: list[Use] = field(default_factory=list)
    #: the time of the latest record fed
    last_time: float = -math.inf
    _gpus: dict[Holder, dict[str, float]] = field(default_factory=dict)
    _servers: dict[Holder, float] = field(default_factory=dict)
    _device_holders: dict[str, set[Holder]] = field(default_factory=dict)
    #: the end of each holder's latest closed interval (a running server the trail does not
    #: show the start of is counted from no earlier than that)
    _last_end: dict[Holder, float] = field(default_factory=dict)

    def feed(self, events: Iterable[Event]) -> None:
        gpus, servers, holders_of = self._gpus, self._servers, self._device_holders
        last = self.last_time
        try:
            for time, kind, user, server, devices, window, used in events:
                if time < last:  # the hub's clock stepped back: keep the order of the file
                    time = last
                last = time
                holder = (user, server)
                if kind == "gpu-usage":
                    if time >= self.keep_from:
                        for device, seconds in zip(devices, used):
                            self.used.append(_NEW(Use, (user, server, device, time - window, time, seconds)))
                elif kind == "gpus-released":
                    if holder in gpus:
                        self._end_gpus(holder, time, kind)
                elif kind == "server-started":
                    if holder in servers:
                        self._end_server(holder, time, kind)
                    servers[holder] = time
                elif kind in _ENDS_SERVER_AND_GPUS:
                    if holder in gpus:
                        self._end_gpus(holder, time, kind)
                    if holder in servers:
                        self._end_server(holder, time, kind)
                    if kind == "gpus-assigned" and devices:
                        if self.exclusive:  # the allocator gave the device away: its last holder was gone
                            for device in devices:
                                for other in list(holders_of.get(device, ())):
                                    self._end_gpus(other, time, REASSIGNED)
                                    self._end_server(other, time, REASSIGNED)
                        opened = gpus.setdefault(holder, {})
                        for device in devices:
                            opened[device] = time
                            holders_of.setdefault(device, set()).add(holder)
        finally:
            self.last_time = last

    # Intervals are made with tuple.__new__ (a NamedTuple's own constructor is a Python function,
    # and a year of a large hub is hundreds of thousands of them). Times only grow (`feed`), so
    # an interval that ends now ends its holder's latest.

    def _end_gpus(self, holder: Holder, time: float, why: str) -> None:
        for device, start in self._gpus.pop(holder, {}).items():
            end = time if time > start else start
            if end >= self.keep_from:
                self.closed.append(_NEW(Interval, (GPU, holder[0], holder[1], device, start, end, why)))
            self._last_end[holder] = end
            holders = self._device_holders.get(device)
            if holders:
                holders.discard(holder)

    def _end_server(self, holder: Holder, time: float, why: str) -> None:
        start = self._servers.pop(holder, None)
        if start is not None:
            end = time if time > start else start
            if end >= self.keep_from:
                self.closed.append(_NEW(Interval, (SERVER, holder[0], holder[1], "", start, end, why)))
            self._last_end[holder] = end

    def forget_before(self, time: float) -> None:
        """Drop the closed intervals that end before ``time``, and keep no more such (a reader
        that only ever asks about later periods, such as the GPU board's current month)."""
        self.keep_from = max(self.keep_from, time)
        self.closed = [i for i in self.closed if i.end >= time]
        self.used = [u for u in self.used if u.end >= time]

    def intervals(self, running: Iterable[Running], now: float, running_at: float | None = None) -> list[Interval]:
        """Every interval: the closed ones, and the open ones ended as the module docstring
        says. ``running``: the servers that ran at ``running_at`` (default ``now``); an
        interval that opened after that counts as running (it began after the look)."""
        looked = now if running_at is None else running_at
        held = {}
        up = {}
        for server in running:
            holder = (server.user, server.server)
            up[holder] = server
            held[holder] = set(server.devices)
        found = list(self.closed)
        estimated_end = self.last_time
        for holder, opened in self._gpus.items():
            for device, start in opened.items():
                if device in held.get(holder, ()) or start >= looked:
                    found.append(Interval(GPU, *holder, device, start, max(now, start), RUNNING))
                else:
                    found.append(Interval(GPU, *holder, device, start, max(estimated_end, start), ESTIMATED))
        for holder, start in self._servers.items():
            if holder in up or start >= looked:
                found.append(Interval(SERVER, *holder, "", start, max(now, start), RUNNING))
            else:
                found.append(Interval(SERVER, *holder, "", start, max(estimated_end, start), ESTIMATED))
        # servers that run but whose start the trail does not show (it was rotated, or the
        # audit trail was switched on later): from their labels, never before what was counted
        for holder, server in up.items():
            floor = self._last_end.get(holder, -math.inf)
            opened = self._gpus.get(holder, {})
            for device in server.devices:
                since = server.gpus_since if server.gpus_since is not None else server.started
                if device not in opened and since is not None:
                    start = max(since, floor)
                    found.append(Interval(GPU, *holder, device, start, max(now, start), RUNNING))
            if holder not in self._servers and server.started is not None:
                start = max(server.started, floor)
                found.append(Interval(SERVER, *holder, "", start, max(now, start), RUNNING))
        return found


def ledger(events: Iterable[Event], running: Iterable[Running] = (), *, now: float,
           exclusive: bool = True, running_at: float | None = None) -> list[Interval]:
    """Every interval of ``events`` (module docstring), in one call."""
    book = Ledger(exclusive=exclusive)
    book.feed(events)
    return book.intervals(running, now, running_at)


# --- totals --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """The usage of one user, group or device over a period."""

    key: str
    gpu_seconds: float
    server_seconds: float | None  # None by device: a device has no server time
    #: some of it ends at an estimate (`ESTIMATED`)
    estimated: bool = False
    #: GPU time used (`Use`); None where the trail has no utilisation at all
    used_seconds: float | None = None

    def as_dict(self, by: str) -> dict:
        return {
            by: self.key,
            "gpu_seconds": round(self.gpu_seconds, 3),
            "gpu_hours": round(self.gpu_seconds / 3600, 4),
            "gpu_used_seconds": None if self.used_seconds is None else round(self.used_seconds, 3),
            "gpu_used_hours": None if self.used_seconds is None else round(self.used_seconds / 3600, 4),
            "server_seconds": None if self.server_seconds is None else round(self.server_seconds, 3),
            "server_hours": None if self.server_seconds is None else round(self.server_seconds / 3600, 4),
            "estimated": self.estimated,
        }


def totals(intervals: Iterable[Interval], *, since: float, until: float, by: str = "user",
           groups: Mapping[str, Sequence[str]] | None = None, used: Sequence[Use] = ()) -> list[Row]:
    """GPU and server seconds in [since, until) per user, group or device, largest GPU time
    first. By group, a user counts in each of their groups (`NO_GROUP` when in none), so group
    totals may add up to more than the whole. ``used``: the ledger's GPU time used, added up
    beside (each row's ``used_seconds`` stays None when there is none at all)."""
    if by not in BY:
        raise ValueError(f"by must be one of {', '.join(BY)}, not {by!r}")
    gpu: dict[str, float] = {}
    server: dict[str, float] = {}
    estimated: set[str] = set()
    groups = groups or {}
    for interval in intervals:
        kind, user, _, device, start, end, ended_by = interval
        seconds = (end if end < until else until) - (start if start > since else since)
        if seconds <= 0:
            continue
        if by == "user":
            keys: Sequence[str] = (user,)
        elif by == "device":
            if kind != GPU:
                continue
            keys = (device,)
        else:
            keys = groups.get(user) or (NO_GROUP,)
        sums = gpu if kind == GPU else server
        for key in keys:
            sums[key] = sums.get(key, 0.0) + seconds
            if key not in gpu:
                gpu[key] = 0.0
            if ended_by == ESTIMATED:
                estimated.add(key)
    busy: dict[str, float] | None = _used_by(used, since, until, by, groups) if used else None
    for key in busy or ():
        gpu.setdefault(key, 0.0)
    rows = [Row(key, gpu[key], None if by == "device" else server.get(key, 0.0), key in estimated,
                None if busy is None else busy.get(key, 0.0)) for key in gpu]
    return sorted(rows, key=lambda r: (-r.gpu_seconds, -(r.server_seconds or 0.0), r.key))


def _used_by(used: Iterable[Use], since: float, until: float, by: str,
             groups: Mapping[str, Sequence[str]]) -> dict[str, float]:
    found: dict[str, float] = {}
    for use in used:
        user, _, device, start, end, _ = use
        if start >= since and end < until:  # the whole window (most of them)
            seconds = use.seconds
        else:
            seconds = use.within(since, until)
            if seconds <= 0:
                continue
        if by == "user":
            found[user] = found.get(user, 0.0) + seconds
        elif by == "device":
            found[device] = found.get(device, 0.0) + seconds
        else:
            for key in groups.get(user) or (NO_GROUP,):
                found[key] = found.get(key, 0.0) + seconds
    return found


def month_start(now: datetime) -> datetime:
    """The first instant of ``now``'s month, in ``now``'s zone (UTC when naive)."""
    if now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


# --- renderings ----------------------------------------------------------------------------


def hours(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds / 3600:.2f}"


def _iso(when: float) -> str:
    return datetime.fromtimestamp(when, timezone.utc).isoformat().replace("+00:00", "Z")


def as_table(rows: Sequence[Row], *, by: str, since: float, until: float, notes: Sequence[str] = ()) -> str:
    """For people: one line per row, hours with two decimals, a total, then the notes."""
    with_used = any(r.used_seconds is not None for r in rows)
    head = [by.upper(), "GPU-HOURS", *(["GPU-HOURS USED"] if with_used else []),
            *(["SERVER-HOURS"] if by != "device" else [])]
    lines = [head]
    for row in rows:
        mark = " *" if row.estimated else ""
        cells = [row.key, hours(row.gpu_seconds) + mark]
        if with_used:
            cells.append(hours(row.used_seconds))
        if by != "device":
            cells.append(hours(row.server_seconds))
        lines.append(cells)
    total_gpu = sum(r.gpu_seconds for r in rows)
    total = ["TOTAL", hours(total_gpu)]
    if with_used:
        total.append(hours(sum(r.used_seconds or 0.0 for r in rows)))
    if by != "device":
        total.append(hours(sum(r.server_seconds or 0.0 for r in rows)))
    widths = [max(len(line[i]) for line in [*lines, total]) for i in range(len(head))]
    text = [f"Usage from {_iso(since)} to {_iso(until)}, by {by}:"]
    if not rows:
        text.append("No GPU or server time in this period.")
    else:
        for line in [*lines, total]:
            text.append("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                                  for i, (cell, w) in enumerate(zip(line, widths))).rstrip())
    if by == "group" and rows:
        text.append("A user counts in each of their groups (as the hub's database has them now).")
    if any(r.estimated for r in rows):
        text.append("* includes time whose end the trail does not record; counted to the trail's last record.")
    if with_used:
        text.append("GPU-hours used: the GPUs' utilisation times time, as the hub sampled it (NVML).")
    text.extend(f"note: {note}" for note in notes)
    return "\n".join(text) + "\n"


def as_json(rows: Sequence[Row], *, by: str, since: float, until: float, notes: Sequence[str] = ()) -> str:
    total_gpu = sum(r.gpu_seconds for r in rows)
    total_server = None if by == "device" else sum(r.server_seconds or 0.0 for r in rows)
    measured = [r.used_seconds for r in rows if r.used_seconds is not None]
    total_used = sum(measured) if measured else None
    return json.dumps({
        "since": _iso(since), "until": _iso(until), "by": by,
        "rows": [row.as_dict(by) for row in rows],
        "total": Row("", total_gpu, total_server, any(r.estimated for r in rows), total_used).as_dict(by) | {by: None},
        "notes": list(notes),
    }, indent=2)


def as_csv(rows: Sequence[Row], *, by: str) -> str:
    out = io.StringIO()
    fields = [by, "gpu_seconds", "gpu_hours", "gpu_used_seconds", "gpu_used_hours", "server_seconds", "server_hours",
              "estimated"]
    writer = csv.DictWriter(out, fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row.as_dict(by))
    return out.getvalue()
