"""The admin commands without an engine: reports from literal `docker inspect` and `docker ps`
dicts, the table and JSON outputs, exit statuses, argument parsing, and the hub-start audit."""

import copy
import io
import json
import logging
import subprocess
import sys
import threading

import docker.errors
import pytest
from fake_engine import VolumeTable
from image_exports import SINGLEUSER_IMAGE, export, f

from hardened_spawner import cli
from hardened_spawner.core.gpus import GpuAllocator, GpuDevice, GpuPolicy, GpuSummary
from hardened_spawner.docker import checks, hub_start, inspection
from hardened_spawner.docker.inspection import (
    CIS_ITEMS,
    ContainerReport,
    Finding,
    GpuHolder,
    GpuReport,
    GpuRow,
)
from hardened_spawner.docker.spawner import HardenedSpawner

MOUNTPOINT = "/var/lib/docker/volumes/hardened-spawner-identity/_data"
P = "org.jupyter.hardened-spawner."
CIS_LINE = (
    "The checks cover CIS Docker Benchmark v1.6.0 items 4.1, 5.2, 5.3, 5.4, 5.5, 5.6, 5.8, 5.9, "
    "5.10, 5.11, 5.13, 5.14, 5.15, 5.16, 5.17, 5.18, 5.20, 5.21, 5.22, 5.25, 5.26, 5.27, 5.29, "
    "5.30, 5.31, 5.32."
)


def server_labels(owner, uid, server_name="", gpus="", since=""):
    return {
        P + "managed": "true",
        P + "role": "server",
        P + "owner": owner,
        P + "server-name": server_name,
        P + "uid": str(uid),
        P + "gid": str(uid),
        P + "gpus": gpus,
        P + "gpus-since": since,
    }


#: What `docker inspect` shows for a server HardenedSpawner started (trimmed to what matters).
GOOD = {
    "Id": "a" * 64,
    "Name": "/jupyter-alice",
    "State": {"Status": "running"},
    "Config": {
        "User": "200001:200001",
        "Cmd": ["jupyterhub-singleuser"],
        "Entrypoint": None,
        "Image": "hardened-spawner-singleuser:latest",
        "Labels": server_labels("alice", 200001),
        "Healthcheck": {"Test": ["CMD", "python3", "-c", "print()"], "Interval": 30_000_000_000},
    },
    "HostConfig": {
        "Binds": [
            f"{MOUNTPOINT}/200001/passwd:/etc/passwd:ro",
            f"{MOUNTPOINT}/200001/group:/etc/group:ro",
        ],
        "Mounts": [
            {
                "Type": "volume",
                "Source": "jupyterhub-workspace-alice",
                "Target": "/home/alice",
                "VolumeOptions": {"NoCopy": True},
            }
        ],
        "NetworkMode": "hardened-spawner-users",
        "PidMode": "",
        "IpcMode": "private",
        "UTSMode": "",
        "UsernsMode": "",
        "Privileged": False,
        "CapDrop": ["ALL"],
        "CapAdd": None,
        "ReadonlyRootfs": True,
        "SecurityOpt": ["no-new-privileges:true"],
        "Memory": 2147483648,
        "NanoCpus": 2000000000,
        "CpuQuota": 0,
        "PidsLimit": 1024,
        "Devices": None,
        "DeviceRequests": [],
        "GroupAdd": None,
        "VolumesFrom": None,
        "OomKillDisable": False,
        "LogConfig": {"Type": "json-file", "Config": {"max-size": "10485760", "max-file": "3"}},
    },
}


def inspect_of(name, owner="bob", uid=200002, config=None, host_config=None, labels=None):
    """GOOD for another user, with some settings changed."""
    found = copy.deepcopy(GOOD)
    found["Id"] = name.ljust(64, "0")
    found["Name"] = "/" + name
    found["Config"]["User"] = f"{uid}:{uid}"
    found["Config"]["Labels"] = server_labels(owner, uid) if labels is None else labels
    found["HostConfig"]["Binds"] = [
        f"{MOUNTPOINT}/{uid}/passwd:/etc/passwd:ro",
        f"{MOUNTPOINT}/{uid}/group:/etc/group:ro",
    ]
    found["Config"].update(config or {})
    found["HostConfig"].update(host_config or {})
    return found


#: `docker run --privileged -v /var/run/docker.sock:/var/run/docker.sock --cap-add SYS_ADMIN
#: -p 8888:8888` labelled as a managed server: the naive recipe, as the engine reports it.
NAIVE = {
    "Id": "b" * 64,
    "Name": "/jupyter-mallory",
    "State": {"Status": "running"},
    "Config": {
        "User": "",
        "Cmd": ["sleep", "infinity"],
        "Entrypoint": None,
        "Image": "hardened-spawner-base:bookworm",
        "Labels": server_labels("mallory", 200003),
        "Healthcheck": None,
    },
    "HostConfig": {
        "Binds": ["/var/run/docker.sock:/var/run/docker.sock"],
        "NetworkMode": "default",
        "PortBindings": {"8888/tcp": [{"HostIp": "", "HostPort": "8888"}]},
        "Privileged": True,
        "CapAdd": ["CAP_SYS_ADMIN"],
        "CapDrop": None,
        "ReadonlyRootfs": False,
        "SecurityOpt": ["label=disable"],
        "Memory": 0,
        "NanoCpus": 0,
        "PidsLimit": None,
    },
}

NAIVE_CHECKS = [
    "privileged",
    "docker-socket",
    "published-ports",
    "default-bridge",
    "cap-drop",
    "cap-add",
    "user",
    "read-only-root",
    "no-new-privileges",
    "label-unconfined",
    "memory",
    "cpu",
    "pids",
    "healthcheck",
    "log-cap",
]


def report(inspect, cap_add=frozenset(), mountpoint=MOUNTPOINT):
    return inspection.report_container(inspect, cap_add, mountpoint)


# --- reports from inspect dicts ---------------------------------------------


