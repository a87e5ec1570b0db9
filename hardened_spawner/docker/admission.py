"""Admitting an image before a server is created from it (the engine's side).

`admit` gathers what the rules (`admission.rules`) judge: the image's facts (read once per
image ID and kept by the engine, `image_records`), the approval of its name (a name seen
for the first time is approved for the ID it points at then), and the scanner's report.
The hub keeps all three in memory (`ImageCache`, in the hub's `HubContext`), so a spawn of
an image already judged costs the ``inspect`` the spawner makes anyway and nothing more;
only an ID that differs from the approved one sends the hub back to the engine, where an
admin's approval may have arrived.

The first admission of a large image reads its whole export (seconds): the hub does it
at its start for every allowed image (`hub_start`), and the admin command when it
approves, so a user's first spawn finds it done.
"""

from __future__ import annotations

import asyncio
import shlex
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone

from ..admission.facts import ImageFacts, commands_to_find
from ..admission.reports import ReportError, parse_report
from ..admission.rules import AdmissionRules, Approval, Case, ScanRecord, describe_refusal, judge, summary
from ..core.violations import Violation
from ..errors import SpawnRefused
from . import image_records

#: who approves a name the hub sees for the first time
FIRST_SIGHT = "the hub, on first sight"
#: seconds a failed scan stands before the next spawn tries again (a burst of spawns must not
#: each wait for a scanner that fails)
RETRY_FAILED_SCAN = 60


@dataclass(frozen=True)
class AdmissionSettings:
    """What `admit` needs of the spawner's settings (`docker.image_settings`)."""

    rules: AdmissionRules
    scanner: tuple[str, ...] = ()  # the command, with {image} and {image_id}
    scan_timeout: float = 600
    scan_max_age: float = 86400


@dataclass(frozen=True)
class Verdict:
    case: Case
    violations: list[Violation]
    first_approval: Approval | None = None  # made by this admission (first sight)

    @property
    def admitted(self) -> bool:
        return not self.violations


@dataclass
class ImageCache:
    """What the hub knows of images, by image ID (facts, scans) and by name (approvals)."""

    facts: dict[str, ImageFacts] = field(default_factory=dict)
    scans: dict[str, ScanRecord] = field(default_factory=dict)
    approvals: dict[str, Approval] = field(default_factory=dict)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    def lock(self, key: str) -> asyncio.Lock:
        """One lock per image ID: a burst of spawns reads a new image once, not once each
        (asyncio: only the hub's event loop calls this)."""
        return self._locks.setdefault(key, asyncio.Lock())


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def scanner_command(template: tuple[str, ...], name: str, image_id: str) -> list[str]:
    return [part.replace("{image_id}", image_id).replace("{image}", name) for part in template]


def run_scanner(template: tuple[str, ...], name: str, image_id: str, timeout: float) -> ScanRecord:
    """Run the admin's scanner on one image and read its JSON report (blocking)."""
    command = scanner_command(template, name, image_id)
    when = now_iso()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return ScanRecord(image_id, when, error=f"{shlex.join(command)} failed: {e}", scanner=template)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
        return ScanRecord(image_id, when, error=f"{shlex.join(command)} exited {done.returncode}: {tail[0][:300]}",
                          scanner=template)
    try:
        return ScanRecord(image_id, when, parse_report(done.stdout), scanner=template)
    except ReportError as e:
        return ScanRecord(image_id, when, error=f"{shlex.join(command)}: {e}", scanner=template)


def stale(record: ScanRecord | None, settings: AdmissionSettings) -> bool:
    """Whether an image must be scanned (again): no scan, another scanner's, a failed one a
    minute old (the admin may have fixed the scanner since), or a report older than allowed."""
    if record is None or record.scanner != settings.scanner:
        return True
    age = record.age_seconds(datetime.now(timezone.utc))
    return age > (settings.scan_max_age if record.report is not None else RETRY_FAILED_SCAN)


async def _facts(context, cache: ImageCache, inspect: dict, command: tuple[str, ...]) -> ImageFacts:
    image_id, names = inspect["Id"], commands_to_find(inspect, command)
    facts = cache.facts.get(image_id)
    if facts is None or not facts.covers(names):
        async with cache.lock(image_id):
            facts = cache.facts.get(image_id)
            if facts is None or not facts.covers(names):
                facts = await context.run(image_records.facts_for, context.client, inspect, command)
                cache.facts[image_id] = facts
    return facts


