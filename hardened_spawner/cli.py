"""``hardened-spawner``: admin commands over the engine the hub's servers run on.

- ``hardened-spawner check [--json] [--all] [CONTAINER ...]``: audit the
  managed server containers (or every container, or the named ones) with the
  spawner's own guard. Exit status 0: no violations; 1: violations; 2: the
  check could not run (engine unreachable, configuration unreadable).
- ``hardened-spawner gpus [--json]``: each GPU of the configured inventory,
  who holds it and since when, and the pool's totals.
- ``hardened-spawner images [--json]`` and ``images approve NAME [--by WHO]``: what
  admission judges each allowed image on, and approving a name for the image it means now.
- ``hardened-spawner usage [--since T] [--until T] [--by user|group|device] [--json|--csv]``:
  GPU-hours held and server-hours from the audit trail (`usage`), reconciled with the
  servers that run now.

The Application classes only turn options into arguments; the work is in
plain functions (`audit_containers`, `run_check`, `run_gpus`, ...) that take a
docker-py ``APIClient`` (or anything with its methods), so tests call them
with literal dicts and no engine. The decisions and renderings are pure, in
`inspection`.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import TextIO

from traitlets import Bool, Enum, Unicode
from traitlets.config import Application, Config
from traitlets.config.loader import (
    ArgumentError,
)

from ._version import __version__
from .core.gpus import GpuAllocator, GpuConfigError
from .docker import image_admin
from .docker.checks import (
    _ENGINE_ERRORS,
    WorkspaceQuotaReport,
    audit_containers,
    cannot_reach_message,
    engine_client,
    network_report,
    workspace_quota_as_json,
    workspace_quota_as_text,
    workspace_quota_exit_status,
    workspace_quota_report,
)
from .docker.image_admin import ImageReport
from .docker.inspection import (
    NetworkReport,
    check_as_json,
    check_as_table,
    check_exit_status,
    gpu_report,
    gpus_as_json,
    gpus_as_table,
    network_as_text,
)
from .docker.isolation.command import FirewallCommand
from .errors import CannotCheck
from .hubconfig import DEFAULT_CONFIG_FILE, build_spawner, default_config_file, load_hub_config
from .labels import MANAGED_SERVERS
from .usage import BY, TrailError, month_start, parse_time

EXIT_OK = 0
EXIT_CANNOT_CHECK = 2


# --- plain functions: check ------------------------------------------------


def run_check(
    client,
    allowed_cap_add: frozenset[str],
    *,
    as_json: bool = False,
    everything: bool = False,
    names: tuple[str, ...] = (),
    network: NetworkReport | None = None,
    images: list[ImageReport] | None = None,
    workspaces: WorkspaceQuotaReport | None = None,
    out: TextIO | None = None,
) -> int:
    """Audit, print the table or JSON (to ``out``, default stdout), return the exit status.
    ``images``: the running servers' images as admission judges them today; ``workspaces``:
    the workspaces and their quotas, when quotas are asked for."""
    out = out or sys.stdout
    reports = audit_containers(client, allowed_cap_add, everything=everything, names=names)
    if as_json:
        data = json.loads(check_as_json(reports, network))
        data["images"] = None if images is None else json.loads(image_admin.as_json(images))
        data["workspaces"] = workspace_quota_as_json(workspaces)
        out.write(json.dumps(data, indent=2) + "\n")
    else:
        out.write(check_as_table(reports, everything=everything))
        if network is not None:
            out.write(network_as_text(network))
        if images is not None:
            out.write(image_admin.running_as_text(images))
        out.write(workspace_quota_as_text(workspaces))
    refused = any(report.violations for report in images or ())
    return max(check_exit_status(reports, network), int(refused), workspace_quota_exit_status(workspaces))


# --- plain functions: gpus -------------------------------------------------


def running_servers(client) -> list[dict]:
    """Running managed server containers, in ``docker ps`` shape (their labels)."""
    return client.containers(filters=MANAGED_SERVERS)


def run_gpus(
    client, allocator: GpuAllocator, *, as_json: bool = False, out: TextIO | None = None
) -> int:
    out = out or sys.stdout
    report = gpu_report(allocator, running_servers(client))
    out.write(gpus_as_json(report) + "\n" if as_json else gpus_as_table(report))
    return EXIT_OK


# --- plain functions: usage -----------------------------------------------


def run_usage(
    client,
    trail: str,
    *,
    since: float,
    until: float | None = None,
    by: str = "user",
    output: str = "table",
    groups: Mapping[str, Sequence[str]] | None = None,
    hub_id: str = "",
    exclusive: bool = True,
    out: TextIO | None = None,
) -> int:
    """The usage report (`usage`): the engine's running servers first, then the trail, so a
    server that stops in between has its stop in the trail, and one that starts in between
    counts as running. ``until`` None: now; ``client`` None: the engine is not asked (nothing
    counts as running)."""
    from . import usage, usage_sources

    out = out or sys.stdout
    looked = time.time()
    running = usage_sources.running_from_containers(running_servers(client), hub_id) if client is not None else []
    problems: list[str] = []
    book = usage_sources.read_ledger(trail, exclusive=exclusive, keep_from=since, problems=problems)
    now = time.time()
    end = now if until is None else min(until, now)
    intervals = book.intervals(running, now, running_at=looked)
    rows = usage.totals(intervals, since=since, until=end, by=by, groups=groups, used=book.used)
    notes = []
    if problems:
        notes.append(f"{len(problems)} line(s) of {trail} are not audit records and were skipped; "
                     f"the first: {problems[0]}")
    if output == "json":
        out.write(usage.as_json(rows, by=by, since=since, until=end, notes=notes) + "\n")
    elif output == "csv":
        out.write(usage.as_csv(rows, by=by))
        for note in notes:
            print(f"hardened-spawner usage: {note}", file=sys.stderr)
    else:
        out.write(usage.as_table(rows, by=by, since=since, until=end, notes=notes))
    return EXIT_OK


def period_bound(text: str, option: str) -> float:
    try:
        return parse_time(text)
    except (ValueError, TrailError):
        raise CannotCheck(f"{option}={text!r} is not a date or time: write it as ISO 8601, "
                          "e.g. 2026-11-01 or 2026-11-01T08:00:00+01:00 (UTC unless it says)") from None


# --- the thin Application shell ---------------------------------------------


class AdminCommand(Application):
    """What every subcommand shares: the hub's config file and --json."""

    version = __version__

    config_file = Unicode(
        help=f"""The hub's config file, for the HardenedSpawner settings (cap_add allowlist,
        gpu_* settings, DockerSpawner.client_kwargs). Default: {DEFAULT_CONFIG_FILE} in the
        current directory if there is one, else the spawner's defaults.""",
    ).tag(config=True)

    json_output = Bool(False, help="Print JSON for machines instead of a table.").tag(config=True)

    aliases = {
        "config": "AdminCommand.config_file",
        "log-level": "Application.log_level",
    }
    flags = {
        "json": ({"AdminCommand": {"json_output": True}}, json_output.help),
        "debug": ({"Application": {"log_level": logging.DEBUG}}, "Log debug messages."),
    }

    def initialize(self, argv=None):
        # no @catch_config_error: a usage error must exit 2, not 1 (1 means violations)
        self.parse_command_line(argv)

    def hub_config(self) -> Config:
        path = self.config_file or default_config_file()
        if not path:
            self.log.warning(
                "No %s here and no --config: using HardenedSpawner's defaults.",
                DEFAULT_CONFIG_FILE,
            )
        return load_hub_config(path)

    def spawner(self, config: Config | None = None):
        return build_spawner(self.hub_config() if config is None else config, self.log)

    def run(self) -> int:
        raise NotImplementedError

    def start(self) -> int:  # type: ignore[override]  # main() returns it as the exit status
        try:
            return self.run()
        except CannotCheck as e:
            print(f"hardened-spawner {self.name}: {e}", file=sys.stderr)
            return EXIT_CANNOT_CHECK


