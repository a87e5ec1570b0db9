"""The users' network and its firewall as data: settings, the rule plan (compared with
literal rule lists), reading ``iptables -S``, the restore scripts, the marker and the
probe; the firewall's imperative half with a fake ``iptables``; the spawner's settings."""

from __future__ import annotations

import dataclasses
import json
import shlex
import subprocess

import pytest
from traitlets import TraitError
from traitlets.config import Config

from hardened_spawner import labels
from hardened_spawner.core.egress import NetworkConfigError, parse_addresses, parse_cidrs, parse_egress
from hardened_spawner.docker.isolation import command, docker_network, iptables
from hardened_spawner.docker.isolation import resolv as resolving
from hardened_spawner.docker.isolation import verify as verifying
from hardened_spawner.docker.isolation.docker_network import (
    NetworkFacts,
    bridge_name,
    check_bridge_name,
    network_create_spec,
    network_facts,
    network_problems,
)
from hardened_spawner.docker.isolation.marker import marker_labels, marker_problems
from hardened_spawner.docker.isolation.policy import (
    IsolationPolicy,
    IsolationSettings,
    apply_command,
    hub_endpoint,
    hub_endpoint_from_config,
    isolation_settings,
    policy_from_settings,
)
from hardened_spawner.docker.isolation.probe import probe_problems, probe_spec
from hardened_spawner.docker.isolation.rules import (
    Tables,
    apply_script,
    parse_tables,
    plan_problems,
    remove_script,
    rule_plan,
)
from hardened_spawner.docker.spawner import HardenedSpawner

FACTS = NetworkFacts("users", "hs-u", ("172.18.0.0/16",), ipv6=False, icc=False)
HOST_HUB = IsolationPolicy("172.17.0.1", 8081)


def lines(plan) -> list[str]:
    return plan.lines()


def firewall_settings(argv: list[str]) -> dict:
    """The settings `hardened-spawner firewall ARGV` would act on."""
    app = command.FirewallCommand()
    app.initialize(argv)
    return app.subapp.settings()


C = "hardened-spawner:hs-u"  # comment prefix of every rule below
REJ = "-j REJECT --reject-with icmp-admin-prohibited"
REJ6 = "-j REJECT --reject-with icmp6-adm-prohibited"

BLOCKED = [
    f'-A HS-FWD-hs-u -d 169.254.0.0/16 -m comment --comment "{C}:link-local" {REJ}',
    f'-A HS-FWD-hs-u -d 10.0.0.0/8 -m comment --comment "{C}:private" {REJ}',
    f'-A HS-FWD-hs-u -d 172.16.0.0/12 -m comment --comment "{C}:private" {REJ}',
    f'-A HS-FWD-hs-u -d 192.168.0.0/16 -m comment --comment "{C}:private" {REJ}',
    f'-A HS-FWD-hs-u -d 100.64.0.0/10 -m comment --comment "{C}:cgnat" {REJ}',
]
JUMPS = [
    f'-I DOCKER-USER 1 -i hs-u -m comment --comment "{C}:jump" -j HS-FWD-hs-u',
    f'-I DOCKER-USER 1 -o hs-u -m comment --comment "{C}:jump" -j HS-FWD-hs-u',
    f'-I INPUT 1 -i hs-u -m comment --comment "{C}:jump" -j HS-IN-hs-u',
]
FWD_HEAD = [
    "-N HS-FWD-hs-u",
    "-N HS-IN-hs-u",
    f'-A HS-FWD-hs-u -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment "{C}:established" -j ACCEPT',
]
BETWEEN = [
    f'-A HS-FWD-hs-u -i hs-u -o hs-u -m comment --comment "{C}:between-servers" {REJ}',
    f'-A HS-FWD-hs-u ! -i hs-u -m comment --comment "{C}:inbound" -j RETURN',
]
IN_HEAD = f'-A HS-IN-hs-u -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment "{C}:established" -j ACCEPT'
IN_TAIL = f'-A HS-IN-hs-u -m comment --comment "{C}:host" {REJ}'
HUB_FWD = f'-A HS-FWD-hs-u -d 172.17.0.1/32 -p tcp -m tcp --dport 8081 -m comment --comment "{C}:hub-api" -j ACCEPT'
HUB_IN = f'-A HS-IN-hs-u -d 172.17.0.1/32 -p tcp -m tcp --dport 8081 -m comment --comment "{C}:hub-api" -j ACCEPT'
INTERNET = f'-A HS-FWD-hs-u -m comment --comment "{C}:egress-internet" -j RETURN'


# --- the rule plan, one case per option --------------------------------------------

PLANS = {
    "default: hub on the host, egress internet": (
        HOST_HUB,
        FWD_HEAD + BETWEEN + [HUB_FWD] + BLOCKED + [INTERNET] + [IN_HEAD, HUB_IN, IN_TAIL] + JUMPS,
    ),
    "egress none": (
        IsolationPolicy("172.17.0.1", 8081, egress="none"),
        FWD_HEAD + BETWEEN + [HUB_FWD] + BLOCKED
        + [f'-A HS-FWD-hs-u -m comment --comment "{C}:egress-none" {REJ}']
        + [IN_HEAD, HUB_IN, IN_TAIL] + JUMPS,
    ),
    "allowlist and a DNS resolver, opened before the blocked ranges": (
        IsolationPolicy("172.17.0.1", 8081, allow_cidrs=("10.20.0.0/16",), allow_dns=("10.255.255.53",)),
        FWD_HEAD + BETWEEN + [
            HUB_FWD,
            f'-A HS-FWD-hs-u -d 10.255.255.53/32 -p udp -m udp --dport 53 -m comment --comment "{C}:dns" -j ACCEPT',
            f'-A HS-FWD-hs-u -d 10.255.255.53/32 -p tcp -m tcp --dport 53 -m comment --comment "{C}:dns" -j ACCEPT',
            f'-A HS-FWD-hs-u -d 10.20.0.0/16 -m comment --comment "{C}:allow" -j ACCEPT',
        ] + BLOCKED + [INTERNET] + [
            IN_HEAD,
            HUB_IN,
            f'-A HS-IN-hs-u -d 10.255.255.53/32 -p udp -m udp --dport 53 -m comment --comment "{C}:dns" -j ACCEPT',
            f'-A HS-IN-hs-u -d 10.255.255.53/32 -p tcp -m tcp --dport 53 -m comment --comment "{C}:dns" -j ACCEPT',
            f'-A HS-IN-hs-u -d 10.20.0.0/16 -m comment --comment "{C}:allow" -j ACCEPT',
            IN_TAIL,
        ] + JUMPS,
    ),
    "compose: the hub (and a proxy) in containers on the users' network": (
        IsolationPolicy("172.18.0.2", 8000, trusted=("172.18.0.3",)),
        FWD_HEAD + [
            f'-A HS-FWD-hs-u -s 172.18.0.2/32 -i hs-u -o hs-u -m comment --comment "{C}:from-hub" -j ACCEPT',
            f'-A HS-FWD-hs-u -s 172.18.0.3/32 -i hs-u -o hs-u -m comment --comment "{C}:from-trusted" -j ACCEPT',
            f'-A HS-FWD-hs-u -d 172.18.0.2/32 -i hs-u -o hs-u -p tcp -m tcp --dport 8000 -m comment --comment "{C}:hub-api" -j ACCEPT',
        ] + BETWEEN + [
            f'-A HS-FWD-hs-u -s 172.18.0.2/32 -m comment --comment "{C}:hub-egress" -j RETURN',
            f'-A HS-FWD-hs-u -s 172.18.0.3/32 -m comment --comment "{C}:hub-egress" -j RETURN',
        ] + BLOCKED + [INTERNET] + [
            IN_HEAD,
            f'-A HS-IN-hs-u -s 172.18.0.2/32 -m comment --comment "{C}:hub-egress" -j RETURN',
            f'-A HS-IN-hs-u -s 172.18.0.3/32 -m comment --comment "{C}:hub-egress" -j RETURN',
            IN_TAIL,
        ] + JUMPS,
    ),
}


