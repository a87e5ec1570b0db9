"""Which UIDs the cluster says are held, and claiming a free one so that only one spawn wins.

As on Docker (`docker.uid_claims`), the objects the spawner made, not the hub's database,
are the truth about UIDs: every workspace claim (PVC), UID claim and server pod carries
the UID label and the owner annotation (`objects`), so a hub database that starts over
locks no one out and hands no one another's files.

A UID is claimed by creating the ConfigMap named after it (`objects.make_uid_claim`). The
API server creates an object of a given name once and answers 409 to the second create,
so of two spawns, in one hub or in two, that pick the same free UID at once, exactly one
gets it; the other reads the claim, sees another owner, and tries the next UID.

Plain async functions over kubespawner's `CoreV1Api` (kubernetes_asyncio), so they are
unit-tested against a fake of that API.
"""

from __future__ import annotations

from kubernetes_asyncio.client.rest import ApiException

from ..core.identity import UidRequest, first_free_uid, make_identity, uid_held_elsewhere
from .objects import (
    MANAGED,
    OWNER,
    OWNER_KEY,
    ROLE,
    ROLE_UID_CLAIM,
    UID,
    WORKSPACE,
    make_uid_claim,
    owner_key,
    uid_claim_name,
)


class WorkspaceClaimError(Exception):
    """The user's workspace claim cannot be used as theirs; the message says why and what to do."""


def _meta(item) -> tuple[dict, dict]:
    """(labels, annotations) of an API object, a model or its dict."""
    if isinstance(item, dict):
        metadata = item.get("metadata") or {}
        return metadata.get("labels") or {}, metadata.get("annotations") or {}
    return item.metadata.labels or {}, item.metadata.annotations or {}


def _uid_of(item) -> int | None:
    try:
        return int(_meta(item)[0].get(UID, ""))
    except ValueError:
        return None


async def uid_holders(api, namespace: str) -> dict[int, set[str]]:
    """UID -> the owners whose managed claims, workspaces or pods carry it."""
    holders: dict[int, set[str]] = {}
    for list_items in (api.list_namespaced_config_map, api.list_namespaced_persistent_volume_claim,
                       api.list_namespaced_pod):
        found = await list_items(namespace, label_selector=f"{MANAGED}=true")
        for item in found.items:
            uid = _uid_of(item)
            if uid is not None:
                holders.setdefault(uid, set()).add(_meta(item)[1].get(OWNER, ""))
    return holders


async def claimed_uid(api, namespace: str, owner: str, workspace: str) -> int | None:
    """The UID this owner claimed earlier for this workspace, if any (a user whose workspace
    claim is not made yet)."""
    selector = f"{ROLE}={ROLE_UID_CLAIM},{OWNER_KEY}={owner_key(owner)}"
    for item in (await api.list_namespaced_config_map(namespace, label_selector=selector)).items:
        annotations = _meta(item)[1]
        if annotations.get(OWNER) == owner and annotations.get(WORKSPACE) == workspace:
            return _uid_of(item)
    return None


async def workspace_uid(api, namespace: str, name: str, owner: str, allow_adopt: bool) -> int | None:
    """The UID the user's workspace claim carries: None when there is no claim yet. A claim
    of another user, or one no hardened spawner made (its files belong to someone else's
    UID, or to the image's user) is refused, never re-owned: its fsGroup would change."""
    try:
        found = await api.read_namespaced_persistent_volume_claim(name, namespace)
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    labels, annotations = _meta(found)
    uid = _uid_of(found)
    if uid is not None and annotations.get(OWNER) == owner:
        return uid
    if uid is None and allow_adopt:
        return None
    whose = f"UID {uid} of {annotations.get(OWNER)!r}" if uid is not None else "no user of this hub"
    raise WorkspaceClaimError(
        f"Your workspace claim {name} belongs to {whose}, so the hub will not hand its files to "
        "you. Ask your hub admin: they may give it to you by labelling it "
        f"({UID} and the {OWNER} annotation), or set HardenedKubeSpawner.workspace_allow_adopt."
    )


async def claim(api, namespace: str, uid: int, request: UidRequest, home_template: str) -> bool:
    """Claim ``uid`` for ``request.owner``'s workspace; True if it is theirs now (or was)."""
    identity = make_identity(request.owner, uid, home_template)
    body = make_uid_claim(request.owner, identity, request.workspace, namespace, request.version)
    try:
        await api.create_namespaced_config_map(namespace, body)
        return True
    except ApiException as e:
        if e.status != 409:
            raise
    annotations = _meta(await api.read_namespaced_config_map(uid_claim_name(uid), namespace))[1]
    return annotations.get(OWNER) == request.owner and annotations.get(WORKSPACE) == request.workspace


async def claim_free_uid(api, namespace: str, request: UidRequest, home_template: str, log) -> int:
    """The first UID from the offer on that no one else's objects hold, claimed."""
    holders = await uid_holders(api, namespace)
    taken = {uid for uid, owners in holders.items() if owners - {request.owner}}
    while True:
        uid = first_free_uid(request.offer, request.uid_min, request.uid_max, taken, owner=request.setting_owner)
        if await claim(api, namespace, uid, request, home_template):
            if uid != request.offer:
                log.info("%s gets UID %s: %s is held by another user's files", request.owner, uid, request.offer)
            return uid
        taken.add(uid)  # claimed by another spawn in the meantime


async def claim_known_uid(api, namespace: str, uid: int, source: str, request: UidRequest,
                          home_template: str, log) -> None:
    """No other user's objects may carry this UID (from `resolve_uid`'s ``source``); then it
    is claimed (the claim also holds the passwd/group the server mounts)."""
    others = (await uid_holders(api, namespace)).get(uid, set()) - {request.owner, ""}
    if not others and await claim(api, namespace, uid, request, home_template):
        return
    log.error("UID %s of %s (from %s) is also held by %s", uid, request.owner, source,
              ", ".join(sorted(others)) or "another hub's claim")
    raise uid_held_elsewhere(uid, source, owner=request.setting_owner)
