"""The usage ledger over literal audit trails (hardened_spawner.usage).

Each trail is written as one row per record, ``MINUTE EVENT USER[/SERVER] [DEVICE,...]``,
and rendered into the exact JSON line the hub writes (the envelope of jupyter_events, then
every field of the audit schema in order), so the ledger reads them as it reads a real trail.
Expected totals are in minutes: (GPU minutes, server minutes).
"""

import json
import logging
import math

import pytest

from hardened_spawner import usage
from hardened_spawner.audit import AuditTrail
from hardened_spawner.usage import ESTIMATED, NO_GROUP, RUNNING, Event, Ledger, Running, TrailError

T0 = usage.parse_time("2026-11-02T09:00:00Z")
HOUR = 3600.0


def at(minute: float) -> float:
    return T0 + 60 * minute


def stamp(when: float) -> str:
    text = usage._iso(when)  # "...+00:00" made "Z", as jupyter_events writes it
    return text


def record(minute: float, event: str, holder: str, devices=(), **extra) -> dict:
    user, _, server = holder.partition("/")
    return {
        "__timestamp__": stamp(at(minute)),
        "__schema__": "https://schema.jupyter.org/hardened-spawner/audit",
        "__schema_version__": "1",
        "__metadata_version__": 1,
        "event": event, "user": user, "server_name": server, "uid": 4200001, "gid": 4200001,
        "client_ip": "127.0.0.1", "image": "hardened-spawner-singleuser:latest",
        "image_digest": "sha256:63e6b663", "policy_fingerprint": "436244260621d22a",
        # a security summary with keys of every kind, one of them named like a top-level field
        "security": {"mem_limit": 2147483648, "tmpfs": {"/tmp": 1073741824}, "cap_add": [],
                     "healthcheck": {"test": ["CMD", "python3", "-c", 'print("devices": [1])']},
                     "devices": ["/dev/fuse"]},
        "devices": list(devices), "container_id": "a3d43946e241", "container_name": f"jupyter-{user}",
        "reason": extra.get("reason"), "admission": None,
    }


def trail(text: str) -> list[str]:
    """``MINUTE EVENT USER[/SERVER] [A,B]`` rows as the hub's JSON lines (devices A -> GPU-a)."""
    lines = []
    for row in filter(str.strip, text.splitlines()):
        minute, event, holder, *rest = row.split()
        devices = [f"GPU-{d.lower()}" for d in rest[0].split(",")] if rest else []
        lines.append(json.dumps(record(float(minute), event, holder, devices)))
    return lines


def run(text: str, running=(), now=200.0, since=-1e6, until=1e6, by="user", groups=None, exclusive=True):
    events = list(usage.read_events(trail(text)))
    intervals = usage.ledger(events, running, now=at(now), exclusive=exclusive)
    rows = usage.totals(intervals, since=at(since), until=at(until), by=by, groups=groups)
    return {r.key: (round(r.gpu_seconds / 60, 4), None if r.server_seconds is None else round(r.server_seconds / 60, 4))
            for r in rows}, intervals, rows


def running(holder: str, devices: str = "", gpus_since: float | None = None, started: float | None = None) -> Running:
    user, _, server = holder.partition("/")
    return Running(user, server, tuple(f"GPU-{d.lower()}" for d in devices.split(",") if d),
                   None if gpus_since is None else at(gpus_since), None if started is None else at(started))


def case(trail: str, **expected) -> dict:
    return {"trail": trail, **expected}


ONE_SERVER = """
0  spawn-requested ada
0  image-admitted  ada
0  gpus-assigned   ada A
1  server-started  ada A
60 gpus-released   ada A
60 server-stopped  ada
"""

