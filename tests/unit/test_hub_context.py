"""The hub-wide shared objects are built exactly once, however many threads race for them.

The hub died of a segmentation fault when two threads built DockerSpawner's lazy
class-level client at the same moment (issue 15). These tests start N threads
from a cold start, let them all ask at once, and count what was built.
"""

import threading
import time
from types import SimpleNamespace

import docker
import docker.errors
import pytest

from hardened_spawner import audit
from hardened_spawner.docker.hub_context import EngineUnavailable, HubContext, reset_hub_contexts
from hardened_spawner.docker.spawner import HardenedSpawner

THREADS = 24


@pytest.fixture(autouse=True)
def cold_start():
    reset_hub_contexts()
    yield
    reset_hub_contexts()


class SlowClient:
    """Stands in for docker.APIClient: its creation takes time, as version="auto" does."""

    made: list = []

    def __init__(self, **kwargs):
        time.sleep(0.05)  # the round trip that asks the engine its API version
        self.kwargs = kwargs
        SlowClient.made.append(self)


def race(function, threads: int = THREADS) -> list:
    """Call ``function`` from ``threads`` threads released at the same moment."""
    barrier = threading.Barrier(threads)
    results: list = [None] * threads
    errors: list = []

    def run(i):
        barrier.wait()
        try:
            results[i] = function()
        except Exception as e:
            errors.append(e)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    assert not errors, errors
    return results


def users(count: int) -> list[HardenedSpawner]:
    return [
        HardenedSpawner(user=SimpleNamespace(name=f"user{i}", id=i, admin=False, groups=[]))
        for i in range(count)
    ]


def test_racing_spawners_make_exactly_one_engine_client(monkeypatch):
    SlowClient.made = []
    monkeypatch.setattr(docker, "APIClient", SlowClient)
    spawners = users(THREADS)
    clients = race(lambda: spawners[threading.get_ident() % THREADS].client)
    assert len(SlowClient.made) == 1
    assert {id(c) for c in clients} == {id(SlowClient.made[0])}
    # and it is never replaced afterwards
    assert all(s.client is SlowClient.made[0] for s in spawners)


def test_the_client_has_a_connection_for_every_docker_thread(monkeypatch):
    SlowClient.made = []
    monkeypatch.setattr(docker, "APIClient", SlowClient)
    spawner = HardenedSpawner(docker_threads=7)
    assert spawner.client.kwargs["max_pool_size"] == 7
    assert spawner.client.kwargs["version"] == "auto"


def test_racing_spawners_share_one_thread_pool():
    spawners = users(THREADS)
    pools = race(lambda: spawners[threading.get_ident() % THREADS].executor)
    assert len({id(p) for p in pools}) == 1
    assert pools[0]._max_workers == 16


def test_racing_spawners_share_one_gpu_broker():
    spawners = users(THREADS)
    brokers = race(lambda: spawners[threading.get_ident() % THREADS].gpus)
    assert len({id(b) for b in brokers}) == 1


def test_racing_for_the_audit_trail_opens_the_sink_once(tmp_path, monkeypatch):
    opened = []
    real_init = audit.AuditTrail.__init__

    def slow_init(self, sink, log=None):
        time.sleep(0.05)
        opened.append(sink)
        real_init(self, sink, log)

    monkeypatch.setattr(audit.AuditTrail, "__init__", slow_init)
    sink = str(tmp_path / "audit.jsonl")
    trails = race(lambda: audit.get_audit_trail(sink))
    assert opened == [sink]
    assert len({id(t) for t in trails}) == 1


def test_other_engine_settings_get_a_context_of_their_own():
    a, b = HardenedSpawner(), HardenedSpawner(client_kwargs={"base_url": "unix:///other.sock"})
    assert a.context is not b.context
    assert a.context is HardenedSpawner().context
    assert b.context.address == "unix:///other.sock"


def test_an_engine_that_does_not_answer_is_asked_again_later():
    attempts = []

    def connect():
        attempts.append(1)
        if len(attempts) < 3:
            raise docker.errors.DockerException("Error while fetching server API version: refused")
        return "client"

    context = HubContext(connect, threads=2, address="unix:///run/nothing.sock")
    for _ in range(2):
        with pytest.raises(EngineUnavailable) as err:
            _ = context.client
        assert str(err.value) == (
            "Cannot reach the Docker engine at unix:///run/nothing.sock: Error while fetching server "
            "API version: refused. Is the engine running, and may this account use it (the docker "
            "group, DOCKER_HOST, DockerSpawner.client_kwargs)?"
        )
    assert not context.connected
    assert context.client == "client" and context.client == "client"
    assert len(attempts) == 3
    context.shutdown()
