"""The admin commands against the real engine: `hardened-spawner check` names every way a
container started by hand breaks the policy, finds nothing wrong with a server the spawner
started, and the hub logs the same audit at start; `hardened-spawner gpus` reads the labels.

Other test sessions may share the engine: every container made here carries TEST_PREFIX in
its name (and is removed afterwards), and assertions look only at those containers.
"""

import json
import subprocess
import sys
import time

import pytest

from hardened_spawner import labels
from hubdriver import TEST_PREFIX

from .hubtools import UID_BASE

pytestmark = pytest.mark.integration

BASE_IMAGE = "hardened-spawner-base:bookworm"
OWNER = f"{TEST_PREFIX}-cli-owner"
UID = UID_BASE + 9999  # outside every test hub's range (uid_min + 10000 * n + user id)
SINCE = "2026-01-02T03:04:05+00:00"

MANAGED_LABELS = [
    "--label", f"{labels.MANAGED}=true",
    "--label", f"{labels.ROLE}={labels.ROLE_SERVER}",
    "--label", f"{labels.OWNER}={OWNER}",
]  # fmt: skip


def compliant_flags(read_only: bool = True) -> list[str]:
    """`docker run` flags that keep the guard's policy, so each case breaks exactly one rule
    (the first two choose the network)."""
    return [
        "--network", "none",
        "--user", f"{UID}:{UID}",
        "--cap-drop", "ALL",
        *(["--read-only"] if read_only else []),
        "--security-opt", "no-new-privileges:true",
        "--memory", "256m",
        "--cpus", "0.5",
        "--pids-limit", "64",
        "--health-cmd", "true",
        "--log-opt", "max-size=10m",
    ]  # fmt: skip


#: container name suffix -> (`docker run` flags, the exact check ids `check` must report)
CASES = {
    # the engine itself adds `label=disable` to a privileged container's SecurityOpt
    "priv": (compliant_flags() + ["--privileged"], ["privileged", "label-unconfined"]),
    "sock": (
        compliant_flags() + ["-v", "/var/run/docker.sock:/var/run/docker.sock"],
        ["docker-socket"],
    ),
    "writable": (compliant_flags(read_only=False), ["read-only-root"]),
    "sysadmin": (compliant_flags() + ["--cap-add", "SYS_ADMIN"], ["cap-add"]),
    # Docker's default bridge (no --network), with a port published on the host's loopback
    "published": (compliant_flags()[2:] + ["-p", "127.0.0.1::8888"], ["published-ports", "default-bridge"]),
    "restart": (compliant_flags() + ["--restart", "always"], ["restart-policy"]),
    "cgroup": (compliant_flags() + ["--cgroup-parent", f"/{TEST_PREFIX}-cli-cgroup"], ["cgroup-parent"]),
    # allowed by the config file the command finds in its working directory
    "nice": (compliant_flags() + ["--cap-add", "SYS_NICE"], []),
    # the naive recipe, all at once. `--user 1000` (a UID, no group) rather than root: an
    # engine that itself runs without some capability cannot start a privileged root container
    "naive": (
        [
            "--network", "none", "--user", "1000", "--privileged", "--cap-add", "SYS_ADMIN",
            "-v", "/var/run/docker.sock:/var/run/docker.sock",
        ],
        [
            "privileged", "docker-socket", "cap-drop", "cap-add", "user", "read-only-root",
            "no-new-privileges", "label-unconfined", "memory", "cpu", "pids", "healthcheck", "log-cap",
        ],
    ),
}  # fmt: skip


def docker_run(name: str, flags: list[str]) -> None:
    subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)
    subprocess.run(
        ["docker", "run", "-d", "--name", name, *flags, BASE_IMAGE, "sleep", "infinity"],
        capture_output=True,
        check=True,
        timeout=60,
    )


def docker_rm(names) -> None:
    subprocess.run(["docker", "rm", "-f", *names], capture_output=True, check=False, timeout=60)