def test_a_container_the_spawner_started_has_no_violations():
    assert report(GOOD) == ContainerReport(
        id="a" * 64,
        name="jupyter-alice",
        state="running",
        managed=True,
        owner="alice",
        server_name="",
        user="200001:200001",
        image="hardened-spawner-singleuser:latest",
        findings=(),
    )
    assert report(GOOD).ok
    assert report(GOOD).cis_failed == []
    assert report(GOOD).cis_passed == list(CIS_ITEMS)


def test_the_naive_recipe_breaks_the_policy_in_every_way_the_guard_knows():
    found = report(NAIVE)
    assert [f.check for f in found.findings] == NAIVE_CHECKS
    assert found.findings[0] == Finding(
        check="privileged",
        key="HostConfig.Privileged",
        setting="extra_host_config['privileged']",
        problem="The container would run privileged, with every capability and every host device",
        fix="remove 'privileged'; it is never allowed",
        cis=("5.5",),
    )
    assert found.findings[1].problem == (
        "The engine socket /var/run/docker.sock would be mounted; whoever holds it is root on the host"
    )
    assert found.cis_failed == ["4.1", "5.3", "5.4", "5.5", "5.8", "5.9", "5.11", "5.13", "5.14", "5.26",
                                "5.27", "5.29", "5.30", "5.32"]
    assert "5.5" not in found.cis_passed and "5.10" in found.cis_passed


def test_only_the_containers_own_uid_may_bind_its_account_files():
    # bob's container mounting alice's generated account files
    stolen = inspect_of("jupyter-bob")
    stolen["HostConfig"]["Binds"] = GOOD["HostConfig"]["Binds"]
    assert [(f.check, f.problem) for f in report(stolen).findings] == [
        ("sensitive-mount", f"The host path {MOUNTPOINT}/200001/passwd would be mounted into a user's container"),
        ("sensitive-mount", f"The host path {MOUNTPOINT}/200001/group would be mounted into a user's container"),
    ]
    # and before any spawn there is no identity volume, so no bind is expected
    assert [f.check for f in report(GOOD, mountpoint=None).findings] == ["sensitive-mount"] * 2


def test_the_uid_label_stands_in_when_the_user_is_not_numeric():
    assert inspection.guard_policy_for(
        inspect_of("x", config={"User": "jovyan"}), frozenset(), MOUNTPOINT
    ).allowed_bind_sources == {f"{MOUNTPOINT}/200002/passwd", f"{MOUNTPOINT}/200002/group"}
    unlabelled = inspect_of("x", config={"User": ""}, labels={})
    assert inspection.guard_policy_for(unlabelled, frozenset(), MOUNTPOINT).allowed_bind_sources == set()


def test_the_capability_allowlist_comes_from_the_config():
    nice = inspect_of("jupyter-bob", host_config={"CapAdd": ["CAP_SYS_NICE"]})
    assert [f.check for f in report(nice).findings] == ["cap-add"]
    assert report(nice, cap_add=frozenset({"SYS_NICE"})).ok


@pytest.mark.parametrize(
    "key, mode, cis",
    [
        ("NetworkMode", "host", ("5.10",)),
        ("PidMode", "host", ("5.16",)),
        ("IpcMode", "host", ("5.17",)),
        ("UTSMode", "host", ("5.21",)),
        ("UsernsMode", "host", ("5.31",)),
        # another container's namespace breaks our policy but is no CIS item
        ("NetworkMode", "container:abc", ()),
        ("PidMode", "container:abc", ()),
    ],
)
def test_each_shared_namespace_names_its_own_cis_item(key, mode, cis):
    found = report(inspect_of("x", host_config={key: mode})).findings
    assert [(f.check, f.key, f.cis) for f in found] == [("host-namespace", f"HostConfig.{key}", cis)]


@pytest.mark.parametrize(
    "host_config, check, cis",
    [
        ({"SecurityOpt": ["no-new-privileges:true", "seccomp=unconfined"]}, "seccomp-unconfined", ("5.22",)),
        ({"SecurityOpt": ["no-new-privileges:true", "apparmor=unconfined"]}, "apparmor-unconfined", ("5.2",)),
        ({"Devices": [{"PathOnHost": "/dev/fuse"}]}, "devices", ("5.18",)),
        ({"Binds": ["/etc:/host-etc:ro"]}, "sensitive-mount", ("5.6",)),
        ({"VolumesFrom": ["jupyter-alice"]}, "volumes-from", ()),
        ({"GroupAdd": ["docker"]}, "group-add", ()),
        ({"OomKillDisable": True}, "oom-kill-disable", ()),
    ],
)
def test_cis_items_of_other_checks(host_config, check, cis):
    found = report(inspect_of("x", host_config=host_config)).findings
    assert [(f.check, f.cis) for f in found] == [(check, cis)]


def test_exit_status():
    assert inspection.check_exit_status([]) == 0
    assert inspection.check_exit_status([report(GOOD)]) == 0
    assert inspection.check_exit_status([report(GOOD), report(NAIVE)]) == 1


# --- outputs --------------------------------------------------------------


def test_table_for_people():
    priv = inspect_of("hscli-priv", owner="eve", uid=200004, host_config={"Privileged": True})
    named = inspect_of("jupyter-bob--gpu", labels=server_labels("bob", 200002, server_name="gpu"))
    by_hand = inspect_of("by-hand", labels={}, host_config={"ReadonlyRootfs": False, "Binds": None})
    by_hand["Config"]["User"] = ""
    by_hand["State"]["Status"] = "exited"
    reports = [report(r) for r in (GOOD, priv, named, by_hand)]
    assert inspection.check_as_table(reports, everything=True) == f"""\
OK            jupyter-alice     owner=alice          user=200001:200001    running
1 violation   hscli-priv        owner=eve            user=200004:200004    running
    privileged (HostConfig.Privileged; CIS 5.5): The container would run privileged, with every capability and every host device
      fix: remove 'privileged'; it is never allowed
OK            jupyter-bob--gpu  owner=bob/gpu        user=200002:200002    running
2 violations  by-hand           owner=(not managed)  user=(image default)  exited
    user (Config.User; CIS 4.1): The server would run as 'the image default user', not as a dedicated UID:GID >= 1000
      fix: do not override 'user'; the spawner sets the user's own UID:GID
    read-only-root (HostConfig.ReadonlyRootfs; CIS 5.13): The root filesystem would be writable
      fix: keep read_only=True; writable places are the workspace and the tmpfs mounts

4 containers checked: 2 OK, 2 breaking the policy (3 violations).
{CIS_LINE}
"""


