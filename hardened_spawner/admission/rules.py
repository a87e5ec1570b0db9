"""Whether an image may start a server: one small function per rule, over plain facts.

Each rule reads the facts read from the engine (`facts.ImageFacts`), the approval of the
name (`Approval`), the scanner's report (`ScanRecord`) and the admin's settings
(`AdmissionRules`), and returns the ways the image breaks it as `Violation`s, each with
the fact that decided it and the fix. `judge` runs them all; the spawner refuses on any
violation, the admin command shows them, and the audit trail records them.

Pure: standard library only.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from ..core.violations import Violation
from .facts import SINGLEUSER, ImageFacts, Located
from .reports import ScanReport

SETTING = "HardenedSpawner"
#: entrypoints that switch to another user themselves, which needs root and capabilities
#: the server never has (it starts as the user's UID with none)
USER_SWITCHERS = frozenset({"gosu", "su-exec", "sudo", "su", "setpriv", "runuser", "chpst", "s6-setuidgid"})
#: special files named in a message; the rest are counted
SHOWN = 5


@dataclass(frozen=True)
class Approval:
    """An admin's (or the hub's first sight's) word that a name stands for an image ID."""

    name: str
    image_id: str
    previous_id: str  # the ID approved before, "" for the first
    by: str
    at: str  # ISO 8601 UTC

    def to_json(self) -> dict:
        return {"name": self.name, "image_id": self.image_id, "previous_id": self.previous_id,
                "by": self.by, "at": self.at}


@dataclass(frozen=True)
class ScanRecord:
    """The last scan of an image ID: the report, or why there is none."""

    image_id: str
    scanned_at: str  # ISO 8601 UTC
    report: ScanReport | None = None
    error: str = ""
    scanner: tuple[str, ...] = ()  # the command (as configured) that made it

    def age_seconds(self, now: datetime) -> float:
        return (now - datetime.fromisoformat(self.scanned_at)).total_seconds()

    def to_json(self) -> dict:
        return {"image_id": self.image_id, "scanned_at": self.scanned_at, "error": self.error,
                "report": self.report.to_json() if self.report else None, "scanner": list(self.scanner)}

    @classmethod
    def from_json(cls, data: dict) -> ScanRecord:
        report = data.get("report")
        return cls(data["image_id"], data["scanned_at"], ScanReport.from_json(report) if report else None,
                   data.get("error", ""), tuple(data.get("scanner", ())))


@dataclass(frozen=True)
class AdmissionRules:
    """The admin's settings the rules read (`docker.image_settings`)."""

    pinning: bool = True
    allowed_special_files: frozenset[str] = frozenset()
    scanning: bool = False  # a scanner is configured
    refuse_severity: str = "CRITICAL"
    ignored_findings: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Case:
    """One image as a spawn would run it: everything a rule may read."""

    name: str  # as configured or chosen ("repo:tag" or "repo@sha256:...")
    facts: ImageFacts
    command: tuple[str, ...]  # the command the spawner gives, () for the image's CMD
    approval: Approval | None = None
    scan: ScanRecord | None = None
    rules: AdmissionRules = field(default_factory=AdmissionRules)

    @property
    def by_digest(self) -> bool:
        """A name with a digest can only ever mean one image: the engine checks it."""
        return "@sha256:" in self.name

    @property
    def argv0(self) -> str:
        """What the kernel executes first: the entrypoint, else the command."""
        argv = self.facts.entrypoint or self.command or self.facts.cmd
        return argv[0] if argv else ""


def _violation(check: str, key: str, setting: str, problem: str, fix: str) -> Violation:
    return Violation(check, key, f"{SETTING}.{setting}" if setting else "the image", problem, fix)


def pinned(case: Case) -> list[Violation]:
    if not case.rules.pinning or case.by_digest or case.approval is None:
        return []
    approved = case.approval
    if approved.image_id == case.facts.image_id:
        return []
    return [_violation(
        "image-changed", case.name, "image_pinning",
        f"{case.name} is image {case.facts.image_id} here, not the approved "
        f"{approved.image_id} (approved by {approved.by} at {approved.at})",
        f"an admin checks the new image and approves it: hardened-spawner images approve {case.name}",
    )]


def special_files(case: Case) -> list[Violation]:
    allowed = case.rules.allowed_special_files
    found = [s for s in case.facts.special if s.path not in allowed]
    unlisted = case.facts.special_count - len(case.facts.special)  # beyond what the facts keep
    total = len(found) + unlisted
    if not total:
        return []
    shown = "; ".join(s.describe() for s in found[:SHOWN])
    more = f"; and {total - SHOWN} more" if total > SHOWN else ""
    return [_violation(
        "special-files", found[0].path if found else "/", "image_allowed_special_files",
        f"the image has {total} setuid, setgid or file-capability file(s), which hand whoever "
        f"runs them more than the user has: {shown}{more}",
        "remove them in the image (RUN find / -xdev -perm /6000 -type f -exec chmod a-s {} +; "
        "setcap -r FILE), or list the paths an admin accepts in "
        f"{SETTING}.image_allowed_special_files",
    )]


def _cannot_run(located: Located | None, what: str) -> str:
    if located is None or not located.found:
        return f"{what} is not in the image"
    if not located.closed:
        return (f"{what} ({located.path}, mode {located.mode:04o}) may not be run by others, and the "
                "server's UID owns none of the image's files")
    closed = ", ".join(f"{d} (mode {m:04o})" for d, m in located.closed)
    which = "a directory" if len(located.closed) == 1 else "directories"
    itself = "" if located.mode & 0o001 else f"; the file itself (mode {located.mode:04o}) may not be run by others either"
    return (f"{what} ({located.path}) lies behind {closed}, {which} others may not search, so the "
            f"server's UID, which owns none of the image's files, cannot reach it{itself}")


