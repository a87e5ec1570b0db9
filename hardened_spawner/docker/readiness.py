"""Waiting for a new server to answer, and saying why when it dies first.

The hub would otherwise wait out ``http_timeout`` and show a bare 500 (with plain
DockerSpawner, `InvalidStateError: Exception is not set`). Two things are watched:

- the server's own API, asked with a backoff from 0.1 s up to a ceiling that grows with the
  number of servers starting at once (1 s alone, 5 s for a class of a hundred): alone, a
  server is noticed within a second; in a burst, a hundred servers not listening yet do not
  cost the hub thousands of refused connections a minute;
- whether the container still runs, asked of the engine by one `start_watch.StartWatch` for every
  server starting at that moment: one list of the running servers every 2 s, not one
  ``inspect`` per server (a burst of a hundred made 12,000 of them in four minutes, and the
  hub spent most of its CPU reading their answers).
"""

from __future__ import annotations

import asyncio

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from ..errors import SpawnRefused
from .hub_context import HubContext


def poll_ceiling(starting: int) -> float:
    """The longest pause between two asks of one server's API: 1 s alone, one more second
    for every 25 servers starting at once, at most 5 s (JupyterHub's own ceiling)."""
    return min(1.0 + starting / 25, 5.0)


async def wait_until_up(context: HubContext, container_id: str, state: dict, url: str, timeout: float,
                        name: str) -> None:
    """Return once ``url`` answers below 500; raise a refusal if the container stops first
    (with its last output) or nothing answers within ``timeout`` seconds. ``state``: the
    container's, right after its start (one that died at once is told at once)."""
    client = AsyncHTTPClient()
    clock = asyncio.get_running_loop().time
    deadline = clock() + timeout
    delay = 0.1
    watch = context.start_watch
    stopped = watch.watch(container_id)
    try:
        while clock() < deadline:
            if not state["Running"]:
                raise await died_during_start(context, container_id, state)
            if stopped.done():
                stopped.result()  # the engine's error, if it could not be asked
                state = (await context.docker("inspect_container", container_id))["State"]
                if state["Running"]:  # the watch's list was older than its start: watch again
                    watch.forget(container_id)
                    stopped = watch.watch(container_id)
                continue
            try:
                request = HTTPRequest(url, connect_timeout=1, request_timeout=2, follow_redirects=False)
                if (await client.fetch(request, raise_error=False)).code < 500:
                    return
            except (OSError, HTTPClientError):  # not listening yet, or gone
                pass
            await asyncio.wait([stopped], timeout=delay)
            delay = min(delay * 2, poll_ceiling(len(watch.waiting)))
    finally:
        watch.forget(container_id)
    raise SpawnRefused(
        f"Your server started but did not answer within {timeout} seconds. "
        "Try again; if it keeps happening, ask your hub admin to look at the server's log.",
        reason="timeout",
        status_code=500,
        log_message=f"{name} did not answer at {url} within {timeout}s",
    )


async def died_during_start(context: HubContext, container_id: str, state: dict) -> SpawnRefused:
    logs = (await context.docker("logs", container_id, tail=15)).decode(errors="replace")
    tail = "\n".join(line[:300] for line in logs.strip().splitlines()[-15:])
    message = (
        f"Your server stopped while starting (exit code {state.get('ExitCode')}"
        f"{', out of memory' if state.get('OOMKilled') else ''}). Its last output:\n{tail}"
    )
    return SpawnRefused(message, reason="container-died", status_code=500)