@pytest.mark.parametrize("policy, expected", PLANS.values(), ids=list(PLANS))
def test_ipv4_plan(policy, expected):
    (plan,) = rule_plan(FACTS, policy)
    assert plan.family == 4
    assert lines(plan) == expected


def test_ipv6_plan_when_the_network_has_ipv6():
    facts = NetworkFacts("users", "hs-u", ("172.18.0.0/16", "fd00:18::/64"), ipv6=True, icc=False)
    policy = IsolationPolicy("172.17.0.1", 8081, allow_cidrs=("10.20.0.0/16", "fd00:99::/64"))
    v4, v6 = rule_plan(facts, policy)
    assert f'-A HS-FWD-hs-u -d fd00:99::/64 -m comment --comment "{C}:allow" -j ACCEPT' not in lines(v4)
    assert lines(v6) == [
        "-N HS-FWD-hs-u",
        "-N HS-IN-hs-u",
        f'-A HS-FWD-hs-u -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment "{C}:established" -j ACCEPT',
        f'-A HS-FWD-hs-u -i hs-u -o hs-u -m comment --comment "{C}:between-servers" {REJ6}',
        f'-A HS-FWD-hs-u ! -i hs-u -m comment --comment "{C}:inbound" -j RETURN',
        f'-A HS-FWD-hs-u -d fd00:99::/64 -m comment --comment "{C}:allow" -j ACCEPT',
        f'-A HS-FWD-hs-u -d fe80::/10 -m comment --comment "{C}:link-local" {REJ6}',
        f'-A HS-FWD-hs-u -d fc00::/7 -m comment --comment "{C}:private" {REJ6}',
        INTERNET,
        IN_HEAD,
        f'-A HS-IN-hs-u -p ipv6-icmp -m icmp6 --icmpv6-type 135 -m comment --comment "{C}:neighbour-discovery" -j ACCEPT',
        f'-A HS-IN-hs-u -p ipv6-icmp -m icmp6 --icmpv6-type 136 -m comment --comment "{C}:neighbour-discovery" -j ACCEPT',
        f'-A HS-IN-hs-u -d fd00:99::/64 -m comment --comment "{C}:allow" -j ACCEPT',
        f'-A HS-IN-hs-u -m comment --comment "{C}:host" {REJ6}',
        # the engine leaves ip6tables alone by default: no DOCKER-USER there
        f'-I FORWARD 1 -i hs-u -m comment --comment "{C}:jump" -j HS-FWD-hs-u',
        f'-I FORWARD 1 -o hs-u -m comment --comment "{C}:jump" -j HS-FWD-hs-u',
        JUMPS[2],
    ]
    assert rule_plan(facts, policy, ipv6_parent="DOCKER-USER")[1].jumps[0].chain == "DOCKER-USER"


def test_plan_is_pure_and_depends_on_the_bridge_only_by_name():
    other = NetworkFacts("users", "hs-other", ("172.18.0.0/16",), ipv6=False, icc=False)
    (a,), (b,) = rule_plan(FACTS, HOST_HUB), rule_plan(other, HOST_HUB)
    assert rule_plan(FACTS, HOST_HUB) == rule_plan(FACTS, HOST_HUB)
    assert [line.replace("hs-u", "hs-other") for line in lines(a)] == lines(b)


# --- settings ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "values, expected",
    [
        (["10.20.0.0/16"], ("10.20.0.0/16",)),
        ([" 192.168.5.7/32 ", "192.168.5.7/32"], ("192.168.5.7/32",)),
        (["fd00:1::/64"], ("fd00:1::/64",)),
        ([], ()),
    ],
)
def test_parse_cidrs(values, expected):
    assert parse_cidrs(values, "S") == expected


@pytest.mark.parametrize(
    "value, message",
    [
        ("10.1.2.3/8", "S: '10.1.2.3/8' is not a CIDR like '10.20.0.0/16' (10.1.2.3/8 has host bits set)."),
        ("nonsense", "S: 'nonsense' is not a CIDR like '10.20.0.0/16' ('nonsense' does not appear to be an IPv4 or IPv6 network)."),
        ("0.0.0.0/0", "S: '0.0.0.0/0' would open every address; use egress='internet' for public addresses and list the private ranges you need one by one."),
        ("169.254.169.254/32", "S: '169.254.169.254/32' overlaps the link-local range 169.254.0.0/16, where cloud metadata services hand out the host's credentials; it is never opened."),
        ("0.0.0.0/1", None),  # broad, but clear of link-local
        ("fe80::/64", "S: 'fe80::/64' overlaps the link-local range fe80::/10, where cloud metadata services hand out the host's credentials; it is never opened."),
    ],
)
def test_parse_cidrs_refuses(value, message):
    if message is None:  # broad but legal
        assert parse_cidrs([value], "S") == (value,)
        return
    with pytest.raises(NetworkConfigError) as e:
        parse_cidrs([value], "S")
    assert str(e.value) == message


def test_parse_addresses_and_egress():
    assert parse_addresses(["10.0.0.2", "10.0.0.2", "fd00::53"], "S") == ("10.0.0.2", "fd00::53")
    with pytest.raises(NetworkConfigError, match=r"^S: '10.0.0.0/8' is not an IP address\.$"):
        parse_addresses(["10.0.0.0/8"], "S")
    with pytest.raises(NetworkConfigError, match="link-local"):
        parse_addresses(["169.254.169.254"], "S")
    assert parse_egress(" None ") == "none"
    with pytest.raises(NetworkConfigError, match="^egress: 'intranet' is not one of internet, none.$"):
        parse_egress("intranet")


