"""The benchmarks' smoke mode, so they do not rot: one `benchmarks/run.py --quick` run.

Every measurement runs once with the smallest counts (a round of spawns, a burst
of two, a restart with a few labelled containers, a second of training) against
the real engine, two real hubs and the real proxy. Numbers from such a run mean
nothing, so only their presence and sanity are checked here, never the targets.
A name prefix and a block of UIDs of its own, per process, keep it apart from a
benchmark, a test run or another smoke run (a CI job, say) on the same engine.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import docker
import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
PREFIX = f"hsbenchsmoke{os.getpid()}"
#: a run uses UIDs from here up to about 60,000 above it
UID_BASE = 1_000_000 + (os.getpid() % 9000) * 100_000


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    try:
        client = docker.from_env()
        client.ping()
    except Exception as e:
        pytest.fail(f"No Docker engine answers ({e}). Run scripts/setup.sh --gpu-stub first.")
    if not shutil.which("configurable-http-proxy"):
        pytest.fail("configurable-http-proxy is missing. Run scripts/setup.sh --gpu-stub first.")
    out = tmp_path_factory.mktemp("bench") / "smoke.json"
    env = {**os.environ, "HSTEST_PREFIX": PREFIX, "HSTEST_UID_BASE": str(UID_BASE)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick",
         "--burst-users", "2", "--restart-containers", "5", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-6000:]}"
    return json.loads(out.read_text()), proc.stdout, client


def test_every_measurement_ran_and_printed_its_table(smoke):
    results, table, _ = smoke
    assert results["errors"] == {}
    for section in ("latency", "burst", "restart", "training"):
        assert section in results
    for heading in ("1. Spawn latency", "2. Burst", "3. Hub restart", "4. Training", "Targets"):
        assert heading in table
    assert len(results["targets"]) == 10
    assert all(t["pass"] in (True, False) for t in results["targets"])


def test_spawns_were_ready_and_timed(smoke):
    latency = smoke[0]["latency"]
    assert latency["failures"] == []
    for series in ("plain_first", "plain_later", "hardened_first", "hardened_later"):
        assert latency[series]["n"] == 1
        assert 0 < latency[series]["median"] < 120
        assert latency[series]["anatomy_median"]["server_start"] is not None
    assert "Preparing your workspace" in latency["hardened_first"]["steps_median"]
    assert "Preparing your workspace" not in latency["hardened_later"]["steps_median"]


def test_bursts_were_all_ready_and_no_gpu_went_twice(smoke):
    burst = smoke[0]["burst"]
    for name in ("plain", "hardened_first", "hardened_later"):
        assert burst[name]["all_ready"], burst[name]["failures"]
    for week in ("first", "later"):
        gpus = burst[f"hardened_{week}"]["gpus"]
        assert gpus["ok"], gpus["problems"]
        assert len(gpus["assigned"]) == 2


def test_restart_rebuilt_the_gpu_table_from_the_engine(smoke):
    restart = smoke[0]["restart"]
    assert restart["with"]["failures"] == [] and restart["without"]["failures"] == []
    assert restart["hub_ready_hardened"] > 0 and restart["hub_ready_plain"] > 0
    # two pool GPUs were held by running labelled containers during the restart
    (got,) = restart["with"]["gpus_assigned"]
    assert len(got) == 1 and not set(got) & set(restart["held_by_running_fakes"])


def test_training_ran_in_both_containers(smoke):
    training = smoke[0]["training"]
    assert training["hardened_samples_per_second"] > 0
    assert training["defaults_same_shm_samples_per_second"] > 0
    assert training["hardened_flags"]["ReadonlyRootfs"] is True


def test_nothing_is_left_on_the_engine(smoke):
    client = smoke[2]
    assert not client.containers.list(all=True, filters={"name": PREFIX})
    assert not client.volumes.list(filters={"name": PREFIX})
    assert not client.networks.list(names=[PREFIX])


def run_script(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          check=False)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr[-6000:]}"
    return done


def test_the_sampling_benchmark_runs_both_parts_and_prints_its_table(tmp_path):
    out = tmp_path / "sampling.json"
    done = run_script("benchmarks/gpu_sampling.py", "--samples", "5", "--seconds", "3", "--out", str(out))
    results = json.loads(out.read_text())
    assert [row["mode"] for row in results["in_process"]] == ["exclusive", "shared"]
    assert all(row["cpu_ms_median"] > 0 for row in results["in_process"])
    assert len(results["hubs"]["hub_cpu_s"]) == 3
    assert "1. One sample in the hub's code" in done.stdout and "2. Idle hubs side by side" in done.stdout


def test_the_ledger_benchmark_counts_gpu_time_used_from_its_records(tmp_path):
    out = tmp_path / "usage.json"
    done = run_script("benchmarks/usage.py", "--users", "20", "--days", "20", "--devices", "4", "--rounds", "1",
                      "--out", str(out))
    results = json.loads(out.read_text())
    assert results["trail"]["gpu_usage_records"] > 0
    run = results["runs"][0]
    assert 0 < run["gpu_used_hours_year"] < run["gpu_hours_year"]
    assert "end to end" in done.stdout


def test_the_real_gpu_check_runs_each_step_against_the_stand_in(tmp_path):
    script = tmp_path / "nvml.json"
    script.write_text(json.dumps({"devices": [
        {"uuid": "GPU-check-0", "name": "Stand-in H100", "utilisation": 40,
         "processes": [{"pid": os.getpid(), "sm": 40, "memory": 2**30}]},
        {"uuid": "MIG-check-1", "utilisation": None, "process_samples": False}]}))
    out = tmp_path / "found.json"
    done = run_script("scripts/check_nvml.py", "--stand-in", str(script), "--json", str(out))
    found = json.loads(out.read_text())
    assert found["failed"] == [] and "all steps ran" in done.stdout
    assert [d["uuid"] for d in found["steps"]["discovery"]] == ["GPU-check-0", "MIG-check-1"]
    assert [d["percent"] for d in found["steps"]["read"]["devices"]] == [40, None]
    [mapped] = found["steps"]["pid_to_cgroup"]
    assert mapped["pid"] == os.getpid() and mapped["cgroup"]  # this test's own process: read from /proc
