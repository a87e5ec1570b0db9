"""The settings only the Docker backend carries out: the workspace volume, the engine's
seccomp/AppArmor options and healthcheck, the engine client's threads, and the users'
Docker network with its firewall.

`DockerSettings` is a mixin of `HardenedSpawner`, before `HardenedSettings` (the settings
both backends share); config is still ``c.HardenedSpawner.<name>``.
"""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from traitlets import Bool, Dict, HasTraits, Integer, List, TraitError, Unicode, default, validate

from ..core.egress import parse_addresses
from ..core.profile import SecurityProfile
from ..quota_settings import Size
from ..settings import _network_setting
from .host_config import CAPPED_LOG_DRIVERS, LOG_DRIVER, LOG_MAX_FILES, LOG_MAX_SIZE, log_config, server_healthcheck
from .isolation.docker_network import check_bridge_name

if TYPE_CHECKING:
    from .hub_context import EngineFacts

#: DockerSpawner settings the hardened container spec does not carry out, each with the test
#: for a value that would be ignored and what to do instead: refused at hub start, so none
#: is ever dropped silently. (Its `volumes`, `read_only_volumes`, `extra_create_kwargs`,
#: `extra_host_config` and `post_start_cmd` are honoured, and the first four are judged by
#: the guard.)
UNSUPPORTED_DOCKERSPAWNER = {
    "links": (bool, "legacy links join a server to containers outside the users' network. "
                    "Remove it; servers reach other services through the network "
                    "(HardenedSpawner.egress_allow_cidrs)."),
    "mounts": (bool, "use DockerSpawner.volumes (and read_only_volumes) instead, which the "
                     "guard checks like every other mount."),
    "use_internal_ip": (lambda value: not value,
                        "servers are reached at their address on the users' network; a "
                        "published port (what False would need) is refused by the guard. "
                        "Remove the setting."),
}


