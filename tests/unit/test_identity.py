"""identity: UID range and static UID checks, UID resolution, POSIX names, passwd/group lines."""

import pytest

from hardened_spawner.core.identity import (
    MIN_SAFE_UID,
    Identity,
    IdentityError,
    UidDecision,
    check_policy_uid,
    check_static_uids,
    check_uid_range,
    derived_uid,
    first_free_uid,
    group_entry,
    make_identity,
    passwd_entry,
    posix_name,
    resolve_uid,
)

LOW, HIGH = 200000, 999_999_999


def test_min_safe_uid():
    assert MIN_SAFE_UID == 1000


# --- check_uid_range -----------------------------------------------------


@pytest.mark.parametrize(
    "uid_min, uid_max",
    [(1000, 1001), (200000, 999_999_999), (200000, 2**31 - 2)],
)
def test_check_uid_range_accepts(uid_min, uid_max):
    assert check_uid_range(uid_min, uid_max, owner="HardenedSpawner") is None


@pytest.mark.parametrize(
    "uid_min, uid_max, message",
    [
        (
            999,
            200000,
            "HardenedSpawner.uid_min is 999; it must be at least 1000 so that no user runs as "
            "root or as a host system account. Pick a range above your host's human accounts, "
            "e.g. 200000.",
        ),
        (
            0,
            200000,
            "HardenedSpawner.uid_min is 0; it must be at least 1000 so that no user runs as "
            "root or as a host system account. Pick a range above your host's human accounts, "
            "e.g. 200000.",
        ),
        (
            200000,
            200000,
            "HardenedSpawner.uid_max (200000) must be greater than HardenedSpawner.uid_min (200000).",
        ),
        (
            200000,
            1000,
            "HardenedSpawner.uid_max (1000) must be greater than HardenedSpawner.uid_min (200000).",
        ),
        (
            200000,
            2**31 - 1,
            "HardenedSpawner.uid_max (2147483647) is above the largest UID Linux accepts "
            "(2147483646).",
        ),
    ],
)
def test_check_uid_range_refuses(uid_min, uid_max, message):
    with pytest.raises(IdentityError) as err:
        check_uid_range(uid_min, uid_max, owner="HardenedSpawner")
    assert str(err.value) == message


# --- check_static_uids ---------------------------------------------------


@pytest.mark.parametrize(
    "uid_map",
    [
        {},
        {"alice": 1000, "bob": 1001},
        {"alice": 199999, "bob": 1_000_000_000},  # just below and just above the range
    ],
)
def test_check_static_uids_accepts(uid_map):
    assert check_static_uids(uid_map, LOW, HIGH, owner="HardenedSpawner") is None


@pytest.mark.parametrize(
    "uid_map, message",
    [
        (
            {"alice": "5000"},
            "HardenedSpawner.uid_map['alice'] is '5000'; UIDs must be integers.",
        ),
        (
            {"alice": 5000.0},
            "HardenedSpawner.uid_map['alice'] is 5000.0; UIDs must be integers.",
        ),
        (
            {"alice": True},
            "HardenedSpawner.uid_map['alice'] is True; UIDs must be integers.",
        ),
        (
            {"alice": None},
            "HardenedSpawner.uid_map['alice'] is None; UIDs must be integers.",
        ),
        (
            {"alice": 999},
            "HardenedSpawner.uid_map['alice'] is 999; UIDs below 1000 (root and system "
            "accounts) are never handed out.",
        ),
        (
            {"alice": 0},
            "HardenedSpawner.uid_map['alice'] is 0; UIDs below 1000 (root and system "
            "accounts) are never handed out.",
        ),
        (
            {"alice": -1},
            "HardenedSpawner.uid_map['alice'] is -1; UIDs below 1000 (root and system "
            "accounts) are never handed out.",
        ),
        (
            {"alice": LOW},
            "HardenedSpawner.uid_map['alice'] is 200000, inside the derived range "
            "200000-999999999 (HardenedSpawner.uid_min/uid_max), where it would collide with "
            "another user's UID. Choose a UID outside that range.",
        ),
        (
            {"alice": HIGH},
            "HardenedSpawner.uid_map['alice'] is 999999999, inside the derived range "
            "200000-999999999 (HardenedSpawner.uid_min/uid_max), where it would collide with "
            "another user's UID. Choose a UID outside that range.",
        ),
        (
            # sorted by name, so the message is stable whatever the dict order
            {"carol": 5000, "alice": 5000},
            "HardenedSpawner.uid_map gives UID 5000 to both 'alice' and 'carol'; every user "
            "needs a UID of their own.",
        ),
    ],
)
def test_check_static_uids_refuses(uid_map, message):
    with pytest.raises(IdentityError) as err:
        check_static_uids(uid_map, LOW, HIGH, owner="HardenedSpawner")
    assert str(err.value) == message


