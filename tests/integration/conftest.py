"""Fixtures for tests against the real engine, a real hub and the real proxy.

A missing engine, image or proxy is a failure, never a skip: these tests are
the proof that the hardening works, and CI must not pass without them.
"""

import shutil
from pathlib import Path

import docker
import pytest

from hubdriver import SINGLEUSER_IMAGE, Hub

from .hubtools import UID_BASE, cleanup_engine

INTEGRATION = Path(__file__).parent


def pytest_collection_modifyitems(items):
    """Every test in this folder needs the engine: mark it, so `-m "not integration"` leaves
    them all out (a `pytestmark` in a conftest file marks nothing)."""
    for item in items:
        if INTEGRATION in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Each phase's report on the test item, so a fixture can tell that the test failed
    (the browser tests then keep a screenshot)."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture(scope="session")
def engine():
    try:
        client = docker.from_env()
        client.ping()
    except Exception as e:
        pytest.fail(f"No Docker engine answers ({e}). Run scripts/setup.sh --gpu-stub first.")
    try:
        client.images.get(SINGLEUSER_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"Image {SINGLEUSER_IMAGE} is missing. Run scripts/setup.sh --gpu-stub first.")
    if not shutil.which("configurable-http-proxy"):
        pytest.fail("configurable-http-proxy is missing. Run scripts/setup.sh --gpu-stub first.")
    cleanup_engine()
    yield client
    cleanup_engine()


@pytest.fixture(scope="session")
def hub_factory(engine, tmp_path_factory):
    """Start hubs with extra config; each gets its own UID range so users never collide."""
    hubs = []

    def start(extra_config: str = "", wait: bool = True) -> Hub:
        index = len(hubs)
        hub = Hub(
            workdir=tmp_path_factory.mktemp(f"hub{index}"),
            extra_config=extra_config,
            uid_min=UID_BASE + 10000 * index,
        )
        hubs.append(hub)
        return hub.start(wait=wait)

    yield start
    for hub in hubs:
        hub.stop()


@pytest.fixture(scope="session")
def hub(hub_factory):
    """The default hub: HardenedSpawner with its defaults and the test image."""
    return hub_factory()
