"""Issue 22: a class pressing Start at once gets its servers a few at a time
(`docker.start_queue`), on a real hub, engine and proxy: from the outside, no server's start
overlaps another's (the engine's start times against the audit trail's "answered" times); on
the spawn page, the users who wait are told their place."""

from __future__ import annotations

import concurrent.futures
import time
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


@pytest.fixture(scope="module")
def queue_hub(hub_factory):
    return hub_factory(ONE_AT_A_TIME)


def test_with_one_start_at_a_time_no_two_servers_start_together(queue_hub, engine):
    hub = queue_hub
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


def test_a_user_who_stops_a_waiting_spawn_leaves_the_line_and_no_container(queue_hub, engine):
    hub = queue_hub
    for user in ("sqdan", "sqeve"):
        hub.create_user(user)
    assert hub.api("POST", "/users/sqdan/server").status_code == 202
    dan = hub.progress_events("sqdan", timeout=120)
    for event in dan:
        if event.get("progress", 0) >= 30:  # past the line: sqdan holds the one slot
            break
    assert hub.api("POST", "/users/sqeve/server").status_code == 202
    for event in hub.progress_events("sqeve", timeout=60):
        assert not event.get("ready"), "sqeve never waited: the slot was free"
        if event.get("message", "").startswith("Waiting for your turn"):
            break
    stopped = hub.api("DELETE", "/users/sqeve/server")  # the spawn page's "Stop Server"
    assert stopped.status_code in (202, 204), stopped.text
    assert [e for e in dan if e.get("ready")], "sqdan's server never answered"
    time.sleep(3)  # had the waiting start gone on, its container would be there by now
    assert engine.containers.list(all=True, filters={"name": f"{TEST_PREFIX}-sqeve--"}) == []
    # the line is empty again and no slot was kept: the next spawn starts at once
    again = hub.spawn("sqeve")
    assert again.ready, again.message
    assert not [e for e in again.events if e.get("message", "").startswith("Waiting for your turn")]