@pytest.mark.parametrize(
    "network, bridge",
    [
        ("hardened-spawner-users", "hs-users"),
        ("hsnet-users", "hs-hsnet-users"),
        ("hstest-users", "hs-hstest-users"),
        ("a-rather-long-network-name", "hs-" + __import__("hashlib").sha256(b"a-rather-long-network-name").hexdigest()[:12]),
    ],
)
def test_bridge_name(network, bridge):
    assert bridge_name(network) == bridge
    assert len(bridge) <= 15


def test_check_bridge_name():
    assert check_bridge_name("hs-users") == "hs-users"
    for bad in ("", "x" * 16, "a b", "../x"):
        with pytest.raises(NetworkConfigError, match="network_bridge_name"):
            check_bridge_name(bad)


def test_policy_refuses_bad_hub():
    with pytest.raises(NetworkConfigError, match="'hub' is not an IP address"):
        IsolationPolicy("hub", 8081)
    with pytest.raises(NetworkConfigError, match="not a TCP port"):
        IsolationPolicy("10.0.0.1", 0)


@pytest.mark.parametrize(
    "url, expected",
    [
        ("http://172.17.0.1:8081/hub/api", ("172.17.0.1", 8081)),
        ("http://hub:8081/hub/api", ("hub", 8081)),
        ("https://hub.example/hub/api", ("hub.example", 443)),
        ("http://[fd00::1]:8081/hub/api", ("fd00::1", 8081)),
    ],
)
def test_hub_endpoint(url, expected):
    assert hub_endpoint(url) == expected


@pytest.mark.parametrize(
    "jupyterhub, expected",
    [
        ({}, ("127.0.0.1", 8081)),
        ({"hub_ip": "0.0.0.0", "hub_connect_ip": "172.17.0.1", "hub_port": 9000}, ("172.17.0.1", 9000)),
        ({"hub_connect_url": "http://hub:8081"}, ("hub", 8081)),
        ({"hub_ip": "10.0.0.5", "hub_connect_port": 8082, "hub_port": 8081}, ("10.0.0.5", 8082)),
    ],
)
def test_hub_endpoint_from_config(jupyterhub, expected):
    assert hub_endpoint_from_config(jupyterhub) == expected


def test_isolation_settings_come_from_the_validated_spawner():
    config = Config()
    config.DockerSpawner.network_name = "from-docker-spawner"
    config.HardenedSpawner.network_name = "users"
    config.HardenedSpawner.egress = "none"
    config.HardenedSpawner.egress_allow_cidrs = ["10.20.0.0/16"]
    spawner = HardenedSpawner(config=config)
    assert isolation_settings(spawner, "172.17.0.1", 8099) == IsolationSettings(
        network="users", bridge="", isolation=True, hub_ip="172.17.0.1", hub_port=8099, egress="none",
        allow=("10.20.0.0/16",), allow_dns=(), trusted=(),
    )
    config.HardenedSpawner.network_hub_address = "10.1.2.3"  # overrides the hub's API host
    assert isolation_settings(HardenedSpawner(config=config), "172.17.0.1", 8099).hub_ip == "10.1.2.3"


def test_apply_command_names_every_setting():
    policy = IsolationPolicy("172.17.0.1", 8081, "none", ("10.20.0.0/16",), ("10.0.0.2",), ("172.18.0.3",))
    assert apply_command("users", policy) == (
        "hardened-spawner firewall apply --network users --hub-ip 172.17.0.1 --hub-port 8081 "
        "--egress none --allow 10.20.0.0/16 --allow-dns 10.0.0.2 --trusted 172.18.0.3"
    )
    assert apply_command("users", HOST_HUB).endswith("--hub-port 8081")


# --- the network -----------------------------------------------------------------------


def test_network_create_spec():
    assert network_create_spec("users", "hs-users", True, "1.0") == {
        "name": "users",
        "driver": "bridge",
        "options": {
            "com.docker.network.bridge.name": "hs-users",
            "com.docker.network.bridge.enable_icc": "false",
        },
        "labels": {labels.MANAGED: "true", labels.ROLE: "network", labels.VERSION: "1.0"},
    }
    assert network_create_spec("users", "hs-users", False, "1.0")["options"] == {
        "com.docker.network.bridge.name": "hs-users"
    }


def test_network_facts():
    inspect = {
        "Name": "users",
        "Id": "0123456789abcdef0123",
        "Driver": "bridge",
        "EnableIPv6": True,
        "IPAM": {"Config": [{"Subnet": "172.18.0.0/16", "Gateway": "172.18.0.1"}, {"Subnet": "fd00:18::/64"}]},
        "Options": {"com.docker.network.bridge.name": "hs-users",
                    "com.docker.network.bridge.enable_icc": "false"},
        "Labels": {labels.MANAGED: "true"},
    }
    assert network_facts(inspect) == NetworkFacts(
        "users", "hs-users", ("172.18.0.0/16", "fd00:18::/64"), ipv6=True, icc=False,
        driver="bridge", managed=True,
    )
    plain = {"Name": "old", "Id": "0123456789abcdef0123", "Driver": "bridge", "IPAM": {"Config": None}}
    facts = network_facts(plain)
    assert (facts.bridge, facts.icc, facts.subnets, facts.ipv6) == ("br-0123456789ab", True, (), False)


def test_network_problems():
    assert network_problems(FACTS) == []
    old = NetworkFacts("users", "br-0123", ("172.18.0.0/16",), ipv6=False, icc=True)
    assert network_problems(old) == [
        ("The users' network users lets containers talk to each other (it was created without "
        "com.docker.network.bridge.enable_icc=false); only the firewall rules stand between "
        "users' servers. Stop all servers and remove it (docker network rm users): the spawner "
        "recreates it with isolation.")
    ]
    overlay = NetworkFacts("users", "x", (), ipv6=False, icc=False, driver="overlay")
    assert "uses the 'overlay' driver" in network_problems(overlay)[0]


# --- iptables -S, and what apply and remove do to it -------------------------------------

DOCKER_ONLY = """\
-P INPUT ACCEPT
-P FORWARD DROP
-P OUTPUT ACCEPT
-N DOCKER
-N DOCKER-USER
-A FORWARD -j DOCKER-USER
-A DOCKER-USER -j RETURN
"""


def simulate(tables: Tables, script: str) -> Tables:
    """Just enough of iptables-restore --noflush for our scripts."""
    chains = set(tables.chains)
    rules = {k: list(v) for k, v in tables.rules.items()}
    for line in script.splitlines():
        if line in ("*filter", "COMMIT") or not line:
            continue
        words = shlex.split(line)
        if words[0].startswith(":"):
            chains.add(words[0][1:])
            rules[words[0][1:]] = []
        elif words[0] == "-A":
            rules.setdefault(words[1], []).append(tuple(words[2:]))
        elif words[0] == "-I":
            rules.setdefault(words[1], []).insert(int(words[2]) - 1, tuple(words[3:]))
        elif words[0] == "-D":
            rules[words[1]].remove(tuple(words[2:]))
        elif words[0] == "-F":
            rules[words[1]] = []
        elif words[0] == "-X":
            assert not rules.get(words[1]), f"deleting non-empty chain {words[1]}"
            chains.discard(words[1])
            rules.pop(words[1], None)
        else:
            raise AssertionError(line)
    return Tables(chains, {k: v for k, v in rules.items() if v})


