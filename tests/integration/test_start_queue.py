"""Issue 22: a class pressing Start at once gets its servers a few at a time
(`docker.start_queue`), on a real hub, engine and proxy: from the outside, no server's start
overlaps another's (the engine's start times against the audit trail's "answered" times); on
the spawn page, the users who wait are told their place."""

from __future__ import annotations

import concurrent.futures
from datetime import datetime

import pytest

from hubdriver import TEST_PREFIX

pytestmark = pytest.mark.integration

ONE_AT_A_TIME = "c.HardenedSpawner.concurrent_starts = 1\n"


def when(timestamp: str) -> datetime:
    """The engine's RFC 3339 times (nanoseconds) and the audit trail's ISO times, comparable."""
    stamp = timestamp.replace("Z", "+00:00")
    head, dot, rest = stamp.partition(".")
    if dot:
        digits = "".join(c for c in rest if c.isdigit())
        stamp = f"{head}.{digits[:6]}{rest[len(digits):]}"
    return datetime.fromisoformat(stamp)


def test_with_one_start_at_a_time_no_two_servers_start_together(hub_factory, engine):
    hub = hub_factory(ONE_AT_A_TIME)
    users = ["sqann", "sqben", "sqcat"]  # no dashes: DockerSpawner escapes them in names
    for user in users:
        hub.create_user(user)
    with concurrent.futures.ThreadPoolExecutor(len(users)) as pool:
        results = dict(zip(users, pool.map(hub.spawn, users)))
    assert all(r.ready for r in results.values()), {u: r.message for u, r in results.items()}

    started = {u: when(engine.containers.get(f"{TEST_PREFIX}-{u}--").attrs["State"]["StartedAt"]) for u in users}
    answered = {e["user"]: when(e["__timestamp__"]) for e in hub.audit_events()
                if e["event"] == "server-started" and e["user"] in users}
    order = sorted(users, key=started.get)
    for earlier, later in zip(order, order[1:]):
        assert started[later] >= answered[earlier], f"{later} started before {earlier}'s server answered"

    told = {u: [e["message"] for e in r.events if e.get("message", "").startswith("Waiting for your turn")]
            for u, r in results.items()}
    assert told[order[0]] == []
    waited = [u for u in order[1:] if told[u]]
    assert waited, "nobody was told to wait, though their servers started one after another"
    for user in waited:
        assert told[user][0].startswith("Waiting for your turn to start: 1 server is starting, ")
