"""container: the server spec from plain inputs, the escape-hatch merge, and that the result is
accepted by docker-py's own (daemon-free) builders and by the guard."""

import copy
import dataclasses

import docker
import pytest

from hardened_spawner.core.decision import GpuGrant, ServerDecision
from hardened_spawner.core.identity import make_identity
from hardened_spawner.core.profile import SecurityProfile
from hardened_spawner.docker.container import (
    DockerPlacement,
    ServerSpec,
    WorkspaceMount,
    build_server_spec,
    gpu_device_requests,
    merge_overrides,
    server_labels,
)
from hardened_spawner.docker.guard import GuardPolicy, check_container
from hardened_spawner.docker.host_config import log_config

GIB = 1024**3
IDENTITY_DATA = "/var/lib/docker/volumes/hardened-spawner-identity/_data"
HEALTHCHECK = {
    "test": ["CMD", "python3", "-c", "print()"],
    "interval": 30_000_000_000,
    "timeout": 10_000_000_000,
    "retries": 3,
    "start_period": 60_000_000_000,
}
PROFILE = SecurityProfile(
    mem_limit=8 * GIB,
    cpu_limit=4.0,
    pids_limit=1024,
    shm_size=GIB,
    tmpfs={"/tmp": GIB},
    healthcheck=HEALTHCHECK,
)
DECISION = ServerDecision(
    owner="alice@example.org",
    server_name="",
    image="registry.example.org/singleuser:1.2",
    command=("jupyterhub-singleuser",),
    port=8888,
    identity=make_identity("alice@example.org", 300001, "/home/{username}"),
    profile=PROFILE,
    workspace="jupyterhub-workspace-alice",
    gpus=GpuGrant((), "2026-01-01T00:00:00+00:00"),
    environment={"JUPYTERHUB_API_TOKEN": "secret", "HOME": "/home/alice"},
)
PLACEMENT = DockerPlacement(
    workspace=WorkspaceMount("jupyterhub-workspace-alice", "/home/alice"),
    identity_files={
        f"{IDENTITY_DATA}/300001/passwd": "/etc/passwd",
        f"{IDENTITY_DATA}/300001/group": "/etc/group",
    },
    network_name="hardened-spawner-users",
    version="0.1.0",
)
GPU_DECISION = dataclasses.replace(
    DECISION, server_name="gpu", gpus=GpuGrant(("GPU-aaaa", "MIG-bbbb"), "2026-01-01T00:00:00+00:00")
)


def _expected_labels(server_name="", gpus="", since=""):
    return {
        "org.jupyter.hardened-spawner.managed": "true",
        "org.jupyter.hardened-spawner.role": "server",
        "org.jupyter.hardened-spawner.owner": "alice@example.org",
        "org.jupyter.hardened-spawner.server-name": server_name,
        "org.jupyter.hardened-spawner.uid": "300001",
        "org.jupyter.hardened-spawner.gid": "300001",
        "org.jupyter.hardened-spawner.version": "0.1.0",
        # the fingerprint's own value is test_profile's business
        "org.jupyter.hardened-spawner.policy-fingerprint": PROFILE.fingerprint(),
        "org.jupyter.hardened-spawner.gpus": gpus,
        "org.jupyter.hardened-spawner.gpus-since": since,
    }


EXPECTED_CREATE = {
    "image": "registry.example.org/singleuser:1.2",
    "command": ["jupyterhub-singleuser"],
    "user": "300001:300001",
    "environment": {"JUPYTERHUB_API_TOKEN": "secret", "HOME": "/home/alice"},
    "working_dir": "/home/alice",
    "labels": _expected_labels(),
    "ports": {"8888/tcp": None},
    "healthcheck": HEALTHCHECK,
    "hostname": "alice",
}
EXPECTED_HOST = {
    "cap_drop": ["ALL"],
    "cap_add": [],
    "read_only": True,
    "security_opt": ["no-new-privileges:true"],
    "tmpfs": {"/tmp": "rw,nosuid,nodev,size=1073741824,mode=1777"},
    "shm_size": 1073741824,
    "pids_limit": 1024,
    "mem_limit": 8589934592,
    "memswap_limit": 8589934592,
    "nano_cpus": 4000000000,
    "privileged": False,
    "binds": {
        f"{IDENTITY_DATA}/300001/passwd": {"bind": "/etc/passwd", "mode": "ro"},
        f"{IDENTITY_DATA}/300001/group": {"bind": "/etc/group", "mode": "ro"},
    },
    "mounts": [
        {
            "Type": "volume",
            "Source": "jupyterhub-workspace-alice",
            "Target": "/home/alice",
            "ReadOnly": False,
            "VolumeOptions": {"NoCopy": True},
        }
    ],
    "device_requests": [],
    "network_mode": "hardened-spawner-users",
    "log_config": {"type": "json-file", "config": {"max-size": "10485760", "max-file": "3"}},
    "init": True,
}


