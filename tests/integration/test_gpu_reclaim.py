"""Issue 14: idle GPUs come back, through the real hub, proxy, culler service and engine.

One stub GPU. The GPU culler runs every 2 s; a server holding the GPU is stopped after
15 s with no activity the hub sees, or after 45 s in any case. The hub reads the proxy's
activity every 3 s (the production default is 5 minutes, which only makes it coarser).
"""

import threading
import time

import pytest
import requests

from hardened_spawner import labels
from hubdriver import TEST_PREFIX, Kernel

DEVICE = "GPU-00000000-0000-0000-0000-000000000e01"
IDLE, MAX_HOLD = 15, 45
CONFIG = f"""
c.HardenedSpawner.gpu_inventory = [{{"uuid": "{DEVICE}", "index": "0", "name": "Fake GPU"}}]
c.HardenedSpawner.gpu_default_per_user = 0
c.HardenedSpawner.gpu_max_per_user = 1
c.HardenedSpawner.mem_limit = "1G"
c.JupyterHub.last_activity_interval = 3
__import__("hardened_spawner.gpu_pages").gpu_pages.enable(c, cull_every=2)
c.HardenedSpawner.gpu_idle_timeout = {IDLE}
c.HardenedSpawner.gpu_max_hold = {MAX_HOLD}
"""


@pytest.fixture(scope="module")
def reclaim_hub(hub_factory):
    return hub_factory(CONFIG)


def board(hub, user) -> dict:
    r = requests.get(f"{hub.url}/hub/api/gpus", headers={"Authorization": f"token {hub.user_token(user)}"}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def running(engine, user) -> bool:
    found = engine.containers.list(filters={"name": f"^{TEST_PREFIX}-{user}--$"})
    return bool(found)


def stops(hub, user) -> list[dict]:
    return [e for e in hub.audit_events() if e.get("user") == user and e["event"] in ("gpus-released", "server-stopped")]


def wait_stopped(hub, user, timeout) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if "" not in hub.api("GET", f"/users/{user}").json()["servers"]:
            return time.monotonic() - started
        time.sleep(0.5)
    raise AssertionError(f"{user}'s server was not stopped within {timeout} s\n{hub.log_tail()}")


def test_an_idle_gpu_server_is_stopped_a_cpu_server_of_its_age_stays_and_the_next_user_gets_the_gpu(
        reclaim_hub, engine):
    hub = reclaim_hub
    for user in ("ida", "cyril", "nell"):
        hub.create_user(user)
    assert hub.spawn("ida", {"gpus": 1}).ready
    assert hub.spawn("cyril", {"gpus": 0}).ready
    seen = board(hub, "nell")
    assert seen["devices"][0]["state"] == "busy" and seen["devices"][0]["holders"][0]["user"] == "ida"
    assert seen["summary"] == {"total": 1, "busy": 1, "free": 0}
    assert seen["due"] == []  # a user never sees who is due
    own = board(hub, "ida")["you"]["holding"][0]
    assert own["reclaim_reason"] == "gpu-idle" and own["devices"] == [DEVICE]

    # the GPU is busy: the refusal says so, with the way to the board
    refused = hub.spawn("nell", {"gpus": 1})
    assert not refused.ready and "1 of 1 GPUs are busy" in refused.message
    assert 'href="/hub/gpus">See the GPU board</a>' in refused.events[-1]["html_message"]

    # nobody uses ida's server: the culler stops it after the GPU idle timeout
    waited = wait_stopped(hub, "ida", timeout=IDLE + 30)
    print(f"ida's idle GPU server stopped {waited:.1f} s after the refusal (idle timeout {IDLE} s)")
    assert not running(engine, "ida")
    assert running(engine, "cyril")  # CPU-only, the same age: the GPU rule is not its rule
    assert [(e["event"], e["reason"]) for e in stops(hub, "ida")] == [
        ("gpus-released", "gpu-idle"), ("server-stopped", "gpu-idle")]
    assert stops(hub, "ida")[0]["devices"] == [DEVICE]
    after = board(hub, "nell")
    assert after["devices"][0]["state"] == "free" and after["devices"][0]["holders"] == []

    # the next user gets that device
    assert hub.spawn("nell", {"gpus": 1}).ready
    label = engine.containers.get(f"{TEST_PREFIX}-nell--").labels[labels.GPUS]
    assert label == DEVICE
    hub.stop_server("nell")
    assert [e["reason"] for e in stops(hub, "nell")] == [None, None]  # a user's own stop has no reason
    hub.stop_server("cyril")


def test_a_busy_kernel_keeps_its_gpu_until_the_maximum_hold(reclaim_hub, engine):
    hub = reclaim_hub
    hub.create_user("max")
    assert hub.spawn("max", {"gpus": 1}).ready
    started = time.monotonic()
    kernel = Kernel(hub, "max")
    stop_typing = threading.Event()

    def keep_busy():
        # kernel traffic through the proxy, every second: activity the hub sees
        while not stop_typing.is_set():
            try:
                kernel.run("print('step')", timeout=10)
            except Exception:  # the server stopped under it: the test below says whether in time
                return
            time.sleep(1)

    worker = threading.Thread(target=keep_busy, daemon=True)
    worker.start()
    try:
        time.sleep(IDLE * 2)  # twice the idle timeout: active, so still running
        assert running(engine, "max"), hub.log_tail()
        waited = wait_stopped(hub, "max", timeout=MAX_HOLD + 30)
        held = time.monotonic() - started
    finally:
        stop_typing.set()
        worker.join(timeout=15)
        kernel.close()
    print(f"max's busy GPU server was stopped after holding its GPU {held:.1f} s (max hold {MAX_HOLD} s)")
    assert held >= MAX_HOLD - 5 and waited > 0  # the GPUs' "since" is set a moment before the spawn ends
    assert [(e["event"], e["reason"]) for e in stops(hub, "max")] == [
        ("gpus-released", "gpu-max-hold"), ("server-stopped", "gpu-max-hold")]


def test_the_board_and_the_reclaim_call_refuse_tokens_without_their_scopes(reclaim_hub):
    hub = reclaim_hub
    hub.create_user("scoped")
    narrow = hub.api("POST", "/users/scoped/tokens", json={"scopes": ["access:servers!user=scoped"]}).json()["token"]
    r = requests.get(f"{hub.url}/hub/api/gpus", headers={"Authorization": f"token {narrow}"}, timeout=30)
    assert (r.status_code, r.json()["message"]) == (403, "Reading the GPU board needs the scope custom:gpus:read.")
    # a user's own full token reads the board, but only the culler's role may reclaim
    full = hub.user_token("scoped")
    r = requests.post(f"{hub.url}/hub/api/gpus/reclaim", headers={"Authorization": f"token {full}"}, timeout=30)
    assert (r.status_code, r.json()["message"]) == (403, "Reclaiming GPUs needs the scope custom:gpus:reclaim.")
