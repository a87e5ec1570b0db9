"""GPU utilisation: attribution, the underuse watch, the use meter, the NVML reader (against a
stand-in at nvidia-ml-py's function boundary), the reclaim rule and its warning, the sampler."""

import asyncio
import json
import logging
from datetime import datetime, timedelta, timezone

import pynvml
import pytest

from hardened_spawner import gpu_broker
from hardened_spawner.audit import AuditTrail
from hardened_spawner.core.gpus import GpuAllocator, GpuPolicy, Holding, discover_nvml, parse_static_inventory
from hardened_spawner.core.utilisation import (
    DeviceReading,
    ProcessUse,
    UnderuseWatch,
    UseMeter,
    container_id_from_cgroup,
    memory_by_holder,
    use_by_holder,
)
from hardened_spawner.gpu_board import IDLE, MAX_HOLD, UNDERUSED, ReclaimRule, Sampled, Viewer, board, due
from hardened_spawner.gpu_sampler import GpuSampler
from hardened_spawner.nvml_reader import NvmlReader
from hardened_spawner.settings import underuse_rule_problem
from tests import nvml_standin

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
MIN = timedelta(minutes=1)
CID = "3f4e" + "a" * 60
OTHER = "b" * 64


@pytest.fixture
def standin(monkeypatch):
    """nvidia-ml-py's own module with its nvml* functions scripted (restored after the test)."""
    script = {"devices": []}
    stand_in = nvml_standin.StandIn(script)
    for name, fn in stand_in.functions().items():
        monkeypatch.setattr(pynvml, name, fn)
    stand_in.script = script
    return stand_in


# --- the process -> container mapping ---------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    # cgroup v2, systemd driver (Debian 12's dockerd), cgroupfs driver, a sub-cgroup of a container
    (f"0::/system.slice/docker-{CID}.scope\n", CID),
    (f"0::/docker/{CID}\n", CID),
    (f"0::/system.slice/docker-{CID}.scope/init\n", CID),
    # cgroup v1: every controller line names it
    (f"12:memory:/docker/{CID}\n11:pids:/docker/{CID}\n1:name=systemd:/docker/{CID}\n", CID),
    # Kubernetes runtimes
    (f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice/cri-containerd-{CID}.scope\n",
     CID),
    (f"0::/kubepods/burstable/pod5b1c/{CID}\n", CID),
    # docker in docker: the innermost container
    (f"0::/docker/{OTHER}/docker/{CID}\n", CID),
    # the host's own processes, and a process that has gone
    ("0::/user.slice/user-0.slice/session-3.scope\n", None),
    ("0::/init.scope\n", None),
    ("", None),
    # 64 hex characters that are not a path element are not an id
    (f"0::/system.slice/x{CID}.service\n", None),
])
def test_a_process_is_mapped_to_its_container_from_its_cgroup(text, expected):
    assert container_id_from_cgroup(text) == expected


# --- attribution ---------------------------------------------------------------------------


def holding(user, *devices, since=NOW - 60 * MIN):
    return Holding(user, tuple(devices), since, user.split("/")[0])


def test_an_exclusive_device_is_its_holders_and_unknown_stays_unknown():
    readings = [DeviceReading("GPU-a", 73, 5 * 2**30), DeviceReading("MIG-b", None, 2**30)]
    holdings = [holding("ada", "GPU-a"), holding("bob", "MIG-b"), holding("cy", "GPU-gone")]
    assert use_by_holder(readings, holdings, {}) == {
        "ada": {"GPU-a": 73}, "bob": {"MIG-b": None}, "cy": {"GPU-gone": None}}
    assert memory_by_holder(readings, holdings, {}) == {
        "ada": {"GPU-a": 5 * 2**30}, "bob": {"MIG-b": 2**30}, "cy": {"GPU-gone": None}}