def dump(tables: Tables) -> str:
    """Back to `iptables -S` text, so parse_tables reads what a real table prints."""
    out = [f"-N {c}" for c in sorted(tables.chains)]
    for chain, rules in tables.rules.items():
        out += [" ".join(["-A", chain] + [shlex.quote(a) if " " in a else (f'"{a}"' if a.startswith("hardened-spawner:") else a) for a in args]) for args in rules]
    return "\n".join(out)


def test_parse_tables():
    text = DOCKER_ONLY + f'-A DOCKER-USER -i hs-u -m comment --comment "{C}:jump" -j HS-FWD-hs-u\n'
    tables = parse_tables(text)
    assert tables.chains == {"INPUT", "FORWARD", "OUTPUT", "DOCKER", "DOCKER-USER"}
    assert tables.chain("DOCKER-USER") == [
        ("-j", "RETURN"),
        ("-i", "hs-u", "-m", "comment", "--comment", f"{C}:jump", "-j", "HS-FWD-hs-u"),
    ]


def test_apply_script_on_a_clean_engine():
    (plan,) = rule_plan(FACTS, HOST_HUB)
    script = apply_script(plan, "hs-u", parse_tables(DOCKER_ONLY))
    body = script.splitlines()
    assert body[:3] == ["*filter", ":HS-FWD-hs-u - [0:0]", ":HS-IN-hs-u - [0:0]"]
    assert body[-4:] == JUMPS + ["COMMIT"]
    assert body[3:-4] == [line for line in lines(plan) if line.startswith("-A ")]


def test_apply_twice_leaves_one_copy_and_remove_restores():
    (plan,) = rule_plan(FACTS, HOST_HUB)
    clean = parse_tables(DOCKER_ONLY)
    once = parse_tables(dump(simulate(clean, apply_script(plan, "hs-u", clean))))
    assert plan_problems(plan, once) == []
    second = apply_script(plan, "hs-u", once)
    assert not [line for line in second.splitlines() if line.startswith(("-I", "-D"))]
    twice = parse_tables(dump(simulate(once, second)))
    assert twice.rules == once.rules
    removed = simulate(twice, remove_script("hs-u", twice))
    assert removed.rules == clean.rules and removed.chains == clean.chains
    assert remove_script("hs-u", removed) == ""


def test_apply_repairs_duplicates_and_stale_rules_and_leaves_others_alone():
    (plan,) = rule_plan(FACTS, HOST_HUB)
    jump = f'-A DOCKER-USER -i hs-u -m comment --comment "{C}:jump" -j HS-FWD-hs-u'
    stale = f'-A INPUT -i hs-u -m comment --comment "{C}:old-purpose" -j DROP'
    foreign = '-A DOCKER-USER -i hs-x -m comment --comment "hardened-spawner:hs-x:jump" -j HS-FWD-hs-x'
    tables = parse_tables(f"{DOCKER_ONLY}{jump}\n{jump}\n{stale}\n{foreign}")
    script = apply_script(plan, "hs-u", tables)
    assert [line for line in script.splitlines() if line.startswith(("-D", "-I"))] == [
        jump.replace("-A", "-D", 1),
        stale.replace("-A", "-D", 1),
        JUMPS[1],
        JUMPS[2],
    ]
    after = parse_tables(dump(simulate(tables, script)))
    assert plan_problems(plan, after) == []
    assert after.chain("DOCKER-USER").count(tuple(shlex.split(foreign)[2:])) == 1


def test_plan_problems_name_each_difference():
    (plan,) = rule_plan(FACTS, HOST_HUB)
    clean = parse_tables(DOCKER_ONLY)
    assert plan_problems(plan, clean) == [
        "iptables: chain HS-FWD-hs-u is missing",
        "iptables: chain HS-IN-hs-u is missing",
        "iptables: jump missing: " + JUMPS[0].replace("-I DOCKER-USER 1", "-A DOCKER-USER"),
        "iptables: jump missing: " + JUMPS[1].replace("-I DOCKER-USER 1", "-A DOCKER-USER"),
        "iptables: jump missing: " + JUMPS[2].replace("-I INPUT 1", "-A INPUT"),
    ]
    applied = simulate(clean, apply_script(plan, "hs-u", clean))
    # someone deleted the metadata block and duplicated a jump
    applied.rules["HS-FWD-hs-u"] = [a for a in applied.rules["HS-FWD-hs-u"] if "169.254.0.0/16" not in a]
    applied.rules["INPUT"] = applied.rules["INPUT"] * 2
    assert plan_problems(plan, applied) == [
        "iptables: 1 rule(s) missing, first: " + BLOCKED[0],
        "iptables: jump installed 2 times: " + JUMPS[2].replace("-I INPUT 1", "-A INPUT"),
    ]
    none = rule_plan(FACTS, IsolationPolicy("172.17.0.1", 8081, egress="none"))[0]
    problems = plan_problems(none, simulate(clean, apply_script(plan, "hs-u", clean)))
    assert problems == [
        f'iptables: 1 rule(s) missing, first: -A HS-FWD-hs-u -m comment --comment "{C}:egress-none" {REJ}',
        f"iptables: 1 unexpected rule(s), first: {INTERNET}",
    ]
    no_docker = parse_tables("-P INPUT ACCEPT\n-P FORWARD ACCEPT\n")
    assert "chain DOCKER-USER is missing (is the engine using iptables?)" in " ".join(plan_problems(plan, no_docker))


# --- marker and probe ---------------------------------------------------------------------


def test_marker():
    marker = marker_labels(FACTS, HOST_HUB, "boot-1", "2025-01-01T00:00:00+00:00", "1.0")
    assert marker == {
        labels.MANAGED: "true",
        labels.ROLE: "firewall",
        labels.VERSION: "1.0",
        f"{labels.PREFIX}.firewall.bridge": "hs-u",
        f"{labels.PREFIX}.firewall.digest": HOST_HUB.digest(FACTS),
        f"{labels.PREFIX}.firewall.boot-id": "boot-1",
        f"{labels.PREFIX}.firewall.applied-at": "2025-01-01T00:00:00+00:00",
        f"{labels.PREFIX}.firewall.summary": "hub 172.17.0.1:8081; egress internet",
    }
    assert marker_problems(marker, FACTS, HOST_HUB, "boot-1") == []
    assert marker_problems(None, FACTS, HOST_HUB, "boot-1") == [
        "no firewall marker (volume users-firewall): `hardened-spawner firewall apply` has not run for this network"
    ]
    none = IsolationPolicy("172.17.0.1", 8081, egress="none")
    assert marker_problems(marker, FACTS, none, "boot-2") == [
        ("the firewall was applied with other settings (hub 172.17.0.1:8081; egress internet) "
        "than this hub's (hub 172.17.0.1:8081; egress none)"),
        ("the firewall was applied before the host's last reboot (2025-01-01T00:00:00+00:00); "
        "iptables rules do not survive one"),
    ]


