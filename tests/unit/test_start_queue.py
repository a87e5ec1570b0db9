"""The hub's start queue (`start_queue`): so many servers start at once, the rest wait in
order, and a spawn that stops waiting (refused, cancelled by the hub) leaves no slot taken."""

from __future__ import annotations

import asyncio

import pytest

from hardened_spawner.docker import start_queue
from hardened_spawner.docker.start_queue import QueueTimeout, StartQueue, default_limit


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setattr(start_queue, "REPORT_EVERY", 0.01)


class Starts:
    """Spawns that hold a slot until told to finish; records who was in, in what order."""

    def __init__(self, queue: StartQueue, limit: int, budget: float = 40):
        self.queue, self.limit, self.budget = queue, limit, budget
        self.inside: set[str] = set()
        self.most_inside = 0
        self.order: list[str] = []
        self.places: dict[str, list[tuple[int, int]]] = {}
        self.finish: dict[str, asyncio.Event] = {}

    async def spawn(self, name: str) -> None:
        self.finish[name] = asyncio.Event()
        self.places[name] = []
        async with self.queue.slot(self.limit, self.budget, lambda *p: self.places[name].append(p)):
            self.inside.add(name)
            self.order.append(name)
            self.most_inside = max(self.most_inside, len(self.inside))
            await self.finish[name].wait()
            self.inside.discard(name)


async def settle():
    for _ in range(5):
        await asyncio.sleep(0)


async def test_only_limit_servers_start_at_once_and_the_rest_go_in_order():
    starts = Starts(StartQueue(), limit=2)
    names = [f"u{i}" for i in range(6)]
    tasks = [asyncio.create_task(starts.spawn(n)) for n in names]
    await settle()
    assert starts.inside == {"u0", "u1"}
    assert starts.places["u2"] == [(0, 2)] and starts.places["u5"] == [(3, 2)]
    for name in names:
        starts.finish[name].set()
        await asyncio.sleep(0.03)  # the waiters look at their place again (REPORT_EVERY)
        assert len(starts.inside) <= 2
    await asyncio.gather(*tasks)
    assert starts.order == names and starts.most_inside == 2
    assert starts.places["u5"] == [(3, 2), (2, 2), (1, 2), (0, 2)]  # each move heard once
    assert (starts.queue.starting, starts.queue.waiting) == (0, 0)


async def test_no_limit_lets_every_start_in_at_once():
    starts = Starts(StartQueue(), limit=0)
    tasks = [asyncio.create_task(starts.spawn(f"u{i}")) for i in range(50)]
    await settle()
    assert len(starts.inside) == 50 and not any(starts.places.values())
    for event in starts.finish.values():
        event.set()
    await asyncio.gather(*tasks)
    assert starts.queue.starting == 0


async def test_a_spawn_the_hub_gives_up_on_leaves_the_line_and_never_starts():
    starts = Starts(StartQueue(), limit=1)
    first, second, third = (asyncio.create_task(starts.spawn(n)) for n in ("a", "b", "c"))
    await settle()
    second.cancel()  # the hub's start_timeout, or a stop
    await settle()
    assert starts.queue.waiting == 1
    starts.finish["a"].set()
    await settle()
    assert starts.inside == {"c"} and starts.places["c"] == [(1, 1)]
    starts.finish["c"].set()
    await asyncio.gather(first, third)
    assert second.cancelled() and "b" not in starts.order
    assert (starts.queue.starting, starts.queue.waiting) == (0, 0)


async def test_a_slot_handed_to_a_spawn_cancelled_at_that_moment_passes_on():
    queue = StartQueue()
    starts = Starts(queue, limit=1)
    holder = asyncio.create_task(starts.spawn("a"))
    late, last = (asyncio.create_task(starts.spawn(n)) for n in ("b", "c"))
    await settle()
    starts.finish["a"].set()
    await asyncio.sleep(0)  # "a" leaves: its slot is handed to "b" before "b" runs again
    await asyncio.sleep(0)
    late.cancel()
    await settle()
    assert starts.inside == {"c"}
    starts.finish["c"].set()
    await asyncio.gather(holder, last)
    assert (queue.starting, queue.waiting) == (0, 0)


async def test_a_spawn_that_waits_too_long_is_told_how_busy_the_hub_is():
    starts = Starts(StartQueue(), limit=1, budget=0.2)  # no start finished yet: a quarter is kept
    holder = asyncio.create_task(starts.spawn("a"))
    await settle()
    with pytest.raises(QueueTimeout) as timeout:
        await starts.spawn("b")
    assert (timeout.value.ahead, timeout.value.starting) == (0, 1) and 0.15 <= timeout.value.waited < 0.2
    assert timeout.value.user_message == (
        "The hub is starting many servers at once (1 now), and yours waited 0 s for its turn (it was "
        "next). Nothing of yours was changed: press Start again in a minute.")
    assert starts.queue.waiting == 0
    starts.finish["a"].set()
    await holder
    assert starts.queue.starting == 0


def test_the_refusal_says_how_many_were_still_ahead():
    assert "(3 still ahead of it)" in QueueTimeout(90, 3, 4).user_message


async def test_a_spawn_waits_as_long_as_the_recent_starts_leave_time_for_its_own(monkeypatch):
    queue = StartQueue()
    assert queue.reserve(120) == 30  # nothing measured yet: a quarter of the budget
    for _ in range(3):
        async with queue.slot(0, 120, lambda *p: None):
            pass
    assert queue.reserve(120) == start_queue.MIN_RESERVE  # quick starts: the least
    assert queue.reserve(12) == 6  # never more than half the budget
    monkeypatch.setattr(start_queue, "MIN_RESERVE", 0.0)
    async with queue.slot(0, 120, lambda *p: None):
        await asyncio.sleep(0.1)
    assert 0.2 <= queue.reserve(120) < 0.4  # twice the longest recent start
    for _ in range(start_queue.RECENT_STARTS):  # a slow start long ago is forgotten
        async with queue.slot(0, 120, lambda *p: None):
            pass
    assert queue.reserve(120) < 0.05


async def test_a_start_that_fails_frees_its_slot():
    queue = StartQueue()
    with pytest.raises(RuntimeError):
        async with queue.slot(1, 1, lambda *p: None):
            raise RuntimeError("the container died")
    async with queue.slot(1, 0.01, lambda *p: None):
        assert queue.starting == 1
    assert queue.starting == 0


@pytest.mark.parametrize(("cpus", "limit"), [(0, 2), (1, 2), (2, 4), (64, 128)])
def test_the_default_is_two_starts_per_engine_cpu(cpus, limit):
    assert default_limit(cpus) == limit