CASES = {
    "a server started and stopped": case(ONE_SERVER, expected={"ada": (60, 59)}),
    "overlapping servers of one user and of two": case("""
0   gpus-assigned  ada A
0   server-started ada A
30  gpus-assigned  ada/train B,C
31  server-started ada/train B,C
45  gpus-assigned  bob D
45  server-started bob D
60  gpus-released  ada A
60  server-stopped ada
75  gpus-released  bob D
75  server-stopped bob
90  gpus-released  ada/train B,C
90  server-stopped ada/train
""", expected={"ada": (60 + 2 * 60, 60 + 59), "bob": (30, 30)},
        by_device={"GPU-a": (60, None), "GPU-b": (60, None), "GPU-c": (60, None), "GPU-d": (30, None)}),
    "a CPU-only server has server time only": case("""
0  spawn-requested cy
2  server-started  cy
32 server-stopped  cy
""", expected={"cy": (0, 30)}),
    # the hub SIGKILLed at minute 10: no gpus-released; the restarted hub stops the server
    # at 50 before its GPU table was rebuilt, so only server-stopped records the end
    "a crash mid-assignment, the server stopped after the restart": case("""
0  gpus-assigned  ada A
1  server-started ada A
50 server-stopped ada
""", expected={"ada": (50, 49)}, ended_by={"ada": {"server-stopped"}}),
    # the server died while the hub was down: the restarted hub's poll finds it gone and
    # stops it at 30, the first evidence the trail has
    "a crash, the server gone when the hub came back": case("""
0  gpus-assigned  ada A
1  server-started ada A
5  gpus-assigned  bob B
30 server-stopped ada
31 gpus-released  bob B
""", expected={"ada": (30, 29), "bob": (26, 0)}),
    # killed in the middle of a spawn: the container ran on without server-started; the
    # restarted hub removed it as an orphan
    "a crash mid-spawn, the orphan removed at the restart": case("""
0  spawn-requested ada
0  gpus-assigned   ada A
20 orphan-removed  ada A
""", expected={"ada": (20, 0)}, ended_by={"ada": {"orphan-removed"}}),
    "a crash, the server still running at the report": case("""
0  gpus-assigned  ada A,B
1  server-started ada A,B
""", running=[running("ada", "A,B", gpus_since=0, started=0)], now=100,
        expected={"ada": (200, 99)}, ended_by={"ada": {RUNNING}}),
    # exclusive devices: the allocator gave A to bob at 40, so ada no longer held it
    "a crash, the device later given to someone else": case("""
0  gpus-assigned  ada A
1  server-started ada A
40 gpus-assigned  bob A
40 server-started bob A
70 gpus-released  bob A
70 server-stopped bob
""", expected={"ada": (40, 39), "bob": (30, 30)}, ended_by={"ada": {"reassigned"}}),
    # no evidence at all: counted to the trail's last record, and marked as an estimate
    "a crash with no later evidence": case("""
0  gpus-assigned  ada A
1  server-started ada A
25 gpus-assigned  bob B
""", running=[running("bob", "B", gpus_since=25)], now=100,
        expected={"ada": (25, 24), "bob": (75, 0)}, estimated={"ada"}),
    # a new hub database at the same URL, the same trail: the old server is an orphan to
    # the new database and is removed at its start; the names are all the ledger keys on
    "a database reset, the old server removed as an orphan": case("""
0  gpus-assigned   ada A
1  server-started  ada A
30 orphan-removed  ada A
40 spawn-requested ada
40 gpus-assigned   ada A
40 server-started  ada A
60 gpus-released   ada A
60 server-stopped  ada
""", expected={"ada": (30 + 20, 29 + 20)}),
    # a database reset while the server was gone: nothing removed, the user's next spawn
    # is the first evidence
    "a database reset, the user's next spawn the first evidence": case("""
0  gpus-assigned   ada A
1  server-started  ada A
45 spawn-requested ada
46 gpus-assigned   ada B
46 server-started  ada B
50 gpus-released   ada B
50 server-stopped  ada
""", expected={"ada": (45 + 4, 44 + 4)}),
    "a device handed from one user to the next at the same second": case("""
0  gpus-assigned  ada A
30 gpus-released  ada A
30 server-stopped ada
30 gpus-assigned  bob A
90 gpus-released  bob A
""", expected={"ada": (30, 0), "bob": (60, 0)}, by_device={"GPU-a": (90, None)}),
    # the two spawners' records in the other order: the next holder's first
    "the same hand-over, recorded the other way round": case("""
0  gpus-assigned  ada A
30 gpus-assigned  bob A
30 gpus-released  ada A
90 gpus-released  bob A
""", expected={"ada": (30, 0), "bob": (60, 0)}, by_device={"GPU-a": (90, None)}),
    "the other way round, with shared devices": case("""
0  gpus-assigned  ada A
30 gpus-assigned  bob A
30 gpus-released  ada A
90 gpus-released  bob A
""", exclusive=False, expected={"ada": (30, 0), "bob": (60, 0)}, by_device={"GPU-a": (90, None)}),
    "shared devices count for each holder": case("""
0  gpus-assigned  ada A
10 gpus-assigned  bob A
40 gpus-released  bob A
60 gpus-released  ada A
""", exclusive=False, expected={"ada": (60, 0), "bob": (30, 0)}, by_device={"GPU-a": (90, None)}),
    # --since 30 --until 90: a 0-120 interval is cut at both ends
    "an interval split at since and until": case("""
0   gpus-assigned  ada A
0   server-started ada A
120 gpus-released  ada A
120 server-stopped ada
""", since=30, until=90, expected={"ada": (60, 60)}),
    "intervals crossing one boundary, and one outside the period": case("""
0   gpus-assigned  ada A
40  gpus-released  ada A
80  gpus-assigned  bob B
100 gpus-released  bob B
100 gpus-assigned  cy C
110 gpus-released  cy C
""", since=30, until=90, expected={"ada": (10, 0), "bob": (10, 0)}),
    "a running server cut at until, and counted to now when until is later": case("""
0  gpus-assigned  ada A
0  server-started ada A
""", running=[running("ada", "A", 0, 0)], now=100, since=50, until=80, expected={"ada": (30, 30)}),
    "counted to now when until is later than now": case("""
0  gpus-assigned  ada A
0  server-started ada A
""", running=[running("ada", "A", 0, 0)], now=100, since=50, until=500, expected={"ada": (50, 50)}),
    # the trail was rotated: the server's start is not in it; its labels say since when
    "a running server the trail does not show the start of": case("""
10 gpus-assigned  bob B
""", running=[running("ada", "A", gpus_since=-30, started=-31), running("bob", "B", 10, 11)], now=30,
        expected={"ada": (60, 61), "bob": (20, 19)}),
    "never before what the trail already counted": case("""
0  gpus-assigned  ada A
20 gpus-released  ada A
""", running=[running("ada", "A", gpus_since=-30)], now=30, expected={"ada": (20 + 10, 0)}),
    "refused spawns and image events hold nothing": case("""
0  spawn-requested ada
0  image-admitted  ada
0  gpus-assigned   ada A
1  gpus-released   ada A
1  spawn-refused   ada
2  spawn-requested bob
2  image-refused   bob
2  spawn-refused   bob
""", expected={"ada": (1, 0)}),
}


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
def test_the_ledger_over_literal_trails(case):
    options = {k: case[k] for k in ("running", "now", "since", "until", "exclusive") if k in case}
    found, intervals, rows = run(case["trail"], **options)
    assert found == case["expected"]
    if "by_device" in case:
        assert run(case["trail"], by="device", **options)[0] == case["by_device"]
    assert {r.key for r in rows if r.estimated} == case.get("estimated", set())
    for user, ends in case.get("ended_by", {}).items():
        assert {i.ended_by for i in intervals if i.user == user} == ends
    # one holder's intervals of one kind (and device) never overlap: nothing counted twice
    keyed: dict = {}
    for i in intervals:
        keyed.setdefault((i.kind, i.user, i.server, i.device), []).append(i)
    for same in keyed.values():
        same.sort(key=lambda i: i.start)
        assert all(a.end <= b.start for a, b in zip(same, same[1:])), same


