"""A least-privilege DockerSpawner for shared GPU servers."""

from ._version import __version__

__all__ = ["HardenedSpawner", "__version__"]


def __getattr__(name):
    # Imported on demand, so the pure policy modules (and their unit tests)
    # do not pull in JupyterHub, DockerSpawner and docker-py.
    if name == "HardenedSpawner":
        from .spawner import HardenedSpawner

        return HardenedSpawner
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
