"""Workspace quotas through the spawner's start (issue 28), against the fake engine and a fake
host's `btrfs`: which volume a user gets, its limit when they come back with another quota,
and what happens when a quota cannot be enforced (a warning, or a refusal the user reads)."""

from __future__ import annotations

import functools
import logging
from types import SimpleNamespace

import docker.errors
import pytest
import requests
from fake_engine import FakeEngine, engine_in_use
from test_quota import FakeHost
from test_spawner_hooks import make_spawner

from hardened_spawner.docker import quota
from hardened_spawner.errors import SpawnRefused

MIB, GIB = 1024**2, 1024**3
ROOT = "/srv/workspaces"


class QuotaEngine(FakeEngine):
    """The fake engine, keeping volumes' driver options as ``Options`` (as `docker volume
    inspect` shows them), and refusing a ``size`` as an engine without XFS quotas does."""

    def __init__(self, sizes: bool = False):
        super().__init__()
        self.sizes = sizes
        self.sizes_refused: list[str] = []

    def create_volume(self, name=None, driver=None, driver_opts=None, labels=None):
        if driver_opts and "size" in driver_opts and not self.sizes:
            self._call("create_volume")
            self.sizes_refused.append(name)
            response = requests.Response()
            response.status_code = 500
            raise docker.errors.APIError("500", response, explanation=f"create {name}: {quota.NO_ENGINE_QUOTA}")
        volume = super().create_volume(name, driver, driver_opts, labels)
        volume["Options"] = dict(driver_opts or {}) or None
        return volume


@pytest.fixture
def engine(monkeypatch):
    with engine_in_use(monkeypatch, QuotaEngine()) as fake:
        yield fake


@pytest.fixture
def host(monkeypatch):
    """The hub's host: its `btrfs` answers from a table (`test_quota.FakeHost`)."""
    fake = FakeHost()
    monkeypatch.setattr(quota, "apply_btrfs_quota", functools.partial(quota.apply_btrfs_quota, run=fake))
    return fake


def spawner_in(port, groups=(), **settings):
    spawner = make_spawner(port, **settings)
    spawner.user.groups = [SimpleNamespace(name=group) for group in groups]
    return spawner


async def restart(spawner, port, groups=(), **settings):
    """Stop, then start the same user again with (maybe) other groups or settings."""
    await spawner.stop()
    state = spawner.get_state()
    again = spawner_in(port, groups, **settings)
    again.load_state(state)
    await again.start()
    return again


async def test_with_a_btrfs_root_a_workspace_is_a_limited_subvolume(engine, host, server_port):
    spawner = spawner_in(server_port, workspace_btrfs_root=ROOT, workspace_quota="50M")
    await spawner.start()
    path = f"{ROOT}/jupyterhub-workspace-alice"
    assert host.subvolumes == {path: 50 * MIB}
    assert engine.volume_state["jupyterhub-workspace-alice"]["Options"] == {
        "type": "none", "o": "bind", "device": path}
    assert spawner._plan.workspace.quota == 50 * MIB
    # the helper prepared it as any new workspace (owner, mode), and the server mounts it nocopy
    assert "Preparing your workspace" in [e["message"] async for e in spawner.progress()]
    [server] = engine.servers()
    assert server["Config"]["HostConfig"]["Mounts"][0]["VolumeOptions"] == {"NoCopy": True}


async def test_a_returning_user_s_limit_follows_their_groups(engine, host, server_port):
    settings = {"workspace_btrfs_root": ROOT, "workspace_quota": "50M", "workspace_quota_group": {"thesis": "200G"}}
    spawner = spawner_in(server_port, **settings)
    await spawner.start()
    path = f"{ROOT}/jupyterhub-workspace-alice"
    again = await restart(spawner, server_port, ["thesis"], **settings)
    assert host.subvolumes == {path: 200 * GIB}
    assert again._plan.workspace.quota == 200 * GIB
    assert host.commands[-1] == ["btrfs", "qgroup", "limit", str(200 * GIB), path]
    # lowered for all: the limit follows, no subvolume is made or removed
    lowered = await restart(again, server_port, [], **{**settings, "workspace_quota": "20M"})
    assert host.subvolumes == {path: 20 * MIB} and lowered._plan.workspace.quota == 20 * MIB
    assert [c for c in host.commands if c[1:3] == ["subvolume", "create"]] == [["btrfs", "subvolume", "create", path]]


