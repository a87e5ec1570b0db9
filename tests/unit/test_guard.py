"""guard: a compliant spec passes; each way of breaking the policy is refused, exactly once,
with its own message. Specs are in the Docker API's shape (what `docker inspect` shows)."""

import copy

import pytest

from hardened_spawner.core.violations import Violation, describe
from hardened_spawner.docker.guard import GuardPolicy, check_container

IDENTITY_DIR = "/var/lib/docker/volumes/hardened-spawner-identity/_data/300001"
PASSWD = f"{IDENTITY_DIR}/passwd"
GROUP = f"{IDENTITY_DIR}/group"
POLICY = GuardPolicy(allowed_bind_sources=frozenset({PASSWD, GROUP}))

CONFIG = {
    "Hostname": "alice",
    "User": "300001:300001",
    "Env": ["HOME=/home/alice", "NVIDIA_VISIBLE_DEVICES=GPU-a"],
    "Cmd": ["jupyterhub-singleuser", "--port=8888"],
    "Entrypoint": None,
    "Image": "registry.example.org/singleuser:1.2",
    "WorkingDir": "/home/alice",
    "Labels": {"org.jupyter.hardened-spawner.managed": "true"},
    "Healthcheck": {
        "Test": ["CMD", "python3", "-c", "print()"],
        "Interval": 30_000_000_000,
        "Timeout": 10_000_000_000,
        "Retries": 3,
        "StartPeriod": 60_000_000_000,
    },
}
HOST_CONFIG = {
    "Binds": [f"{PASSWD}:/etc/passwd:ro", f"{GROUP}:/etc/group:ro"],
    "Mounts": [
        {
            "Type": "volume",
            "Source": "jupyterhub-workspace-alice",
            "Target": "/home/alice",
            "ReadOnly": False,
            "VolumeOptions": {"NoCopy": True},
        }
    ],
    "NetworkMode": "hardened-spawner-users",
    "PidMode": "",
    "IpcMode": "private",
    "UTSMode": "",
    "UsernsMode": "",
    "Privileged": False,
    "CapDrop": ["ALL"],
    "CapAdd": None,
    "GroupAdd": None,
    "ReadonlyRootfs": True,
    "SecurityOpt": ["no-new-privileges:true"],
    "Tmpfs": {"/tmp": "rw,nosuid,nodev,size=1073741824,mode=1777"},
    "ShmSize": 1073741824,
    "Memory": 8589934592,
    "MemorySwap": 8589934592,
    "NanoCpus": 4_000_000_000,
    "CpuQuota": 0,
    "PidsLimit": 1024,
    "OomKillDisable": False,
    "Devices": [],
    "DeviceRequests": [
        {"Driver": "nvidia", "Count": 0, "DeviceIDs": ["GPU-a"], "Capabilities": [["gpu"]], "Options": {}}
    ],
    "Init": True,
    "LogConfig": {"Type": "json-file", "Config": {"max-size": "10485760", "max-file": "3"}},
}


def _spec(config=None, host=None):
    c, h = copy.deepcopy(CONFIG), copy.deepcopy(HOST_CONFIG)
    c.update(config or {})
    h.update(host or {})
    return c, h


def _check(config=None, host=None, policy=POLICY):
    return check_container(*_spec(config, host), policy)


def test_compliant_spec_passes():
    assert _check() == []


def test_check_does_not_change_its_input():
    config, host = _spec({"User": "root"}, {"Privileged": True})
    before = copy.deepcopy((config, host))
    check_container(config, host, POLICY)
    assert (config, host) == before


# --- every refusal, one at a time ----------------------------------------

