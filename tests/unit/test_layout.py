"""The package's layout keeps the promises its README makes (issue 12)."""

import ast
import subprocess
import sys
from pathlib import Path

from hardened_spawner import guard, inspection

PACKAGE = Path(__file__).resolve().parents[2] / "hardened_spawner"
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__main__")


def imports_of(module: str) -> set[str]:
    """The package's modules that ``module`` imports, at module level or inside a function."""
    found = set()
    for node in ast.walk(ast.parse((PACKAGE / f"{module}.py").read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:  # from . import a, b
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hardened_spawner."):
            found.add(node.module.split(".")[1])
    return found & set(MODULES)


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
    assert cycles() == []


def test_importing_every_module_patches_nothing():
    code = (
        "import importlib, jupyterhub.app as app\n"
        "before = app.JupyterHub.init_tornado_settings\n"
        f"for name in {MODULES!r}:\n"
        "    importlib.import_module('hardened_spawner.' + name)\n"
        "assert app.JupyterHub.init_tornado_settings is before, 'patched on import'\n"
        "import hardened_spawner\n"
        "hardened_spawner.HardenedSpawner  # the entry point: installs the hub-start checks\n"
        "assert app.JupyterHub.init_tornado_settings is not before\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_no_function_is_over_60_lines():
    long = []
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 60:
                    long.append(f"{path.name}:{node.name} ({length} lines)")
    assert long == []


def test_the_spawner_is_thin():
    assert len((PACKAGE / "spawner.py").read_text().splitlines()) <= 500


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
    assert seen == set(check_ids) - {"host-namespace"} | {"host-namespace"}
    for violation in guard.check_container(worst_config, worst_host, guard.GuardPolicy()):
        assert set(inspection.cis_items_of(violation, worst_host)) <= set(inspection.CIS_ITEMS)
