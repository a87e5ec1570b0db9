"""The users' network and its firewall, as data (no Docker, no iptables, no traitlets).

Two layers keep users' servers apart and away from what they must not reach:

1. The network itself (plain Docker options, no root needed): a bridge network the
   spawner manages, with a fixed bridge interface name (so rules can match
   ``-i <bridge>``) and ``enable_icc=false``, so the engine drops traffic between
   containers on it even before any rule of ours exists.
2. Rules the admin installs once as root (`hardened-spawner firewall apply`): what
   Docker options cannot say. Who may still talk across the bridge (the hub and the
   proxy, when they run in containers on it), which destinations are blocked
   (link-local, private ranges, the host itself) and the egress mode.

Everything here is a pure function of plain values: `rule_plan` turns (bridge,
subnets, hub address and port, egress mode, allowlists) into literal iptables rules;
`parse_tables` reads ``iptables -S``; `plan_problems`, `apply_script` and
`remove_script` compare and reconcile the two. `firewall` runs the commands.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlparse

from . import labels

#: iptables comments on every rule we install: ``hardened-spawner:<bridge>:<purpose>``
TAG = "hardened-spawner"

ICC_OPTION = "com.docker.network.bridge.enable_icc"
BRIDGE_OPTION = "com.docker.network.bridge.name"

ROLE_NETWORK = "network"
ROLE_FIREWALL = "firewall"  # the marker volume `firewall apply` leaves for the hub
ROLE_PROBE = "network-probe"

FIREWALL_BRIDGE = f"{labels.PREFIX}.firewall.bridge"
FIREWALL_DIGEST = f"{labels.PREFIX}.firewall.digest"
FIREWALL_BOOT_ID = f"{labels.PREFIX}.firewall.boot-id"
FIREWALL_APPLIED_AT = f"{labels.PREFIX}.firewall.applied-at"
FIREWALL_SUMMARY = f"{labels.PREFIX}.firewall.summary"
#: On a users' network made with a reserved hub address (the compose deployment).
HUB_ADDRESS = f"{labels.PREFIX}.hub-address"

EGRESS_MODES = ("internet", "none")

#: Destinations users' servers never reach (unless an admin allowlists a range),
#: with the purpose each rule's comment names.
BLOCKED_V4 = (
    ("169.254.0.0/16", "link-local"),  # cloud metadata (169.254.169.254) and friends
    ("10.0.0.0/8", "private"),
    ("172.16.0.0/12", "private"),
    ("192.168.0.0/16", "private"),
    ("100.64.0.0/10", "cgnat"),  # carrier-grade NAT, also used by some clouds' internals
)
BLOCKED_V6 = (
    ("fe80::/10", "link-local"),
    ("fc00::/7", "private"),  # unique local addresses (AWS IMDS is fd00:ec2::254)
)
#: Never opened by an allowlist: the metadata services live there.
NEVER_ALLOWED = (ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("fe80::/10"))

REJECT = {4: ("REJECT", "--reject-with", "icmp-admin-prohibited"),
          6: ("REJECT", "--reject-with", "icmp6-adm-prohibited")}
IFNAMSIZ = 15  # longest Linux interface name
_IFNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class NetworkConfigError(ValueError):
    """A setting for the users' network or its firewall is wrong; names the setting."""


# --- settings -------------------------------------------------------------------


def parse_cidrs(values: Iterable[str], setting: str) -> tuple[str, ...]:
    """Normalised CIDRs for an allowlist; rejects typos, the default route and link-local."""
    result = []
    for value in values:
        try:
            net = ipaddress.ip_network(str(value).strip(), strict=True)
        except ValueError as e:
            raise NetworkConfigError(
                f"{setting}: {value!r} is not a CIDR like '10.20.0.0/16' ({e})."
            ) from None
        if net.prefixlen == 0:
            raise NetworkConfigError(
                f"{setting}: {value!r} would open every address; use egress='internet' for "
                "public addresses and list the private ranges you need one by one."
            )
        for never in NEVER_ALLOWED:
            if net.version == never.version and net.overlaps(never):
                raise NetworkConfigError(
                    f"{setting}: {value!r} overlaps the link-local range {never}, where cloud "
                    "metadata services hand out the host's credentials; it is never opened."
                )
        if str(net) not in result:
            result.append(str(net))
    return tuple(result)