@pytest.mark.parametrize("uid", [2**31 - 1, 2**32 - 1, 2**32])
def test_check_static_uids_refuses_uids_above_linux_max(uid):
    with pytest.raises(IdentityError, match="largest UID Linux accepts"):
        check_static_uids({"alice": uid}, LOW, HIGH, owner="HardenedSpawner")


# --- derived_uid ---------------------------------------------------------


@pytest.mark.parametrize(
    "hub_user_id, uid_min, uid_max, expected",
    [
        (1, LOW, HIGH, 200001),
        (42, LOW, HIGH, 200042),
        (10, 1000, 1010, 1010),  # exactly uid_max is still fine
    ],
)
def test_derived_uid(hub_user_id, uid_min, uid_max, expected):
    assert derived_uid(hub_user_id, uid_min, uid_max) == expected


def test_derived_uid_wraps_past_uid_max():
    # only an offer: a full range is refused by first_free_uid, not a large hub id
    assert derived_uid(11, 1000, 1010) == 1000
    assert derived_uid(25, 1000, 1010) == 1003


# --- first_free_uid --------------------------------------------------------


@pytest.mark.parametrize(
    "preferred, taken, expected",
    [
        (1003, set(), 1003),  # the derived UID when it is free
        (1003, {1003}, 1004),  # else the next free one
        (1003, {1003, 1004, 1005}, 1006),
        (1010, {1010}, 1000),  # wrapping to uid_min
        (1009, {1009, 1010, 1000, 1001}, 1002),
        (1003, {5, 1004, 999999}, 1003),  # UIDs outside the range do not count
    ],
)
def test_first_free_uid(preferred, taken, expected):
    assert first_free_uid(preferred, 1000, 1010, taken, owner="HardenedSpawner") == expected


def test_first_free_uid_is_the_same_every_time():
    taken = {200001, 200002, 200004}
    assert {first_free_uid(200001, LOW, HIGH, taken, owner="HardenedSpawner") for _ in range(5)} == {200003}


def test_first_free_uid_refuses_only_a_full_range():
    assert first_free_uid(1000, 1000, 1010, set(range(1000, 1010)), owner="HardenedSpawner") == 1010
    with pytest.raises(IdentityError) as err:
        first_free_uid(1000, 1000, 1010, set(range(1000, 1011)), owner="HardenedSpawner")
    assert str(err.value) == (
        "No UID is free: all 11 UIDs of HardenedSpawner.uid_min..uid_max (1000-1010) are held by "
        "workspaces on this engine. Ask your hub admin to raise HardenedSpawner.uid_max (or "
        "remove workspaces no one needs)."
    )


# --- check_policy_uid ----------------------------------------------------


@pytest.mark.parametrize("uid", [1000, 300001])
def test_check_policy_uid_accepts(uid):
    assert check_policy_uid(uid, "alice", owner="HardenedSpawner") == uid


@pytest.mark.parametrize(
    "uid, message",
    [
        (
            "300001",
            "The UID chosen for 'alice' is '300001', not an integer. Fix HardenedSpawner.uid_map "
            "(or the callable given there).",
        ),
        (
            None,
            "The UID chosen for 'alice' is None, not an integer. Fix HardenedSpawner.uid_map "
            "(or the callable given there).",
        ),
        (
            False,
            "The UID chosen for 'alice' is False, not an integer. Fix HardenedSpawner.uid_map "
            "(or the callable given there).",
        ),
        (
            0,
            "The UID chosen for 'alice' is 0; UIDs below 1000 (root and system accounts) are "
            "never used. Fix HardenedSpawner.uid_map.",
        ),
        (
            999,
            "The UID chosen for 'alice' is 999; UIDs below 1000 (root and system accounts) are "
            "never used. Fix HardenedSpawner.uid_map.",
        ),
    ],
)
def test_check_policy_uid_refuses(uid, message):
    with pytest.raises(IdentityError) as err:
        check_policy_uid(uid, "alice", owner="HardenedSpawner")
    assert str(err.value) == message


