"""Every unit test starts with no GPU table: the hub's tables (`gpu_broker.broker_for`) live
for the process, and a table one test filled must not decide another's assignments."""

import pytest

from hardened_spawner import gpu_broker


@pytest.fixture(autouse=True)
def no_gpu_tables():
    gpu_broker.reset()
    yield
    gpu_broker.reset()