def test_a_shared_device_is_split_by_process():
    processes = (ProcessUse(100, 60, 2**30), ProcessUse(101, 20, 2**30), ProcessUse(200, 0, 3 * 2**30),
                 ProcessUse(201, None, 2**28),  # bob's too, no sample since the last read: ran no kernel
                 ProcessUse(999, 0, 2**30))  # 999: no server of this hub (the host's own, say), idle
    readings = [DeviceReading("GPU-s", 95, 7 * 2**30, processes=processes, per_process=True)]
    holdings = [holding("ada", "GPU-s"), holding("bob/train", "GPU-s"), holding("cy", "GPU-s")]
    pids = {100: "ada", 101: "ada", 200: "bob/train", 201: "bob/train"}
    assert use_by_holder(readings, holdings, pids) == {
        "ada": {"GPU-s": 80}, "bob/train": {"GPU-s": 0}, "cy": {"GPU-s": 0}}
    assert memory_by_holder(readings, holdings, pids) == {
        "ada": {"GPU-s": 2 * 2**30}, "bob/train": {"GPU-s": 3 * 2**30 + 2**28}, "cy": {"GPU-s": 0}}


@pytest.mark.parametrize("stranger", [ProcessUse(999, 15), ProcessUse(999, None)])
def test_work_on_a_shared_device_that_maps_to_no_holder_makes_every_share_unknown(stranger):
    """A hub that cannot map a busy PID (outside the host's PID namespace, another hub's
    server) cannot tell whose the work is: never 0, which the underuse rule would reclaim."""
    readings = [DeviceReading("GPU-s", 40, processes=(ProcessUse(100, 0), stranger), per_process=True)]
    holdings = [holding("ada", "GPU-s"), holding("bob", "GPU-s")]
    assert use_by_holder(readings, holdings, {100: "ada"}) == {"ada": {"GPU-s": None}, "bob": {"GPU-s": None}}


def test_a_shared_device_without_process_samples_is_unknown_unless_it_is_idle():
    busy = [DeviceReading("GPU-s", 40, processes=(ProcessUse(100),), per_process=False)]
    idle = [DeviceReading("GPU-s", 0, processes=(ProcessUse(100),), per_process=False)]
    holdings = [holding("ada", "GPU-s"), holding("bob", "GPU-s")]
    assert use_by_holder(busy, holdings, {100: "ada"}) == {"ada": {"GPU-s": None}, "bob": {"GPU-s": None}}
    assert use_by_holder(idle, holdings, {100: "ada"}) == {"ada": {"GPU-s": 0}, "bob": {"GPU-s": 0}}


# --- the underuse watch ----------------------------------------------------------------------


def test_the_watch_counts_a_run_of_low_samples_and_any_other_sample_starts_afresh():
    watch = UnderuseWatch(5)
    ada, bob = holding("ada", "GPU-a", "GPU-b"), holding("bob", "GPU-c")
    watch.observe(NOW, [ada, bob], {"ada": {"GPU-a": 0, "GPU-b": 4}, "bob": {"GPU-c": 90}})
    assert watch.low_since() == {"ada": NOW}
    watch.observe(NOW + MIN, [ada, bob], {"ada": {"GPU-a": 1, "GPU-b": 0}, "bob": {"GPU-c": 2}})
    assert watch.low_since() == {"ada": NOW, "bob": NOW + MIN}
    # one busy device of two keeps a holding; an unknown sample is never idle
    watch.observe(NOW + 2 * MIN, [ada, bob], {"ada": {"GPU-a": 0, "GPU-b": 5}, "bob": {"GPU-c": None}})
    assert watch.low_since() == {}
    watch.observe(NOW + 3 * MIN, [ada, bob], {"ada": {"GPU-a": 0, "GPU-b": 0}, "bob": {"GPU-c": 0}})
    assert watch.low_since() == {"ada": NOW + 3 * MIN, "bob": NOW + 3 * MIN}
    # the same server holding anew (a restart), and a holding that ended
    again = holding("ada", "GPU-a", since=NOW + 4 * MIN)
    watch.observe(NOW + 4 * MIN, [again], {"ada": {"GPU-a": 0}})
    assert watch.low_since() == {"ada": NOW + 4 * MIN}