class CheckCommand(AdminCommand):
    name = "check"
    description = """Audit the containers this spawner manages against the security policy,
    with the same guard the spawner runs before it creates one, and check that the users'
    network isolation is in place, as the hub checks it. Name containers to check only those
    (and not the network). Exit status: 0 no violations, 1 violations, 2 the check could not
    run."""

    everything = Bool(
        False, help="Check every container on the engine, also ones started by hand."
    ).tag(config=True)

    kubernetes = Bool(
        False, help="Check the user pods of a Kubernetes namespace through the API instead (HardenedKubeSpawner)."
    ).tag(config=True)

    namespace = Unicode(
        "", help="With --kubernetes: the namespace. Default: HardenedKubeSpawner.namespace of the config, "
                 "else the service account's, else 'default'.",
    ).tag(config=True)

    aliases = {**AdminCommand.aliases, "namespace": "CheckCommand.namespace"}
    flags = {
        **AdminCommand.flags,
        "all": ({"CheckCommand": {"everything": True}}, everything.help),
        "kubernetes": ({"CheckCommand": {"kubernetes": True}}, kubernetes.help),
    }

    def run(self) -> int:
        if self.kubernetes:
            return self._run_kubernetes()
        config = self.hub_config()
        spawner = self.spawner(config)
        client = engine_client(spawner)
        names = tuple(self.extra_args)
        try:
            return run_check(
                client,
                frozenset(spawner.cap_add),
                as_json=self.json_output,
                everything=self.everything,
                names=names,
                network=None if names else network_report(client, spawner, config),
                images=image_admin.running_images(client, spawner.admission_settings())
                if spawner.image_admission and not names else None,
                workspaces=None if names else workspace_quota_report(client, spawner),
            )
        except _ENGINE_ERRORS as e:
            raise CannotCheck(cannot_reach_message(spawner, e)) from None


    def _run_kubernetes(self) -> int:
        from .kubernetes.command import check, default_namespace

        namespace = self.namespace or default_namespace(self.hub_config())
        text, status = check(namespace, as_json=self.json_output)
        sys.stdout.write(text)
        return status


