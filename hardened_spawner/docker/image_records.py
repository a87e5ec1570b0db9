"""What the engine remembers about images for admission: facts, scans and approvals.

The engine, not the hub, keeps them, as labels on empty volumes (as it keeps UID claims):
the hub, a restarted hub, a second hub and the admin's ``hardened-spawner images`` all read
the same records, and nothing depends on where a process runs or what its working
directory is.

- ``hardened-spawner-image-facts-<ID>``: the facts read from an image ID's layers
  (`admission.facts.ImageFacts`), which never change for that ID.
- ``hardened-spawner-image-scan-<ID>-<command digest>``: a scanner's last report on that
  ID, with its date; made again at each scan.
- ``hardened-spawner-image-approval-<name digest>-<ID>``: a name approved to mean that ID,
  by whom, when, and which ID it meant before. Every approval is kept: the newest is in
  force, the rest are the history.

Plain functions over a docker-py ``APIClient``, called from the hub's Docker threads (and
by the admin command). Reading an image's layers streams its export through
`admission.layers.scan_image`: nothing of the image runs.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Iterable, Iterator

import docker.errors

from .. import labels
from ..admission.facts import ImageFacts, commands_to_find, image_facts
from ..admission.layers import scan_image
from ..admission.rules import Approval, ScanRecord

ROLE_FACTS, ROLE_SCAN, ROLE_APPROVAL = "image-facts", "image-scan", "image-approval"
IMAGE_ID = f"{labels.PREFIX}.image-id"
IMAGE_NAME = f"{labels.PREFIX}.image-name"
RECORD = f"{labels.PREFIX}.record"  # the record itself, as JSON
APPROVED_AT = f"{labels.PREFIX}.approved-at"


def _short(image_id: str) -> str:
    return image_id.removeprefix("sha256:")[:24]


def facts_volume(image_id: str) -> str:
    return f"hardened-spawner-image-facts-{_short(image_id)}"


def scan_volume(image_id: str, scanner: tuple[str, ...]) -> str:
    """One record per image and scanner command: hubs with other scanners keep their own."""
    command = hashlib.sha256(json.dumps(list(scanner)).encode()).hexdigest()[:8]
    return f"hardened-spawner-image-scan-{_short(image_id)}-{command}"


def approval_volume(name: str, image_id: str) -> str:
    return f"hardened-spawner-image-approval-{hashlib.sha256(name.encode()).hexdigest()[:16]}-{_short(image_id)[:16]}"


def _read_record(client, volume: str, image_id: str) -> dict | None:
    try:
        found = client.inspect_volume(volume).get("Labels") or {}
    except docker.errors.NotFound:
        return None
    if found.get(IMAGE_ID) != image_id:  # a 24-hex-digit prefix shared by another ID
        return None
    return json.loads(found[RECORD])


def _write_record(client, volume: str, record_labels: dict[str, str]) -> None:
    """Make the record anew: an existing volume of the name keeps its old labels."""
    try:
        client.remove_volume(volume)
    except docker.errors.NotFound:
        pass
    client.create_volume(name=volume, labels={labels.ROLE: record_labels.pop("role"), **record_labels})


# --- facts ---------------------------------------------------------------------


class _Chunks(io.RawIOBase):
    """The export's chunks as a file object."""

    def __init__(self, chunks: Iterable[bytes]):
        self._chunks: Iterator[bytes] = iter(chunks)
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._buffer:
            try:
                self._buffer = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(buffer), len(self._buffer))
        buffer[:n], self._buffer = self._buffer[:n], self._buffer[n:]
        return n


def read_facts(client, inspect: dict, command: tuple[str, ...] = ()) -> ImageFacts:
    """Read the image's layers (seconds for a large image) and keep the facts on the engine."""
    names = commands_to_find(inspect, command)
    started = time.monotonic()
    export = client.get_image(inspect["Id"], chunk_size=1 << 20)
    scan = scan_image(io.BufferedReader(_Chunks(export), 1 << 20), names)
    facts = image_facts(inspect, scan, names, time.monotonic() - started)
    _write_record(client, facts_volume(facts.image_id), {
        "role": ROLE_FACTS, IMAGE_ID: facts.image_id, RECORD: json.dumps(facts.to_json(), separators=(",", ":")),
    })
    return facts


def stored_facts(client, image_id: str) -> ImageFacts | None:
    record = _read_record(client, facts_volume(image_id), image_id)
    return ImageFacts.from_json(record) if record else None


def facts_for(client, inspect: dict, command: tuple[str, ...] = ()) -> ImageFacts:
    """The stored facts when this version read them and they cover ``command``, else read anew."""
    facts = stored_facts(client, inspect["Id"])
    if facts is not None and facts.covers(commands_to_find(inspect, command)):
        return facts
    return read_facts(client, inspect, command)


# --- scans ---------------------------------------------------------------------


def stored_scan(client, image_id: str, scanner: tuple[str, ...]) -> ScanRecord | None:
    record = _read_record(client, scan_volume(image_id, scanner), image_id)
    return ScanRecord.from_json(record) if record else None


def store_scan(client, record: ScanRecord) -> None:
    _write_record(client, scan_volume(record.image_id, record.scanner), {
        "role": ROLE_SCAN, IMAGE_ID: record.image_id,
        RECORD: json.dumps(record.to_json(), separators=(",", ":")),
    })


# --- approvals -----------------------------------------------------------------


def approvals(client, name: str) -> list[Approval]:
    """Every approval of ``name``, the newest (the one in force) first."""
    filters = {"label": [f"{labels.ROLE}={ROLE_APPROVAL}", f"{IMAGE_NAME}={name}"]}
    found = []
    for volume in client.volumes(filters=filters).get("Volumes") or []:
        volume_labels = volume.get("Labels") or {}
        if volume_labels.get(IMAGE_NAME) == name and RECORD in volume_labels:
            found.append(Approval(**json.loads(volume_labels[RECORD])))
    return sorted(found, key=lambda a: a.at, reverse=True)


def current_approval(client, name: str) -> Approval | None:
    found = approvals(client, name)
    return found[0] if found else None


def record_approval(client, approval: Approval) -> None:
    _write_record(client, approval_volume(approval.name, approval.image_id), {
        "role": ROLE_APPROVAL, IMAGE_NAME: approval.name, IMAGE_ID: approval.image_id,
        APPROVED_AT: approval.at, RECORD: json.dumps(approval.to_json(), separators=(",", ":")),
    })


def prune(client) -> list[str]:
    """Remove the facts and scans of image IDs the engine no longer has (a rebuilt image's
    old ID): they can never be read again. Approvals stay, as the history of each name."""
    removed = []
    for role in (ROLE_FACTS, ROLE_SCAN):
        for volume in client.volumes(filters={"label": [f"{labels.ROLE}={role}"]}).get("Volumes") or []:
            image_id = (volume.get("Labels") or {}).get(IMAGE_ID, "")
            try:
                client.inspect_image(image_id)
            except docker.errors.ImageNotFound:
                try:
                    client.remove_volume(volume["Name"])
                except docker.errors.NotFound:
                    continue
                removed.append(volume["Name"])
    return removed