def parse_addresses(values: Iterable[str], setting: str) -> tuple[str, ...]:
    result = []
    for value in values:
        try:
            address = ipaddress.ip_address(str(value).strip())
        except ValueError:
            raise NetworkConfigError(f"{setting}: {value!r} is not an IP address.") from None
        if address.is_link_local:
            raise NetworkConfigError(f"{setting}: {value!r} is link-local; it is never opened.")
        if str(address) not in result:
            result.append(str(address))
    return tuple(result)


def parse_egress(value: str, setting: str = "egress") -> str:
    mode = str(value).strip().lower()
    if mode not in EGRESS_MODES:
        raise NetworkConfigError(f"{setting}: {value!r} is not one of {', '.join(EGRESS_MODES)}.")
    return mode


def check_bridge_name(name: str, setting: str = "network_bridge_name") -> str:
    if not (0 < len(name) <= IFNAMSIZ and _IFNAME.match(name)):
        raise NetworkConfigError(
            f"{setting}: {name!r} is not a usable interface name (1-{IFNAMSIZ} characters: "
            "letters, digits, '.', '_', '-')."
        )
    return name


def bridge_name(network_name: str) -> str:
    """The bridge interface for a network the spawner creates: ``hs-<name>``, so every
    bridge of ours is recognisable in ``ip link`` and in rules; names too long for an
    interface lose a ``hardened-spawner-`` prefix, then fall back to a short hash."""
    for candidate in (network_name, network_name.removeprefix("hardened-spawner-")):
        name = "hs-" + candidate
        if len(name) <= IFNAMSIZ and _IFNAME.match(name):
            return name
    return "hs-" + hashlib.sha256(network_name.encode()).hexdigest()[:12]


# --- the network ----------------------------------------------------------------


def reserved_layout(subnet: str) -> dict[str, str]:
    """Addresses of a users' subnet with room for fixed ones: the engine hands out
    addresses from the upper half only (``ip_range``), so the lower half stays free
    for containers that need a fixed address, such as the hub in compose, whose
    address the rules name. The hub gets the first address after the gateway."""
    try:
        net = ipaddress.ip_network(subnet, strict=True)
    except ValueError as e:
        raise NetworkConfigError(f"the users' subnet {subnet!r} is not a CIDR like '172.30.0.0/24' ({e}).") from None
    if net.version != 4 or not 8 <= net.prefixlen <= 28:
        raise NetworkConfigError(
            f"the users' subnet {subnet} must be IPv4, from /8 to /28 (half of it is for servers)."
        )
    return {
        "subnet": str(net),
        "gateway": str(net.network_address + 1),
        "ip_range": str(list(net.subnets(prefixlen_diff=1))[1]),
        "hub_address": str(net.network_address + 2),
    }


def network_create_spec(network_name: str, bridge: str, isolation: bool, version: str,
                        subnet: str = "") -> dict:
    """Keyword arguments for docker-py's ``create_network``; with a ``subnet``, its
    lower half is kept for fixed addresses and the hub's is recorded in a label."""
    options = {BRIDGE_OPTION: bridge}
    if isolation:
        options[ICC_OPTION] = "false"  # the engine drops container-to-container traffic
    network_labels = {labels.MANAGED: "true", labels.ROLE: ROLE_NETWORK, labels.VERSION: version}
    spec: dict = {"name": network_name, "driver": "bridge", "options": options, "labels": network_labels}
    if subnet:
        layout = reserved_layout(subnet)
        # docker-py's IPAMConfig is this dict; built here so this module needs no docker
        spec["ipam"] = {
            "Driver": "default",
            "Config": [{"Subnet": layout["subnet"], "IPRange": layout["ip_range"],
                        "Gateway": layout["gateway"]}],
            "Options": {},
        }
        network_labels[HUB_ADDRESS] = layout["hub_address"]
    return spec