NS = "The container would share the host's {ns} namespace ('host') (HostConfig.{key}, set through extra_host_config['{kwarg}']). Fix: remove '{kwarg}' so the container gets its own namespace"
SOCKET = "The engine socket {} would be mounted; whoever holds it is root on the host (HostConfig.Binds/Mounts, set through volumes or extra_host_config). Fix: remove that mount"
SENSITIVE = "The host path {} would be mounted into a user's container (HostConfig.Binds/Mounts, set through volumes or extra_host_config). Fix: mount a dedicated data directory instead of a system path"
GPU_COUNT = "A GPU request by count or 'all' would hand out devices nobody assigned (HostConfig.DeviceRequests, set through extra_host_config['device_requests']). Fix: remove 'device_requests'; the spawner assigns explicit GPUs"
CAP_ADD = "Capabilities outside the allowlist would be added: {} (HostConfig.CapAdd, set through HardenedSpawner.cap_add or extra_host_config['cap_add']). Fix: add capabilities only through HardenedSpawner.cap_add, from its allowlist"
CAP_DROP = "Not all capabilities would be dropped (HostConfig.CapDrop, set through extra_host_config['cap_drop']). Fix: keep cap_drop=['ALL']"
USER = "The server would run as {!r}, not as a dedicated UID:GID >= 1000 (Config.User, set through extra_create_kwargs['user']). Fix: do not override 'user'; the spawner sets the user's own UID:GID"
ALLOW_ROOT = "The server command contains --allow-root (Config.Cmd, set through HardenedSpawner.cmd / args). Fix: remove --allow-root from cmd and args"
NNP = "no-new-privileges is not set, so setuid programs could raise privileges (HostConfig.SecurityOpt, set through extra_host_config['security_opt']). Fix: keep 'no-new-privileges:true' in security_opt"
CPU = "No CPU limit: one user could take every core (HostConfig.NanoCpus, set through HardenedSpawner.cpu_limit). Fix: set cpu_limit"
PIDS = "No process limit: a fork bomb could exhaust the host's process table (HostConfig.PidsLimit, set through HardenedSpawner.pids_limit). Fix: set pids_limit"
HEALTHCHECK = "The container has no healthcheck (Config.Healthcheck, set through HardenedSpawner.healthcheck). Fix: keep the default healthcheck"
MEMORY = "No memory limit: one user could exhaust the host's memory (HostConfig.Memory, set through HardenedSpawner.mem_limit). Fix: set mem_limit"
PRIVILEGED = "The container would run privileged, with every capability and every host device (HostConfig.Privileged, set through extra_host_config['privileged']). Fix: remove 'privileged'; it is never allowed"
PUBLISHED = "Ports would be published on the host ({}), reachable without the proxy's authentication and past the network isolation (HostConfig.PortBindings, set through extra_host_config['port_bindings']). Fix: remove 'port_bindings' and 'publish_all_ports'; the proxy reaches servers on the users' network"
DEFAULT_BRIDGE = "The container would run on Docker's default bridge, where nothing keeps users apart (HostConfig.NetworkMode, set through HardenedSpawner.network_name). Fix: use the users' network the spawner manages (network_name)"
CGROUP_PARENT = "The container would be placed in the cgroup '/custom', outside the engine's accounting of its limits (HostConfig.CgroupParent, set through extra_host_config['cgroup_parent']). Fix: remove 'cgroup_parent'"
RESTART = "The engine would restart the server on its own ({}), behind the hub's back: a server the hub stopped, with GPUs it gave to someone else (HostConfig.RestartPolicy, set through extra_host_config['restart_policy']). Fix: remove 'restart_policy'; the hub starts and stops servers"
PROPAGATION = "Mounts made inside the container would propagate to the host ({}: shared propagation) (HostConfig.Binds/Mounts, set through volumes or extra_host_config). Fix: remove the 'shared'/'rshared' mount option"
READ_ONLY = "The root filesystem would be writable (HostConfig.ReadonlyRootfs, set through extra_host_config['read_only']). Fix: keep read_only=True; writable places are the workspace and the tmpfs mounts"

LOG_CAP = "{} (HostConfig.LogConfig, set through HardenedSpawner.container_log_* or extra_host_config['log_config']). Fix: keep the spawner's log_config (json-file or local with a positive max-size and max-file: container_log_driver, container_log_max_size, container_log_max_files)"
FILLS = ": one user's output could fill the host's disk"
NO_MAX_SIZE = "The json-file log has no max-size, so it grows without a cap"
NO_DRIVER = "No log driver is set, so the engine's default applies, which has no cap"
OTHER_DRIVER = "The log driver {!r} keeps no per-container cap the engine enforces, nor a log `docker logs` and the hub can read"