def test_table_when_all_is_well_or_nothing_is_there():
    assert inspection.check_as_table([report(GOOD)]) == f"""\
OK  jupyter-alice  owner=alice  user=200001:200001  running

1 container checked: 1 OK, 0 breaking the policy.
{CIS_LINE}
"""
    assert inspection.check_as_table([]) == "No managed server containers found.\n"
    assert inspection.check_as_table([], everything=True) == "No containers found.\n"


def test_json_for_machines_has_stable_keys():
    priv = inspect_of("hscli-priv", owner="eve", uid=200004, host_config={"Privileged": True})
    assert json.loads(inspection.check_as_json([report(GOOD), report(priv)]))["containers"] == [
        {
            "id": "a" * 64,
            "name": "jupyter-alice",
            "state": "running",
            "managed": True,
            "owner": "alice",
            "server_name": "",
            "user": "200001:200001",
            "image": "hardened-spawner-singleuser:latest",
            "ok": True,
            "violations": [],
            "cis_passed": list(CIS_ITEMS),
            "cis_failed": [],
        },
        {
            "id": "hscli-priv".ljust(64, "0"),
            "name": "hscli-priv",
            "state": "running",
            "managed": True,
            "owner": "eve",
            "server_name": "",
            "user": "200004:200004",
            "image": "hardened-spawner-singleuser:latest",
            "ok": False,
            "violations": [
                {
                    "check": "privileged",
                    "key": "HostConfig.Privileged",
                    "setting": "extra_host_config['privileged']",
                    "problem": "The container would run privileged, with every capability and every host device",
                    "fix": "remove 'privileged'; it is never allowed",
                    "cis": ["5.5"],
                }
            ],
            "cis_passed": [i for i in CIS_ITEMS if i != "5.5"],
            "cis_failed": ["5.5"],
        },
    ]
    assert json.loads(inspection.check_as_json([])) == {"containers": [], "network_isolation": None}


NETWORK_OK = inspection.NetworkReport("hardened-spawner-users", "iptables", ())
NETWORK_MISSING = inspection.NetworkReport(
    "hardened-spawner-users", "probe", ("no firewall marker", "the canary answered"),
    "as root on the Docker host: hardened-spawner firewall apply --network hardened-spawner-users",
)


def test_network_isolation_in_the_report():
    assert json.loads(inspection.check_as_json([report(GOOD)], NETWORK_MISSING))["network_isolation"] == {
        "network": "hardened-spawner-users",
        "checked_by": "probe",
        "ok": False,
        "problems": ["no firewall marker", "the canary answered"],
        "fix": "as root on the Docker host: hardened-spawner firewall apply --network hardened-spawner-users",
    }
    assert inspection.network_as_text(NETWORK_OK) == (
        "Network isolation of hardened-spawner-users: in place (checked by iptables).\n"
    )
    assert inspection.network_as_text(NETWORK_MISSING) == (
        "Network isolation of hardened-spawner-users: NOT in place (checked by probe):\n"
        "    no firewall marker\n"
        "    the canary answered\n"
        "      fix: as root on the Docker host: hardened-spawner firewall apply --network "
        "hardened-spawner-users\n"
    )
    # missing isolation fails the check even when every container is fine
    assert inspection.check_exit_status([report(GOOD)], NETWORK_OK) == 0
    assert inspection.check_exit_status([report(GOOD)], NETWORK_MISSING) == 1
    assert inspection.check_exit_status([report(GOOD)]) == 0


def test_hub_start_log_lines():
    assert inspection.hub_start_log_lines([report(GOOD), report(NAIVE)]) == [
        (
            logging.WARNING,
            "Container jupyter-mallory (owner mallory) breaks the security policy: "
            + ", ".join(NAIVE_CHECKS)
            + ". Run `hardened-spawner check` for the details and fixes.",
        ),
        (logging.INFO, "Checked 2 managed server containers at hub start: 1 OK, 1 breaking the security policy."),
    ]
    assert inspection.hub_start_log_lines([]) == [
        (logging.INFO, "Checked 0 managed server containers at hub start: 0 OK, 0 breaking the security policy.")
    ]


# --- gpus -----------------------------------------------------------------

SINCE = "2026-11-29T09:15:00+00:00"
LATER = "2026-11-29T10:00:00+00:00"
INVENTORY = (
    GpuDevice("GPU-0", "0", "NVIDIA H200"),
    GpuDevice("GPU-1", "1", "NVIDIA H200"),
    GpuDevice("GPU-2", "2", "NVIDIA H200"),
    GpuDevice("MIG-2a", "2:0", "NVIDIA H200 MIG 1g.18gb", parent_uuid="GPU-2"),
    GpuDevice("GPU-3", "3", "NVIDIA H200"),
)


def ps(owner, gpus, since, server_name=""):
    """A running server as `docker ps` lists it."""
    return {"Id": owner, "Created": 0, "Labels": server_labels(owner, 1, server_name, gpus, since)}


