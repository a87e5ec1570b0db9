"""The guard on Docker: does a final container spec keep the policy?

It reads the spec in the Docker API's own shape (``Config`` and
``HostConfig``), which is both what the spawner is about to send to the
engine and what ``docker inspect`` returns. So one function refuses a bad
spawn before the container exists and audits running containers afterwards
(``hardened-spawner check``), and neither can drift from the other.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from ..core.identity import MIN_SAFE_UID
from ..core.violations import Violation
from .host_config import CAPPED_LOG_DRIVERS

#: Host paths that must never be mounted into a user's container: the host's
#: root, its configuration, kernel interfaces, devices, binaries, the engine's
#: own state and sockets (the Docker socket is root on the host).
SENSITIVE_HOST_PATHS = (
    "/etc",
    "/proc",
    "/sys",
    "/dev",
    "/boot",
    "/usr",
    "/lib",
    "/lib64",
    "/bin",
    "/sbin",
    "/root",
    "/run",
    "/var/run",
    "/var/lib/docker",
    "/var/lib/containerd",
)
_SOCKET_NAMES = ("docker.sock", "containerd.sock", "podman.sock", "crio.sock")


@dataclass(frozen=True)
class GuardPolicy:
    """What the guard allows beyond the fixed rules."""

    allowed_cap_add: frozenset[str] = frozenset()
    #: exact host paths the spawner itself bind-mounts read-only (the user's
    #: generated passwd/group files); any other bind of a sensitive path is refused
    allowed_bind_sources: frozenset[str] = field(default_factory=frozenset)
    require_healthcheck: bool = True


def _is_socket(path: str) -> bool:
    return path.rstrip("/").endswith(_SOCKET_NAMES)


def _is_sensitive(path: str) -> bool:
    path = posixpath.normpath("/" + path.strip("/"))
    if path == "/" or _is_socket(path):
        return True
    return any(path == p or path.startswith(p + "/") for p in SENSITIVE_HOST_PATHS)


def _host_mounts(host_config: dict) -> list[tuple[str, bool]]:
    """(host path, read-only) of every bind mount, from Binds and Mounts."""
    found = []
    for bind in host_config.get("Binds") or []:
        parts = bind.split(":")
        if parts[0].startswith("/"):  # "name:/dst" is a named volume
            found.append((parts[0], len(parts) > 2 and "ro" in parts[2].split(",")))
    for mount in host_config.get("Mounts") or []:
        if mount.get("Type") == "bind":
            found.append((mount.get("Source", ""), bool(mount.get("ReadOnly"))))
    return found


def _shared_propagation(host_config: dict) -> list[str]:
    """Destinations of bind mounts whose mount events would propagate back to the host."""
    found = []
    for bind in host_config.get("Binds") or []:
        parts = bind.split(":")
        if len(parts) > 2 and {"shared", "rshared"} & set(parts[2].split(",")):
            found.append(parts[1])
    for mount in host_config.get("Mounts") or []:
        propagation = (mount.get("BindOptions") or {}).get("Propagation", "")
        if propagation in ("shared", "rshared"):
            found.append(mount.get("Target", ""))
    return found


def _published_ports(host_config: dict) -> list[str]:
    """``host address:port->container port`` for each port published on the host."""
    found = []
    for container_port, bindings in sorted((host_config.get("PortBindings") or {}).items()):
        for binding in bindings or [{}]:
            host = f"{binding.get('HostIp') or '0.0.0.0'}:{binding.get('HostPort') or '(any)'}"
            found.append(f"{host}->{container_port}")
    return found


def _dedicated_ids(user: str) -> bool:
    """``UID:GID``, both numeric and above the system range. A bare UID or a
    name would leave the group (or the whole identity) to the image: often 0."""
    ids = user.split(":")
    return len(ids) == 2 and all(i.isdigit() and int(i) >= MIN_SAFE_UID for i in ids)


# --- the rules: one small function each, with its check ids and CIS items ------------


Judge = Callable[[dict, dict, GuardPolicy], Iterator[Violation]]


@dataclass(frozen=True)
class Rule:
    """One rule of the policy: what it reports (check ids), which items of the CIS Docker
    Benchmark each id fails, and the function that judges a spec."""

    checks: tuple[str, ...]
    cis: Mapping[str, tuple[str, ...]]
    judge: Judge
    #: for a rule whose CIS item depends on the spec (the host-namespace keys)
    cis_of: Callable[[Violation, dict], tuple[str, ...]] | None = None

    def cis_items(self, violation: Violation, host_config: dict) -> tuple[str, ...]:
        if self.cis_of is not None:
            return self.cis_of(violation, host_config)
        return tuple(self.cis.get(violation.check, ()))


#: every rule, in the order its violations are reported
RULES: list[Rule] = []


def rule(*checks: str, cis: Mapping[str, tuple[str, ...]] | None = None,
         cis_of: Callable[[Violation, dict], tuple[str, ...]] | None = None) -> Callable[[Judge], Judge]:
    def register(judge: Judge) -> Judge:
        RULES.append(Rule(checks, dict(cis or {}), judge, cis_of))
        return judge
    return register


def rule_for(check: str) -> Rule:
    """The rule that reports ``check``."""
    for found in RULES:
        if check in found.checks:
            return found
    raise KeyError(check)


@rule("privileged", cis={"privileged": ("5.5",)})
def _privileged(config, host_config, policy):
    if host_config.get("Privileged"):
        yield Violation(
            "privileged", "HostConfig.Privileged", "extra_host_config['privileged']",
            "The container would run privileged, with every capability and every host device",
            "remove 'privileged'; it is never allowed",
        )


#: HostConfig key -> (docker-py argument, the CIS item for sharing the host's namespace)
_NAMESPACES = {
    "NetworkMode": ("network_mode", "5.10"),
    "PidMode": ("pid_mode", "5.16"),
    "IpcMode": ("ipc_mode", "5.17"),
    "UTSMode": ("uts_mode", "5.21"),
    "UsernsMode": ("userns_mode", "5.31"),
}


def _namespace_cis(violation: Violation, host_config: dict) -> tuple[str, ...]:
    # sharing another container's namespace (not the host's) is none of the benchmark's items
    key = violation.key.removeprefix("HostConfig.")
    return (_NAMESPACES[key][1],) if host_config.get(key) == "host" else ()


@rule("host-namespace", cis={"host-namespace": tuple(cis for _, cis in _NAMESPACES.values())},
      cis_of=_namespace_cis)
def _host_namespaces(config, host_config, policy):
    for key, (kwarg, _) in _NAMESPACES.items():
        mode = host_config.get(key) or ""
        if mode == "host" or mode.startswith("container:"):
            yield Violation(
                "host-namespace", f"HostConfig.{key}", f"extra_host_config['{kwarg}']",
                f"The container would share {'the host' if mode == 'host' else 'another container'}'s "
                f"{kwarg.split('_')[0]} namespace ({mode!r})",
                f"remove '{kwarg}' so the container gets its own namespace",
            )


@rule("docker-socket", "sensitive-mount", cis={"docker-socket": ("5.32",), "sensitive-mount": ("5.6",)})
def _host_paths(config, host_config, policy):
    for source, read_only in _host_mounts(host_config):
        if source in policy.allowed_bind_sources and read_only:
            continue
        if _is_socket(source):
            yield Violation(
                "docker-socket", "HostConfig.Binds/Mounts", "volumes or extra_host_config",
                f"The engine socket {source} would be mounted; whoever holds it is root on the host",
                "remove that mount",
            )
        elif _is_sensitive(source):
            yield Violation(
                "sensitive-mount", "HostConfig.Binds/Mounts", "volumes or extra_host_config",
                f"The host path {source} would be mounted into a user's container",
                "mount a dedicated data directory instead of a system path",
            )


@rule("mount-propagation", cis={"mount-propagation": ("5.20",)})
def _mount_propagation(config, host_config, policy):
    propagating = _shared_propagation(host_config)
    if propagating:
        yield Violation(
            "mount-propagation", "HostConfig.Binds/Mounts", "volumes or extra_host_config",
            f"Mounts made inside the container would propagate to the host ({', '.join(propagating)}: "
            "shared propagation)",
            "remove the 'shared'/'rshared' mount option",
        )


@rule("volumes-from")
def _volumes_from(config, host_config, policy):
    if host_config.get("VolumesFrom"):
        yield Violation(
            "volumes-from", "HostConfig.VolumesFrom", "extra_host_config['volumes_from']",
            "Another container's volumes would be mounted, possibly another user's workspace",
            "remove 'volumes_from'",
        )


@rule("devices", cis={"devices": ("5.18",)})
def _devices(config, host_config, policy):
    if host_config.get("Devices"):
        yield Violation(
            "devices", "HostConfig.Devices", "extra_host_config['devices']",
            "Host devices would be mapped into the container",
            "remove 'devices'; GPUs are assigned by the spawner (gpu_* settings)",
        )


@rule("gpu-count")
def _gpu_count(config, host_config, policy):
    for request in host_config.get("DeviceRequests") or []:
        if request.get("Count") or not request.get("DeviceIDs"):
            yield Violation(
                "gpu-count", "HostConfig.DeviceRequests", "extra_host_config['device_requests']",
                "A GPU request by count or 'all' would hand out devices nobody assigned",
                "remove 'device_requests'; the spawner assigns explicit GPUs",
            )


@rule("published-ports", cis={"published-ports": ("5.8", "5.9", "5.14")})
def _published(config, host_config, policy):
    published = _published_ports(host_config)
    if published or host_config.get("PublishAllPorts"):
        yield Violation(
            "published-ports", "HostConfig.PortBindings", "extra_host_config['port_bindings']",
            "Ports would be published on the host ("
            + (", ".join(published) or "every exposed port")
            + "), reachable without the proxy's authentication and past the network isolation",
            "remove 'port_bindings' and 'publish_all_ports'; the proxy reaches servers on the users' network",
        )


@rule("default-bridge", cis={"default-bridge": ("5.30",)})
def _default_bridge(config, host_config, policy):
    if (host_config.get("NetworkMode") or "") in ("bridge", "default"):
        yield Violation(
            "default-bridge", "HostConfig.NetworkMode", "HardenedSpawner.network_name",
            "The container would run on Docker's default bridge, where nothing keeps users apart",
            "use the users' network the spawner manages (network_name)",
        )


@rule("cgroup-parent", cis={"cgroup-parent": ("5.25",)})
def _cgroup_parent(config, host_config, policy):
    if host_config.get("CgroupParent"):
        yield Violation(
            "cgroup-parent", "HostConfig.CgroupParent", "extra_host_config['cgroup_parent']",
            f"The container would be placed in the cgroup {host_config['CgroupParent']!r}, "
            "outside the engine's accounting of its limits",
            "remove 'cgroup_parent'",
        )


@rule("restart-policy", cis={"restart-policy": ("5.15",)})
def _restart_policy(config, host_config, policy):
    restart = host_config.get("RestartPolicy") or {}
    if restart.get("Name") in ("always", "unless-stopped") or (
        restart.get("Name") == "on-failure" and not 0 < (restart.get("MaximumRetryCount") or 0) <= 5
    ):
        yield Violation(
            "restart-policy", "HostConfig.RestartPolicy", "extra_host_config['restart_policy']",
            f"The engine would restart the server on its own ({restart.get('Name')}"
            + (f":{restart.get('MaximumRetryCount')}" if restart.get("Name") == "on-failure" else "")
            + "), behind the hub's back: a server the hub stopped, with GPUs it gave to someone else",
            "remove 'restart_policy'; the hub starts and stops servers",
        )


@rule("cap-drop", "cap-add", cis={"cap-drop": ("5.4",), "cap-add": ("5.4",)})
def _capabilities(config, host_config, policy):
    if "ALL" not in [c.upper() for c in host_config.get("CapDrop") or []]:
        yield Violation(
            "cap-drop", "HostConfig.CapDrop", "extra_host_config['cap_drop']",
            "Not all capabilities would be dropped",
            "keep cap_drop=['ALL']",
        )
    extra_caps = sorted(
        {c.upper().removeprefix("CAP_") for c in host_config.get("CapAdd") or []}
        - policy.allowed_cap_add
    )
    if extra_caps:
        yield Violation(
            "cap-add", "HostConfig.CapAdd", "HardenedSpawner.cap_add or extra_host_config['cap_add']",
            f"Capabilities outside the allowlist would be added: {', '.join(extra_caps)}",
            "add capabilities only through HardenedSpawner.cap_add, from its allowlist",
        )


@rule("group-add")
def _group_add(config, host_config, policy):
    if host_config.get("GroupAdd"):
        yield Violation(
            "group-add", "HostConfig.GroupAdd", "extra_host_config['group_add']",
            f"Supplementary groups would be added: {', '.join(map(str, host_config['GroupAdd']))}",
            "remove 'group_add'; each user has only their private group",
        )


@rule("user", cis={"user": ("4.1",)})
def _user(config, host_config, policy):
    user = config.get("User") or ""
    if not _dedicated_ids(user):
        yield Violation(
            "user", "Config.User", "extra_create_kwargs['user']",
            f"The server would run as {user or 'the image default user'!r}, "
            f"not as a dedicated UID:GID >= {MIN_SAFE_UID}",
            "do not override 'user'; the spawner sets the user's own UID:GID",
        )


@rule("allow-root")
def _allow_root(config, host_config, policy):
    if "--allow-root" in (config.get("Cmd") or []) + (config.get("Entrypoint") or []):
        yield Violation(
            "allow-root", "Config.Cmd", "HardenedSpawner.cmd / args",
            "The server command contains --allow-root",
            "remove --allow-root from cmd and args",
        )


@rule("read-only-root", cis={"read-only-root": ("5.13",)})
def _read_only_root(config, host_config, policy):
    if not host_config.get("ReadonlyRootfs"):
        yield Violation(
            "read-only-root", "HostConfig.ReadonlyRootfs", "extra_host_config['read_only']",
            "The root filesystem would be writable",
            "keep read_only=True; writable places are the workspace and the tmpfs mounts",
        )


def _security_options(host_config: dict) -> list[str]:
    return [o.replace(":", "=", 1) for o in host_config.get("SecurityOpt") or []]


@rule("no-new-privileges", cis={"no-new-privileges": ("5.26",)})
def _no_new_privileges(config, host_config, policy):
    nnp = [o for o in _security_options(host_config) if o.startswith("no-new-privileges")]
    # the engine applies options in order: the last no-new-privileges wins
    if not nnp or nnp[-1] not in ("no-new-privileges", "no-new-privileges=true"):
        yield Violation(
            "no-new-privileges", "HostConfig.SecurityOpt", "extra_host_config['security_opt']",
            "no-new-privileges is not set, so setuid programs could raise privileges",
            "keep 'no-new-privileges:true' in security_opt",
        )


_UNCONFINED = (
    ("seccomp=unconfined", "seccomp"),
    ("apparmor=unconfined", "AppArmor"),
    ("systempaths=unconfined", "masking of /proc and /sys paths"),
    ("label=disable", "SELinux labelling"),
)


@rule(*(option.split("=")[0] + "-unconfined" for option, _ in _UNCONFINED),
      cis={"seccomp-unconfined": ("5.22",), "apparmor-unconfined": ("5.2",), "label-unconfined": ("5.3",)})
def _unconfined(config, host_config, policy):
    opts = _security_options(host_config)
    for unconfined, what in _UNCONFINED:
        if unconfined in opts:
            yield Violation(
                unconfined.split("=")[0] + "-unconfined", "HostConfig.SecurityOpt",
                "extra_host_config['security_opt']",
                f"{what} would be switched off ({unconfined})",
                f"remove '{unconfined}'",
            )


@rule("memory", "oom-kill-disable", cis={"memory": ("5.11",)})
def _memory(config, host_config, policy):
    if not host_config.get("Memory"):
        yield Violation(
            "memory", "HostConfig.Memory", "HardenedSpawner.mem_limit",
            "No memory limit: one user could exhaust the host's memory",
            "set mem_limit",
        )
    if host_config.get("OomKillDisable"):
        yield Violation(
            "oom-kill-disable", "HostConfig.OomKillDisable", "extra_host_config['oom_kill_disable']",
            "The OOM killer would be disabled for this container",
            "remove 'oom_kill_disable'",
        )


@rule("cpu")
def _cpu(config, host_config, policy):
    if (host_config.get("NanoCpus") or 0) <= 0 and (host_config.get("CpuQuota") or 0) <= 0:
        yield Violation(
            "cpu", "HostConfig.NanoCpus", "HardenedSpawner.cpu_limit",
            "No CPU limit: one user could take every core",
            "set cpu_limit",
        )


@rule("pids", cis={"pids": ("5.29",)})
def _pids(config, host_config, policy):
    pids = host_config.get("PidsLimit")
    if not pids or pids < 0:
        yield Violation(
            "pids", "HostConfig.PidsLimit", "HardenedSpawner.pids_limit",
            "No process limit: a fork bomb could exhaust the host's process table",
            "set pids_limit",
        )


@rule("healthcheck", cis={"healthcheck": ("5.27",)})
def _healthcheck(config, host_config, policy):
    healthcheck = config.get("Healthcheck") or {}
    if policy.require_healthcheck and (not healthcheck.get("Test") or healthcheck["Test"] == ["NONE"]):
        yield Violation(
            "healthcheck", "Config.Healthcheck", "HardenedSpawner.healthcheck",
            "The container has no healthcheck",
            "keep the default healthcheck",
        )


def _positive_size(text) -> bool:
    """A log option's size or count as the engine reads it (``10485760``, ``10m``): a
    positive number. ``-1`` (json-file's "unlimited"), ``0`` (local's) and words are not."""
    digits = str(text).strip().lower().rstrip("b").rstrip("i").rstrip("kmgtp")
    try:
        return float(digits) > 0
    except ValueError:
        return False


_FILLS_DISK = ": one user's output could fill the host's disk"


def _log_cap_problem(log_config: dict) -> str:
    """What lets a container's log grow on the host without a cap (or keeps none the hub can
    read), or "" when nothing does."""
    driver = log_config.get("Type") or ""
    options = log_config.get("Config") or {}
    if not driver:
        return "No log driver is set, so the engine's default applies, which has no cap" + _FILLS_DISK
    if driver == "none":
        return ("The container would keep no log (driver 'none'): neither `docker logs` nor the hub "
                "(for a server that dies while starting) could read its output")
    if driver not in CAPPED_LOG_DRIVERS:
        return (f"The log driver {driver!r} keeps no per-container cap the engine enforces, nor a log "
                "`docker logs` and the hub can read" + _FILLS_DISK)
    # json-file keeps everything without max-size; local rotates at 20 MiB x 5 unless told otherwise
    if "max-size" not in options and driver == "json-file":
        return "The json-file log has no max-size, so it grows without a cap" + _FILLS_DISK
    for option in ("max-size", "max-file"):
        if option in options and not _positive_size(options[option]):
            return f"The {driver} log's {option} is {options[option]!r}, so it grows without a cap" + _FILLS_DISK
    return ""


@rule("log-cap")
def _log_cap(config, host_config, policy):
    problem = _log_cap_problem(host_config.get("LogConfig") or {})
    if problem:
        yield Violation(
            "log-cap", "HostConfig.LogConfig",
            "HardenedSpawner.container_log_* or extra_host_config['log_config']",
            problem,
            "keep the spawner's log_config (json-file or local with a positive max-size and max-file: "
            "container_log_driver, container_log_max_size, container_log_max_files)",
        )


def check_container(config: dict, host_config: dict, policy: GuardPolicy) -> list[Violation]:
    """Every way ``config``/``host_config`` break the policy; empty means allowed."""
    return [violation for found in RULES for violation in found.judge(config, host_config, policy)]
