"""Image admission inside the hub, against the fake engine (issue 29): what the audit trail says
of the hub's first-sight approval, and how the hub reads its images at its start."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from types import SimpleNamespace

import pytest
from fake_engine import FakeEngine, engine_in_use
from image_exports import SINGLEUSER_IMAGE, export, f
from jupyterhub.objects import Hub, Server

from hardened_spawner.docker import admission, hub_start, image_records
from hardened_spawner.docker.spawner import HardenedSpawner

DEFAULT = "hardened-spawner-singleuser:latest"


@pytest.fixture
def engine(monkeypatch):
    with engine_in_use(monkeypatch, FakeEngine()) as fake:
        yield fake


def make_spawner(port: int, name: str = "alice", **settings) -> HardenedSpawner:
    user = SimpleNamespace(name=name, id=1, admin=False, groups=[], url=f"/user/{name}/", db=None)
    spawner = HardenedSpawner(user=user, hub=Hub(ip="127.0.0.1", port=8081, base_url="/hub/"),
                              network_isolation=False, image=DEFAULT, **settings)
    spawner.server = Server(base_url=f"/user/{name}/")
    spawner.api_token = "a-token"
    spawner.port = port
    return spawner


def events(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_a_first_sight_approval_made_at_a_spawn_names_no_user(engine, server_port, tmp_path):
    """Item 7: the hub had not seen the name when alice spawned; the approval is the hub's (user
    null, as the README says), the admission hers."""
    trail = tmp_path / "audit.jsonl"
    await make_spawner(server_port, audit_log=str(trail)).start()
    found = {e["event"]: e for e in events(trail)}
    approved = found["image-approved"]
    assert {k: approved[k] for k in ("user", "server_name", "uid", "gid", "client_ip", "image", "image_digest",
                                     "devices", "container_name", "reason")} == {
        "user": None, "server_name": "", "uid": None, "gid": None, "client_ip": None, "image": DEFAULT,
        "image_digest": "sha256:image", "devices": [], "container_name": None,
        "reason": "approved by the hub, on first sight",
    }
    assert found["image-admitted"]["user"] == "alice"
    # a second spawn of the same name approves nothing
    await make_spawner(server_port, name="bob", audit_log=str(trail)).start()
    assert [e["event"] for e in events(trail)].count("image-approved") == 1


# --- reading the images at hub start ---------------------------------------------


class SlowReads:
    """`image_records.facts_for` taking READ seconds, with the reads at once counted."""

    READ = 0.3

    def __init__(self, monkeypatch):
        self.lock = threading.Lock()
        self.now = self.most = 0
        self.order: list[str] = []
        real = image_records.facts_for

        def facts_for(client, inspect, command=()):
            with self.lock:
                self.now += 1
                self.most = max(self.most, self.now)
                self.order.append(inspect["Id"])
            try:
                time.sleep(self.READ)
                return real(client, inspect, command)
            finally:
                with self.lock:
                    self.now -= 1

        monkeypatch.setattr(image_records, "facts_for", facts_for)


def add_images(engine, count: int) -> dict[str, str]:
    names = {}
    for i in range(count):
        name, image_id = f"img{i}:1", f"sha256:{i:064x}"
        engine.images[name] = {"Id": image_id, "RepoDigests": [], "Config": {"Cmd": ["jupyterhub-singleuser"]}}
        engine.exports[image_id] = export([SINGLEUSER_IMAGE[0] + [f(f"etc/{i}")]])
        names[f"choice{i}"] = name
    return names


async def test_hub_start_reads_two_images_at_a_time_the_default_image_first(engine, monkeypatch, caplog):
    """Item 9: a bounded number at once (two, and no more than the engine's CPUs)."""
    reads = SlowReads(monkeypatch)
    spawner = make_spawner(0, allowed_images=add_images(engine, 5))
    started = time.monotonic()
    with caplog.at_level(logging.INFO):
        await hub_start._admit_images(spawner, logging.getLogger("test-hub-start"))
    took = time.monotonic() - started
    assert reads.most == 2 and len(reads.order) == 6
    assert reads.order[0] == "sha256:image"  # `image`, which most spawns use, first
    assert took < 4 * SlowReads.READ  # three rounds of two, not six reads in a row
    admitted = [r.getMessage() for r in caplog.records if "is admitted" in r.getMessage()]
    assert len(admitted) == 6
    assert hub_start.reads_at_once(1) == 1 and hub_start.reads_at_once(None) == 2 and hub_start.reads_at_once(64) == 2


async def test_a_spawn_of_an_image_not_read_yet_does_not_wait_for_the_hub_starts_queue(engine, monkeypatch):
    """A spawn of the last image in the queue reads it at once (one read), and one of the
    image being read waits for that read only."""
    SlowReads(monkeypatch)
    names = add_images(engine, 5)
    spawner = make_spawner(0, allowed_images=names)
    context, settings = spawner.context, spawner.admission_settings()
    queue = asyncio.ensure_future(hub_start._admit_images(spawner, logging.getLogger("test-hub-start")))
    await asyncio.sleep(SlowReads.READ / 3)  # the hub start is reading its first two

    async def spawn(name):
        started = time.monotonic()
        verdict = await admission.admit(context, context.images, settings, name, engine.inspect_image(name))
        return verdict, time.monotonic() - started

    (last, last_took), (first, first_took) = await asyncio.gather(spawn("img4:1"), spawn(DEFAULT))
    assert last.admitted and first.admitted
    assert last_took < 2 * SlowReads.READ  # its own read, not the four before it
    assert first_took < SlowReads.READ  # the read under way, not a second one
    await queue
