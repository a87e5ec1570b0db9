"""Workspace quotas on Docker: what an existing volume holds, the btrfs commands, the
engine's XFS ``size``, and the words for a quota the storage cannot enforce.

Two ways a kernel, not the hub, stops a user's writes at their quota:

- **btrfs** (`workspace_btrfs_root`): each workspace is a subvolume
  ``<root>/<volume name>`` with a qgroup limit, and its Docker volume is the local
  driver's bind of that subvolume (``type=none, o=bind, device=<path>``): only a path,
  which stays right across reboots (the ``type=btrfs,device=/dev/...,o=subvol=`` form
  names a device, and a loop device's name changes). ``docker volume rm`` never deletes
  the subvolume. Making a subvolume and setting its limit need root on the Docker host:
  the hub runs `btrfs` there (a hub in a container cannot, and says so at start).
- **XFS** (the default without a btrfs root): the local driver's ``size`` option,
  an XFS project quota set by the engine when it makes the volume (moby#41330). An
  engine whose volumes directory has no project quotas refuses the volume with "quota
  size requested but no quota support". The engine cannot change a volume's size later.

The btrfs functions take the command runner as ``run`` (``run(argv)`` ->
``CompletedProcess``), so unit tests pass a fake host; the rest is pure.
"""

from __future__ import annotations

import posixpath
import re
import secrets
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import docker.errors

from .. import labels
from ..core.quota import BTRFS, ENGINE_SIZE, NO_QUOTA, format_size
from .workspace import WorkspaceError

Runner = Callable[[Sequence[str]], subprocess.CompletedProcess]

#: what the engine answers when its volumes directory has no project quotas
NO_ENGINE_QUOTA = "quota size requested but no quota support"
#: the throwaway volume the hub's start makes to learn whether the engine has quotas
PROBE_PREFIX = "hardened-spawner-quota-probe-"
#: what an admin reads in the Debian package list for the `btrfs` command
BTRFS_PACKAGE = "btrfs-progs"


def run_as_given(argv: Sequence[str]) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=False)


class QuotaUnavailable(WorkspaceError):
    """The quota asked for cannot be enforced and the admin requires one; the message is
    the user's (no host paths), ``detail`` the admin's (the hub log)."""

    def __init__(self, message: str, detail: str):
        super().__init__(message)
        self.detail = detail


class BtrfsError(Exception):
    """A btrfs step failed; the message names the path and the command's own words."""


# --- what an existing volume holds (pure) ------------------------------------------


@dataclass(frozen=True)
class VolumeQuota:
    """How an existing workspace volume's size is held: `method` is `core.quota`'s
    (``btrfs``, ``xfs`` or ``none``); ``size`` the XFS size (the engine keeps it with the
    volume), None for btrfs (its limit lives in the qgroup) and for none; ``path`` the
    subvolume for btrfs."""

    method: str
    size: int | None = None
    path: str = ""


def subvolume_path(root: str, volume: str) -> str:
    """Where a volume's subvolume lives: ``<root>/<volume name>``. Docker's volume names
    never hold a ``/``; anything that would leave the root is refused all the same."""
    if not volume or "/" in volume or volume in (".", ".."):
        raise BtrfsError(f"{volume!r} cannot name a subvolume under {root}")
    return posixpath.join(posixpath.normpath(root), volume)


def bind_options(path: str) -> dict[str, str]:
    """The local driver's options for a volume that is a bind of ``path``."""
    return {"type": "none", "o": "bind", "device": path}


def size_options(quota: int) -> dict[str, str]:
    """The local driver's options for a volume of at most ``quota`` bytes (XFS)."""
    return {"size": str(quota)}


_DOCKER_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)i?b?\s*$", re.IGNORECASE)


def parse_docker_size(text: str) -> int | None:
    """A size as the engine reads one (``10G``, ``512m``, ``1048576``: binary units), or
    None when it is not one."""
    found = _DOCKER_SIZE.match(text or "")
    if not found:
        return None
    if not found[2]:
        return int(float(found[1]))
    return int(float(found[1]) * 1024 ** ("kmgtp".find(found[2].lower()) + 1))