async def test_an_unchanged_quota_costs_a_returning_user_no_engine_call(engine, host, server_port):
    settings = {"workspace_btrfs_root": ROOT, "workspace_quota": "50M"}
    spawner = spawner_in(server_port, **settings)
    await spawner.start()
    engine.calls.clear()
    host.commands.clear()
    await restart(spawner, server_port, **settings)
    assert engine.calls.count("inspect_volume") == 1  # the one every start makes for the UID
    assert [c[1:3] for c in host.commands] == [["subvolume", "show"], ["qgroup", "show"]]  # nothing set


async def test_a_btrfs_root_without_quotas_starts_without_one_and_says_so(engine, host, server_port, caplog):
    host.quotas_on = False
    spawner = spawner_in(server_port, workspace_btrfs_root=ROOT, workspace_quota="50M")
    with caplog.at_level(logging.WARNING):
        await spawner.start()
    assert engine.volume_state["jupyterhub-workspace-alice"]["Options"] is None  # a plain volume
    assert spawner._plan.workspace.quota is None
    assert "HardenedSpawner.workspace_quota of 50 MiB not enforced on jupyterhub-workspace-alice" in caplog.text
    assert "quotas not enabled" in caplog.text


async def test_a_required_quota_btrfs_cannot_give_refuses_the_spawn(engine, host, server_port):
    host.quotas_on = False
    spawner = spawner_in(server_port, workspace_btrfs_root=ROOT, workspace_quota="50M", workspace_quota_required=True)
    with pytest.raises(SpawnRefused) as refused:
        await spawner.start()
    assert (refused.value.reason, refused.value.status_code) == ("workspace", 409)  # 4xx: not a hub failure
    assert "requires a disk quota on every workspace (HardenedSpawner.workspace_quota_required)" in str(
        refused.value.jupyterhub_message)
    assert ROOT not in refused.value.jupyterhub_message  # no host path for the user
    assert "jupyterhub-workspace-alice" not in engine.volume_state and engine.servers() == []


async def test_xfs_size_when_the_engine_has_quotas(engine, server_port):
    engine.sizes = True
    spawner = spawner_in(server_port)  # the default: 10G, with the engine's XFS size
    await spawner.start()
    assert engine.volume_state["jupyterhub-workspace-alice"]["Options"] == {"size": str(10 * GIB)}
    assert spawner._plan.workspace.quota == 10 * GIB


async def test_an_engine_without_xfs_quotas_makes_a_plain_volume(engine, server_port, caplog):
    spawner = spawner_in(server_port)
    with caplog.at_level(logging.WARNING):
        await spawner.start()
    assert engine.volume_state["jupyterhub-workspace-alice"]["Options"] is None
    assert "quota size requested but no quota support" in caplog.text


async def test_an_engine_without_xfs_quotas_is_asked_once_per_hub(engine, server_port, caplog):
    """The first refusal is the engine's for the hub's life: the next new workspaces are made
    plain at once (each still logged as without a quota), with no failing create first."""
    first = spawner_in(server_port)
    await first.start()
    second = make_spawner(server_port, name="bob", user_id=2)
    with caplog.at_level(logging.WARNING):
        await second.start()
    assert engine.sizes_refused == ["jupyterhub-workspace-alice"]
    assert engine.volume_state["jupyterhub-workspace-bob"]["Options"] is None
    assert "jupyterhub-workspace-bob: the Docker engine answered" in caplog.text