def test_digest_covers_every_input():
    digests = {
        HOST_HUB.digest(FACTS),
        IsolationPolicy("172.17.0.1", 8082).digest(FACTS),
        IsolationPolicy("172.17.0.2", 8081).digest(FACTS),
        IsolationPolicy("172.17.0.1", 8081, egress="none").digest(FACTS),
        IsolationPolicy("172.17.0.1", 8081, allow_cidrs=("10.0.0.0/24",)).digest(FACTS),
        IsolationPolicy("172.17.0.1", 8081, allow_dns=("10.0.0.2",)).digest(FACTS),
        IsolationPolicy("172.17.0.1", 8081, trusted=("172.18.0.9",)).digest(FACTS),
        HOST_HUB.digest(NetworkFacts("users", "hs-v", ("172.18.0.0/16",), False, False)),
        HOST_HUB.digest(NetworkFacts("users", "hs-u", ("172.19.0.0/16",), False, False)),
    }
    assert len(digests) == 9


def test_probe_spec_is_locked_down():
    create, host = probe_spec("img", "users", HOST_HUB, "1.0")
    assert create["user"] == "65534:65534"
    assert create["command"][:2] == ["python3", "-c"] and create["command"][3:] == ["172.17.0.1", "8081", "9"]
    assert create["labels"][labels.ROLE] == "network-probe"
    assert host == {
        "network_mode": "users",
        "cap_drop": ["ALL"],
        "read_only": True,
        "security_opt": ["no-new-privileges:true"],
        "mem_limit": 64 * 1024 * 1024,
        "pids_limit": 16,
    }


@pytest.mark.parametrize(
    "answer, policy, expected",
    [
        ({"hub": "open", "canary": "rejected"}, HOST_HUB, []),
        ({"hub": "open", "canary": "refused"}, HOST_HUB, [
            ("a container on the users' network got 'refused' instead of a firewall rejection "
            "from 172.17.0.1:9: the isolation rules are not in effect")]),
        ({"hub": "timeout", "canary": "timeout"}, HOST_HUB, [
            "a container on the users' network cannot reach the hub API at 172.17.0.1:8081 (timeout)",
            ("a container on the users' network got 'timeout' instead of a firewall rejection "
            "from 172.17.0.1:9: the isolation rules are not in effect")]),
        # the admin opened the hub's whole address: the canary proves nothing, so it is not asked
        ({"hub": "open", "canary": "open"},
         IsolationPolicy("172.17.0.1", 8081, allow_cidrs=("172.17.0.0/16",)), []),
    ],
)
def test_probe_problems(answer, policy, expected):
    assert probe_problems("starting\n" + json.dumps(answer) + "\n", 0, policy) == expected


def test_probe_problems_when_the_probe_breaks():
    assert probe_problems("Traceback ...", 1, HOST_HUB) == [
        "the network probe failed (exit 1): 'Traceback ...'"
    ]


def test_probe_script_runs_and_tells_refused_from_open():
    import socket
    import sys

    from hardened_spawner.docker.isolation.probe import PROBE_SCRIPT

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        open_port = listener.getsockname()[1]
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed_port = s.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-c", PROBE_SCRIPT, "127.0.0.1", str(open_port), str(closed_port)],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout
    assert json.loads(out) == {"hub": "open", "canary": "refused"}


# --- the firewall's imperative half, with a fake iptables -----------------------------------


class FakeIptables:
    """Answers `iptables -S` from a text, records restores."""

    def __init__(self, v4: str | None, v6: str | None = "", fail: str = ""):
        self.text = {4: v4, 6: v6}
        self.restored: list[tuple[str, str]] = []
        self.fail = fail

    def __call__(self, argv, stdin=None):
        command = argv[0]
        family = 6 if command.startswith("ip6") else 4
        if command.endswith("-restore"):
            self.restored.append((command, stdin))
            tables = simulate(parse_tables(self.text[family]), stdin)
            self.text[family] = dump(tables) + "\n" + "\n".join(f"-P {c} ACCEPT" for c in ("INPUT", "FORWARD", "OUTPUT"))
            return subprocess.CompletedProcess(argv, 0, "", "")
        if self.text[family] is None:
            return subprocess.CompletedProcess(argv, 4, "", self.fail or "Permission denied (you must be root)")
        return subprocess.CompletedProcess(argv, 0, self.text[family], "")


def test_read_tables_reports_why_it_cannot():
    assert iptables.read_tables(4, FakeIptables(None)) == (
        None, "iptables -S failed: Permission denied (you must be root)")

    def missing(argv, stdin=None):
        raise FileNotFoundError(2, "No such file or directory", argv[0])

    tables, why = iptables.read_tables(4, missing)
    assert tables is None and why.startswith("iptables cannot run (")


def test_firewall_apply_status_remove_with_fake_iptables():
    fake = FakeIptables(DOCKER_ONLY)
    assert iptables.status(FACTS, HOST_HUB, fake)[0] == "iptables: chain HS-FWD-hs-u is missing"
    assert iptables.apply(FACTS, HOST_HUB, fake) == []
    assert iptables.apply(FACTS, HOST_HUB, fake) == []
    assert iptables.status(FACTS, HOST_HUB, fake) == []
    assert iptables.remove("hs-u", fake) == 1
    assert parse_tables(fake.text[4]).rules == parse_tables(DOCKER_ONLY).rules


def test_firewall_needs_the_docker_host():
    with pytest.raises(iptables.FirewallError, match="no DOCKER-USER chain"):
        iptables.apply(FACTS, HOST_HUB, FakeIptables("-P INPUT ACCEPT\n"))
    with pytest.raises(iptables.FirewallError, match="Run this as root"):
        iptables.apply(FACTS, HOST_HUB, FakeIptables(None))


class FakeClient:
    """The few docker-py APIClient calls `verify` makes when it must probe."""

    def __init__(self, marker=None, probe_output='{"hub": "open", "canary": "rejected"}'):
        self.marker = marker
        self.probe_output = probe_output
        self.created = []

    def inspect_volume(self, name):
        import docker.errors

        if self.marker is None:
            raise docker.errors.NotFound(name)
        return {"Labels": self.marker}

    def create_host_config(self, **kw):
        return kw

    def create_container(self, **kw):
        self.created.append(kw)
        return {"Id": "probe"}

    def start(self, _id):
        pass

    def wait(self, _id, timeout):
        return {"StatusCode": 0}

    def logs(self, _id):
        return self.probe_output.encode()

    def remove_container(self, _id, force):
        pass


