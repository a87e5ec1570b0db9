"""The audit trail: schema, line format, sinks, and that emit never raises."""

import json
import logging
import os
import stat
from datetime import datetime, timedelta, timezone

import pytest

from hardened_spawner import audit
from hardened_spawner.audit import (
    AUDIT_SCHEMA_ID,
    AUDIT_SCHEMA_PATH,
    EVENTS,
    AuditLogError,
    AuditTrail,
    get_audit_trail,
)

pytest_plugins = ["jupyter_events.pytest_plugin"]

LOG = logging.getLogger("test-audit")

FULL = {
    "user": "alice",
    "server_name": "gpu",
    "uid": 20001,
    "gid": 20001,
    "client_ip": "192.0.2.7",
    "image": "registry.example.org/pytorch:2.8",
    "image_digest": "sha256:" + "ab" * 32,
    "policy_fingerprint": "p-3f9c",
    "security": {"cap_drop": ["ALL"], "read_only": True, "pids_limit": 512},
    "devices": ["GPU-5f2c0a3e-0000-1111-2222-333344445555"],
    "container_id": "c0ffee" * 10 + "abcd",
    "container_name": "jupyter-alice-gpu",
    "reason": None,
    "admission": None,
}
ENVELOPE = {
    "__schema__": AUDIT_SCHEMA_ID,
    "__schema_version__": "1",
    "__metadata_version__": 1,
}


@pytest.fixture
def trail(tmp_path):
    t = AuditTrail(str(tmp_path / "audit.log"), LOG)
    yield t
    t.close()


def read_lines(trail):
    with open(trail.sink, encoding="utf-8") as f:
        text = f.read()
    assert text == "" or text.endswith("\n")
    return text.splitlines()


def errors(caplog):
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("event", EVENTS)
def test_each_event_is_one_json_line_with_exact_fields(trail, event, caplog):
    trail.emit(event, **FULL)
    [line] = read_lines(trail)
    record = json.loads(line)
    timestamp = record.pop("__timestamp__")
    assert record == {**ENVELOPE, "event": event, **FULL}
    assert list(record)[:5] == [*ENVELOPE, "event", "user"]
    assert timestamp.endswith("Z") and "+" not in timestamp
    assert errors(caplog) == []


def test_missing_optional_fields_are_null_or_empty(trail):
    trail.emit("spawn-refused", user="bob", reason="cap_add SYS_ADMIN is not allowed")
    [line] = read_lines(trail)
    record = json.loads(line)
    del record["__timestamp__"]
    assert record == {
        **ENVELOPE,
        "event": "spawn-refused",
        "user": "bob",
        "server_name": "",
        "uid": None,
        "gid": None,
        "client_ip": None,
        "image": None,
        "image_digest": None,
        "policy_fingerprint": None,
        "security": None,
        "devices": [],
        "container_id": None,
        "container_name": None,
        "reason": "cap_add SYS_ADMIN is not allowed",
        "admission": None,
    }


def test_timestamp_is_rfc3339_utc_now(trail):
    trail.emit("server-started", user="alice")
    stamp = json.loads(read_lines(trail)[0])["__timestamp__"]
    when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert abs(datetime.now(timezone.utc) - when) < timedelta(seconds=5)


def test_lines_append_and_stay_one_per_event(trail):
    trail.emit("gpus-assigned", user="alice", devices=("GPU-a", "GPU-b"))
    trail.emit("gpus-released", user="alice", devices=["GPU-a", "GPU-b"], reason="line\nbreak")
    lines = read_lines(trail)
    assert [json.loads(line)["devices"] for line in lines] == [["GPU-a", "GPU-b"]] * 2
    assert json.loads(lines[1])["reason"] == "line\nbreak"


@pytest.mark.parametrize(
    "event, fields, expected",
    [
        ("spawn-exploded", {"user": "alice"}, "invalid event"),
        ("server-started", {"user": "alice", "uid": "1000"}, "invalid uid"),
        ("server-started", {"user": "alice", "devices": "GPU-a"}, "invalid devices"),
        ("server-started", {}, "invalid user"),
        ("server-started", {"user": "alice", "colour": "red"}, "colour"),
        ("server-started", {"user": "alice", "security": {"x": float("nan")}}, "ValueError"),
    ],
)
def test_bad_events_are_logged_not_raised(trail, caplog, event, fields, expected):
    trail.emit(event, **fields)
    assert read_lines(trail) == []
    [error] = errors(caplog)
    assert error.name == "test-audit"
    assert expected in error.getMessage()
    assert repr(event) in error.getMessage()


