"""Claiming a UID on the engine: the first claim wins, by the engine's own per-name lock."""

import logging

import docker.errors
import pytest

from hardened_spawner import labels
from hardened_spawner.core.identity import IdentityError, UidRequest
from hardened_spawner.docker import uid_claims


class FakeEngine:
    """Volumes as the engine keeps them: creating an existing name returns the first one."""

    def __init__(self):
        self.volumes_by_name: dict[str, dict] = {}
        self.containers_found: list[dict] = []
        self.asked: list[list[str]] = []  # the label filters of each listing

    def create_volume(self, name, labels):
        self.volumes_by_name.setdefault(name, {"Name": name, "Labels": dict(labels)})

    def inspect_volume(self, name):
        if name not in self.volumes_by_name:
            raise docker.errors.NotFound(name)
        return self.volumes_by_name[name]

    def volumes(self, filters):
        self.asked.append(filters["label"])
        return {"Volumes": _matching(self.volumes_by_name.values(), filters)}

    def containers(self, all, filters):
        return _matching(self.containers_found, filters)


def _matching(items, filters):
    wanted = [f.split("=", 1) for f in filters["label"]]
    return [i for i in items if all(i["Labels"].get(k) == value for k, value in wanted)]


def test_the_first_claim_wins():
    engine = FakeEngine()
    assert uid_claims.claim(engine, 200001, "alice", "ws-alice", "1.0")
    assert not uid_claims.claim(engine, 200001, "bob", "ws-bob", "1.0")
    assert uid_claims.claim(engine, 200001, "alice", "ws-alice", "1.0")  # again: still hers
    # another hub's alice, with another workspace, does not get this alice's UID
    assert not uid_claims.claim(engine, 200001, "alice", "other-ws-alice", "1.0")


def test_a_claim_is_found_again_for_the_same_workspace_only():
    engine = FakeEngine()
    uid_claims.claim(engine, 200007, "alice", "ws-alice", "1.0")
    assert uid_claims.claimed_uid(engine, "alice", "ws-alice") == 200007
    assert uid_claims.claimed_uid(engine, "alice", "other-ws-alice") is None
    assert uid_claims.claimed_uid(engine, "bob", "ws-bob") is None


def test_holders_come_from_every_managed_volume_and_container():
    engine = FakeEngine()
    uid_claims.claim(engine, 200001, "alice", "ws-alice", "1.0")
    engine.create_volume("ws-bob", {labels.MANAGED: "true", labels.OWNER: "bob", labels.UID: "200002"})
    engine.create_volume("junk", {labels.MANAGED: "true", labels.UID: "not a number"})
    engine.containers_found = [{"Labels": {labels.MANAGED: "true", labels.OWNER: "carol", labels.UID: "200002"}}]
    assert uid_claims.uid_holders(engine) == {200001: {"alice"}, 200002: {"bob", "carol"}}
    assert uid_claims.uid_holders(engine, 200002) == {200002: {"bob", "carol"}}


REQUEST = UidRequest("dave", "ws-dave", 200001, 200001, 200100, "1.0", "HardenedSpawner")


def held(engine, uid, owner):
    engine.create_volume(f"ws-{owner}", {labels.MANAGED: "true", labels.OWNER: owner, labels.UID: str(uid)})


def test_a_new_user_asks_the_engine_about_their_offer_only():
    engine = FakeEngine()
    held(engine, 200050, "erin")
    assert uid_claims.claim_free_uid(engine, REQUEST, logging.getLogger("t")) == 200001
    assert all(f"{labels.UID}=200001" in filters for filters in engine.asked)


def test_an_offer_held_by_others_moves_on_and_a_crowded_range_is_read_whole():
    engine = FakeEngine()
    for uid in range(200001, 200001 + uid_claims.PROBES + 2):
        held(engine, uid, f"u{uid}")
    assert uid_claims.claim_free_uid(engine, REQUEST, logging.getLogger("t")) == 200001 + uid_claims.PROBES + 2
    assert [f for f in engine.asked if not any(x.startswith(f"{labels.UID}=") for x in f)]  # one full look


def test_a_known_uid_held_by_another_is_refused():
    engine = FakeEngine()
    held(engine, 200001, "erin")
    with pytest.raises(IdentityError):
        uid_claims.claim_known_uid(engine, 200001, "workspace", REQUEST, logging.getLogger("t"))
    uid_claims.claim_known_uid(engine, 200002, "workspace", REQUEST, logging.getLogger("t"))
    assert engine.volumes_by_name[uid_claims.claim_name(200002)]["Labels"][labels.OWNER] == "dave"


def test_an_engine_error_other_than_a_conflict_is_raised():
    class Refusing(FakeEngine):
        def create_volume(self, name, labels):
            raise docker.errors.APIError("no space left", response=type("R", (), {"status_code": 500})())

    with pytest.raises(docker.errors.APIError):
        uid_claims.claim(Refusing(), 200001, "alice", "ws-alice", "1.0")
