"""Each user's persistent workspace volume, and getting it ready without root on the host.

A new named volume comes up ``root:root 0755``: a non-root user cannot write
to it. The hub fixes that by running `workspace_helper` in a short-lived
container (see there), and mounts the volume into the server with ``nocopy``:
without it, Docker copies the owner of the image's mount point back onto a
still-empty volume at every mount, and the prepared workspace would return
root-owned. The builders here are pure; `prepare` runs them against the engine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

from .. import labels
from ..core.identity import Identity, group_entry, passwd_entry
from . import workspace_helper

#: One volume for everyone's generated passwd/group files, in per-UID folders.
#: Root-owned and mounted read-only into the servers, file by file.
IDENTITY_VOLUME = "hardened-spawner-identity"

HELPER_MOUNT = workspace_helper.WORKSPACE
IDENTITY_MOUNT = workspace_helper.IDENTITY


class WorkspaceError(Exception):
    """The workspace cannot be used safely; the message is fit for the user."""


@dataclass(frozen=True)
class PreparedMarker:
    """What was prepared, kept in the spawner's state.

    When the same volume was already prepared for the same UID from the same
    image, the helper is skipped: a later start costs nothing.
    """

    volume: str
    uid: int
    image_id: str

    def as_state(self) -> str:
        return f"{self.volume}|{self.uid}|{self.image_id}"


def volume_labels(owner: str, identity: Identity, version: str) -> dict[str, str]:
    return {
        labels.MANAGED: "true",
        labels.ROLE: labels.ROLE_WORKSPACE,
        labels.OWNER: owner,
        labels.UID: str(identity.uid),
        labels.GID: str(identity.gid),
        labels.VERSION: version,
    }


def identity_file_sources(identity_mountpoint: str, uid: int) -> dict[str, str]:
    """Host path -> container path of the user's generated account files."""
    base = f"{identity_mountpoint.rstrip('/')}/{uid}"
    return {f"{base}/passwd": "/etc/passwd", f"{base}/group": "/etc/group"}


def helper_source() -> str:
    return resources.files(__package__).joinpath("workspace_helper.py").read_text()


def helper_container_spec(
    *,
    image: str,
    volume: str,
    identity: Identity,
    owner: str,
    allow_adopt: bool,
    version: str,
) -> tuple[dict, dict]:
    """``create_container`` and ``create_host_config`` arguments for the helper.

    Root inside, because only root may chown; but only the capabilities that
    chown needs (DAC_READ_SEARCH too when adoption must walk someone else's
    private folders), no network, a read-only root, no new privileges and
    small limits. It runs from the user's own image, so no other image has to
    exist on a host without a registry.
    """
    caps = ["CHOWN", "FOWNER"] + (["DAC_READ_SEARCH"] if allow_adopt else [])
    create = {
        "image": image,
        "command": ["python3", "-c", helper_source()],
        "user": "0:0",
        "entrypoint": [],
        "environment": {
            "HS_UID": str(identity.uid),
            "HS_GID": str(identity.gid),
            "HS_ADOPT": "1" if allow_adopt else "0",
            "HS_PASSWD_ENTRY": passwd_entry(identity),
            "HS_GROUP_ENTRY": group_entry(identity),
        },
        "labels": {
            labels.MANAGED: "true",
            labels.ROLE: labels.ROLE_HELPER,
            labels.OWNER: owner,
            labels.VERSION: version,
        },
        "network_disabled": True,
    }
    host = {
        "mounts": [
            {"Type": "volume", "Source": volume, "Target": HELPER_MOUNT, "VolumeOptions": {"NoCopy": True}},
            {"Type": "volume", "Source": IDENTITY_VOLUME, "Target": IDENTITY_MOUNT},
        ],
        "network_mode": "none",
        "cap_drop": ["ALL"],
        "cap_add": caps,
        "read_only": True,
        "security_opt": ["no-new-privileges:true"],
        "pids_limit": 32,
        "mem_limit": 128 * 1024 * 1024,
    }
    return create, host


def interpret_helper_result(exit_code: int, output: str, *, volume: str, uid: int) -> str:
    """The helper's action, or a `WorkspaceError` the user can act on."""
    last = output.strip().splitlines()[-1] if output.strip() else ""
    try:
        result = json.loads(last)
    except ValueError:
        result = None
    if not isinstance(result, dict) or not {"action", "owner_uid"} <= result.keys():
        result = None  # not the helper's own report: treat as a failure below
    if exit_code == workspace_helper.EXIT_REFUSED and result:
        raise WorkspaceError(
            f"Your workspace (volume {volume}) belongs to UID {result['owner_uid']}, "
            f"not to your UID {uid}, so it was left untouched. An admin can hand it "
            "over by setting HardenedSpawner.workspace_allow_adopt = True, or move the data."
        )
    if exit_code != 0 or not result:
        tail = "\n".join(output.strip().splitlines()[-5:])
        raise WorkspaceError(
            f"Preparing your workspace (volume {volume}) failed with exit code {exit_code}: {tail}"
        )
    return result["action"]
