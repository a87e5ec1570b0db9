"""Issue 5: who started what, when, from where, with which GPUs: the audit trail, parsed."""

import time

import pytest

from hardened_spawner import labels
from hubdriver import TEST_PREFIX

DEVICE = "GPU-00000000-0000-0000-0000-0000000000aa"
AUDIT_HUB = f"""
c.HardenedSpawner.gpu_inventory = ["{DEVICE}"]
c.HardenedSpawner.gpu_max_per_user = 1
c.Spawner.poll_interval = 2
"""

COMMON = {
    "__schema__", "__schema_version__", "__timestamp__", "__metadata_version__", "event", "user",
    "server_name", "uid", "gid", "client_ip", "image", "image_digest", "policy_fingerprint",
    "security", "devices", "container_id", "container_name", "reason", "admission",
}


@pytest.fixture(scope="module")
def audit_hub(hub_factory):
    return hub_factory(AUDIT_HUB)


def events_of(hub, user, since=0):
    return [e for e in hub.audit_events()[since:] if e["user"] == user]


def test_spawn_and_stop_leave_the_expected_events(audit_hub, engine):
    audit_hub.create_user("ada")
    mark = len(audit_hub.audit_events())
    assert audit_hub.spawn("ada", {"gpus": 1}).ready
    container = engine.containers.get(f"{TEST_PREFIX}-ada--")
    audit_hub.stop_server("ada")
    events = events_of(audit_hub, "ada", mark)
    assert [e["event"] for e in events] == [
        "spawn-requested", "image-admitted", "gpus-assigned", "server-started", "gpus-released", "server-stopped",
    ]
    for event in events:
        assert set(event) == COMMON
        assert event["__schema__"] == "https://schema.jupyter.org/hardened-spawner/audit"
        # the hub hands the spawner its request handler for a spawn only, not for a stop
        stop = event["event"] in ("gpus-released", "server-stopped")
        assert event["client_ip"] == (None if stop else "127.0.0.1")
        if event["event"] not in ("spawn-requested", "image-admitted"):  # a new user's UID is not decided yet
            assert event["uid"] == event["gid"] == int(container.labels[labels.UID])
        assert event["image"] == "hardened-spawner-singleuser:latest"
    admitted = events[1]
    assert admitted["image_digest"] == admitted["admission"]["image_id"]
    assert admitted["admission"]["violations"] == [] and admitted["admission"]["special_files"] == 0
    assert [e["admission"] for e in events if e is not admitted] == [None] * 5
    started = events[3]
    assert started["devices"] == [DEVICE]
    assert started["container_id"] == container.id
    assert started["container_name"] == f"{TEST_PREFIX}-ada--"
    assert started["image_digest"].startswith("sha256:")
    assert started["policy_fingerprint"] == container.labels[labels.POLICY]
    security = started["security"]
    assert security["cap_drop"] == ["ALL"] and security["cap_add"] == []
    assert security["read_only_root"] and security["no_new_privileges"] and not security["privileged"]
    assert security["pids_limit"] == 1024 and security["mem_limit"] == 2 * 1024**3
    assert events[2]["devices"] == events[4]["devices"] == [DEVICE]
    assert events[5]["devices"] == []
    first, last = events[0]["__timestamp__"], events[-1]["__timestamp__"]
    assert first.endswith("Z") and first <= last


def test_a_refusal_is_recorded_with_its_reason(audit_hub):
    audit_hub.create_user("bea")
    mark = len(audit_hub.audit_events())
    result = audit_hub.spawn("bea", {"gpus": 5})
    assert not result.ready
    events = events_of(audit_hub, "bea", mark)
    assert [e["event"] for e in events] == ["spawn-requested", "image-admitted", "spawn-refused"]
    assert events[2]["reason"] == (
        "You asked for 5 GPUs, but your limit is 1 GPU. Ask for 1 or fewer, "
        "or ask your hub administrator to raise your limit."
    )


def test_a_server_that_dies_is_recorded_and_its_gpu_released(audit_hub, engine):
    audit_hub.create_user("cid")
    assert audit_hub.spawn("cid", {"gpus": 1}).ready
    mark = len(audit_hub.audit_events())
    engine.containers.get(f"{TEST_PREFIX}-cid--").kill()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        names = [e["event"] for e in events_of(audit_hub, "cid", mark)]
        if "gpus-released" in names:
            break
        time.sleep(1)
    events = events_of(audit_hub, "cid", mark)
    # the hub does not call stop() for a server it found dead: died + released is the record
    assert [e["event"] for e in events] == ["server-died", "gpus-released"]
    assert "ExitCode=137" in events[0]["reason"]
    assert events[1]["devices"] == [DEVICE]
    # the device is free again
    audit_hub.create_user("dee")
    assert audit_hub.spawn("dee", {"gpus": 1}).ready
    audit_hub.stop_server("dee")
