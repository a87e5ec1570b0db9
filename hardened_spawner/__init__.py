"""Least-privilege spawners for shared GPU servers: `HardenedSpawner` (Docker, entry point
``hardened``) and `HardenedKubeSpawner` (Kubernetes, ``hardened-kube``), one policy core
(`core`) rendered by two backends (`docker`, `kubernetes`).

Importing this package, or any of its modules, changes nothing outside it. The one
change it makes to JupyterHub is made here, when the hub asks for a spawner class
(an entry point, or ``hardened_spawner.HardenedSpawner``): JupyterHub has no
start hook for spawners, so `hubstart.install_hub_start_checks` wraps the hub's
``init_tornado_settings`` to check the configuration (and stop the hub on a bad setting)
before anything is served, for whichever hardened spawner the hub uses (both are a
`lifecycle.HardenedLifecycle`). A hub that uses another spawner class is not affected.
"""

from ._version import __version__
from .page_templates import TEMPLATES

__all__ = ["TEMPLATES", "HardenedKubeSpawner", "HardenedSpawner", "__version__"]


def __getattr__(name):
    # Imported on demand, so the pure policy modules (and their unit tests)
    # do not pull in JupyterHub, DockerSpawner, kubespawner and their clients.
    if name == "HardenedSpawner":
        from .docker.spawner import HardenedSpawner as spawner_class
    elif name == "HardenedKubeSpawner":  # needs the [kubernetes] extra
        from .kubernetes.spawner import HardenedKubeSpawner as spawner_class
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from .hubstart import install_hub_start_checks

    install_hub_start_checks()
    return spawner_class
