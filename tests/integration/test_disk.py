"""Issue 28: no user can fill the server's disk. Workspace quotas on a real btrfs with qgroups
(a loop device the test makes), capped container logs, a full workspace that still starts,
and an XFS quota this engine cannot enforce said at hub start and refused when required.

What is measured here: a kernel's writes stop with EDQUOT at the quota while a neighbour's go
on; the server of a user at their quota starts again and they recover by deleting; a quota
raised for a group reaches the qgroup at the next start; a kernel printing 20 MiB leaves at
most the configured cap in the container's log files on the host.
"""

from __future__ import annotations

import glob
import os
import subprocess
import textwrap
import time

import pytest
import requests

from hubdriver import TEST_PREFIX, Kernel

from .hubtools import remove_named

MIB = 1024 * 1024
PREFIX = f"{TEST_PREFIX}-disk"
XFS_PREFIX = f"{TEST_PREFIX}-xfs"


def names(prefix: str) -> str:
    """Containers, workspaces and a users' network of this module's own."""
    return f"""
c.HardenedSpawner.name_template = "{prefix}-{{username}}--{{servername}}"
c.HardenedSpawner.workspace_volume_name = "{prefix}-workspace-{{username}}"
c.HardenedSpawner.network_name = "{prefix}-users"
c.HardenedSpawner.mem_limit = "1G"
"""


