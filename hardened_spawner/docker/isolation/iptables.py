"""Run ``iptables``/``ip6tables`` on the host: read the tables, install, check, remove.

Every function takes the command runner as its ``run`` argument (``run(argv, stdin)`` ->
``CompletedProcess``), so unit tests pass a fake host's tables and the real runner is
used only on a host. The real one runs the front end whose tables hold the engine's
chains (`detect_backend`). Root only; the hub, which usually is not, checks with `verify`.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable, Sequence

from .docker_network import NetworkFacts, network_problems
from .errors import FirewallError
from .policy import IsolationPolicy
from .rules import FamilyPlan, Tables, apply_script, parse_tables, plan_problems, remove_script, rule_plan

COMMAND = {4: "iptables", 6: "ip6tables"}



def run_as_given(argv: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=30, check=False)


#: iptables has two backends (nf_tables and legacy) whose rules the kernel keeps apart;
#: ours must go where the engine's are. The system's default ``iptables`` first, then each.
BACKENDS = ("", "-nft", "-legacy")


def detect_backend(run: Callable = run_as_given) -> str:
    """The suffix of the iptables front end whose tables hold the engine's DOCKER-USER
    chain ("" for the default one, or when none shows it): a container built on
    another distribution than the host's may default to the other backend."""
    for suffix in BACKENDS:
        try:
            result = run([f"iptables{suffix}", "-w", "5", "-S"])
        except (OSError, subprocess.SubprocessError):
            continue
        if result.returncode == 0 and "-N DOCKER-USER" in result.stdout.splitlines():
            return suffix
    return ""


def with_backend(argv: Sequence[str], suffix: str) -> list[str]:
    """``iptables-restore`` becomes ``iptables-legacy-restore`` for suffix ``-legacy``."""
    command, *rest = argv
    for base in ("ip6tables", "iptables"):
        if command.startswith(base):
            return [base + suffix + command[len(base):], *rest]
    return list(argv)

_BACKEND_LOCK = threading.Lock()

_BACKEND: list[str] = []


def _engine_backend() -> str:
    """Detected once per process, under a lock (the hub's Docker threads may ask at the same
    moment): the host's backend does not change under it."""
    with _BACKEND_LOCK:
        if not _BACKEND:
            _BACKEND.append(detect_backend())
        return _BACKEND[0]


def run_on_host(argv: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    return run_as_given(with_backend(argv, _engine_backend()), stdin)


def read_tables(family: int, run: Callable = run_on_host) -> tuple[Tables | None, str]:
    """The filter table, or None and why it cannot be read (not installed, not root)."""
    try:
        result = run([COMMAND[family], "-w", "5", "-S"])
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"{COMMAND[family]} cannot run ({e})"
    if result.returncode != 0:
        return None, f"{COMMAND[family]} -S failed: {result.stderr.strip()[:200]}"
    return parse_tables(result.stdout), ""


def restore(family: int, script: str, run: Callable = run_on_host) -> None:
    if not script:
        return
    result = run([f"{COMMAND[family]}-restore", "--noflush", "-w", "10"], script)
    if result.returncode != 0:
        raise FirewallError(
            f"{COMMAND[family]}-restore refused the rules: {result.stderr.strip()[:500]}"
        )


def ipv6_parent(tables6: Tables | None) -> str:
    """Where forwarded IPv6 is filtered: the engine's DOCKER-USER when it manages
    ip6tables (``"ip6tables": true`` in daemon.json), plain FORWARD otherwise."""
    return "DOCKER-USER" if tables6 is not None and "DOCKER-USER" in tables6.chains else "FORWARD"

# --- what `firewall apply|status|remove` do ---------------------------------------------


def plans(facts: NetworkFacts, policy: IsolationPolicy, run: Callable = run_on_host) -> tuple[
    tuple[FamilyPlan, ...], dict[int, Tables]
]:
    """The plan for this host, and the tables it was made against. Root only."""
    tables = {}
    for family in (4, 6) if facts.ipv6 else (4,):
        found, why = read_tables(family, run)
        if found is None:
            raise FirewallError(f"cannot read the host's rules: {why}. Run this as root on the Docker host.")
        tables[family] = found
    if "DOCKER-USER" not in tables[4].chains:
        raise FirewallError(
            "iptables has no DOCKER-USER chain: run this on the Docker host itself, with the "
            "engine running and managing iptables."
        )
    return rule_plan(facts, policy, ipv6_parent(tables.get(6))), tables


def apply(facts: NetworkFacts, policy: IsolationPolicy, run: Callable = run_on_host) -> list[str]:
    """Install the rules (idempotent), then read them back; returns what is still wrong."""
    planned, tables = plans(facts, policy, run)
    for plan in planned:
        restore(plan.family, apply_script(plan, facts.bridge, tables[plan.family]), run)
    if not facts.ipv6:  # rules of ours left from when the network had IPv6
        found, _ = read_tables(6, run)
        if found is not None:
            restore(6, remove_script(facts.bridge, found), run)
    return status(facts, policy, run)


def status(facts: NetworkFacts, policy: IsolationPolicy, run: Callable = run_on_host) -> list[str]:
    planned, tables = plans(facts, policy, run)
    problems = network_problems(facts)
    for plan in planned:
        problems += plan_problems(plan, tables[plan.family])
    return problems


def remove(bridge: str, run: Callable = run_on_host) -> int:
    """Remove every rule and chain of ours for this bridge; returns how many families changed."""
    changed = 0
    for family in (4, 6):
        found, why = read_tables(family, run)
        if found is None:
            if family == 4:
                raise FirewallError(f"cannot read the host's rules: {why}. Run this as root.")
            continue
        script = remove_script(bridge, found)
        if script:
            restore(family, script, run)
            changed += 1
    return changed