def test_gpu_report_shows_holders_and_totals():
    allocator = GpuAllocator(INVENTORY, GpuPolicy(pool=("GPU-0", "GPU-1", "GPU-2", "MIG-2a")))
    containers = [
        ps("alice", "GPU-0", SINCE),
        ps("bob", "MIG-2a", LATER, server_name="big"),
        ps("carol", "", ""),  # no GPUs
        ps("dave", "GPU-gone", SINCE),  # a device the config no longer lists
    ]
    found = inspection.gpu_report(allocator, containers)
    assert found == GpuReport(
        rows=(
            GpuRow("0", "GPU-0", "NVIDIA H200", "assigned", (GpuHolder("alice", "", SINCE),)),
            GpuRow("1", "GPU-1", "NVIDIA H200", "free", ()),
            GpuRow("2", "GPU-2", "NVIDIA H200", "blocked", ()),
            GpuRow("2:0", "MIG-2a", "NVIDIA H200 MIG 1g.18gb", "assigned", (GpuHolder("bob", "big", LATER),)),
            GpuRow("3", "GPU-3", "NVIDIA H200", "outside pool", ()),
            GpuRow("?", "GPU-gone", "", "not in inventory", (GpuHolder("dave", "", SINCE),)),
        ),
        summary=GpuSummary(total=4, assigned=2, free=1),
        warnings=("GPU-gone is held by dave but is not in the GPU inventory; it stays held until that server stops.",),
    )
    assert inspection.gpus_as_table(found) == f"""\
INDEX  UUID      NAME                     STATE             HELD BY  SINCE
0      GPU-0     NVIDIA H200              assigned          alice    {SINCE}
1      GPU-1     NVIDIA H200              free
2      GPU-2     NVIDIA H200              blocked
2:0    MIG-2a    NVIDIA H200 MIG 1g.18gb  assigned          bob/big  {LATER}
3      GPU-3     NVIDIA H200              outside pool
?      GPU-gone                           not in inventory  dave     {SINCE}

4 GPUs in the pool: 2 assigned, 1 free.
warning: GPU-gone is held by dave but is not in the GPU inventory; it stays held until that server stops.
"""


def test_shared_gpus_list_every_holder():
    allocator = GpuAllocator(INVENTORY[:1], GpuPolicy(max_users_per_gpu=2))
    found = inspection.gpu_report(allocator, [ps("bob", "GPU-0", LATER), ps("alice", "GPU-0", SINCE)])
    assert json.loads(inspection.gpus_as_json(found)) == {
        "devices": [
            {
                "index": "0",
                "uuid": "GPU-0",
                "name": "NVIDIA H200",
                "state": "assigned",
                "holders": [
                    {"owner": "alice", "server_name": "", "since": SINCE},
                    {"owner": "bob", "server_name": "", "since": LATER},
                ],
            }
        ],
        "total": 1,
        "assigned": 1,
        "free": 0,
        "warnings": [],
    }
    assert inspection.gpus_as_table(found) == f"""\
INDEX  UUID   NAME         STATE     HELD BY  SINCE
0      GPU-0  NVIDIA H200  assigned  alice    {SINCE}
                                     bob      {LATER}

1 GPU in the pool: 1 assigned, 0 free.
"""


def test_no_inventory():
    found = inspection.gpu_report(GpuAllocator((), GpuPolicy()), [])
    assert inspection.gpus_as_table(found) == (
        "No GPUs in the inventory (HardenedSpawner.gpu_inventory).\n\n0 GPUs in the pool: 0 assigned, 0 free.\n"
    )


# --- the plain functions over a stand-in engine ------------------------------


class FakeEngine(VolumeTable):
    """The docker-py APIClient methods the commands use, answering from literal dicts (the
    volumes: `fake_engine.VolumeTable`)."""

    def __init__(self, containers, identity_volume=True):
        self.inspects = {c["Id"]: c for c in containers}
        self.by_name = {c["Name"].lstrip("/"): c for c in containers}
        self.identity_volume = identity_volume
        self.calls = []
        self.volume_state: dict[str, dict] = {}

    def containers(self, all=False, filters=None):
        self.calls.append(("containers", all, filters))
        found = list(self.inspects.values())
        if filters:
            wanted = dict(f.split("=", 1) for f in filters["label"])
            found = [
                c for c in found
                if all_items(wanted, c["Config"]["Labels"])
                and (all or c["State"]["Status"] == "running")
            ]
        return [{"Id": c["Id"], "Created": 0, "Labels": c["Config"]["Labels"], "Image": c["Config"]["Image"],
                 "ImageID": IMAGES[c["Config"]["Image"]]["Id"]} for c in found]

    # the images the containers run, and admission's records of them (volume labels)

    def inspect_image(self, name):
        by_id = {i["Id"]: i for i in IMAGES.values()}
        if name not in IMAGES and name not in by_id:
            raise docker.errors.ImageNotFound(name)
        return IMAGES.get(name) or by_id[name]

    def get_image(self, name, chunk_size=None):
        self.calls.append(("get_image", name))
        return iter([EXPORTS[self.inspect_image(name)["Id"]]])

    def inspect_container(self, container):
        found = self.inspects.get(container) or self.by_name.get(container)
        if found is None:
            raise docker.errors.NotFound(f"No such container: {container}")
        return found

    def inspect_volume(self, name):
        if name in self.volume_state or name != "hardened-spawner-identity":
            return super().inspect_volume(name)
            raise docker.errors.NotFound(name)
        if not self.identity_volume:
            raise docker.errors.NotFound(f"get {name}: no such volume")
        return {"Name": name, "Mountpoint": MOUNTPOINT}


#: the project's image (admitted) and a Debian base with its setuid files (refused)
IMAGES = {
    "hardened-spawner-singleuser:latest": {"Id": "sha256:" + "1" * 64, "Config": {"Cmd": ["jupyterhub-singleuser"]}},
    "hardened-spawner-base:bookworm": {"Id": "sha256:" + "2" * 64, "Config": {"Cmd": ["jupyterhub-singleuser"]}},
}
EXPORTS = {
    "sha256:" + "1" * 64: export(SINGLEUSER_IMAGE),
    "sha256:" + "2" * 64: export([SINGLEUSER_IMAGE[0] + [f("usr/bin/su", 0o4755)]]),
}


def all_items(wanted, labels):
    return all(labels.get(k) == v for k, v in wanted.items())


BY_HAND = copy.deepcopy(NAIVE)
BY_HAND.update(Id="c" * 64, Name="/by-hand")
BY_HAND["Config"]["Labels"] = {}
HELPER = inspect_of("helper", labels={P + "managed": "true", P + "role": "helper"})