def test_verify_reads_iptables_on_the_host():
    fake = FakeIptables(DOCKER_ONLY)
    method, problems = verifying.verify(FakeClient(), FACTS, HOST_HUB, run=fake)
    assert method == "iptables" and problems[0] == "iptables: chain HS-FWD-hs-u is missing"
    iptables.apply(FACTS, HOST_HUB, fake)
    assert verifying.verify(FakeClient(), FACTS, HOST_HUB, run=fake) == ("iptables", [])


def test_verify_probes_where_iptables_is_out_of_reach(monkeypatch):
    monkeypatch.setattr(verifying, "read_boot_id", lambda: "boot-1")
    marker = marker_labels(FACTS, HOST_HUB, "boot-1", "2025-01-01T00:00:00+00:00", "1.0")
    unreadable = FakeIptables(None)
    client = FakeClient(marker)
    assert verifying.verify(client, FACTS, HOST_HUB, image="img", run=unreadable) == ("probe", [])
    assert client.created[0]["host_config"]["network_mode"] == "users"
    # a hub in a container sees its own, empty, tables: not the host's
    assert verifying.verify(client, FACTS, HOST_HUB, image="img", run=FakeIptables("-P INPUT ACCEPT\n"))[0] == "probe"
    method, problems = verifying.verify(
        FakeClient(None, '{"hub": "open", "canary": "refused"}'), FACTS, HOST_HUB, image="img", run=unreadable
    )
    assert method == "probe" and len(problems) == 2
    method, problems = verifying.verify(client, FACTS, HOST_HUB, method="iptables", run=unreadable)
    assert problems == ["cannot read the host's iptables (iptables -S failed: Permission denied (you must be root))"]


def test_the_admin_command_has_a_firewall_subcommand(capsys):
    from hardened_spawner.cli import main

    assert main(["firewall", "--help"]) == 0
    shown = capsys.readouterr().out
    assert all(f"\n{action}\n" in shown for action in ("apply", "status", "remove", "network", "resolvers"))
    assert main(["firewall", "apply", "--help"]) == 0
    assert "--dry-run" in capsys.readouterr().out
    assert main(["firewall", "explode"]) == 2
    assert "Unknown action 'explode'" in capsys.readouterr().err


def test_firewall_command_settings_from_a_config_file(tmp_path):
    config = tmp_path / "jupyterhub_config.py"
    config.write_text(
        "c = get_config()\n"
        "c.JupyterHub.hub_connect_ip = '172.17.0.1'\n"
        "c.JupyterHub.hub_port = 8099\n"
        "c.HardenedSpawner.network_name = 'users'\n"
        "c.HardenedSpawner.egress_allow_cidrs = ['10.20.0.0/16']\n"
    )
    settings = firewall_settings(["status", "-f", str(config), "--egress", "none"])
    assert policy_from_settings(settings) == IsolationPolicy("172.17.0.1", 8099, "none", ("10.20.0.0/16",))
    assert settings.network == "users"
    with pytest.raises(NetworkConfigError, match="pass --hub-ip"):
        policy_from_settings(dataclasses.replace(settings, hub_ip="0.0.0.0"))


# --- the spawner's settings -------------------------------------------------------------------


def _spawner(**settings) -> HardenedSpawner:
    config = Config()
    for name, value in settings.items():
        setattr(config.HardenedSpawner, name, value)
    return HardenedSpawner(config=config)


def test_spawner_network_defaults():
    s = _spawner()
    assert (s.network_isolation, s.egress, s.egress_allow_cidrs, s.egress_allow_dns) == (True, "internet", [], [])
    assert (s.firewall_required, s.firewall_check_method, s.firewall_check_interval) == (False, "auto", 60)
    assert (s.network_bridge_name, s.network_hub_address, s.network_trusted_addresses) == ("", "", [])
    assert s.network_name == "hardened-spawner-users"


def test_spawner_normalises_allowlists():
    s = _spawner(egress_allow_cidrs=["10.20.0.0/16", "10.20.0.0/16"], egress_allow_dns=["10.0.0.2"])
    assert s.egress_allow_cidrs == ["10.20.0.0/16"] and s.egress_allow_dns == ["10.0.0.2"]


@pytest.mark.parametrize(
    "setting, value, message",
    [
        ("egress", "intranet", "HardenedSpawner.egress: 'intranet' is not one of internet, none."),
        ("egress_allow_cidrs", ["10.1.2.3/8"], "HardenedSpawner.egress_allow_cidrs: '10.1.2.3/8' is not a CIDR"),
        ("egress_allow_cidrs", ["169.254.169.254/32"], "HardenedSpawner.egress_allow_cidrs: '169.254.169.254/32' overlaps the link-local range"),
        ("egress_allow_dns", ["resolver"], "HardenedSpawner.egress_allow_dns: 'resolver' is not an IP address."),
        ("network_trusted_addresses", ["10.0.0.0/8"], "HardenedSpawner.network_trusted_addresses: '10.0.0.0/8' is not an IP address."),
        ("network_hub_address", "hub", "HardenedSpawner.network_hub_address: 'hub' is not an IP address."),
        ("network_bridge_name", "a-much-too-long-bridge", "HardenedSpawner.network_bridge_name: 'a-much-too-long-bridge' is not a usable interface name"),
        ("network_name", "bridge", "HardenedSpawner.network_name 'bridge' is not allowed"),
        ("network_name", "host", "HardenedSpawner.network_name 'host' is not allowed"),
        ("firewall_check_method", "nft", "HardenedSpawner.firewall_check_method must be 'auto', 'iptables' or 'probe', not 'nft'."),
        ("firewall_check_interval", -1, "HardenedSpawner.firewall_check_interval must be >= 0 seconds."),
    ],
)
def test_spawner_refuses_bad_network_settings(setting, value, message):
    with pytest.raises(TraitError) as e:
        # DockerSpawner's default is "bridge": traitlets sees no change from config, so
        # that one is caught by check_config, which the hub runs at start
        _spawner(**{setting: value}).check_config()
    assert str(e.value).startswith(message)


@pytest.mark.parametrize(
    "resolv_conf, policy, expected",
    [
        ("nameserver 10.255.255.53\n", HOST_HUB, ["10.255.255.53"]),
        ("nameserver 10.255.255.53\n", IsolationPolicy("172.17.0.1", 8081, allow_dns=("10.255.255.53",)), []),
        ("nameserver 10.255.255.53\n", IsolationPolicy("172.17.0.1", 8081, allow_cidrs=("10.255.0.0/16",)), []),
        ("# systemd-resolved\nnameserver 127.0.0.53\noptions edns0\n", HOST_HUB, []),  # asked from the host
        ("nameserver 9.9.9.9\nnameserver fd00::53\n", HOST_HUB, ["fd00::53"]),
        ("nameserver 9.9.9.9\n", IsolationPolicy("172.17.0.1", 8081, egress="none"), ["9.9.9.9"]),
    ],
)
def test_unreachable_resolvers(resolv_conf, policy, expected):
    from hardened_spawner.docker.isolation.resolv import unreachable_resolvers

    assert unreachable_resolvers(resolv_conf, policy) == expected


