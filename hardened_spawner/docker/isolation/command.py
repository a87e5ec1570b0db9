"""``hardened-spawner firewall apply|status|remove|network|resolvers``: one class an action.

Run as root on the Docker host. Settings come from the hub's ``jupyterhub_config.py``
(``-f``), read through the spawner itself (`hubconfig.build_spawner`, then
`policy.isolation_settings`), so the rules are made from exactly the values the hub
checks; options override them. Each action is a small traitlets `Application` whose
`run` does one thing with the modules beside this one.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import signal
import sys
import threading

import docker
import docker.errors
import requests.exceptions
from traitlets import Bool, Float, Integer, List, TraitError, Unicode, validate
from traitlets.config import Application

from ..._version import __version__
from ...core.egress import NetworkConfigError
from ...errors import CannotCheck
from ...hubconfig import build_spawner, load_hub_config
from .docker_network import (
    NetworkFacts,
    bridge_name,
    check_bridge_name,
    ensure_network,
    load_network,
    network_problems,
)
from .errors import FirewallError
from .iptables import COMMAND, apply, plans, remove, status
from .marker import delete_marker, marker_problems, read_boot_id, read_marker, write_marker
from .policy import (
    IsolationPolicy,
    IsolationSettings,
    hub_endpoint_from_config,
    isolation_settings,
    policy_from_settings,
)
from .resolv import blocked_host_resolvers, dns_note

EXIT_OK, EXIT_NOT_IN_PLACE, EXIT_USAGE = 0, 1, 2


# --- what the actions do, as plain functions over a docker-py client -------------------


def apply_and_mark(client, settings: IsolationSettings, policy: IsolationPolicy) -> tuple[NetworkFacts, list[str]]:
    """Install the rules for the users' network (made if missing) and leave the marker
    the hub's probe check reads; returns what is still wrong."""
    facts = ensure_network(client, settings.network, settings.bridge, settings.isolation)
    problems = apply(facts, policy)
    write_marker(client, facts, policy)
    return facts, problems


def current_problems(client, settings: IsolationSettings, policy: IsolationPolicy) -> tuple[NetworkFacts | None, list[str]]:
    """What `status` reports: rules, network and marker against these settings."""
    facts = load_network(client, settings.network)
    if facts is None:
        return None, [f"the users' network {settings.network} does not exist yet"]
    problems = status(facts, policy)
    problems += marker_problems(read_marker(client, facts.name), facts, policy, read_boot_id())
    return facts, problems


