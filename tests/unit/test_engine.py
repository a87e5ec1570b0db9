"""The pure parts of the hub-wide engine work: which running servers are orphans."""

import asyncio

import docker.errors
import pytest

from hardened_spawner import labels
from hardened_spawner.core.gpus import GpuAllocator, GpuPolicy, parse_static_inventory
from hardened_spawner.docker.engine import image_for_start, orphans
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


class Images:
    """An engine with some images, recording what is asked and pulled."""

    def __init__(self, present):
        self.present, self.asked = set(present), []

    async def ask(self, method, image):
        self.asked.append((method, image))
        if image not in self.present:
            raise docker.errors.ImageNotFound(image)
        return {"Id": f"sha256:{image}"}

    async def pull(self, image, policy):
        self.asked.append(("pull", image))
        if policy == "never":
            raise docker.errors.ImageNotFound(image)
        self.present.add(image)


@pytest.mark.parametrize("present, policy, asked", [
    (True, "ifnotpresent", [("inspect_image", "img")]),  # one inspect, no more
    (False, "ifnotpresent", [("inspect_image", "img"), ("pull", "img"), ("inspect_image", "img")]),
    (True, "always", [("pull", "img"), ("inspect_image", "img")]),
    (False, "never", [("inspect_image", "img"), ("pull", "img")]),
])
async def test_an_image_is_inspected_once_and_pulled_as_the_policy_says(present, policy, asked):
    engine = Images({"img"} if present else set())
    try:
        found = await image_for_start(engine.ask, "img", policy, lambda image: engine.pull(image, policy))
        assert found == {"Id": "sha256:img"}
    except docker.errors.ImageNotFound:
        assert policy == "never"
    assert engine.asked == asked