# --- the meter ---------------------------------------------------------------------------------


def test_the_meter_adds_utilisation_times_time_and_records_windows_and_ends():
    meter = UseMeter(record_every=600, max_gap=60)
    # found running (a hub restart: the hub before recorded up to its stop): counted from here on
    ada = holding("ada", "GPU-a", "GPU-b", since=NOW - 10 * MIN)
    records = []
    for minute in range(11):  # a sample a minute: 50 % on a, b unknown (a MIG instance)
        records += meter.observe(NOW + minute * MIN, [ada], {"ada": {"GPU-a": 50, "GPU-b": None}},
                                 {"ada": {"GPU-a": (minute + 1) * 2**30, "GPU-b": None}})
    # a window closes after 600 s
    assert len(records) == 1
    first = records[0]
    assert (first.start, first.end) == (NOW, NOW + 10 * MIN)
    a, b = first.devices
    assert (a.used_seconds, a.measured_seconds, a.mean_percent, a.memory_max_bytes) == (300.0, 600.0, 50.0, 11 * 2**30)
    assert (b.used_seconds, b.measured_seconds, b.mean_percent, b.memory_max_bytes) == (0.0, 0.0, None, None)
    # a gap in the samples (a hub busy elsewhere) counts at most max_gap; the holding ends
    records = meter.observe(NOW + 20 * MIN, [ada], {"ada": {"GPU-a": 100, "GPU-b": 100}})
    records += meter.observe(NOW + 21 * MIN, [], {})
    assert len(records) == 1
    last = records[0]
    assert (last.start, last.end) == (NOW + 10 * MIN, NOW + 20 * MIN)
    assert last.audit_fields() == {
        "user": "ada", "server_name": "", "devices": ["GPU-a", "GPU-b"],
        "utilisation": {"window_seconds": 600.0, "per_device": [
            {"uuid": "GPU-a", "used_seconds": 60.0, "measured_seconds": 60.0, "mean_percent": 100.0,
             "memory_max_bytes": None},
            {"uuid": "GPU-b", "used_seconds": 60.0, "measured_seconds": 60.0, "mean_percent": 100.0,
             "memory_max_bytes": None}]}}
    assert meter.close_all(NOW + 22 * MIN) == []  # the window the end opened was empty: no record


def test_the_meter_never_counts_before_the_holding_and_closes_what_is_open_when_asked():
    meter = UseMeter(record_every=900, max_gap=60)
    new = holding("bob/train", "GPU-c", since=NOW - 10 * 1 / 60 * MIN)  # 10 s ago
    meter.observe(NOW, [new], {"bob/train": {"GPU-c": 100}})
    [record] = meter.close_all(NOW + 5 * timedelta(seconds=1))
    assert (record.person, record.server, record.devices[0].used_seconds) == ("bob", "train", 10.0)
    assert (record.start, record.end) == (new.since, NOW + 5 * timedelta(seconds=1))  # the hub stops now
    # a holding that ended between two samples: its window runs to the sample that found it gone
    second = timedelta(seconds=1)
    meter.observe(NOW, [new], {"bob/train": {"GPU-c": 100}})
    meter.observe(NOW + 30 * second, [new], {"bob/train": {"GPU-c": 50}})
    [ended] = meter.observe(NOW + 60 * second, [], {})
    assert (ended.start, ended.end, ended.devices[0].used_seconds) == (new.since, NOW + 60 * second, 10.0 + 15.0)


# --- the NVML reader, against the stand-in ---------------------------------------------------