def test_audit_finds_the_managed_servers_or_everything():
    engine = FakeEngine([NAIVE, GOOD, BY_HAND, HELPER])
    managed = cli.audit_containers(engine, frozenset())
    assert [r.name for r in managed] == ["jupyter-alice", "jupyter-mallory"]
    assert engine.calls == [("containers", True, cli.MANAGED_SERVERS)]
    assert cli.MANAGED_SERVERS == {
        "label": ["org.jupyter.hardened-spawner.managed=true", "org.jupyter.hardened-spawner.role=server"]
    }
    every = cli.audit_containers(engine, frozenset(), everything=True)
    assert [r.name for r in every] == ["by-hand", "helper", "jupyter-alice", "jupyter-mallory"]
    assert engine.calls[-1] == ("containers", True, None)


def test_audit_of_named_containers():
    engine = FakeEngine([NAIVE, GOOD])
    assert [r.name for r in cli.audit_containers(engine, frozenset(), names=("jupyter-alice",))] == [
        "jupyter-alice"
    ]
    assert engine.calls == []
    with pytest.raises(cli.CannotCheck, match="^There is no container nobody.$"):
        cli.audit_containers(engine, frozenset(), names=("nobody",))


def test_a_container_removed_while_auditing_is_skipped():
    engine = FakeEngine([GOOD, NAIVE])
    listed = engine.containers(all=True, filters=cli.MANAGED_SERVERS)
    engine.containers = lambda **kwargs: listed
    del engine.inspects[NAIVE["Id"]]
    assert [r.name for r in cli.audit_containers(engine, frozenset())] == ["jupyter-alice"]


def test_before_any_spawn_there_is_no_identity_volume():
    assert checks.identity_mountpoint(FakeEngine([], identity_volume=False)) is None
    assert checks.identity_mountpoint(FakeEngine([])) == MOUNTPOINT


def test_run_check_prints_and_returns_the_exit_status():
    out = io.StringIO()
    assert cli.run_check(FakeEngine([GOOD]), frozenset(), out=out) == 0
    assert out.getvalue().startswith("OK  jupyter-alice  owner=alice")
    out = io.StringIO()
    assert cli.run_check(FakeEngine([GOOD]), frozenset(), network=NETWORK_MISSING, out=out) == 1
    assert out.getvalue().endswith(inspection.network_as_text(NETWORK_MISSING))
    out = io.StringIO()
    assert cli.run_check(FakeEngine([GOOD, NAIVE]), frozenset(), as_json=True, out=out) == 1
    assert [(r["name"], len(r["violations"])) for r in json.loads(out.getvalue())["containers"]] == [
        ("jupyter-alice", 0),
        ("jupyter-mallory", len(NAIVE_CHECKS)),
    ]


def test_run_gpus_reads_the_running_servers():
    engine = FakeEngine([inspect_of("jupyter-bob", labels=server_labels("bob", 200002, gpus="GPU-1", since=SINCE))])
    out = io.StringIO()
    allocator = GpuAllocator(INVENTORY[:2], GpuPolicy())
    assert cli.run_gpus(engine, allocator, as_json=True, out=out) == 0
    assert engine.calls == [("containers", False, cli.MANAGED_SERVERS)]
    found = json.loads(out.getvalue())
    assert [(d["uuid"], d["state"], d["holders"]) for d in found["devices"]] == [
        ("GPU-0", "free", []),
        ("GPU-1", "assigned", [{"owner": "bob", "server_name": "", "since": SINCE}]),
    ]
    assert (found["total"], found["assigned"], found["free"]) == (2, 1, 1)


# --- the command line --------------------------------------------------------


@pytest.fixture
def engine(monkeypatch):
    """main() talks to this stand-in instead of the spawner's docker client."""
    fake = FakeEngine([GOOD, NAIVE, BY_HAND])
    monkeypatch.setattr(cli, "engine_client", lambda spawner: fake)
    monkeypatch.setattr(checks, "engine_client", lambda spawner: fake)  # the hub-start audit's
    monkeypatch.setattr(cli, "network_report", lambda client, spawner, config: NETWORK_OK)
    return fake


@pytest.fixture
def config_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_check_table_and_exit_1(engine, config_dir, capsys):
    assert cli.main(["check"]) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "OK             jupyter-alice    owner=alice    user=200001:200001    running"
    assert out.splitlines()[1] == "15 violations  jupyter-mallory  owner=mallory  user=(image default)  running"
    assert "by-hand" not in out
    # mallory's image would not be admitted today: its setuid su is named
    assert out.splitlines()[-3:] == [
        "Images of running servers that would not be admitted today: 1 of 2",
        "  hardened-spawner-base:bookworm (sha256:222222222222)",
        "      special-files: the image has 1 setuid, setgid or file-capability file(s), which hand whoever "
        "runs them more than the user has: /usr/bin/su (setuid, owner 0:0, mode 4755)",
    ]


