"""``hardened-spawner firewall apply|status|remove|network|resolvers``: one function an action.

Run as root on the Docker host. Settings come from the hub's ``jupyterhub_config.py``
(``-f``), read through the spawner itself (`hubconfig.build_spawner`, then
`network.isolation_settings`), so the rules are made from exactly the values the hub
checks; options override them. The rules, the engine work and the checks are in
`firewall`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence

import docker
import docker.errors
import requests.exceptions

from .errors import CannotCheck
from .firewall import (
    _COMMAND,
    FirewallError,
    _dns_note,
    apply,
    blocked_host_resolvers,
    delete_marker,
    ensure_network,
    load_network,
    marker_problems,
    plans,
    policy_from_settings,
    read_boot_id,
    read_marker,
    remove,
    status,
    write_marker,
)
from .hubconfig import build_spawner, load_hub_config
from .network import (
    EGRESS_MODES,
    IsolationPolicy,
    NetworkConfigError,
    NetworkFacts,
    bridge_name,
    check_bridge_name,
    hub_endpoint_from_config,
    isolation_settings,
    network_problems,
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hardened-spawner firewall",
        description="Install, check or remove the iptables rules that isolate users' servers "
        "(run as root on the Docker host). Settings come from -f jupyterhub_config.py; "
        "options override them. `network` makes the users' network with an address kept "
        "for a hub in a container; `resolvers` lists the host's DNS resolvers the rules block.",
    )
    p.add_argument("action", choices=sorted(ACTIONS))
    p.add_argument("-f", "--config", help="the hub's jupyterhub_config.py, to read its settings")
    p.add_argument("--network", help="the users' network (default hardened-spawner-users)")
    p.add_argument("--bridge", help="its bridge interface (default: read from the network)")
    p.add_argument("--subnet", help="network: its IPv4 subnet (default: a free one the engine picks)")
    p.add_argument("--hub-ip", help="the address servers reach the hub API at")
    p.add_argument("--hub-port", type=int, help="the hub API's port (default 8081)")
    p.add_argument("--egress", choices=EGRESS_MODES, help="internet (default) or none")
    p.add_argument("--allow", action="append", metavar="CIDR", help="a range to open (repeatable)")
    p.add_argument("--allow-dns", action="append", metavar="IP",
                   help="a DNS resolver in a blocked range, opened on port 53 only (repeatable)")
    p.add_argument("--trusted", action="append", metavar="IP",
                   help="a container on the users' network (a proxy) that may open connections to servers")
    p.add_argument("--dry-run", action="store_true", help="apply: print the rules, change nothing")
    p.add_argument("--watch", type=float, metavar="SECONDS",
                   help="apply: keep running, and put the rules back within SECONDS whenever "
                   "they go missing or differ (after a reboot, an engine restart, a flush)")
    p.add_argument("--status-file", metavar="PATH",
                   help="with --watch: a file that exists exactly while the rules are in place")
    p.add_argument("--json", action="store_true", help="status, network: print JSON")
    return p


def _settings(args) -> dict:
    """The command's settings: the spawner's (from ``-f``, else its defaults), then the
    options given. Without a config file the hub's address is unknown until --hub-ip."""
    try:
        config = load_hub_config(args.config or "")
        spawner = build_spawner(config)
    except CannotCheck as e:
        raise NetworkConfigError(str(e)) from None
    host, port = hub_endpoint_from_config(config.get("JupyterHub") or {})
    settings = isolation_settings(spawner, host if args.config else "", port)
    for key, value in (
        ("network", args.network), ("bridge", args.bridge), ("hub_ip", args.hub_ip),
        ("hub_port", args.hub_port), ("egress", args.egress), ("allow", args.allow),
        ("allow_dns", args.allow_dns), ("trusted", args.trusted),
    ):
        if value is not None:
            settings[key] = value
    return settings


def _client():
    return docker.APIClient(**docker.utils.kwargs_from_env())


def apply_and_mark(client, settings: dict, policy: IsolationPolicy) -> tuple[NetworkFacts, list[str]]:
    """Install the rules for the users' network (made if missing) and leave the marker
    the hub's probe check reads; returns what is still wrong."""
    facts = ensure_network(client, settings["network"], settings["bridge"], settings["isolation"])
    problems = apply(facts, policy)
    write_marker(client, facts, policy)
    return facts, problems


def current_problems(client, settings: dict, policy: IsolationPolicy) -> tuple[NetworkFacts | None, list[str]]:
    """What `status` reports: rules, network and marker against these settings."""
    facts = load_network(client, settings["network"])
    if facts is None:
        return None, [f"the users' network {settings['network']} does not exist yet"]
    problems = status(facts, policy)
    problems += marker_problems(read_marker(client, facts.name), facts, policy, read_boot_id())
    return facts, problems


def keep_applied(client, settings: dict, policy: IsolationPolicy, interval: float,
                 out, stop: threading.Event, status_file: str = "") -> None:
    """Check every ``interval`` seconds and put the rules back when they differ: what a
    boot unit would do once, done for as long as the engine runs this (the compose
    deployment's ``firewall`` service, restarted by the engine after a reboot).
    ``status_file`` exists exactly while the last round found or left them in place:
    a health check that costs nothing."""
    while True:
        problems = ["not checked yet"]
        try:
            facts, problems = current_problems(client, settings, policy)
            if problems:
                print(f"{_now()} the rules are not in place ({'; '.join(problems)}): applying", file=out, flush=True)
                facts, problems = apply_and_mark(client, settings, policy)
                print(f"{_now()} " + ("applied, but: " + "; ".join(problems) if problems else
                      f"applied the rules for {facts.name} (bridge {facts.bridge}; {policy.summary()})"),
                      file=out, flush=True)
        except (FirewallError, NetworkConfigError, OSError) as e:
            print(f"{_now()} could not apply the rules: {e}", file=out, flush=True)
        except Exception as e:
            print(f"{_now()} could not apply the rules: {e!r}", file=out, flush=True)
        if status_file:
            _mark_status(status_file, not problems)
        if stop.wait(interval):
            return