class GpusCommand(AdminCommand):
    name = "gpus"
    description = """Each GPU of the configured inventory, who holds it (owner and server)
    and since when, read from the running servers' labels; then the pool's totals."""

    def run(self) -> int:
        if self.extra_args:
            raise CannotCheck(f"unexpected arguments: {' '.join(self.extra_args)}")
        spawner = self.spawner()
        try:
            allocator = spawner.gpu_allocator()
        except GpuConfigError as e:
            raise CannotCheck(e.naming(type(spawner).__name__)) from None
        except ValueError as e:
            raise CannotCheck(str(e)) from None
        client = engine_client(spawner)
        try:
            return run_gpus(client, allocator, as_json=self.json_output)
        except _ENGINE_ERRORS as e:
            raise CannotCheck(cannot_reach_message(spawner, e)) from None


class ImagesCommand(AdminCommand):
    name = "images"
    description = """Every image users may start (HardenedSpawner.image and allowed_images) as
    admission judges it: its ID, whether its name is pinned and to what, its setuid, setgid and
    file-capability files, where jupyterhub-singleuser is, the scanner's summary and its age,
    and the verdict. An image whose facts the engine does not keep yet has its layers read
    (seconds for a large image). Exit status: 0 all admitted, 1 some refused or missing."""

    subcommands = {
        "approve": (
            lambda parent: ApproveCommand(parent=parent),
            "Approve NAME for the image ID it points at now (with pinning, a tag that moved is "
            "refused until then).",
        ),
    }

    def run(self) -> int:
        if self.subapp is not None:
            return self.subapp.start()
        if self.extra_args:
            raise CannotCheck(f"unexpected arguments: {' '.join(self.extra_args)} (to approve: images approve NAME)")
        spawner = self.spawner()
        client = engine_client(spawner)
        try:
            reports = image_admin.list_images(client, spawner.admission_settings(), spawner.admitted_images(),
                                  tuple(spawner.cmd or ()))
        except _ENGINE_ERRORS as e:
            raise CannotCheck(cannot_reach_message(spawner, e)) from None
        sys.stdout.write(image_admin.as_json(reports) + "\n" if self.json_output else image_admin.as_table(reports))
        return 0 if all(r.case is not None and not r.violations for r in reports) else 1


