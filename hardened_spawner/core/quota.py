"""Workspace quotas, decided for both backends (standard library only).

The settings (`quota_settings.WorkspaceQuotaSettings`) say how much a user may keep in
their workspace: one size for everyone, a larger (or smaller) one per group, or none.
This module turns them into one user's quota (`quota_for`), says how a backend carries it
out (`docker_method`: a btrfs subvolume's qgroup limit, the engine's XFS ``size`` option,
or nothing; on Kubernetes the workspace claim's storage request, `storage_request`), and
words sizes for the messages (`format_size`). Nothing here talks to an engine, a
filesystem or traitlets.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

#: How a Docker workspace's quota is carried out.
NO_QUOTA = "none"  # no quota asked for this user
BTRFS = "btrfs"  # a subvolume of `workspace_btrfs_root` with a qgroup limit
ENGINE_SIZE = "xfs"  # the local volume driver's `size` option: an XFS project quota
NO_METHOD = "no-method"  # a quota asked for a kind of workspace that cannot have one (a host folder)

_UNITS = (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024))


@dataclass(frozen=True)
class QuotaPolicy:
    """The quota settings, validated: sizes in bytes, None for no quota."""

    default: int | None = None
    groups: Mapping[str, int | None] = field(default_factory=dict)
    required: bool = False

    @property
    def asks_for_quotas(self) -> bool:
        """Whether anyone at all gets a quota."""
        return bool(self.default) or any(self.groups.values())


def quota_for(policy: QuotaPolicy, groups: Iterable[str]) -> int | None:
    """The quota of a user in ``groups``, in bytes, or None for no quota.

    A group entry replaces the default (as ``gpu_group_max`` does); among several of the
    user's groups the largest wins, and a group without a quota (None or 0) is larger
    than any size.
    """
    entries = [policy.groups[group] for group in groups if group in policy.groups]
    if not entries:
        return policy.default or None
    if not all(entries):
        return None
    return max(entry for entry in entries if entry)


def docker_method(quota: int | None, *, btrfs_root: str, host_path: bool) -> str:
    """How the Docker backend carries out ``quota`` for one workspace.

    A host folder (`workspace_host_path`) has no quota method; with a btrfs root every
    volume is a subvolume there; otherwise the engine's local driver is asked for a
    ``size`` (which needs XFS with project quotas under the engine's volumes).
    """
    if not quota:
        return NO_QUOTA
    if host_path:
        return NO_METHOD
    return BTRFS if btrfs_root else ENGINE_SIZE


def storage_request(quota: int | None, storage_capacity: str) -> str:
    """A Kubernetes workspace claim's storage request: the quota as a quantity (``50Mi``,
    ``10Gi``; plain bytes when no binary unit divides it), else ``storage_capacity``."""
    if not quota:
        return storage_capacity
    for suffix, size in (("Ti", 1024**4), ("Gi", 1024**3), ("Mi", 1024**2), ("Ki", 1024)):
        if quota % size == 0:
            return f"{quota // size}{suffix}"
    return str(quota)


def format_size(size: int | None) -> str:
    """``50 MiB``, ``1.5 GiB``, ``512 bytes``; ``no quota`` for None."""
    if size is None:
        return "no quota"
    for unit, factor in _UNITS:
        if size >= factor:
            value = size / factor
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{size} bytes"