def test_the_reader_reads_utilisation_memory_and_processes_through_pynvml(standin):
    standin.script["devices"] = [
        {"uuid": "GPU-a", "utilisation": 37, "memory_used": 3 * 2**30, "memory_total": 80 * 2**30,
         "processes": [{"pid": 4242, "sm": 30, "memory": 2**30}, {"pid": 4343, "sm": 7, "memory": None}]},
        {"uuid": "MIG-b", "utilisation": None, "process_samples": False},
        {"uuid": "GPU-c", "utilisation": 0},
    ]
    reader = NvmlReader()
    a, b, c, gone = reader.read(["GPU-a", "MIG-b", "GPU-c", "GPU-gone"], period=30)
    assert a == DeviceReading("GPU-a", 37, 3 * 2**30, 80 * 2**30,
                              (ProcessUse(4242, 30, 2**30), ProcessUse(4343, 7, None)), per_process=True)
    assert (b.percent, b.per_process) == (None, False)
    assert (c.percent, c.processes, c.per_process) == (0, (), True)  # no process ran: NotFound
    assert gone == DeviceReading("GPU-gone", None)
    reader.close()
    assert standin.calls["nvmlInit"] == 1 and standin.calls["nvmlShutdown"] == 1


def test_discovery_and_sampling_share_the_stand_ins_devices(standin):
    standin.script["devices"] = [{"uuid": "GPU-a", "name": "Stand-in H100", "utilisation": 1}]
    assert [(d.uuid, d.index, d.name) for d in discover_nvml()] == [("GPU-a", "0", "Stand-in H100")]


# --- the reclaim rule and its warning --------------------------------------------------------


def test_underuse_is_a_deadline_of_its_own_and_the_earliest_wins():
    rule = ReclaimRule(idle_timeout=3600, max_hold=4 * 3600, underused_timeout=1800, warning=600)
    since = NOW - 60 * MIN
    assert rule.deadline(since, NOW, None) == (NOW + 60 * MIN, IDLE)  # not underused: no underuse deadline
    assert rule.deadline(since, NOW, NOW - 25 * MIN) == (NOW + 5 * MIN, UNDERUSED)
    # underuse that began before the holding (another server's run) counts from the holding
    assert rule.deadline(NOW - 10 * MIN, NOW, NOW - 50 * MIN) == (NOW + 20 * MIN, UNDERUSED)
    assert ReclaimRule(max_hold=600).deadline(since, None, NOW - 30 * MIN) == (since + 10 * MIN, MAX_HOLD)


def test_the_warning_comes_in_the_last_minutes_and_says_why_and_what_keeps_the_gpus():
    rule = ReclaimRule(underused_timeout=3600, underused_percent=5, warning=600)
    assert rule.warning_text((NOW + 11 * MIN, UNDERUSED), NOW) == ""
    assert rule.warning_text((NOW + 10 * MIN, UNDERUSED), NOW) == (
        "Your GPU has been under 5 % busy for 50 minutes; it goes back to the pool in 10 minutes. "
        "Run GPU work to keep it, or save your work: the server stops then.")
    assert "no activity" in rule.warning_text((NOW + MIN, IDLE), NOW)
    assert "longest time allowed" in rule.warning_text((NOW + MIN, MAX_HOLD), NOW)
    assert "in less than a minute" in rule.warning_text((NOW + timedelta(seconds=20), UNDERUSED), NOW)
    assert ReclaimRule(underused_timeout=3600).warning_text((NOW, UNDERUSED), NOW) == ""  # no warning set


def test_due_never_reclaims_a_busy_or_unknown_gpu_and_reclaims_an_underused_one():
    rule = ReclaimRule(underused_timeout=1800, warning=600)
    holdings = [holding("ada", "GPU-a"), holding("bob", "GPU-b"), holding("cy", "GPU-c")]
    low = {"ada": NOW - 30 * MIN, "cy": NOW - 29 * MIN}  # bob: busy or unknown, so never in it
    assert due(holdings, {}, rule, NOW, low) == [{"user": "ada", "server": "", "reason": UNDERUSED}]
    assert due(holdings, {}, rule, NOW) == []