def test_build_server_spec_without_gpus():
    spec = build_server_spec(DECISION, PLACEMENT, {}, {})
    assert spec == ServerSpec(create=EXPECTED_CREATE, host=EXPECTED_HOST, overridden=())


def test_build_server_spec_with_gpus():
    spec = build_server_spec(GPU_DECISION, PLACEMENT, {}, {})
    assert spec.create == {
        **EXPECTED_CREATE,
        "labels": _expected_labels("gpu", "GPU-aaaa,MIG-bbbb", "2026-01-01T00:00:00+00:00"),
    }
    assert spec.host == {
        **EXPECTED_HOST,
        "device_requests": [
            {"Driver": "nvidia", "DeviceIDs": ["GPU-aaaa", "MIG-bbbb"], "Capabilities": [["gpu"]]}
        ],
    }
    assert spec.overridden == ()


def test_build_server_spec_extra_binds_and_identity_files():
    placement = dataclasses.replace(
        PLACEMENT,
        extra_binds={
            "/srv/data": {"bind": "/data", "mode": "ro"},
            # an extra bind of the same host path never wins over the identity file
            f"{IDENTITY_DATA}/300001/passwd": {"bind": "/x", "mode": "rw"},
        },
    )
    assert build_server_spec(DECISION, placement, {}, {}).host["binds"] == {
        "/srv/data": {"bind": "/data", "mode": "ro"},
        f"{IDENTITY_DATA}/300001/passwd": {"bind": "/etc/passwd", "mode": "ro"},
        f"{IDENTITY_DATA}/300001/group": {"bind": "/etc/group", "mode": "ro"},
    }


def test_build_server_spec_does_not_share_inputs():
    spec = build_server_spec(DECISION, PLACEMENT, {}, {})
    spec.create["command"].append("--allow-root")
    spec.create["environment"]["X"] = "1"
    assert DECISION.command == ("jupyterhub-singleuser",)
    assert "X" not in DECISION.environment
    assert PROFILE.healthcheck == HEALTHCHECK


def test_build_server_spec_reports_overrides():
    spec = build_server_spec(
        DECISION,
        PLACEMENT,
        {"user": "0:0", "labels": {"org.jupyter.hardened-spawner.owner": "bob"}, "stop_signal": "SIGINT"},
        {"privileged": True, "read_only": True, "sysctls": {"net.ipv4.ip_forward": "0"}},
    )
    assert spec.overridden == (
        "extra_create_kwargs['user']",
        "extra_create_kwargs['labels']['org.jupyter.hardened-spawner.owner']",
        "extra_host_config['privileged']",
    )
    assert spec.create["user"] == "0:0"
    assert spec.create["stop_signal"] == "SIGINT"
    assert spec.create["labels"]["org.jupyter.hardened-spawner.owner"] == "bob"
    assert spec.host["privileged"] is True
    assert spec.host["sysctls"] == {"net.ipv4.ip_forward": "0"}


# --- helpers --------------------------------------------------------------


def test_server_labels():
    assert server_labels(DECISION, PLACEMENT) == _expected_labels()


@pytest.mark.parametrize(
    "uuids, expected",
    [
        ((), []),
        (("GPU-a",), [{"Driver": "nvidia", "DeviceIDs": ["GPU-a"], "Capabilities": [["gpu"]]}]),
    ],
)
def test_gpu_device_requests(uuids, expected):
    assert gpu_device_requests(uuids) == expected


@pytest.mark.parametrize(
    "mount, expected",
    [
        (
            WorkspaceMount("jupyterhub-workspace-alice", "/home/alice"),
            {
                "Type": "volume",
                "Source": "jupyterhub-workspace-alice",
                "Target": "/home/alice",
                "ReadOnly": False,
                "VolumeOptions": {"NoCopy": True},
            },
        ),
        (
            WorkspaceMount("/srv/workspaces/alice", "/home/alice", host_path=True),
            {"Type": "bind", "Source": "/srv/workspaces/alice", "Target": "/home/alice", "ReadOnly": False},
        ),
    ],
)
def test_workspace_mount_as_mount(mount, expected):
    assert mount.as_mount() == expected


# --- merge_overrides ---------------------------------------------------------