async def _approval(context, cache: ImageCache, name: str, image_id: str, by: str) -> tuple[Approval, bool]:
    """The approval in force for ``name``; a name never approved is approved now for the
    ID it points at (the hub's first sight). True when this call made it."""
    approval = cache.approvals.get(name)
    if approval is not None and approval.image_id == image_id:
        return approval, False
    async with cache.lock(f"name:{name}"):
        approval = await context.run(image_records.current_approval, context.client, name)
        made = approval is None
        if made:
            approval = Approval(name, image_id, "", by, now_iso())
            await context.run(image_records.record_approval, context.client, approval)
        cache.approvals[name] = approval
    return approval, made


async def _scan(context, cache: ImageCache, settings: AdmissionSettings, name: str, image_id: str) -> ScanRecord:
    """The scan in memory, else the one the engine keeps, else a new one (run once however
    many spawns ask at the same moment)."""
    record = cache.scans.get(image_id)
    if record is not None and not stale(record, settings):
        return record
    async with cache.lock(f"scan:{image_id}"):
        record = cache.scans.get(image_id)
        if stale(record, settings):
            record = await context.run(image_records.stored_scan, context.client, image_id, settings.scanner)
        if record is None or stale(record, settings):
            record = await context.run(run_scanner, settings.scanner, name, image_id, settings.scan_timeout)
            await context.run(image_records.store_scan, context.client, record)
        cache.scans[image_id] = record
    return record


async def admit(context, cache: ImageCache, settings: AdmissionSettings, name: str, inspect: dict,
                command: tuple[str, ...] = (), first_sight_by: str = FIRST_SIGHT) -> Verdict:
    """Judge the image ``name`` (whose ``inspect`` the caller has) as a server would run it."""
    facts = await _facts(context, cache, inspect, command)
    approval, made = None, False
    if settings.rules.pinning and "@sha256:" not in name:
        approval, made = await _approval(context, cache, name, facts.image_id, first_sight_by)
    scan = await _scan(context, cache, settings, name, facts.image_id) if settings.rules.scanning else None
    case = Case(name, facts, command, approval, scan, settings.rules)
    return Verdict(case, judge(case), approval if made else None)


def first_sight_fields(case: Case, approval: Approval) -> dict:
    """The audit fields of the hub's first-sight approval (`Verdict.first_approval`): the hub
    approved, not the user whose spawn made it look, so every field about a user or a server is
    empty, whoever's spawn it was (README, "Audit trail": ``user`` null)."""
    return {
        "user": None, "server_name": "", "uid": None, "gid": None, "client_ip": None,
        "image": approval.name, "image_digest": approval.image_id, "policy_fingerprint": None,
        "security": None, "devices": None, "container_id": None, "container_name": None,
        "reason": f"approved by {approval.by}", "admission": summary(case, []),
    }


def record(verdict: Verdict, emit) -> None:
    """Write a spawn's admission to the audit trail (``emit(event, **fields)``, whose fields
    override the spawn's own): a first-sight approval (the hub's, with no user), then the image
    admitted or refused, with the facts that decided."""
    case = verdict.case
    if verdict.first_approval is not None:
        emit("image-approved", **first_sight_fields(case, verdict.first_approval))
    fields = {"image_digest": case.facts.image_id, "admission": summary(case, verdict.violations)}
    if verdict.admitted:
        emit("image-admitted", **fields)
    else:
        emit("image-refused", reason=describe_refusal(case.name, case.facts.image_id, verdict.violations), **fields)


def refusal(verdict: Verdict, log_name: str) -> SpawnRefused:
    """What the spawn page says of a refused image (a 4xx: the admin's to fix, not a hub failure)."""
    case = verdict.case
    return SpawnRefused(
        describe_refusal(case.name, case.facts.image_id, verdict.violations), reason="image", status_code=403,
        log_message=f"Refused {log_name}'s image {case.name}: " + ", ".join(v.check for v in verdict.violations),
    )
