"""Which UID/GID a hub user runs as, and how the container learns that name.

Every user gets a UID of their own and a private group with the same number:
two users sharing a UID could read each other's workspaces, and UID 0 is root.
Once a user has a UID, it never moves: their workspace files are owned by it,
so a later change of configuration must not silently re-home them onto
another number. The functions here only decide; the spawner persists.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

#: The lowest UID that may be handed out. Below it live the host's system
#: accounts and the first human accounts of a typical Linux host.
MIN_SAFE_UID = 1000
#: The highest UID that every tool handles (2**31 - 1 overflows signed code;
#: 2**32 - 1 means "unchanged" to chown).
MAX_UID = 2**31 - 2

_POSIX_NAME_MAX = 32


class IdentityError(Exception):
    """A user cannot be given a safe identity; the message says why and what to do."""


@dataclass(frozen=True)
class Identity:
    """Who the user is inside their container."""

    uid: int
    gid: int
    name: str  # the POSIX login name: what `id -un` and `whoami` print
    home: str

    @property
    def user_spec(self) -> str:
        """The container's `User` field: numeric, so no passwd lookup is needed to start."""
        return f"{self.uid}:{self.gid}"


def check_uid_range(uid_min: int, uid_max: int, *, owner: str) -> None:
    """Reject a range that could hand out root or a host system account (``owner``: the
    configured class, as the messages name its settings)."""
    if uid_min < MIN_SAFE_UID:
        raise IdentityError(
            f"{owner}.uid_min is {uid_min}; it must be at least {MIN_SAFE_UID} "
            "so that no user runs as root or as a host system account. "
            "Pick a range above your host's human accounts, e.g. 200000."
        )
    if uid_max <= uid_min:
        raise IdentityError(
            f"{owner}.uid_max ({uid_max}) must be greater than "
            f"{owner}.uid_min ({uid_min})."
        )
    if uid_max > MAX_UID:
        raise IdentityError(
            f"{owner}.uid_max ({uid_max}) is above the largest UID Linux "
            f"accepts ({MAX_UID})."
        )


def check_static_uids(uid_map: dict[str, int], uid_min: int, uid_max: int, *, owner: str) -> None:
    """Static UIDs must be safe, unique, and outside the derived range.

    Outside the range, because a derived UID is ``uid_min + hub user id``:
    a static UID inside it would one day collide with a derived one.
    """
    seen: dict[int, str] = {}
    for name, uid in sorted(uid_map.items()):
        if not isinstance(uid, int) or isinstance(uid, bool):
            raise IdentityError(
                f"{owner}.uid_map[{name!r}] is {uid!r}; UIDs must be integers."
            )
        if uid < MIN_SAFE_UID:
            raise IdentityError(
                f"{owner}.uid_map[{name!r}] is {uid}; UIDs below "
                f"{MIN_SAFE_UID} (root and system accounts) are never handed out."
            )
        if uid > MAX_UID:
            raise IdentityError(
                f"{owner}.uid_map[{name!r}] is {uid}, above the largest UID "
                f"Linux accepts ({MAX_UID})."
            )
        if uid_min <= uid <= uid_max:
            raise IdentityError(
                f"{owner}.uid_map[{name!r}] is {uid}, inside the derived range "
                f"{uid_min}-{uid_max} ({owner}.uid_min/uid_max), where it would "
                "collide with another user's UID. Choose a UID outside that range."
            )
        if uid in seen:
            raise IdentityError(
                f"{owner}.uid_map gives UID {uid} to both {seen[uid]!r} and "
                f"{name!r}; every user needs a UID of their own."
            )
        seen[uid] = name


def derived_uid(hub_user_id: int, uid_min: int, uid_max: int) -> int:
    """The UID a user is offered first: ``uid_min + hub user id``.

    Only a first offer: the hub's ids start over with a new database, so the
    engine's labels decide whether it is free (`first_free_uid`). Ids past the
    end of the range wrap around into it, so a large id is not refused while
    UIDs are still free.
    """
    return uid_min + hub_user_id % (uid_max - uid_min + 1)


def first_free_uid(preferred: int, uid_min: int, uid_max: int, taken: Iterable[int], *, owner: str) -> int:
    """The first UID at or after ``preferred`` that no one holds, wrapping to ``uid_min``.

    The same inputs always give the same answer, so a user who retries is offered the
    same UID. Raises `IdentityError` only when every UID of the range is held.
    """
    held = {uid for uid in taken if uid_min <= uid <= uid_max}
    size = uid_max - uid_min + 1
    if len(held) >= size:
        raise IdentityError(
            f"No UID is free: all {size} UIDs of {owner}.uid_min..uid_max "
            f"({uid_min}-{uid_max}) are held by workspaces on this engine. Ask your hub admin "
            f"to raise {owner}.uid_max (or remove workspaces no one needs)."
        )
    uid = preferred if uid_min <= preferred <= uid_max else uid_min
    while uid in held:  # ends within len(held) + 1 steps
        uid = uid + 1 if uid < uid_max else uid_min
    return uid


