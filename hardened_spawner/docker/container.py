"""Render a server's decision (`core.decision`) as a Docker container spec (no Docker, no
traitlets).

The spawner decides identity, workspace, GPUs and environment first (`core.decision.decide`),
adds where the server runs on this engine (`DockerPlacement`), then calls
`build_server_spec` once. The admin's ``extra_create_kwargs``
and ``extra_host_config`` are merged last, every hardening key they replace is
reported (the spawner logs each), and the guard then judges the merged result:
an escape hatch can add, but never silently weaken.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from .. import labels
from ..core.decision import ServerDecision
from .host_config import log_config, render_healthcheck, render_host_config


@dataclass(frozen=True)
class ServerSpec:
    """Keyword arguments for docker-py's ``create_container_config`` / ``create_host_config``."""

    create: dict
    host: dict
    overridden: tuple[str, ...] = ()  # "extra_host_config['privileged']", ...


@dataclass(frozen=True)
class WorkspaceMount:
    source: str  # volume name, or host path when `host_path`
    target: str
    host_path: bool = False
    quota: int | None = None  # bytes the storage holds the workspace to; None: no quota enforced

    def as_mount(self) -> dict:
        """A Docker API mount. Volumes get ``NoCopy``: see `workspace`."""
        if self.host_path:
            return {"Type": "bind", "Source": self.source, "Target": self.target, "ReadOnly": False}
        return {
            "Type": "volume",
            "Source": self.source,
            "Target": self.target,
            "ReadOnly": False,
            "VolumeOptions": {"NoCopy": True},
        }


@dataclass(frozen=True)
class DockerPlacement:
    """Where a decided server runs on this engine: what only Docker needs to know."""

    workspace: WorkspaceMount
    identity_files: dict[str, str]  # host path -> container path, bound read-only
    network_name: str
    version: str
    extra_binds: dict = field(default_factory=dict)  # DockerSpawner's `volumes`, rendered
    hub_id: str = ""  # which hub database started it (`labels.HUB`); "" outside a hub
    #: the container log's driver and cap (`host_config.log_config`; the Docker settings'
    #: `container_log_config()`): never left to the engine's default, which has no cap
    log_config: dict = field(default_factory=log_config)


def server_labels(decision: ServerDecision, placement: DockerPlacement) -> dict[str, str]:
    gpus = decision.gpus
    return {
        labels.MANAGED: "true",
        labels.ROLE: labels.ROLE_SERVER,
        labels.OWNER: decision.owner,
        labels.SERVER_NAME: decision.server_name,
        labels.UID: str(decision.identity.uid),
        labels.GID: str(decision.identity.gid),
        labels.VERSION: placement.version,
        labels.POLICY: decision.profile.fingerprint(),
        labels.GPUS: ",".join(gpus.devices),
        labels.GPUS_SINCE: gpus.since if gpus.devices else "",
        **({labels.HUB: placement.hub_id} if placement.hub_id else {}),
    }


def gpu_device_requests(gpu_uuids: tuple[str, ...]) -> list[dict]:
    """An explicit device list: never a count (the engine turns a count of N
    into devices 0..N-1 for everyone) and never 'all'."""
    if not gpu_uuids:
        return []
    return [{"Driver": "nvidia", "DeviceIDs": list(gpu_uuids), "Capabilities": [["gpu"]]}]


def merge_overrides(base: dict, extra: dict, setting: str) -> tuple[dict, list[str]]:
    """Deep-merge ``extra`` over ``base``; name every existing key it replaces."""
    merged = copy.deepcopy(base)
    replaced: list[str] = []

    def merge(dest: dict, src: dict, path: str) -> None:
        for key, value in src.items():
            where = f"{path}[{key!r}]"
            if isinstance(value, dict) and isinstance(dest.get(key), dict):
                merge(dest[key], value, where)
                continue
            if key in dest and dest[key] != value:
                replaced.append(where)
            dest[key] = copy.deepcopy(value)

    merge(merged, extra or {}, setting)
    return merged, replaced


def build_server_spec(
    decision: ServerDecision, placement: DockerPlacement, extra_create_kwargs: dict, extra_host_config: dict
) -> ServerSpec:
    ident = decision.identity
    create = {
        "image": decision.image,
        "command": list(decision.command),
        "user": ident.user_spec,
        "environment": dict(decision.environment),
        "working_dir": ident.home,
        "labels": server_labels(decision, placement),
        "ports": {f"{decision.port}/tcp": None},
        "healthcheck": render_healthcheck(decision.profile),
        "hostname": ident.name,
    }
    binds = dict(placement.extra_binds)
    for host_path, container_path in placement.identity_files.items():
        binds[host_path] = {"bind": container_path, "mode": "ro"}
    host = {
        **render_host_config(decision.profile),
        "binds": binds,
        "mounts": [placement.workspace.as_mount()],
        "device_requests": gpu_device_requests(decision.gpus.devices),
        "network_mode": placement.network_name,
        "log_config": placement.log_config,
        "init": True,  # reap the kernels' zombie children, forward signals
    }
    create, replaced_create = merge_overrides(create, extra_create_kwargs, "extra_create_kwargs")
    host, replaced_host = merge_overrides(host, extra_host_config, "extra_host_config")
    return ServerSpec(create, host, tuple(replaced_create + replaced_host))