def test_the_board_shows_utilisation_memory_the_underuse_and_the_warning():
    allocator = GpuAllocator(parse_static_inventory(["GPU-a", "GPU-b"]), GpuPolicy(max_per_user=1))
    allocator.rebuild([holding("ada", "GPU-a", since=NOW - 60 * MIN)])
    sampled = Sampled({"GPU-a": DeviceReading("GPU-a", 2, 2**30, 80 * 2**30), "GPU-b": DeviceReading("GPU-b", 0)},
                      {"ada": NOW - 52 * MIN}, NOW)
    rule = ReclaimRule(underused_timeout=3600, warning=600)
    shown = board(allocator, {}, rule, Viewer("ada"), names_public=True, now=NOW, sampled=sampled)
    assert [(d["utilisation"], d["memory_used"], d["memory_total"]) for d in shown["devices"]] == [
        (2, 2**30, 80 * 2**30), (0, None, None)]
    [mine] = shown["you"]["holding"]
    assert mine["reclaim_reason"] == UNDERUSED and mine["reclaim_at"] == (NOW + 8 * MIN).isoformat()
    assert mine["underused_since"] == (NOW - 52 * MIN).isoformat()
    assert mine["warning"].startswith("Your GPU has been under 5 % busy for 52 minutes; it goes back to the pool in 8")
    assert shown["sampled_at"] == NOW.isoformat()
    # another user sees the device's utilisation, never the holder's warning
    other = board(allocator, {}, rule, Viewer("bob"), names_public=True, now=NOW, sampled=sampled)
    assert other["you"]["holding"] == [] and "warning" not in other["devices"][0]["holders"][0]


# --- the settings --------------------------------------------------------------------------


@pytest.mark.parametrize("timeout, warning, inventory, interval, problem", [
    (0, 600, "none", 30, ""),
    (3600, 600, "nvml", 30, ""),
    (3600, 600, ["GPU-a"], 30, "gpu_underused_timeout needs the GPUs' utilisation, which the hub reads through "
                               "NVML: set gpu_inventory = \"nvml\" (it is ['GPU-a']), or gpu_underused_timeout = 0."),
    (3600, 600, "nvml", 0, "gpu_underused_timeout needs utilisation samples: set gpu_utilisation_interval above 0, "
                           "or gpu_underused_timeout = 0."),
    (600, 600, "nvml", 30, "gpu_reclaim_warning (600 s) must be shorter than gpu_underused_timeout (600 s), so "
                           "that users are warned before their GPUs go back."),
    (50, 10, "nvml", 30, "gpu_underused_timeout (50 s) must be at least two utilisation samples "
                         "(gpu_utilisation_interval = 30 s)."),
])
def test_the_underuse_rules_settings_are_checked_together(timeout, warning, inventory, interval, problem):
    assert underuse_rule_problem(timeout, warning, inventory, interval) == problem


def test_the_hub_start_check_names_the_setting_of_the_configured_class():
    from types import SimpleNamespace

    from traitlets import TraitError

    from hardened_spawner import HardenedSpawner

    spawner = HardenedSpawner(user=SimpleNamespace(name="config-check", id=0, admin=False, groups=[]),
                              gpu_underused_timeout=3600)
    with pytest.raises(TraitError) as refused:
        spawner.check_config()
    assert str(refused.value) == (
        "HardenedSpawner.gpu_underused_timeout needs the GPUs' utilisation, which the hub reads through NVML: "
        "set gpu_inventory = \"nvml\" (it is 'none'), or gpu_underused_timeout = 0.")


# --- the sampler, end to end in one process (stand-in driver, a real GPU table) --------------