def test_each_interval_ends_as_the_trail_and_the_engine_say():
    text = ONE_SERVER + """
70 gpus-assigned  ada A
71 server-started ada A
80 gpus-assigned  bob B
81 server-started bob B
"""
    _, intervals, _ = run(text, running=[running("bob", "B", 80, 80)], now=100)
    assert [(i.kind, i.user, i.device, (i.start - T0) / 60, (i.end - T0) / 60, i.ended_by) for i in intervals] == [
        ("gpu", "ada", "GPU-a", 0, 60, "gpus-released"),
        ("server", "ada", "", 1, 60, "server-stopped"),
        ("gpu", "ada", "GPU-a", 70, 81, ESTIMATED),  # ada's: the trail's last record
        ("gpu", "bob", "GPU-b", 80, 100, RUNNING),
        ("server", "ada", "", 71, 81, ESTIMATED),
        ("server", "bob", "", 81, 100, RUNNING),
    ]


def test_a_server_that_started_after_the_engine_was_asked_counts_as_running():
    events = list(usage.read_events(trail("0 gpus-assigned ada A\n0 server-started ada A")))
    intervals = usage.ledger(events, [], now=at(10), running_at=at(-1))
    assert {i.ended_by for i in intervals} == {RUNNING}
    assert usage.ledger(events, [], now=at(10), running_at=at(5))[0].ended_by == ESTIMATED


