"""The spawner's JupyterHub hooks (start, progress, stop, poll, state) and its refusal
paths, driven against the fake engine: no Docker needed. The integration tests do the
same against the real engine, a real hub and the real proxy."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest
from fake_engine import FakeEngine, engine_in_use
from image_exports import SINGLEUSER_IMAGE, d, export, f
from jupyterhub.objects import Hub, Server

from hardened_spawner import labels
from hardened_spawner.docker import spawner as spawner_module
from hardened_spawner.docker.guard import GuardPolicy, check_container
from hardened_spawner.docker.spawner import HardenedSpawner
from hardened_spawner.errors import SpawnRefused

GPUS = ["GPU-a", "GPU-b"]


@pytest.fixture
def engine(monkeypatch):
    with engine_in_use(monkeypatch, FakeEngine()) as fake:
        yield fake


def make_spawner(port: int, name: str = "alice", user_id: int = 1, **settings) -> HardenedSpawner:
    user = SimpleNamespace(name=name, id=user_id, admin=False, groups=[], url=f"/user/{name}/", db=None)
    spawner = HardenedSpawner(
        user=user,
        hub=Hub(ip="127.0.0.1", port=8081, base_url="/hub/"),
        network_isolation=False,
        image="hardened-spawner-singleuser:latest",
        gpu_inventory=GPUS,
        **settings,
    )
    spawner.server = Server(base_url=f"/user/{name}/")
    spawner.api_token = "a-token"
    spawner.port = port
    return spawner


async def test_start_decides_the_spec_lets_the_guard_judge_it_and_waits_for_the_server(engine, server_port):
    spawner = make_spawner(server_port, gpu_default_per_user=1)
    ip, port = await spawner.start()
    assert (ip, port) == ("127.0.0.1", server_port)
    [server] = engine.servers()
    config = server["Config"]
    assert config["User"] == "200001:200001"
    assert check_container(config, config["HostConfig"], GuardPolicy(
        allowed_bind_sources=frozenset(spawner._plan.identity_files))) == []
    assert server["Labels"][labels.GPUS] == "GPU-a"
    assert "NVIDIA_VISIBLE_DEVICES=GPU-a" in config["Env"]
    # the workspace was made for the user, and the UID claimed on the engine
    assert engine.volume_state["jupyterhub-workspace-alice"]["Labels"][labels.UID] == "200001"
    assert engine.volume_state["hardened-spawner-uid-200001"]["Labels"][labels.OWNER] == "alice"
    assert spawner.get_state()["uid"] == 200001
    events = [e["message"] async for e in spawner.progress()]
    assert events == ["Checking your identity", "Checking the image", "Assigning GPUs", "Preparing your workspace",
                      "Creating your server container", "Waiting for your server to answer"]


async def test_a_second_start_keeps_the_uid_and_skips_the_prepared_workspace(engine, server_port):
    spawner = make_spawner(server_port)
    await spawner.start()
    await spawner.stop()
    state = spawner.get_state()
    spawner.clear_state()
    again = make_spawner(server_port)
    again.load_state(state)
    engine.calls.clear()
    await again.start()
    assert again.get_state()["uid"] == 200001
    assert "Preparing your workspace" not in [e["message"] async for e in again.progress()]
    # what a returning user's spawn asks the engine, each once (each call is hub CPU in a burst)
    assert engine.calls == ["inspect_image", "inspect_volume", "inspect_container", "create_container_from_config",
                            "start", "inspect_container"]


async def test_stop_removes_the_container_and_frees_the_gpus(engine, server_port):
    spawner = make_spawner(server_port, gpu_default_per_user=1)
    await spawner.start()
    assert await spawner.gpus.held_by("alice") == ("GPU-a",)
    await spawner.stop()
    assert engine.servers() == []
    assert await spawner.gpus.held_by("alice") == ()


async def test_poll_running_then_died(engine, server_port):
    spawner = make_spawner(server_port, gpu_default_per_user=1)
    await spawner.start()
    assert await spawner.poll() is None
    engine.servers()[0]["Running"] = False
    status = await spawner.poll()
    assert status.startswith("ExitCode=0")
    assert await spawner.gpus.held_by("alice") == ()  # released when it died


async def test_poll_of_a_spawn_the_hub_never_saw_finish_removes_what_it_left(engine, server_port):
    first = make_spawner(server_port)
    await first.start()
    # a new hub process: the database has the server, but no container id was ever saved
    orphan = make_spawner(server_port)
    assert await orphan.poll() == "the hub stopped in the middle of this server's spawn"
    assert engine.servers() == []


async def test_a_policy_breaking_escape_hatch_is_refused_and_no_container_is_made(engine, server_port):
    spawner = make_spawner(server_port, gpu_default_per_user=1, extra_host_config={"privileged": True})
    with pytest.raises(SpawnRefused) as refused:
        await spawner.start()
    assert refused.value.reason == "policy" and refused.value.status_code == 403
    assert refused.value.jupyterhub_message.startswith(
        "The server was not started because its container would break the security policy:\n"
        "- The container would run privileged"
    )
    assert engine.servers() == []
    assert await spawner.gpus.held_by("alice") == ()  # given back


async def test_an_engine_that_goes_away_is_a_clear_refusal(engine, server_port):
    spawner = make_spawner(server_port)
    await spawner.engine_facts()
    engine.down = True
    with pytest.raises(SpawnRefused) as refused:
        await spawner.start()
    assert refused.value.reason == "engine-unavailable" and refused.value.status_code == 424
    engine.down = False
    assert await spawner.start() == ("127.0.0.1", server_port)  # the next spawn gets in


async def test_a_server_that_dies_while_starting_shows_its_last_words(engine, server_port):
    engine.dies_on_start = True
    spawner = make_spawner(server_port)
    with pytest.raises(SpawnRefused) as refused:
        await spawner.start()
    assert refused.value.reason == "container-died"
    assert refused.value.jupyterhub_message == (
        "Your server stopped while starting (exit code 1). Its last output:\n[I] starting\n[E] Traceback: boom"
    )


async def test_a_missing_image_names_the_setting(engine, server_port):
    spawner = make_spawner(server_port)
    spawner.image = "nowhere/pytorch:cuda"
    spawner.pull_policy = "never"
    with pytest.raises(SpawnRefused) as refused:
        await spawner.start()
    assert refused.value.reason == "image"
    assert refused.value.jupyterhub_message == (
        "The image nowhere/pytorch:cuda is not on this server. Ask your hub admin to build or "
        "load it (HardenedSpawner.image)."
    )


async def test_an_image_that_fails_admission_is_refused_before_anything_of_the_users_is_made(engine, server_port):
    engine.exports["sha256:image"] = export([SINGLEUSER_IMAGE[0] + [d("usr/bin"), f("usr/bin/su", 0o4755)]])
    spawner = make_spawner(server_port, gpu_default_per_user=1)
    with pytest.raises(SpawnRefused) as refused:
        await spawner.start()
    assert (refused.value.reason, refused.value.status_code) == ("image", 403)
    assert refused.value.jupyterhub_message.splitlines()[1].startswith(
        "- the image has 1 setuid, setgid or file-capability file(s), which hand whoever runs them more "
        "than the user has: /usr/bin/su (setuid")
    # nothing left behind: no container, no workspace, no UID claim, no GPU held
    assert engine.servers() == []
    assert [v for v in engine.volume_state if not v.startswith("hardened-spawner-image-")] == \
        ["hardened-spawner-identity"]
    assert await spawner.gpus.held_by("alice") == ()


async def test_a_second_spawn_of_an_admitted_image_asks_the_engine_nothing_more(engine, server_port):
    await make_spawner(server_port).start()
    assert engine.calls.count("get_image") == 1  # the layers, read once
    engine.calls.clear()
    await make_spawner(server_port, name="bob", user_id=2).start()
    admitted = list(engine.calls)
    engine.calls.clear()
    await make_spawner(server_port, name="carol", user_id=3, image_admission=False).start()
    assert admitted == engine.calls  # the same engine calls as a spawn without admission


async def test_a_returning_user_s_uid_is_checked_on_the_engine_once_per_hub_process(engine, server_port):
    first = make_spawner(server_port)
    await first.start()
    await first.stop()
    engine.calls.clear()
    again = make_spawner(server_port)
    again.load_state(first.get_state())
    await again.start()
    # no list of the UID's holders and no claim again: this process checked them already
    assert "volumes" not in engine.calls and "create_volume" not in engine.calls
    assert engine.calls.count("inspect_image") == 1  # and the image asked about once


async def test_a_retagged_image_is_refused_until_approved(engine, server_port):
    await make_spawner(server_port).start()  # first sight: the tag is approved for sha256:image
    engine.images["hardened-spawner-singleuser:latest"] = {**engine.images["hardened-spawner-singleuser:latest"],
                                                          "Id": "sha256:other"}
    engine.exports["sha256:other"] = export(SINGLEUSER_IMAGE)
    with pytest.raises(SpawnRefused) as refused:
        await make_spawner(server_port, name="bob", user_id=2).start()
    assert "is image sha256:other here, not the approved sha256:image" in refused.value.jupyterhub_message


async def test_busy_gpus_are_refused_with_the_count(engine, server_port):
    holders = [make_spawner(server_port, name=n, user_id=i, gpu_default_per_user=1)
               for i, n in enumerate(["ann", "ben"], start=1)]
    for holder in holders:
        await holder.start()
    late = make_spawner(server_port, name="cat", user_id=3, gpu_default_per_user=1)
    late.user_options = {"gpus": 1}
    with pytest.raises(SpawnRefused) as refused:
        await late.start()
    assert refused.value.reason == "gpu"
    assert "2 of 2 GPUs are busy" in refused.value.jupyterhub_message


async def test_two_new_users_racing_never_get_one_uid(engine, server_port):
    # an earlier database's workspace holds the UID the first new user would be offered
    engine.create_volume("jupyterhub-workspace-old", labels={labels.MANAGED: "true", labels.OWNER: "old",
                                                             labels.UID: "200001"})
    spawners = [make_spawner(server_port, name=n, user_id=1) for n in ("dan", "eve")]  # ids start over
    await asyncio.gather(*(s.start() for s in spawners))
    uids = sorted(s.get_state()["uid"] for s in spawners)
    assert uids == [200002, 200003]


async def test_helpers_a_killed_process_of_this_hub_left_are_removed_and_no_others(engine):
    from hardened_spawner.docker.engine import remove_abandoned_helpers
    from hardened_spawner.docker.hub_context import HubContext

    context = HubContext(lambda: engine, threads=2)
    helper = {labels.MANAGED: "true", labels.ROLE: labels.ROLE_HELPER}
    left = engine.create_container("img", labels={**helper, labels.HUB: "hub-a", labels.HUB_PROCESS: "killed"})
    other_hub = engine.create_container("img", labels={**helper, labels.HUB: "hub-b", labels.HUB_PROCESS: "x"})
    in_flight = engine.create_container("img", labels={**helper, labels.HUB: "hub-a",
                                                       labels.HUB_PROCESS: context.process_id})
    await remove_abandoned_helpers(context, "hub-a")
    assert set(engine.container_state) == {other_hub["Id"], in_flight["Id"]}
    assert left["Id"] not in engine.container_state
    await remove_abandoned_helpers(context, "")  # no database to name the hub: nothing is touched
    assert len(engine.container_state) == 2
    context.executor.shutdown()


def test_the_records_of_images_the_engine_no_longer_has_are_pruned(engine):
    from hardened_spawner.docker import image_records

    image_records.read_facts(engine, engine.inspect_image("hardened-spawner-singleuser:latest"))
    engine.create_volume(image_records.facts_volume("sha256:gone"),
                         labels={labels.ROLE: image_records.ROLE_FACTS, image_records.IMAGE_ID: "sha256:gone",
                                 image_records.RECORD: "{}"})
    assert image_records.prune(engine) == [image_records.facts_volume("sha256:gone")]
    assert image_records.stored_facts(engine, "sha256:image") is not None


# --- the start queue ---------------------------------------------------------------


class HeldStarts:
    """Every server's readiness held until `go` is set: how many were starting at once."""

    def __init__(self, monkeypatch):
        self.go = asyncio.Event()
        self.now = self.most = 0
        answered = spawner_module.wait_until_up

        async def held(*args):
            self.now += 1
            self.most = max(self.most, self.now)
            try:
                await self.go.wait()
                await answered(*args)
            finally:
                self.now -= 1

        monkeypatch.setattr(spawner_module, "wait_until_up", held)


