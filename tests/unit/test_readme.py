"""The README's settings tables document every setting the hardened spawners define or
re-default: the shared ones, Docker's, and Kubernetes'."""

import re
from pathlib import Path

import pytest

from hardened_spawner.docker.image_settings import ImageAdmissionSettings
from hardened_spawner.docker.settings import DockerSettings
from hardened_spawner.docker.spawner import HardenedSpawner
from hardened_spawner.kubernetes.settings import KubeSettings
from hardened_spawner.kubernetes.spawner import HardenedKubeSpawner
from hardened_spawner.quota_settings import WorkspaceQuotaSettings
from hardened_spawner.settings import HardenedSettings

README = Path(__file__).resolve().parents[2] / "README.md"
SPAWNERS = {
    HardenedSpawner: (HardenedSettings, WorkspaceQuotaSettings, DockerSettings, ImageAdmissionSettings),
    HardenedKubeSpawner: (HardenedSettings, WorkspaceQuotaSettings, KubeSettings),
}


def documented_settings() -> set[str]:
    return set(re.findall(r"^\| `(\w+)` \|", README.read_text(), re.M))


def own_settings(spawner, mixins) -> set[str]:
    return {
        name
        for name in spawner.class_trait_names(config=True)
        if any(name in vars(m) or f"_default_{name}" in vars(m) for m in mixins)
    }


@pytest.mark.parametrize("spawner", SPAWNERS, ids=lambda s: s.__name__)
def test_every_setting_is_in_the_readme_tables(spawner):
    own = own_settings(spawner, SPAWNERS[spawner])
    assert own, "found no settings: the introspection above is broken"
    missing = own - documented_settings()
    assert not missing, f"settings missing from the README tables: {sorted(missing)}"


@pytest.mark.parametrize("spawner", SPAWNERS, ids=lambda s: s.__name__)
def test_every_setting_has_help_text(spawner):
    for name in spawner.class_trait_names(config=True):
        if any(name in vars(m) for m in SPAWNERS[spawner]):
            assert spawner.class_traits()[name].help.strip(), name
