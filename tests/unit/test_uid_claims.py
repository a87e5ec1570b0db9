"""Claiming a UID on the engine: the first claim wins, by the engine's own per-name lock."""

import docker.errors
import pytest

from hardened_spawner import labels
from hardened_spawner.docker import uid_claims


class FakeEngine:
    """Volumes as the engine keeps them: creating an existing name returns the first one."""

    def __init__(self):
        self.volumes_by_name: dict[str, dict] = {}
        self.containers_found: list[dict] = []

    def create_volume(self, name, labels):
        self.volumes_by_name.setdefault(name, {"Name": name, "Labels": dict(labels)})

    def inspect_volume(self, name):
        if name not in self.volumes_by_name:
            raise docker.errors.NotFound(name)
        return self.volumes_by_name[name]

    def volumes(self, filters):
        wanted = [f.split("=", 1) for f in filters["label"]]
        found = [v for v in self.volumes_by_name.values()
                 if all(v["Labels"].get(k) == value for k, value in wanted)]
        return {"Volumes": found}

    def containers(self, all, filters):
        return self.containers_found


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
    engine.containers_found = [{"Labels": {labels.OWNER: "carol", labels.UID: "200002"}}]
    assert uid_claims.uid_holders(engine) == {200001: {"alice"}, 200002: {"bob", "carol"}}


def test_an_engine_error_other_than_a_conflict_is_raised():
    class Refusing(FakeEngine):
        def create_volume(self, name, labels):
            raise docker.errors.APIError("no space left", response=type("R", (), {"status_code": 500})())

    with pytest.raises(docker.errors.APIError):
        uid_claims.claim(Refusing(), 200001, "alice", "ws-alice", "1.0")