@dataclass(frozen=True)
class NetworkFacts:
    """What the rules and checks need to know about the users' network, from ``docker network inspect``."""

    name: str
    bridge: str
    subnets: tuple[str, ...]
    ipv6: bool
    icc: bool
    driver: str = "bridge"
    managed: bool = False
    hub_address: str = ""  # the fixed address reserved for the hub, if the network has one

    def subnets_of(self, family: int) -> tuple[str, ...]:
        return tuple(s for s in self.subnets if ipaddress.ip_network(s).version == family)


def network_facts(inspect: Mapping) -> NetworkFacts:
    options = inspect.get("Options") or {}
    subnets = tuple(
        str(ipaddress.ip_network(c["Subnet"], strict=False))
        for c in ((inspect.get("IPAM") or {}).get("Config") or [])
        if c.get("Subnet")
    )
    return NetworkFacts(
        name=inspect["Name"],
        # the engine names an unnamed bridge after the network's id
        bridge=options.get(BRIDGE_OPTION) or "br-" + inspect["Id"][:12],
        subnets=subnets,
        ipv6=bool(inspect.get("EnableIPv6")),
        icc=str(options.get(ICC_OPTION, "true")).lower() != "false",
        driver=inspect.get("Driver") or "",
        managed=(inspect.get("Labels") or {}).get(labels.MANAGED) == "true",
        hub_address=(inspect.get("Labels") or {}).get(HUB_ADDRESS, ""),
    )


def network_problems(facts: NetworkFacts) -> list[str]:
    """What is wrong with an existing network, for users' isolation (empty: nothing)."""
    problems = []
    if facts.driver != "bridge":
        problems.append(
            f"The users' network {facts.name} uses the {facts.driver!r} driver; isolation "
            "needs a bridge network. Set HardenedSpawner.network_name to a new name, so the "
            "spawner creates one."
        )
    if facts.icc:
        problems.append(
            f"The users' network {facts.name} lets containers talk to each other (it was "
            f"created without {ICC_OPTION}=false); only the firewall rules stand between "
            "users' servers. Stop all servers and remove it (docker network rm "
            f"{facts.name}): the spawner recreates it with isolation."
        )
    return problems


# --- the policy -------------------------------------------------------------------


@dataclass(frozen=True)
class IsolationPolicy:
    """Everything the rules depend on besides the network itself."""

    hub_ip: str  # where servers reach the hub's API
    hub_port: int
    egress: str = "internet"
    allow_cidrs: tuple[str, ...] = ()  # opened on purpose: a dataset server, a package mirror
    allow_dns: tuple[str, ...] = ()  # resolvers in a blocked range, opened on port 53 only
    trusted: tuple[str, ...] = ()  # besides the hub: containers on the network that may open connections to servers (a proxy)

    def __post_init__(self):
        try:
            ipaddress.ip_address(self.hub_ip)
        except ValueError:
            raise NetworkConfigError(f"the hub's address {self.hub_ip!r} is not an IP address.") from None
        if not 0 < self.hub_port < 65536:
            raise NetworkConfigError(f"hub port {self.hub_port} is not a TCP port.")
        parse_egress(self.egress)

    def digest(self, facts: NetworkFacts) -> str:
        """A short fingerprint of every input of `rule_plan`: the marker carries it, so a
        hub that cannot read iptables can still tell the rules were made for its settings."""
        inputs = {
            "plan": 1,
            "bridge": facts.bridge,
            "subnets": sorted(facts.subnets),
            "ipv6": facts.ipv6,
            "hub": [self.hub_ip, self.hub_port],
            "egress": self.egress,
            "allow": sorted(self.allow_cidrs),
            "dns": sorted(self.allow_dns),
            "trusted": sorted(self.trusted),
        }
        return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]

    def summary(self) -> str:
        parts = [f"hub {self.hub_ip}:{self.hub_port}", f"egress {self.egress}"]
        if self.allow_cidrs:
            parts.append("allow " + ",".join(self.allow_cidrs))
        if self.allow_dns:
            parts.append("dns " + ",".join(self.allow_dns))
        if self.trusted:
            parts.append("trusted " + ",".join(self.trusted))
        return "; ".join(parts)