@pytest.mark.parametrize(
    "base, extra, merged, replaced",
    [
        # nothing to merge
        ({"a": 1}, {}, {"a": 1}, []),
        ({"a": 1}, None, {"a": 1}, []),
        # a new key is added silently
        ({"a": 1}, {"b": 2}, {"a": 1, "b": 2}, []),
        ({"a": 1}, {"b": {"c": 3}}, {"a": 1, "b": {"c": 3}}, []),
        # an existing key replaced is reported
        ({"privileged": False}, {"privileged": True}, {"privileged": True}, ["extra_host_config['privileged']"]),
        (
            {"security_opt": ["no-new-privileges:true"]},
            {"security_opt": ["seccomp=unconfined"]},
            {"security_opt": ["seccomp=unconfined"]},
            ["extra_host_config['security_opt']"],
        ),
        # nested dicts merge; only replaced nested keys are reported, with their path
        (
            {"labels": {"a": "1", "b": "2"}},
            {"labels": {"b": "3", "c": "4"}},
            {"labels": {"a": "1", "b": "3", "c": "4"}},
            ["extra_host_config['labels']['b']"],
        ),
        (
            {"x": {"y": {"z": 1, "keep": 0}}},
            {"x": {"y": {"z": 2}}},
            {"x": {"y": {"z": 2, "keep": 0}}},
            ["extra_host_config['x']['y']['z']"],
        ),
        # a dict over a non-dict (and the other way round) replaces it
        ({"tmpfs": None}, {"tmpfs": {"/x": ""}}, {"tmpfs": {"/x": ""}}, ["extra_host_config['tmpfs']"]),
        ({"tmpfs": {"/x": ""}}, {"tmpfs": None}, {"tmpfs": None}, ["extra_host_config['tmpfs']"]),
        # an equal value is not an override
        ({"read_only": True}, {"read_only": True}, {"read_only": True}, []),
        ({"labels": {"a": "1"}}, {"labels": {"a": "1"}}, {"labels": {"a": "1"}}, []),
        # several, in the order of extra
        (
            {"a": 1, "b": 2},
            {"b": 3, "a": 4},
            {"a": 4, "b": 3},
            ["extra_host_config['b']", "extra_host_config['a']"],
        ),
    ],
)
def test_merge_overrides(base, extra, merged, replaced):
    before = copy.deepcopy((base, extra))
    assert merge_overrides(base, extra, "extra_host_config") == (merged, replaced)
    assert (base, extra) == before  # inputs untouched


def test_merge_overrides_copies_values():
    extra = {"labels": {"a": "1"}, "binds": ["/x:/y"]}
    merged, _ = merge_overrides({}, extra, "extra_host_config")
    merged["labels"]["a"] = "2"
    merged["binds"].append("/z:/z")
    assert extra == {"labels": {"a": "1"}, "binds": ["/x:/y"]}


# --- through docker-py's builders (no daemon needed) and the guard -------------


@pytest.fixture(scope="module")
def api():
    return docker.APIClient(version="1.41")


def _api_config(api, spec):
    host_config = api.create_host_config(**spec.host)
    return api.create_container_config(**spec.create, host_config=host_config)


def _guard(config, placement=PLACEMENT):
    policy = GuardPolicy(allowed_bind_sources=frozenset(placement.identity_files))
    return check_container(config, config["HostConfig"], policy)


def test_docker_py_accepts_the_spec(api):
    config = _api_config(api, build_server_spec(DECISION, PLACEMENT, {}, {}))
    assert config["User"] == "300001:300001"
    assert config["Cmd"] == ["jupyterhub-singleuser"]
    assert sorted(config["Env"]) == ["HOME=/home/alice", "JUPYTERHUB_API_TOKEN=secret"]
    assert config["ExposedPorts"] == {"8888/tcp": None}
    assert config["Healthcheck"] == {
        "Test": ["CMD", "python3", "-c", "print()"],
        "Interval": 30_000_000_000,
        "Timeout": 10_000_000_000,
        "Retries": 3,
        "StartPeriod": 60_000_000_000,
    }
    assert config["Labels"] == _expected_labels()
    assert config["HostConfig"] == {
        "Binds": [
            f"{IDENTITY_DATA}/300001/passwd:/etc/passwd:ro",
            f"{IDENTITY_DATA}/300001/group:/etc/group:ro",
        ],
        "CapDrop": ["ALL"],
        "DeviceRequests": [],
        "Init": True,
        "LogConfig": {"Type": "json-file", "Config": {"max-size": "10485760", "max-file": "3"}},
        "Memory": 8589934592,
        "MemorySwap": 8589934592,
        "Mounts": [
            {
                "ReadOnly": False,
                "Source": "jupyterhub-workspace-alice",
                "Target": "/home/alice",
                "Type": "volume",
                "VolumeOptions": {"NoCopy": True},
            }
        ],
        "NanoCpus": 4000000000,
        "NetworkMode": "hardened-spawner-users",
        "PidsLimit": 1024,
        "ReadonlyRootfs": True,
        "SecurityOpt": ["no-new-privileges:true"],
        "ShmSize": 1073741824,
        "Tmpfs": {"/tmp": "rw,nosuid,nodev,size=1073741824,mode=1777"},
    }