def cli(*args, cwd, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hardened_spawner", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


def name(case: str) -> str:
    return f"{TEST_PREFIX}-cli-{case}"


@pytest.fixture(scope="module")
def bad_containers(engine):
    names = []
    try:
        for case, (flags, _expected) in CASES.items():
            names.append(name(case))
            docker_run(name(case), MANAGED_LABELS + flags)
        # started by hand with no labels at all: only `check --all` sees it
        names.append(name("byhand"))
        docker_run(name("byhand"), ["--network", "none", "--user", "1000", "--privileged"])
        yield names
    finally:
        docker_rm(names)


@pytest.fixture
def workdir(tmp_path):
    """A directory whose jupyterhub_config.py allows SYS_NICE, as a hub's could."""
    (tmp_path / "jupyterhub_config.py").write_text(
        'c = get_config()  # noqa\nc.HardenedSpawner.cap_add = ["SYS_NICE"]\n'
    )
    return tmp_path


def ours(report: dict) -> dict[str, dict]:
    return {r["name"]: r for r in report["containers"] if r["name"].startswith(f"{TEST_PREFIX}-")}


def test_check_names_each_violation_and_exits_1(bad_containers, workdir):
    done = cli("check", "--json", cwd=workdir)
    assert done.returncode == 1, done.stderr
    found = ours(json.loads(done.stdout))
    for case, (_flags, expected) in CASES.items():
        report = found[name(case)]
        assert [v["check"] for v in report["violations"]] == expected, case
        assert (report["managed"], report["owner"], report["state"]) == (True, OWNER, "running")
        assert report["ok"] is (not expected)
        for violation in report["violations"]:
            assert set(violation) == {"check", "key", "setting", "problem", "fix", "cis"}
    assert found[name("sysadmin")]["violations"][0]["problem"] == (
        "Capabilities outside the allowlist would be added: SYS_ADMIN"
    )
    assert found[name("priv")]["cis_failed"] == ["5.3", "5.5"]
    assert found[name("sock")]["violations"][0]["cis"] == ["5.32"]
    assert found[name("priv")]["user"] == f"{UID}:{UID}"
    assert name("byhand") not in found  # not labelled as managed


def test_check_all_catches_containers_started_by_hand(bad_containers, workdir):
    done = cli("check", "--all", "--json", cwd=workdir)
    assert done.returncode == 1, done.stderr
    byhand = ours(json.loads(done.stdout))[name("byhand")]
    assert byhand["managed"] is False and byhand["owner"] == ""
    assert "privileged" in [v["check"] for v in byhand["violations"]]


def test_check_table_for_one_container(bad_containers, workdir):
    done = cli("check", name("priv"), cwd=workdir)
    assert done.returncode == 1, done.stderr
    assert done.stdout.splitlines()[:7] == [
        f"2 violations  {name('priv')}  owner={OWNER}  user={UID}:{UID}  running",
        "    privileged (HostConfig.Privileged; CIS 5.5): The container would run privileged, "
        "with every capability and every host device",
        "      fix: remove 'privileged'; it is never allowed",
        "    label-unconfined (HostConfig.SecurityOpt; CIS 5.3): SELinux labelling would be "
        "switched off (label=disable)",
        "      fix: remove 'label=disable'",
        "",
        "1 container checked: 0 OK, 1 breaking the policy (2 violations).",
    ]


def test_a_server_the_spawner_started_has_no_violations(hub, tmp_path):
    hub.create_user("clean")
    result = hub.spawn("clean")
    assert result.ready, f"{result.message}\n{hub.log_tail()}"
    config = hub.workdir / "jupyterhub_config.py"
    done = cli("check", "--json", "--config", config, cwd=tmp_path)
    assert done.returncode in (0, 1), done.stderr  # 1 if other containers on the engine break it
    servers = [r for r in json.loads(done.stdout)["containers"]
               if r["owner"] == "clean" and r["name"].startswith(TEST_PREFIX)]
    assert len(servers) == 1, servers
    server = servers[0]
    assert server["violations"] == [] and server["ok"] is True, server["violations"]
    assert server["cis_failed"] == []
    uid = int(server["user"].split(":")[0])
    assert server["user"] == f"{uid}:{uid}" and uid > hub.uid_min
    # named, it is the whole report: exit 0, and the table says OK
    done = cli("check", "--config", config, server["name"], cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[0] == f"OK  {server['name']}  owner=clean  user={uid}:{uid}  running"
    assert done.stderr == ""  # the config was found and read: no fallback warning
    hub.stop_server("clean")


def test_the_hub_logs_the_audit_at_start(bad_containers, hub_factory):
    started = time.monotonic()
    hub = hub_factory()
    summary = "managed server containers at hub start:"
    deadline = time.monotonic() + 60
    while summary not in hub.log_tail(2000) and time.monotonic() < deadline:
        time.sleep(0.5)
    log = hub.log_tail(2000)
    assert summary in log, log
    for case, (_flags, expected) in CASES.items():
        line = f"Container {name(case)} (owner {OWNER}) breaks the security policy: {', '.join(expected)}."
        assert (line in log) is bool(expected), case
    # the hub answered without waiting for the audit
    assert time.monotonic() - started < 60


def test_gpus_shows_who_holds_each_device(engine, tmp_path):
    holder = name("gpuholder")
    (tmp_path / "jupyterhub_config.py").write_text(
        "c.HardenedSpawner.gpu_inventory = [\n"
        f'    {{"uuid": "GPU-{TEST_PREFIX}-0", "name": "Stub GPU"}},\n'
        f'    {{"uuid": "GPU-{TEST_PREFIX}-1", "name": "Stub GPU"}},\n'
        "]\n"
    )
    gpu_labels = [
        "--label", f"{labels.GPUS}=GPU-{TEST_PREFIX}-0",
        "--label", f"{labels.GPUS_SINCE}={SINCE}",
    ]  # fmt: skip
    try:
        docker_run(holder, MANAGED_LABELS + gpu_labels + compliant_flags())
        table = cli("gpus", cwd=tmp_path)
        as_json = cli("gpus", "--json", cwd=tmp_path)
    finally:
        docker_rm([holder])
    assert table.returncode == 0, table.stderr
    # other sessions' servers may hold other GPUs: look at this inventory's two rows
    rows = [line.split() for line in table.stdout.splitlines()]
    assert rows[0] == ["INDEX", "UUID", "NAME", "STATE", "HELD", "BY", "SINCE"]
    assert rows[1] == ["0", f"GPU-{TEST_PREFIX}-0", "Stub", "GPU", "assigned", OWNER, SINCE]
    assert rows[2] == ["1", f"GPU-{TEST_PREFIX}-1", "Stub", "GPU", "free"]
    assert "2 GPUs in the pool: 1 assigned, 1 free." in table.stdout.splitlines()
    found = json.loads(as_json.stdout)
    devices = {d["uuid"]: d for d in found["devices"]}
    assert devices[f"GPU-{TEST_PREFIX}-0"] == {
        "index": "0",
        "uuid": f"GPU-{TEST_PREFIX}-0",
        "name": "Stub GPU",
        "state": "assigned",
        "holders": [{"owner": OWNER, "server_name": "", "since": SINCE}],
    }
    assert devices[f"GPU-{TEST_PREFIX}-1"]["state"] == "free"
    assert (found["total"], found["assigned"], found["free"]) == (2, 1, 1)
