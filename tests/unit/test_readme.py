"""The README's settings table documents every setting HardenedSpawner defines or re-defaults."""

import re
from pathlib import Path

from hardened_spawner.docker.spawner import HardenedSpawner
from hardened_spawner.settings import HardenedSettings

README = Path(__file__).resolve().parents[2] / "README.md"


def documented_settings() -> set[str]:
    return set(re.findall(r"^\| `(\w+)` \|", README.read_text(), re.M))


def test_every_setting_is_in_the_readme_table():
    own = {
        name
        for name in HardenedSpawner.class_trait_names(config=True)
        if name in vars(HardenedSettings) or f"_default_{name}" in vars(HardenedSettings)
    }
    assert own, "found no settings: the introspection above is broken"
    missing = own - documented_settings()
    assert not missing, f"settings missing from the README table: {sorted(missing)}"


def test_every_setting_has_help_text():
    for name in HardenedSpawner.class_trait_names(config=True):
        if name in vars(HardenedSettings):
            assert HardenedSpawner.class_traits()[name].help.strip(), name
