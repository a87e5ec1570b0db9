"""HardenedSpawner: the Docker backend's verbs under the one hardened lifecycle.

The order of a start, its refusals and audit, GPU assignment and the state a user
keeps are the shared lifecycle's (`lifecycle.HardenedLifecycle`). This class says
what each step means on one Docker engine, with every decision in a pure module
(identity, profile, guard, container, workspace, gpus):

admit (engine facts, isolation, the image) -> the UID's claim volume -> (GPUs) ->
in a start slot: workspace -> container spec -> guard -> create -> start -> wait
"""

from __future__ import annotations

from dataclasses import dataclass

import docker.errors
from dockerspawner import DockerSpawner
from jupyterhub.utils import maybe_future, url_path_join
from tornado import web

from .. import hub_database, labels
from .._version import __version__
from ..core.decision import GpuGrant, decide
from ..core.egress import NetworkConfigError
from ..core.identity import Identity, UidRequest
from ..core.profile import SecurityProfile
from ..core.violations import describe
from ..errors import SpawnRefused
from ..gpu_broker import HoldingsSource
from ..lifecycle import HardenedLifecycle
from . import admission, hub_start, uid_claims
from .container import DockerPlacement, WorkspaceMount, build_server_spec
from .engine import gather_engine_facts, image_for_start, running_servers
from .guard import GuardPolicy, check_container
from .holdings import containers_by_id, holdings_from_containers
from .hub_context import (
    UNREACHABLE,
    EngineFacts,
    HubContext,
    IsolationCheck,
    connect,
    context_key,
    engine_address,
    engine_settings,
    hub_context,
)
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


@dataclass(frozen=True)
class Admitted:
    """What `_admit` found before anything of the user's is made: the engine's facts and the
    image's ``inspect`` (admitted)."""

    facts: EngineFacts
    image: dict


