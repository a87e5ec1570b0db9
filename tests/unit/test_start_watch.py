"""One look at the engine for every server starting at once (`start_watch`), and the
readiness poll's ceiling that grows with them (`readiness.poll_ceiling`)."""

from __future__ import annotations

import asyncio

import pytest

from hardened_spawner.docker import start_watch
from hardened_spawner.docker.readiness import poll_ceiling


class Engine:
    """Answers ``containers`` with the running ids; counts the calls."""

    def __init__(self, running):
        self.running = set(running)
        self.exited: set[str] = set()
        self.calls = 0
        self.down = False

    async def docker(self, method, *args, **kwargs):
        filters = kwargs["filters"]
        assert method == "containers" and kwargs["all"] and filters["label"] == start_watch.MANAGED_SERVERS["label"]
        self.calls += 1
        if self.down:
            raise ConnectionError("engine gone")
        return [{"Id": i, "State": "running"} for i in self.running if i in filters["id"]] + \
            [{"Id": i, "State": "exited"} for i in self.exited if i in filters["id"]]


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setattr(start_watch, "WATCH_EVERY", 0.01)


async def test_a_hundred_starting_servers_cost_one_look_per_period():
    engine = Engine(f"c{i}" for i in range(100))
    watch = start_watch.StartWatch(engine)
    futures = [watch.watch(f"c{i}") for i in range(100)]
    await asyncio.sleep(0.055)
    assert 3 <= engine.calls <= 6  # one a period, not one a server
    engine.running.discard("c7")
    engine.exited.add("c7")  # died
    engine.running.discard("c9")  # removed altogether
    await asyncio.wait([futures[7], futures[9]], timeout=1)
    assert futures[7].done() and futures[9].done()
    assert not any(f.done() for i, f in enumerate(futures) if i not in (7, 9))
    for i in range(100):
        watch.forget(f"c{i}")
    await asyncio.sleep(0.03)
    calls = engine.calls
    await asyncio.sleep(0.05)
    assert engine.calls == calls  # nobody waits: nobody asks


async def test_an_engine_that_cannot_be_asked_reaches_every_waiter():
    engine = Engine(["a", "b"])
    watch = start_watch.StartWatch(engine)
    waiting = [watch.watch("a"), watch.watch("b")]
    engine.down = True
    await asyncio.wait(waiting, timeout=1)
    for future in waiting:
        with pytest.raises(ConnectionError):
            future.result()


def test_the_poll_ceiling_grows_with_the_servers_starting_at_once():
    assert [poll_ceiling(n) for n in (1, 25, 50, 100, 500)] == [1.04, 2.0, 3.0, 5.0, 5.0]