def test_groups_come_from_the_caller_and_a_user_counts_in_each():
    found, _, rows = run("""
0  gpus-assigned  ada A
0  gpus-assigned  bob B
0  server-started cy
30 gpus-released  bob B
45 server-stopped cy
60 gpus-released  ada A
""", by="group", groups={"ada": ["ml", "vision"], "bob": ["ml"]})
    assert found == {"ml": (90, 0), "vision": (60, 0), NO_GROUP: (0, 45)}
    assert [r.key for r in rows] == ["ml", "vision", NO_GROUP]


def test_the_ledger_fed_in_pieces_equals_the_ledger_fed_at_once():
    text = CASES["a database reset, the old server removed as an orphan"]["trail"]
    events = list(usage.read_events(trail(text)))
    whole = usage.ledger(events, now=at(100))
    book = Ledger()
    for event in events:
        book.feed([event])
    assert book.intervals([], at(100)) == whole
    book.forget_before(at(35))
    assert [(i.start, i.end) for i in book.intervals([], at(100))] == [(at(40), at(60))] * 2


@pytest.mark.parametrize("line", [
    json.dumps(record(3, "gpus-assigned", "ad\u00e9/tr\"ain", ["GPU-a", "MIG-1"])),
    json.dumps(record(3, "gpus-assigned", "ad\u00e9/tr\"ain", ["GPU-a", "MIG-1"]), ensure_ascii=False),
    # keys in another order, and compact: the slow path
    json.dumps(dict(reversed(list(record(3, "gpus-assigned", "ad\u00e9/tr\"ain", ["GPU-a", "MIG-1"]).items())))),
    json.dumps(record(3, "gpus-assigned", "ad\u00e9/tr\"ain", ["GPU-a", "MIG-1"]), separators=(",", ":")),
])
def test_a_line_reads_the_same_by_the_fast_and_the_slow_path(line):
    assert usage.parse_line(line) == Event(at(3), "gpus-assigned", "ad\u00e9", 'tr"ain', ("GPU-a", "MIG-1"))


def test_the_hubs_own_audit_trail_is_read_by_the_fast_path(tmp_path, monkeypatch):
    path = tmp_path / "audit.jsonl"
    trail_ = AuditTrail(str(path), logging.getLogger("test"))
    trail_.emit("gpus-assigned", user="ada", server_name="train", devices=("GPU-a",), security={"devices": []})
    trail_.emit("image-admitted", user="ada", admission={"image_id": "sha256:1"})
    trail_.emit("server-stopped", user="ada", server_name="train")
    trail_.close()
    monkeypatch.setattr(usage, "_slow", None)  # never taken
    events = list(usage.read_events(path.read_text().splitlines()))
    assert [(e.kind, e.user, e.server, e.devices) for e in events] == [
        ("gpus-assigned", "ada", "train", ("GPU-a",)), ("server-stopped", "ada", "train", ())]
    assert all(abs(e.time - events[0].time) < 60 for e in events)