def keep_applied(client, settings: IsolationSettings, policy: IsolationPolicy, interval: float,
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
    note = dns_note(policy)
    if note:
        print(note, file=out)


# --- the actions ------------------------------------------------------------------------


class FirewallAction(Application):
    """What every action shares: the settings from ``-f``, each overridable by an option."""

    version = __version__

    config_file = Unicode(
        "", help="The hub's jupyterhub_config.py, to read its settings (else the spawner's defaults)."
    ).tag(config=True)
    network = Unicode(None, allow_none=True, help="The users' network (default hardened-spawner-users).").tag(config=True)
    bridge = Unicode(None, allow_none=True, help="Its bridge interface (default: read from the network).").tag(config=True)
    hub_ip = Unicode(None, allow_none=True, help="The address servers reach the hub API at.").tag(config=True)
    hub_port = Integer(None, allow_none=True, help="The hub API's port (default 8081).").tag(config=True)
    egress = Unicode(None, allow_none=True, help="internet (the default) or none.").tag(config=True)
    allow = List(Unicode(), None, allow_none=True, help="A range to open (CIDR; repeatable).").tag(config=True)
    allow_dns = List(Unicode(), None, allow_none=True,
                     help="A DNS resolver in a blocked range, opened on port 53 only (repeatable).").tag(config=True)
    trusted = List(Unicode(), None, allow_none=True,
                   help="A container on the users' network (a proxy) that may open connections to servers.").tag(config=True)
    json_output = Bool(False, help="status, network: print JSON.").tag(config=True)

    aliases = {
        "f": "FirewallAction.config_file",
        "config": "FirewallAction.config_file",
        "network": "FirewallAction.network",
        "bridge": "FirewallAction.bridge",
        "hub-ip": "FirewallAction.hub_ip",
        "hub-port": "FirewallAction.hub_port",
        "egress": "FirewallAction.egress",
        "allow": "FirewallAction.allow",
        "allow-dns": "FirewallAction.allow_dns",
        "trusted": "FirewallAction.trusted",
    }
    flags = {"json": ({"FirewallAction": {"json_output": True}}, "Print JSON.")}

    def initialize(self, argv=None):
        # traitlets only warns about an option it does not know; here one would be a
        # setting silently left out of the rules
        known = {*self.aliases, *self.flags, "h", "help", "help-all", "debug", "show-config", "version"}
        for arg in argv or []:
            name = arg.lstrip("-").split("=", 1)[0]
            if arg.startswith("-") and "." not in name and name not in known:
                raise TraitError(f"{self.name} has no option {arg.split('=', 1)[0]} (see --help)")
        self.parse_command_line(argv)

    def settings(self) -> IsolationSettings:
        """The spawner's settings (from ``-f``, else its defaults), then the options given.
        Without a config file the hub's address is unknown until --hub-ip."""
        try:
            config = load_hub_config(self.config_file)
            spawner = build_spawner(config)
        except CannotCheck as e:
            raise NetworkConfigError(str(e)) from None
        host, port = hub_endpoint_from_config(config.get("JupyterHub") or {})
        settings = isolation_settings(spawner, host if self.config_file else "", port)
        given = {key: getattr(self, key) for key in ("network", "bridge", "hub_ip", "hub_port", "egress")
                 if getattr(self, key) is not None}
        given.update({key: tuple(getattr(self, key)) for key in ("allow", "allow_dns", "trusted")
                      if getattr(self, key) is not None})
        settings = dataclasses.replace(settings, **given)
        if settings.bridge:
            check_bridge_name(settings.bridge, "--bridge")
        return settings

    summary = ""  # one line, for the list of actions

    def client(self):
        return docker.APIClient(**docker.utils.kwargs_from_env())

    def run(self, settings: IsolationSettings, out) -> int:
        raise NotImplementedError

    def start(self) -> int:  # type: ignore[override]  # main() returns it as the exit status
        try:
            if self.extra_args:
                raise NetworkConfigError(f"unexpected arguments: {' '.join(self.extra_args)}")
            return self.run(self.settings(), sys.stdout)
        except (NetworkConfigError, FirewallError) as e:
            print(f"hardened-spawner firewall: {e}", file=sys.stderr)
            return EXIT_USAGE
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            print(f"hardened-spawner firewall: the Docker engine refused or did not answer: {e}",
                  file=sys.stderr)
            return EXIT_USAGE


class ApplyAction(FirewallAction):
    name = "apply"
    summary = "Install the rules (idempotent) and leave the marker the hub checks."
    description = """Install the rules for the users' network (made if missing), idempotently,
    and leave the marker a hub in a container checks. Exit 1 when they are still not in place."""

    dry_run = Bool(False, help="Print the rules, change nothing.").tag(config=True)
    watch = Float(None, allow_none=True, help="""Keep running, and put the rules back within this many
        seconds whenever they go missing or differ (after a reboot, an engine restart, a flush).""").tag(config=True)
    status_file = Unicode("", help="With --watch: a file that exists exactly while the rules are in place.").tag(config=True)

    aliases = {**FirewallAction.aliases, "watch": "ApplyAction.watch", "status-file": "ApplyAction.status_file"}
    flags = {**FirewallAction.flags, "dry-run": ({"ApplyAction": {"dry_run": True}}, dry_run.help)}

    @validate("watch")
    def _positive_watch(self, proposal):
        if proposal.value is not None and proposal.value <= 0:
            raise TraitError("--watch needs a positive number of seconds")
        return proposal.value

    def run(self, settings: IsolationSettings, out) -> int:
        policy = policy_from_settings(settings)
        client = self.client()
        if self.dry_run:
            facts = load_network(client, settings.network) or NetworkFacts(
                settings.network, settings.bridge or bridge_name(settings.network), (), False, False)
            for plan in plans(facts, policy)[0]:
                print(f"# {COMMAND[plan.family]}", file=out)
                print("\n".join(plan.lines()), file=out)
            return EXIT_OK
        if self.watch is not None:
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            print(f"{_now()} keeping the rules for {settings.network} in place "
                  f"({policy.summary()}; checked every {self.watch:g} s)", file=out, flush=True)
            keep_applied(client, settings, policy, self.watch, out, stop, self.status_file)
            return EXIT_OK
        facts, problems = apply_and_mark(client, settings, policy)
        if problems:
            print("applied, but:\n" + "\n".join(f"- {p}" for p in problems), file=out)
            return EXIT_NOT_IN_PLACE
        print(f"applied the rules for {facts.name} (bridge {facts.bridge}; {policy.summary()})", file=out)
        _print_dns_note(policy, out)
        return EXIT_OK


class StatusAction(FirewallAction):
    name = "status"
    summary = "Are the rules in place for these settings? (exit 1 if not)"
    description = """Compare the host's rules, the network and the marker with the settings.
    Exit 1 when the rules are not in place."""

    def run(self, settings: IsolationSettings, out) -> int:
        policy = policy_from_settings(settings)
        client = self.client()
        facts, problems = current_problems(client, settings, policy)
        if self.json_output:
            print(json.dumps({"ok": not problems, "network": settings.network,
                              "bridge": facts.bridge if facts else None,
                              "policy": policy.summary(), "problems": problems,
                              "marker": read_marker(client, facts.name) if facts else None},
                             indent=2), file=out)
        elif problems or facts is None:
            print("NOT in place:\n" + "\n".join(f"- {p}" for p in problems), file=out)
        else:
            print(f"in place for {facts.name} (bridge {facts.bridge}; {policy.summary()})", file=out)
            _print_dns_note(policy, out)
        return EXIT_NOT_IN_PLACE if problems else EXIT_OK


class RemoveAction(FirewallAction):
    name = "remove"
    summary = "Remove every rule and chain of ours for the users' network."
    description = """Remove every rule and chain of ours for the users' network (or --bridge),
    and its marker."""

    def run(self, settings: IsolationSettings, out) -> int:
        if settings.bridge:
            changed = remove(settings.bridge)
            print(f"removed the rules for bridge {settings.bridge} ({changed} table(s) changed)", file=out)
            return EXIT_OK
        client = self.client()
        facts = load_network(client, settings.network)
        if facts is None:
            raise NetworkConfigError(f"no network {settings.network}; pass --bridge")
        changed = remove(facts.bridge)
        delete_marker(client, facts.name)
        print(f"removed the rules for {facts.name} (bridge {facts.bridge}; "
              f"{changed} table(s) changed) and its marker", file=out)
        return EXIT_OK


class NetworkAction(FirewallAction):
    name = "network"
    summary = "Make the users' network with an address kept for a hub in a container."
    description = """Make the users' network with an address kept for a hub in a container
    (the compose deployment), or show the one there is."""

    subnet = Unicode("", help="Its IPv4 subnet (default: a free one the engine picks).").tag(config=True)
    aliases = {**FirewallAction.aliases, "subnet": "NetworkAction.subnet"}

    def run(self, settings: IsolationSettings, out) -> int:
        facts = ensure_network(self.client(), settings.network, settings.bridge, settings.isolation,
                               self.subnet, require_hub_address=True)
        report = {"network": facts.name, "bridge": facts.bridge, "subnets": list(facts.subnets),
                  "hub_address": facts.hub_address, "isolated": not facts.icc}
        problems = network_problems(facts)
        if self.json_output:
            print(json.dumps({**report, "problems": problems}, indent=2), file=out)
        else:
            print(f"users' network {facts.name}: bridge {facts.bridge}, subnet "
                  f"{', '.join(facts.subnets)}, hub address {facts.hub_address}", file=out)
            for problem in problems:
                print(f"- {problem}", file=out)
        return EXIT_NOT_IN_PLACE if problems else EXIT_OK


class ResolversAction(FirewallAction):
    name = "resolvers"
    summary = "List the host's DNS resolvers the rules block."
    description = "List the host's DNS resolvers the rules block (for HardenedSpawner.egress_allow_dns)."

    def run(self, settings: IsolationSettings, out) -> int:
        print(",".join(blocked_host_resolvers()), file=out)
        return EXIT_OK


ACTIONS = (ApplyAction, StatusAction, RemoveAction, NetworkAction, ResolversAction)


class FirewallCommand(Application):
    name = "firewall"
    version = __version__
    description = """Install, check or remove the iptables rules that isolate users' servers
    (as root on the Docker host). Settings come from -f jupyterhub_config.py; options override them."""
    # factories, not classes: traitlets would keep a class's singleton between two main() calls
    subcommands = {
        action.name: (lambda parent, action=action: action(parent=parent), action.summary)
        for action in ACTIONS
    }

    def start(self) -> int:  # type: ignore[override]  # main() returns it as the exit status
        if self.subapp is None:
            self.print_subcommands()
            unknown = f"Unknown action {self.extra_args[0]!r}. " if self.extra_args else ""
            print(f"{unknown}Usage: hardened-spawner firewall {{{','.join(a.name for a in ACTIONS)}}} [options]",
                  file=sys.stderr)
            return EXIT_USAGE
        return self.subapp.start()
