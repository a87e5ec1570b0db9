"""Issue 30, part 2: GPU utilisation through the real hub, proxy, culler service and engine.

The NVIDIA driver is the only part that is not real: the hub's config puts
`tests.nvml_standin` under nvidia-ml-py's own functions (``gpu_inventory = "nvml"``), with
each device's utilisation scripted in a JSON file that the test changes while the hub runs.
Everything else is the product's path: discovery, the sampler, the board, the culler's
reclaim call, the audit trail, the usage ledger; and with a shared GPU, NVML's process IDs
mapped through the real cgroups of the real server containers.

Timing: a sample a second, a GPU under 5 % for 10 s is reclaimed, users are warned in its
last 6 s (production: 30 s, an hour, 10 minutes).
"""

import json
import threading
import time
from pathlib import Path

import pytest
import requests

from hardened_spawner import usage, usage_sources
from hardened_spawner.core.utilisation import container_id_from_cgroup
from hardened_spawner.nvml_reader import cgroup_of
from hubdriver import TEST_PREFIX, Kernel

from . import browser as chromium
from .hubtools import Browser

REPO = Path(__file__).resolve().parents[2]
GPU_A = "GPU-00000000-0000-0000-0000-0000000000a1"
GPU_B = "GPU-00000000-0000-0000-0000-0000000000a2"
UNDERUSED, WARNING = 10, 6


def config(script: Path, *, share: int = 1) -> str:
    return f"""
import sys
sys.path.insert(0, {str(REPO)!r})
from tests import nvml_standin
nvml_standin.install({str(script)!r})
c.HardenedSpawner.gpu_inventory = "nvml"
c.HardenedSpawner.gpu_default_per_user = 0
c.HardenedSpawner.gpu_max_per_user = 1
c.HardenedSpawner.gpu_max_users_per_gpu = {share}
c.HardenedSpawner.mem_limit = "1G"
__import__("hardened_spawner.gpu_pages").gpu_pages.enable(c, cull_every=1)
c.HardenedSpawner.gpu_utilisation_interval = 1
c.HardenedSpawner.gpu_underused_timeout = {UNDERUSED}
c.HardenedSpawner.gpu_reclaim_warning = {WARNING}
c.HardenedSpawner.gpu_usage_record_interval = 60
"""


def write_script(path: Path, devices: list[dict]) -> None:
    temporary = path.with_suffix(".new")
    temporary.write_text(json.dumps({"devices": devices}))
    temporary.replace(path)  # the hub never reads half a script