def apply_command(network_name: str, policy: IsolationPolicy) -> str:
    """The admin command that installs the rules this policy expects (for log messages)."""
    args = ["hardened-spawner", "firewall", "apply", "--network", network_name,
            "--hub-ip", policy.hub_ip, "--hub-port", str(policy.hub_port)]
    if policy.egress != "internet":
        args += ["--egress", policy.egress]
    for cidr in policy.allow_cidrs:
        args += ["--allow", cidr]
    for ip in policy.allow_dns:
        args += ["--allow-dns", ip]
    for ip in policy.trusted:
        args += ["--trusted", ip]
    return shlex.join(args)


def hub_endpoint(api_url: str) -> tuple[str, int]:
    """(host, port) servers use to reach the hub, from the hub's API URL."""
    url = urlparse(api_url)
    if not url.hostname:
        raise NetworkConfigError(f"the hub's API URL {api_url!r} names no host.")
    return url.hostname, url.port or (443 if url.scheme == "https" else 80)


def hub_endpoint_from_config(jupyterhub: Mapping) -> tuple[str, int]:
    """(host, port) from ``c.JupyterHub`` settings, as JupyterHub itself derives its connect URL."""
    if jupyterhub.get("hub_connect_url"):
        return hub_endpoint(jupyterhub["hub_connect_url"])
    host = jupyterhub.get("hub_connect_ip") or jupyterhub.get("hub_ip") or "127.0.0.1"
    port = jupyterhub.get("hub_connect_port") or jupyterhub.get("hub_port") or 8081
    return host, int(port)


# --- rules --------------------------------------------------------------------------


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


# --- reading and reconciling iptables -----------------------------------------------


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


# --- the marker and the probe (hubs that cannot read iptables) -------------------


def marker_name(network_name: str) -> str:
    return f"{network_name}-firewall"


def marker_labels(facts: NetworkFacts, policy: IsolationPolicy, boot_id: str,
                  applied_at: str, version: str) -> dict[str, str]:
    return {
        labels.MANAGED: "true",
        labels.ROLE: ROLE_FIREWALL,
        labels.VERSION: version,
        FIREWALL_BRIDGE: facts.bridge,
        FIREWALL_DIGEST: policy.digest(facts),
        FIREWALL_BOOT_ID: boot_id,
        FIREWALL_APPLIED_AT: applied_at,
        FIREWALL_SUMMARY: policy.summary(),
    }


def marker_problems(marker: Mapping | None, facts: NetworkFacts, policy: IsolationPolicy,
                    boot_id: str) -> list[str]:
    """Does the mark `firewall apply` left say the rules were made for this network,
    these settings and this boot of the host (rules do not survive a reboot)?"""
    if marker is None:
        return [(f"no firewall marker (volume {marker_name(facts.name)}): "
                 "`hardened-spawner firewall apply` has not run for this network")]
    problems = []
    if marker.get(FIREWALL_BRIDGE) != facts.bridge:
        problems.append(f"the firewall was applied for bridge {marker.get(FIREWALL_BRIDGE)!r}, "
                        f"not {facts.bridge!r}")
    elif marker.get(FIREWALL_DIGEST) != policy.digest(facts):
        problems.append(f"the firewall was applied with other settings "
                        f"({marker.get(FIREWALL_SUMMARY)}) than this hub's ({policy.summary()})")
    if boot_id and marker.get(FIREWALL_BOOT_ID) != boot_id:
        problems.append(f"the firewall was applied before the host's last reboot "
                        f"({marker.get(FIREWALL_APPLIED_AT)}); iptables rules do not survive one")
    return problems


#: Runs in a throwaway container on the users' network, as nobody, with no capabilities.
PROBE_SCRIPT = """\
import json, socket, sys
host, hub_port, canary_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def attempt(port, timeout):
    try:
        socket.create_connection((host, port), timeout).close()
        return "open"
    except socket.timeout:
        return "timeout"
    except ConnectionRefusedError:
        return "refused"
    except OSError as e:
        # what our REJECT gives (EHOSTUNREACH, EACCES): not "refused" (no listener, no rule)
        # nor a timeout (dropped by something else, such as Docker's inter-container rule)
        return "rejected" if e.errno in (113, 13) else "error %s" % e.errno
print(json.dumps({"hub": attempt(hub_port, 5), "canary": attempt(canary_port, 5)}))
"""