def _mark_status(path: str, in_place: bool) -> None:
    try:
        if in_place:
            with open(path, "w") as f:
                f.write(_now() + "\n")
        elif os.path.exists(path):
            os.remove(path)
    except OSError:
        pass  # the health check then reports unhealthy, which is what it should say


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _print_dns_note(policy: IsolationPolicy, out) -> None:
    note = _dns_note(policy)
    if note:
        print(note, file=out)


# --- the actions: each takes the parsed options, the settings and where to print -----


def resolvers_action(args, settings: dict, out) -> int:
    print(",".join(blocked_host_resolvers()), file=out)
    return 0


def network_action(args, settings: dict, out) -> int:
    client = _client()
    facts = ensure_network(client, settings["network"], settings["bridge"], settings["isolation"],
                           args.subnet or "", require_hub_address=True)
    report = {"network": facts.name, "bridge": facts.bridge, "subnets": list(facts.subnets),
              "hub_address": facts.hub_address, "isolated": not facts.icc}
    problems = network_problems(facts)
    if args.json:
        print(json.dumps({**report, "problems": problems}, indent=2), file=out)
    else:
        print(f"users' network {facts.name}: bridge {facts.bridge}, subnet "
              f"{', '.join(facts.subnets)}, hub address {facts.hub_address}", file=out)
        for problem in problems:
            print(f"- {problem}", file=out)
    return 1 if problems else 0


def remove_action(args, settings: dict, out) -> int:
    if settings["bridge"]:
        changed = remove(settings["bridge"])
        print(f"removed the rules for bridge {settings['bridge']} ({changed} table(s) changed)", file=out)
        return 0
    client = _client()
    facts = load_network(client, settings["network"])
    if facts is None:
        raise NetworkConfigError(f"no network {settings['network']}; pass --bridge")
    changed = remove(facts.bridge)
    delete_marker(client, facts.name)
    print(f"removed the rules for {facts.name} (bridge {facts.bridge}; "
          f"{changed} table(s) changed) and its marker", file=out)
    return 0


def apply_action(args, settings: dict, out) -> int:
    policy = policy_from_settings(settings)
    client = _client()
    if args.dry_run:
        facts = load_network(client, settings["network"]) or NetworkFacts(
            settings["network"], settings["bridge"] or bridge_name(settings["network"]), (), False, False)
        for plan in plans(facts, policy)[0]:
            print(f"# {_COMMAND[plan.family]}", file=out)
            print("\n".join(plan.lines()), file=out)
        return 0
    if args.watch is not None:
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        print(f"{_now()} keeping the rules for {settings['network']} in place "
              f"({policy.summary()}; checked every {args.watch:g} s)", file=out, flush=True)
        keep_applied(client, settings, policy, args.watch, out, stop, args.status_file or "")
        return 0
    facts, problems = apply_and_mark(client, settings, policy)
    if problems:
        print("applied, but:\n" + "\n".join(f"- {p}" for p in problems), file=out)
        return 1
    print(f"applied the rules for {facts.name} (bridge {facts.bridge}; {policy.summary()})", file=out)
    _print_dns_note(policy, out)
    return 0


def status_action(args, settings: dict, out) -> int:
    policy = policy_from_settings(settings)
    client = _client()
    facts, problems = current_problems(client, settings, policy)
    if args.json:
        print(json.dumps({"ok": not problems, "network": settings["network"],
                          "bridge": facts.bridge if facts else None,
                          "policy": policy.summary(), "problems": problems,
                          "marker": read_marker(client, facts.name) if facts else None},
                         indent=2), file=out)
    elif problems or facts is None:
        print("NOT in place:\n" + "\n".join(f"- {p}" for p in problems), file=out)
    else:
        print(f"in place for {facts.name} (bridge {facts.bridge}; {policy.summary()})", file=out)
        _print_dns_note(policy, out)
    return 1 if problems else 0


ACTIONS: dict[str, Callable[..., int]] = {
    "apply": apply_action, "status": status_action, "remove": remove_action,
    "network": network_action, "resolvers": resolvers_action,
}


def main(argv: Sequence[str] | None = None, out=None) -> int:
    """``hardened-spawner firewall ...``; returns the exit status (0 ok, 1 rules missing
    or different, 2 usage or environment error)."""
    out = out or sys.stdout
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # --help, or a usage error argparse has already printed
        return 0 if e.code in (0, None) else 2
    try:
        if args.watch is not None and (args.action != "apply" or args.watch <= 0):
            raise NetworkConfigError("--watch goes with apply, and needs a positive number of seconds")
        settings = _settings(args)
        if settings["bridge"]:
            check_bridge_name(settings["bridge"], "--bridge")
        return ACTIONS[args.action](args, settings, out)
    except (NetworkConfigError, FirewallError) as e:
        print(f"hardened-spawner firewall: {e}", file=sys.stderr)
        return 2
    except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
        print(f"hardened-spawner firewall: the Docker engine refused or did not answer: {e}",
              file=sys.stderr)
        return 2
