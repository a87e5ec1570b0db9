"""Which of the servers starting at this moment stopped running: one look for all of them.

`readiness.wait_until_up` must notice a server that dies before it answers (and show its
last words). Asking the engine about each starting server in turn costs one ``inspect`` per
server every few seconds: a burst of a hundred made 12,000 of them in four minutes, and the
hub spent most of its CPU reading their answers. One `StartWatch` per hub (in its
`HubContext`) instead lists the running servers once every `WATCH_EVERY` seconds while any
server is starting, and tells each waiter whose container is no longer among them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Protocol

from ..labels import MANAGED_SERVERS

#: seconds between two looks at which starting servers still run
WATCH_EVERY = 2.0


class Engine(Protocol):
    def docker(self, method: str, *args, **kwargs) -> Awaitable: ...


class StartWatch:
    """Which starting servers stopped running, for every waiter at once (one per hub:
    `HubContext.start_watch`). Only the hub's event loop uses it."""

    def __init__(self, context: Engine):
        self.context = context
        self.waiting: dict[str, asyncio.Future] = {}
        self._task: asyncio.Task | None = None

    def watch(self, container_id: str) -> asyncio.Future:
        """A future that is done once the container no longer runs (or the engine could not
        be asked: it then carries that error)."""
        loop = asyncio.get_running_loop()
        found = self.waiting.get(container_id)
        if found is None:
            found = self.waiting[container_id] = loop.create_future()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._task = loop.create_task(self._run())
        return found

    def forget(self, container_id: str) -> None:
        future = self.waiting.pop(container_id, None)
        if future is not None and not future.done():
            future.cancel()

    async def _run(self) -> None:
        while self.waiting:
            await asyncio.sleep(WATCH_EVERY)
            if not self.waiting:
                return
            try:
                stopped = await self._stopped(list(self.waiting))
            except Exception as e:  # the engine is gone: every waiter says so
                for future in self.waiting.values():
                    if not future.done():
                        future.set_exception(e)
                self.waiting.clear()
                return
            for container_id in stopped:
                waiter = self.waiting.get(container_id)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)

    async def _stopped(self, ids: list[str]) -> set[str]:
        """The waiting containers that no longer run: stopped, or gone altogether (one list
        of just the waiting ones)."""
        listed = await self.context.docker("containers", all=True, filters={**MANAGED_SERVERS, "id": ids})
        running = {c["Id"] for c in listed if c.get("State") == "running"}
        return set(ids) - running