def test_default_spec_passes_the_guard(api):
    assert _guard(_api_config(api, build_server_spec(DECISION, PLACEMENT, {}, {}))) == []


def test_gpu_spec_passes_the_guard(api):
    config = _api_config(api, build_server_spec(GPU_DECISION, PLACEMENT, {}, {}))
    assert config["HostConfig"]["DeviceRequests"] == [
        {
            "Driver": "nvidia",
            "Count": 0,
            "DeviceIDs": ["GPU-aaaa", "MIG-bbbb"],
            "Capabilities": [["gpu"]],
            "Options": {},
        }
    ]
    assert _guard(config) == []


def test_host_path_workspace_passes_the_guard(api):
    placement = dataclasses.replace(
        PLACEMENT, workspace=WorkspaceMount("/srv/workspaces/alice", "/home/alice", host_path=True)
    )
    assert _guard(_api_config(api, build_server_spec(DECISION, placement, {}, {})), placement) == []


def test_the_log_config_comes_from_the_placement(api):
    placement = dataclasses.replace(PLACEMENT, log_config=log_config("local", 5 * 1024 * 1024, 2))
    config = _api_config(api, build_server_spec(DECISION, placement, {}, {}))
    assert config["HostConfig"]["LogConfig"] == {"Type": "local", "Config": {"max-size": "5242880", "max-file": "2"}}
    assert _guard(config) == []


def test_an_escape_hatch_replacing_the_log_cap_is_reported(api):
    spec = build_server_spec(DECISION, PLACEMENT, {}, {"log_config": {"config": {"max-size": "-1"}}})
    assert spec.overridden == ("extra_host_config['log_config']['config']['max-size']",)


def test_privileged_override_is_caught_by_the_guard(api):
    spec = build_server_spec(DECISION, PLACEMENT, {}, {"privileged": True})
    assert spec.overridden == ("extra_host_config['privileged']",)
    assert [v.check for v in _guard(_api_config(api, spec))] == ["privileged"]


@pytest.mark.parametrize(
    "extra_create, extra_host, checks",
    [
        ({"user": "0:0"}, {}, ["user"]),
        ({}, {"cap_drop": []}, ["cap-drop"]),
        ({}, {"read_only": False}, ["read-only-root"]),
        ({}, {"security_opt": ["seccomp=unconfined"]}, ["no-new-privileges", "seccomp-unconfined"]),
        ({}, {"pid_mode": "host", "network_mode": "host"}, ["host-namespace", "host-namespace"]),
        ({}, {"binds": {"/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"}}}, ["docker-socket"]),
        ({}, {"device_requests": [{"Driver": "nvidia", "Count": -1, "Capabilities": [["gpu"]]}]}, ["gpu-count"]),
        ({}, {"pids_limit": -1}, ["pids"]),
        # an escape hatch cannot uncap the log: another driver, or json-file's "unlimited"
        ({}, {"log_config": {"type": "syslog"}}, ["log-cap"]),
        ({}, {"log_config": {"config": {"max-size": "-1"}}}, ["log-cap"]),
        # docker-py reads the lower-case keys first: the spawner's cap stays
        ({}, {"log_config": {"Type": "json-file", "Config": {}}}, []),
        # adding is fine: a new label, a sysctl; so is another cap, or the local driver
        ({"labels": {"team": "ml"}}, {"sysctls": {"net.ipv4.ip_unprivileged_port_start": "0"}}, []),
        ({}, {"log_config": {"config": {"max-size": "50m", "compress": "true"}}}, []),
        ({}, {"log_config": {"type": "local"}}, []),
    ],
)
def test_escape_hatches_through_the_guard(api, extra_create, extra_host, checks):
    spec = build_server_spec(DECISION, PLACEMENT, extra_create, extra_host)
    assert [v.check for v in _guard(_api_config(api, spec))] == checks
