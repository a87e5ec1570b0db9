"""Which UIDs the engine says are held, and claiming a free one atomically.

The engine's labels, not the hub's database, are the truth about UIDs: a
database that starts over (deleted, an old backup, a second hub on the same
engine) hands its user ids out again, but every workspace and server still
carries the UID its files belong to (`labels.UID`, `labels.OWNER`).

A UID is claimed by creating an empty volume named after it, labelled with its
owner. The engine creates a volume of a given name once (it locks per name;
creating an existing name returns the one already there), so of two spawns,
in one hub or in two, that pick the same free UID at the same moment exactly
one gets it; the other sees someone else's owner label and tries the next.

These are plain functions over a docker-py ``APIClient``, called from the
hub's Docker threads.
"""

from __future__ import annotations

import docker.errors

from .. import labels
from ..core.identity import UidRequest, first_free_uid, uid_held_elsewhere

_MANAGED = {"label": [f"{labels.MANAGED}=true"]}
#: the workspace (volume name or host path) a claim was made for
WORKSPACE = f"{labels.PREFIX}.workspace"


def claim_name(uid: int) -> str:
    return f"hardened-spawner-uid-{uid}"


def uid_holders(client, uid: int | None = None) -> dict[int, set[str]]:
    """UID -> the owners whose managed volumes or containers carry it; only ``uid`` when
    given (the engine filters by the label, so the answer stays small on an engine with
    thousands of servers: a spawn asks about its own UID, not about everyone's)."""
    filters = {"label": [*_MANAGED["label"], *([f"{labels.UID}={uid}"] if uid is not None else [])]}
    found: list[dict] = list(client.volumes(filters=filters).get("Volumes") or [])
    found += client.containers(all=True, filters=filters)
    holders: dict[int, set[str]] = {}
    for item in found:
        item_labels = item.get("Labels") or {}
        try:
            held = int(item_labels.get(labels.UID, ""))
        except ValueError:
            continue
        holders.setdefault(held, set()).add(item_labels.get(labels.OWNER, ""))
    return holders


def claimed_uid(client, owner: str, workspace: str) -> int | None:
    """The UID this owner claimed earlier for this workspace (a volume name or a host
    path), if any: a user whose workspace volume is not made yet, or a host-path one.
    Another hub's user of the same name has another workspace, and so no claim here."""
    filters = {"label": [f"{labels.ROLE}={labels.ROLE_UID_CLAIM}", f"{labels.OWNER}={owner}"]}
    for volume in client.volumes(filters=filters).get("Volumes") or []:
        volume_labels = volume.get("Labels") or {}
        if volume_labels.get(labels.OWNER) == owner and volume_labels.get(WORKSPACE) == workspace:
            try:
                return int(volume_labels.get(labels.UID, ""))
            except ValueError:
                continue
    return None


def claim(client, uid: int, owner: str, workspace: str, version: str) -> bool:
    """Claim ``uid`` for ``owner``'s ``workspace``; True if it is theirs now (or was already)."""
    claim_labels = {
        labels.MANAGED: "true",
        labels.ROLE: labels.ROLE_UID_CLAIM,
        labels.OWNER: owner,
        labels.UID: str(uid),
        WORKSPACE: workspace,
        labels.VERSION: version,
    }
    try:
        client.create_volume(name=claim_name(uid), labels=claim_labels)
    except docker.errors.APIError as e:  # an existing name with other options: read it
        if e.status_code != 409:
            raise
    found = client.inspect_volume(claim_name(uid)).get("Labels") or {}
    return found.get(labels.OWNER) == owner and found.get(WORKSPACE) == workspace


#: UIDs from the offer on that a new user's claim asks about one by one, before it looks at
#: every holder at once (the offer is free unless an earlier database's users hold it)
PROBES = 4


def claim_free_uid(client, request: UidRequest, log) -> int:
    """The first UID from the offer on that no one else's labels hold, claimed."""
    taken: set[int] = set()
    for _ in range(PROBES):
        uid = first_free_uid(request.offer, request.uid_min, request.uid_max, taken, owner=request.setting_owner)
        if uid_holders(client, uid).get(uid, set()) - {request.owner}:
            taken.add(uid)
        elif claim(client, uid, request.owner, request.workspace, request.version):
            return _claimed(uid, request, log)
        else:
            taken.add(uid)  # claimed by another hub in the meantime
    holders = uid_holders(client)  # a crowded range: every holder at once
    taken |= {uid for uid, owners in holders.items() if owners - {request.owner}}
    while True:
        uid = first_free_uid(request.offer, request.uid_min, request.uid_max, taken, owner=request.setting_owner)
        if claim(client, uid, request.owner, request.workspace, request.version):
            return _claimed(uid, request, log)
        taken.add(uid)


def _claimed(uid: int, request: UidRequest, log) -> int:
    if uid != request.offer:
        log.info("%s gets UID %s: %s is held by another user's files", request.owner, uid, request.offer)
    return uid


def claim_known_uid(client, uid: int, source: str, request: UidRequest, log) -> None:
    """No other user's files may carry this UID (from `resolve_uid`'s ``source``); then it is
    claimed. A collision with a static UID names `uid_map`; any other never blames a setting."""
    others = uid_holders(client, uid).get(uid, set()) - {request.owner, ""}
    if not others and claim(client, uid, request.owner, request.workspace, request.version):
        return
    log.error("UID %s of %s (from %s) is also held by %s", uid, request.owner, source,
              ", ".join(sorted(others)) or "another hub's claim")
    raise uid_held_elsewhere(uid, source, owner=request.setting_owner)