def volume_quota(volume: dict, btrfs_root: str) -> VolumeQuota:
    """How the quota of an existing volume (its ``docker volume inspect``) is held."""
    options = volume.get("Options") or {}
    device = options.get("device", "")
    if (
        btrfs_root
        and options.get("type") == "none"
        and "bind" in options.get("o", "").split(",")
        and posixpath.dirname(posixpath.normpath(device)) == posixpath.normpath(btrfs_root)
    ):
        return VolumeQuota(BTRFS, path=device)
    size = parse_docker_size(options.get("size", ""))
    if size:
        return VolumeQuota(ENGINE_SIZE, size=size)
    return VolumeQuota(NO_QUOTA)


# --- btrfs on the host (injectable runner) -----------------------------------------


def _btrfs(argv: list[str], run: Runner) -> subprocess.CompletedProcess:
    try:
        return run(["btrfs", *argv])
    except FileNotFoundError:
        raise BtrfsError(
            f"the btrfs command is not installed where the hub runs (Debian: {BTRFS_PACKAGE})"
        ) from None
    except (OSError, subprocess.SubprocessError) as e:
        raise BtrfsError(f"btrfs {' '.join(argv)} could not run: {e}") from None


def _failed(result: subprocess.CompletedProcess, what: str) -> BtrfsError:
    words = (result.stderr or result.stdout or "").strip().splitlines()
    return BtrfsError(f"{what} failed: {words[-1] if words else f'exit status {result.returncode}'}")


def parse_qgroup_show(text: str) -> tuple[int, int | None]:
    """(referenced bytes, limit or None) from ``btrfs qgroup show -rf --raw PATH``: the row
    of the subvolume's own qgroup (the only ``0/N`` row ``-f`` shows for a subvolume)."""
    lines = [line for line in text.splitlines() if line.strip()]
    header = next((line for line in lines if line.lstrip().lower().startswith("qgroupid")), None)
    if header is None:
        raise BtrfsError(f"cannot read btrfs qgroup show's output: {text.strip()[:200]!r}")
    columns = [c.strip().lower() for c in re.split(r"\s{2,}", header.strip())]
    rows = [line.split(None, len(columns) - 1) for line in lines if re.match(r"\s*0/\d+\s", line)]
    if not rows or "referenced" not in columns or "max referenced" not in columns:
        raise BtrfsError(f"no level-0 qgroup in btrfs qgroup show's output: {text.strip()[:200]!r}")
    row = [cell.strip() for cell in rows[-1]]
    limit = row[columns.index("max referenced")]
    return int(row[columns.index("referenced")]), None if limit == "none" else int(limit)


def btrfs_problem(root: str, run: Runner = run_as_given) -> str:
    """Why workspaces cannot be quota'd subvolumes under ``root``, or "" when they can:
    the command runs, ``root`` is on btrfs and its quotas are on (``btrfs quota enable``)."""
    try:
        result = _btrfs(["qgroup", "show", "-f", "--raw", root], run)
    except BtrfsError as e:
        return str(e)
    if result.returncode != 0:
        return str(_failed(result, f"btrfs qgroup show {root}"))
    return ""


def ensure_subvolume(path: str, run: Runner = run_as_given) -> bool:
    """Make the subvolume ``path`` unless it is one already; True when it was just made.
    A plain folder there is someone's files: refused, never replaced."""
    if _btrfs(["subvolume", "show", path], run).returncode == 0:
        return False
    made = _btrfs(["subvolume", "create", path], run)
    if made.returncode != 0:
        raise _failed(made, f"btrfs subvolume create {path} (a folder that is no subvolume is left alone)")
    return True


def read_limit(path: str, run: Runner = run_as_given) -> tuple[int, int | None]:
    """(bytes used, limit or None) of the subvolume ``path``."""
    result = _btrfs(["qgroup", "show", "-rf", "--raw", path], run)
    if result.returncode != 0:
        raise _failed(result, f"btrfs qgroup show {path}")
    return parse_qgroup_show(result.stdout)