def board(hub, user) -> dict:
    r = requests.get(f"{hub.url}/hub/api/gpus", headers={"Authorization": f"token {hub.user_token(user)}"}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def container(engine, user):
    return engine.containers.get(f"{TEST_PREFIX}-{user}--")


def held_device(engine, user) -> str:
    return container(engine, user).labels["org.jupyter.hardened-spawner.gpus"]


def watch_until_stopped(hub, user, timeout: float, driver=None) -> tuple[float | None, float, str]:
    """Poll the user's board until their server is gone: when a warning first showed (seconds
    from now), when the server was gone, and the warning's text; the board's page, as the user
    reads it in their browser session, must show it too, and so must the home page in a real
    browser (``driver``, logged in as the user), where the warning is fetched by the page."""
    browser = Browser(hub.url)
    assert browser.login(user, "any").ok
    started = time.monotonic()
    warned, text = None, ""
    while time.monotonic() - started < timeout:
        if "" not in hub.api("GET", f"/users/{user}").json()["servers"]:
            return warned, time.monotonic() - started, text
        for holding in board(hub, user)["you"]["holding"]:
            if holding["warning"] and warned is None:
                warned, text = time.monotonic() - started, holding["warning"]
                page = browser.session.get(f"{hub.url}/hub/gpus", timeout=30).text
                assert 'class="alert alert-warning gpu-warning"' in page and "goes back to the pool in" in page
                if driver is not None:
                    driver.get(f"{hub.url}/hub/home")
                    shown = chromium.wait(driver, 5).until(chromium.expected_conditions.visibility_of_element_located(
                        (chromium.By.CSS_SELECTOR, "#hardened-gpu-warnings .gpu-warning")))
                    assert "goes back to the pool in" in shown.text
        time.sleep(0.3)
    raise AssertionError(f"{user}'s server was not stopped within {timeout} s\n{hub.log_tail()}")


def reasons(hub, user) -> list[tuple[str, str | None]]:
    return [(e["event"], e["reason"]) for e in hub.audit_events()
            if e.get("user") == user and e["event"] in ("gpus-released", "server-stopped")]


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "nvml.json"
    write_script(path, [{"uuid": GPU_A, "name": "Stand-in A100", "utilisation": 50},
                        {"uuid": GPU_B, "name": "Stand-in A100", "utilisation": 50}])
    return path


def test_an_underused_gpu_is_warned_then_reclaimed_however_busy_its_kernel_and_a_busy_one_stays(
        hub_factory, engine, script):
    hub = hub_factory(config(script))
    for user in ("uma", "bea"):
        hub.create_user(user)
    assert hub.spawn("uma", {"gpus": 1}).ready
    assert hub.spawn("bea", {"gpus": 1}).ready
    idle, busy = held_device(engine, "uma"), held_device(engine, "bea")
    assert {idle, busy} == {GPU_A, GPU_B}

    # uma's kernel works hard on the CPU, and its GPU sits at 0 %; bea's GPU is at 90 %
    kernel = Kernel(hub, "uma")
    kernel.run("import threading\n"
               "def spin():\n    while True: sum(range(10**5))\n"
               "threading.Thread(target=spin, daemon=True).start()")
    keep_typing = threading.Event()

    def type_into_the_kernel():  # activity the hub sees, so only the GPU rule can stop it
        while not keep_typing.is_set():
            try:
                kernel.run("1 + 1", timeout=10)
            except Exception:
                return
            time.sleep(1)

    typist = threading.Thread(target=type_into_the_kernel, daemon=True)
    typist.start()
    driver = chromium.chromium()
    try:
        chromium.log_in(driver, hub.url, "uma")
        driver.get(f"{hub.url}/hub/home")
        assert not driver.find_elements(chromium.By.CSS_SELECTOR, ".gpu-warning")  # nothing to warn of yet
        write_script(script, [{"uuid": idle, "utilisation": 0, "memory_used": 2**30},
                              {"uuid": busy, "utilisation": 90, "memory_used": 9 * 2**30}])
        warned, stopped, text = watch_until_stopped(hub, "uma", timeout=UNDERUSED + 30, driver=driver)
    except Exception:
        chromium.keep_evidence(driver, "gpu-underused-warning")
        raise
    finally:
        driver.quit()
        keep_typing.set()
        typist.join(timeout=15)
        kernel.close()
    print(f"uma: warned after {warned} s, stopped after {stopped:.1f} s: {text!r}")
    assert warned is not None, "the server was stopped without a warning on the board"
    assert stopped - warned >= WARNING - 3, (warned, stopped)
    assert text.startswith("Your GPU has been under 5 % busy for ") and "goes back to the pool in" in text
    assert reasons(hub, "uma") == [("gpus-released", "gpu-underused"), ("server-stopped", "gpu-underused")]

    # bea's busy GPU is never underused: still running well past the timeout, no warning, 90 % shown
    time.sleep(3)
    seen = board(hub, "bea")
    assert "" in hub.api("GET", "/users/bea").json()["servers"]
    assert [h["warning"] for h in seen["you"]["holding"]] == [None]
    assert {d["uuid"]: d["utilisation"] for d in seen["devices"]}[busy] == 90
    browser = Browser(hub.url)
    assert browser.login("bea", "any").ok
    page = browser.session.get(f"{hub.url}/hub/gpus", timeout=30).text
    assert 'class="gpu-utilisation">90 %' in page and "gpu-warning" not in page
    hub.stop_server("bea")

    # GPU-hours used beside GPU-hours held, in the ledger: bea's ~90 % (50 % before the script
    # changed), uma's ~0 (50 % before)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and sum(e["event"] == "gpu-usage" and e["user"] == "bea"
                                              for e in hub.audit_events()) == 0:
        time.sleep(0.5)
    book = usage_sources.read_ledger(str(hub.audit_path))
    rows = {r.key: r for r in usage.totals(book.intervals([], time.time()), since=0, until=time.time(),
                                            by="user", used=book.used)}
    bea, uma = rows["bea"], rows["uma"]
    print(f"bea: held {bea.gpu_seconds:.1f} s, used {bea.used_seconds:.1f} s; "
          f"uma: held {uma.gpu_seconds:.1f} s, used {uma.used_seconds:.1f} s")
    assert 0.6 * bea.gpu_seconds < bea.used_seconds <= 0.95 * bea.gpu_seconds
    assert uma.used_seconds < 0.5 * uma.gpu_seconds