def test_dns_note_names_the_flag(tmp_path):
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 10.255.255.53\n")
    assert resolving.dns_note(HOST_HUB, str(resolv)) == (
        "note: servers cannot reach this host's DNS resolver(s) 10.255.255.53 (a blocked range, "
        "or egress none), so their name lookups fail. To open port 53 only: --allow-dns "
        "10.255.255.53, and the same in HardenedSpawner.egress_allow_dns."
    )
    assert resolving.dns_note(HOST_HUB, str(tmp_path / "missing")) == ""


# --- a users' network with room for a hub in a container ------------------------------


def test_reserved_layout_keeps_the_lower_half_for_fixed_addresses():
    from hardened_spawner.docker.isolation.docker_network import reserved_layout

    assert reserved_layout("172.30.0.0/24") == {
        "subnet": "172.30.0.0/24", "gateway": "172.30.0.1",
        "ip_range": "172.30.0.128/25", "hub_address": "172.30.0.2",
    }
    assert reserved_layout("172.19.0.0/16")["ip_range"] == "172.19.128.0/17"
    for bad, message in (("172.30.0.1/24", "not a CIDR"), ("fd00::/64", "must be IPv4"),
                         ("10.0.0.0/30", "from /8 to /28")):
        with pytest.raises(NetworkConfigError, match=message):
            reserved_layout(bad)


def test_network_create_spec_with_a_subnet():
    spec = network_create_spec("users", "hs-users", True, "1.0", subnet="172.30.0.0/24")
    assert spec["ipam"] == {
        "Driver": "default",
        "Config": [{"Subnet": "172.30.0.0/24", "IPRange": "172.30.0.128/25", "Gateway": "172.30.0.1"}],
        "Options": {},
    }
    assert spec["labels"]["org.jupyter.hardened-spawner.hub-address"] == "172.30.0.2"
    inspect = {"Name": "users", "Id": "0" * 20, "Driver": "bridge", "Options": spec["options"],
               "IPAM": {"Config": spec["ipam"]["Config"]}, "Labels": spec["labels"]}
    assert network_facts(inspect).hub_address == "172.30.0.2"


class FakeNetworks:
    """docker-py's network calls, with an engine that hands out 172.19.0.0/16."""

    def __init__(self, existing=None):
        self.networks = dict(existing or {})
        self.calls = []

    def inspect_network(self, name):
        import docker.errors

        if name not in self.networks:
            raise docker.errors.NotFound(name)
        return self.networks[name]

    def create_network(self, name, driver, options=None, labels=None, ipam=None):
        self.calls.append(("create", name, ipam))
        config = ipam["Config"] if ipam else [{"Subnet": "172.19.0.0/16", "Gateway": "172.19.0.1"}]
        self.networks[name] = {"Name": name, "Id": name, "Driver": driver,
                               "Options": options or {}, "Labels": labels or {}, "IPAM": {"Config": config}}
        return {"Id": name}

    def remove_network(self, name):
        self.calls.append(("remove", name))
        del self.networks[name]


def test_ensure_network_reserves_the_hub_address_in_a_subnet_the_engine_picked():
    client = FakeNetworks()
    facts = docker_network.ensure_network(client, "users")
    throwaway = client.calls[0][1]
    assert throwaway.startswith("users-picking-subnet-") and throwaway not in client.networks
    assert [c[:2] for c in client.calls] == [("create", throwaway), ("remove", throwaway), ("create", "users")]
    assert client.calls[2][2]["Config"][0]["IPRange"] == "172.19.128.0/17"
    assert (facts.bridge, facts.icc, facts.subnets, facts.hub_address) == (
        "hs-users", False, ("172.19.0.0/16",), "172.19.0.2")
    # present: left alone
    assert docker_network.ensure_network(client, "users", require_hub_address=True) == facts
    assert len(client.calls) == 3
    # an explicit subnet is used as given
    client = FakeNetworks()
    assert docker_network.ensure_network(client, "u2", subnet="10.99.0.0/24").hub_address == "10.99.0.2"
    assert len(client.calls) == 1


def test_ensure_network_refuses_a_network_without_a_hub_address():
    old = {"Name": "users", "Id": "users", "Driver": "bridge", "Labels": {},
           "Options": {"com.docker.network.bridge.enable_icc": "false"},
           "IPAM": {"Config": [{"Subnet": "172.19.0.0/16"}]}}
    client = FakeNetworks({"users": old})
    assert docker_network.ensure_network(client, "users").hub_address == ""  # the rules do not need it
    with pytest.raises(NetworkConfigError, match=r"no address reserved for the hub .* \(docker network rm users\)"):
        docker_network.ensure_network(client, "users", require_hub_address=True)


def test_keep_applied_puts_the_rules_back_and_survives_errors(monkeypatch):
    import io
    import threading

    answers = iter([
        ["chain HS-FWD-hs-u is missing"],  # a reboot, say
        [],
        RuntimeError("engine restarting"),
        [],
    ])
    applied = []

    def current(client, settings, policy):
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return FACTS, answer

    def apply_and_mark(client, settings, policy):
        applied.append(settings.network)
        return FACTS, []

    monkeypatch.setattr(command, "current_problems", current)
    monkeypatch.setattr(command, "apply_and_mark", apply_and_mark)

    class StopAfter(threading.Event):
        rounds = 0

        def wait(self, timeout=None):
            self.rounds += 1
            return self.rounds >= 4

    out = io.StringIO()
    states = []
    monkeypatch.setattr(command, "_mark_status", lambda path, in_place: states.append(in_place))
    command.keep_applied(None, IsolationSettings("users", "", True, "172.17.0.1", 8081, "internet"), HOST_HUB, 5, out, StopAfter(), "/run/ok")
    assert applied == ["users"]
    assert states == [True, True, False, True]
    lines = out.getvalue().splitlines()
    assert len(lines) == 3, lines
    assert lines[0].endswith("the rules are not in place (chain HS-FWD-hs-u is missing): applying")
    assert lines[1].endswith("applied the rules for users (bridge hs-u; hub 172.17.0.1:8081; egress internet)")
    assert lines[2].endswith("could not apply the rules: RuntimeError('engine restarting')")


def test_blocked_host_resolvers(tmp_path):
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 10.255.255.53\nnameserver 9.9.9.9\nnameserver 127.0.0.53\n")
    assert resolving.blocked_host_resolvers(str(resolv)) == ["10.255.255.53"]
    assert resolving.blocked_host_resolvers(str(tmp_path / "missing")) == []
    # systemd-resolved: its stub is on the host's loopback; the engine forwards to its upstreams
    resolv.write_text("nameserver 127.0.0.53\noptions edns0 trust-ad\n")
    upstream = tmp_path / "upstream.conf"
    upstream.write_text("nameserver 192.168.1.1\nnameserver 1.1.1.1\n")
    assert resolving.blocked_host_resolvers(str(resolv), str(upstream)) == ["192.168.1.1"]
    assert resolving.blocked_host_resolvers(str(resolv), str(tmp_path / "missing")) == []


