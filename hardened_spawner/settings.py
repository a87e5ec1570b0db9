"""Every HardenedSpawner setting: its trait with the help an admin reads, its default,
and the check that rejects a bad value at hub start with the setting's name.

`HardenedSettings` is a mixin of `HardenedSpawner` (it comes first in the MRO, so its
defaults and validators also apply to the DockerSpawner traits it re-defaults); config
is still given as ``c.HardenedSpawner.<name>``. What is derived from settings alone (the
GPU allocator, the audit trail) is built here too, so every part of the project that
holds a validated spawner asks it the same way.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from jupyterhub.traitlets import ByteSpecification
from traitlets import (
    Bool,
    Callable,
    Dict,
    HasTraits,
    Integer,
    List,
    TraitError,
    Unicode,
    Union,
    default,
    validate,
)

from .audit import AuditLogError, AuditTrail, get_audit_trail
from .gpus import (
    GpuAllocator,
    GpuConfigError,
    GpuPolicy,
    discover_nvidia_smi,
    discover_nvml,
    parse_static_inventory,
)
from .identity import IdentityError, check_static_uids, check_uid_range
from .isolation.docker_network import check_bridge_name
from .isolation.errors import NetworkConfigError
from .isolation.policy import parse_addresses, parse_cidrs, parse_egress
from .options import gpu_options_form, parse_gpu_options, unknown_options
from .profile import ProfileError, SecurityProfile, normalise_capability, server_healthcheck

_MIB = 1024 * 1024

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


class HardenedSettings(HasTraits):
    """The settings of `HardenedSpawner` (see the module docstring)."""

    if TYPE_CHECKING:  # DockerSpawner's traits that the checks below read
        network_name: str
        mem_limit: int  # never None: the validators below refuse it
        cpu_limit: float
        log: Any

    # --- identity -------------------------------------------------------

    uid_min = Integer(
        200000,
        help="""Lowest UID handed out. A new user is offered `uid_min + hub user id` (their
        private GID is the same number); when a label on the engine (someone's workspace,
        from an earlier hub database too) already holds that UID, they get the next free
        one. Keep the range above every account on the Docker host, so files in workspaces
        never map to a host user.""",
    ).tag(config=True)

    uid_max = Integer(
        999_999_999,
        help="""Highest UID handed out. Only when every UID from `uid_min` to here is held is a
        new user refused, with a message naming this setting.""",
    ).tag(config=True)

    uid_map = Union(
        [Dict(), Callable()],
        default_value={},
        help="""Static UIDs instead of derived ones: a dict `{hub username: UID}`, or a
        callable `f(spawner) -> UID` (may be async). Values must be >= 1000, unique,
        and outside `uid_min`..`uid_max`. Users without an entry get derived UIDs.
        A user who already has a UID keeps it even if this changes later: changing
        it never silently moves anyone over their existing files (the hub logs a warning).""",
    ).tag(config=True)

    home_template = Unicode(
        "/home/{username}",
        help="""Where the workspace is mounted and HOME points; `{username}` is the
        user's POSIX login name (the hub name made safe for /etc/passwd).""",
    ).tag(config=True)

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

    workspace_allow_adopt = Bool(
        False,
        help="""Allow re-owning a workspace that belongs to another UID (recursively) to the
        user's UID. Off by default: such a workspace is refused with a clear message,
        because it may hold someone else's files.""",
    ).tag(config=True)

    # --- security profile -----------------------------------------------

    cap_add = List(
        Unicode(),
        help="""Capabilities added back after dropping ALL. Empty by default (a non-root
        process has no effective capabilities anyway). Only CHOWN, FOWNER, SETUID,
        SETGID, KILL, NET_BIND_SERVICE and SYS_NICE may be added; others are an error.""",
    ).tag(config=True)

    pids_limit = Integer(
        1024,
        help="Most processes and threads in a server; stops fork bombs. Must be > 0.",
    ).tag(config=True)

    shm_size = ByteSpecification(
        "1G",
        help="""Size of /dev/shm. PyTorch DataLoader workers pass batches through it; Docker's
        64M default crashes them. At least 64M. Never use `ipc_mode=host` instead.""",
    ).tag(config=True)

    tmp_size = ByteSpecification(
        "1G",
        help="Size of the /tmp tmpfs (counts against the memory limit when used).",
    ).tag(config=True)

    extra_tmpfs = Dict(
        help="""More size-limited tmpfs mounts, `{path: size}` (e.g. `{"/var/tmp": "256M"}`),
        for images that need other writable paths under the read-only root.""",
    ).tag(config=True)

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
        Default: the server's own /api, asked from inside the container every 30 s.""",
    ).tag(config=True)

    # --- GPUs -----------------------------------------------------------

    gpu_inventory = Union(
        [Unicode(), List()],
        default_value="none",
        help="""Where the GPUs come from: `"nvml"` (needs nvidia-ml-py), `"nvidia-smi"`,
        `"none"`, or a static list of UUID strings or dicts `{uuid, index, name, parent_uuid}`.""",
    ).tag(config=True)

    gpu_pool = List(
        Unicode(),
        allow_none=True,
        default_value=None,
        help="UUIDs of the devices that may be assigned; None means every device in the inventory.",
    ).tag(config=True)

    gpu_default_per_user = Integer(
        0, help="GPUs a user gets when they do not choose (0 allowed)."
    ).tag(config=True)

    gpu_max_per_user = Integer(
        1, help="Most GPUs one user may hold, across all of their servers (named servers share it)."
    ).tag(config=True)

    gpu_group_max = Dict(
        help="`{group: max GPUs}`; a user's limit is the highest entry among their groups."
    ).tag(config=True)

    gpu_pins = Dict(
        help="""`{username: [UUID, ...]}`: devices reserved for a user, always given to them (to
        one of their servers at a time)."""
    ).tag(config=True)

    gpu_max_users_per_gpu = Integer(
        1,
        help="""1 = exclusive (default). More lets that many servers share one GPU, with NO
        isolation between them (memory, compute and faults are shared).""",
    ).tag(config=True)

    gpu_idle_timeout = Integer(
        0,
        help="""Seconds a server holding GPUs may go without activity the hub sees (kernels,
        terminals, SSH, page loads) before the GPU culler stops it and its GPUs go back to the
        pool; 0 = never. Keep it shorter than the idle culler's timeout for all servers. Needs
        the GPU culler service (`hardened_spawner.gpu_pages.enable`).""",
    ).tag(config=True)

    gpu_max_hold = Integer(
        0,
        help="""Seconds a server may hold GPUs, active or not, before the GPU culler stops it;
        0 = no limit. Users see the time on the GPU board.""",
    ).tag(config=True)

    gpu_board = Bool(
        False,
        help="""Link the GPU board (``/hub/gpus``) from the spawn form and the "GPUs are busy"
        message. `hardened_spawner.gpu_pages.enable(c)` sets it with the board's pages.""",
    ).tag(config=True)

    gpu_board_names_public = Bool(
        True,
        help="""Whether the GPU board names who holds each GPU to every user (so they know whom
        to ask). False shows "another user" to everyone but admins and the holder.""",
    ).tag(config=True)

    # --- audit and engine -----------------------------------------------

    audit_log = Unicode(
        "",
        help="""Where the audit trail goes: a file path (JSON lines, appended), `stdout`,
        `stderr` or `-`, or empty for none.""",
    ).tag(config=True)

    docker_threads = Integer(
        16,
        help="""Threads for Docker API calls, shared by all users. DockerSpawner uses one,
        so one slow call delays every user's spawn.""",
    ).tag(config=True)

    # --- network isolation (see hardened_spawner.isolation) -------------------

    network_isolation = Bool(
        True,
        help="""Keep users' servers apart. The users' network (`network_name`) is created with
        Docker's `enable_icc=false` and a fixed bridge name, and the hub checks at start and
        before spawns (every `firewall_check_interval` seconds) that the rules of
        `hardened-spawner firewall apply` are in place: no traffic between servers, the hub
        API reachable, link-local and private ranges and the host blocked, egress per
        `egress`. False: a plain network and no checks (every user reaches every server).""",
    ).tag(config=True)

    egress = Unicode(
        "internet",
        help="""Where servers may connect besides the hub: `internet` (public addresses; the
        default) or `none` (only the hub API, and `egress_allow_cidrs`). Link-local
        (169.254.0.0/16, fe80::/10, cloud metadata), private ranges (RFC 1918, 100.64.0.0/10,
        fc00::/7) and the Docker host itself are blocked in both modes.""",
    ).tag(config=True)

    egress_allow_cidrs = List(
        Unicode(),
        help="""Ranges servers may reach although they are private, opened on purpose (a
        dataset server, a package mirror: `["10.20.30.0/24"]`). Also open in egress `none`.
        Link-local ranges and `0.0.0.0/0` are refused.""",
    ).tag(config=True)

    egress_allow_dns = List(
        Unicode(),
        help="""DNS resolvers in a blocked range that servers' name lookups go to (Docker's
        resolver forwards from the container's network; see the host's /etc/resolv.conf),
        opened on port 53 only. Without them, egress `internet` reaches addresses but not names.""",
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

    @default("mem_limit")
    def _default_mem_limit(self):
        return 8 * 1024 * _MIB

    @default("cpu_limit")
    def _default_cpu_limit(self):
        return 4.0

    @default("network_name")
    def _default_network_name(self):
        return "hardened-spawner-users"

    @default("name_template")
    def _default_name_template(self):
        return "jupyter-{username}--{servername}" if self.name else "jupyter-{username}"

    @default("healthcheck")
    def _default_healthcheck(self):
        return server_healthcheck()

    @default("options_form")
    def _default_options_form(self):
        return gpu_options_form

    @default("options_from_form")
    def _default_options_from_form(self):
        return parse_gpu_options

    @default("apply_user_options")
    def _default_apply_user_options(self):
        # JupyterHub >= 5.3 warns about user options no hook consumes; ours are read
        # (and checked, with a message on the spawn page) when the server starts
        return _note_unknown_options

    # --- validation: bad config fails at hub start, naming the setting ---

    @validate("remove")
    def _validate_remove(self, proposal):
        if not proposal.value:
            raise TraitError(
                "HardenedSpawner.remove must stay True: a kept container would restart "
                "with stale GPUs and an old policy. Workspaces persist anyway."
            )
        return True

    @validate("uid_min")
    def _validate_uid_min(self, proposal):
        _as_trait_error(check_uid_range, proposal.value, proposal.value + 1)
        return proposal.value

    @validate("cap_add")
    def _validate_cap_add(self, proposal):
        try:
            return [normalise_capability(c) for c in proposal.value]
        except ProfileError as e:
            raise TraitError(str(e)) from None

    @validate("pids_limit", "docker_threads")
    def _validate_positive(self, proposal):
        if proposal.value < 1:
            raise TraitError(
                f"HardenedSpawner.{proposal.trait.name} must be at least 1, not {proposal.value}."
            )
        return proposal.value

    @validate("shm_size", "tmp_size")
    def _validate_scratch_size(self, proposal):
        if proposal.value < 64 * _MIB:
            raise TraitError(
                f"HardenedSpawner.{proposal.trait.name} is {proposal.value} bytes; use at "
                "least 64M (e.g. '1G')."
            )
        return proposal.value

    @validate("extra_tmpfs")
    def _validate_extra_tmpfs(self, proposal):
        sizes = {}
        for path, size in proposal.value.items():
            if not path.startswith("/") or path.rstrip("/") in ("", "/dev/shm", "/tmp"):
                raise TraitError(
                    f"HardenedSpawner.extra_tmpfs: {path!r} must be an absolute path other "
                    "than /, /tmp and /dev/shm (those have tmp_size and shm_size)."
                )
            try:
                sizes[path] = ByteSpecification().validate(self, size)
            except TraitError:
                raise TraitError(
                    f"HardenedSpawner.extra_tmpfs[{path!r}] = {size!r} is not a size like '256M'."
                ) from None
        return sizes

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

    @validate("mem_limit")
    def _validate_mem_limit(self, proposal):
        if proposal.value is None or proposal.value < 128 * _MIB:
            raise TraitError(
                f"HardenedSpawner.mem_limit must be set and at least 128M, not {proposal.value!r}."
            )
        return proposal.value

    @validate("cpu_limit")
    def _validate_cpu_limit(self, proposal):
        if proposal.value is None or proposal.value <= 0:
            raise TraitError(f"HardenedSpawner.cpu_limit must be > 0, not {proposal.value!r}.")
        return proposal.value

    @validate("gpu_default_per_user", "gpu_max_per_user", "gpu_max_users_per_gpu",
              "gpu_idle_timeout", "gpu_max_hold")
    def _validate_gpu_numbers(self, proposal):
        low = 1 if proposal.trait.name == "gpu_max_users_per_gpu" else 0
        if proposal.value < low:
            raise TraitError(
                f"HardenedSpawner.{proposal.trait.name} must be at least {low}, not {proposal.value}."
            )
        return proposal.value

    @validate("network_name")
    def _validate_network_name(self, proposal):
        if proposal.value in ("bridge", "host", "none", "default", ""):
            raise TraitError(
                f"HardenedSpawner.network_name {proposal.value!r} is not allowed: servers run on a "
                "network the spawner manages (default 'hardened-spawner-users'), never on Docker's "
                "own networks, where nothing keeps them apart."
            )
        return proposal.value

    @validate("egress")
    def _validate_egress(self, proposal):
        return _network_setting(parse_egress, proposal)

    @validate("egress_allow_cidrs")
    def _validate_allow_cidrs(self, proposal):
        return list(_network_setting(parse_cidrs, proposal))

    @validate("egress_allow_dns", "network_trusted_addresses")
    def _validate_addresses(self, proposal):
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

    def check_config(self) -> None:
        """Checks across settings, run once at hub start (`hubstart`)."""
        _as_trait_error(check_uid_range, self.uid_min, self.uid_max)
        # DockerSpawner's own default is "bridge": setting that value from config
        # changes nothing traitlets notices, so @validate never sees it
        self._validate_network_name(SimpleNamespace(value=self.network_name))
        if isinstance(self.uid_map, dict):
            _as_trait_error(check_static_uids, self.uid_map, self.uid_min, self.uid_max)
        for name, (unsupported, why) in UNSUPPORTED_DOCKERSPAWNER.items():
            if unsupported(getattr(self, name)):
                raise TraitError(f"DockerSpawner.{name} = {getattr(self, name)!r} is not supported by "
                                 f"HardenedSpawner: {why}")
        try:
            self.gpu_allocator()
            _ = self.audit  # opens the sink: a bad path fails now, not in a user's spawn
        except (GpuConfigError, AuditLogError, ValueError, OSError) as e:
            raise TraitError(str(e)) from None

    # --- derived from the settings alone --------------------------------

    def security_profile(self, facts: dict) -> SecurityProfile:
        """The servers' security profile from these settings and the engine's facts (its
        CPUs cap cpu_limit; AppArmor only where the engine has it)."""
        seccomp = ""
        if self.seccomp_profile:
            with open(self.seccomp_profile) as f:
                seccomp = json.dumps(json.load(f), separators=(",", ":"))
        return SecurityProfile(
            mem_limit=self.mem_limit,
            cpu_limit=min(self.cpu_limit, facts["cpus"] or self.cpu_limit),
            pids_limit=self.pids_limit,
            shm_size=self.shm_size,
            tmpfs={"/tmp": self.tmp_size, **self.extra_tmpfs},
            cap_add=tuple(sorted(self.cap_add)),
            seccomp_profile=seccomp,
            apparmor_profile=self.apparmor_profile if facts["apparmor"] else "",
            healthcheck=self.healthcheck or None,
        )

    @property
    def audit(self) -> AuditTrail:
        return get_audit_trail(self.audit_log, self.log)

    def gpu_allocator(self) -> GpuAllocator:
        source = self.gpu_inventory
        if isinstance(source, list):
            inventory = parse_static_inventory(source)
        elif source == "nvml":
            inventory = discover_nvml()
        elif source == "nvidia-smi":
            inventory = discover_nvidia_smi()
        elif source == "none":
            inventory = ()
        else:
            raise GpuConfigError(
                "gpu_inventory", f"{source!r} is not 'nvml', 'nvidia-smi', 'none' or a list."
            )
        return GpuAllocator(inventory, self._gpu_policy())

    def _gpu_policy(self) -> GpuPolicy:
        return GpuPolicy(
            default_per_user=self.gpu_default_per_user,
            max_per_user=self.gpu_max_per_user,
            group_max=dict(self.gpu_group_max),
            pins={user: tuple(devices) for user, devices in self.gpu_pins.items()},
            max_users_per_gpu=self.gpu_max_users_per_gpu,
            pool=None if self.gpu_pool is None else tuple(self.gpu_pool),
        )


def _as_trait_error(check, *args) -> None:
    try:
        check(*args)
    except IdentityError as e:
        raise TraitError(str(e)) from None


def _note_unknown_options(spawner, user_options: dict) -> None:
    unknown = unknown_options(user_options)
    if unknown:
        spawner.log.warning("Ignoring unknown user options for %s: %s", spawner._log_name, ", ".join(unknown))


def _network_setting(check, proposal, value=None):
    """Run an `isolation.policy` check on a setting; its error names the setting."""
    try:
        return check(proposal.value if value is None else value,
                      f"HardenedSpawner.{proposal.trait.name}")
    except NetworkConfigError as e:
        raise TraitError(str(e)) from None
