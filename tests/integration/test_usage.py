"""Issue 30: the usage ledger against the engine's own clock, across a SIGKILL of the hub.

One hub, two stub GPUs. uma runs a CPU-only server (which makes her workspace), then holds a
GPU across a SIGKILL and restart of the hub (the trail
then has no gpus-released for her: the restarted hub stops her server before its GPU table is
rebuilt, so server-stopped is the only record of the end); ugo runs a CPU-only server, then a
GPU server that still runs at the report. `hardened-spawner usage`, run as an admin would,
must then say what the engine's container events say, to the second: GPU time from each GPU
container's create to its destroy (the hub assigns the device just before it creates the
container and releases it just after the engine removed it), server time ending at the
destroy. (A user's first spawn makes their workspace between the assignment and the create,
which takes longer: here every GPU spawn is a user's second.) Server time starts when the
server answered (server-started), which is after the container started by the seconds the
server takes to come up; that lag is bounded here.
"""

import json
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest
import requests

from hardened_spawner import labels, usage_sources
from hubdriver import TEST_PREFIX

from .hubtools import Browser

DEVICES = ["GPU-00000000-0000-0000-0000-0000000005a1", "GPU-00000000-0000-0000-0000-0000000005a2"]
CONFIG = f"""
c.HardenedSpawner.gpu_inventory = {DEVICES!r}
c.HardenedSpawner.gpu_default_per_user = 0
c.HardenedSpawner.gpu_max_per_user = 1
c.HardenedSpawner.mem_limit = "1G"
__import__("hardened_spawner.gpu_pages").gpu_pages.enable(c)
# the board without its culler: the culler's first call at the hub's start would rebuild the
# GPU table, and uma's stop after the restart would then write gpus-released, which is the
# end of a holding this test wants to find missing
c.JupyterHub.services = [s for s in c.JupyterHub.services if s["name"] != "gpu-culler"]
c.JupyterHub.load_roles = [r for r in c.JupyterHub.load_roles if r["name"] != "gpu-culler"]
"""
#: the longest a server here takes from its container's start to answering the hub
READY_WITHIN = 20.0


@pytest.fixture(scope="module")
def usage_hub(hub_factory):
    return hub_factory(CONFIG)


def iso(when: float) -> str:
    return datetime.fromtimestamp(when, timezone.utc).isoformat().replace("+00:00", "Z")


def engine_intervals(engine, users, since: float, until: float) -> list[dict]:
    """Each server container of ``users`` from the engine's own events: created, started,
    destroyed (``until`` if it still runs) and the devices its labels name."""
    name_of = {f"{TEST_PREFIX}-{u}--": u for u in users}
    found: dict[str, dict] = {}
    stream = engine.api.events(since=int(since) - 1, until=int(time.time()) + 1, decode=True,
                               filters={"type": "container", "event": ["create", "start", "destroy"]})
    for event in stream:
        attributes = event["Actor"]["Attributes"]
        user = name_of.get(attributes.get("name", ""))
        if user is None or event["timeNano"] / 1e9 < since:
            continue
        when = event["timeNano"] / 1e9
        if event["Action"] == "create":
            found[event["Actor"]["ID"]] = {
                "user": user, "create": when, "start": None, "destroy": None,
                "devices": [d for d in attributes.get(labels.GPUS, "").split(",") if d]}
        elif event["Actor"]["ID"] in found:
            found[event["Actor"]["ID"]][event["Action"]] = when
    for container in found.values():
        container["end"] = min(container["destroy"] or until, until)
    return list(found.values())


