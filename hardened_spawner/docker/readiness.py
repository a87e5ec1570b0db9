"""Waiting for a new server to answer, and saying why when it dies first.

The hub would otherwise wait out ``http_timeout`` and show a bare 500 (with plain
DockerSpawner, `InvalidStateError: Exception is not set`). The server is asked often
(backing off from 0.1 s to 1 s); the engine is asked whether the container still runs
only every 2 s, since dozens of servers may be starting at once.
"""

from __future__ import annotations

import asyncio

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from ..errors import SpawnRefused
from .hub_context import HubContext


async def wait_until_up(context: HubContext, container_id: str, url: str, timeout: float, name: str) -> None:
    """Return once ``url`` answers below 500; raise a refusal if the container stops first
    (with its last output) or nothing answers within ``timeout`` seconds."""
    client = AsyncHTTPClient()
    clock = asyncio.get_running_loop().time
    deadline = clock() + timeout
    delay, next_state_check = 0.1, clock()
    while clock() < deadline:
        if clock() >= next_state_check:
            state = (await context.docker("inspect_container", container_id))["State"]
            if not state["Running"]:
                raise await died_during_start(context, container_id, state)
            next_state_check = clock() + 2
        try:
            request = HTTPRequest(url, connect_timeout=1, request_timeout=2, follow_redirects=False)
            if (await client.fetch(request, raise_error=False)).code < 500:
                return
        except (OSError, HTTPClientError):  # not listening yet, or gone
            pass
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)
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
