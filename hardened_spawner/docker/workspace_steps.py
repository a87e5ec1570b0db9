"""The user's workspace on the engine, for one start: found (its label tells a returning
user's UID), made if missing, and prepared by the helper container when it is new or the
identity or image changed (`workspace` decides, `workspace_helper` runs inside).

`WorkspaceSteps` is a mixin of `HardenedSpawner`; its state (`_prepared`) is the spawner's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import docker.errors

from .. import labels
from .._version import __version__
from .container import WorkspaceMount
from .engine import ensure_volume, run_helper
from .workspace import PreparedMarker, helper_container_spec, interpret_helper_result, volume_labels


class WorkspaceSteps:
    """Finding and preparing the user's workspace volume (or host folder) for a start."""

    if TYPE_CHECKING:  # the spawner's, read below
        context: Any
        user: Any
        log: Any
        image: str
        workspace_host_path: str
        workspace_volume_name: str
        workspace_allow_adopt: bool
        _prepared: str

        @property
        def hub_id(self) -> str: ...
        def _render_templates(self, text: str) -> str: ...
        def _report(self, progress: int, message: str, log: bool = True) -> None: ...
        async def docker(self, method: str, *args, **kwargs) -> Any: ...

    def _workspace_source(self) -> tuple[str, bool]:
        if self.workspace_host_path:
            return self._render_templates(self.workspace_host_path), True
        return self._render_templates(self.workspace_volume_name), False

    async def _workspace_uid(self) -> tuple[bool, int | None]:
        """Whether the workspace volume exists, and the UID its label names (a host folder:
        neither; the helper decides about it)."""
        source, is_host_path = self._workspace_source()
        if is_host_path:
            return False, None
        try:
            volume = await self.docker("inspect_volume", source)
        except docker.errors.NotFound:
            return False, None
        return True, int((volume.get("Labels") or {}).get(labels.UID, "") or 0) or None

    async def _prepare_workspace(self, identity, image_id: str, volume_found: bool) -> WorkspaceMount:
        """The workspace mount, its volume made if this start did not find it
        (``volume_found``: `_workspace_uid` asked just before) and prepared when needed."""
        source, is_host_path = self._workspace_source()
        mount = WorkspaceMount(source, identity.home, host_path=is_host_path)
        created = not (is_host_path or volume_found) and (await ensure_volume(
            self.context, source, volume_labels(self.user.name, identity, __version__)
        ))[1]
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
