"""The user's workspace on the engine, for one start: found (its label tells a returning
user's UID), made if missing (a quota'd btrfs subvolume, or a volume with the engine's XFS
``size``, when the user has a quota: `docker.quota`), its quota brought to what the settings
say, and prepared by the helper container when it is new or the identity or image changed
(`workspace` decides, `workspace_helper` runs inside).

`WorkspaceSteps` is a mixin of `HardenedSpawner`; its state (`_prepared`) and the quota
settings it carries out (`quota_settings.WorkspaceQuotaSettings`, shared with Kubernetes
through `lifecycle.HardenedLifecycle`) are the spawner's.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import docker.errors

from .. import labels
from .._version import __version__
from ..core.quota import BTRFS, ENGINE_SIZE, NO_METHOD, NO_QUOTA, QuotaPolicy, docker_method, format_size
from . import quota
from .container import WorkspaceMount
from .engine import ensure_volume, run_helper
from .workspace import PreparedMarker, helper_container_spec, interpret_helper_result, volume_labels


class WorkspaceSteps:
    """Finding, making (with its quota) and preparing the user's workspace for a start."""

    if TYPE_CHECKING:  # the spawner's, read below
        context: Any
        user: Any
        log: Any
        image: str
        workspace_host_path: str
        workspace_volume_name: str
        workspace_btrfs_root: str
        workspace_allow_adopt: bool
        workspace_quota_required: bool
        _log_name: str
        _prepared: str

        @property
        def hub_id(self) -> str: ...
        def _render_templates(self, text: str) -> str: ...
        def _report(self, progress: int, message: str, log: bool = True) -> None: ...
        async def docker(self, method: str, *args, **kwargs) -> Any: ...
        def quota_policy(self) -> QuotaPolicy: ...
        def quota_summary(self) -> str: ...
        def workspace_quota_for(self, groups) -> int | None: ...

    def _workspace_source(self) -> tuple[str, bool]:
        if self.workspace_host_path:
            return self._render_templates(self.workspace_host_path), True
        return self._render_templates(self.workspace_volume_name), False

    async def _workspace_uid(self) -> tuple[dict | None, int | None]:
        """The workspace volume's ``inspect`` (None when there is none) and the UID its label
        names (a host folder: neither; the helper decides about it)."""
        source, is_host_path = self._workspace_source()
        if is_host_path:
            return None, None
        try:
            volume = await self.docker("inspect_volume", source)
        except docker.errors.NotFound:
            return None, None
        return volume, int((volume.get("Labels") or {}).get(labels.UID, "") or 0) or None

    async def _prepare_workspace(self, identity, image_id: str, volume: dict | None) -> WorkspaceMount:
        """The workspace mount, its volume made if this start did not find it (``volume``:
        the ``inspect`` `_workspace_uid` got just before; its options tell its quota), its
        quota applied, and prepared when needed."""
        source, is_host_path = self._workspace_source()
        wanted = self.workspace_quota_for([group.name for group in self.user.groups])
        method = docker_method(wanted, btrfs_root=self.workspace_btrfs_root, host_path=is_host_path)
        created, enforced = False, None
        if method == NO_METHOD:
            self._quota_unenforced(wanted, method, source, "a host folder (workspace_host_path) has no quota")
        elif volume is not None and (method != NO_QUOTA or self.workspace_btrfs_root):
            enforced = await self._update_quota(source, volume, wanted, method)
        elif not is_host_path and volume is None:
            created, enforced = await self._make_volume(
                source, volume_labels(self.user.name, identity, __version__), wanted, method)
        mount = WorkspaceMount(source, identity.home, host_path=is_host_path, quota=enforced)
        marker = PreparedMarker(source, identity.uid, image_id).as_state()
        if created or marker != self._prepared:
            self._report(30, "Preparing your workspace")
            create, host = helper_container_spec(
                image=self.image, volume=mount.source, identity=identity, owner=self.user.name,
                allow_adopt=self.workspace_allow_adopt, version=__version__,
            )
            if mount.host_path:
                host["mounts"][0] = {"Type": "bind", "Source": mount.source, "Target": "/workspace"}
            status, output = await run_helper(self.context, create, host, self.hub_id)
            action = interpret_helper_result(status, output, volume=mount.source, uid=identity.uid)
            self.log.info("Workspace %s for %s: %s", mount.source, self.user.name, action)
            self._prepared = marker
        return mount

    # --- quotas (`docker.quota`) --------------------------------------------------

    async def _make_volume(self, name: str, labels_: dict, wanted: int | None,
                           method: str) -> tuple[bool, int | None]:
        """Make the workspace volume with its quota: whether this start made it (a named
        server of the same user may have made it a moment before), and the quota it has."""
        options: dict[str, str] = {}
        if method == BTRFS:
            path = await self._btrfs_quota(name, wanted)
            options = quota.bind_options(path) if path else {}
        elif method == ENGINE_SIZE:
            if self.context.engine_size_refused:  # it will refuse again: no failing create, the same words
                self._quota_unenforced(wanted, method, name, self.context.engine_size_refused)
            else:
                options = quota.size_options(wanted or 0)
        if not options:
            return (await ensure_volume(self.context, name, labels_))[1], None
        try:
            await self.docker("create_volume", name=name, driver="local", driver_opts=options, labels=labels_)
        except docker.errors.APIError as e:
            if not quota.is_no_quota_support(e):
                raise
            self.context.engine_size_refused = f"the Docker engine answered {e.explanation!r}"
            self._quota_unenforced(wanted, method, name, self.context.engine_size_refused)
            return (await ensure_volume(self.context, name, labels_))[1], None
        self.log.info("Workspace %s for %s made with a quota of %s (%s)", name, self.user.name,
                      format_size(wanted), method)
        return True, wanted

    async def _btrfs_quota(self, volume: str, wanted: int | None) -> str:
        """The subvolume of ``volume``, made if missing and limited to ``wanted``; "" when
        btrfs cannot do it (and the quota is not required: then a plain volume it is)."""
        path = quota.subvolume_path(self.workspace_btrfs_root, volume)
        try:
            made, before = await self.context.run(quota.apply_btrfs_quota, path, wanted)
        except quota.BtrfsError as e:
            self._quota_unenforced(wanted, BTRFS, volume, str(e))
            return ""
        if made:
            self.log.info("Made the subvolume %s for %s, limited to %s", path, self.user.name, format_size(wanted))
        elif before != wanted:
            self.log.info("Workspace quota of %s (%s) changed from %s to %s", self.user.name, path,
                          format_size(before), format_size(wanted))
        return path

    async def _update_quota(self, name: str, volume: dict, wanted: int | None, method: str) -> int | None:
        """Bring an existing volume's quota (``volume``: its ``inspect``) to ``wanted``, or say
        why it stays as it is; the quota it has now."""
        held = quota.volume_quota(volume, self.workspace_btrfs_root)
        if held.method == BTRFS:
            return wanted if await self._btrfs_quota(name, wanted) else None
        if held.method == ENGINE_SIZE and held.size != wanted:
            self.log.warning(
                "Workspace %s of %s keeps its XFS size of %s although %s.workspace_quota now gives %s: the "
                "engine cannot change a volume's size (on the host: xfs_quota -x -c 'limit -p bhard=...' on the "
                "volume's project).", name, self.user.name, format_size(held.size), type(self).__name__,
                format_size(wanted))
        elif held.method == NO_QUOTA and method != NO_QUOTA:
            self._quota_unenforced(
                wanted, method, name,
                "the workspace was made without one (before quotas were set, or where none could be "
                "enforced) and is used as it is; `hardened-spawner check` lists such workspaces",
                level="info")
        return held.size

    def _quota_unenforced(self, wanted: int | None, method: str, volume: str, why: str, level: str = "warning"):
        """A quota that cannot be enforced for this workspace: refused when the admin requires
        quotas, else said in the log and the server starts without one."""
        cls = type(self).__name__
        detail = f"{self._log_name}: {cls}.workspace_quota of {format_size(wanted)} not enforced on {volume}: {why}"
        if self.workspace_quota_required:
            self.log.error("%s. Refused (%s.workspace_quota_required).", detail, cls)
            raise quota.refusal(cls, wanted or 0, volume, detail)
        getattr(self.log, level)("%s; it starts without a quota.", detail)

    async def check_workspace_quota(self, log) -> None:
        """Once at hub start (`docker.hub_start`): whether the quota the settings ask for can be
        enforced here, said in the log with the setting and what the admin must provide.
        Never raises."""
        try:
            problem = await self._quota_problem()
        except Exception:
            log.exception("Checking whether workspace quotas can be enforced failed")
            return
        if problem:
            log.warning(problem)
        elif self.quota_policy().asks_for_quotas:
            log.info("Workspace quotas (%s) are enforced by %s", self.quota_summary(),
                     "btrfs qgroups under " + self.workspace_btrfs_root if self.workspace_btrfs_root
                     else "the engine's XFS project quotas")

    async def _quota_problem(self) -> str:
        """Why the asked-for quotas cannot be enforced, in the hub's words; "" when they can
        (or none is asked for)."""
        if not self.quota_policy().asks_for_quotas:
            return ""
        summary, cls = self.quota_summary(), type(self).__name__
        if self.workspace_host_path:
            method, why = NO_METHOD, "workspaces are host folders (workspace_host_path)"
        elif self.workspace_btrfs_root:
            method = BTRFS
            why = await self.context.run(functools.partial(quota.btrfs_problem, self.workspace_btrfs_root))
        else:
            method = ENGINE_SIZE
            why = await self.context.run(lambda: quota.engine_size_problem(self.context.client))
            why = why and f"the Docker engine answered {why!r} for a volume with a size"
            self.context.engine_size_refused = why
        if not why:
            return ""
        return quota.unenforced_message(cls, summary, method, why, self.workspace_quota_required)
