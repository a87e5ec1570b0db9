"""HardenedSpawner: the glue between JupyterHub, the policy modules and the engine.

Every decision lives in a pure module (identity, profile, guard, container,
workspace, gpus); this class reads the settings, asks the engine what it
must know, calls those functions in order and reports progress, refusals and
events. ``start`` is the whole story:

identity -> GPUs -> workspace -> container spec -> guard -> create -> start -> wait
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from dataclasses import asdict
from types import SimpleNamespace

import docker.errors
import docker.tls
from docker.utils import kwargs_from_env
from dockerspawner import DockerSpawner
from jupyterhub.traitlets import ByteSpecification
from jupyterhub.utils import maybe_future, url_path_join
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from traitlets import (
    Bool,
    Callable,
    Dict,
    Integer,
    List,
    TraitError,
    Unicode,
    Union,
    default,
    validate,
)

from . import firewall, labels, uid_claims
from ._version import __version__
from .audit import AuditLogError, get_audit_trail
from .container import ServerInputs, WorkspaceMount, build_server_spec
from .engine import gather_engine_facts, running_servers
from .environment import hardened_environment
from .errors import SpawnRefused
from .gpu_broker import GpuBroker, holder_key
from .gpus import (
    GpuAllocationError,
    GpuAllocator,
    GpuConfigError,
    GpuPolicy,
    discover_nvidia_smi,
    discover_nvml,
    parse_static_inventory,
)
from .guard import GuardPolicy, check_container, describe
from .hub_context import (
    ENGINE_ERRORS,
    EngineUnavailable,
    HubContext,
    IsolationCheck,
    engine_address,
    hub_context,
    unreachable_message,
)
from .hubstart import install_hub_start_checks
from .identity import (
    IdentityError,
    check_policy_uid,
    check_static_uids,
    check_uid_range,
    derived_uid,
    first_free_uid,
    make_identity,
    resolve_uid,
)
from .network import (
    EGRESS_MODES,
    IsolationPolicy,
    NetworkConfigError,
    apply_command,
    check_bridge_name,
    hub_endpoint,
    is_ip,
    network_facts,
    parse_addresses,
    parse_cidrs,
)
from .options import (
    OptionsError,
    gpu_options_form,
    gpu_request,
    parse_gpu_options,
    unknown_options,
)
from .profile import (
    ProfileError,
    SecurityProfile,
    normalise_capability,
    server_healthcheck,
)
from .workspace import (
    PreparedMarker,
    WorkspaceError,
    helper_container_spec,
    identity_file_sources,
    interpret_helper_result,
    volume_labels,
)

_MIB = 1024 * 1024

#: where a remembered UID came from, for messages
_SOURCES = {"state": "database", "workspace": "workspace label"}


class HardenedSpawner(DockerSpawner):
    """A DockerSpawner whose users each run as their own UID in a locked-down container."""

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

    # --- network isolation (see hardened_spawner.network) -------------------

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

    @validate("gpu_default_per_user", "gpu_max_per_user", "gpu_max_users_per_gpu")
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
        if proposal.value not in EGRESS_MODES:
            raise TraitError(
                f"HardenedSpawner.egress must be one of {', '.join(EGRESS_MODES)}, not {proposal.value!r}."
            )
        return proposal.value

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
        """Checks across settings, run once at hub start (see `_check_at_hub_start`)."""
        _as_trait_error(check_uid_range, self.uid_min, self.uid_max)
        # DockerSpawner's own default is "bridge": setting that value from config
        # changes nothing traitlets notices, so @validate never sees it
        self._validate_network_name(SimpleNamespace(value=self.network_name))
        if isinstance(self.uid_map, dict):
            _as_trait_error(check_static_uids, self.uid_map, self.uid_min, self.uid_max)
        try:
            self.gpu_allocator()
            _ = self.audit  # opens the sink: a bad path fails now, not in a user's spawn
        except (GpuConfigError, AuditLogError, ValueError, OSError) as e:
            raise TraitError(str(e)) from None

    # --- hub-wide shared pieces (one `HubContext` per set of engine settings) ---

    @property
    def context(self) -> HubContext:
        """Everything the hub's spawners share: see `hub_context`. Found once per spawner."""
        if self._context is None:
            settings = {
                "tls_config": self.tls_config,
                "client_kwargs": self.client_kwargs,
                "env": {k: os.environ.get(k) for k in ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH")},
            }
            self._context = hub_context(settings, self.docker_threads, self._connect_engine,
                                        address=engine_address(self.client_kwargs))
        return self._context

    _context: HubContext | None = None

    def _connect_engine(self):
        """The engine client, as DockerSpawner makes it, with a pool for every Docker thread
        (docker-py keeps 10 connections, and drops the rest after each call)."""
        kwargs = {"version": "auto", "max_pool_size": self.docker_threads}
        if self.tls_config:
            kwargs["tls"] = docker.tls.TLSConfig(**self.tls_config)
        kwargs.update(kwargs_from_env())
        kwargs.update(self.client_kwargs)
        return docker.APIClient(**kwargs)

    @property
    def client(self):
        """The hub's one engine client (DockerSpawner's lazy class-level one is not thread-safe)."""
        return self.context.client

    @property
    def executor(self):
        """A pool shared by all users, so one slow Docker call does not queue the others."""
        return self.context.executor

    @property
    def audit(self):
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

    @property
    def gpus(self) -> GpuBroker:
        """The GPU table for this inventory and policy, one per hub."""
        key = json.dumps([self.gpu_inventory, repr(self._gpu_policy())], default=repr)
        hub_id, known = self.hub_id, self._servers_in_database
        audit, log = self.audit, self.log
        context = self.context

        def build() -> GpuBroker:
            async def running() -> list[dict]:
                return await running_servers(context, hub_id, known, audit, log)

            return GpuBroker(self.gpu_allocator(), running, self.log)

        return context.broker(key, build)

    @property
    def hub_id(self) -> str:
        """Which hub database this is (a digest of its URL), labelled on every server: a
        restarted hub removes the servers of its own database that it no longer knows."""
        db = getattr(self.user, "db", None)
        if db is None:
            return ""
        url = db.get_bind().url.render_as_string(hide_password=True)
        return hashlib.sha256(url.encode()).hexdigest()[:16]

    def _servers_in_database(self) -> set[tuple[str, str]] | None:
        """(user, server name) of every server the hub's database says is running or starting."""
        db = getattr(self.user, "db", None)
        if db is None:
            return None
        from jupyterhub import orm

        rows = db.query(orm.Spawner).filter(orm.Spawner.server_id.isnot(None)).all()
        return {(row.user.name, row.name or "") for row in rows}

    async def _engine_facts(self) -> dict:
        """Facts about the engine every spawn needs, asked once per hub process and users'
        network: AppArmor support, the identity volume's host path, the network itself.
        Nothing is kept when the engine does not answer: the next spawn asks again."""
        context = self.context
        async with context.engine_lock:
            facts = context.engine_facts.get(self.network_name)
            if facts is None:
                facts = await gather_engine_facts(
                    context, self.network_name, self.network_bridge_name, self.network_isolation,
                    self.log,
                )
                if facts["cpus"] and self.cpu_limit > facts["cpus"]:
                    self.log.warning(
                        "HardenedSpawner.cpu_limit is %s but the engine has %s CPUs; "
                        "servers get %s (the engine refuses more).",
                        self.cpu_limit, facts["cpus"], facts["cpus"],
                    )
                if not facts["apparmor"] and self.apparmor_profile:
                    self.log.info("The engine has no AppArmor; servers run without an AppArmor profile.")
                context.engine_facts[self.network_name] = facts
            return facts

    async def _hub_policy(self) -> IsolationPolicy:
        """What the rules must allow for this hub, from its settings and its API URL."""
        host, port = hub_endpoint(self.hub.api_url)
        host = self.network_hub_address or host
        if not is_ip(host):  # e.g. the hub's name on the users' network, in compose
            host = await self.context.run(firewall.resolve, host)
        return IsolationPolicy(
            hub_ip=host,
            hub_port=port,
            egress=self.egress,
            allow_cidrs=tuple(self.egress_allow_cidrs),
            allow_dns=tuple(self.egress_allow_dns),
            trusted=tuple(self.network_trusted_addresses),
        )

    async def _isolation_problems(self, force: bool = False) -> IsolationCheck:
        """What is missing of the isolation, reused for `firewall_check_interval` seconds
        (per users' network and policy)."""
        context = self.context
        async with context.isolation_lock:
            now = asyncio.get_running_loop().time()
            policy, why = None, ""
            try:
                policy = await self._hub_policy()
            except (NetworkConfigError, OSError) as e:
                why = str(e)
            key = (self.network_name, policy.summary() if policy else "")
            cached = context.isolation.get(key)
            # a refusal is not reused: the rules may be back by now (after a reboot the
            # engine restarts the hub and the compose firewall keeper at the same time)
            refusing = bool(cached and (cached.blocking or (cached.problems and self.firewall_required)))
            if cached and not force and not refusing and now - cached.when < self.firewall_check_interval:
                return cached
            if policy is None:
                check = IsolationCheck(now, "none", (f"the isolation could not be checked: {why}",))
            else:
                check = await self._check_isolation(now, policy)
            context.isolation[key] = check
            self._log_isolation(check, cached)
            return check

    async def _check_isolation(self, now: float, policy: IsolationPolicy) -> IsolationCheck:
        try:
            facts = network_facts(await self.docker("inspect_network", self.network_name))
        except ENGINE_ERRORS as e:
            return IsolationCheck(now, "none", (f"the isolation could not be checked: {e}",))
        client = self.client
        verdict = await self.context.run(
            lambda: firewall.check(
                client, facts, policy, method=self.firewall_check_method, image=self.image
            )
        )
        problems = list(verdict.problems)
        if problems:
            problems.append("Fix: as root on the Docker host, run: " + apply_command(self.network_name, policy))
        return IsolationCheck(now, verdict.method, tuple(problems), tuple(verdict.blocking))

    def _log_isolation(self, check: IsolationCheck, before: IsolationCheck | None) -> None:
        if check.problems:
            self.log.warning(
                "NETWORK ISOLATION IS NOT IN PLACE for the users' network %s (checked by %s): "
                "users' servers may reach each other, the cloud metadata service, private "
                "networks or the host.\n  - %s",
                self.network_name, check.method, "\n  - ".join(check.problems),
            )
        elif not before or before.problems:
            self.log.info("Network isolation of %s is in place (checked by %s)",
                          self.network_name, check.method)

    async def _require_isolation(self) -> None:
        if not self.network_isolation:
            return
        check = await self._isolation_problems()
        if check.blocking:
            fix = [p for p in check.problems if p.startswith("Fix: ")]
            raise SpawnRefused(
                "Your server was not started: the network rules in place on this server stop "
                "servers from reaching this hub, so it could never finish starting. The hub admin "
                f"must update them ({(fix or ['see the hub log'])[0]}).",
                reason="network",
                status_code=424,
                log_message=f"Refused {self._log_name}: the isolation rules block this hub's API: "
                + "; ".join(check.blocking + check.problems),
            )
        if check.problems and self.firewall_required:
            raise SpawnRefused(
                "Your server was not started: the network isolation this hub requires is not in "
                "place. The hub admin can find the details in the hub log.",
                reason="network",
                status_code=424,
                log_message=f"Refused {self._log_name}: network isolation missing: "
                + "; ".join(check.problems),
            )

    # --- state: the UID and the prepared workspace outlive each server ---

    _uid: int | None = None
    _prepared: str = ""
    _gpus_held: tuple[str, ...] = ()

    def load_state(self, state):
        super().load_state(state)
        self._uid = state.get("uid", self._uid)
        self._prepared = state.get("workspace_prepared", self._prepared)

    def get_state(self):
        state = super().get_state()
        if self._uid is not None:
            state["uid"] = self._uid
        if self._prepared:
            state["workspace_prepared"] = self._prepared
        return state

    def clear_state(self):
        """Forget the container, never the UID: it owns the user's files."""
        uid, prepared = self._uid, self._prepared
        super().clear_state()
        self._uid, self._prepared = uid, prepared

    # --- progress on the spawn page ---------------------------------------

    def _report(self, progress: int, message: str) -> None:
        self.log.info("%s: %s", self._log_name, message)
        self._events.append({"progress": progress, "message": message})
        self._event_signal.set()

    async def progress(self):
        sent = 0
        while True:
            while sent < len(self._events):
                yield self._events[sent]
                sent += 1
            if self._start_done:
                return
            self._event_signal.clear()
            await self._event_signal.wait()

    # --- start, step by step -----------------------------------------------

    async def _static_uid(self) -> int | None:
        """The UID `uid_map` gives this user, or None when it gives none."""
        if callable(self.uid_map):
            uid = await maybe_future(self.uid_map(self))
            return check_policy_uid(uid, self.user.name)
        if self.user.name in self.uid_map:
            return check_policy_uid(self.uid_map[self.user.name], self.user.name)
        return None

    def _workspace_source(self) -> tuple[str, bool]:
        if self.workspace_host_path:
            return self._render_templates(self.workspace_host_path), True
        return self._render_templates(self.workspace_volume_name), False

    async def _workspace_uid(self) -> int | None:
        source, is_host_path = self._workspace_source()
        if is_host_path:
            return None
        try:
            volume = await self.docker("inspect_volume", source)
        except docker.errors.NotFound:
            return None
        return int((volume.get("Labels") or {}).get(labels.UID, "") or 0) or None

    async def _resolve_identity(self):
        """The user's UID: the one their files already carry, else `uid_map`'s, else the
        first UID from `uid_min + hub user id` on that no label on the engine holds.

        One spawn at a time decides (per hub; across hubs the engine's claim volumes
        decide), and the UID is claimed on the engine before anyone else can pick it.
        """
        async with self.context.uid_lock:
            workspace = self._workspace_source()[0]
            claimed = await self.context.run(uid_claims.claimed_uid, self.client, self.user.name, workspace)
            static = await self._static_uid()
            decision = resolve_uid(
                self.user.name,
                from_state=self._uid,
                from_workspace=await self._workspace_uid() or claimed,
                from_policy=derived_uid(self.user.id, self.uid_min, self.uid_max) if static is None else static,
                static=static is not None,
            )
            if decision.warning:
                self.log.warning(decision.warning)
            uid = decision.uid
            if uid is None:
                uid = await self.context.run(self._claim_free_uid, workspace)
            else:
                await self.context.run(self._claim_known_uid, uid, decision.source, workspace)
        self._uid = uid
        return make_identity(self.user.name, uid, self.home_template)

    def _claim_free_uid(self, workspace: str) -> int:
        """(On a Docker thread) the first free UID from the derived one on, claimed."""
        holders = uid_claims.uid_holders(self.client)
        taken = {uid for uid, owners in holders.items() if owners - {self.user.name}}
        preferred = derived_uid(self.user.id, self.uid_min, self.uid_max)
        while True:
            uid = first_free_uid(preferred, self.uid_min, self.uid_max, taken)
            if uid_claims.claim(self.client, uid, self.user.name, workspace, __version__):
                if uid != preferred:
                    self.log.info("%s gets UID %s: %s is held by another user's files",
                                  self.user.name, uid, preferred)
                return uid
            taken.add(uid)  # claimed by another hub in the meantime

    def _claim_known_uid(self, uid: int, source: str, workspace: str) -> None:
        """(On a Docker thread) no other user's files may carry this UID; then claim it."""
        others = uid_claims.uid_holders(self.client).get(uid, set()) - {self.user.name, ""}
        if not others and uid_claims.claim(self.client, uid, self.user.name, workspace, __version__):
            return
        self.log.error("UID %s of %s (from %s) is also held by %s", uid, self.user.name, source,
                       ", ".join(sorted(others)) or "another hub's claim")
        if source == "policy":
            raise IdentityError(
                f"UID {uid}, which HardenedSpawner.uid_map gives you, is already used by another "
                "user's workspace, so it cannot be yours too. Ask your hub admin to fix "
                "HardenedSpawner.uid_map."
            )
        raise IdentityError(
            f"Your UID {uid} (remembered by the hub's {_SOURCES[source]}) is also carried by "
            "another user's workspace, so the hub cannot tell whose files are whose. Ask your "
            "hub admin to check the owner labels of the workspaces with that UID (the hub log "
            "names them)."
        )

    async def _prepare_workspace(self, identity, image_id: str) -> WorkspaceMount:
        source, is_host_path = self._workspace_source()
        mount = WorkspaceMount(source, identity.home, host_path=is_host_path)
        created = False
        if not is_host_path:
            try:
                await self.docker("inspect_volume", source)
            except docker.errors.NotFound:
                await self.docker(
                    "create_volume",
                    name=source,
                    labels=volume_labels(self.user.name, identity, __version__),
                )
                created = True
        marker = PreparedMarker(source, identity.uid, image_id).as_state()
        if created or marker != self._prepared:
            self._report(30, "Preparing your workspace")
            await self._run_helper(identity, mount)
            self._prepared = marker
        return mount

    async def _run_helper(self, identity, mount: WorkspaceMount) -> None:
        create, host = helper_container_spec(
            image=self.image,
            volume=mount.source,
            identity=identity,
            owner=self.user.name,
            allow_adopt=self.workspace_allow_adopt,
            version=__version__,
        )
        if mount.host_path:
            host["mounts"][0] = {"Type": "bind", "Source": mount.source, "Target": "/workspace"}
        host_config = self.client.create_host_config(**host)
        helper = await self.docker("create_container", host_config=host_config, **create)
        try:
            await self.docker("start", helper["Id"])
            result = await self.docker("wait", helper["Id"], timeout=120)
            output = (await self.docker("logs", helper["Id"])).decode(errors="replace")
        finally:
            await self.docker("remove_container", helper["Id"], force=True)
        action = interpret_helper_result(
            result["StatusCode"], output, volume=mount.source, uid=identity.uid
        )
        self.log.info("Workspace %s for %s: %s", mount.source, self.user.name, action)

    async def _assign_gpus(self) -> tuple[tuple[str, ...], str]:
        try:
            count, devices = gpu_request(self.user_options)
        except OptionsError as e:
            raise SpawnRefused(str(e), reason="options") from None
        if devices is not None and not self.user.admin:
            raise SpawnRefused("Only admins may choose GPU devices.", reason="gpu", status_code=403)
        groups = [g.name for g in self.user.groups]
        holder = holder_key(self.user.name, self.name)
        uuids, since = await self.gpus.assign(holder, groups, count, devices, owner=self.user.name)
        self._gpus_held = uuids
        if uuids:
            self.audit.emit("gpus-assigned", **self._audit_fields(devices=list(uuids)))
        return uuids, since.isoformat()

    def _profile(self, facts: dict) -> SecurityProfile:
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

    async def start(self):
        self._events: list[dict] = []
        self._event_signal = asyncio.Event()
        self._start_done = False
        self.audit.emit("spawn-requested", **self._audit_fields())
        try:
            return await self._start()
        except Exception as e:
            await self._release_gpus()
            refusal = self._as_refusal(e)
            self.audit.emit("spawn-refused", **self._audit_fields(reason=refusal.jupyterhub_message))
            if refusal is e:
                raise
            raise refusal from e
        finally:
            self._start_done = True
            self._event_signal.set()

    def _as_refusal(self, e: Exception) -> SpawnRefused:
        if isinstance(e, SpawnRefused):
            return e
        if isinstance(e, IdentityError):
            return SpawnRefused(str(e), reason="identity", status_code=403)
        if isinstance(e, WorkspaceError):
            return SpawnRefused(str(e), reason="workspace", status_code=409)
        if isinstance(e, docker.errors.ImageNotFound):
            return SpawnRefused(
                f"The image {self.image} is not on this server. Ask your hub admin to build "
                "or load it (HardenedSpawner.image).",
                reason="image",
                status_code=404,
            )
        if isinstance(e, docker.errors.APIError) and e.status_code == 400:
            self.log.error("The engine refused %s's server: %s", self._log_name, e.explanation)
            return SpawnRefused(
                f"The Docker engine refused your server's settings ({e.explanation}). "
                "Your hub admin needs to fix the HardenedSpawner configuration.",
                reason="engine",
                status_code=500,
            )
        if isinstance(e, GpuAllocationError):
            return SpawnRefused(e.user_message, reason="gpu", status_code=409)
        if isinstance(e, (EngineUnavailable, *ENGINE_ERRORS)) and not isinstance(e, docker.errors.APIError):
            detail = str(e) if isinstance(e, EngineUnavailable) else unreachable_message(self.context.address, e)
            self.log.error("The Docker engine failed %s's spawn: %s", self._log_name, detail)
            return SpawnRefused(
                "The Docker engine that runs the servers is not answering, so your server could "
                "not be started. Nothing of yours was changed. Try again in a minute; if it keeps "
                "happening, tell your hub admin (the hub log has the details).",
                reason="engine-unavailable",
                # 4xx: an engine outage must not count toward consecutive_failure_limit
                status_code=424,
            )
        self.log.exception("Unexpected error starting %s", self._log_name)
        return SpawnRefused(
            "Your server could not be started because of an internal error; "
            "the hub admin can find the details in the hub log.",
            reason="error",
            status_code=500,
        )

    async def _start(self):
        self._report(5, "Checking your identity")
        facts = await self._engine_facts()
        await self._require_isolation()
        image = self.image
        if self.user_options.get("image"):
            image = self.image = await self.check_allowed(self.user_options["image"])
        await self.pull_image(image)
        image_info = await self.docker("inspect_image", image)
        self._image_id = image_info["Id"]
        self._image_digest = (image_info.get("RepoDigests") or [image_info["Id"]])[0]
        identity = await self._resolve_identity()
        self._identity = identity
        # GPUs before the workspace: a busy pool refuses at once, before any container runs
        self._report(15, "Assigning GPUs")
        self._gpu_uuids, self._gpus_since = await self._assign_gpus()
        workspace = await self._prepare_workspace(identity, self._image_id)
        self._server_profile = self._profile(facts)
        self._workspace = workspace
        self._identity_files = identity_file_sources(facts["identity_mountpoint"], identity.uid)
        self._report(55, "Creating your server container")
        await self._refuse_another_hubs_server()
        ip, port = await super().start()
        self._report(70, "Waiting for your server to answer")
        await self._wait_until_up(ip, port)
        self.audit.emit("server-started", **self._audit_fields())
        return ip, port

    def _another_hubs(self, container: dict) -> bool:
        other = (container["Config"].get("Labels") or {}).get(labels.HUB)
        return bool(other and self.hub_id and other != self.hub_id)

    async def _own_container(self) -> dict | None:
        """This server's container found by its name, unless another hub's database started it
        (two hubs whose names were left the same): that one is never ours to stop or remove."""
        found = await self.get_object()
        if found is not None and self._another_hubs(found):
            self.object_id = ""
            return None
        return found

    async def _refuse_another_hubs_server(self) -> None:
        """DockerSpawner removes a container in the way of a new one; never one that another
        hub on this engine runs."""
        try:
            found = await self.docker("inspect_container", self.container_name)
        except docker.errors.NotFound:
            return
        if found["State"]["Running"] and self._another_hubs(found):
            raise SpawnRefused(
                f"A server named {self.container_name} already runs on this engine for another hub "
                "(another hub database), so yours cannot take its place. Two hubs on one engine "
                "need names of their own: the hub admin must set HardenedSpawner.name_template, "
                "HardenedSpawner.workspace_volume_name and HardenedSpawner.network_name to values no "
                f"other hub uses (or, if that hub is gone for good, remove it: docker rm -f "
                f"{self.container_name}).",
                reason="name-taken",
                status_code=409,
            )

    async def create_object(self):
        """Decide the whole spec, let the guard judge it, and only then create."""
        inputs = ServerInputs(
            image=self.image,
            command=await self.get_command(),
            environment={**self.get_env(), **hardened_environment(self._identity, self._gpu_uuids)},
            owner=self.user.name,
            server_name=self.name,
            identity=self._identity,
            profile=self._server_profile,
            workspace=self._workspace,
            identity_files=self._identity_files,
            gpu_uuids=self._gpu_uuids,
            gpus_since=self._gpus_since,
            network_name=self.network_name,
            port=self.port,
            version=__version__,
            extra_binds=self.volume_binds,
            hub_id=self.hub_id,
        )
        spec = build_server_spec(
            inputs,
            await self._resolved(self.extra_create_kwargs),
            await self._resolved(self.extra_host_config),
        )
        for key in spec.overridden:
            self.log.warning("%s: %s overrides a value the spawner set", self._log_name, key)
        host_config = self.client.create_host_config(**spec.host)
        config = self.client.create_container_config(**spec.create, host_config=host_config)
        violations = check_container(config, config["HostConfig"], self._guard_policy())
        if violations:
            raise SpawnRefused(
                describe(violations),
                reason="policy",
                status_code=403,
                log_message=f"Refused {self._log_name}: " + "; ".join(map(str, violations)),
            )
        return await self.docker("create_container_from_config", config, self.container_name)

    def _guard_policy(self) -> GuardPolicy:
        return GuardPolicy(
            allowed_cap_add=frozenset(self.cap_add),
            allowed_bind_sources=frozenset(self._identity_files),
        )

    async def _resolved(self, value):
        value = self._eval_if_callable(value)
        return self._render_templates(await maybe_future(value))

    async def _wait_until_up(self, ip: str, port: int) -> None:
        """Return once the server answers; raise with its own last words if it dies first.

        The hub would otherwise wait out http_timeout and show a bare 500. The
        server is asked often (backing off from 0.1 s to 1 s); the engine is
        asked whether the container still runs only every 2 s, since dozens of
        servers may be starting at once.
        """
        url = url_path_join(f"http://{ip}:{port}", self.server.base_url, "api")
        client = AsyncHTTPClient()
        clock = asyncio.get_running_loop().time
        deadline = clock() + self.http_timeout
        delay, next_state_check = 0.1, clock()
        while clock() < deadline:
            if clock() >= next_state_check:
                state = (await self.docker("inspect_container", self.container_id))["State"]
                if not state["Running"]:
                    raise await self._died_during_start(state)
                next_state_check = clock() + 2
            try:
                response = await client.fetch(
                    HTTPRequest(url, connect_timeout=1, request_timeout=2, follow_redirects=False),
                    raise_error=False,
                )
                if response.code < 500:
                    return
            except (OSError, HTTPClientError):  # not listening yet, or gone
                pass
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
        raise SpawnRefused(
            f"Your server started but did not answer within {self.http_timeout} seconds. "
            "Try again; if it keeps happening, ask your hub admin to look at the server's log.",
            reason="timeout",
            status_code=500,
            log_message=f"{self._log_name} did not answer at {url} within {self.http_timeout}s",
        )

    async def _died_during_start(self, state: dict) -> SpawnRefused:
        logs = (await self.docker("logs", self.container_id, tail=15)).decode(errors="replace")
        tail = "\n".join(line[:300] for line in logs.strip().splitlines()[-15:])
        message = (
            f"Your server stopped while starting (exit code {state.get('ExitCode')}"
            f"{', out of memory' if state.get('OOMKilled') else ''}). Its last output:\n{tail}"
        )
        return SpawnRefused(message, reason="container-died", status_code=500)

    # --- stop and poll ---------------------------------------------------

    async def _release_gpus(self) -> None:
        released = await self.gpus.release(holder_key(self.user.name, self.name))
        if released:
            self.audit.emit("gpus-released", **self._audit_fields(devices=list(released)))
        self._gpus_held = ()

    async def remove_object(self):
        """Remove the container even while it runs: DockerSpawner's plain remove fails on a
        running one (a server left behind when the engine went away in the middle of a
        spawn) and then takes the 409 for a removal in progress, so the next spawn would
        fail on the name."""
        self.log.info("Removing container %s", self.object_id)
        try:
            await self.docker("remove_container", self.object_id, v=True, force=True)
        except docker.errors.NotFound:
            self.log.debug("Already removed container %s", self.object_id)
        except docker.errors.APIError as e:
            if e.status_code != 409:
                raise
            self.log.debug("Already removing container %s", self.object_id)

    async def stop(self, now=False):
        if not self.object_id:  # a server whose start the hub never saw finish
            await self._own_container()
        if self.object_id:
            await super().stop(now=now)
        await self._release_gpus()
        self.audit.emit("server-stopped", **self._audit_fields())

    async def poll(self):
        if not self.object_id and not self._spawn_pending:
            return await self._discard_unfinished_spawn()
        status = await super().poll()
        if status is not None and await self.gpus.held_by(holder_key(self.user.name, self.name)):
            self.audit.emit("server-died", **self._audit_fields(reason=str(status)))
            await self._release_gpus()
        return status

    async def _discard_unfinished_spawn(self) -> str:
        """The database has this server as started, but no container was ever recorded for
        it: the hub stopped in the middle of its spawn. What that spawn left is no server the
        hub can trust (its address was never recorded either): it is removed now, and the
        server reported gone, instead of the hub waiting out http_timeout for it."""
        reason = "the hub stopped in the middle of this server's spawn"
        if await self._own_container():
            self.log.warning("Removing %s's container %s: %s", self._log_name, self.object_name, reason)
            await self.remove_object()
            self.audit.emit("orphan-removed", **self._audit_fields(reason=reason))
            self.object_id = ""
        await self._release_gpus()
        return reason

    # --- audit -------------------------------------------------------------

    def _audit_fields(self, **extra) -> dict:
        handler = getattr(self, "handler", None)
        profile = getattr(self, "_server_profile", None)
        fields = {
            "user": self.user.name,
            "server_name": self.name,
            "uid": self._uid,
            "gid": self._uid,
            "client_ip": handler.request.remote_ip if handler is not None else None,
            "image": self.image,
            "image_digest": getattr(self, "_image_digest", None),
            "policy_fingerprint": profile.fingerprint() if profile else None,
            "security": _security_summary(profile) if profile else {},
            "devices": list(self._gpus_held),
            "container_id": self.object_id or None,
            "container_name": self.object_name,
        }
        fields.update(extra)
        return fields


def _security_summary(profile: SecurityProfile) -> dict:
    """The effective settings, for the audit trail (the seccomp JSON itself is too big)."""
    summary = asdict(profile)
    summary["seccomp_profile"] = "custom" if profile.seccomp_profile else "engine-default"
    summary.update(read_only_root=True, no_new_privileges=True, cap_drop=["ALL"], privileged=False)
    return summary


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
    """Run a `network` check on a setting; its error names the setting."""
    try:
        return check(proposal.value if value is None else value,
                      f"HardenedSpawner.{proposal.trait.name}")
    except NetworkConfigError as e:
        raise TraitError(str(e)) from None


# JupyterHub imports this module while it builds its app: check the config at its start
install_hub_start_checks(HardenedSpawner)
