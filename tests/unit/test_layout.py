"""The package's layout keeps the promises its README makes (issue 12)."""

import ast
import subprocess
import sys
from pathlib import Path

from hardened_spawner.docker import guard, inspection

PACKAGE = Path(__file__).resolve().parents[2] / "hardened_spawner"
SOURCES = {  # the package itself is "" (its __init__), a subpackage "isolation"
    ".".join(path.relative_to(PACKAGE).with_suffix("").parts).removesuffix("__init__").rstrip("."): path
    for path in sorted(PACKAGE.rglob("*.py"))
    if path.stem != "__main__"
}
MODULES = sorted(SOURCES)  # dotted, relative to the package: "spawner", "isolation.rules", ...


def imports_of(module: str) -> set[str]:
    """The package's modules that ``module`` imports, at module level or inside a function
    (``from . import x`` names a module when there is one; the package itself is "")."""
    is_package = SOURCES[module].name == "__init__.py"
    here = module.split(".") if is_package else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(SOURCES[module].read_text())):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = here[: len(here) - (node.level - 1)] if node.level > 1 else here
            target = [*base, *(node.module or "").split(".")] if node.module else base
        elif (node.module or "").startswith("hardened_spawner."):
            target = node.module.split(".")[1:]
        else:
            continue
        target = [part for part in target if part]
        for alias in node.names:
            submodule = ".".join([*target, alias.name])
            # ``from pkg import submodule`` needs that submodule; any other name is the
            # package's (or module's) own, read from its body
            found.add(submodule if submodule in SOURCES else ".".join(target))
    return {name for name in found if name in SOURCES and name != module}


def cycles() -> list[list[str]]:
    graph = {m: imports_of(m) for m in MODULES}
    found, path, state = [], [], {}

    def visit(module):
        state[module] = "open"
        path.append(module)
        for other in sorted(graph[module]):
            if state.get(other) == "open":
                found.append(path[path.index(other):] + [other])
            elif other not in state:
                visit(other)
        path.pop()
        state[module] = "done"

    for module in MODULES:
        if module not in state:
            visit(module)
    return found


def test_no_import_cycle_even_through_imports_inside_functions():
    assert "docker.isolation.rules" in MODULES and "docker.isolation.policy" in imports_of("docker.isolation.rules")
    assert cycles() == []


def test_importing_every_module_patches_nothing():
    code = (
        "import importlib, jupyterhub.app as app\n"
        "before = app.JupyterHub.init_tornado_settings\n"
        f"for name in {MODULES!r}:\n"
        "    importlib.import_module(('hardened_spawner.' + name).rstrip('.'))\n"
        "assert app.JupyterHub.init_tornado_settings is before, 'patched on import'\n"
        "import hardened_spawner\n"
        "hardened_spawner.HardenedSpawner  # the entry point: installs the hub-start checks\n"
        "assert app.JupyterHub.init_tornado_settings is not before\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_no_function_is_over_60_lines():
    long = []
    for path in SOURCES.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 60:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.name} ({length} lines)")
    assert long == []


def test_the_spawner_is_thin():
    assert len((PACKAGE / "docker" / "spawner.py").read_text().splitlines()) <= 500


def test_every_guard_rule_is_in_the_cis_report_and_every_cis_item_has_a_rule():
    declared = {item for rule in guard.RULES for items in rule.cis.values() for item in items}
    assert declared == set(inspection.CIS_ITEMS)
    check_ids = [check for rule in guard.RULES for check in rule.checks]
    assert len(check_ids) == len(set(check_ids))  # one rule per check id
    # everything the guard reports of the worst spec comes from a declared rule
    worst_config = {"User": "root", "Cmd": ["--allow-root"]}
    worst_host = {
        "Privileged": True, "PidMode": "host", "Binds": ["/var/run/docker.sock:/s", "/etc:/e:shared"],
        "VolumesFrom": ["x"], "Devices": ["/dev/kvm"], "DeviceRequests": [{"Count": -1}],
        "PortBindings": {"8888/tcp": [{}]}, "NetworkMode": "bridge", "CgroupParent": "/x",
        "RestartPolicy": {"Name": "always"}, "CapAdd": ["SYS_ADMIN"], "GroupAdd": ["0"],
        "SecurityOpt": ["seccomp=unconfined", "apparmor=unconfined", "label=disable",
                        "systempaths=unconfined"], "OomKillDisable": True,
    }
    seen = {v.check for v in guard.check_container(worst_config, worst_host, guard.GuardPolicy())}
    assert seen == set(check_ids)
    for violation in guard.check_container(worst_config, worst_host, guard.GuardPolicy()):
        assert set(inspection.cis_items_of(violation, worst_host)) <= set(inspection.CIS_ITEMS)