class ApproveCommand(AdminCommand):
    name = "approve"
    description = """Approve each NAME for the image ID it points at now: its layers are read
    and the scanner runs (when one is set), the approval is recorded on the engine with who,
    when and the ID it replaces, and written to the audit trail. The image's verdict after the
    approval is printed: approval settles the pin, not the other facts. Exit status: 0 the
    images are admitted now, 1 something else still refuses one."""

    by = Unicode(help="Who approves, for the record (default: the account running the command).").tag(config=True)
    aliases = {**AdminCommand.aliases, "by": "ApproveCommand.by"}

    def run(self) -> int:
        if not self.extra_args:
            raise CannotCheck("name the image to approve: hardened-spawner images approve NAME")
        spawner = self.spawner()
        client = engine_client(spawner)
        by = self.by or getpass.getuser()
        status = 0
        for name in self.extra_args:
            try:
                made, report = image_admin.approve(client, spawner.admission_settings(), name, by, spawner.audit,
                                       tuple(spawner.cmd or ()))
            except _ENGINE_ERRORS as e:
                raise CannotCheck(cannot_reach_message(spawner, e)) from None
            image_id = report.case.facts.image_id if report.case else "?"
            if made is None:
                print(f"{name} already means the approved image {image_id}.")
            else:
                was = f" in place of {made.previous_id}" if made.previous_id else ""
                print(f"Approved {name} = {image_id}{was}, by {by}.")
            if report.violations:
                status = 1
                print(f"{name} is still refused:")
                print("\n".join(f"- {v.problem}. Fix: {v.fix}." for v in report.violations))
        return status


class UsageCommand(AdminCommand):
    name = "usage"
    description = """GPU-hours held and server-hours per user, group or device over a period,
    from the audit trail (HardenedSpawner.audit_log), with the servers that run now counted to
    now. Groups are the hub database's groups today."""

    since = Unicode("", help="Start of the period, ISO 8601 (UTC unless it says). Default: the "
                             "start of this month, UTC.").tag(config=True)
    until = Unicode("", help="End of the period (not included). Default: now.").tag(config=True)
    by = Enum(BY, default_value="user", help="One row per user, group or device.").tag(config=True)
    csv_output = Bool(False, help="Print CSV instead of a table.").tag(config=True)
    ask_engine = Bool(True, help="Ask the engine which servers run now (else an interval still open "
                                 "at the trail's end counts to the trail's last record).").tag(config=True)
    audit = Unicode("", help="The audit trail file. Default: HardenedSpawner.audit_log of the config.").tag(
        config=True)
    db_url = Unicode("", help="The hub's database (for --by group, and to tell this hub's servers from another "
                              "hub's on the engine). Default: JupyterHub.db_url of the config.").tag(config=True)

    aliases = {
        **AdminCommand.aliases,
        "f": "AdminCommand.config_file",
        "since": "UsageCommand.since",
        "until": "UsageCommand.until",
        "by": "UsageCommand.by",
        "audit": "UsageCommand.audit",
        "db-url": "UsageCommand.db_url",
    }
    flags = {
        **AdminCommand.flags,
        "csv": ({"UsageCommand": {"csv_output": True}}, csv_output.help),
        "no-engine": ({"UsageCommand": {"ask_engine": False}},
                      "Do not ask the engine (on Kubernetes, or without the engine at hand)."),
    }

    def run(self) -> int:
        from . import usage_sources

        if self.extra_args:
            raise CannotCheck(f"unexpected arguments: {' '.join(self.extra_args)}")
        if self.csv_output and self.json_output:
            raise CannotCheck("--json and --csv: choose one")
        config = self.hub_config()
        spawner = self.spawner(config)
        # relative paths of the config are relative to where the hub runs: taken as its folder
        config_dir = os.path.dirname(os.path.abspath(self.config_file or default_config_file() or "."))
        trail = self.audit or os.path.join(config_dir, usage_sources.trail_file(spawner.audit_log))
        since = period_bound(self.since, "--since") if self.since else \
            month_start(datetime.now(timezone.utc)).timestamp()
        until = period_bound(self.until, "--until") if self.until else None
        if until is not None and until <= since:
            raise CannotCheck(f"--until={self.until} is not after the start of the period")
        configured = self.db_url or config.JupyterHub.get("db_url", usage_sources.DEFAULT_DB_URL)
        groups = usage_sources.groups_from_database(usage_sources.resolve_db_url(configured, config_dir)) \
            if self.by == "group" else None
        client = engine_client(spawner) if self.ask_engine else None
        try:
            return run_usage(
                client, trail, since=since, until=until, by=self.by,
                output="json" if self.json_output else "csv" if self.csv_output else "table",
                groups=groups, hub_id=usage_sources.hub_id_for_url(configured),
                exclusive=spawner.gpu_max_users_per_gpu == 1,
            )
        except _ENGINE_ERRORS as e:
            raise CannotCheck(cannot_reach_message(spawner, e)) from None


