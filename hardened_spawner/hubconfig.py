"""The hub's ``jupyterhub_config.py``, read outside the hub the way the hub reads it.

The admin commands (`cli`, `isolation.command`) load the config file and build a
`HardenedSpawner` from it, so every validator runs and every setting has exactly one
source: the spawner's traits, never a default restated from a raw config dict.
"""

from __future__ import annotations

import logging
import os
from types import SimpleNamespace

from traitlets import TraitError
from traitlets.config import Config
from traitlets.config.loader import ConfigFileNotFound, PyFileConfigLoader

from .errors import CannotCheck

DEFAULT_CONFIG_FILE = "jupyterhub_config.py"

#: A stand-in for the hub user the spawner is built for: DockerSpawner's
#: observers render name templates with it; nothing here acts for a user.
_STAND_IN_USER = {"name": "hardened-spawner-cli", "id": 0, "admin": False, "groups": []}


def default_config_file(cwd: str = ".") -> str:
    """The hub's config file in ``cwd`` if there is one, else "" (the spawner's defaults)."""
    return DEFAULT_CONFIG_FILE if os.path.isfile(os.path.join(cwd, DEFAULT_CONFIG_FILE)) else ""


def load_hub_config(path: str) -> Config:
    """The hub's ``jupyterhub_config.py``, loaded as the hub loads it (``c = get_config()``)."""
    if not path:
        return Config()
    directory, filename = os.path.split(os.path.abspath(path))
    try:
        return PyFileConfigLoader(filename, path=directory).load_config()
    except ConfigFileNotFound:
        raise CannotCheck(f"The config file {path} does not exist.") from None
    except Exception as e:
        raise CannotCheck(f"Loading the config file {path} failed: {e!r}") from None


def build_spawner(config: Config, log: logging.Logger | None = None):
    """A HardenedSpawner with the hub's settings, the way the hub checks its
    config at start: every validator runs, so bad settings fail here too."""
    from .docker.spawner import HardenedSpawner

    try:
        return HardenedSpawner(
            config=config, log=log or logging.getLogger(__name__), user=SimpleNamespace(**_STAND_IN_USER)
        )
    except TraitError as e:
        raise CannotCheck(f"Invalid HardenedSpawner configuration: {e}") from None
