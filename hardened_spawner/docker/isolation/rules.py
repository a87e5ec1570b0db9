"""The iptables rules for the users' network, and their reconciliation, as data.

`rule_plan` turns (network facts, policy) into literal rules in iptables' own canonical
order; `parse_tables` reads ``iptables -S``; `plan_problems`, `apply_script`,
`remove_script` and `hub_blocked` compare and reconcile the two. Every rule carries the
comment ``hardened-spawner:<bridge>:<purpose>``, so ours are told apart from anyone
else's. Nothing here runs a command: `iptables` does.
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field

from ...core.egress import BLOCKED_V4, BLOCKED_V6
from .docker_network import NetworkFacts
from .policy import IsolationPolicy

#: iptables comments on every rule we install: ``hardened-spawner:<bridge>:<purpose>``
TAG = "hardened-spawner"

REJECT = {4: ("REJECT", "--reject-with", "icmp-admin-prohibited"),
          6: ("REJECT", "--reject-with", "icmp6-adm-prohibited")}


@dataclass(frozen=True)
class Rule:
    """One iptables rule: its chain and its arguments exactly as ``iptables -S`` prints them."""

    chain: str
    args: tuple[str, ...]

    def line(self, action: str = "-A") -> str:
        """``-A CHAIN ...`` as ``iptables -S`` prints it; ``-I`` inserts at the top."""
        head = [action, self.chain] + (["1"] if action == "-I" else [])
        return " ".join(head + [_quote(a) for a in self.args])

    @property
    def comment(self) -> str:
        args = self.args
        for i, arg in enumerate(args[:-1]):
            if arg == "--comment":
                return args[i + 1]
        return ""


def _quote(arg: str) -> str:
    # iptables prints comments in double quotes; everything else we write is a bare word
    return f'"{arg}"' if arg.startswith(TAG + ":") else arg


@dataclass(frozen=True)
class FamilyPlan:
    """The rules for one address family: our chains, and the jumps into them."""

    family: int  # 4 (iptables) or 6 (ip6tables)
    chains: tuple[tuple[str, tuple[Rule, ...]], ...]
    jumps: tuple[Rule, ...]

    def lines(self) -> list[str]:
        out = [f"-N {name}" for name, _ in self.chains]
        out += [rule.line() for _, rules in self.chains for rule in rules]
        out += [rule.line("-I") for rule in self.jumps]
        return out


def forward_chain(bridge: str) -> str:
    return f"HS-FWD-{bridge}"


def input_chain(bridge: str) -> str:
    return f"HS-IN-{bridge}"


def tag(bridge: str, purpose: str) -> str:
    return f"{TAG}:{bridge}:{purpose}"


def _host(address: str) -> str:
    ip = ipaddress.ip_address(address)
    return f"{ip}/{ip.max_prefixlen}"


def _in_any(address: str, subnets: Iterable[str]) -> bool:
    ip = ipaddress.ip_address(address)
    return any(ip in ipaddress.ip_network(s) for s in subnets)


def _rule(chain, bridge, purpose, *, src=None, dst=None, in_=None, not_in=None, out=None,
          proto=None, dport=None, match=(), target=("ACCEPT",)) -> Rule:
    """A rule in iptables' own canonical order, so a plan compares equal to ``iptables -S``."""
    args: list[str] = []
    if src:
        args += ["-s", src]
    if dst:
        args += ["-d", dst]
    if in_:
        args += ["-i", in_]
    if not_in:
        args += ["!", "-i", not_in]
    if out:
        args += ["-o", out]
    if proto:
        args += ["-p", proto]
        if dport is not None:
            args += ["-m", proto, "--dport", str(dport)]
    args += list(match)
    args += ["-m", "comment", "--comment", tag(bridge, purpose), "-j", *target]
    return Rule(chain, tuple(args))

_ESTABLISHED = ("-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED")