def test_check_of_admitted_images_only_says_so(engine, config_dir, capsys):
    del engine.inspects[NAIVE["Id"]]
    assert cli.main(["check"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "Images of running servers: 1, all would be admitted today."


def test_check_json_all(engine, config_dir, capsys):
    assert cli.main(["check", "--json", "--all"]) == 1
    found = json.loads(capsys.readouterr().out)
    assert found["network_isolation"]["ok"] is True
    assert [(i["image"], i["admitted"], i["violations"]) for i in found["images"]] == [
        ("hardened-spawner-base:bookworm", False, ["special-files"]),
        ("hardened-spawner-singleuser:latest", True, []),
    ]
    assert [(r["name"], r["managed"], r["ok"]) for r in found["containers"]] == [
        ("by-hand", False, False),
        ("jupyter-alice", True, True),
        ("jupyter-mallory", True, False),
    ]


def test_check_named_container_exit_0(engine, config_dir, capsys):
    assert cli.main(["check", "jupyter-alice"]) == 0
    assert capsys.readouterr().out.startswith("OK  jupyter-alice")


def test_config_file_supplies_the_capability_allowlist(engine, config_dir, capsys):
    nice = inspect_of("jupyter-nice", host_config={"CapAdd": ["CAP_SYS_NICE"]})
    engine.inspects[nice["Id"]] = nice
    engine.by_name["jupyter-nice"] = nice
    assert cli.main(["check", "jupyter-nice"]) == 1
    assert "No jupyterhub_config.py here and no --config" in capsys.readouterr().err
    # --config PATH
    elsewhere = config_dir / "hub" / "hub_config.py"
    elsewhere.parent.mkdir()
    elsewhere.write_text('c = get_config()  # noqa\nc.HardenedSpawner.cap_add = ["sys_nice"]\n')
    assert cli.main(["check", "--config", str(elsewhere), "jupyter-nice"]) == 0
    # jupyterhub_config.py in the current directory by default
    (config_dir / "jupyterhub_config.py").write_text('c.HardenedSpawner.cap_add = ["SYS_NICE"]\n')
    capsys.readouterr()
    assert cli.main(["check", "jupyter-nice"]) == 0
    assert "no --config" not in capsys.readouterr().err


def test_a_missing_or_bad_config_exits_2(engine, config_dir, capsys):
    assert cli.main(["check", "--config", "nowhere.py"]) == 2
    assert capsys.readouterr().err == "hardened-spawner check: The config file nowhere.py does not exist.\n"
    (config_dir / "bad.py").write_text('c.HardenedSpawner.cap_add = ["SYS_ADMIN"]\n')
    assert cli.main(["check", "--config", "bad.py"]) == 2
    assert capsys.readouterr().err == (
        "hardened-spawner check: Invalid HardenedSpawner configuration: HardenedSpawner.cap_add: "
        "SYS_ADMIN may not be added; it would weaken isolation between users. Capabilities that may "
        "be added: CHOWN, FOWNER, KILL, NET_BIND_SERVICE, SETGID, SETUID, SYS_NICE.\n"
    )
    (config_dir / "broken.py").write_text("c.HardenedSpawner.cap_add = [\n")
    assert cli.main(["check", "--config", "broken.py"]) == 2
    assert capsys.readouterr().err.startswith("hardened-spawner check: Loading the config file broken.py failed: ")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["check", "--jsn"], "argument --jsn: expected one argument"),
        (["check", "--config"], "expected one argument"),
        (["gpus", "extra"], "hardened-spawner gpus: unexpected arguments: extra"),
        (["bogus"], "Unknown command 'bogus'. Usage: hardened-spawner {check,gpus,images,firewall,usage} [options]"),
        ([], "Usage: hardened-spawner {check,gpus,images,firewall,usage} [options]"),
    ],
)
def test_usage_errors_exit_2_never_1(engine, config_dir, capsys, argv, message):
    try:
        status = cli.main(argv)
    except SystemExit as e:  # argparse's own usage errors
        status = e.code
    assert status == 2
    assert message in capsys.readouterr().err


