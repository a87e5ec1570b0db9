"""The pure parts of the hub-wide engine work: which running servers are orphans."""

import asyncio

from hardened_spawner import labels
from hardened_spawner.core.gpus import GpuAllocator, GpuPolicy, parse_static_inventory
from hardened_spawner.docker.engine import orphans
from hardened_spawner.gpu_broker import GpuBroker


def server(owner, name="", hub="hub-a"):
    found = {labels.OWNER: owner, labels.SERVER_NAME: name}
    if hub is not None:
        found[labels.HUB] = hub
    return {"Id": f"{owner}/{name}", "Labels": found}


def test_orphans_are_this_hubs_servers_its_database_does_not_know():
    running = [
        server("alice"),  # known
        server("alice", "gpu"),  # a named server the database does not have
        server("bob"),  # unknown
        server("carol", hub="hub-b"),  # another hub's
        server("dave", hub=None),  # from before servers carried the hub's label
    ]
    known = {("alice", "")}
    assert [c["Id"] for c in orphans(running, "hub-a", known)] == ["alice/gpu", "bob/"]


def test_no_hub_id_no_orphans():
    assert orphans([server("bob", hub="")], "", set()) == []


def test_releasing_before_anything_was_assigned_asks_no_engine():
    async def engine_gone():
        raise AssertionError("the engine was asked")

    allocator = GpuAllocator(parse_static_inventory(["GPU-a"]), GpuPolicy())
    broker = GpuBroker(allocator, engine_gone, log=None)
    assert asyncio.run(broker.release("alice")) == ()