def family_plan(family: int, bridge: str, subnets: tuple[str, ...], policy: IsolationPolicy,
                parent: str = "DOCKER-USER") -> FamilyPlan:
    """The rules for one family; `parent` is where forwarded traffic is filtered
    (the engine's ``DOCKER-USER``; plain ``FORWARD`` for IPv6 on engines that leave
    ip6tables alone)."""
    fwd, inp = forward_chain(bridge), input_chain(bridge)
    reject = REJECT[family]
    hub = policy.hub_ip if ipaddress.ip_address(policy.hub_ip).version == family else None
    hub_on_bridge = hub is not None and _in_any(hub, subnets)
    trusted = [ip for ip in policy.trusted if ipaddress.ip_address(ip).version == family]
    if hub is not None and hub_on_bridge:
        trusted = [hub] + [ip for ip in trusted if ip != hub]
    allow = [c for c in policy.allow_cidrs if ipaddress.ip_network(c).version == family]
    dns = [ip for ip in policy.allow_dns if ipaddress.ip_address(ip).version == family]
    blocked = BLOCKED_V4 if family == 4 else BLOCKED_V6

    def r(chain, purpose, **kw):
        return _rule(chain, bridge, purpose, **kw)

    def openings(chain):
        rules = []
        if hub is not None and not hub_on_bridge:
            rules.append(r(chain, "hub-api", dst=_host(hub), proto="tcp", dport=policy.hub_port))
        for ip in dns:
            rules += [r(chain, "dns", dst=_host(ip), proto=p, dport=53) for p in ("udp", "tcp")]
        rules += [r(chain, "allow", dst=cidr) for cidr in allow]
        return rules

    # Forwarded traffic: entered from `parent` for packets in or out of the bridge.
    forward = [r(fwd, "established", match=_ESTABLISHED)]
    forward += [r(fwd, "from-hub" if ip == hub else "from-trusted", src=_host(ip), in_=bridge,
                  out=bridge) for ip in trusted]
    if hub is not None and hub_on_bridge:
        forward.append(r(fwd, "hub-api", dst=_host(hub), in_=bridge, out=bridge, proto="tcp",
                         dport=policy.hub_port))
    forward.append(r(fwd, "between-servers", in_=bridge, out=bridge, target=reject))
    # from here on: packets from the users' servers to elsewhere
    forward.append(r(fwd, "inbound", not_in=bridge, target=("RETURN",)))
    # the hub's (and a proxy's) own traffic elsewhere is not a user's: the engine decides
    forward += [r(fwd, "hub-egress", src=_host(ip), target=("RETURN",)) for ip in trusted]
    forward += openings(fwd)
    forward += [r(fwd, purpose, dst=cidr, target=reject) for cidr, purpose in blocked]
    if policy.egress == "none":
        forward.append(r(fwd, "egress-none", target=reject))
    else:
        forward.append(r(fwd, "egress-internet", target=("RETURN",)))

    # Traffic to the host itself (the hub on the host, any other service there).
    host = [r(inp, "established", match=_ESTABLISHED)]
    host += [r(inp, "hub-egress", src=_host(ip), target=("RETURN",)) for ip in trusted]
    if family == 6:  # neighbour discovery, or nothing reaches the gateway
        host += [r(inp, "neighbour-discovery", proto="ipv6-icmp",
                   match=("-m", "icmp6", "--icmpv6-type", t)) for t in ("135", "136")]
    host += openings(inp)
    host.append(r(inp, "host", target=reject))

    return FamilyPlan(family, ((fwd, tuple(forward)), (inp, tuple(host))), _jumps(bridge, parent))


def _jumps(bridge: str, parent: str) -> tuple[Rule, ...]:
    """Into our chains: forwarded traffic in or out of the bridge, and traffic to the host."""
    fwd, inp = forward_chain(bridge), input_chain(bridge)
    return (
        _rule(parent, bridge, "jump", in_=bridge, target=(fwd,)),
        _rule(parent, bridge, "jump", out=bridge, target=(fwd,)),
        _rule("INPUT", bridge, "jump", in_=bridge, target=(inp,)),
    )


def rule_plan(facts: NetworkFacts, policy: IsolationPolicy,
              ipv6_parent: str = "FORWARD") -> tuple[FamilyPlan, ...]:
    """Every rule for the users' network: IPv4 always, IPv6 when the network has it."""
    plans = [family_plan(4, facts.bridge, facts.subnets_of(4), policy)]
    if facts.ipv6:
        plans.append(family_plan(6, facts.bridge, facts.subnets_of(6), policy, ipv6_parent))
    return tuple(plans)

# --- reading and reconciling iptables ------------------------------------------------


@dataclass
class Tables:
    """The filter table as ``iptables -S`` shows it."""

    chains: set[str] = field(default_factory=set)
    rules: dict[str, list[tuple[str, ...]]] = field(default_factory=dict)

    def chain(self, name: str) -> list[tuple[str, ...]]:
        return self.rules.get(name, [])


def parse_tables(text: str) -> Tables:
    tables = Tables()
    for line in text.splitlines():
        words = shlex.split(line)
        if len(words) < 2:
            continue
        if words[0] in ("-P", "-N"):
            tables.chains.add(words[1])
        elif words[0] == "-A":
            tables.chains.add(words[1])
            tables.rules.setdefault(words[1], []).append(tuple(words[2:]))
    return tables