def sh(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"{' '.join(argv)}: {done.stderr or done.stdout}"
    return done.stdout


@pytest.fixture(scope="module")
def btrfs_root(tmp_path_factory):
    """A 1 GiB sparse file formatted btrfs, loop-mounted, with quotas on: the admin's
    `workspace_btrfs_root`. Unmounted (and the file removed) at the end."""
    base = tmp_path_factory.mktemp("btrfs")
    image, root = base / "fs.img", base / "workspaces"
    with open(image, "wb") as f:
        f.truncate(1024 * MIB)
    root.mkdir()
    sh("mkfs.btrfs", "-q", str(image))
    sh("mount", "-o", "loop", str(image), str(root))
    try:
        sh("btrfs", "quota", "enable", str(root))
        yield str(root)
    finally:
        remove_named(PREFIX)  # the servers and volumes that bind its subvolumes
        subprocess.run(["umount", str(root)], capture_output=True, timeout=60, check=False)
        if os.path.ismount(root):
            subprocess.run(["umount", "-l", str(root)], capture_output=True, timeout=60, check=False)
        image.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def disk_hub(hub_factory, btrfs_root):
    hub = hub_factory(names(PREFIX) + f"""
c.HardenedSpawner.workspace_btrfs_root = "{btrfs_root}"
c.HardenedSpawner.workspace_quota = "50M"
c.HardenedSpawner.workspace_quota_group = {{"thesis": "120M"}}
c.HardenedSpawner.container_log_max_size = "1M"
c.HardenedSpawner.container_log_max_files = 2
""")
    yield hub
    hub.stop()  # before the filesystem goes: its servers are removed with it


def qgroup(btrfs_root: str, user: str) -> tuple[int, int | None]:
    """(bytes used, limit) of a user's subvolume, as `btrfs qgroup show` says."""
    path = f"{btrfs_root}/{PREFIX}-workspace-{user}"
    sh("btrfs", "filesystem", "sync", path)
    row = [line.split() for line in sh("btrfs", "qgroup", "show", "-rf", "--raw", path).splitlines()
           if line.startswith("0/")][-1]
    return int(row[1]), None if row[3] == "none" else int(row[3])


def write(kernel: Kernel, name: str, mib: int) -> tuple[int, int | None]:
    """(bytes written, errno of the write that failed) of ``mib`` MiB into ~/name, in 1 MiB writes."""
    out = kernel.run(textwrap.dedent(f"""
        import os
        written, failed, chunk, fd = 0, None, b"x" * (1 << 20), None
        try:
            fd = os.open(os.path.expanduser("~/{name}"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            for _ in range({mib}):
                written += os.write(fd, chunk)
            os.fsync(fd)
        except OSError as e:
            failed = e.errno
        finally:
            if fd is not None:
                os.close(fd)
        print(written, failed)
    """), timeout=120)
    written, failed = out.split()
    return int(written), None if failed == "None" else int(failed)


def spawned(hub, user: str) -> Kernel:
    hub.create_user(user)
    result = hub.spawn(user)
    assert result.ready, result.message
    return Kernel(hub, user)


def test_a_kernel_stops_at_its_quota_and_a_neighbour_writes_on(disk_hub, btrfs_root):
    alice, bob = spawned(disk_hub, "alice"), spawned(disk_hub, "bob")
    try:
        written, failed = write(alice, "big", 80)
        assert failed == 122, (written, failed)  # EDQUOT: "Disk quota exceeded"
        assert 45 * MIB <= written <= 50 * MIB, written
        assert qgroup(btrfs_root, "alice")[1] == 50 * MIB
        # the neighbour on the same filesystem never notices
        assert write(bob, "data", 30) == (30 * MIB, None)
        # and the hub keeps answering
        assert disk_hub.api("GET", "/").ok
    finally:
        alice.close()
        bob.close()


def test_a_full_workspace_still_starts_and_its_user_recovers(disk_hub, btrfs_root):
    """alice is at her quota (the test above): stop, start, the server answers, a kernel
    runs, the file browser lists her files, and deleting one lets her write again."""
    kernel = Kernel(disk_hub, "alice")
    try:
        assert write(kernel, "more", 1)[1] == 122  # still full
    finally:
        kernel.close()
    disk_hub.stop_server("alice")
    result = disk_hub.spawn("alice")
    assert result.ready, result.message
    kernel = Kernel(disk_hub, "alice")
    try:
        token = kernel.token
        contents = requests.get(f"{disk_hub.url}/user/alice/api/contents", timeout=30,
                                headers={"Authorization": f"token {token}"})
        assert contents.ok and "big" in [item["name"] for item in contents.json()["content"]]
        lab = requests.get(f"{disk_hub.url}/user/alice/lab", timeout=30, headers={"Authorization": f"token {token}"})
        assert lab.ok, lab.status_code
        assert kernel.run("print(6 * 7)").strip() == "42"  # a new kernel of a full workspace runs code
        kernel.run("import os; os.remove(os.path.expanduser('~/big'))")
        assert write(kernel, "again", 20) == (20 * MIB, None)
    finally:
        kernel.close()


def test_a_quota_raised_for_a_group_reaches_the_qgroup_at_the_next_start(disk_hub, btrfs_root):
    assert qgroup(btrfs_root, "bob")[1] == 50 * MIB
    disk_hub.api("POST", "/groups/thesis")
    disk_hub.api("POST", "/groups/thesis/users", json={"users": ["bob"]}).raise_for_status()
    disk_hub.stop_server("bob")
    result = disk_hub.spawn("bob")
    assert result.ready, result.message
    assert qgroup(btrfs_root, "bob")[1] == 120 * MIB
    kernel = Kernel(disk_hub, "bob")
    try:
        assert kernel.run("import os; print(os.path.getsize(os.path.expanduser('~/data')))").strip() == str(30 * MIB)
        assert write(kernel, "more", 60) == (60 * MIB, None)  # 90 MiB in all: past the old quota
    finally:
        kernel.close()


def test_a_kernel_printing_far_more_than_the_cap_leaves_at_most_the_cap_on_the_host(disk_hub, engine):
    """The server's log: json-file, rotated at 1 MiB, two files (this hub's settings). 20 MiB
    written by the kernel to the server's own stdout, at the file-descriptor level."""
    kernel = spawned(disk_hub, "carol")
    try:
        kernel.run(textwrap.dedent("""
            import os
            fd = os.open("/proc/%d/fd/1" % os.getppid(), os.O_WRONLY)  # the server's stdout: the container log
            block = (b"y" * 1023 + b"\\n") * 1024
            for _ in range(20):
                os.write(fd, block)
            os.close(fd)
        """), timeout=120)
    finally:
        kernel.close()
    container = engine.containers.get(f"{PREFIX}-carol--")
    assert container.attrs["HostConfig"]["LogConfig"] == {
        "Type": "json-file", "Config": {"max-file": "2", "max-size": str(MIB)}}
    log_path = container.attrs["LogPath"]
    deadline = time.monotonic() + 30
    while True:  # the engine copies the output to the log as it comes
        files = {path: os.path.getsize(path) for path in glob.glob(log_path + "*")}
        if len(files) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert sorted(files) == [log_path, log_path + ".1"], files  # it did rotate: far more was written
    assert sum(files.values()) <= 2 * MIB + 64 * 1024, files
    assert all(size <= MIB + 32 * 1024 for size in files.values()), files
    assert "y" * 100 in container.logs(tail=10).decode()  # `docker logs` (and the hub) still read it


@pytest.fixture(scope="module")
def xfs_hub(hub_factory):
    """A hub asking for a quota with the engine's XFS ``size``, which this engine has not,
    and requiring it."""
    hub = hub_factory(names(XFS_PREFIX) + """
c.HardenedSpawner.workspace_quota = "50M"
c.HardenedSpawner.workspace_quota_required = True
""")
    yield hub
    hub.stop()
    remove_named(XFS_PREFIX)


def test_an_xfs_quota_this_engine_cannot_enforce_is_said_at_hub_start(xfs_hub):
    warning = "HardenedSpawner.workspace_quota is 50 MiB, but it cannot be enforced here: the Docker engine answered"
    deadline = time.monotonic() + 30
    while warning not in xfs_hub.log_tail(400) and time.monotonic() < deadline:
        time.sleep(0.5)
    log = xfs_hub.log_tail(400)
    assert warning in log and "'quota size requested but no quota support'" in log, log
    assert "Provide XFS with project quotas for the engine's volumes" in log
    assert "Spawns are refused until it can (HardenedSpawner.workspace_quota_required is True)" in log


def test_a_required_quota_this_engine_cannot_enforce_refuses_the_spawn_clearly(xfs_hub, engine):
    xfs_hub.create_user("dave")
    result = xfs_hub.spawn("dave")
    assert not result.ready
    assert result.message == (
        "Spawn failed: Your server was not started: this hub requires a disk quota on every workspace "
        "(HardenedSpawner.workspace_quota_required), and the quota of 50 MiB cannot be enforced on your "
        f"workspace (volume {XFS_PREFIX}-workspace-dave) at the moment. Nothing of yours was changed. Please "
        "tell your hub admin; the hub log says what is missing.")
    log = xfs_hub.log_tail(200)
    assert "Unexpected error" not in log  # a refusal (409), not a hub failure
    assert "not enforced on hstest-xfs-workspace-dave: the Docker engine answered" in log
    refused = [e for e in xfs_hub.audit_events() if e["event"] == "spawn-refused" and e["user"] == "dave"]
    assert refused and "workspace_quota_required" in refused[-1]["reason"]
    assert engine.volumes.list(filters={"name": f"{XFS_PREFIX}-workspace-dave"}) == []  # nothing was made
    assert xfs_hub.api("GET", "/").ok