def test_lines_that_are_not_records_are_skipped_and_said():
    lines = [*trail("0 gpus-assigned ada A"), "", '{"__timestamp__": "2026-11-02T09:0', "not json",
             json.dumps({"event": "gpus-released", "user": "ada"}), *trail("5 gpus-released ada A")]
    problems: list[str] = []
    events = list(usage.read_events(lines, problems))
    assert [e.kind for e in events] == ["gpus-assigned", "gpus-released"]
    assert [p.split(":")[0] for p in problems] == ["line 3", "line 4", "line 5"]
    with pytest.raises(TrailError, match="not an audit record"):
        usage.parse_line("[1, 2]")


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-11-02T09:00:00Z", T0),
    ("2026-11-02T09:00:00.250000Z", T0 + 0.25),
    ("2026-11-02T10:00:00+01:00", T0),
    ("2026-11-02T09:00:00", T0),  # naive is UTC
    ("2026-11-02", T0 - 9 * HOUR),
])
def test_times(text, expected):
    assert usage.parse_time(text) == expected
    if text.endswith("Z"):  # as the hub writes it: the fast path
        line = json.dumps({**record(0, "gpus-released", "ada"), "__timestamp__": text})
        assert usage._HEAD.match(line) and usage.parse_line(line).time == expected


def test_totals_refuse_an_unknown_grouping():
    with pytest.raises(ValueError, match="by must be one of user, group, device"):
        usage.totals([], since=0, until=1, by="image")


ROWS = [usage.Row("ada", 5400.0, 7200.0), usage.Row("bob", 1800.0, 1800.0, estimated=True)]


def test_the_table():
    assert usage.as_table(ROWS, by="user", since=at(0), until=at(60 * 24)) == (
        "Usage from 2026-11-02T09:00:00Z to 2026-11-03T09:00:00Z, by user:\n"
        "USER   GPU-HOURS  SERVER-HOURS\n"
        "ada         1.50          2.00\n"
        "bob       0.50 *          0.50\n"
        "TOTAL       2.00          2.50\n"
        "* includes time whose end the trail does not record; counted to the trail's last record.\n"
    )
    assert usage.as_table([], by="device", since=at(0), until=at(1), notes=["2 lines skipped"]) == (
        "Usage from 2026-11-02T09:00:00Z to 2026-11-02T09:01:00Z, by device:\n"
        "No GPU or server time in this period.\nnote: 2 lines skipped\n")


def test_json_and_csv():
    data = json.loads(usage.as_json(ROWS, by="user", since=at(0), until=at(60)))
    assert data == {
        "since": "2026-11-02T09:00:00Z", "until": "2026-11-02T10:00:00Z", "by": "user",
        "rows": [
            {"user": "ada", "gpu_seconds": 5400.0, "gpu_hours": 1.5, "gpu_used_seconds": None, "gpu_used_hours": None,
             "server_seconds": 7200.0, "server_hours": 2.0,
             "estimated": False},
            {"user": "bob", "gpu_seconds": 1800.0, "gpu_hours": 0.5, "gpu_used_seconds": None, "gpu_used_hours": None,
             "server_seconds": 1800.0, "server_hours": 0.5,
             "estimated": True},
        ],
        "total": {"user": None, "gpu_seconds": 7200.0, "gpu_hours": 2.0, "gpu_used_seconds": None, "gpu_used_hours": None,
                  "server_seconds": 9000.0,
                  "server_hours": 2.5, "estimated": True},
        "notes": [],
    }
    assert usage.as_csv(ROWS, by="user") == (
        "user,gpu_seconds,gpu_hours,gpu_used_seconds,gpu_used_hours,server_seconds,server_hours,estimated\n"
        "ada,5400.0,1.5,,,7200.0,2.0,False\n"
        "bob,1800.0,0.5,,,1800.0,0.5,True\n")


def test_month_start():
    from datetime import datetime, timezone
    assert usage.month_start(datetime(2026, 12, 17, 8, 30, 5, 12, tzinfo=timezone.utc)) == datetime(
        2026, 12, 1, tzinfo=timezone.utc)