async def test_an_engine_without_xfs_quotas_refuses_a_required_quota(engine, server_port):
    spawner = spawner_in(server_port, workspace_quota="50M", workspace_quota_required=True)
    with pytest.raises(SpawnRefused) as refused:
        await spawner.start()
    assert refused.value.status_code == 409
    assert refused.value.jupyterhub_message.startswith(
        "Your server was not started: this hub requires a disk quota on every workspace "
        "(HardenedSpawner.workspace_quota_required), and the quota of 50 MiB cannot be enforced")
    assert engine.servers() == []


async def test_a_workspace_from_before_quotas_is_used_as_it_is(engine, server_port, caplog):
    engine.create_volume("jupyterhub-workspace-alice", labels={})  # made before, without a quota
    spawner = spawner_in(server_port, workspace_quota="50M")
    with caplog.at_level(logging.INFO):
        await spawner.start()
    assert engine.volume_state["jupyterhub-workspace-alice"]["Options"] is None  # never replaced
    assert "the workspace was made without one" in caplog.text


async def test_a_workspace_from_before_quotas_is_refused_when_quotas_are_required(engine, server_port):
    engine.create_volume("jupyterhub-workspace-alice", labels={})
    spawner = spawner_in(server_port, workspace_quota="50M", workspace_quota_required=True)
    with pytest.raises(SpawnRefused) as refused:
        await spawner.start()
    assert refused.value.status_code == 409
    assert "jupyterhub-workspace-alice" in engine.volume_state  # refused, never removed


async def test_without_a_quota_nothing_changes(engine, server_port):
    spawner = spawner_in(server_port, workspace_quota=None)
    await spawner.start()
    assert engine.volume_state["jupyterhub-workspace-alice"]["Options"] is None
    assert spawner._plan.workspace.quota is None


async def test_a_host_folder_cannot_have_a_required_quota(engine, server_port):
    spawner = spawner_in(server_port, workspace_host_path="/srv/ws/{username}", workspace_quota_required=True)
    with pytest.raises(SpawnRefused) as refused:
        await spawner.start()
    assert refused.value.status_code == 409


@pytest.mark.parametrize(
    "settings, sizes, words",
    [
        ({}, False, "HardenedSpawner.workspace_quota is 10 GiB, but it cannot be enforced here: the Docker engine "
                    "answered 'quota size requested but no quota support' for a volume with a size"),
        ({"workspace_quota_required": True}, False, "Spawns are refused until it can"),
        ({"workspace_btrfs_root": ROOT}, False, "HardenedSpawner.workspace_quota is 10 GiB, but it cannot be "
                                                "enforced here: btrfs qgroup show /srv/workspaces failed: "
                                                "ERROR: can't list qgroups: quotas not enabled"),
        ({"workspace_host_path": "/srv/ws/{username}"}, False, "workspaces are host folders"),
    ],
)
async def test_the_hub_start_check_warns_naming_the_setting(engine, host, settings, sizes, words, caplog):
    host.quotas_on = False
    engine.sizes = sizes
    spawner = spawner_in(0, **settings)
    monkey_btrfs = functools.partial(quota.btrfs_problem, run=host)
    original, quota.btrfs_problem = quota.btrfs_problem, monkey_btrfs
    try:
        with caplog.at_level(logging.INFO):
            await spawner.check_workspace_quota(logging.getLogger("hub"))
    finally:
        quota.btrfs_problem = original
    assert words in caplog.text
    assert [v for v in engine.volume_state if v.startswith(quota.PROBE_PREFIX)] == []  # the probe left nothing


async def test_the_hub_start_check_is_quiet_when_quotas_work_or_none_is_asked(engine, caplog):
    engine.sizes = True
    with caplog.at_level(logging.INFO):
        await spawner_in(0).check_workspace_quota(logging.getLogger("hub"))
        await spawner_in(0, workspace_quota=None).check_workspace_quota(logging.getLogger("hub"))
    assert [r.levelname for r in caplog.records if r.name == "hub"] == ["INFO"]
    assert "Workspace quotas (10 GiB) are enforced by the engine's XFS project quotas" in caplog.text
