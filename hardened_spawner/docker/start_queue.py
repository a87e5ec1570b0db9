"""How many servers start at once on one engine: the rest wait their turn, in order.

A single-user server's start is a couple of CPU-seconds of Python imports. When a whole class
presses Start in the same minute, starting every server at once does not finish sooner: the
starts share the cores, every one of them is slow, and nobody's server answers until nearly
all of them do. Thirty servers at once on two cores were all answering after 41.7 s, the
median user after 40.1 s; three at a time, all after 29.0 s and the median user after 15.7 s
(`benchmarks/start_concurrency.py`; `benchmarks/README.md`, "A class of 100"). So one `StartQueue` per hub (in its `HubContext`)
lets `limit` servers be between "create the container" and "the server answers" at once; the
others wait first come, first served, and their spawn page says how many are ahead of them.

A spawn's whole start, its wait included, must end within ``start_timeout`` (the hub cancels it
then). So a spawn waits at most that budget less what a start itself needs now: twice the
longest of the last starts, at least `MIN_RESERVE` seconds (a quarter of the budget before any
start finished). With a 120 s budget and starts of 5 s, a spawn waits up to 110 s instead of
giving up at 90 s with its turn a second away. One that waits longer is refused with a message
that says so, instead of the hub's bare timeout; a spawn the hub gives up on or stops leaves the
queue at once and never starts a container afterwards.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

#: seconds between two looks at a waiting spawn's place: each change is an event on its spawn
#: page, and a hundred waiting pages told every moment cost the hub and the proxy CPU that the
#: starts need
REPORT_EVERY = 5.0

#: the least time left for a start after its wait, and how many recent starts tell how long one takes
MIN_RESERVE = 10.0
RECENT_STARTS = 20


class QueueTimeout(Exception):
    """A spawn waited ``waited`` seconds for a slot and ``ahead`` spawns were still before it."""

    def __init__(self, waited: float, ahead: int, starting: int):
        super().__init__(f"waited {waited:.0f}s; {ahead} ahead, {starting} starting")
        self.waited, self.ahead, self.starting = waited, ahead, starting

    @property
    def user_message(self) -> str:
        turn = "it was next" if self.ahead == 0 else f"{self.ahead} still ahead of it"
        return (f"The hub is starting many servers at once ({self.starting} now), and yours waited "
                f"{self.waited:.0f} s for its turn ({turn}). Nothing of yours was changed: "
                "press Start again in a minute.")


def place_message(ahead: int, starting: int) -> str:
    """What a waiting user's spawn page says."""
    servers = "server is" if starting == 1 else "servers are"
    return f"Waiting for your turn to start: {starting} {servers} starting, {ahead} ahead of yours"


def default_limit(engine_cpus: int) -> int:
    """Two starts per CPU of the engine: its cores stay busy while one start waits for the
    engine (creating the container, its network) and another for its disk."""
    return max(2, 2 * engine_cpus)


class StartQueue:
    """Slots for the servers starting at once; the spawns beyond them wait in order. Only the
    hub's event loop uses it."""

    def __init__(self) -> None:
        #: spawns holding a slot now
        self.starting = 0
        self._waiting: deque[asyncio.Future] = deque()
        #: how long the last starts held their slot, in seconds
        self._recent: deque[float] = deque(maxlen=RECENT_STARTS)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def reserve(self, budget: float) -> float:
        """What to leave of ``budget`` for the start itself (see the module's docstring)."""
        if not self._recent:
            return budget / 4
        return min(max(2 * max(self._recent), MIN_RESERVE), budget / 2)

    @asynccontextmanager
    async def slot(self, limit: int, budget: float, on_wait: Callable[[int, int], None]) -> AsyncIterator[None]:
        """Hold one of ``limit`` slots (0: no limit) while the body runs. While it waits,
        ``on_wait(ahead, starting)`` hears of its place whenever that changes; once less than
        the start needs is left of ``budget`` seconds it raises `QueueTimeout`."""
        await self._acquire(limit, budget, on_wait)
        clock = asyncio.get_running_loop().time
        began = clock()
        try:
            yield
        finally:
            self._recent.append(clock() - began)
            self._release()

    async def _acquire(self, limit: int, budget: float, on_wait: Callable[[int, int], None]) -> None:
        if limit <= 0 or (self.starting < limit and not self._waiting):
            self.starting += 1
            return
        loop = asyncio.get_running_loop()
        ticket = loop.create_future()
        self._waiting.append(ticket)
        began = loop.time()
        told = None
        try:
            while not ticket.done():
                place = (self._waiting.index(ticket), self.starting)
                if place != told:
                    on_wait(*place)
                    told = place
                left = began + budget - self.reserve(budget) - loop.time()
                if left <= 0:
                    raise QueueTimeout(loop.time() - began, *place)
                await asyncio.wait([ticket], timeout=min(left, REPORT_EVERY))
        except BaseException:  # refused, or cancelled (the hub's start_timeout, a stop)
            if ticket.done() and not ticket.cancelled():
                self._release()  # a slot was handed over just now: pass it on
            else:
                ticket.cancel()
                self._waiting.remove(ticket)
            raise

    def _release(self) -> None:
        """Hand the slot to the first spawn waiting (a spawn that stops waiting leaves the
        line at once), else free it."""
        if self._waiting:
            self._waiting.popleft().set_result(None)
        else:
            self.starting -= 1
