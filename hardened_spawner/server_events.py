"""What both spawners tell the user while a server starts, and the audit trail after.

`ServerEvents` is a mixin of `HardenedSpawner` and `HardenedKubeSpawner`: real steps on
the spawn page (``Spawner.progress``, fed by `_report`) and the one shape of an audit
event's fields, so that a server started on Docker and one started on Kubernetes read
the same in the trail. A backend names its object (`_audit_object`).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from .core.profile import audit_summary


class ServerEvents:
    """Progress events and audit fields (module docstring)."""

    if TYPE_CHECKING:  # the spawner's own attributes these read
        log: Any
        user: Any
        name: str
        image: str
        _log_name: str
        _uid: int | None
        _gpus_held: tuple[str, ...]
        _plan: Any

    def _start_events(self) -> None:
        self._events: list[dict] = []
        self._event_signal = asyncio.Event()
        self._start_done = False

    def _end_events(self) -> None:
        self._start_done = True
        self._event_signal.set()

    def _report(self, progress: int, message: str, log: bool = True) -> None:
        """Tell the spawn page (and the hub log, unless ``log`` is False: a message that
        repeats, such as a place in the start queue, is logged once)."""
        if log:
            self.log.info("%s: %s", self._log_name, message)
        self._events.append({"progress": progress, "message": message})
        self._event_signal.set()

    async def progress(self):
        sent = 0
        while True:
            while sent < len(self._events):
                yield self._events[sent]
                sent += 1
            if self._start_done:
                return
            self._event_signal.clear()
            await self._event_signal.wait()

    def _audit_object(self) -> dict:
        """The backend's own names for the server's object (container, pod)."""
        raise NotImplementedError

    def _workspace_quota(self) -> int | None:
        """The workspace quota this start enforces, in bytes (None: none); the backend knows."""
        return None

    def _audit_fields(self, **extra) -> dict:
        handler = getattr(self, "handler", None)
        plan = self._plan
        profile = plan.profile if plan else None
        fields = {
            "user": self.user.name,
            "server_name": self.name,
            "uid": self._uid,
            "gid": self._uid,
            "client_ip": handler.request.remote_ip if handler is not None else None,
            "image": self.image,
            "image_digest": plan.image_digest if plan else None,
            "policy_fingerprint": profile.fingerprint() if profile else None,
            "security": {**audit_summary(profile), "workspace_quota": self._workspace_quota()} if profile else {},
            "devices": list(self._gpus_held),
            **self._audit_object(),
        }
        fields.update(extra)
        return fields