def test_missing_directory_fails_at_construction_naming_the_setting(tmp_path):
    sink = str(tmp_path / "nope" / "audit.log")
    with pytest.raises(AuditLogError, match=r"HardenedSpawner\.audit_log.*does not exist"):
        AuditTrail(sink, LOG)
    with pytest.raises(AuditLogError, match=r"HardenedSpawner\.audit_log"):
        get_audit_trail(sink, LOG)
    with pytest.raises(AuditLogError, match=r"HardenedSpawner\.audit_log.*cannot open"):
        AuditTrail(str(tmp_path), LOG)  # a directory, not a file


def test_write_failure_after_start_is_logged_not_raised(trail, caplog):
    trail.emit("spawn-requested", user="alice")
    trail._handler.stream.close()  # stands in for a full disk or a revoked file
    trail.emit("server-started", user="alice", container_id="abc")
    [error] = errors(caplog)
    assert "closed file" in error.getMessage()
    assert '"container_id": "abc"' in error.getMessage()  # the event survives in the hub log


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_full_disk_is_logged_not_raised(caplog):
    t = AuditTrail("/dev/full", LOG)  # every write fails with ENOSPC
    t.emit("gpus-released", user="alice", devices=["GPU-a"])
    t.emit("server-stopped", user="alice")
    t.close()
    assert [r.getMessage().count("No space left") for r in errors(caplog)][:2] == [1, 1]


def test_emit_after_close_is_logged(trail, caplog):
    trail.close()
    trail.close()
    trail.emit("server-stopped", user="alice")
    assert "closed" in errors(caplog)[0].getMessage()
    assert read_lines(trail) == []


def test_new_file_is_not_world_readable(trail):
    assert stat.S_IMODE(os.stat(trail.sink).st_mode) & 0o007 == 0


def test_disabled_sink_writes_nothing(tmp_path, caplog, capsys):
    t = AuditTrail("", LOG)
    assert not t.enabled
    t.emit("spawn-requested", user="alice")
    t.emit("not-an-event", nonsense=object())
    assert list(tmp_path.iterdir()) == []
    assert capsys.readouterr() == ("", "")
    assert errors(caplog) == []


@pytest.mark.parametrize("sink, stream", [("-", "err"), ("stderr", "err"), ("stdout", "out")])
def test_stream_sinks_write_bare_json_lines(sink, stream, capsys):
    t = AuditTrail(sink, LOG)
    t.emit("server-died", user="alice", reason="OOMKilled")
    t.close()  # must not close the process's stream
    captured = capsys.readouterr()
    [line] = getattr(captured, stream).splitlines()
    assert json.loads(line)["reason"] == "OOMKilled"
    assert getattr(captured, "out" if stream == "err" else "err") == ""


def test_get_audit_trail_shares_one_trail_per_sink(tmp_path):
    sink = str(tmp_path / "audit.log")
    first = get_audit_trail(sink, LOG)
    try:
        assert get_audit_trail(sink, LOG) is first
        assert get_audit_trail(os.path.relpath(sink), LOG) is first
        assert get_audit_trail("-", LOG) is get_audit_trail("stderr", LOG)
        other = AuditTrail(str(tmp_path / "other.log"), LOG)
        first.emit("spawn-requested", user="alice")
        other.close()
        assert len(read_lines(first)) == 1
        assert read_lines(other) == []
    finally:
        first.close()
        get_audit_trail("stderr").close()
    assert get_audit_trail(sink, LOG) is not first
    get_audit_trail(sink).close()
    assert audit._TRAILS == {}


@pytest.fixture
def jp_event_schemas():
    return [AUDIT_SCHEMA_PATH]


def test_schema_works_with_any_jupyter_events_logger(jp_event_logger, jp_read_emitted_events):
    data = {"event": "server-started", **FULL}
    jp_event_logger.emit(schema_id=AUDIT_SCHEMA_ID, data=data)
    [record] = jp_read_emitted_events()
    assert {k: v for k, v in record.items() if not k.startswith("__")} == data
    schema = jp_event_logger.schemas.get(AUDIT_SCHEMA_ID)
    assert all(prop.get("description") for prop in schema.properties.values())
    assert schema.properties["event"]["enum"] == list(EVENTS)