def set_limit(path: str, quota: int | None, run: Runner = run_as_given) -> None:
    """Limit what the subvolume ``path`` refers to (``none``: no limit)."""
    result = _btrfs(["qgroup", "limit", str(quota) if quota else "none", path], run)
    if result.returncode != 0:
        raise _failed(result, f"btrfs qgroup limit {quota or 'none'} {path}")


def apply_btrfs_quota(path: str, quota: int | None, run: Runner = run_as_given) -> tuple[bool, int | None]:
    """Make the subvolume if missing and give it ``quota`` (None: no limit): (whether it
    was made, the limit it had before). A limit that is right already is left alone; a
    changed one (raised for a group, lowered for all) is set, and the files stay."""
    made = ensure_subvolume(path, run)
    _, before = read_limit(path, run)
    if before != quota:
        set_limit(path, quota, run)
    return made, before


# --- the engine's XFS size ---------------------------------------------------------


def engine_size_problem(client) -> str:
    """Whether the engine makes volumes with a ``size`` (XFS project quotas under its
    volumes directory): "" when it does, else its answer. A throwaway volume is made and
    removed at once."""
    name = PROBE_PREFIX + secrets.token_hex(4)
    try:
        client.create_volume(name=name, driver="local", driver_opts=size_options(16 * 1024 * 1024),
                             labels={labels.MANAGED: "true"})
    except docker.errors.APIError as e:
        return str(getattr(e, "explanation", "") or e).removeprefix(f"create {name}: ")
    try:
        client.remove_volume(name, force=True)
    except docker.errors.NotFound:
        pass
    return ""


def is_no_quota_support(error: Exception) -> bool:
    """The engine's refusal of a ``size`` it cannot enforce."""
    return isinstance(error, docker.errors.APIError) and "quota" in str(getattr(error, "explanation", "") or error)


# --- the words ------------------------------------------------------------------------

#: what the admin must provide, per method
PROVIDE = {
    ENGINE_SIZE: ("XFS with project quotas for the engine's volumes (/var/lib/docker/volumes on an XFS "
                  "filesystem mounted with the pquota option), or a btrfs directory with quotas on "
                  "(btrfs quota enable) named in HardenedSpawner.workspace_btrfs_root"),
    BTRFS: ("HardenedSpawner.workspace_btrfs_root on a btrfs filesystem with quotas on (btrfs quota "
            f"enable), the btrfs command ({BTRFS_PACKAGE}) and a hub running as root on the Docker host"),
    "no-method": ("named volumes (HardenedSpawner.workspace_volume_name, with workspace_btrfs_root or XFS "
                  "quotas) instead of HardenedSpawner.workspace_host_path, which has no quota"),
}


def unenforced_message(cls: str, quota_words: str, method: str, why: str, required: bool) -> str:
    """The hub's warning (at start, and in the log) about a quota it cannot enforce: the
    setting, why, what the admin must provide, and what happens meanwhile."""
    then = (
        f"Spawns are refused until it can ({cls}.workspace_quota_required is True)."
        if required else
        f"Workspaces are made without a quota meanwhile: one user can fill the disk. Set "
        f"{cls}.workspace_quota = None to run without quotas knowingly, or "
        f"{cls}.workspace_quota_required = True to refuse such spawns."
    )
    return (f"{cls}.workspace_quota is {quota_words}, but it cannot be enforced here: {why}. "
            f"Provide {PROVIDE.get(method, PROVIDE[ENGINE_SIZE])}. {then}")


def refusal(cls: str, quota: int, volume: str, detail: str) -> QuotaUnavailable:
    """The user's refusal when a required quota cannot be enforced (no host path in it)."""
    return QuotaUnavailable(
        f"Your server was not started: this hub requires a disk quota on every workspace "
        f"({cls}.workspace_quota_required), and the quota of {format_size(quota)} cannot be enforced "
        f"on your workspace (volume {volume}) at the moment. Nothing of yours was changed. Please "
        "tell your hub admin; the hub log says what is missing.",
        detail,
    )