def test_check_policy_uid_refuses_uid_above_linux_max():
    with pytest.raises(IdentityError):
        check_policy_uid(2**32, "alice", owner="HardenedSpawner")


# --- resolve_uid ---------------------------------------------------------


def _moved(source, uid, policy):
    return (
        f"alice keeps UID {uid} (from {source}); the current policy would give {policy}. "
        "Users never move UIDs over existing files; to move this user, migrate their "
        "workspace and clear their state."
    )


@pytest.mark.parametrize(
    "from_state, from_workspace, from_policy, expected",
    [
        # nothing remembered: the policy decides
        (None, None, 300001, UidDecision(300001, "policy")),
        # the hub's state wins over everything, silently when all agree
        (300001, 300001, 300001, UidDecision(300001, "state")),
        (300001, None, 300001, UidDecision(300001, "state")),
        # state wins over a disagreeing workspace label and policy, with a warning
        (300001, 400001, 500001, UidDecision(300001, "state", _moved("state", 300001, 500001))),
        # the warning compares with the policy only: a differing label alone is no warning
        (300001, 400001, 300001, UidDecision(300001, "state")),
        # no state: the workspace label wins over the policy
        (None, 400001, 400001, UidDecision(400001, "workspace")),
        (None, 400001, 500001, UidDecision(400001, "workspace", _moved("workspace", 400001, 500001))),
    ],
)
def test_resolve_uid(from_state, from_workspace, from_policy, expected):
    decision = resolve_uid(
        "alice", from_state=from_state, from_workspace=from_workspace, from_policy=from_policy
    )
    assert decision == expected


@pytest.mark.parametrize(
    "from_state, from_workspace, expected",
    [
        # no uid_map entry: remembered UIDs are kept (a differing offer is reported) ...
        (None, 400001, UidDecision(400001, "workspace", _moved("workspace", 400001, 300001))),
        (300001, None, UidDecision(300001, "state")),
        # ... and with nothing remembered the spawner picks a free UID from the offer on
        (None, None, UidDecision(None, "new")),
    ],
)
def test_resolve_uid_without_a_static_uid(from_state, from_workspace, expected):
    decision = resolve_uid(
        "alice", from_state=from_state, from_workspace=from_workspace, from_policy=300001, static=False
    )
    assert decision == expected


# --- posix_name ----------------------------------------------------------


@pytest.mark.parametrize(
    "username, expected",
    [
        ("alice", "alice"),
        ("Alice", "alice"),
        ("ALICE_B-2", "alice_b-2"),
        ("alice.smith@example.org", "alice-smith"),  # domain dropped, '.' becomes '-'
        ("Jürgen", "j-rgen"),
        ("a  b!!c", "a-b-c"),  # a run of bad characters is one '-'
        ("--bob--", "bob"),  # no leading or trailing '-'
        ("名前", "user300001"),  # nothing usable left
        ("1alice", "user300001"),  # must start with a letter
        ("_alice", "user300001"),
        ("", "user300001"),
        ("@example.org", "user300001"),
        ("x" * 40, "x" * 32),  # truncated to 32 characters
    ],
)
def test_posix_name(username, expected):
    assert posix_name(username, 300001) == expected


# --- make_identity, passwd and group lines -------------------------------


def test_make_identity():
    identity = make_identity("Alice.Smith@example.org", 300001, "/home/{username}")
    assert identity == Identity(uid=300001, gid=300001, name="alice-smith", home="/home/alice-smith")
    assert identity.user_spec == "300001:300001"


def test_make_identity_custom_home_template():
    identity = make_identity("1bob", 300002, "/srv/homes/{username}/work")
    assert identity == Identity(uid=300002, gid=300002, name="user300002", home="/srv/homes/user300002/work")


def test_passwd_entry():
    identity = make_identity("alice", 300001, "/home/{username}")
    assert passwd_entry(identity) == "alice:x:300001:300001::/home/alice:/bin/bash"


def test_group_entry():
    identity = make_identity("alice", 300001, "/home/{username}")
    assert group_entry(identity) == "alice:x:300001:"