def test_a_shared_gpu_is_split_by_process_through_the_containers_cgroups(hub_factory, engine, tmp_path):
    # one GPU for two; per-process samples missing: a shared device's split is unknown, so
    # nobody is underused while the two start
    script = tmp_path / "nvml.json"
    write_script(script, [{"uuid": GPU_A, "utilisation": 60, "process_samples": False}])
    hub = hub_factory(config(script, share=2))
    for user in ("sid", "pat"):
        hub.create_user(user)
    assert hub.spawn("sid", {"gpus": 1}).ready
    assert hub.spawn("pat", {"gpus": 1}).ready
    sid, pat = container(engine, "sid"), container(engine, "pat")

    # the real cgroups of the servers' processes name their containers: the server itself, and a
    # process started later in it (docker exec), by the host PIDs NVML reports
    sid.exec_run(["sleep", "60"], detach=True, user=str(sid.labels["org.jupyter.hardened-spawner.uid"]))
    time.sleep(1)
    for server in (sid, pat):
        server.reload()
        pids = [int(row[1]) for row in server.top()["Processes"]]
        assert len(pids) >= (2 if server is sid else 1)
        for pid in pids:
            text = cgroup_of(pid)
            assert container_id_from_cgroup(text) == server.id, (pid, text)

    # sid's process keeps the GPU 60 % busy; pat's holds memory and computes nothing. (The device's
    # own memory reads 3 GiB, sid's alone: the script cannot drop pat's process at the very
    # moment its container goes, and the sample between would give sid the device's whole.)
    write_script(script, [{"uuid": GPU_A, "utilisation": 60, "memory_used": 3 * 2**30, "processes": [
        {"pid": sid.attrs["State"]["Pid"], "sm": 60, "memory": 3 * 2**30},
        {"pid": pat.attrs["State"]["Pid"], "sm": 0, "memory": 2 * 2**30}]}])
    warned, stopped, _ = watch_until_stopped(hub, "pat", timeout=UNDERUSED + 30)
    print(f"pat: warned after {warned} s, stopped after {stopped:.1f} s")
    assert warned is not None and stopped - warned >= WARNING - 3
    assert reasons(hub, "pat") == [("gpus-released", "gpu-underused"), ("server-stopped", "gpu-underused")]
    # as a driver would report it now: pat's process has gone with its container
    write_script(script, [{"uuid": GPU_A, "utilisation": 60, "memory_used": 3 * 2**30, "processes": [
        {"pid": sid.attrs["State"]["Pid"], "sm": 60, "memory": 3 * 2**30}]}])
    assert "" in hub.api("GET", "/users/sid").json()["servers"]
    assert [h["warning"] for h in board(hub, "sid")["you"]["holding"]] == [None]
    # the hub stops (SIGTERM, as systemd or compose stop it) while sid still holds the GPU: the
    # window it has open is recorded at its shutdown, not lost
    stopping = time.time()
    hub.stop()
    usages = [e for e in hub.audit_events() if e["event"] == "gpu-usage"]
    assert {e["user"] for e in usages} == {"pat", "sid"}, hub.log_tail()
    [at_shutdown] = [e for e in usages if e["user"] == "sid" and usage.parse_time(e["__timestamp__"]) >= stopping]
    memory: dict[str, int] = {}
    for e in usages:
        memory[e["user"]] = max([memory.get(e["user"], 0)] + [d["memory_max_bytes"] or 0
                                                              for d in e["utilisation"]["per_device"]])
    assert memory == {"sid": 3 * 2**30, "pat": 2 * 2**30}  # each its own processes' memory, not the device's
    sid_used = at_shutdown["utilisation"]["per_device"][0]
    assert sid_used["mean_percent"] == 60.0 and sid_used["used_seconds"] > 0