#: The port the probe expects our rules to reject on the hub's address (discard).
CANARY_PORT = 9


def probe_spec(image: str, network_name: str, policy: IsolationPolicy, version: str) -> tuple[dict, dict]:
    """(create kwargs, host-config kwargs) for docker-py: the probe container."""
    create = {
        "image": image,
        "command": ["python3", "-c", PROBE_SCRIPT, policy.hub_ip, str(policy.hub_port),
                    str(CANARY_PORT)],
        "entrypoint": [],
        "user": "65534:65534",
        "labels": {labels.MANAGED: "true", labels.ROLE: ROLE_PROBE, labels.VERSION: version},
    }
    host = {
        "network_mode": network_name,
        "cap_drop": ["ALL"],
        "read_only": True,
        "security_opt": ["no-new-privileges:true"],
        "mem_limit": 64 * 1024 * 1024,
        "pids_limit": 16,
    }
    return create, host


def probe_problems(output: str, exit_code: int, policy: IsolationPolicy) -> list[str]:
    """What the probe's answer says is missing (empty: the rules act as planned)."""
    return probe_verdict(output, exit_code, policy)[0]


def probe_verdict(output: str, exit_code: int, policy: IsolationPolicy) -> tuple[list[str], list[str]]:
    """(what is missing, what of that stops servers from reaching the hub at all)."""
    try:
        seen = json.loads(output.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return [f"the network probe failed (exit {exit_code}): {output.strip()[-300:]!r}"], []
    where = f"{policy.hub_ip}"
    problems, blocking = [], []
    if seen.get("hub") != "open":
        blocking.append(f"a container on the users' network cannot reach the hub API at "
                        f"{where}:{policy.hub_port} ({seen.get('hub')})")
        problems += blocking
    covered = any(ipaddress.ip_address(policy.hub_ip) in ipaddress.ip_network(c)
                  for c in policy.allow_cidrs)
    if not covered and seen.get("canary") != "rejected":
        problems.append(f"a container on the users' network got {seen.get('canary')!r} instead of "
                        f"a firewall rejection from {where}:{CANARY_PORT}: the isolation rules "
                        "are not in effect")
    return problems, blocking


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


# --- settings from a jupyterhub_config.py ---------------------------------------------


def isolation_settings(spawner, hub_host: str, hub_port: int) -> dict:
    """The isolation settings of a validated spawner, for `firewall.policy_from_settings`:
    the one place they are read, by the hub (with its API URL), by `hardened-spawner check`
    and by `hardened-spawner firewall -f` (with the hub's address from its config)."""
    return {
        "network": spawner.network_name,
        "bridge": spawner.network_bridge_name,
        "isolation": bool(spawner.network_isolation),
        "hub_ip": spawner.network_hub_address or hub_host,
        "hub_port": int(hub_port),
        "egress": spawner.egress,
        "allow": list(spawner.egress_allow_cidrs),
        "allow_dns": list(spawner.egress_allow_dns),
        "trusted": list(spawner.network_trusted_addresses),
    }


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def unreachable_resolvers(resolv_conf: str, policy: IsolationPolicy) -> list[str]:
    """The host's DNS resolvers (from its resolv.conf) that servers' lookups cannot reach
    under this policy. Docker's embedded resolver forwards from the container's own
    network, so a resolver in a blocked range fails every lookup unless it is on
    `allow_dns` or `allow_cidrs`; loopback resolvers are asked from the host and are fine."""
    found = []
    for line in resolv_conf.splitlines():
        words = line.split()
        if len(words) < 2 or words[0] != "nameserver" or not is_ip(words[1].split("%")[0]):
            continue
        ip = ipaddress.ip_address(words[1].split("%")[0])
        if ip.is_loopback:
            continue
        blocked = BLOCKED_V4 if ip.version == 4 else BLOCKED_V6
        in_blocked = any(ip in ipaddress.ip_network(cidr) for cidr, _ in blocked)
        opened = str(ip) in policy.allow_dns or any(
            ip in ipaddress.ip_network(c) for c in policy.allow_cidrs
        )
        if (policy.egress == "none" or in_blocked) and not opened:
            found.append(str(ip))
    return found
