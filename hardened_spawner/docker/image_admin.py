"""The admin's side of image admission: list what each allowed image is judged on, approve a
name for the image it points at now, and find running servers whose image would no longer
be admitted, and the names they were started from whose new spawns would be refused. Plain
functions over a docker-py ``APIClient`` (the CLI's thin shell is in `cli`); the judgement is
the spawner's own (`admission.rules.judge`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone

import docker.errors

from ..admission.facts import SINGLEUSER
from ..admission.rules import Approval, Case, judge, summary
from ..core.violations import Violation
from ..errors import CannotCheck
from ..labels import MANAGED_SERVERS
from . import image_records
from .admission import AdmissionSettings, now_iso, run_scanner


@dataclass(frozen=True)
class ImageReport:
    name: str
    case: Case | None  # None when the engine has no such image
    violations: tuple[Violation, ...]
    current: bool = True  # False: a running server's image that the name no longer means
    servers: tuple[str, ...] = ()  # the running servers' containers on this image (`running_images`)


def _inspect(client, name: str) -> dict:
    try:
        return client.inspect_image(name)
    except docker.errors.ImageNotFound:
        raise CannotCheck(f"There is no image {name} on the engine.") from None


def judge_image(client, settings: AdmissionSettings, name: str, inspect: dict,
                command: tuple[str, ...] = ()) -> ImageReport:
    """The spawner's judgement of one image from the engine's records (read the layers only
    when no facts are kept); no scanner runs and nothing is approved."""
    facts = image_records.facts_for(client, inspect, command)
    approval = None
    if settings.rules.pinning and "@sha256:" not in name:
        approval = image_records.current_approval(client, name)
    scan = image_records.stored_scan(client, facts.image_id, settings.scanner) if settings.rules.scanning else None
    case = Case(name, facts, command, approval, scan, settings.rules)
    return ImageReport(name, case, tuple(judge(case)))


def list_images(client, settings: AdmissionSettings, names: list[str], command: tuple[str, ...] = ()) -> list[ImageReport]:
    reports = []
    for name in names:
        try:
            inspect = client.inspect_image(name)
        except docker.errors.ImageNotFound:
            reports.append(ImageReport(name, None, ()))
            continue
        reports.append(judge_image(client, settings, name, inspect, command))
    return reports


def approve(client, settings: AdmissionSettings, name: str, by: str, audit,
            command: tuple[str, ...] = ()) -> tuple[Approval | None, ImageReport]:
    """Approve ``name`` for the image ID it points at now, scanning it first when a scanner
    is set. Returns the new approval (None when that ID was approved already) and the
    image's judgement after it."""
    if "@sha256:" in name:
        raise CannotCheck(f"{name} names a digest: it can only ever mean one image, there is nothing to approve.")
    inspect = _inspect(client, name)
    image_id = inspect["Id"]
    image_records.facts_for(client, inspect, command)
    if settings.rules.scanning:
        image_records.store_scan(client, run_scanner(settings.scanner, name, image_id, settings.scan_timeout))
    current = image_records.current_approval(client, name)
    made = None
    if current is None or current.image_id != image_id:
        made = Approval(name, image_id, current.image_id if current else "", by, now_iso())
        image_records.record_approval(client, made)
    report = judge_image(client, settings, name, inspect, command)
    if made is not None and report.case is not None:
        audit.emit("image-approved", user=by, image=name, image_digest=image_id,
                   reason=f"approved by {by} in place of {made.previous_id or 'nothing'}",
                   admission=summary(report.case, list(report.violations)))
    return made, report


def running_images(client, settings: AdmissionSettings) -> list[ImageReport]:
    """The images of the running servers, judged as a spawn would judge them now: the ID a
    server runs, under the name it was started from (``current`` when the name still means
    that ID), with the servers on it. Then, for each name that means another image now (a tag
    rebuilt or retagged since the servers started) or none, that name as a new spawn of it
    would be judged (``current``, no servers): before an admin approves a rebuilt tag, the
    servers' own image is still admitted but every new spawn of the name is refused."""
    found: dict[tuple[str, str], list[str]] = {}
    for container in client.containers(filters=MANAGED_SERVERS):
        name = container["Image"]
        if name.startswith("sha256:"):  # the name means another image now: the list shows the ID
            name = client.inspect_container(container["Id"])["Config"]["Image"]
        server = ((container.get("Names") or [""])[0].lstrip("/")) or container["Id"][:12]
        found.setdefault((name, container["ImageID"]), []).append(server)
    reports: list[ImageReport] = []
    now: dict[str, str | None] = {}  # what each name means now: its ID, None when no image
    for name in dict.fromkeys(name for name, _ in found):
        try:
            now[name] = client.inspect_image(name)["Id"]
        except docker.errors.ImageNotFound:
            now[name] = None
    for (name, image_id), servers in found.items():
        try:
            inspect = client.inspect_image(image_id)
        except docker.errors.ImageNotFound:
            continue
        report = judge_image(client, settings, name, inspect)
        reports.append(ImageReport(report.name, report.case, report.violations, current=now[name] == image_id,
                                   servers=tuple(sorted(servers))))
    for name, meant in now.items():
        if (name, meant) in found:
            continue  # a running server's report is the name's own
        if meant is None:
            reports.append(ImageReport(name, None, (_missing(name),)))
        else:
            reports.append(judge_image(client, settings, name, client.inspect_image(meant)))
    return sorted(reports, key=lambda r: (r.name, not r.current, r.case.facts.image_id if r.case else ""))