def check_policy_uid(uid: object, username: str, *, owner: str) -> int:
    """Validate a UID produced by a map or an admin callable."""
    if not isinstance(uid, int) or isinstance(uid, bool):
        raise IdentityError(
            f"The UID chosen for {username!r} is {uid!r}, not an integer. "
            f"Fix {owner}.uid_map (or the callable given there)."
        )
    if uid < MIN_SAFE_UID:
        raise IdentityError(
            f"The UID chosen for {username!r} is {uid}; UIDs below {MIN_SAFE_UID} "
            f"(root and system accounts) are never used. Fix {owner}.uid_map."
        )
    if uid > MAX_UID:
        raise IdentityError(
            f"The UID chosen for {username!r} is {uid}, above the largest UID Linux "
            f"accepts ({MAX_UID}). Fix {owner}.uid_map."
        )
    return uid


@dataclass(frozen=True)
class UidDecision:
    uid: int | None  # None: nothing decides yet; the spawner picks a free UID
    source: str  # "state", "workspace", "policy" or "new"
    warning: str | None = None


def resolve_uid(
    username: str,
    *,
    from_state: int | None,
    from_workspace: int | None,
    from_policy: int,
    static: bool = True,
) -> UidDecision:
    """Choose the UID for this start, preferring what the user already has.

    Order: the hub's stored spawner state, then the label on the user's
    existing workspace (the engine remembers even if the hub database was
    reset), then the policy: a static UID from `uid_map`, or (``static``
    False) only the derived UID the user would be offered. A policy that now
    disagrees is reported, never applied: moving a user would orphan their
    files. With nothing remembered and no static UID (`source` "new"), the
    spawner picks the first free UID from the offer on.
    """
    for uid, source in ((from_state, "state"), (from_workspace, "workspace")):
        if uid is None:
            continue
        if not MIN_SAFE_UID <= uid <= MAX_UID:
            raise IdentityError(
                f"{username}'s stored UID ({uid}, from {source}) is outside the safe range "
                f"{MIN_SAFE_UID}-{MAX_UID}; refusing to run or to touch the workspace. "
                "An admin must check the workspace volume's labels and the user's state."
            )
        warning = None
        if uid != from_policy:
            warning = (
                f"{username} keeps UID {uid} (from {source}); the current policy "
                f"would give {from_policy}. Users never move UIDs over existing files; "
                "to move this user, migrate their workspace and clear their state."
            )
        return UidDecision(uid, source, warning)
    if not static:
        return UidDecision(None, "new")
    return UidDecision(from_policy, "policy")


_NOT_POSIX = re.compile(r"[^a-z0-9_-]+")

#: Accounts that images commonly ship. A user named like one would replace it
#: in the generated passwd file (``root`` would leave UID 0 without a name),
#: so such users get ``user<UID>`` instead.
RESERVED_NAMES = frozenset(
    ["root", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news", "uucp", "proxy", "www-data", "backup", "list", "irc", "gnats", "nobody", "nogroup", "messagebus", "sshd", "jovyan", "ubuntu", "debian", "admin", "operator", "halt", "shutdown", "ftp", "docker", "sudo", "wheel", "adm", "staff", "users"]
)


def posix_name(username: str, uid: int) -> str:
    """A login name safe for /etc/passwd, derived from the hub user name.

    Hub names may be e-mail addresses or contain any Unicode; passwd names may
    not. Lower-case, replace the rest with '-', and fall back to ``user<UID>``
    when nothing usable is left or the name is a system account's.
    """
    name = _NOT_POSIX.sub("-", username.split("@", 1)[0].lower()).strip("-")
    if not name or not name[0].isalpha() or name in RESERVED_NAMES or name.startswith("systemd-"):
        name = f"user{uid}"
    return name[:_POSIX_NAME_MAX]


def make_identity(username: str, uid: int, home_template: str) -> Identity:
    """Build the identity for a resolved UID; the GID is the private group's."""
    name = posix_name(username, uid)
    return Identity(uid=uid, gid=uid, name=name, home=home_template.format(username=name))


def passwd_entry(identity: Identity) -> str:
    return f"{identity.name}:x:{identity.uid}:{identity.gid}::{identity.home}:/bin/bash"


def group_entry(identity: Identity) -> str:
    return f"{identity.name}:x:{identity.gid}:"


@dataclass(frozen=True)
class UidRequest:
    """Who wants a UID, for which workspace, and the range and first offer to use."""

    owner: str
    workspace: str
    offer: int  # uid_min + hub user id, wrapped into the range
    uid_min: int
    uid_max: int
    version: str
    setting_owner: str  # the configured class, as messages name its settings


#: where a remembered UID came from, for messages
_SOURCES = {"state": "database", "workspace": "workspace label"}


def uid_held_elsewhere(uid: int, source: str, *, owner: str) -> IdentityError:
    """The refusal for a UID (from `resolve_uid`'s ``source``) that another user's files
    carry too. A collision with a static UID names `uid_map`; any other blames no setting."""
    if source == "policy":
        return IdentityError(
            f"UID {uid}, which {owner}.uid_map gives you, is already used by another "
            "user's workspace, so it cannot be yours too. Ask your hub admin to fix "
            f"{owner}.uid_map."
        )
    return IdentityError(
        f"Your UID {uid} (remembered by the hub's {_SOURCES[source]}) is also carried by "
        "another user's workspace, so the hub cannot tell whose files are whose. Ask your "
        "hub admin to check the owner labels of the workspaces with that UID (the hub log "
        "names them)."
    )