def test_seconds_of_an_interval_in_a_period():
    interval = usage.Interval("gpu", "ada", "", "GPU-a", 10.0, 20.0, "gpus-released")
    assert [interval.seconds(), interval.seconds(12, 15), interval.seconds(25, 30), interval.seconds(-math.inf, 11)] \
        == [10.0, 3.0, 0.0, 1.0]



# --- the GPU-seconds counters on /hub/metrics (gpu_broker) -----------------------------------


def samples(name: str) -> dict[str, float]:
    from prometheus_client import REGISTRY, generate_latest

    found = {}
    for line in generate_latest(REGISTRY).decode().splitlines():
        if line.startswith(name + "{"):
            label, value = line[len(name) + 1:].split("} ")
            found[label.split('"')[1]] = float(value)
    return found


def test_gpu_seconds_count_a_holding_as_it_goes_and_at_its_release():
    import asyncio
    from datetime import datetime, timedelta, timezone

    from hardened_spawner import gpu_broker
    from hardened_spawner.core.gpus import GpuAllocator, GpuDevice, GpuPolicy, Holding

    long_ago = datetime.now(timezone.utc) - timedelta(hours=5)
    carried = [Holding("zed", ("GPU-z",), long_ago, "zed")]  # held since before a hub restart

    async def holdings():
        return carried

    allocator = GpuAllocator([GpuDevice(f"GPU-{x}", str(i)) for i, x in enumerate("xyz")], GpuPolicy(max_per_user=2))
    broker = gpu_broker.broker_for("usage-test", "", lambda: gpu_broker.GpuBroker(allocator, holdings, logging.getLogger()))

    async def play():
        await broker.assign("quinn/train", ["ml", "vision"], 2, None, owner="quinn")
        quinn = gpu_broker.GPU_SECONDS.by_user.get("quinn", 0.0)
        broker._rebuilt_at -= timedelta(seconds=30)  # as if rebuilt 30 s ago ...
        for holding in allocator.holdings():  # ... and quinn's GPUs assigned then
            if holding.user == "quinn/train":
                allocator.rebuild([Holding("quinn/train", holding.devices, broker._rebuilt_at, "quinn"), *carried])
        before = samples("hardened_spawner_gpu_seconds_total")
        groups_before = samples("hardened_spawner_group_gpu_seconds_total")
        assert 59 <= before["quinn"] - quinn <= 62  # 2 devices for 30 s, before any release
        # zed's holding came with the restart: counted from the rebuild, not from 5 hours ago
        assert 29 <= before["zed"] - gpu_broker.GPU_SECONDS.by_user.get("zed", 0.0) <= 32
        assert await broker.release("quinn/train")
        after = samples("hardened_spawner_gpu_seconds_total")
        assert before["quinn"] <= after["quinn"] <= before["quinn"] + 1  # moved to released, never down
        assert 59 <= gpu_broker.GPU_SECONDS.by_user["quinn"] - quinn <= 62
        groups = samples("hardened_spawner_group_gpu_seconds_total")
        assert groups["ml"] >= groups_before["ml"] and groups["vision"] >= groups_before["vision"]

    try:
        asyncio.run(play())
    finally:
        gpu_broker.reset()


# --- the ledger's inputs (usage_sources) -------------------------------------------------------

from hardened_spawner import hub_database, usage_sources  # noqa: E402


def test_the_whole_file_in_small_chunks_reads_as_at_once(tmp_path, monkeypatch):
    lines = trail(CASES["overlapping servers of one user and of two"]["trail"])
    lines.insert(3, "garbage")
    path = tmp_path / "audit.jsonl"
    path.write_text("\n".join(lines) + "\n" + lines[0][:50])  # the hub in the middle of a line
    monkeypatch.setattr(usage_sources, "CHUNK", 700)  # a line or two at a time
    problems: list[str] = []
    book = usage_sources.read_ledger(str(path), problems=problems)
    whole = usage.ledger(usage.read_events(lines), now=at(200))
    assert book.intervals([], at(200)) == whole
    assert [p.split(":")[0] for p in problems] == ["line 4"]


