"""How the spawner turns what went wrong into what the user reads (no engine needed)."""

from types import SimpleNamespace

import docker.errors
import pytest
import requests

from hardened_spawner.core.identity import IdentityError
from hardened_spawner.docker.hub_context import EngineUnavailable, reset_hub_contexts
from hardened_spawner.docker.spawner import HardenedSpawner

ENGINE_GONE = (
    "The Docker engine that runs the servers is not answering, so your server could not be "
    "started. Nothing of yours was changed. Try again in a minute; if it keeps happening, tell "
    "your hub admin (the hub log has the details)."
)


@pytest.fixture
def spawner():
    reset_hub_contexts()
    yield HardenedSpawner(user=SimpleNamespace(name="alice", id=1, admin=False, groups=[]))
    reset_hub_contexts()


@pytest.mark.parametrize("error", [
    EngineUnavailable("Cannot reach the Docker engine at unix:///x.sock: refused."),
    requests.exceptions.ConnectionError("Connection aborted."),
    docker.errors.DockerException("Error while fetching server API version"),
])
def test_an_engine_that_went_away_is_a_4xx_refusal_that_says_so(spawner, error):
    refusal = spawner._as_refusal(error)
    assert refusal.jupyterhub_message == ENGINE_GONE
    assert refusal.reason == "engine-unavailable"
    # 4xx: an outage must not count toward JupyterHub's consecutive_failure_limit
    assert refusal.status_code == 424


def test_an_engine_answer_is_not_an_outage(spawner):
    refusal = spawner._as_refusal(docker.errors.APIError("bad", explanation="invalid mount"))
    assert refusal.reason == "error" and refusal.status_code == 500


def test_a_uid_problem_is_the_users_page_message(spawner):
    refusal = spawner._as_refusal(IdentityError("No UID is free: ..."))
    assert (refusal.reason, refusal.status_code, refusal.jupyterhub_message) == (
        "identity", 403, "No UID is free: ...")