class HardenedSpawner(WorkspaceSteps, ImageAdmissionSettings, DockerSettings, HardenedLifecycle, DockerSpawner):
    """A DockerSpawner whose users each run as their own UID in a locked-down container.

    The shared lifecycle (with the shared settings, `WorkspaceQuotaSettings` among them)
    calls the verbs below; DockerSpawner's own ``stop`` and ``poll`` are called by name,
    under the lifecycle's.
    """

    refusals = REFUSALS
    kept_state = {**HardenedLifecycle.kept_state, "workspace_prepared": "_prepared"}
    _prepared: str = ""
    _plan: StartPlan | None = None

    def check_config(self) -> None:
        """The shared settings' checks, then Docker's (run once at hub start: `hubstart`)."""
        super().check_config()
        self.check_docker_config()

    async def hub_start_work(self, app) -> None:
        """Once, in the background, when the hub starts (`docker.hub_start`)."""
        await hub_start.hub_start_work(self, app)

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

    def _backend_address(self) -> str:
        return self.context.address

    def _gpu_table_scope(self) -> str:
        return "docker:" + context_key(engine_settings(self.tls_config, self.client_kwargs), self.docker_threads)

    def _holdings_source(self) -> HoldingsSource:
        context, hub_id, db, audit, log = self.context, self.hub_id, getattr(self.user, "db", None), self.audit, self.log

        async def holdings():
            servers = await running_servers(context, hub_id, lambda: hub_database.servers_in_database(db), audit, log)
            return holdings_from_containers(servers)

        return holdings

    def _containers_source(self):
        context, hub_id = self.context, self.hub_id

        async def containers():
            running = await context.docker("containers", filters=labels.MANAGED_SERVERS)
            return containers_by_id(running, hub_id)

        return containers

    async def engine_facts(self) -> EngineFacts:
        """Facts about the engine every spawn needs, asked once per hub process and users'
        network: AppArmor support, the identity volume's host path, the network itself.
        Nothing is kept when the engine does not answer: the next spawn asks again."""
        context = self.context
        async with context.engine_lock:
            facts = context.engine_facts.get(self.network_name)
            if facts is None:
                facts = await gather_engine_facts(
                    context, self.network_name, self.network_bridge_name, self.network_isolation, self.log)
                if facts.cpus and self.cpu_limit > facts.cpus:
                    self.log.warning(
                        "%s.cpu_limit is %s but the engine has %s CPUs; servers get %s (the engine refuses more).",
                        self.setting_owner, self.cpu_limit, facts.cpus, facts.cpus,
                    )
                if not facts.apparmor and self.apparmor_profile:
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

    # --- the lifecycle's verbs: admit, claim -----------------------------------

    def _asked_image(self) -> str:
        return self.user_options.get("image") or self.image

    async def start(self):
        self._start_events()
        return await self._hardened_start()

    async def _admit(self) -> Admitted:
        """The engine's facts, the users' network's isolation and the image (allowed, there,
        admitted), before anything of the user's is made."""
        facts = await self.engine_facts()
        await self._require_isolation()
        if self.user_options.get("image"):
            self.image = await self._allowed_image(self.user_options["image"])
        image = await image_for_start(self.docker, self.image, self.pull_policy, self.pull_image)
        await self._admit_image(image)
        return Admitted(facts, image)

    async def _allowed_image(self, asked: str) -> str:
        """The image the user chose, if `allowed_images` offers it (DockerSpawner's check,
        whose 400 becomes a refusal that names the choices)."""
        try:
            return await self.check_allowed(asked)
        except web.HTTPError as e:
            if e.status_code != 400:
                raise
            offered = self._get_allowed_images()
            choices = ", ".join(offered) if isinstance(offered, dict) and offered else ""
            raise SpawnRefused(
                f"The image {asked!r} is not one this hub offers."
                + (f" Choose one of: {choices}." if choices else " This hub does not let users choose an image."),
                reason="image", status_code=400,
            ) from None

    async def _admit_image(self, image: dict) -> None:
        """Judge the image before anything of the user's is made (`docker.admission`)."""
        if self.image_admission:
            self._report(10, "Checking the image")
            verdict = await admission.admit(self.context, self.context.images, self.admission_settings(),
                                            self.image, image, tuple(self.cmd or ()))
            admission.record(verdict, lambda event, **fields: self.audit.emit(event, **self._audit_fields(**fields)))
            if not verdict.admitted:
                raise admission.refusal(verdict, self._log_name)

    def _uid_lock(self):
        return self.context.uid_lock

    def _workspace_name(self) -> str:
        return self._workspace_source()[0]

    async def _claimed_uid(self) -> int | None:
        return await self.context.run(uid_claims.claimed_uid, self.client, self.user.name, self._workspace_name())

    async def _claim_new_uid(self, request: UidRequest) -> int:
        uid = await self.context.run(uid_claims.claim_free_uid, self.client, request, self.log)
        self.context.claimed[(self.user.name, request.workspace)] = uid
        return uid

    async def _claim_known_uid(self, uid: int, source: str, request: UidRequest) -> None:
        key = (self.user.name, request.workspace)
        if self.context.claimed.get(key) != uid:  # not yet checked in this process
            await self.context.run(uid_claims.claim_known_uid, self.client, uid, source, request, self.log)
            self.context.claimed[key] = uid

    # --- the lifecycle's verbs: launch ---------------------------------------------

    async def _launch(self, identity: Identity, gpus: GpuGrant, admitted: Admitted, workspace: dict | None):
        facts, image = admitted.facts, admitted.image
        async with self._start_slot(facts.cpus):  # the part that costs the engine's CPU
            mount = await self._prepare_workspace(identity, image["Id"], workspace)
            self._plan = StartPlan(
                identity=identity,
                gpus=gpus,
                profile=self.security_profile(facts),
                workspace=mount,
                identity_files=identity_file_sources(facts.identity_mountpoint, identity.uid),
                image_digest=(image.get("RepoDigests") or [image["Id"]])[0],
                image_cmd=tuple(image["Config"].get("Cmd") or ()),
            )
            self._report(55, "Creating your server container")
            try:
                ip, port, state = await self._create_and_start()
                self._report(70, "Waiting for your server to answer")
                url = url_path_join(f"http://{ip}:{port}", self.server.base_url, "api")
                await wait_until_up(self.context, self.container_id, state, url, self.http_timeout, self._log_name)
            except Exception:
                await self._remove_failed_container()
                raise
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

    async def _remove_failed_container(self) -> None:
        """The container of a start that failed is removed: why it failed went to the user
        and the hub log already, and an exited container that no one starts again would only
        be listed by ``check``. (Never another hub's: `_create_and_start` forgets that one.)"""
        if self.object_id:
            try:
                await self.remove_object()
            except UNREACHABLE as e:
                self.log.warning("Could not remove %s's failed container %s: %s", self._log_name, self.object_id, e)
            self.object_id = ""

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
            log_config=self.container_log_config(),
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

    # --- the lifecycle's verbs: stop and poll ------------------------------------

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

    async def _remove_server(self, now: bool) -> None:
        if not self.object_id:  # a server whose start the hub never saw finish
            await self._own_container()
        if self.object_id:
            await DockerSpawner.stop(self, now=now)

    async def _poll_server(self):
        if not self.object_id and not self._spawn_pending:
            return await self._discard_unfinished_spawn()
        return await DockerSpawner.poll(self)

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

    def _workspace_quota(self) -> int | None:
        return self._plan.workspace.quota if self._plan else None