def test_help_exits_0(capsys):
    assert cli.main(["check", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--json" in out and "--all" in out and "--config=<Unicode>" in out


def test_engine_unreachable_exits_2(config_dir, capsys, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{config_dir}/no-engine.sock")
    monkeypatch.setattr(HardenedSpawner, "_client", None)  # DockerSpawner caches its client
    (config_dir / "jupyterhub_config.py").write_text("c = get_config()  # noqa\n")
    for command in ("check", "gpus"):
        assert cli.main([command]) == 2
        err = capsys.readouterr().err
        assert err.startswith(
            f"hardened-spawner {command}: Cannot reach the Docker engine at unix://{config_dir}/no-engine.sock: "
        )
        assert err.endswith(
            "Is the engine running, and may this account use it (the docker group, DOCKER_HOST, "
            "DockerSpawner.client_kwargs)?\n"
        )


def test_python_dash_m_runs_the_same_command(config_dir):
    done = subprocess.run(
        [sys.executable, "-m", "hardened_spawner", "check"],
        check=False,
        capture_output=True,
        text=True,
        env={"DOCKER_HOST": f"unix://{config_dir}/no-engine.sock", "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "Cannot reach the Docker engine" in done.stderr


def test_gpus_with_a_static_inventory_from_the_config(engine, config_dir, capsys):
    engine.inspects[GOOD["Id"]]["Config"]["Labels"] = server_labels("alice", 200001, gpus="GPU-b", since=SINCE)
    (config_dir / "jupyterhub_config.py").write_text(
        'c.HardenedSpawner.gpu_inventory = [{"uuid": "GPU-a", "name": "Stub"}, "GPU-b"]\n'
    )
    assert cli.main(["gpus"]) == 0
    assert capsys.readouterr().out == f"""\
INDEX  UUID   NAME  STATE     HELD BY  SINCE
0      GPU-a  Stub  free
1      GPU-b        assigned  alice    {SINCE}

2 GPUs in the pool: 1 assigned, 1 free.
"""
    assert cli.main(["gpus", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["assigned"] == 1


def test_gpus_with_a_bad_inventory_exits_2(engine, config_dir, capsys):
    (config_dir / "jupyterhub_config.py").write_text('c.HardenedSpawner.gpu_inventory = ["GPU-a", "GPU-a"]\n')
    assert cli.main(["gpus"]) == 2
    assert capsys.readouterr().err == (
        "hardened-spawner gpus: HardenedSpawner.gpu_inventory: GPU-a is listed 2 times. List each device once.\n"
    )


# --- the audit at hub start --------------------------------------------------


class Log:
    def __init__(self):
        self.lines = []

    def log(self, level, message, *args):
        self.lines.append((level, message % args if args else message))

    def warning(self, message, *args):
        self.log(logging.WARNING, message, *args)

    def exception(self, message, *args):
        self.log(logging.ERROR, message, *args)


def test_audit_at_hub_start_logs_a_warning_per_bad_container_and_a_summary(engine):
    log = Log()
    checks.audit_at_hub_start(HardenedSpawner(), log)
    assert [level for level, _ in log.lines] == [logging.WARNING, logging.INFO]
    assert log.lines[0][1].startswith("Container jupyter-mallory (owner mallory) breaks the security policy: privileged,")
    assert log.lines[1][1] == "Checked 2 managed server containers at hub start: 1 OK, 1 breaking the security policy."


def test_audit_at_hub_start_never_raises(monkeypatch):
    log = Log()
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/no-engine.sock")
    monkeypatch.setattr(HardenedSpawner, "_client", None)
    checks.audit_at_hub_start(HardenedSpawner(), log)
    assert len(log.lines) == 1
    assert log.lines[0][1].startswith(
        "Could not check the existing server containers at hub start: Cannot reach the Docker engine"
    )

    def broken(spawner):
        raise KeyError("surprise")

    monkeypatch.setattr(checks, "engine_client", broken)
    log = Log()
    checks.audit_at_hub_start(HardenedSpawner(), log)
    assert log.lines == [(logging.ERROR, "Checking the existing server containers at hub start failed")]


async def test_the_hub_start_audit_runs_on_the_hubs_docker_threads_and_never_raises(monkeypatch):
    from hardened_spawner.docker.hub_context import HubContext

    context = HubContext(lambda: "the hub's client", threads=2)
    seen = []

    def failing_audit(spawner, log):
        seen.append((spawner, threading.current_thread().name))
        raise RuntimeError("the engine exploded")

    monkeypatch.setattr(checks, "audit_at_hub_start", failing_audit)
    log = Log()
    probe = HardenedSpawner()
    await hub_start._audit(probe, log, context)
    assert seen == [(probe, seen[0][1])] and seen[0][1].startswith("hardened-docker")
    assert log.lines == [(logging.ERROR, "The hub-start audit of the existing server containers could not run")]
    context.shutdown()


# --- the network isolation part of `check` ---------------------------------------


def test_network_report_says_what_the_hub_would_say(monkeypatch):
    from traitlets.config import Config

    from hardened_spawner.docker.isolation import docker_network
    from hardened_spawner.docker.isolation import verify as verifying
    from hardened_spawner.docker.isolation.docker_network import NetworkFacts

    facts = NetworkFacts("users", "hs-users", ("172.30.0.0/24",), ipv6=False, icc=False)
    config = Config()
    config.JupyterHub.hub_connect_ip = "172.30.0.2"
    config.HardenedSpawner.network_name = "users"
    spawner = cli.build_spawner(config)
    checked = []

    def verify(client, found, policy, method, image):
        checked.append((found, policy.hub_ip, method, image))
        return "probe", ["no firewall marker"]

    monkeypatch.setattr(docker_network, "load_network", lambda client, name: facts if name == "users" else None)
    monkeypatch.setattr(verifying, "verify", verify)
    report = cli.network_report(None, spawner, config)
    assert report == inspection.NetworkReport(
        "users", "probe", ("no firewall marker",),
        "as root on the Docker host: hardened-spawner firewall apply --network users --hub-ip 172.30.0.2 "
        "--hub-port 8081",
    )
    assert checked == [(facts, "172.30.0.2", "auto", spawner.image)]

    monkeypatch.setattr(verifying, "verify", lambda *a, **kw: ("iptables", []))
    assert cli.network_report(None, spawner, config) == inspection.NetworkReport("users", "iptables", ())

    config.HardenedSpawner.network_name = "not-made-yet"
    missing = cli.network_report(None, cli.build_spawner(config), config)
    assert missing.problems == (
        "the users' network not-made-yet does not exist yet (the hub creates it when it starts)",)

    config.JupyterHub.hub_connect_ip = "0.0.0.0"
    unknown = cli.network_report(None, cli.build_spawner(config), config)
    assert unknown.checked_by == "none" and "pass --hub-ip" in unknown.problems[0]

    config.HardenedSpawner.network_isolation = False
    off = cli.network_report(None, cli.build_spawner(config), config)
    assert not off.ok and "network_isolation is False" in off.problems[0]


# --- usage -------------------------------------------------------------------------


def trail_line(when, event, user, devices=(), server=""):
    return json.dumps({"__timestamp__": when, "event": event, "user": user, "server_name": server,
                       "devices": list(devices)}) + "\n"


USAGE_TRAIL = "".join([
    trail_line("2026-10-31T23:00:00Z", "gpus-assigned", "ada", ["GPU-a"]),
    trail_line("2026-10-31T23:00:00Z", "server-started", "ada", ["GPU-a"]),
    trail_line("2026-11-01T01:00:00Z", "gpus-released", "ada", ["GPU-a"]),
    trail_line("2026-11-01T01:00:00Z", "server-stopped", "ada"),
    trail_line("2026-11-02T10:00:00Z", "gpus-assigned", "bob", ["GPU-a", "GPU-b"]),
    trail_line("2026-11-02T10:00:00Z", "server-started", "bob", ["GPU-a", "GPU-b"]),
    trail_line("2026-11-02T10:30:00Z", "server-started", "cy"),
    "this line is not a record\n",
])


class UsageEngine:
    """The engine as `usage` asks it: the running server containers (docker ps)."""

    def __init__(self, running):
        self.running = running

    def containers(self, all=False, filters=None):
        assert filters == cli.MANAGED_SERVERS and not all
        return self.running


def running_ps(owner, gpus="", since="", hub="", created=0):
    found = server_labels(owner, 200001, gpus=gpus, since=since)
    if hub:
        found[P + "hub"] = hub
    return {"Id": owner, "Created": created, "Labels": found}


def test_run_usage_counts_the_trail_and_the_running_servers_to_the_end_of_the_period(tmp_path):
    trail = tmp_path / "audit.jsonl"
    trail.write_text(USAGE_TRAIL)
    engine = UsageEngine([running_ps("bob", "GPU-a,GPU-b", "2026-11-02T10:00:00+00:00", hub="h1"),
                          running_ps("cy", hub="h1"), running_ps("dan", "GPU-c", "2026-11-02T09:00:00+00:00", hub="h2")])
    out = io.StringIO()
    since = cli.period_bound("2026-11-01", "--since")
    until = cli.period_bound("2026-11-02T12:00:00Z", "--until")
    assert cli.run_usage(engine, str(trail), since=since, until=until, hub_id="h1", out=out) == 0
    assert out.getvalue() == (
        "Usage from 2026-11-01T00:00:00Z to 2026-11-02T12:00:00Z, by user:\n"
        "USER   GPU-HOURS  SERVER-HOURS\n"
        "bob         4.00          2.00\n"
        "ada         1.00          1.00\n"
        "cy          0.00          1.50\n"
        "TOTAL       5.00          4.50\n"
        f"note: 1 line(s) of {trail} are not audit records and were skipped; the first: line 8: not an audit "
        "record (JSONDecodeError: Expecting value: line 1 column 1 (char 0)): 'this line is not a record'\n"
    )
    out = io.StringIO()
    cli.run_usage(engine, str(trail), since=since, until=until, by="device", output="csv", hub_id="h1", out=out)
    assert out.getvalue() == (
        "device,gpu_seconds,gpu_hours,gpu_used_seconds,gpu_used_hours,server_seconds,server_hours,estimated\n"
        "GPU-a,10800.0,3.0,,,,,False\n"
        "GPU-b,7200.0,2.0,,,,,False\n"
    )


@pytest.fixture
def usage_hub(config_dir, monkeypatch):
    """A hub's config with its audit trail and database (with groups), and its engine."""
    import sqlite3

    (config_dir / "audit.jsonl").write_text(USAGE_TRAIL)
    db = sqlite3.connect(config_dir / "hub.sqlite")
    db.executescript("""
        CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT);
        CREATE TABLE groups (id INTEGER PRIMARY KEY, name TEXT);
        CREATE TABLE user_group_map (user_id INTEGER, group_id INTEGER);
        INSERT INTO users VALUES (1, 'ada'), (2, 'bob'), (3, 'cy');
        INSERT INTO groups VALUES (1, 'ml'), (2, 'vision');
        INSERT INTO user_group_map VALUES (1, 1), (2, 1), (2, 2);
    """)
    db.commit()
    db.close()
    (config_dir / "hub.py").write_text(
        'c.HardenedSpawner.audit_log = "audit.jsonl"\nc.JupyterHub.db_url = "sqlite:///hub.sqlite"\n')
    from hardened_spawner import usage_sources

    hub = usage_sources.hub_id_for_url("sqlite:///hub.sqlite")
    engine = UsageEngine([running_ps("bob", "GPU-a,GPU-b", "2026-11-02T10:00:00+00:00", hub=hub)])
    monkeypatch.setattr(cli, "engine_client", lambda spawner: engine)
    return config_dir


def test_usage_by_group_as_json(usage_hub, capsys):
    argv = ["usage", "-f", "hub.py", "--since", "2026-11-01", "--until", "2026-11-02T12:00:00Z", "--by", "group"]
    assert cli.main([*argv, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(r["group"], r["gpu_hours"], r["server_hours"]) for r in data["rows"]] == [
        ("ml", 5.0, 3.0), ("vision", 4.0, 2.0)]  # cy's server is gone and its end unrecorded: 0 h
    assert data["since"] == "2026-11-01T00:00:00Z" and data["until"] == "2026-11-02T12:00:00Z"
    assert len(data["notes"]) == 1


@pytest.mark.parametrize(("argv", "config", "message"), [
    (["--since", "yesterday"], "", "--since='yesterday' is not a date or time: write it as ISO 8601"),
    (["--since", "2026-11-02", "--until", "2026-11-01"], "", "--until=2026-11-01 is not after the start"),
    (["--json", "--csv"], "", "--json and --csv: choose one"),
    ([], 'c.HardenedSpawner.audit_log = ""\n', "HardenedSpawner.audit_log is '': there is no audit trail"),
    ([], 'c.HardenedSpawner.audit_log = "stdout"\n', "a stream: name the file it is kept in with --audit"),
    (["--audit", "missing.jsonl"], "", "cannot read the audit trail missing.jsonl: No such file or directory"),
    (["--by", "group", "--db-url", "sqlite:///nowhere.sqlite"], "", "the hub's database"),
    (["--by", "image"], "", "The 'by' trait of an UsageCommand instance expected any of ['user', 'group', 'device']"),
])
def test_usage_errors_exit_2(usage_hub, capsys, argv, config, message):
    if config:
        (usage_hub / "hub.py").write_text(config)
    assert cli.main(["usage", "-f", "hub.py", *argv]) == 2
    assert message in capsys.readouterr().err


def test_usage_without_the_engine_counts_open_intervals_to_the_trails_last_record(usage_hub, capsys, monkeypatch):
    monkeypatch.setattr(cli, "engine_client", lambda spawner: pytest.fail("the engine was asked"))
    argv = ["usage", "-f", "hub.py", "--since", "2026-11-01", "--until", "2026-11-02T12:00:00Z", "--no-engine"]
    assert cli.main([*argv, "--json"]) == 0
    rows = {r["user"]: r for r in json.loads(capsys.readouterr().out)["rows"]}
    # bob's GPUs and server are open at the trail's end (10:30, cy's start): an estimate
    assert (rows["bob"]["gpu_hours"], rows["bob"]["server_hours"], rows["bob"]["estimated"]) == (1.0, 0.5, True)


def test_usage_takes_relative_paths_of_the_config_from_its_folder(usage_hub, tmp_path, capsys, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    argv = ["usage", "-f", str(usage_hub / "hub.py"), "--since", "2026-11-01", "--until", "2026-11-02T12:00:00Z"]
    assert cli.main([*argv, "--by", "group", "--csv"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == ["ml,18000.0,5.0,,,10800.0,3.0,False",
                                                        "vision,14400.0,4.0,,,7200.0,2.0,False"]