def usage_report(hub, since: float, until: float, by: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "hardened_spawner", "usage", "-f", str(hub.workdir / "jupyterhub_config.py"),
         "--since", iso(since), "--until", iso(until), "--by", by, "--json"],
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_usage_equals_the_engines_own_times_across_a_sigkill(usage_hub, engine):
    hub = usage_hub
    started = time.time()
    for user in ("uma", "ugo"):
        hub.create_user(user)
    assert hub.spawn("uma", {"gpus": 0}).ready
    hub.stop_server("uma")
    assert hub.spawn("uma", {"gpus": 1}).ready
    assert hub.spawn("ugo", {"gpus": 0}).ready
    time.sleep(2)
    hub.stop_server("ugo")
    mark = len(hub.audit_events())

    hub.kill()  # uma's server and GPU outlive the hub; its assignment is open in the trail
    hub.start()
    time.sleep(1)
    hub.stop_server("uma")
    assert hub.spawn("ugo", {"gpus": 1}).ready
    time.sleep(1)
    until = time.time()

    after = [(e["event"], e["user"]) for e in hub.audit_events()[mark:]]
    # the restarted hub read uma's server into its GPU table before stopping it: the release is recorded
    assert after[:2] == [("gpus-released", "uma"), ("server-stopped", "uma")], after
    running = engine.containers.get(f"{TEST_PREFIX}-ugo--")
    assert running.labels[labels.HUB] == usage_sources.hub_id_for_url(f"sqlite:///{hub.workdir}/hub.sqlite")

    by_user = usage_report(hub, started, until, "user")
    by_device = usage_report(hub, started, until, "device")
    containers = engine_intervals(engine, ("uma", "ugo"), started, until)
    assert len(containers) == 4, containers

    reported = {row["user"]: row for row in by_user["rows"]}
    for user in ("uma", "ugo"):
        mine = [c for c in containers if c["user"] == user]
        gpu = sum((c["end"] - c["create"]) * len(c["devices"]) for c in mine)
        server = sum(c["end"] - c["start"] for c in mine)
        print(f"{user}: GPU {reported[user]['gpu_seconds']:.3f} s (engine {gpu:.3f} s), "
              f"server {reported[user]['server_seconds']:.3f} s (engine {server:.3f} s)")
        assert reported[user]["gpu_seconds"] == pytest.approx(gpu, abs=1.0)
        assert 0 <= server - reported[user]["server_seconds"] <= READY_WITHIN * len(mine)
        assert not reported[user]["estimated"]
    devices = {row["device"]: row["gpu_seconds"] for row in by_device["rows"]}
    for device in {d for c in containers for d in c["devices"]}:
        engine_seconds = sum(c["end"] - c["create"] for c in containers if device in c["devices"])
        assert devices[device] == pytest.approx(engine_seconds, abs=1.0)

    # the GPU board: a user sees their own month, an admin (this token) everyone's; ugo's
    # GPU still runs, so the board (asked later) has at least what the report had at `until`
    if datetime.fromtimestamp(started, timezone.utc).month == datetime.now(timezone.utc).month:
        asked = time.time()
        own = requests.get(f"{hub.url}/hub/api/gpus", headers={"Authorization": f"token {hub.user_token('ugo')}"},
                           timeout=30).json()["usage"]
        everyone = hub.api("GET", "/gpus").json()["usage"]
        assert own["users"] == [] and own["available"]
        seen = {u["user"]: u for u in everyone["users"]}
        for user, row in reported.items():
            assert seen[user]["server_seconds"] >= round(row["server_seconds"]) - 1
            grows = (time.time() - until + 1) if user == "ugo" else 1  # only ugo's still runs
            assert -1 <= seen[user]["gpu_seconds"] - row["gpu_seconds"] <= grows + (time.time() - asked)
        assert own["you"]["gpu_seconds"] == pytest.approx(seen["ugo"]["gpu_seconds"], abs=time.time() - asked + 1)
        browser = Browser(hub.url)  # the page, as uma sees it (the dummy authenticator takes any password)
        assert browser.login("uma", "any").ok
        page = browser.session.get(f"{hub.url}/hub/gpus", timeout=30)
        assert page.status_code == 200 and 'id="gpu-usage-you"' in page.text, page.text[-2000:]
        assert "gpu-usage-table" not in page.text  # every user's is for admins
    hub.stop_server("ugo")