def _owned(args: tuple[str, ...], bridge: str) -> bool:
    return Rule("", args).comment.startswith(tag(bridge, ""))


def plan_problems(plan: FamilyPlan, tables: Tables) -> list[str]:
    """Each way the installed rules differ from the plan, said for an admin."""
    cmd = "iptables" if plan.family == 4 else "ip6tables"
    problems = []
    for name, rules in plan.chains:
        if name not in tables.chains:
            problems.append(f"{cmd}: chain {name} is missing")
            continue
        actual, expected = tables.chain(name), [rule.args for rule in rules]
        if actual == expected:
            continue
        missing = [Rule(name, a).line() for a in expected if a not in actual]
        extra = [Rule(name, a).line() for a in actual if a not in expected]
        if missing:
            problems.append(f"{cmd}: {len(missing)} rule(s) missing, first: {missing[0]}")
        if extra:
            problems.append(f"{cmd}: {len(extra)} unexpected rule(s), first: {extra[0]}")
        if not missing and not extra:
            problems.append(f"{cmd}: the rules in {name} are in the wrong order")
    for jump in plan.jumps:
        if jump.chain not in tables.chains:
            problems.append(f"{cmd}: chain {jump.chain} is missing (is the engine using iptables?)")
            continue
        count = tables.chain(jump.chain).count(jump.args)
        if count == 0:
            problems.append(f"{cmd}: jump missing: {jump.line()}")
        elif count > 1:
            problems.append(f"{cmd}: jump installed {count} times: {jump.line()}")
    return problems


def _stale(bridge: str, tables: Tables, keep: Iterable[Rule], own_chains: Iterable[str]) -> list[str]:
    """`-D` lines for our tagged rules outside our chains that the plan does not keep,
    and for every extra copy of the ones it keeps."""
    kept = {(r.chain, r.args) for r in keep}
    own = set(own_chains)
    lines, seen = [], set()
    for chain in sorted(tables.rules):
        if chain in own:
            continue
        for args in tables.chain(chain):
            if not _owned(args, bridge):
                continue
            if (chain, args) in kept and (chain, args) not in seen:
                seen.add((chain, args))
                continue
            lines.append(Rule(chain, args).line("-D"))
    return lines


def apply_script(plan: FamilyPlan, bridge: str, tables: Tables) -> str:
    """``iptables-restore --noflush`` input that makes the table match the plan in one
    transaction: our chains (re)filled from scratch, each jump present exactly once,
    stale rules of ours removed. Running it twice changes nothing the second time."""
    lines = ["*filter"]
    lines += [f":{name} - [0:0]" for name, _ in plan.chains]  # creates, or flushes
    lines += [rule.line() for _, rules in plan.chains for rule in rules]
    own = [name for name, _ in plan.chains]
    lines += _stale(bridge, tables, plan.jumps, own)
    lines += [j.line("-I") for j in plan.jumps if j.args not in tables.chain(j.chain)]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def remove_script(bridge: str, tables: Tables) -> str:
    """``iptables-restore --noflush`` input removing every rule and chain of ours for
    this bridge, and nothing else; empty when there is nothing to remove."""
    own = [c for c in (forward_chain(bridge), input_chain(bridge)) if c in tables.chains]
    lines = _stale(bridge, tables, (), own)
    for chain in own:
        lines += [f"-F {chain}", f"-X {chain}"]
    if not lines:
        return ""
    return "\n".join(["*filter", *lines, "COMMIT"]) + "\n"


#: the rules that let servers reach the hub: without them no server can start
HUB_PURPOSES = ("hub-api", "from-hub", "hub-egress")


def hub_blocked(plan: FamilyPlan, tables: Tables) -> list[str]:
    """Rules of ours that are in force but were made for another hub: servers would be
    rejected on their way to this hub's API, and never finish starting."""
    cmd = "iptables" if plan.family == 4 else "ip6tables"
    jumped = any(jump.args in tables.chain(jump.chain) for jump in plan.jumps)
    blocked = []
    for name, rules in plan.chains:
        if not jumped or name not in tables.chains:
            continue  # no rules of ours in force here: nothing of ours blocks the hub
        actual = tables.chain(name)
        for rule in rules:
            purpose = rule.comment.rsplit(":", 1)[-1]
            if purpose in HUB_PURPOSES and rule.args not in actual:
                blocked.append(f"{cmd}: the rules in {name} were made for another hub: they lack "
                               f"{rule.line()}, so servers cannot reach this hub")
                break
    return blocked