def test_the_follower_reads_what_the_hub_appends_and_starts_over_on_a_new_file(tmp_path):
    path = tmp_path / "audit.jsonl"
    follower = usage_sources.TrailFollower(str(path))
    assert follower.read([], at(10))[0] == []  # no trail yet
    first, second = trail("0 gpus-assigned ada A\n5 gpus-released ada A"), trail("7 gpus-assigned bob B")
    path.write_text(first[0] + "\n" + first[1][:40])
    assert [(i.user, i.ended_by) for i in follower.read([], at(10))[0]] == [("ada", ESTIMATED)]
    with open(path, "a") as out:
        out.write(first[1][40:] + "\n" + second[0] + "\n")
    assert [(i.user, i.end) for i in follower.read([], at(10))[0]] == [("ada", at(5)), ("bob", at(7))]
    assert [i.user for i in follower.read([], at(10), keep_from=at(6))[0]] == ["bob"]  # ada's ended before
    path.unlink()  # rotated: a new file
    path.write_text(second[0] + "\n")
    assert [i.user for i in follower.read([], at(10))[0]] == ["bob"]
    assert usage_sources.follower_for(str(path)) is usage_sources.follower_for(str(tmp_path / "." / "audit.jsonl"))


def test_running_servers_from_the_engines_labels_this_hubs_only():
    from hardened_spawner import labels as L

    def ps(owner, server="", gpus="", since="", hub=None, created=1_700_000_000):
        found = {L.OWNER: owner, L.SERVER_NAME: server, L.GPUS: gpus, L.GPUS_SINCE: since}
        if hub is not None:
            found[L.HUB] = hub
        return {"Id": owner + server, "Created": created, "Labels": found}

    found = usage_sources.running_from_containers([
        ps("ada", "train", "GPU-a,GPU-b", "2026-11-02T09:00:00+00:00", hub="h1"),
        ps("bob", hub="h1"),
        ps("cy", gpus="GPU-c", since="garbled", hub=None),  # older servers have no hub label
        ps("dan", gpus="GPU-d", hub="h2"),  # another hub's
    ], "h1")
    assert found == [
        Running("ada", "train", ("GPU-a", "GPU-b"), T0, 1_700_000_000.0),
        Running("bob", "", (), None, 1_700_000_000.0),
        Running("cy", "", ("GPU-c",), 1_700_000_000.0, 1_700_000_000.0),  # since: its creation
    ]


def test_the_hub_id_is_the_one_the_hub_labels_its_servers_with(tmp_path):
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    url = f"sqlite:///{tmp_path}/hub.sqlite"
    with Session(create_engine(url)) as db:
        assert usage_sources.hub_id_for_url(url) == hub_database.hub_id(db)
    assert usage_sources.resolve_db_url("sqlite:///jupyterhub.sqlite", "/srv/hub") == "sqlite:////srv/hub/jupyterhub.sqlite"
    for kept in ("sqlite:////var/hub.sqlite", "sqlite:///:memory:", "postgresql://hub@db/hub"):
        assert usage_sources.resolve_db_url(kept, "/srv/hub") == kept


# --- GPU time used: gpu-usage records --------------------------------------------------------


def usage_record(minute: float, holder: str, window_minutes: float, used: dict[str, float]) -> str:
    """A gpu-usage line as the hub writes it: the audit fields, then the utilisation last."""
    line = record(minute, "gpu-usage", holder, list(used))
    line["utilisation"] = {"window_seconds": window_minutes * 60, "per_device": [
        {"uuid": uuid, "used_seconds": seconds, "measured_seconds": window_minutes * 60,
         "mean_percent": 100 * seconds / (window_minutes * 60), "memory_max_bytes": None}
        for uuid, seconds in used.items()]}
    return json.dumps(line)