class DockerSettings(HasTraits):
    """The settings of `HardenedSpawner` that only Docker carries out (module docstring)."""

    if TYPE_CHECKING:  # DockerSpawner's and HardenedSettings' traits read below
        network_name: str
        http_timeout: int
        cpu_limit: float
        log: Any

        def base_profile(self) -> SecurityProfile: ...

    # --- workspace ------------------------------------------------------

    workspace_volume_name = Unicode(
        "jupyterhub-workspace-{username}",
        help="""Name of each user's persistent workspace volume (DockerSpawner templates:
        `{username}`, `{raw_username}`...). It is created if missing, owned by the
        user's UID:GID with mode 0700 before the server starts, and never deleted.""",
    ).tag(config=True)

    workspace_host_path = Unicode(
        "",
        help="""If set, a host directory template used as the workspace instead of a named
        volume (e.g. `/srv/workspaces/{username}`); it is created and prepared the same way.""",
    ).tag(config=True)

    workspace_btrfs_root = Unicode(
        "",
        help="""A directory on a btrfs filesystem with quotas on (`btrfs quota enable`), at the
        same path for the Docker engine and the hub, in which each workspace becomes a
        subvolume `<root>/<volume name>` limited to the user's `workspace_quota` by a qgroup;
        its Docker volume is a bind of that subvolume. The hub runs `btrfs` (btrfs-progs), so it
        must run as root on the Docker host. Empty (default): workspaces are the engine's own
        volumes, with a quota only where the engine has XFS project quotas.""",
    ).tag(config=True)



    # --- what the engine enforces beyond the shared profile ---------------

    seccomp_profile = Unicode(
        "",
        help="""Path to a custom seccomp profile (JSON) on the hub's filesystem. Empty keeps
        the engine's default profile, which is always on; `unconfined` is refused.""",
    ).tag(config=True)

    apparmor_profile = Unicode(
        "docker-default",
        help="""AppArmor profile for servers, applied where the engine supports AppArmor
        (it reports it in `docker info`); ignored, with a log line, elsewhere.""",
    ).tag(config=True)

    healthcheck = Dict(
        help="""The servers' healthcheck, in docker-py form (`test`, `interval`, ... in ns).
        Default: the server's own /api, asked from inside the container every 5 minutes
        (each probe is an exec: about 0.1 CPU-s with the engine's part).""",
    ).tag(config=True)


    container_log_driver = Unicode(
        LOG_DRIVER,
        help="""The servers' log driver: `json-file` (default: what `docker logs`, the hub and log
        shippers read) or `local` (compressed). Other drivers are refused: they have no cap the
        engine enforces per container, or no log the hub can read when a server dies.""",
    ).tag(config=True)

    container_log_max_size = Size(
        LOG_MAX_SIZE,
        help="""Size at which a server's log file is rotated (default 10M). With
        `container_log_max_files`, the most one server's output keeps on the host's disk
        (default 30 MiB); a kernel printing gigabytes cannot fill it.""",
    ).tag(config=True)

    container_log_max_files = Integer(
        LOG_MAX_FILES,
        help="How many rotated log files of a server are kept (default 3), the current one included.",
    ).tag(config=True)

    # --- the engine ---------------------------------------------------------

    docker_threads = Integer(
        16,
        help="""Threads for Docker API calls, shared by all users. DockerSpawner uses one,
        so one slow call delays every user's spawn.""",
    ).tag(config=True)

    concurrent_starts = Integer(
        None,
        allow_none=True,
        help="""How many servers may be starting at once on the engine (from creating the
        container until the server answers); the spawns beyond them wait their turn in order,
        and the spawn page says how many are ahead. Starting a whole class at once makes
        everyone wait for the slowest: the starts share the cores. None (the default): twice
        the engine's CPUs. 0: no limit. The wait counts toward `start_timeout` (this spawner's
        start ends when the server answers): a spawn still waiting when what is left would not
        cover a start (twice the longest recent one, at least 10 s) is refused as busy, with a
        message that says so. Size `start_timeout` for a whole class: on 2 cores a hundred
        servers take about 130 s.""",
    ).tag(config=True)


    # --- the users' network (see hardened_spawner.docker.isolation) --------

    network_isolation = Bool(
        True,
        help="""Keep users' servers apart. The users' network (`network_name`) is created with
        Docker's `enable_icc=false` and a fixed bridge name, and the hub checks at start and
        before spawns (every `firewall_check_interval` seconds) that the rules of
        `hardened-spawner firewall apply` are in place: no traffic between servers, the hub
        API reachable, link-local and private ranges and the host blocked, egress per
        `egress`. False: a plain network and no checks (every user reaches every server).""",
    ).tag(config=True)


    network_bridge_name = Unicode(
        "",
        help="""The bridge interface of the users' network when the spawner creates it (rules
        match `-i <bridge>`). Empty: `hs-<network_name>` shortened to 15 characters
        (`hs-users` for the default network).""",
    ).tag(config=True)

    network_hub_address = Unicode(
        "",
        help="""The IP address servers reach the hub API at, for the firewall rules. Empty: the
        host of the hub's API URL (`c.JupyterHub.hub_connect_ip`), resolved by the hub.""",
    ).tag(config=True)

    network_trusted_addresses = List(
        Unicode(),
        help="""Addresses on the users' network, besides the hub, that may open connections to
        servers: a proxy running in its own container. Give them fixed addresses.""",
    ).tag(config=True)

    firewall_required = Bool(
        False,
        help="""Refuse spawns while the isolation rules are missing or differ from these
        settings. False (default): spawn anyway and log a loud warning naming the problem
        and the command that fixes it.""",
    ).tag(config=True)

    firewall_check_method = Unicode(
        "auto",
        help="""How the hub checks the rules: `iptables` (compare with `iptables -S`: a hub on the
        host, as root), `probe` (the marker `firewall apply` leaves on the engine, and a
        throwaway container on the users' network that must reach the hub API and be
        rejected elsewhere: needs no privileges) or `auto` (iptables when readable).""",
    ).tag(config=True)

    firewall_check_interval = Integer(
        60,
        help="""Seconds a check of the rules is reused for before a spawn checks again. With
        `firewall_required`, a check that found rules missing is never reused: each spawn
        checks again, so spawns resume as soon as the rules are back.""",
    ).tag(config=True)

    # --- DockerSpawner defaults that hardening changes ------------------

    remove = Bool(
        True,
        help="""Always True: each start gets a fresh container, so no server ever restarts
        with stale GPUs or an old policy. The workspace volume persists anyway.""",
    ).tag(config=True)


    @default("network_name")
    def _default_network_name(self):
        return "hardened-spawner-users"

    @default("name_template")
    def _default_name_template(self):
        return "jupyter-{username}--{servername}" if self.name else "jupyter-{username}"

    @default("healthcheck")
    def _default_healthcheck(self):
        return server_healthcheck()

    @default("start_timeout")
    def _default_start_timeout(self):
        """JupyterHub's 60 s plus `http_timeout`: this spawner's start ends when the server
        answers (and waits its turn in the start queue), where DockerSpawner's ends when the
        container runs and the hub then gives the server `http_timeout` more. The same total
        either way."""
        return 60 + self.http_timeout


    # --- validation: bad config fails at hub start, naming the setting ---

    @validate("remove")
    def _validate_remove(self, proposal):
        if not proposal.value:
            raise TraitError(
                "HardenedSpawner.remove must stay True: a kept container would restart "
                "with stale GPUs and an old policy. Workspaces persist anyway."
            )
        return True

    @validate("docker_threads")
    def _validate_threads(self, proposal):
        if proposal.value < 1:
            raise TraitError(f"HardenedSpawner.docker_threads must be at least 1, not {proposal.value}.")
        return proposal.value

    @validate("concurrent_starts")
    def _validate_concurrent_starts(self, proposal):
        if proposal.value is not None and proposal.value < 0:
            raise TraitError(
                f"HardenedSpawner.concurrent_starts must be 0 (no limit), a positive number or None "
                f"(twice the engine's CPUs), not {proposal.value}."
            )
        return proposal.value

    @validate("seccomp_profile")
    def _validate_seccomp(self, proposal):
        if not proposal.value:
            return ""
        if proposal.value.strip() == "unconfined":
            raise TraitError("HardenedSpawner.seccomp_profile: 'unconfined' is never allowed.")
        try:
            with open(proposal.value) as f:
                json.load(f)
        except (OSError, ValueError) as e:
            raise TraitError(
                f"HardenedSpawner.seccomp_profile: cannot read a JSON profile from "
                f"{proposal.value!r} ({e})."
            ) from None
        return proposal.value


    @validate("container_log_driver")
    def _validate_log_driver(self, proposal):
        if proposal.value not in CAPPED_LOG_DRIVERS:
            raise TraitError(
                f"HardenedSpawner.container_log_driver must be 'json-file' or 'local', not {proposal.value!r}: "
                "other drivers keep no per-container cap on the host or no log the hub can read."
            )
        return proposal.value

    @validate("container_log_max_size")
    def _validate_log_max_size(self, proposal):
        if proposal.value is None or proposal.value < 1024 * 1024:
            raise TraitError(f"HardenedSpawner.container_log_max_size must be at least 1M, not {proposal.value!r}.")
        return proposal.value

    @validate("container_log_max_files")
    def _validate_log_max_files(self, proposal):
        if not 1 <= proposal.value <= 100:
            raise TraitError(f"HardenedSpawner.container_log_max_files must be 1 to 100, not {proposal.value}.")
        return proposal.value

    @validate("workspace_btrfs_root")
    def _validate_btrfs_root(self, proposal):
        root = proposal.value.rstrip("/") if proposal.value.strip("/") else proposal.value
        if root and (not root.startswith("/") or root == "/"):
            raise TraitError(
                f"HardenedSpawner.workspace_btrfs_root must be an absolute directory other than /, not {root!r}."
            )
        return root

    @validate("network_name")
    def _validate_network_name(self, proposal):
        if proposal.value in ("bridge", "host", "none", "default", ""):
            raise TraitError(
                f"HardenedSpawner.network_name {proposal.value!r} is not allowed: servers run on a "
                "network the spawner manages (default 'hardened-spawner-users'), never on Docker's "
                "own networks, where nothing keeps them apart."
            )
        return proposal.value


    @validate("network_trusted_addresses")
    def _validate_trusted(self, proposal):
        return list(_network_setting(parse_addresses, proposal))

    @validate("network_hub_address")
    def _validate_hub_address(self, proposal):
        if proposal.value:
            _network_setting(parse_addresses, proposal, [proposal.value])
        return proposal.value

    @validate("network_bridge_name")
    def _validate_bridge_name(self, proposal):
        if proposal.value:
            _network_setting(check_bridge_name, proposal, proposal.value)
        return proposal.value

    @validate("firewall_check_method")
    def _validate_check_method(self, proposal):
        if proposal.value not in ("auto", "iptables", "probe"):
            raise TraitError(
                "HardenedSpawner.firewall_check_method must be 'auto', 'iptables' or 'probe', "
                f"not {proposal.value!r}."
            )
        return proposal.value

    @validate("firewall_check_interval")
    def _validate_check_interval(self, proposal):
        if proposal.value < 0:
            raise TraitError("HardenedSpawner.firewall_check_interval must be >= 0 seconds.")
        return proposal.value


    def check_docker_config(self) -> None:
        """Checks across the Docker settings, run once at hub start (`hubstart`)."""
        if self.workspace_btrfs_root and self.workspace_host_path:
            raise TraitError(
                "HardenedSpawner.workspace_btrfs_root and HardenedSpawner.workspace_host_path are both set: "
                "a workspace is either a subvolume of the btrfs root or a host folder. Set one."
            )
        # DockerSpawner's own default is "bridge": setting that value from config
        # changes nothing traitlets notices, so @validate never sees it
        self._validate_network_name(SimpleNamespace(value=self.network_name))
        for name, (unsupported, why) in UNSUPPORTED_DOCKERSPAWNER.items():
            if unsupported(getattr(self, name)):
                raise TraitError(f"DockerSpawner.{name} = {getattr(self, name)!r} is not supported by "
                                 f"HardenedSpawner: {why}")

    def container_log_config(self) -> dict:
        """The servers' ``log_config`` (`host_config.log_config`), from the settings."""
        return log_config(self.container_log_driver, self.container_log_max_size, self.container_log_max_files)

    def security_profile(self, facts: EngineFacts) -> SecurityProfile:
        """The shared profile (`HardenedSettings.base_profile`) with what the engine adds:
        its CPUs cap cpu_limit, a custom seccomp JSON, AppArmor only where the engine has
        it, the healthcheck."""
        seccomp = ""
        if self.seccomp_profile:
            with open(self.seccomp_profile) as f:
                seccomp = json.dumps(json.load(f), separators=(",", ":"))
        return dataclasses.replace(
            self.base_profile(),
            cpu_limit=min(self.cpu_limit, facts.cpus or self.cpu_limit),
            seccomp_profile=seccomp,
            apparmor_profile=self.apparmor_profile if facts.apparmor else "",
            healthcheck=self.healthcheck or None,
        )
