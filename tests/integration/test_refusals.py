"""Issue 2: what the hardened spawner refuses, and how the user and the admin learn why."""


import pytest

from hardened_spawner import labels
from hubdriver import TEST_PREFIX, Kernel
from hubdriver.hub import SINGLEUSER_IMAGE

# One hub whose escape hatches break the policy for some users only, the way an
# admin's per-user callables could.
BAD_ESCAPE_HATCHES = """
def per_user_host_config(spawner):
    if spawner.user.name == "priv":
        return {"privileged": True}
    if spawner.user.name == "sock":
        return {"binds": {"/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"}}}
    return {}

def pre_spawn(spawner):
    if spawner.user.name == "dies":
        spawner.cmd = ["python3", "-c",
                       "import sys; print('loading settings'); print('FATAL: no such setting: gpu_magic'); sys.exit(3)"]

c.HardenedSpawner.extra_host_config = per_user_host_config
c.Spawner.pre_spawn_hook = pre_spawn
c.HardenedSpawner.allowed_images = {"pytorch": "IMAGE"}
""".replace("IMAGE", SINGLEUSER_IMAGE)


@pytest.fixture(scope="module")
def bad_hub(hub_factory):
    return hub_factory(BAD_ESCAPE_HATCHES)


def server_containers(engine, user):
    return engine.containers.list(all=True, filters={"label": [f"{labels.OWNER}={user}"], "name": TEST_PREFIX})


@pytest.mark.parametrize(
    "user, expected",
    [
        ("priv", "The container would run privileged, with every capability and every host device "
                 "(HostConfig.Privileged, set through extra_host_config['privileged']). "
                 "Fix: remove 'privileged'; it is never allowed"),
        ("sock", "The engine socket /var/run/docker.sock would be mounted; whoever holds it is root "
                 "on the host (HostConfig.Binds/Mounts, set through volumes or extra_host_config). "
                 "Fix: remove that mount"),
    ],
)
def test_guard_refuses_and_no_container_exists(bad_hub, engine, user, expected):
    bad_hub.create_user(user)
    result = bad_hub.spawn(user)
    assert not result.ready
    assert result.message == (
        "Spawn failed: The server was not started because its container would break the "
        f"security policy:\n- {expected}"
    )
    assert server_containers(engine, user) == []
    assert f"Refused {user}" in bad_hub.log_tail(200)
    refused = [e for e in bad_hub.audit_events() if e["event"] == "spawn-refused" and e["user"] == user]
    assert refused and expected in refused[-1]["reason"]
    # a refusal is the admin's to fix, not a hub failure: the hub keeps serving
    assert bad_hub.api("GET", "/").ok


def test_a_server_dying_at_start_shows_its_own_last_words(bad_hub, engine):
    bad_hub.create_user("dies")
    result = bad_hub.spawn("dies")
    assert not result.ready
    assert "Your server stopped while starting (exit code 3)" in result.message
    assert "FATAL: no such setting: gpu_magic" in result.message
    assert "InvalidStateError" not in bad_hub.log_tail(200)
    # its reason is said: the exited container is not kept for `check` to list as a server
    assert server_containers(engine, "dies") == []


def test_an_image_the_hub_does_not_offer_is_refused_with_the_choices(bad_hub, engine):
    bad_hub.create_user("picky")
    result = bad_hub.spawn("picky", {"image": "busybox:latest"})
    assert not result.ready
    assert result.message == ("Spawn failed: The image 'busybox:latest' is not one this hub offers. "
                              "Choose one of: pytorch.")
    assert "Unexpected error" not in bad_hub.log_tail(200)
    assert server_containers(engine, "picky") == []
    asked = [e for e in bad_hub.audit_events() if e["user"] == "picky" and e["event"] == "spawn-requested"]
    assert asked[-1]["image"] == "busybox:latest"  # what was asked, not the default
    # the image it offers starts, by the name the form shows
    assert bad_hub.spawn("picky", {"image": "pytorch"}).ready
    bad_hub.stop_server("picky")


def test_other_users_on_the_same_hub_still_spawn(bad_hub):
    bad_hub.create_user("fine")
    result = bad_hub.spawn("fine")
    assert result.ready, result.message
    bad_hub.stop_server("fine")


@pytest.mark.parametrize(
    "config, message",
    [
        ("c.HardenedSpawner.cap_add = ['SYS_ADMIN']",
         "HardenedSpawner.cap_add: SYS_ADMIN may not be added"),
        ("c.HardenedSpawner.uid_min = 0",
         "HardenedSpawner.uid_min is 0; it must be at least 1000"),
        ("c.HardenedSpawner.gpu_inventory = ['GPU-a']\nc.HardenedSpawner.gpu_pins = {'x': ['GPU-nope']}",
         "HardenedSpawner.gpu_pins: x is pinned to GPU-nope, which is not in the inventory"),
        ("c.HardenedSpawner.audit_log = '/nonexistent/dir/audit.jsonl'",
         "HardenedSpawner.audit_log = '/nonexistent/dir/audit.jsonl': directory '/nonexistent/dir' does not exist"),
    ],
)
def test_bad_config_stops_the_hub_at_start_naming_the_setting(hub_factory, config, message):
    hub = hub_factory(config, wait=False)
    assert hub.wait_exit(60) != 0
    log = hub.log_tail(80)
    assert "Invalid HardenedSpawner configuration" in log and message in log, log


def test_a_workspace_owned_by_another_uid_is_refused_and_left_alone(hub, engine):
    """Someone else's files in the volume: refuse, never re-own them silently."""
    volume = f"{TEST_PREFIX}-workspace-mallory"
    engine.volumes.create(volume)
    engine.containers.run(
        "hardened-spawner-base:bookworm",
        ["sh", "-c", "echo secret > /w/notes.txt && chown -R 4242:4242 /w && chmod 700 /w"],
        volumes={volume: {"bind": "/w", "mode": "rw"}},
        network_mode="none",
        remove=True,
    )
    hub.create_user("mallory")
    result = hub.spawn("mallory")
    assert not result.ready
    assert (
        f"Your workspace (volume {volume}) belongs to UID 4242, not to your UID" in result.message
        and "workspace_allow_adopt" in result.message
    ), result.message
    owner = engine.containers.run(
        "hardened-spawner-base:bookworm", ["stat", "-c", "%u:%g %a", "/w", "/w/notes.txt"],
        volumes={volume: {"bind": "/w", "mode": "ro"}}, network_mode="none", remove=True,
    ).decode().split("\n")
    assert owner[:2] == ["4242:4242 700", "4242:4242 644"]


def test_a_user_keeps_their_uid_when_the_policy_changes(hub_factory):
    hub = hub_factory()
    hub.create_user("steady")
    assert hub.spawn("steady").ready
    kernel = Kernel(hub, "steady")
    uid = int(kernel.run("import os; print(os.getuid())"))
    kernel.close()
    hub.stop_server("steady")
    hub.stop()
    hub.uid_min += 5000  # the admin changes the range
    hub.start()
    result = hub.spawn("steady")
    assert result.ready, result.message
    kernel = Kernel(hub, "steady")
    assert int(kernel.run("import os; print(os.getuid())")) == uid
    kernel.close()
    assert f"steady keeps UID {uid} (from state); the current policy would give {uid + 5000}" in hub.log_tail(300)
    hub.stop_server("steady")