def test_gpu_time_used_is_added_up_beside_the_time_held_and_split_at_the_period():
    lines = trail("""
        0 gpus-assigned ada A,B
        0 server-started ada
        0 gpus-assigned bob/train C
    """)
    lines += [usage_record(15, "ada", 15, {"GPU-a": 450.0, "GPU-b": 0.0}),  # a at 50 %, b idle
              usage_record(15, "bob/train", 15, {"GPU-c": 900.0})]
    lines += trail("""
        30 gpus-released ada A,B
        30 server-stopped ada
        30 gpus-released bob/train C
    """)
    lines += [usage_record(30, "ada", 15, {"GPU-a": 900.0, "GPU-b": 90.0}),
              usage_record(30, "bob/train", 15, {"GPU-c": 0.0})]
    book = usage.Ledger()
    book.feed(usage.read_events(lines))
    intervals = book.intervals([], at(60))
    rows = {r.key: r for r in usage.totals(intervals, since=at(0), until=at(60), by="user", used=book.used)}
    assert (rows["ada"].gpu_seconds, rows["ada"].used_seconds) == (3600.0, 1440.0)
    assert (rows["bob"].gpu_seconds, rows["bob"].used_seconds) == (1800.0, 900.0)
    devices = {r.key: r.used_seconds for r in usage.totals(intervals, since=at(0), until=at(60), by="device",
                                                             used=book.used)}
    assert devices == {"GPU-a": 1350.0, "GPU-b": 90.0, "GPU-c": 900.0}
    # a period that cuts a window takes its share of it, spread evenly
    cut = {r.key: r.used_seconds for r in usage.totals(intervals, since=at(10), until=at(20), by="user",
                                                         used=book.used)}
    assert cut == {"ada": pytest.approx(450.0 / 3 + 990.0 / 3), "bob": pytest.approx(900.0 / 3)}
    # without any gpu-usage record, nothing claims a measurement
    assert {r.used_seconds for r in usage.totals(intervals, since=at(0), until=at(60), by="user")} == {None}


def test_the_reports_show_gpu_hours_used_only_when_measured():
    rows = [usage.Row("ada", 7200.0, 7200.0, used_seconds=1800.0)]
    table = usage.as_table(rows, by="user", since=at(0), until=at(120))
    assert table.splitlines()[1:3] == ["USER   GPU-HOURS  GPU-HOURS USED  SERVER-HOURS",
                                       "ada         2.00            0.50          2.00"]
    assert "GPU-HOURS USED" not in usage.as_table([usage.Row("ada", 7200.0, 7200.0)], by="user", since=at(0),
                                                  until=at(120))
    assert json.loads(usage.as_json(rows, by="user", since=at(0), until=at(120)))["total"]["gpu_used_hours"] == 0.5


@pytest.mark.parametrize("devices", [
    (("GPU-a", 450.5, 900.0, 50.1, 2**33),),  # one GPU: one regular expression
    (("GPU-a", 450.5, 900.0, 50.1, 2**33), ("MIG-b", 0.0, 0.0, None, None)),
])
def test_a_gpu_usage_line_as_the_hub_writes_it_is_read_fast_and_the_same_as_through_json(
        tmp_path, monkeypatch, devices):
    from datetime import datetime, timedelta, timezone

    from hardened_spawner.core.utilisation import DeviceUse, UseRecord

    trail_path = tmp_path / "audit.jsonl"
    audit = AuditTrail(str(trail_path))
    end = datetime(2026, 11, 2, 9, 15, 30, 250000, tzinfo=timezone.utc)
    record = UseRecord("ada", "train", end - timedelta(seconds=900.125), end,
                       tuple(DeviceUse(*d) for d in devices))
    audit.emit("gpu-usage", **record.audit_fields())
    audit.close()
    [line] = trail_path.read_text().splitlines(keepends=True)
    through_json = usage._slow(line)
    monkeypatch.setattr(usage, "_slow", lambda line: pytest.fail("the fast path fell back to json"))
    event = usage.parse_line(line)
    assert event == through_json
    assert (event.kind, event.user, event.server, event.devices, event.window, event.used) == (
        "gpu-usage", "ada", "train", tuple(d[0] for d in devices), 900.125, tuple(d[1] for d in devices))
    assert list(usage.read_events([line])) == [event]