def test_the_sampler_feeds_the_watch_writes_gpu_usage_records_and_the_gauges(standin, tmp_path):
    standin.script["devices"] = [{"uuid": "GPU-a", "utilisation": 0, "memory_used": 2**30},
                                 {"uuid": "GPU-b", "utilisation": 90, "memory_used": 9 * 2**30}]
    allocator = GpuAllocator(discover_nvml(), GpuPolicy(max_per_user=1))
    start = NOW - 2 * MIN

    async def holdings():
        return [holding("ada", "GPU-a", since=start), holding("bob", "GPU-b", since=start)]

    async def no_containers():
        return {}

    trail = AuditTrail(str(tmp_path / "audit.jsonl"))
    log = logging.getLogger("test")
    broker = gpu_broker.GpuBroker(allocator, holdings, log)
    sampler = GpuSampler(NvmlReader(), broker, no_containers, trail, log, interval=30, underused_percent=5,
                         record_every=60)

    async def play():
        await sampler.sample(NOW)
        await sampler.sample(NOW + 30 * timedelta(seconds=1))
        await sampler.sample(NOW + 60 * timedelta(seconds=1))

    asyncio.run(play())
    assert sampler.low_since(NOW + MIN) == {"ada": NOW}
    assert sampler.low_since(NOW + MIN + 91 * timedelta(seconds=1)) == {}  # three intervals without a sample
    assert sampler.readings["GPU-b"].percent == 90
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    # holdings found running are counted from the first sample: a window of 60 s closes at the third
    assert [(r["event"], r["user"], r["devices"]) for r in records] == [
        ("gpu-usage", "ada", ["GPU-a"]), ("gpu-usage", "bob", ["GPU-b"])]
    [bob] = [r["utilisation"] for r in records if r["user"] == "bob"]
    assert bob["window_seconds"] == 60.0 and bob["per_device"][0]["used_seconds"] == 54.0
    assert bob["per_device"][0]["memory_max_bytes"] == 9 * 2**30
    from prometheus_client import REGISTRY
    assert REGISTRY.get_sample_value("hardened_spawner_gpu_utilisation_percent", {"device": "GPU-b"}) == 90
    trail.close()


def test_a_failed_sample_forgets_who_was_underused_and_shows_no_reading(standin, tmp_path):
    standin.script["devices"] = [{"uuid": "GPU-a", "utilisation": 0}]
    allocator = GpuAllocator(discover_nvml(), GpuPolicy(max_per_user=1))
    log = logging.getLogger("test")

    async def holdings():
        return [holding("ada", "GPU-a", since=NOW - 60 * MIN)]

    async def containers():
        return {}

    trail = AuditTrail("")
    sampler = GpuSampler(NvmlReader(), gpu_broker.GpuBroker(allocator, holdings, log), containers, trail, log,
                         interval=30, underused_percent=5, record_every=3600)

    async def play():
        await sampler.sample(NOW)
        assert sampler.low_since(NOW) == {"ada": NOW}
        # the driver fails in a way the reader does not absorb (a bug, a hung call past its time)
        sampler.reader.read = lambda uuids, period: (_ for _ in ()).throw(RuntimeError("driver wedged"))
        with pytest.raises(RuntimeError):
            await sampler.sample(NOW + 30 * timedelta(seconds=1))

    asyncio.run(play())
    assert sampler.low_since(NOW + MIN) == {} and sampler.readings == {}
    from prometheus_client import REGISTRY
    assert REGISTRY.get_sample_value("hardened_spawner_gpu_utilisation_percent", {"device": "GPU-a"}) is None


def test_the_reader_averages_the_drivers_samples_and_falls_back_to_the_last_period(standin):
    standin.script["devices"] = [{"uuid": "GPU-a", "utilisation": 64}, {"uuid": "GPU-b", "utilisation": 12,
                                                                      "samples": False}]
    reader = NvmlReader()
    a, b = reader.read(["GPU-a", "GPU-b"], period=30)
    assert (a.percent, b.percent) == (64, 12)
    assert standin.calls["nvmlDeviceGetSamples"] == 2
    assert standin.calls["nvmlDeviceGetUtilizationRates"] == 1  # only for the device that keeps no samples
