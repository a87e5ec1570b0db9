"""The audit trail: one JSON object per line for every security-relevant step.

Events go through a private `jupyter_events.EventLogger` that validates them
against our schema (``event_schemas/audit/v1.yaml``, which documents every
field) and writes them to the sink named by ``HardenedSpawner.audit_log``:
``""`` disables auditing, ``"-"``/``"stderr"`` and ``"stdout"`` name the
streams, anything else is a file opened for appending. Each line is a bare
JSON object (no logging prefix), ready for Loki, Elasticsearch or any shipper.

`AuditTrail.emit` never raises: an audit failure must not stop a spawn, so it
is logged on the hub's log (with the event) instead.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from jsonschema import ValidationError
from jupyter_events import EventLogger

AUDIT_SCHEMA_ID = "https://schema.jupyter.org/hardened-spawner/audit"
AUDIT_SCHEMA_PATH = Path(__file__).parent / "event_schemas" / "audit" / "v1.yaml"
EVENTS = (
    "spawn-requested", "spawn-refused", "server-started", "server-stopped",
    "server-died", "gpus-assigned", "gpus-released", "orphan-removed", "gpu-usage",
    "image-admitted", "image-refused", "image-approved",
)
# Every field of the schema, in output order, with its value when not given.
_FIELDS: dict[str, Any] = {
    "user": None, "server_name": "", "uid": None, "gid": None, "client_ip": None,
    "image": None, "image_digest": None, "policy_fingerprint": None,
    "security": None, "devices": None, "container_id": None, "container_name": None,
    "reason": None, "admission": None,
}
_STREAMS = {"-": "stderr", "stderr": "stderr", "stdout": "stdout"}
SETTING = "HardenedSpawner.audit_log"


class AuditLogError(ValueError):
    """The configured audit sink cannot be opened."""


class _RaiseOnError:
    """Handler mixin: write errors reach AuditTrail.emit (logging would print
    and swallow them, so a full disk would lose the trail silently)."""

    def handleError(self, record: logging.LogRecord) -> None:
        raise


class _StdHandler(_RaiseOnError, logging.StreamHandler):
    """Writes to sys.stdout/sys.stderr as they are at each event."""

    def __init__(self, name: str):
        logging.Handler.__init__(self)
        self._name = name

    @property
    def stream(self):
        return getattr(sys, self._name)


class _FileHandler(_RaiseOnError, logging.FileHandler):
    def _open(self):
        # New files get 0640: the trail names users and their IPs.
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        return os.fdopen(fd, "a", encoding="utf-8")


class _JSONLines(logging.Formatter):
    """The event as one line of strict JSON (ASCII; NaN/Infinity refused)."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(record.msg, ensure_ascii=True, allow_nan=False)


class AuditTrail:
    """Validated audit events written to one sink; see the module docstring."""

    def __init__(self, sink: str, log: logging.Logger | None = None):
        self.sink = sink
        self.log = log or logging.getLogger(__name__)
        self.closed = False
        self._events: EventLogger | None = None
        if not sink:
            return
        self._handler = self._open_handler(sink)
        self._handler.setLevel(logging.INFO)
        self._events = EventLogger()
        self._events.register_event_schema(AUDIT_SCHEMA_PATH)
        self._events.register_handler(self._handler)
        self._handler.setFormatter(_JSONLines())  # after register_handler, which sets its own

    @staticmethod
    def _open_handler(sink: str) -> logging.Handler:
        if sink in _STREAMS:
            return _StdHandler(_STREAMS[sink])
        path = os.path.abspath(sink)
        directory = os.path.dirname(path)
        if not os.path.isdir(directory):
            raise AuditLogError(
                f"{SETTING} = {sink!r}: directory {directory!r} does not exist; "
                f"create it, or set {SETTING} = '' to disable the audit trail"
            )
        try:
            return _FileHandler(path, mode="a", encoding="utf-8")
        except OSError as err:
            raise AuditLogError(f"{SETTING} = {sink!r}: cannot open for appending: {err}") from err

    @property
    def enabled(self) -> bool:
        return self._events is not None

    def emit(self, event: str, **fields: Any) -> None:
        """Record one event; missing optional fields become null (devices: [])."""
        if self._events is None:
            if self.closed:
                self.log.error("Audit event %r not recorded: audit trail %r is closed", event, self.sink)
            return
        data: dict[str, Any] = {"event": event}
        for name, default in _FIELDS.items():
            data[name] = fields.pop(name, default)
        if data["devices"] is None or isinstance(data["devices"], tuple):
            data["devices"] = list(data["devices"] or ())  # None -> [], tuple -> list
        data.update(fields)  # unknown names: the schema rejects them below
        try:
            # Naive UTC: jupyter_events appends "Z" to isoformat(), so an aware
            # time would give the invalid "...+00:00Z".
            now = datetime.now(timezone.utc).replace(tzinfo=None)
            self._events.emit(schema_id=AUDIT_SCHEMA_ID, data=data, timestamp_override=now)
        except Exception as err:
            self.log.error(
                "Audit event %r not recorded to %s (%s): %s",
                event, self.sink or "-", _reason(err), _dump(data),
            )

    def close(self) -> None:
        """Detach and close the sink (never the process's stdout/stderr)."""
        if _TRAILS.get(_key(self.sink)) is self:
            del _TRAILS[_key(self.sink)]
        self.closed = True
        if self._events is not None:
            events, self._events = self._events, None
            try:
                events.remove_handler(self._handler)
                self._handler.close()
            except Exception as err:
                self.log.error("Closing audit trail %r failed: %s", self.sink, _reason(err))


def _reason(err: Exception) -> str:
    """Short and without the schema dump str(ValidationError) carries."""
    if isinstance(err, ValidationError):
        where = "/".join(str(p) for p in err.absolute_path)
        return f"invalid {where or 'event'}: {err.message}"
    return f"{type(err).__name__}: {err}"


def _dump(data: dict[str, Any]) -> str:
    """The event for the hub log, so that it is not lost altogether."""
    try:
        return json.dumps(data, default=repr, allow_nan=True)
    except Exception:
        return repr(data)


def _key(sink: str) -> str:
    """One cache key per real sink: "-" is stderr, a file is its absolute path."""
    return _STREAMS.get(sink) or (os.path.abspath(sink) if sink else "")


_TRAILS: dict[str, AuditTrail] = {}
_TRAILS_LOCK = threading.Lock()


def get_audit_trail(sink: str, log: logging.Logger | None = None) -> AuditTrail:
    """The process-wide AuditTrail for `sink`, created on first use.

    All spawners of a hub share it, so each event is written once and a file
    is opened once; `log` is used only when the trail is created.
    Raises AuditLogError (naming HardenedSpawner.audit_log) if the sink
    cannot be opened.
    """
    key = _key(sink)
    with _TRAILS_LOCK:  # spawners and the hub-start work in threads may both ask first
        trail = _TRAILS.get(key)
        if trail is None:
            trail = _TRAILS[key] = AuditTrail(sink, log)
        return trail
