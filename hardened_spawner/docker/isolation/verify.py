"""Is the isolation the hub expects in force? The one check the hub and the CLI run.

Where the host's tables can be read (a hub on the host, as root) the rules are compared
with ``iptables -S``; elsewhere the marker and the probe answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .docker_network import NetworkFacts, network_problems
from .iptables import ipv6_parent, read_tables, run_on_host
from .marker import marker_problems, read_boot_id, read_marker
from .policy import IsolationPolicy
from .probe import run_probe
from .rules import hub_blocked, plan_problems, rule_plan


@dataclass
class Verdict:
    method: str  # "iptables" or "probe"
    problems: list[str]  # each way the isolation differs from the policy
    blocking: list[str]  # those that keep servers from reaching the hub at all


def check(client, facts: NetworkFacts, policy: IsolationPolicy, *, method: str = "auto",
          image: str = "", run: Callable = run_on_host) -> Verdict:
    """What the hub asks: are the rules it expects in force, and do rules in force block it?

    ``iptables``: compare with ``iptables -S`` (a hub on the host, as root). ``probe``: the
    marker `apply` left must match this network, these settings and this boot, and a
    throwaway container on the users' network must reach the hub API and be rejected on
    another port of the hub's address (needs no privileges beyond the engine's API).
    ``auto``: iptables when it can read the host's rules, the probe otherwise.
    """
    problems = network_problems(facts)
    if method in ("auto", "iptables"):
        tables4, why = read_tables(4, run)
        if tables4 is not None and "DOCKER-USER" in tables4.chains:
            tables6 = read_tables(6, run)[0] if facts.ipv6 else None
            blocking: list[str] = []
            for plan in rule_plan(facts, policy, ipv6_parent(tables6)):
                tables = tables4 if plan.family == 4 else tables6
                if tables is None:
                    problems.append("ip6tables cannot be read, so the IPv6 rules are unchecked")
                    continue
                problems += plan_problems(plan, tables)
                blocking += hub_blocked(plan, tables)
            return Verdict("iptables", problems, blocking)
        if method == "iptables":
            return Verdict("iptables", problems + [
                f"cannot read the host's iptables ({why or 'no DOCKER-USER chain: not the host'})"
            ], [])
    problems += marker_problems(read_marker(client, facts.name), facts, policy, read_boot_id())
    found, blocking = run_probe(client, image, facts.name, policy)
    return Verdict("probe", problems + found, blocking)


def verify(client, facts: NetworkFacts, policy: IsolationPolicy, *, method: str = "auto",
           image: str = "", run: Callable = run_on_host) -> tuple[str, list[str]]:
    """(how it checked, problems): see `check`."""
    verdict = check(client, facts, policy, method=method, image=image, run=run)
    return verdict.method, verdict.problems