def _missing(name: str) -> Violation:
    return Violation("image-missing", name, "the image",
                     f"there is no image {name} on the engine now, so new spawns of it are refused",
                     f"build, pull or load {name} again (or set HardenedSpawner.image / allowed_images to "
                     "one the engine has)")


# --- rendering -------------------------------------------------------------------


def _age(iso: str) -> str:
    seconds = (datetime.now(timezone.utc) - datetime.fromisoformat(iso)).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _pin_state(case: Case) -> str:
    if case.by_digest:
        return "digest"
    if not case.rules.pinning:
        return "off"
    if case.approval is None:
        return "not yet (pinned at hub start)"
    if case.approval.image_id != case.facts.image_id:
        return f"CHANGED (approved {case.approval.image_id[7:19]})"
    return f"approved by {case.approval.by}, {case.approval.at}"


def _scan_state(case: Case) -> str:
    if not case.rules.scanning:
        return "no scanner"
    scan = case.scan
    if scan is None:
        return "not scanned"
    if scan.report is None:
        return f"failed {_age(scan.scanned_at)} ago"
    counts = ", ".join(f"{n} {s}" for s, n in scan.report.counts().items()) or "no findings"
    return f"{counts} ({_age(scan.scanned_at)} ago)"


def as_table(reports: list[ImageReport]) -> str:
    rows = [("IMAGE", "ID", "PINNED", "SPECIAL FILES", "SINGLEUSER", "SCAN", "VERDICT")]
    details = []
    for report in reports:
        case = report.case
        if case is None:
            rows.append((report.name, "-", "-", "-", "-", "-", "missing"))
            continue
        facts = case.facts
        singleuser = facts.commands.get(SINGLEUSER)
        rows.append((
            report.name, facts.image_id[7:19], _pin_state(case),
            str(facts.special_count) + (f" ({facts.special[0].path}...)" if facts.special else ""),
            singleuser.path if singleuser and singleuser.found else "missing",
            _scan_state(case), "refused" if report.violations else "admitted",
        ))
        details += [f"{report.name}: {v.problem}. Fix: {v.fix}." for v in report.violations]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines + ([""] + details if details else [])) + "\n"


def as_json(reports: list[ImageReport]) -> str:
    return json.dumps([
        {"image": r.name, "present": r.case is not None, "admitted": r.case is not None and not r.violations,
         "current": r.current, "servers": list(r.servers),
         **(summary(r.case, list(r.violations)) if r.case is not None else {}),
         "problems": [{"check": v.check, "problem": v.problem, "fix": v.fix} for v in r.violations]}
        for r in reports
    ], indent=2)


def running_as_text(reports: list[ImageReport]) -> str:
    """What `check` says of the running servers' images (`running_images`): the images they run
    that would not be admitted today, then the names they were started from whose new spawns
    would be refused, with the servers on the image the name meant before and what to do."""
    running = [r for r in reports if r.servers]
    if not reports:
        return ""
    refused = [r for r in running if r.violations]
    moved = [r for r in reports if r.current and not r.servers and r.violations]
    lines = []
    if refused:
        lines.append(f"Images of running servers that would not be admitted today: {len(refused)} of {len(running)}")
        for report in refused:
            lines.append(f"  {report.name} ({report.case.facts.image_id[:19] if report.case else '?'})")
            lines += [f"      {v.check}: {v.problem}" for v in report.violations]
            if not report.current:
                lines.append(f"      servers on it: {', '.join(report.servers)}; the name means another image "
                             "now: stop and start them from the hub to move them to it")
    elif not moved:
        lines.append(f"Images of running servers: {len(running)}, all would be admitted today.")
    if moved:
        names = {r.name for r in running}
        lines.append(f"New spawns of the images running servers were started from would be refused today: "
                     f"{len(moved)} of {len(names)}")
        for report in moved:
            before = [r for r in running if r.name == report.name]
            now = report.case.facts.image_id[:19] if report.case else "no image"
            lines.append(f"  {report.name} now means {now}, not what its running servers run")
            lines += [f"      {v.check}: {v.problem}" for v in report.violations]
            for old in before:
                state = "admitted" if not old.violations else "refused too"
                lines.append(f"      running on {old.case.facts.image_id[:19] if old.case else '?'} "
                             f"(the image {report.name} meant when they started; {state}): {', '.join(old.servers)}")
            lines += [f"      fix: {v.fix}" for v in report.violations]
    return "\n".join(lines) + "\n"
