"""One hardened lifecycle for every backend: how a server is started, refused, stopped and
found dead, written once.

`HardenedLifecycle` is the base both spawners are (`HardenedSpawner` over DockerSpawner,
`HardenedKubeSpawner` over KubeSpawner). It owns the order of a start and everything
around it:

request -> admit -> claim the UID -> assign GPUs -> launch (prepare, render, guard,
create, wait) -> audit; any failure: clean up, give the GPUs back, refuse, audit

and the GPU table, the state a user keeps across servers (their UID), the per-attempt
plan (dropped at the start of every attempt: JupyterHub keeps the spawner after a failed
spawn), the audit fields and the messages that name the class the admin configured.

A backend supplies only its verbs, each a small method named here and raising
`NotImplementedError` until it does (the way SwarmSpawner supplies services to
DockerSpawner's lifecycle): what it checks before anything of the user's is made
(`_admit`), where a user's UID is remembered and how it is claimed (`_workspace_uid`,
`_claimed_uid`, `_claim_new_uid`, `_claim_known_uid`), the launch itself (`_launch`),
removing the server (`_remove_server`), asking whether it runs (`_poll_server`), and
which running servers hold GPUs (`_holdings_source`).

`hubstart` acts for any subclass of this class, and for nothing else.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from jupyterhub.utils import maybe_future, url_path_join

from . import hub_database
from ._version import __version__
from .core.decision import BY_HUB, GpuGrant
from .core.identity import Identity, UidRequest, check_policy_uid, derived_uid, make_identity, resolve_uid
from .core.options import OptionsError, gpu_request
from .errors import SpawnRefused
from .gpu_broker import GpuBroker, HoldingsSource, broker_for, holder_key
from .quota_settings import WorkspaceQuotaSettings
from .refusals import Row, Situation, as_refusal
from .server_events import ServerEvents
from .settings import HardenedSettings


class HardenedLifecycle(ServerEvents, WorkspaceQuotaSettings, HardenedSettings):
    """The hardened start, stop and poll (module docstring); a backend adds its verbs."""

    if TYPE_CHECKING:  # the base spawner's attributes this reads
        user: Any
        name: str
        hub: Any
        image: str
        user_options: dict

    #: the backend's rows of the refusal table (`refusals`), after the shared ones
    refusals: ClassVar[Sequence[Row]] = ()
    #: whether an admin may name the GPU devices (on Kubernetes the scheduler picks them)
    devices_choosable: ClassVar[bool] = True
    #: who picks the devices of a grant (`core.decision.GpuGrant.picked_by`)
    devices_picked_by: ClassVar[str] = BY_HUB
    #: state keys a user keeps across servers -> the attribute holding each: never cleared
    kept_state: ClassVar[dict[str, str]] = {"uid": "_uid"}

    _uid: int | None = None
    _gpus_held: tuple[str, ...] = ()
    _plan: Any = None
    #: why the next stop happens, for the audit trail: set by the GPU reclaim API (`gpu_pages`)
    stop_reason: str | None = None
    _polling = False
    _removed_while_polling = False

    # --- the hub --------------------------------------------------------------

    @property
    def setting_owner(self) -> str:
        """The class the admin configured, as messages name settings (`c.<it>.<setting>`)."""
        return type(self).__name__

    @property
    def hub_id(self) -> str:
        return hub_database.hub_id(getattr(self.user, "db", None))

    async def hub_start_work(self, app) -> None:
        """Once, in the background, when the hub starts (`hubstart`)."""

    # --- state: what a user keeps across servers ------------------------------

    def load_state(self, state):
        super().load_state(state)
        for key, attribute in self.kept_state.items():
            setattr(self, attribute, state.get(key, getattr(self, attribute)))

    def get_state(self):
        state = super().get_state()
        for key, attribute in self.kept_state.items():
            value = getattr(self, attribute)
            if value is not None and value != "":
                state[key] = value
        return state

    def clear_state(self):
        """Forget the server, never the UID: it owns the user's files."""
        kept = {attribute: getattr(self, attribute) for attribute in self.kept_state.values()}
        super().clear_state()
        for attribute, value in kept.items():
            setattr(self, attribute, value)

    # --- the start --------------------------------------------------------------

    def _asked_image(self) -> str:
        """The image this attempt asks for, as the audit trail names it from the first event."""
        return self.image

    async def _hardened_start(self):
        """One attempt to start the server (module docstring); what `_launch` returns."""
        self._plan = None  # nothing of an earlier attempt reaches this one's events
        self.audit.emit("spawn-requested", **self._audit_fields(image=self._asked_image()))
        try:
            self._report(5, "Checking your identity")
            admitted = await self._admit()
            identity, workspace = await self._claim_identity()
            # GPUs before the workspace: a busy pool refuses at once, before anything runs
            self._report(15, "Assigning GPUs")
            gpus = await self._assign_gpus()
            result = await self._launch(identity, gpus, admitted, workspace)
        except Exception as e:
            await self._release_gpus()
            refusal = self._as_refusal(e)
            self.audit.emit("spawn-refused", **self._audit_fields(reason=refusal.jupyterhub_message))
            if refusal is e:
                raise
            raise refusal from e
        else:
            self.audit.emit("server-started", **self._audit_fields())
            return result
        finally:
            self._end_events()

    def _as_refusal(self, e: Exception) -> SpawnRefused:
        board = url_path_join(self.hub.base_url, "gpus") if self.gpu_board else ""
        return as_refusal(e, Situation(self.image, self._backend_address(), board), self.log, self._log_name,
                          self.refusals)

    # --- identity ---------------------------------------------------------------

    async def _claim_identity(self) -> tuple[Identity, Any]:
        """The user's UID, and what the backend found of their workspace (`_workspace_uid`): the UID their state keeps,
        else the one their workspace carries, else their UID claim's, else `uid_map`'s,
        else the first free one from `uid_min + hub user id`; claimed on the backend before
        anyone else can take it (one spawn at a time per hub; across hubs the backend's
        claims decide)."""
        async with self._uid_lock():
            workspace, remembered = await self._workspace_uid()
            if self._uid is None and remembered is None:  # a claim is all a new workspace has
                remembered = await self._claimed_uid()
            offer, static = derived_uid(self.user.id, self.uid_min, self.uid_max), await self._static_uid()
            decision = resolve_uid(self.user.name, from_state=self._uid, from_workspace=remembered,
                                   from_policy=offer if static is None else static, static=static is not None)
            if decision.warning:
                self.log.warning(decision.warning)
            request = UidRequest(self.user.name, self._workspace_name(), offer, self.uid_min, self.uid_max,
                                 __version__, self.setting_owner)
            if decision.uid is None:
                uid = await self._claim_new_uid(request)
            else:
                uid = decision.uid
                await self._claim_known_uid(uid, decision.source, request)
        self._uid = uid
        return make_identity(self.user.name, uid, self.home_template), workspace

    async def _static_uid(self) -> int | None:
        """The UID `uid_map` gives this user, or None when it gives none."""
        if callable(self.uid_map):
            uid = await maybe_future(self.uid_map(self))
        elif self.user.name in self.uid_map:
            uid = self.uid_map[self.user.name]
        else:
            return None
        return check_policy_uid(uid, self.user.name, owner=self.setting_owner)

    def _uid_lock(self) -> contextlib.AbstractAsyncContextManager:
        """What serialises UID decisions in this hub (none needed where the backend's claims
        alone decide)."""
        return contextlib.nullcontext()

    # --- GPUs -------------------------------------------------------------------

    @property
    def gpus(self) -> GpuBroker:
        """The hub's GPU table for this inventory and policy (`gpu_broker.broker_for`),
        rebuilt from the servers that run before its first use."""
        settings = json.dumps([self._gpu_table_settings(), repr(self._gpu_policy())], default=repr)
        allocator, source, log = self.gpu_allocator, self._holdings_source(), self.log
        return broker_for(f"{self._gpu_table_scope()}|{self.hub_id}", settings,
                          lambda: GpuBroker(allocator(), source, log))

    def _gpu_table_settings(self):
        """What, besides the policy, picks the devices: the inventory."""
        return self.gpu_inventory

    async def _assign_gpus(self) -> GpuGrant:
        try:
            count, devices = gpu_request(self.user_options)
        except OptionsError as e:
            raise SpawnRefused(str(e), reason="options") from None
        if devices is not None and not self.devices_choosable:
            raise SpawnRefused("On Kubernetes the scheduler picks the GPUs; ask for a number of them.",
                               reason="gpu", status_code=403)
        if devices is not None and not self.user.admin:
            raise SpawnRefused("Only admins may choose GPU devices.", reason="gpu", status_code=403)
        groups = [g.name for g in self.user.groups]
        held, since = await self.gpus.assign(holder_key(self.user.name, self.name), groups, count, devices,
                                             owner=self.user.name)
        self._gpus_held = held
        if held:
            self.audit.emit("gpus-assigned", **self._audit_fields(devices=list(held)))
        return GpuGrant(held, since.isoformat(), picked_by=self.devices_picked_by)

    async def _release_gpus(self, reason: str | None = None) -> None:
        released = await self.gpus.release(holder_key(self.user.name, self.name))
        if released:
            self.audit.emit("gpus-released", **self._audit_fields(devices=list(released), reason=reason))
        self._gpus_held = ()

    # --- stop and poll ------------------------------------------------------------

    async def _table_knows_this_server(self) -> None:
        """Before a server goes, the GPU table has read it: after a hub restart the table is
        rebuilt from the servers that run, and one removed (or found dead) first would never
        be read, so its GPUs would go back without a `gpus-released` in the trail."""
        await self.gpus.held_by(holder_key(self.user.name, self.name))

    async def stop(self, now=False):
        await self._table_knows_this_server()
        await self._remove_server(now)
        if self._polling:  # the backend's poll removed a server that ended by itself: poll records it
            self._removed_while_polling = True
            return
        reason, self.stop_reason = self.stop_reason, None
        await self._release_gpus(reason)
        self.audit.emit("server-stopped", **self._audit_fields(reason=reason))

    async def poll(self):
        """The backend's answer; a server found ended that held GPUs (or that the backend's
        poll removed) is recorded as died, and its GPUs go back to the pool. The hub does
        not call `stop` for a server it found dead."""
        await self._table_knows_this_server()
        self._polling, self._removed_while_polling = True, False
        try:
            status = await self._poll_server()
        finally:
            self._polling = False
        if status is not None and (self._removed_while_polling
                                   or await self.gpus.held_by(holder_key(self.user.name, self.name))):
            self.audit.emit("server-died", **self._audit_fields(reason=str(status)))
            await self._release_gpus()
        return status

    # --- the backend's verbs --------------------------------------------------------

    def _backend_address(self) -> str:
        """Where the backend is asked, for messages (the engine's address, the API's)."""
        raise NotImplementedError

    def _gpu_table_scope(self) -> str:
        """Which servers one GPU table covers (an engine, a namespace)."""
        raise NotImplementedError

    def _holdings_source(self) -> HoldingsSource:
        """An async callable listing who holds which GPU among the running servers. It may
        keep hub-wide things only (it outlives this spawner in the hub's GPU table)."""
        raise NotImplementedError

    def _containers_source(self):
        """An async callable giving this hub's running server containers by id, as
        `gpu_broker.holder_key`s (the GPU sampler maps NVML's processes through it). Only a
        backend whose GPUs are the hub host's own has one."""
        raise NotImplementedError(f"{type(self).__name__} does not sample GPU utilisation")

    async def _admit(self) -> Any:
        """What is checked before anything of the user's is made; handed on to `_launch`."""
        raise NotImplementedError

    def _workspace_name(self) -> str:
        raise NotImplementedError

    async def _workspace_uid(self) -> tuple[Any, int | None]:
        """What the backend found of the user's workspace (None when nothing; handed on to
        `_launch`), and the UID it carries (None when none)."""
        raise NotImplementedError

    async def _claimed_uid(self) -> int | None:
        """The UID the backend's claims hold for this user's workspace, if any."""
        raise NotImplementedError

    async def _claim_new_uid(self, request: UidRequest) -> int:
        raise NotImplementedError

    async def _claim_known_uid(self, uid: int, source: str, request: UidRequest) -> None:
        """Claim the UID the user already has (``source``: where `resolve_uid` found it)."""
        raise NotImplementedError

    async def _launch(self, identity: Identity, gpus: GpuGrant, admitted: Any, workspace: Any):
        """Prepare the workspace, render the server, let the guard judge it, create it and
        wait until it answers; sets `_plan`. Returns what the hub's `start` expects. What a
        failed launch made that no one can use is the launch's to remove."""
        raise NotImplementedError

    async def _remove_server(self, now: bool) -> None:
        raise NotImplementedError

    async def _poll_server(self):
        raise NotImplementedError