def test_rules_go_to_the_backend_that_holds_the_engines_chains():
    def host(with_docker_user):
        def run(argv, stdin=None):
            if argv[0] == "iptables-nft" and "iptables-nft" not in with_docker_user:
                raise FileNotFoundError(argv[0])  # an older host: no nft front end at all
            text = "-P FORWARD DROP\n-N DOCKER-USER\n" if argv[0] in with_docker_user else "-P FORWARD ACCEPT\n"
            return subprocess.CompletedProcess(argv, 0, text, "")
        return run

    assert iptables.detect_backend(host({"iptables"})) == ""
    assert iptables.detect_backend(host({"iptables-legacy"})) == "-legacy"  # an nft container, a legacy host
    assert iptables.detect_backend(host({"iptables-nft"})) == "-nft"
    assert iptables.detect_backend(host(set())) == ""  # not the host: the default, which reports it
    assert iptables.with_backend(["iptables-restore", "--noflush"], "-legacy") == ["iptables-legacy-restore", "--noflush"]
    assert iptables.with_backend(["ip6tables", "-S"], "-nft") == ["ip6tables-nft", "-S"]
    assert iptables.with_backend(["ip6tables-restore"], "") == ["ip6tables-restore"]


def test_status_file_exists_while_the_rules_are_in_place(tmp_path):
    path = tmp_path / "in-place"
    command._mark_status(str(path), True)
    assert path.read_text().endswith("\n")
    command._mark_status(str(path), False)
    assert not path.exists()
    command._mark_status(str(path), False)  # already gone: fine


@pytest.mark.parametrize("argv, why", [
    (["apply", "--watch", "0"], "--watch needs a positive number of seconds"),
    (["status", "--watch", "30"], "status has no option --watch (see --help)"),
    (["status", "--egres", "none"], "status has no option --egres (see --help)"),
])
def test_bad_options_are_refused_before_anything_runs(argv, why, capsys):
    from hardened_spawner.cli import main

    assert main(["firewall", *argv]) == 2
    assert why in capsys.readouterr().err


# --- rules in force that block this hub (issue 15) --------------------------------------


def test_rules_made_for_another_hubs_port_block_this_hub():
    fake = FakeIptables(DOCKER_ONLY)
    other_hub = IsolationPolicy("172.17.0.1", 9090)
    iptables.apply(FACTS, other_hub, fake)
    verdict = verifying.check(FakeClient(), FACTS, HOST_HUB, run=fake)
    assert verdict.method == "iptables"
    assert verdict.blocking == [
        "iptables: the rules in HS-FWD-hs-u were made for another hub: they lack -A HS-FWD-hs-u "
        "-d 172.17.0.1/32 -p tcp -m tcp --dport 8081 -m comment --comment "
        '"hardened-spawner:hs-u:hub-api" -j ACCEPT, so servers cannot reach this hub',
        "iptables: the rules in HS-IN-hs-u were made for another hub: they lack -A HS-IN-hs-u "
        "-d 172.17.0.1/32 -p tcp -m tcp --dport 8081 -m comment --comment "
        '"hardened-spawner:hs-u:hub-api" -j ACCEPT, so servers cannot reach this hub',
    ]
    assert verdict.problems  # and they differ from this hub's plan, as before


def test_no_rules_or_this_hubs_rules_block_nothing():
    fake = FakeIptables(DOCKER_ONLY)
    assert verifying.check(FakeClient(), FACTS, HOST_HUB, run=fake).blocking == []  # no rules yet
    iptables.apply(FACTS, IsolationPolicy("172.17.0.1", 8081, egress="none"), fake)
    # other settings, the same hub: weaker or stricter isolation, but servers reach the hub
    verdict = verifying.check(FakeClient(), FACTS, HOST_HUB, run=fake)
    assert verdict.problems and verdict.blocking == []


def test_a_probe_that_cannot_reach_the_hub_blocks_it(monkeypatch):
    monkeypatch.setattr(verifying, "read_boot_id", lambda: "boot-1")
    marker = marker_labels(FACTS, HOST_HUB, "boot-1", "2025-01-01T00:00:00+00:00", "1.0")
    client = FakeClient(marker, '{"hub": "rejected", "canary": "rejected"}')
    verdict = verifying.check(client, FACTS, HOST_HUB, image="img", run=FakeIptables(None))
    assert verdict.blocking == [
        "a container on the users' network cannot reach the hub API at 172.17.0.1:8081 (rejected)"]
    assert verdict.problems == verdict.blocking


# --- one source for the isolation settings (issue 12) ---------------------------------------


def _three_policies(tmp_path, monkeypatch, allow: list[str]) -> list[IsolationPolicy]:
    """The policy as the hub, `hardened-spawner check` and `firewall -f` build it."""
    import asyncio
    from types import SimpleNamespace

    from hardened_spawner import cli
    from hardened_spawner.docker.hub_context import reset_hub_contexts

    config_file = tmp_path / "jupyterhub_config.py"
    config_file.write_text(
        "c = get_config()\n"
        "c.JupyterHub.hub_connect_ip = '172.17.0.1'\n"
        "c.JupyterHub.hub_port = 8099\n"
        "c.HardenedSpawner.network_name = 'users'\n"
        "c.HardenedSpawner.egress = 'none'\n"
        f"c.HardenedSpawner.egress_allow_cidrs = {allow!r}\n"
    )
    config = cli.load_hub_config(str(config_file))
    spawner = cli.build_spawner(config)
    spawner.hub = SimpleNamespace(api_url="http://172.17.0.1:8099/hub/api")
    reset_hub_contexts()
    hub = asyncio.run(spawner.hub_policy())
    seen = []
    monkeypatch.setattr(docker_network, "load_network", lambda client, name: FACTS)
    monkeypatch.setattr(verifying, "verify", lambda client, facts, policy, **kw: seen.append(policy) or ("iptables", []))
    cli.network_report(None, spawner, config)
    from_firewall = policy_from_settings(firewall_settings(["status", "-f", str(config_file)]))
    reset_hub_contexts()
    return [hub, seen[0], from_firewall]


def test_the_hub_check_and_firewall_build_one_policy_and_follow_a_setting(tmp_path, monkeypatch):
    before = _three_policies(tmp_path, monkeypatch, ["10.20.0.0/16"])
    assert before == [IsolationPolicy("172.17.0.1", 8099, "none", ("10.20.0.0/16",))] * 3
    after = _three_policies(tmp_path, monkeypatch, ["10.30.0.0/16", "192.168.7.0/24"])
    assert after == [IsolationPolicy("172.17.0.1", 8099, "none", ("10.30.0.0/16", "192.168.7.0/24"))] * 3