async def until(condition, seconds: float = 10) -> None:
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("never happened")


def waiting_messages(spawner) -> list[str]:
    return [e["message"] for e in getattr(spawner, "_events", []) if e["message"].startswith("Waiting for your turn")]


async def test_a_class_starts_a_few_servers_at_a_time_and_the_others_see_their_place(engine, server_port, monkeypatch):
    held = HeldStarts(monkeypatch)
    spawners = [make_spawner(server_port, name=f"s{i}", user_id=i, concurrent_starts=2) for i in range(1, 6)]
    tasks = [asyncio.create_task(s.start()) for s in spawners]
    await until(lambda: held.now == 2 and all(waiting_messages(s) for s in spawners if s._plan is None))
    assert len(engine.servers()) == 2  # the others made no container yet
    assert sorted(waiting_messages(s)[0] for s in spawners if s._plan is None) == [
        f"Waiting for your turn to start: 2 servers are starting, {ahead} ahead of yours" for ahead in range(3)]
    held.go.set()
    await asyncio.gather(*tasks)
    assert held.most == 2 and len(engine.servers()) == 5


async def test_a_spawn_that_waits_out_its_turn_is_refused_as_busy_and_made_nothing(engine, server_port, monkeypatch):
    held = HeldStarts(monkeypatch)
    first = make_spawner(server_port, name="ann", user_id=1, concurrent_starts=1)
    starting = asyncio.create_task(first.start())
    await until(lambda: held.now == 1)
    late = make_spawner(server_port, name="ben", user_id=2, concurrent_starts=1, start_timeout=1,
                        gpu_default_per_user=1)
    with pytest.raises(SpawnRefused) as refused:
        await late.start()
    assert (refused.value.reason, refused.value.status_code) == ("busy", 429)  # 4xx: not a hub failure
    assert refused.value.jupyterhub_message == (
        "The hub is starting many servers at once (1 now), and yours waited 1 s for its turn (it "
        "was next). Nothing of yours was changed: press Start again in a minute.")
    assert await late.gpus.held_by("ben") == ()
    held.go.set()
    await starting
    assert [s["Name"] for s in engine.servers()] == ["/jupyter-ann"]


