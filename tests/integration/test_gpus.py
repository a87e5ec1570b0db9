"""Issue 4: per-user GPUs through the engine's real device-request path.

No GPU exists here: scripts/setup.sh --gpu-stub puts a stub
nvidia-container-runtime-hook on dockerd's PATH, so the engine registers its
nvidia driver, really starts containers with device requests and sets
NVIDIA_VISIBLE_DEVICES in them itself. The inventory is a static list of fake UUIDs.
"""

import concurrent.futures
import re
from collections import Counter

import pytest
import requests

from hardened_spawner import labels
from hubdriver import TEST_PREFIX, Kernel

DEVICES = [f"GPU-00000000-0000-0000-0000-00000000000{i}" for i in range(4)]
GPU_CONFIG = f"""
c.HardenedSpawner.gpu_inventory = {[{"uuid": u, "index": str(i), "name": "Fake GPU"} for i, u in enumerate(DEVICES)]!r}
c.HardenedSpawner.gpu_default_per_user = 0
c.HardenedSpawner.gpu_max_per_user = 1
c.HardenedSpawner.gpu_group_max = {{"deep-learning": 2}}
c.HardenedSpawner.mem_limit = "1G"
c.JupyterHub.load_groups = {{"deep-learning": {{"users": ["gina"]}}}}
"""


@pytest.fixture(scope="module")
def gpu_hub(hub_factory):
    return hub_factory(GPU_CONFIG)


def visible_devices(hub, user) -> str:
    kernel = Kernel(hub, user)
    try:
        return kernel.run("import os; print(os.environ['NVIDIA_VISIBLE_DEVICES'])").strip()
    finally:
        kernel.close()


def container(engine, user):
    return engine.containers.get(f"{TEST_PREFIX}-{user}--")


def assigned(engine, user) -> list[str]:
    """What the engine was asked for, from the outside."""
    attrs = container(engine, user).attrs
    requests = attrs["HostConfig"].get("DeviceRequests") or []
    ids = [d for r in requests for d in r["DeviceIDs"]]
    assert all(not r.get("Count") for r in requests), requests
    label = attrs["Config"]["Labels"][labels.GPUS]
    assert label == ",".join(ids)
    return ids


def metrics(hub) -> dict[str, float]:
    text = requests.get(f"{hub.url}/hub/metrics", headers={"Authorization": f"token {hub.token}"}, timeout=30).text
    found = dict(re.findall(r"^hardened_spawner_gpus_(\w+) ([\d.]+)$", text, re.M))
    return {k: float(v) for k, v in found.items()}


def running(hub, user) -> bool:
    r = hub.api("GET", f"/users/{user}")
    return r.status_code != 404 and bool(r.json()["servers"])


def ensure(hub, start: dict[str, int] | None = None, stop: tuple[str, ...] = ()) -> None:
    """What a test needs, whatever ran before it: these servers stopped, these running with
    this many GPUs (started now if they are not)."""
    for user in stop:
        if running(hub, user):
            hub.stop_server(user)
    for user, gpus in (start or {}).items():
        hub.create_user(user)
        if not running(hub, user):
            result = hub.spawn(user, {"gpus": gpus})
            assert result.ready, result.message


def test_users_get_what_they_ask_for_within_quota(gpu_hub, engine):
    ensure(gpu_hub, stop=("gabe", "gina", "nogpu", "after"))
    for user in ("gabe", "gina", "nogpu"):
        gpu_hub.create_user(user)
    assert gpu_hub.spawn("gabe", {"gpus": 1}).ready
    assert gpu_hub.spawn("gina", {"gpus": 2}).ready  # her group allows 2
    assert gpu_hub.spawn("nogpu").ready
    assert assigned(engine, "gabe") == DEVICES[:1]
    assert visible_devices(gpu_hub, "gabe") == DEVICES[0]
    assert assigned(engine, "gina") == DEVICES[1:3]
    assert visible_devices(gpu_hub, "gina") == ",".join(DEVICES[1:3])
    assert assigned(engine, "nogpu") == []
    assert visible_devices(gpu_hub, "nogpu") == "void"
    assert metrics(gpu_hub) == {"total": 4, "assigned": 3, "free": 1}


def test_over_quota_is_a_clear_refusal(gpu_hub, engine):
    gpu_hub.create_user("greedy")
    result = gpu_hub.spawn("greedy", {"gpus": 2})
    assert not result.ready
    assert result.message == (
        "Spawn failed: You asked for 2 GPUs, but your limit is 1 GPU. Ask for 1 or fewer, "
        "or ask your hub administrator to raise your limit."
    )
    bad = gpu_hub.spawn("greedy", {"gpus": "lots"})
    assert bad.message == "Spawn failed: The number of GPUs must be a whole number, not 'lots'."
    assert not engine.containers.list(all=True, filters={"name": f"{TEST_PREFIX}-greedy--"})


def test_stopping_frees_the_device(gpu_hub, engine):
    ensure(gpu_hub, start={"gabe": 1})
    held, before = assigned(engine, "gabe"), metrics(gpu_hub)["assigned"]
    assert len(held) == 1
    gpu_hub.stop_server("gabe")
    assert metrics(gpu_hub)["assigned"] == before - 1
    released = [e for e in gpu_hub.audit_events() if e["event"] == "gpus-released" and e["user"] == "gabe"]
    assert released and released[-1]["devices"] == held


