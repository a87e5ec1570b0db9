"""The workspace quota settings both backends share: how much one user may keep in their
workspace, per group, and whether a quota the storage cannot enforce refuses spawns.

`WorkspaceQuotaSettings` is a mixin of both spawners (config is ``c.HardenedSpawner.<name>``
or ``c.HardenedKubeSpawner.<name>``). The decision for one user is `core.quota.quota_for`;
how it is carried out is the backend's (Docker: `docker.quota`; Kubernetes: the workspace
claim's storage request, `core.quota.storage_request`).
"""

from __future__ import annotations

from jupyterhub.traitlets import ByteSpecification
from traitlets import Bool, Dict, HasTraits, TraitError, validate

from .core.quota import QuotaPolicy, format_size, quota_for

#: Below this a workspace holds nothing useful (and btrfs needs some room for metadata).
MIN_QUOTA = 10 * 1024 * 1024


class Size(ByteSpecification):
    """A size like ``10G`` (JupyterHub's ``ByteSpecification``, suffixes K, M, G, T in either
    case, or a number of bytes) whose error names the setting."""

    def validate(self, obj, value):
        given = value
        if isinstance(value, str):
            text = value.strip()
            value = int(text) if text.isdigit() else text[:-1] + text[-1:].upper()
        try:
            return super().validate(obj, value)
        except (TraitError, IndexError):
            value = given
            raise TraitError(
                f"{type(obj).__name__}.{self.name} = {value!r} is not a size like '10G' or '512M'."
            ) from None


def parse_size(value, setting: str) -> int | None:
    """A size setting's value in bytes, None for None or 0 (no quota)."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TraitError(f"{setting} = {value!r} is not a size like '200G' (or None for no quota).")
    if isinstance(value, str):
        text = value.strip()
        factor = ByteSpecification.UNIT_SUFFIXES.get(text[-1:].upper())
        try:
            value = float(text[:-1]) * factor if factor else None
        except ValueError:
            value = None
        if value is None:
            raise TraitError(f"{setting} = {text!r} is not a size like '200G' (or None for no quota).")
    size = int(value)
    if size < 0 or 0 < size < MIN_QUOTA:
        raise TraitError(f"{setting} is {size} bytes; use None or 0 for no quota, or at least 10M.")
    return size or None


class WorkspaceQuotaSettings(HasTraits):
    """The workspace quota settings (module docstring)."""

    workspace_quota = Size(
        "10G",
        allow_none=True,
        help="""Most a user may keep in their workspace (`10G`, `512M`), enforced by the storage:
        a write past it fails with "Disk quota exceeded", and neighbours never notice. None or
        0: no quota. On Docker it needs a workspace storage with quotas (`workspace_btrfs_root`,
        or XFS with project quotas under the engine's volumes directory); where there is none,
        the hub says so at start and workspaces are made without one (see
        `workspace_quota_required`). On Kubernetes it is the workspace claim's storage request.
        A changed quota applies at each user's next start where the storage can change it.""",
    ).tag(config=True)

    workspace_quota_group = Dict(
        help="""`{group: size}`: a quota per hub group instead of `workspace_quota` (the thesis
        student's `{"thesis": "200G"}`); None or 0 means no quota for that group. A user in
        several listed groups gets the largest.""",
    ).tag(config=True)

    workspace_quota_required = Bool(
        False,
        help="""Refuse spawns whose workspace quota the storage cannot enforce (a clear message
        on the spawn page, naming this setting), and workspaces made before quotas were set.
        False (default): such servers start without a quota, and the hub warns at its start,
        naming what the admin must provide.""",
    ).tag(config=True)

    @validate("workspace_quota")
    def _validate_workspace_quota(self, proposal):
        return parse_size(proposal.value, f"{type(self).__name__}.workspace_quota")

    @validate("workspace_quota_group")
    def _validate_workspace_quota_group(self, proposal):
        setting = f"{type(self).__name__}.workspace_quota_group"
        return {
            str(group): parse_size(size, f"{setting}[{group!r}]") for group, size in proposal.value.items()
        }

    def quota_policy(self) -> QuotaPolicy:
        return QuotaPolicy(self.workspace_quota, dict(self.workspace_quota_group), self.workspace_quota_required)

    def workspace_quota_for(self, groups) -> int | None:
        """The quota of a user in ``groups`` (hub group names), in bytes; None for none."""
        return quota_for(self.quota_policy(), groups)

    def quota_summary(self) -> str:
        """The quota settings in words, for the hub's messages."""
        policy = self.quota_policy()
        groups = ", ".join(f"{group}: {format_size(size)}" for group, size in sorted(policy.groups.items()))
        return format_size(policy.default) + (f" ({groups})" if groups else "")