async def test_a_spawn_the_hub_gives_up_on_while_it_waits_never_makes_a_container(engine, server_port, monkeypatch):
    held = HeldStarts(monkeypatch)
    first = make_spawner(server_port, name="ann", user_id=1, concurrent_starts=1)
    starting = asyncio.create_task(first.start())
    await until(lambda: held.now == 1)
    late = make_spawner(server_port, name="ben", user_id=2, concurrent_starts=1)
    waiting = asyncio.create_task(late.start())
    await until(lambda: waiting_messages(late) != [])
    waiting.cancel()  # what the hub's start_timeout does (asyncio.wait_for)
    held.go.set()
    await starting
    assert waiting.cancelled()
    assert [s["Name"] for s in engine.servers()] == ["/jupyter-ann"]
    assert (first.context.start_queue.starting, first.context.start_queue.waiting) == (0, 0)


async def test_an_attempt_after_a_started_server_carries_nothing_of_it_into_its_events(engine, server_port, tmp_path):
    """JupyterHub keeps the spawner between attempts: a refused attempt's events name no image
    digest or policy of the server before it."""
    trail = tmp_path / "audit.jsonl"
    spawner = make_spawner(server_port, audit_log=str(trail))
    await spawner.start()
    await spawner.stop()
    spawner.user_options = {"gpus": 5}  # over the quota: refused before anything is made
    with pytest.raises(SpawnRefused, match="your limit is 1 GPU"):
        await spawner.start()
    events = [json.loads(line) for line in trail.read_text().splitlines()
              if not json.loads(line)["event"].startswith("image-")]
    assert [e["event"] for e in events] == ["spawn-requested", "server-started", "server-stopped",
                                            "spawn-requested", "spawn-refused"]
    started, requested_again, refused = events[1], events[3], events[4]
    assert started["image_digest"] and started["policy_fingerprint"]
    for event in (requested_again, refused):
        assert (event["image_digest"], event["policy_fingerprint"], event["security"]) == (None, None, {})