def test_thirty_users_racing_for_four_gpus_never_share(gpu_hub, engine):
    """gina holds 2 and nogpu holds none: 2 devices are left for 30 simultaneous requests."""
    ensure(gpu_hub, start={"gina": 2, "nogpu": 0}, stop=("gabe", "after"))
    users = [f"racer{i:02d}" for i in range(30)]
    for user in users:
        gpu_hub.create_user(user)
    with concurrent.futures.ThreadPoolExecutor(30) as pool:
        results = dict(zip(users, pool.map(lambda u: gpu_hub.spawn(u, {"gpus": 1}), users)))
    winners = [u for u, r in results.items() if r.ready]
    losers = [u for u, r in results.items() if not r.ready]
    assert len(winners) == 2, {u: r.message for u, r in results.items()}
    held = Counter(d for u in winners + ["gina"] for d in assigned(engine, u))
    assert set(held.values()) == {1} and len(held) == 4, held
    for user in losers:
        assert results[user].message == (
            "Spawn failed: You asked for 1 GPU, but 4 of 4 GPUs are busy. Try again later, "
            "ask for fewer GPUs, or start your server with 0 GPUs."
        )
    assert metrics(gpu_hub) == {"total": 4, "assigned": 4, "free": 0}
    for user in winners:
        gpu_hub.stop_server(user)


def test_assignments_survive_a_hub_crash(gpu_hub, engine):
    """SIGKILL the hub with servers running: the engine's labels are the truth."""
    ensure(gpu_hub, start={"gina": 2}, stop=("after",))
    before = assigned(engine, "gina")
    container_id = container(engine, "gina").id
    gpu_hub.kill()
    gpu_hub.start()
    assert container(engine, "gina").id == container_id
    assert assigned(engine, "gina") == before
    assert visible_devices(gpu_hub, "gina") == ",".join(before)
    gpu_hub.create_user("after")
    result = gpu_hub.spawn("after", {"gpus": 1})
    assert result.ready, result.message
    assert set(assigned(engine, "after")).isdisjoint(before)
    assert "GPU table rebuilt from the running servers: gina=" + ",".join(before) in gpu_hub.log_tail(400)
    gpu_hub.stop_server("gina")
    gpu_hub.stop_server("after")
    assert metrics(gpu_hub)["assigned"] == 0


@pytest.mark.parametrize(
    "config, message",
    [
        (f"c.HardenedSpawner.gpu_pins = {{'a': ['{DEVICES[0]}'], 'b': ['{DEVICES[0]}']}}",
         f"HardenedSpawner.gpu_pins: a and b are pinned to {DEVICES[0]}, but at most 1 may hold a device"),
        ("c.HardenedSpawner.gpu_pins = {'a': ['GPU-unknown']}",
         "HardenedSpawner.gpu_pins: a is pinned to GPU-unknown, which is not in the inventory"),
        ("c.HardenedSpawner.gpu_max_per_user = -1",
         "HardenedSpawner.gpu_max_per_user must be at least 0, not -1."),
        ("c.HardenedSpawner.gpu_max_users_per_gpu = 0",
         "HardenedSpawner.gpu_max_users_per_gpu must be at least 1, not 0."),
    ],
)
def test_bad_gpu_config_stops_the_hub(hub_factory, config, message):
    hub = hub_factory(GPU_CONFIG + config, wait=False)
    assert hub.wait_exit(60) != 0
    assert message in hub.log_tail(80), hub.log_tail(80)


NAMED_DEVICES = [f"GPU-00000000-0000-0000-0000-0000000000a{i}" for i in range(3)]


def test_named_servers_share_their_owners_quota(hub_factory, engine):
    """With named servers, what a user's other servers hold counts against their limit."""
    hub = hub_factory(GPU_CONFIG + f"""
c.JupyterHub.allow_named_servers = True
c.HardenedSpawner.gpu_inventory = {[{"uuid": u, "index": str(i), "name": "Fake GPU"} for i, u in enumerate(NAMED_DEVICES)]!r}
""")
    hub.create_user("nadia")
    try:
        assert hub.spawn("nadia", {"gpus": 1}).ready
        second = hub.spawn("nadia", {"gpus": 1}, server="second")
        assert second.message == (
            "Spawn failed: You asked for 1 GPU, but your limit is 1 GPU and your default server "
            "holds 1 GPU. Ask for 0 or fewer, or stop that server first."
        )
        assert hub.spawn("nadia", {"gpus": 0}, server="second").ready
        assert assigned(engine, "nadia") == NAMED_DEVICES[:1]
        assert engine.containers.get(f"{TEST_PREFIX}-nadia--second").attrs["HostConfig"]["DeviceRequests"] in (None, [])
        # the default server stopped, its device is free for the named one
        hub.stop_server("nadia")
        hub.stop_server("nadia", server="second")
        assert hub.spawn("nadia", {"gpus": 1}, server="second").ready
    finally:
        hub.stop_server("nadia", server="second")
