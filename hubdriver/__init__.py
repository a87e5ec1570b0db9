"""Drive a real JupyterHub, its configurable-http-proxy and real single-user servers.

A hub is a JupyterHub process started with HardenedSpawner from a generated config on
free ports (`Hub`); it creates users, spawns and stops their servers through the hub's
REST API and follows the spawn's progress stream, and code runs in a kernel of a user's
server through the proxy over the Jupyter kernel protocol (`Kernel`). The integration
tests (tests/integration/) and the benchmarks (benchmarks/) both use it. It is development
tooling, not part of the product: it is not installed with hardened_spawner.
"""

from .host import docker0_address, free_port
from .hub import SINGLEUSER_IMAGE, TEST_PREFIX, Hub, HubError, SpawnResult
from .kernel import Execution, Kernel

__all__ = [
    "SINGLEUSER_IMAGE",
    "TEST_PREFIX",
    "Execution",
    "Hub",
    "HubError",
    "Kernel",
    "SpawnResult",
    "docker0_address",
    "free_port",
]
