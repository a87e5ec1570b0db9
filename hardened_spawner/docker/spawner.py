"""HardenedSpawner: the glue between JupyterHub, the policy modules and the engine.

Every decision lives in a pure module (identity, profile, guard, container,
workspace, gpus); this class reads the settings, asks the engine what it
must know, calls those functions in order and reports progress, refusals and
events. ``start`` is the whole story:

identity -> GPUs -> workspace -> container spec -> guard -> create -> start -> wait
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import docker.errors
from dockerspawner import DockerSpawner
from jupyterhub.utils import maybe_future, url_path_join

from .. import hub_database, labels
from .._version import __version__
from ..core.decision import GpuGrant, decide
from ..core.egress import NetworkConfigError
from ..core.identity import Identity, UidRequest, check_policy_uid, derived_uid, make_identity, resolve_uid
from ..core.options import OptionsError, gpu_request
from ..core.profile import SecurityProfile
from ..core.violations import describe
from ..errors import SpawnRefused
from ..gpu_broker import GpuBroker, holder_key
from ..refusals import Situation, as_refusal
from ..server_events import ServerEvents
from ..settings import HardenedSettings
from . import admission, hub_start, uid_claims
from .container import DockerPlacement, WorkspaceMount, build_server_spec
from .engine import gather_engine_facts, image_for_start, running_servers
from .guard import GuardPolicy, check_container
from .hub_context import HubContext, IsolationCheck, connect, engine_address, engine_settings, hub_context
from .image_settings import ImageAdmissionSettings
from .isolation import hub_check
from .isolation.policy import IsolationPolicy, hub_endpoint, isolation_settings, policy_from_settings
from .readiness import wait_until_up
from .refusals import TABLE as REFUSALS
from .refusals import name_taken
from .settings import DockerSettings
from .start_queue import default_limit, place_message
from .workspace import identity_file_sources
from .workspace_steps import WorkspaceSteps


@dataclass(frozen=True)
class StartPlan:
    """What one start decided before the container is created: `create_object` and the
    audit read it, nothing else carries it from step to step."""

    identity: Identity
    gpus: GpuGrant
    profile: SecurityProfile
    workspace: WorkspaceMount
    identity_files: dict[str, str]
    image_digest: str
    image_cmd: tuple[str, ...]  # the image's CMD, for `get_command`


class HardenedSpawner(WorkspaceSteps, ServerEvents, ImageAdmissionSettings, DockerSettings, HardenedSettings,
                      DockerSpawner):
    """A DockerSpawner whose users each run as their own UID in a locked-down container."""

    _plan: StartPlan | None = None

    def check_config(self) -> None:
        """The shared settings' checks, then Docker's (run once at hub start: `hubstart`)."""
        super().check_config()
        self.check_docker_config()

    async def hub_start_work(self, app) -> None:
        """Once, in the background, when the hub starts (`docker.hub_start`)."""
        await hub_start.hub_start_work(self, app)

    #: why the next stop happens, for the audit trail: set by the GPU reclaim API (`gpu_pages`)
    stop_reason: str | None = None

    # --- hub-wide shared pieces (one `HubContext` per set of engine settings) ---

    @property
    def context(self) -> HubContext:
        """Everything the hub's spawners share: see `hub_context`. Found once per spawner."""
        if self._context is None:
            self._context = hub_context(
                engine_settings(self.tls_config, self.client_kwargs), self.docker_threads,
                lambda: connect(self.tls_config, self.client_kwargs, self.docker_threads),
                address=engine_address(self.client_kwargs),
            )
        return self._context

    _context: HubContext | None = None

    @property
    def client(self):
        """The hub's one engine client (DockerSpawner's lazy class-level one is not thread-safe)."""
        return self.context.client

    @property
    def executor(self):
        """A pool shared by all users, so one slow Docker call does not queue the others."""
        return self.context.executor

    @property
    def gpus(self) -> GpuBroker:
        """The GPU table for this inventory and policy, one per hub."""
        key = json.dumps([self.gpu_inventory, repr(self._gpu_policy())], default=repr)
        hub_id, db = self.hub_id, getattr(self.user, "db", None)
        audit, log = self.audit, self.log
        context = self.context

        def build() -> GpuBroker:
            async def running() -> list[dict]:
                return await running_servers(context, hub_id, lambda: hub_database.servers_in_database(db), audit, log)

            return GpuBroker(self.gpu_allocator(), running, self.log)

        return context.broker(key, build)

    @property
    def hub_id(self) -> str:
        return hub_database.hub_id(getattr(self.user, "db", None))

    async def engine_facts(self) -> dict:
        """Facts about the engine every spawn needs, asked once per hub process and users'
        network: AppArmor support, the identity volume's host path, the network itself.
        Nothing is kept when the engine does not answer: the next spawn asks again."""
        context = self.context
        async with context.engine_lock:
            facts = context.engine_facts.get(self.network_name)
            if facts is None:
                facts = await gather_engine_facts(
                    context, self.network_name, self.network_bridge_name, self.network_isolation, self.log)
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

    async def hub_policy(self) -> IsolationPolicy:
        """What the rules must allow for this hub, from its settings and its API URL (the
        same function `check` and `firewall -f` use; a host name is resolved there)."""
        settings = isolation_settings(self, *hub_endpoint(self.hub.api_url))
        return await self.context.run(policy_from_settings, settings)

    async def check_isolation(self, force: bool = False) -> IsolationCheck:
        """What is missing of the users' network's isolation (see `isolation.hub_check`)."""
        policy, why = None, ""
        try:
            policy = await self.hub_policy()
        except (NetworkConfigError, OSError) as e:
            why = str(e)
        return await hub_check.current_check(
            self.context, self.network_name, policy, why, method=self.firewall_check_method,
            image=self.image, interval=self.firewall_check_interval, required=self.firewall_required,
            log=self.log, force=force,
        )

    async def _require_isolation(self) -> None:
        if self.network_isolation:
            refusal = hub_check.refusal(await self.check_isolation(), self.firewall_required, self._log_name)
            if refusal is not None:
                raise refusal

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

    # --- start, step by step -----------------------------------------------

    async def _static_uid(self) -> int | None:
        """The UID `uid_map` gives this user, or None when it gives none."""
        if callable(self.uid_map):
            uid = await maybe_future(self.uid_map(self))
            return check_policy_uid(uid, self.user.name)
        if self.user.name in self.uid_map:
            return check_policy_uid(self.uid_map[self.user.name], self.user.name)
        return None

    async def _resolve_identity(self) -> tuple[Identity, bool]:
        """The user's UID: the one their files already carry, else `uid_map`'s, else the
        first UID from `uid_min + hub user id` on that no label on the engine holds; and
        whether the workspace volume exists (`_prepare_workspace` need not ask again).

        One spawn at a time decides (per hub; across hubs the engine's claim volumes
        decide), and the UID is claimed on the engine before anyone else can pick it.
        """
        async with self.context.uid_lock:
            workspace = self._workspace_source()[0]
            workspace_found, remembered = await self._workspace_uid()
            if self._uid is None and remembered is None:  # a claim is all a new workspace has
                remembered = await self.context.run(uid_claims.claimed_uid, self.client, self.user.name, workspace)
            offer, static = derived_uid(self.user.id, self.uid_min, self.uid_max), await self._static_uid()
            decision = resolve_uid(
                self.user.name,
                from_state=self._uid,
                from_workspace=remembered,
                from_policy=offer if static is None else static,
                static=static is not None,
            )
            if decision.warning:
                self.log.warning(decision.warning)
            uid = decision.uid
            request = UidRequest(self.user.name, workspace, offer, self.uid_min, self.uid_max, __version__)
            if uid is None:
                uid = await self.context.run(uid_claims.claim_free_uid, self.client, request, self.log)
            elif self.context.claimed.get((self.user.name, workspace)) != uid:  # not yet in this process
                await self.context.run(uid_claims.claim_known_uid, self.client, uid, decision.source,
                                       request, self.log)
            self.context.claimed[(self.user.name, workspace)] = uid
        self._uid = uid
        return make_identity(self.user.name, uid, self.home_template), workspace_found

    async def _assign_gpus(self) -> GpuGrant:
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
        return GpuGrant(uuids, since.isoformat())

    async def start(self):
        self._start_events()
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
            self._end_events()

    def _as_refusal(self, e: Exception) -> SpawnRefused:
        board = url_path_join(self.hub.base_url, "gpus") if self.gpu_board else ""
        return as_refusal(e, Situation(self.image, self.context.address, board), self.log, self._log_name,
                          REFUSALS)

    async def _start(self):
        self._report(5, "Checking your identity")
        facts = await self.engine_facts()
        await self._require_isolation()
        if self.user_options.get("image"):
            self.image = await self.check_allowed(self.user_options["image"])
        image = await image_for_start(self.docker, self.image, self.pull_policy, self.pull_image)
        await self._admit_image(image)
        identity, workspace_found = await self._resolve_identity()
        # GPUs before the workspace: a busy pool refuses at once, before any container runs
        self._report(15, "Assigning GPUs")
        gpus = await self._assign_gpus()
        async with self._start_slot(facts["cpus"]):  # the part that costs the engine's CPU
            workspace = await self._prepare_workspace(identity, image["Id"], workspace_found)
            self._plan = StartPlan(
                identity=identity,
                gpus=gpus,
                profile=self.security_profile(facts),
                workspace=workspace,
                identity_files=identity_file_sources(facts["identity_mountpoint"], identity.uid),
                image_digest=(image.get("RepoDigests") or [image["Id"]])[0],
                image_cmd=tuple(image["Config"].get("Cmd") or ()),
            )
            self._report(55, "Creating your server container")
            ip, port, state = await self._create_and_start()
            self._report(70, "Waiting for your server to answer")
            url = url_path_join(f"http://{ip}:{port}", self.server.base_url, "api")
            await wait_until_up(self.context, self.container_id, state, url, self.http_timeout, self._log_name)
        self.audit.emit("server-started", **self._audit_fields())
        return ip, port

    def _start_slot(self, engine_cpus: int):
        """One of the engine's start slots (`start_queue`): waits its turn while too many
        servers are starting, as long as `start_timeout` leaves time for the start after it."""
        limit = default_limit(engine_cpus) if self.concurrent_starts is None else self.concurrent_starts
        first = True  # the hub log hears of the wait once, the spawn page of every move

        def tell(ahead: int, starting: int) -> None:
            nonlocal first
            self._report(20, place_message(ahead, starting), log=first)
            first = False

        return self.context.start_queue.slot(limit, self.start_timeout, tell)

    async def _admit_image(self, image: dict) -> None:
        """Judge the image before anything of the user's is made (`docker.admission`)."""
        if self.image_admission:
            self._report(10, "Checking the image")
            verdict = await admission.admit(self.context, self.context.images, self.admission_settings(),
                                            self.image, image, tuple(self.cmd or ()))
            admission.record(verdict, lambda event, **fields: self.audit.emit(event, **self._audit_fields(**fields)))
            if not verdict.admitted:
                raise admission.refusal(verdict, self._log_name)

    async def _create_and_start(self) -> tuple[str, int, dict]:
        """What `DockerSpawner.start` does after its image check and pull (done once, above):
        remove a container left in the way (never one another hub runs), create, start. The
        server's address and the container's state then (`wait_until_up` starts from it), from
        one ``inspect``."""
        found = await self.get_object()
        if found is not None:
            if found["State"]["Running"] and self._another_hubs(found):
                self.object_id = ""  # not ours: the cleanup after this refusal must not touch it
                raise name_taken(self.container_name)
            self.log.warning("Removing the container left in the way: %s", self.container_name)
            await self.remove_object()
        self.object_id = (await self.create_object())[self.object_id_key]
        await self.start_object()
        if self.post_start_cmd:
            await self.post_start_exec()
        started = await self.docker("inspect_container", self.container_id)
        return *self._address(started), started["State"]

    def _address(self, container: dict) -> tuple[str, int]:
        """The server's address on the users' network, from the container's ``inspect``
        (what DockerSpawner's `get_ip_and_port` asks the engine again for: `use_internal_ip`
        is always True here, servers publish no port)."""
        if self.use_internal_hostname:
            return self.internal_hostname, self.port
        return self.get_network_ip(container["NetworkSettings"]), self.port

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

    async def create_object(self):
        """Decide the whole spec, let the guard judge it, and only then create."""
        plan = self._plan
        decision = decide(
            owner=self.user.name,
            server_name=self.name,
            image=self.image,
            command=await self.get_command(),
            port=self.port,
            identity=plan.identity,
            profile=plan.profile,
            workspace=plan.workspace.source,
            gpus=plan.gpus,
            hub_environment=self.get_env(),
        )
        placement = DockerPlacement(
            workspace=plan.workspace,
            identity_files=plan.identity_files,
            network_name=self.network_name,
            version=__version__,
            extra_binds=self.volume_binds,
            hub_id=self.hub_id,
        )
        spec = build_server_spec(
            decision,
            placement,
            await self._resolved(self.extra_create_kwargs),
            await self._resolved(self.extra_host_config),
        )
        for key in spec.overridden:
            self.log.warning("%s: %s overrides a value the spawner set", self._log_name, key)
        host_config = self.client.create_host_config(**spec.host)
        config = self.client.create_container_config(**spec.create, host_config=host_config)
        policy = GuardPolicy(frozenset(self.cap_add), frozenset(plan.identity_files))
        violations = check_container(config, config["HostConfig"], policy)
        if violations:
            raise SpawnRefused(
                describe(violations),
                reason="policy",
                status_code=403,
                log_message=f"Refused {self._log_name}: " + "; ".join(map(str, violations)),
            )
        return await self.docker("create_container_from_config", config, self.container_name)

    async def get_command(self):
        """DockerSpawner's, with the image's CMD from this start's plan (not asked again)."""
        if self.cmd or self._plan is None:
            return await super().get_command()
        return list(self._plan.image_cmd) + self.get_args()

    async def _resolved(self, value):
        value = self._eval_if_callable(value)
        return self._render_templates(await maybe_future(value))

    # --- stop and poll ---------------------------------------------------

    async def _release_gpus(self, reason: str | None = None) -> None:
        released = await self.gpus.release(holder_key(self.user.name, self.name))
        if released:
            self.audit.emit("gpus-released", **self._audit_fields(devices=list(released), reason=reason))
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
        reason, self.stop_reason = self.stop_reason, None
        await self._release_gpus(reason)
        self.audit.emit("server-stopped", **self._audit_fields(reason=reason))

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

    def _audit_object(self) -> dict:
        return {"container_id": self.object_id or None, "container_name": self.object_name}