class HardenedSpawnerApp(Application):
    name = "hardened-spawner"
    version = __version__
    description = "Admin commands for JupyterHub's HardenedSpawner."
    examples = """
    hardened-spawner check                      # audit the managed servers
    hardened-spawner check --all --json         # every container, as JSON
    hardened-spawner gpus --config /etc/jupyterhub/jupyterhub_config.py
    hardened-spawner images approve hardened-spawner-singleuser:latest
    hardened-spawner usage --since 2026-11-01 --until 2026-12-01 --by group
    """
    # factories, not classes: traitlets would keep a class's singleton instance
    # between two calls of main() in one process
    subcommands = {
        "check": (
            lambda parent: CheckCommand(parent=parent),
            "Audit the server containers against the security policy (exit 1 on violations).",
        ),
        "gpus": (
            lambda parent: GpusCommand(parent=parent),
            "Show each GPU, who holds it and since when, and the pool's totals.",
        ),
        "images": (
            lambda parent: ImagesCommand(parent=parent),
            "List the images users may start as admission judges them; 'images approve NAME' pins a tag.",
        ),
        "firewall": (
            lambda parent: FirewallCommand(parent=parent),
            "apply|status|remove the iptables rules isolating users' servers (root, on the Docker host).",
        ),
        "usage": (
            lambda parent: UsageCommand(parent=parent),
            "GPU-hours and server-hours per user, group or device over a period, from the audit trail.",
        ),
    }

    def initialize(self, argv=None):
        self.parse_command_line(argv)

    def start(self) -> int:  # type: ignore[override]  # main() returns it as the exit status
        if self.subapp is None:
            self.print_subcommands()
            unknown = f"Unknown command {self.extra_args[0]!r}. " if self.extra_args else ""
            print(f"{unknown}Usage: hardened-spawner {{{','.join(self.subcommands)}}} [options]", file=sys.stderr)
            return EXIT_CANNOT_CHECK
        return self.subapp.start()


def main(argv: list[str] | None = None) -> int:
    """The ``hardened-spawner`` entry point; returns the exit status."""
    from traitlets import TraitError

    app = HardenedSpawnerApp()
    try:
        try:
            app.initialize(argv)
        except SystemExit as e:  # --help (0), or bad options traitlets has already reported
            return EXIT_OK if e.code in (0, None) else EXIT_CANNOT_CHECK
        return app.start()
    except (ArgumentError, TraitError) as e:
        print(f"hardened-spawner: {e}", file=sys.stderr)
        return EXIT_CANNOT_CHECK
    finally:
        HardenedSpawnerApp.clear_instance()
