"""The settings both backends share: their traits with the help an admin reads, their
defaults, and the checks that reject a bad value at hub start with the setting's name.

`HardenedSettings` is a mixin of `HardenedSpawner` and of `HardenedKubeSpawner` (it comes
first in their MROs, so its defaults and validators also apply to the base spawners'
traits it re-defaults, such as ``mem_limit``); config is still given as
``c.HardenedSpawner.<name>`` (or ``c.HardenedKubeSpawner.<name>``). Settings only one
backend carries out live with that backend (`docker.settings`, `kubernetes.settings`).
What is derived from settings alone (the base security profile, the GPU allocator, the
audit trail) is built here too, so every part of the project asks a validated spawner
the same way.
"""

from __future__ import annotations

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
from .core.egress import NetworkConfigError, parse_addresses, parse_cidrs, parse_egress
from .core.gpus import (
    GpuAllocator,
    GpuConfigError,
    GpuPolicy,
    discover_nvidia_smi,
    discover_nvml,
    parse_static_inventory,
)
from .core.identity import IdentityError, check_static_uids, check_uid_range
from .core.options import gpu_options_form, parse_gpu_options, unknown_options
from .core.profile import ProfileError, SecurityProfile, normalise_capability

_MIB = 1024 * 1024

class HardenedSettings(HasTraits):
    """The settings both hardened spawners share (see the module docstring). Messages name
    the class the admin configured (``type(self).__name__``)."""

    if TYPE_CHECKING:  # the base spawners' traits that the checks below read
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

    workspace_allow_adopt = Bool(
        False,
        help="""Allow taking over a workspace that belongs to another UID, or that no hardened
        spawner made: on Docker it is re-owned (recursively) to the user's UID, on Kubernetes
        the claim is labelled with it and its fsGroup follows. Off by default: such a
        workspace is refused with a clear message, because it may hold someone else's files.""",
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

    gpu_utilisation_interval = Integer(
        30,
        help="""Seconds between two samples of the pooled GPUs' utilisation and memory (with
        `gpu_inventory = "nvml"` only; 0 = never). The samples feed the GPU board, the
        `gpu_underused_timeout` rule and the GPU-hours used in the usage ledger.""",
    ).tag(config=True)

    gpu_underused_percent = Integer(
        5,
        help="""A holding whose busiest GPU is under this utilisation (percent) at every sample
        counts as underused (`gpu_underused_timeout`).""",
    ).tag(config=True)

    gpu_underused_timeout = Integer(
        0,
        help="""Seconds a server may hold GPUs at under `gpu_underused_percent` utilisation
        before the GPU culler stops it, even when its kernel is busy (a notebook looping on CPU
        work); 0 = never. The user is warned on the hub's pages `gpu_reclaim_warning` seconds
        before. Needs `gpu_inventory = "nvml"`, `gpu_utilisation_interval` and the GPU culler
        service (`hardened_spawner.gpu_pages.enable`).""",
    ).tag(config=True)

    gpu_reclaim_warning = Integer(
        600,
        help="""Seconds before a server's GPUs are reclaimed (any rule) from which the hub's
        home page and GPU board warn its user, with the reason and what keeps them; 0 = no
        warning. Must be shorter than `gpu_underused_timeout` when that is set, so that the
        warning always comes first.""",
    ).tag(config=True)

    gpu_usage_record_interval = Integer(
        14400,
        help="""Seconds between two `gpu-usage` audit records of one holding (GPU-seconds used,
        mean utilisation, peak memory); one is also written when the holding ends and when the
        hub stops. A hub killed hard (SIGKILL, a crash) loses at most this much of the
        measurement, never of the time held; shorter means more lines for the usage ledger to
        read (benchmarks/usage.py).""",
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

    # --- network isolation (see hardened_spawner.docker.isolation) -------------------

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

    @default("mem_limit")
    def _default_mem_limit(self):
        return 8 * 1024 * _MIB

    @default("cpu_limit")
    def _default_cpu_limit(self):
        return 4.0

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

    @validate("uid_min")
    def _validate_uid_min(self, proposal):
        _as_trait_error(check_uid_range, proposal.value, proposal.value + 1, owner=type(self).__name__)
        return proposal.value

    @validate("cap_add")
    def _validate_cap_add(self, proposal):
        try:
            return [normalise_capability(c, f"{type(self).__name__}.cap_add") for c in proposal.value]
        except ProfileError as e:
            raise TraitError(str(e)) from None

    @validate("pids_limit")
    def _validate_positive(self, proposal):
        if proposal.value < 1:
            raise TraitError(
                f"{type(self).__name__}.{proposal.trait.name} must be at least 1, not {proposal.value}."
            )
        return proposal.value

    @validate("shm_size", "tmp_size")
    def _validate_scratch_size(self, proposal):
        if proposal.value < 64 * _MIB:
            raise TraitError(
                f"{type(self).__name__}.{proposal.trait.name} is {proposal.value} bytes; use at "
                "least 64M (e.g. '1G')."
            )
        return proposal.value

    @validate("extra_tmpfs")
    def _validate_extra_tmpfs(self, proposal):
        sizes = {}
        for path, size in proposal.value.items():
            if not path.startswith("/") or path.rstrip("/") in ("", "/dev/shm", "/tmp"):
                raise TraitError(
                    f"{type(self).__name__}.extra_tmpfs: {path!r} must be an absolute path other "
                    "than /, /tmp and /dev/shm (those have tmp_size and shm_size)."
                )
            try:
                sizes[path] = ByteSpecification().validate(self, size)
            except TraitError:
                raise TraitError(
                    f"{type(self).__name__}.extra_tmpfs[{path!r}] = {size!r} is not a size like '256M'."
                ) from None
        return sizes

    @validate("mem_limit")
    def _validate_mem_limit(self, proposal):
        if proposal.value is None or proposal.value < 128 * _MIB:
            raise TraitError(
                f"{type(self).__name__}.mem_limit must be set and at least 128M, not {proposal.value!r}."
            )
        return proposal.value

    @validate("cpu_limit")
    def _validate_cpu_limit(self, proposal):
        if proposal.value is None or proposal.value <= 0:
            raise TraitError(f"{type(self).__name__}.cpu_limit must be > 0, not {proposal.value!r}.")
        return proposal.value

    @validate("gpu_default_per_user", "gpu_max_per_user", "gpu_max_users_per_gpu",
              "gpu_idle_timeout", "gpu_max_hold", "gpu_utilisation_interval", "gpu_underused_timeout",
              "gpu_reclaim_warning")
    def _validate_gpu_numbers(self, proposal):
        low = 1 if proposal.trait.name == "gpu_max_users_per_gpu" else 0
        if proposal.value < low:
            raise TraitError(
                f"{type(self).__name__}.{proposal.trait.name} must be at least {low}, not {proposal.value}."
            )
        return proposal.value

    @validate("gpu_underused_percent")
    def _validate_percent(self, proposal):
        if not 1 <= proposal.value <= 100:
            raise TraitError(f"{type(self).__name__}.gpu_underused_percent must be 1 to 100, not {proposal.value}.")
        return proposal.value

    @validate("gpu_usage_record_interval")
    def _validate_record_interval(self, proposal):
        if proposal.value < 60:
            raise TraitError(f"{type(self).__name__}.gpu_usage_record_interval must be at least 60 (seconds), "
                             f"not {proposal.value}: each record is a line of the audit trail.")
        return proposal.value

    @validate("egress")
    def _validate_egress(self, proposal):
        return _network_setting(parse_egress, proposal)

    @validate("egress_allow_cidrs")
    def _validate_allow_cidrs(self, proposal):
        return list(_network_setting(parse_cidrs, proposal))

    @validate("egress_allow_dns")
    def _validate_addresses(self, proposal):
        return list(_network_setting(parse_addresses, proposal))

    def check_config(self) -> None:
        """Checks across settings, run once at hub start (`hubstart`)."""
        owner = type(self).__name__
        _as_trait_error(check_uid_range, self.uid_min, self.uid_max, owner=owner)
        if isinstance(self.uid_map, dict):
            _as_trait_error(check_static_uids, self.uid_map, self.uid_min, self.uid_max, owner=owner)
        try:
            self.gpu_allocator()
        except GpuConfigError as e:
            raise TraitError(e.naming(owner)) from None
        try:
            _ = self.audit  # opens the sink: a bad path fails now, not in a user's spawn
        except (AuditLogError, ValueError, OSError) as e:
            raise TraitError(str(e)) from None
        problem = underuse_rule_problem(self.gpu_underused_timeout, self.gpu_reclaim_warning,
                                        self.gpu_inventory, self.gpu_utilisation_interval)
        if problem:
            raise TraitError(f"{owner}.{problem}")

    @property
    def samples_utilisation(self) -> bool:
        """Whether the hub samples the GPUs' utilisation (`gpu_sampler`)."""
        return self.gpu_inventory == "nvml" and self.gpu_utilisation_interval > 0

    # --- derived from the settings alone --------------------------------

    def base_profile(self) -> SecurityProfile:
        """The servers' security profile as both backends hold them to it. A backend adds
        what only it carries out (Docker: a custom seccomp JSON, AppArmor, the healthcheck,
        cpu_limit capped to the engine's CPUs)."""
        return SecurityProfile(
            mem_limit=self.mem_limit,
            cpu_limit=self.cpu_limit,
            pids_limit=self.pids_limit,
            shm_size=self.shm_size,
            tmpfs={"/tmp": self.tmp_size, **self.extra_tmpfs},
            cap_add=tuple(sorted(self.cap_add)),
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


def underuse_rule_problem(timeout: int, warning: int, inventory, interval: int) -> str:
    """What is wrong with the underuse rule's settings, naming the setting ("" when nothing)."""
    if not timeout:
        return ""
    if inventory != "nvml":
        return ("gpu_underused_timeout needs the GPUs' utilisation, which the hub reads through NVML: "
                f"set gpu_inventory = \"nvml\" (it is {inventory!r}), or gpu_underused_timeout = 0.")
    if not interval:
        return ("gpu_underused_timeout needs utilisation samples: set gpu_utilisation_interval above 0, "
                "or gpu_underused_timeout = 0.")
    if warning >= timeout:
        return (f"gpu_reclaim_warning ({warning} s) must be shorter than gpu_underused_timeout ({timeout} s), "
                "so that users are warned before their GPUs go back.")
    if interval * 2 > timeout:
        return (f"gpu_underused_timeout ({timeout} s) must be at least two utilisation samples "
                f"(gpu_utilisation_interval = {interval} s).")
    return ""


def _as_trait_error(check, *args, **kwargs) -> None:
    try:
        check(*args, **kwargs)
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
                      f"{type(proposal.owner).__name__}.{proposal.trait.name}")
    except NetworkConfigError as e:
        raise TraitError(str(e)) from None