def _bind(source, read_only=False):
    return {"Type": "bind", "Source": source, "Target": "/mnt/x", "ReadOnly": read_only}


REFUSALS = {
    "privileged": ({}, {"Privileged": True}, [("privileged", PRIVILEGED)]),
    "published-port": (
        {}, {"PortBindings": {"8888/tcp": [{"HostIp": "", "HostPort": "8888"}]}},
        [("published-ports", PUBLISHED.format("0.0.0.0:8888->8888/tcp"))],
    ),
    "published-port-any-host-port": (
        {}, {"PortBindings": {"8888/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}], "6006/tcp": None}},
        [("published-ports", PUBLISHED.format("0.0.0.0:(any)->6006/tcp, 127.0.0.1:(any)->8888/tcp"))],
    ),
    "publish-all": ({}, {"PublishAllPorts": True}, [("published-ports", PUBLISHED.format("every exposed port"))]),
    "default-bridge": ({}, {"NetworkMode": "bridge"}, [("default-bridge", DEFAULT_BRIDGE)]),
    "default-network-mode": ({}, {"NetworkMode": "default"}, [("default-bridge", DEFAULT_BRIDGE)]),
    "cgroup-parent": ({}, {"CgroupParent": "/custom"}, [("cgroup-parent", CGROUP_PARENT)]),
    "restart-always": ({}, {"RestartPolicy": {"Name": "always"}}, [("restart-policy", RESTART.format("always"))]),
    "restart-unless-stopped": (
        {}, {"RestartPolicy": {"Name": "unless-stopped", "MaximumRetryCount": 0}},
        [("restart-policy", RESTART.format("unless-stopped"))],
    ),
    "restart-on-failure-forever": (
        {}, {"RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 0}},
        [("restart-policy", RESTART.format("on-failure:0"))],
    ),
    "restart-on-failure-10": (
        {}, {"RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 10}},
        [("restart-policy", RESTART.format("on-failure:10"))],
    ),
    "shared-propagation-bind": (
        {}, {"Binds": ["/srv/data:/data:rw,rshared"]}, [("mount-propagation", PROPAGATION.format("/data"))],
    ),
    "shared-propagation-mount": (
        {}, {"Mounts": [{**_bind("/srv/data"), "BindOptions": {"Propagation": "shared"}}]},
        [("mount-propagation", PROPAGATION.format("/mnt/x"))],
    ),
    **{
        f"{key}=host": (
            {},
            {key: "host"},
            [("host-namespace", NS.format(ns=kwarg.split("_")[0], key=key, kwarg=kwarg))],
        )
        for key, kwarg in (
            ("NetworkMode", "network_mode"),
            ("PidMode", "pid_mode"),
            ("IpcMode", "ipc_mode"),
            ("UTSMode", "uts_mode"),
            ("UsernsMode", "userns_mode"),
        )
    },
    # docker socket, through Binds and Mounts, read-write or read-only
    "socket-bind": (
        {},
        {"Binds": ["/var/run/docker.sock:/var/run/docker.sock"]},
        [("docker-socket", SOCKET.format("/var/run/docker.sock"))],
    ),
    "socket-bind-ro": (
        {},
        {"Binds": ["/var/run/docker.sock:/var/run/docker.sock:ro"]},
        [("docker-socket", SOCKET.format("/var/run/docker.sock"))],
    ),
    "socket-mount": (
        {},
        {"Mounts": [_bind("/var/run/docker.sock")]},
        [("docker-socket", SOCKET.format("/var/run/docker.sock"))],
    ),
    "socket-mount-run": (
        {},
        {"Mounts": [_bind("/run/docker.sock", read_only=True)]},
        [("docker-socket", SOCKET.format("/run/docker.sock"))],
    ),
    "socket-containerd": (
        {},
        {"Binds": ["/run/containerd/containerd.sock:/c.sock"]},
        [("docker-socket", SOCKET.format("/run/containerd/containerd.sock"))],
    ),
    "socket-outside-run": (
        {},
        {"Binds": ["/srv/sockets/docker.sock:/d.sock"]},
        [("docker-socket", SOCKET.format("/srv/sockets/docker.sock"))],
    ),
    # sensitive host paths, as Binds and as Mounts, even read-only
    **{
        f"sensitive-bind:{path}": (
            {},
            {"Binds": [f"{path}:/host:ro"]},
            [("sensitive-mount", SENSITIVE.format(path))],
        )
        for path in ("/", "/etc", "/proc", "/sys", "/dev", "/boot", "/usr", "/lib", "/var/lib/docker")
    },
    **{
        f"sensitive-mount:{path}": (
            {},
            {"Mounts": [_bind(path, read_only=True)]},
            [("sensitive-mount", SENSITIVE.format(path))],
        )
        for path in ("/", "/etc", "/proc", "/sys", "/dev", "/boot", "/usr", "/lib", "/var/lib/docker")
    },
    "sensitive-subdir": (
        {},
        {"Binds": ["/etc/ssl/private:/certs"]},
        [("sensitive-mount", SENSITIVE.format("/etc/ssl/private"))],
    ),
    "sensitive-trailing-slash": (
        {},
        {"Mounts": [_bind("/etc/")]},
        [("sensitive-mount", SENSITIVE.format("/etc/"))],
    ),
    "other-users-volume": (
        {},
        {"Binds": ["/var/lib/docker/volumes/jupyterhub-workspace-bob/_data:/bob"]},
        [("sensitive-mount", SENSITIVE.format("/var/lib/docker/volumes/jupyterhub-workspace-bob/_data"))],
    ),
    # the spawner's own identity files: allowed read-only, refused read-write
    "identity-file-rw-bind": (
        {},
        {"Binds": [f"{PASSWD}:/etc/passwd:rw", f"{GROUP}:/etc/group:ro"]},
        [("sensitive-mount", SENSITIVE.format(PASSWD))],
    ),
    "identity-file-no-mode": (
        {},
        {"Binds": [f"{PASSWD}:/etc/passwd", f"{GROUP}:/etc/group:ro"]},
        [("sensitive-mount", SENSITIVE.format(PASSWD))],
    ),
    "identity-file-rw-mount": (
        {},
        {"Binds": [], "Mounts": [_bind(GROUP, read_only=False)]},
        [("sensitive-mount", SENSITIVE.format(GROUP))],
    ),
    "devices": (
        {},
        {"Devices": [{"PathOnHost": "/dev/nvidia0", "PathInContainer": "/dev/nvidia0", "CgroupPermissions": "rwm"}]},
        [("devices", "Host devices would be mapped into the container (HostConfig.Devices, set through extra_host_config['devices']). Fix: remove 'devices'; GPUs are assigned by the spawner (gpu_* settings)")],
    ),
    "gpus-all": (
        {},
        {"DeviceRequests": [{"Driver": "nvidia", "Count": -1, "DeviceIDs": None, "Capabilities": [["gpu"]]}]},
        [("gpu-count", GPU_COUNT)],
    ),
    "gpus-count-1": (
        {},
        {"DeviceRequests": [{"Driver": "nvidia", "Count": 1, "DeviceIDs": None, "Capabilities": [["gpu"]]}]},
        [("gpu-count", GPU_COUNT)],
    ),
    "gpus-count-and-ids": (
        {},
        {"DeviceRequests": [{"Driver": "nvidia", "Count": 1, "DeviceIDs": ["GPU-a"], "Capabilities": [["gpu"]]}]},
        [("gpu-count", GPU_COUNT)],
    ),
    "gpus-empty-ids": (
        {},
        {"DeviceRequests": [{"Driver": "nvidia", "Count": 0, "DeviceIDs": [], "Capabilities": [["gpu"]]}]},
        [("gpu-count", GPU_COUNT)],
    ),
    "cap-drop-missing": ({}, {"CapDrop": None}, [("cap-drop", CAP_DROP)]),
    "cap-drop-partial": ({}, {"CapDrop": ["NET_RAW", "SYS_ADMIN"]}, [("cap-drop", CAP_DROP)]),
    "cap-add-sys-admin": ({}, {"CapAdd": ["SYS_ADMIN"]}, [("cap-add", CAP_ADD.format("SYS_ADMIN"))]),
    "cap-add-prefixed": (
        {},
        {"CapAdd": ["cap_sys_admin", "NET_RAW"]},
        [("cap-add", CAP_ADD.format("NET_RAW, SYS_ADMIN"))],
    ),
    "cap-add-all": ({}, {"CapAdd": ["ALL"]}, [("cap-add", CAP_ADD.format("ALL"))]),
    "cap-add-not-in-policy": ({}, {"CapAdd": ["KILL"]}, [("cap-add", CAP_ADD.format("KILL"))]),
    "group-add": (
        {},
        {"GroupAdd": ["0", "docker"]},
        [("group-add", "Supplementary groups would be added: 0, docker (HostConfig.GroupAdd, set through extra_host_config['group_add']). Fix: remove 'group_add'; each user has only their private group")],
    ),
    "user-empty": ({"User": ""}, {}, [("user", USER.format("the image default user"))]),
    "user-missing": ({"User": None}, {}, [("user", USER.format("the image default user"))]),
    **{
        f"user-{user}": ({"User": user}, {}, [("user", USER.format(user))])
        for user in ("root", "0", "0:0", "999:999", "jovyan", "jovyan:users", "-1")
    },
    "allow-root-cmd": (
        {"Cmd": ["jupyterhub-singleuser", "--allow-root"]},
        {},
        [("allow-root", ALLOW_ROOT)],
    ),
    "allow-root-entrypoint": (
        {"Entrypoint": ["tini", "--", "start.sh", "--allow-root"]},
        {},
        [("allow-root", ALLOW_ROOT)],
    ),
    "read-only-false": ({}, {"ReadonlyRootfs": False}, [("read-only-root", READ_ONLY)]),
    "read-only-missing": ({}, {"ReadonlyRootfs": None}, [("read-only-root", READ_ONLY)]),
    "nnp-missing": ({}, {"SecurityOpt": None}, [("no-new-privileges", NNP)]),
    "nnp-false": ({}, {"SecurityOpt": ["no-new-privileges:false"]}, [("no-new-privileges", NNP)]),
    "seccomp=unconfined": (
        {},
        {"SecurityOpt": ["no-new-privileges:true", "seccomp=unconfined"]},
        [("seccomp-unconfined", "seccomp would be switched off (seccomp=unconfined) (HostConfig.SecurityOpt, set through extra_host_config['security_opt']). Fix: remove 'seccomp=unconfined'")],
    ),
    "seccomp:unconfined": (
        {},
        {"SecurityOpt": ["no-new-privileges:true", "seccomp:unconfined"]},
        [("seccomp-unconfined", "seccomp would be switched off (seccomp=unconfined) (HostConfig.SecurityOpt, set through extra_host_config['security_opt']). Fix: remove 'seccomp=unconfined'")],
    ),
    "apparmor=unconfined": (
        {},
        {"SecurityOpt": ["no-new-privileges:true", "apparmor=unconfined"]},
        [("apparmor-unconfined", "AppArmor would be switched off (apparmor=unconfined) (HostConfig.SecurityOpt, set through extra_host_config['security_opt']). Fix: remove 'apparmor=unconfined'")],
    ),
    "memory-0": ({}, {"Memory": 0}, [("memory", MEMORY)]),
    "memory-missing": ({}, {"Memory": None}, [("memory", MEMORY)]),
    "oom-kill-disable": (
        {},
        {"OomKillDisable": True},
        [("oom-kill-disable", "The OOM killer would be disabled for this container (HostConfig.OomKillDisable, set through extra_host_config['oom_kill_disable']). Fix: remove 'oom_kill_disable'")],
    ),
    "cpu-missing": ({}, {"NanoCpus": 0, "CpuQuota": 0}, [("cpu", CPU)]),
    "cpu-none": ({}, {"NanoCpus": None, "CpuQuota": None}, [("cpu", CPU)]),
    "pids-0": ({}, {"PidsLimit": 0}, [("pids", PIDS)]),
    "pids--1": ({}, {"PidsLimit": -1}, [("pids", PIDS)]),
    "pids-none": ({}, {"PidsLimit": None}, [("pids", PIDS)]),
    "healthcheck-missing": ({"Healthcheck": None}, {}, [("healthcheck", HEALTHCHECK)]),
    "healthcheck-empty": ({"Healthcheck": {}}, {}, [("healthcheck", HEALTHCHECK)]),
    "healthcheck-none": ({"Healthcheck": {"Test": ["NONE"]}}, {}, [("healthcheck", HEALTHCHECK)]),
    # container logs: the engine's default json-file keeps everything (issue 28)
    "log-engine-default": ({}, {"LogConfig": {"Type": "json-file", "Config": {}}},
                           [("log-cap", LOG_CAP.format(NO_MAX_SIZE + FILLS))]),
    "log-missing": ({}, {"LogConfig": None}, [("log-cap", LOG_CAP.format(NO_DRIVER + FILLS))]),
    "log-json-unlimited": ({}, {"LogConfig": {"Type": "json-file", "Config": {"max-size": "-1"}}},
                           [("log-cap", LOG_CAP.format("The json-file log's max-size is '-1', so it grows without a cap" + FILLS))]),
    "log-local-unlimited": ({}, {"LogConfig": {"Type": "local", "Config": {"max-size": "0"}}},
                            [("log-cap", LOG_CAP.format("The local log's max-size is '0', so it grows without a cap" + FILLS))]),
    "log-max-file-0": ({}, {"LogConfig": {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "0"}}},
                       [("log-cap", LOG_CAP.format("The json-file log's max-file is '0', so it grows without a cap" + FILLS))]),
    "log-syslog": ({}, {"LogConfig": {"Type": "syslog", "Config": {}}},
                   [("log-cap", LOG_CAP.format(OTHER_DRIVER.format("syslog") + FILLS))]),
    "log-journald": ({}, {"LogConfig": {"Type": "journald", "Config": {"max-size": "10m"}}},
                     [("log-cap", LOG_CAP.format(OTHER_DRIVER.format("journald") + FILLS))]),
    "log-none": ({}, {"LogConfig": {"Type": "none", "Config": {}}}, [("log-cap", LOG_CAP.format(
        "The container would keep no log (driver 'none'): neither `docker logs` nor the hub (for a server that "
        "dies while starting) could read its output"))]),
}


@pytest.mark.parametrize("config, host, expected", REFUSALS.values(), ids=REFUSALS.keys())
def test_refusal(config, host, expected):
    violations = _check(config, host)
    assert [(v.check, str(v)) for v in violations] == expected


@pytest.mark.parametrize(
    "key, kwarg",
    [("PidMode", "pid_mode"), ("NetworkMode", "network_mode"), ("IpcMode", "ipc_mode")],
)
def test_sharing_another_containers_namespace_is_refused(key, kwarg):
    violations = _check(host={key: "container:hub"})
    assert [(v.check, v.key, v.setting) for v in violations] == [
        ("host-namespace", f"HostConfig.{key}", f"extra_host_config['{kwarg}']")
    ]


def test_sharing_another_containers_namespace_message():
    (violation,) = _check(host={"PidMode": "container:x"})
    assert str(violation) == (
        "The container would share another container's pid namespace ('container:x') "
        "(HostConfig.PidMode, set through extra_host_config['pid_mode']). "
        "Fix: remove 'pid_mode' so the container gets its own namespace"
    )


# --- what is allowed ---------------------------------------------------------

ALLOWED = {
    "named-volume-bind": ({}, {"Binds": ["vol:/data", "vol2:/data2:ro"]}),
    "data-dir-rw": ({}, {"Binds": ["/srv/data/alice:/data:rw"], "Mounts": [_bind("/srv/shared")]}),
    "path-only-looks-sensitive": ({}, {"Binds": ["/etcetera:/x", "/srv/etc:/y", "/usrdata:/z"]}),
    "identity-files-as-mounts-ro": (
        {},
        {"Binds": [], "Mounts": [_bind(PASSWD, read_only=True), _bind(GROUP, read_only=True)]},
    ),
    "identity-files-ro-with-options": ({}, {"Binds": [f"{PASSWD}:/etc/passwd:z,ro"]}),
    "no-mounts-at-all": ({}, {"Binds": None, "Mounts": None}),
    "explicit-gpu-ids": (
        {},
        {"DeviceRequests": [{"Driver": "nvidia", "Count": 0, "DeviceIDs": ["GPU-a", "GPU-b"], "Capabilities": [["gpu"]]}]},
    ),
    "explicit-gpu-ids-without-count": ({}, {"DeviceRequests": [{"DeviceIDs": ["GPU-a"]}]}),
    "no-gpus": ({}, {"DeviceRequests": None}),
    "cap-drop-lower-case": ({}, {"CapDrop": ["all"]}),
    "no-new-privileges-bare": ({}, {"SecurityOpt": ["no-new-privileges"]}),
    "no-new-privileges-equals": ({}, {"SecurityOpt": ["no-new-privileges=true"]}),
    "custom-seccomp-and-apparmor": (
        {},
        {"SecurityOpt": ["no-new-privileges:true", 'seccomp={"defaultAction":"SCMP_ACT_ERRNO"}', "apparmor=docker-default"]},
    ),
    "cpu-quota-alone": ({}, {"NanoCpus": 0, "CpuQuota": 200000, "CpuPeriod": 100000}),
    "user-1000": ({"User": "1000:1000"}, {}),
    "no-network": ({}, {"NetworkMode": "none"}),
    "restart-no": ({}, {"RestartPolicy": {"Name": "no", "MaximumRetryCount": 0}}),
    "restart-empty": ({}, {"RestartPolicy": {"Name": "", "MaximumRetryCount": 0}}),
    "restart-on-failure-3": ({}, {"RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 3}}),
    "private-propagation": (
        {}, {"Binds": ["/srv/data:/data:rw,rprivate"],
             "Mounts": [{**_bind("/srv/x"), "BindOptions": {"Propagation": "rslave"}}]},
    ),
    "exposed-not-published": ({}, {"PortBindings": {}}),
    "private-namespaces": ({}, {"IpcMode": "private", "PidMode": "", "UsernsMode": ""}),
    "shareable-ipc": ({}, {"IpcMode": "shareable"}),
    "log-json-file-human-size": ({}, {"LogConfig": {"Type": "json-file", "Config": {"max-size": "10m"}}}),
    "log-json-file-compressed": (
        {}, {"LogConfig": {"Type": "json-file", "Config": {"max-size": "1g", "max-file": "5", "compress": "true"}}},
    ),
    # the local driver rotates at 20 MiB and keeps 5 files when told nothing
    "log-local-defaults": ({}, {"LogConfig": {"Type": "local", "Config": {}}}),
    "log-local-capped": ({}, {"LogConfig": {"Type": "local", "Config": {"max-size": "5242880", "max-file": "2"}}}),
}


@pytest.mark.parametrize("config, host", ALLOWED.values(), ids=ALLOWED.keys())
def test_allowed(config, host):
    assert _check(config, host) == []


@pytest.mark.parametrize("cap_add", [["KILL"], ["cap_kill"], ["CAP_KILL", "NET_BIND_SERVICE"]])
def test_cap_add_allowed_by_policy(cap_add):
    policy = GuardPolicy(
        allowed_cap_add=frozenset({"KILL", "NET_BIND_SERVICE"}),
        allowed_bind_sources=POLICY.allowed_bind_sources,
    )
    assert _check(host={"CapAdd": cap_add}, policy=policy) == []


def test_cap_add_policy_does_not_allow_others():
    policy = GuardPolicy(allowed_cap_add=frozenset({"KILL"}), allowed_bind_sources=POLICY.allowed_bind_sources)
    violations = _check(host={"CapAdd": ["KILL", "SYS_ADMIN"]}, policy=policy)
    assert [(v.check, str(v)) for v in violations] == [("cap-add", CAP_ADD.format("SYS_ADMIN"))]


def test_identity_files_need_the_policy():
    # without allowed_bind_sources, the spawner's own binds are sensitive paths like any other
    violations = _check(policy=GuardPolicy())
    assert [(v.check, str(v)) for v in violations] == [
        ("sensitive-mount", SENSITIVE.format(PASSWD)),
        ("sensitive-mount", SENSITIVE.format(GROUP)),
    ]


@pytest.mark.parametrize("healthcheck", [None, {}, {"Test": ["NONE"]}])
def test_healthcheck_not_required(healthcheck):
    policy = GuardPolicy(allowed_bind_sources=POLICY.allowed_bind_sources, require_healthcheck=False)
    assert _check({"Healthcheck": healthcheck}, policy=policy) == []


# --- several at once, and the message ----------------------------------------


def test_empty_spec_breaks_every_default_free_rule_in_order():
    assert [v.check for v in check_container({}, {}, GuardPolicy())] == [
        "cap-drop",
        "user",
        "read-only-root",
        "no-new-privileges",
        "memory",
        "cpu",
        "pids",
        "healthcheck",
        "log-cap",
    ]


def test_many_violations_in_a_fixed_order():
    violations = _check(
        {"User": "0:0", "Cmd": ["start.sh", "--allow-root"]},
        {
            "Privileged": True,
            "PidMode": "host",
            "Binds": ["/var/run/docker.sock:/var/run/docker.sock", "/etc:/host-etc"],
            "CapAdd": ["SYS_ADMIN"],
            "SecurityOpt": ["seccomp=unconfined"],
            "PidsLimit": -1,
        },
    )
    assert [v.check for v in violations] == [
        "privileged",
        "host-namespace",
        "docker-socket",
        "sensitive-mount",
        "cap-add",
        "user",
        "allow-root",
        "no-new-privileges",
        "seccomp-unconfined",
        "pids",
    ]


def test_violation_fields_and_str():
    violation = Violation("memory", "HostConfig.Memory", "HardenedSpawner.mem_limit", "No limit", "set it")
    assert str(violation) == "No limit (HostConfig.Memory, set through HardenedSpawner.mem_limit). Fix: set it"


def test_describe_two_violations():
    violations = _check(host={"Privileged": True, "Memory": 0})
    assert describe(violations) == (
        "The server was not started because its container would break the security policy:\n"
        "- The container would run privileged, with every capability and every host device "
        "(HostConfig.Privileged, set through extra_host_config['privileged']). "
        "Fix: remove 'privileged'; it is never allowed\n"
        "- No memory limit: one user could exhaust the host's memory "
        "(HostConfig.Memory, set through HardenedSpawner.mem_limit). Fix: set mem_limit"
    )


# --- bugs: specs the guard lets through although they break its policy ---------


@pytest.mark.parametrize(
    "host",
    [
        {"Binds": ["/srv/../etc:/host-etc"]},
        {"Mounts": [_bind("/srv/data/../../")]},
        {"Binds": ["/home/alice/../../var/lib/docker:/d:ro"]},
    ],
    ids=["bind-etc", "mount-root", "bind-docker-state"],
)
def test_dot_dot_does_not_hide_a_sensitive_path(host):
    assert [v.check for v in _check(host=host)] == ["sensitive-mount"]


@pytest.mark.parametrize("user", ["300001:0", "300001"])
def test_root_group_is_refused(user):
    assert [v.check for v in _check({"User": user})] == ["user"]


def test_later_no_new_privileges_false_wins():
    host = {"SecurityOpt": ["no-new-privileges:true", "no-new-privileges:false"]}
    assert [v.check for v in _check(host=host)] == ["no-new-privileges"]


def test_negative_cpu_quota_is_no_limit():
    assert [v.check for v in _check(host={"NanoCpus": 0, "CpuQuota": -1})] == ["cpu"]