def _open_directories(located: Located | None) -> str:
    """The fix for directories in the way, as the Dockerfile line that makes it."""
    if located is None or not located.closed:
        return ""
    itself = "" if located.mode & 0o001 else f" && chmod o+rx {located.path}"
    return (f"RUN chmod o+x {' '.join(d for d, _ in located.closed)}{itself} in the image (as root), "
            f"so that every UID may reach {located.path}")


def runs_as_anyone(case: Case) -> list[Violation]:
    facts, found = case.facts, []
    singleuser = facts.commands.get(SINGLEUSER)
    if singleuser is None or not singleuser.runs_as_anyone:
        found.append(_violation(
            "singleuser", SINGLEUSER, "",
            _cannot_run(singleuser, f"{SINGLEUSER} (on the image's PATH {facts.path})"),
            _open_directories(singleuser) or
            "install jupyterhub (the hub's version) in the image so that jupyterhub-singleuser is "
            "on its PATH, readable and executable by every UID (chmod -R o+rX the environment)",
        ))
    argv0 = case.argv0
    first = facts.commands.get(argv0) if argv0 else None
    if argv0 and argv0 != SINGLEUSER and (first is None or not first.runs_as_anyone):
        source = "ENTRYPOINT" if facts.entrypoint else "command"
        found.append(_violation(
            "command", argv0, "cmd" if not facts.entrypoint else "",
            _cannot_run(first, f"the image's {source} {argv0}"),
            _open_directories(first) or
            "make it executable by every UID in the image, or set HardenedSpawner.cmd to a command "
            "the image has",
        ))
    if posixpath.basename(argv0) in USER_SWITCHERS:
        found.append(_violation(
            "switches-user", argv0, "",
            f"the image starts with {argv0}, which switches to another user and needs root; the "
            "server starts as the user's own UID with no capabilities",
            "give the image an entrypoint that runs as any user (or none), with USER set to a "
            "non-root user",
        ))
    for volume in facts.volumes:
        found.append(_violation(
            "image-volume", volume, "",
            f"the image declares VOLUME {volume}: the engine would give each server an unmanaged "
            "volume there, outside the workspace, the size limits and the read-only root",
            "remove the VOLUME line from the image; use HardenedSpawner.extra_tmpfs for scratch space",
        ))
    return found


def scanned(case: Case) -> list[Violation]:
    rules, record = case.rules, case.scan
    if not rules.scanning:
        return []
    if record is None or record.report is None:
        why = record.error if record is not None else "it has not been scanned"
        return [_violation(
            "scan-missing", case.facts.image_id, "image_scanner",
            f"the vulnerability scanner has no report for this image: {why}",
            "fix the scanner command (HardenedSpawner.image_scanner) and run "
            f"hardened-spawner images approve {case.name}",
        )]
    report = record.report
    if report.image_id and report.image_id != case.facts.image_id:
        return [_violation(
            "scan-other-image", case.facts.image_id, "image_scanner",
            f"the scanner's report is about image {report.image_id}, not {case.facts.image_id}",
            "make the scanner command scan {image_id} (HardenedSpawner.image_scanner)",
        )]
    refusing = report.at_or_above(rules.refuse_severity, rules.ignored_findings)
    if not refusing:
        return []
    shown = ", ".join(f.describe() for f in refusing[:10])
    more = f" and {len(refusing) - 10} more" if len(refusing) > 10 else ""
    return [_violation(
        "vulnerabilities", refusing[0].id, "image_scan_severity",
        f"{report.scanner} found {len(refusing)} vulnerabilit{'y' if len(refusing) == 1 else 'ies'} at "
        f"{rules.refuse_severity} or above (scanned {record.scanned_at}): {shown}{more}",
        "rebuild the image with the fixed packages; or, after weighing each one, list its ID in "
        f"{SETTING}.image_scan_ignore",
    )]


#: every rule, in the order a message lists what it finds
RULES: tuple[Callable[[Case], list[Violation]], ...] = (pinned, special_files, runs_as_anyone, scanned)


def judge(case: Case) -> list[Violation]:
    return [violation for rule in RULES for violation in rule(case)]


def describe_refusal(name: str, image_id: str, violations: list[Violation]) -> str:
    """The message on the spawn page: which image, which facts, how to fix each."""
    lines = [f"- {v.problem}. Fix: {v.fix}." for v in violations]
    return (f"The image {name} ({image_id[:19]}) was not admitted, so your server was not started. "
            "Your hub admin needs to fix the image:\n" + "\n".join(lines))


def summary(case: Case, violations: list[Violation]) -> dict:
    """The facts that decided, for the audit trail and --json."""
    facts, scan = case.facts, case.scan
    return {
        "image_id": facts.image_id,
        "approved_id": case.approval.image_id if case.approval else None,
        "by_digest": case.by_digest,
        "special_files": facts.special_count,
        "special_paths": [s.path for s in facts.special[:SHOWN]],
        "singleuser": (facts.commands.get(SINGLEUSER) or Located(SINGLEUSER)).path or None,
        "scan": None if scan is None or not case.rules.scanning else {
            "scanned_at": scan.scanned_at,
            "scanner": scan.report.scanner if scan.report else None,
            "counts": scan.report.counts() if scan.report else {},
            "error": scan.error or None,
        },
        "violations": [v.check for v in violations],
    }
