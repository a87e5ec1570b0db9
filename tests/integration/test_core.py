"""Issue 2: least privilege that works, seen from inside the kernel and from `docker inspect`."""

import json
import textwrap

import pytest
import requests

from hardened_spawner import labels
from hubdriver import TEST_PREFIX, Kernel

USERS = ("alice", "bob")

STATUS_PROBE = textwrap.dedent(
    """
    import json, os, getpass, subprocess, pathlib
    status = dict(l.split(":\\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\\t" in l)
    print(json.dumps({
        "uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
        "CapEff": status["CapEff"].strip(), "CapBnd": status["CapBnd"].strip(),
        "CapPrm": status["CapPrm"].strip(), "NoNewPrivs": status["NoNewPrivs"].strip(),
        "id_un": subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip(),
        "whoami": subprocess.run(["whoami"], capture_output=True, text=True).stdout.strip(),
        "getuser": getpass.getuser(), "home": os.path.expanduser("~"), "cwd": os.getcwd(),
    }))
    """
)


@pytest.fixture(scope="module")
def servers(hub):
    """alice and bob, each with a running server and a kernel in it."""
    kernels = {}
    for name in USERS:
        hub.create_user(name)
        result = hub.spawn(name)
        assert result.ready, f"{name}: {result.message}\n{hub.log_tail()}"
        kernels[name] = Kernel(hub, name)
    yield kernels
    for kernel in kernels.values():
        kernel.close()


def probe(kernel) -> dict:
    return json.loads(kernel.run(STATUS_PROBE))


def test_each_user_runs_as_their_own_non_root_uid(servers, hub):
    seen = {name: probe(kernel) for name, kernel in servers.items()}
    uids = {info["uid"] for info in seen.values()}
    assert len(uids) == len(USERS), seen
    for name, info in seen.items():
        assert info["uid"] >= hub.uid_min and info["uid"] != 0
        assert info["gid"] == info["uid"]
        assert info["groups"] in ([], [info["gid"]])
        assert info["id_un"] == info["whoami"] == info["getuser"] == name
        assert info["home"] == info["cwd"] == f"/home/{name}"


def test_no_capabilities_and_no_new_privileges(servers):
    for kernel in servers.values():
        info = probe(kernel)
        assert info["CapEff"] == info["CapBnd"] == info["CapPrm"] == "0000000000000000"
        assert info["NoNewPrivs"] == "1"


def test_root_filesystem_is_read_only(servers):
    kernel = servers["alice"]
    out = kernel.run(
        textwrap.dedent(
            """
            import os, errno
            results = {}
            try:
                os.chmod("/", 0o777)
                results["chmod"] = "allowed"
            except OSError as e:
                results["chmod"] = errno.errorcode[e.errno]
            for path in ("/etc/hosts", "/etc/passwd", "/usr/hs-test", "/opt/hs-test"):
                try:
                    open(path, "a").close()
                    results[path] = "allowed"
                except OSError as e:
                    results[path] = errno.errorcode[e.errno]
            mounts = {line.split()[1]: line.split()[3].split(",") for line in open("/proc/self/mounts")}
            results["ro"] = [p for p in ("/", "/etc/hosts", "/etc/passwd") if "ro" in mounts.get(p, [])]
            print(results)
            """
        )
    )
    results = eval(out)
    assert results["chmod"] in ("EPERM", "EROFS")
    for path in ("/etc/hosts", "/etc/passwd", "/usr/hs-test", "/opt/hs-test"):
        assert results[path] in ("EROFS", "EACCES"), (path, results)
    # a non-root user meets EACCES before EROFS; the mount table shows the read-only root
    assert results["ro"] == ["/", "/etc/hosts", "/etc/passwd"], results


def test_workspace_is_private_writable_and_the_caches_work(servers):
    kernel = servers["alice"]
    out = kernel.run(
        textwrap.dedent(
            """
            import os, stat, tempfile
            home = os.path.expanduser("~")
            st = os.stat(home)
            with open(os.path.join(home, "keep.txt"), "w") as f:
                f.write("alice was here")
            from torch._inductor.runtime.cache_dir_utils import cache_dir
            os.makedirs(cache_dir(), exist_ok=True)
            with tempfile.NamedTemporaryFile() as f:
                f.write(b"x")
            print(st.st_uid == os.getuid(), st.st_gid == os.getgid(), oct(stat.S_IMODE(st.st_mode)),
                  cache_dir().startswith(home), os.access(cache_dir(), os.W_OK))
            """
        )
    )
    assert out.split() == ["True", "True", "0o700", "True", "True"]


def test_pytorch_dataloader_moves_100mb_batches_through_shm(servers):
    kernel = servers["bob"]
    out = kernel.run(
        textwrap.dedent(
            """
            import torch
            from torch.utils.data import DataLoader, Dataset
            class Big(Dataset):
                def __len__(self): return 4
                def __getitem__(self, i): return torch.full((25 * 1024 * 1024,), float(i))  # 100 MB
            total = sum(float(b.sum()) for b in DataLoader(Big(), batch_size=1, num_workers=2))
            print("ok", total)
            """
        ),
        timeout=300,
    )
    assert out.startswith("ok")


def test_jupyterlab_and_a_terminal_work(servers, hub):
    kernel = servers["alice"]
    lab = requests.get(f"{kernel.base}/lab", headers=kernel.headers, timeout=30)
    assert lab.status_code == 200 and "JupyterLab" in lab.text
    term = requests.post(f"{kernel.base}/api/terminals", headers=kernel.headers, timeout=30)
    assert term.status_code == 200, term.text
    requests.delete(f"{kernel.base}/api/terminals/{term.json()['name']}", headers=kernel.headers, timeout=30)


def test_docker_inspect_shows_the_same(servers, engine, hub):
    uids = set()
    for name in USERS:
        container = engine.containers.get(f"{TEST_PREFIX}-{name}--")
        config, host = container.attrs["Config"], container.attrs["HostConfig"]
        uid = int(config["User"].split(":")[0])
        uids.add(uid)
        assert config["User"] == f"{uid}:{uid}" and uid >= hub.uid_min
        assert "--allow-root" not in (config["Cmd"] or [])
        assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
        assert host["ReadonlyRootfs"] is True and host["Privileged"] is False
        assert "no-new-privileges:true" in host["SecurityOpt"]
        assert not any("unconfined" in opt for opt in host["SecurityOpt"])
        assert host["PidsLimit"] == 1024
        assert host["Memory"] == 2 * 1024**3 and host["NanoCpus"] == 10**9
        assert host["ShmSize"] == 1024**3
        assert "size=1073741824" in host["Tmpfs"]["/tmp"]
        assert host["NetworkMode"] == f"{TEST_PREFIX}-users"
        assert config["Healthcheck"]["Test"][0] == "CMD"
        workspace = [m for m in container.attrs["Mounts"] if m["Destination"] == f"/home/{name}"]
        assert workspace and workspace[0]["Type"] == "volume" and workspace[0]["RW"]
        assert config["Labels"][labels.OWNER] == name
        assert config["Labels"][labels.UID] == str(uid)
        assert len(config["Labels"][labels.POLICY]) == 16
        volume = engine.volumes.get(f"{TEST_PREFIX}-workspace-{name}")
        assert volume.attrs["Labels"][labels.UID] == str(uid)
        assert volume.attrs["Labels"][labels.OWNER] == name
    assert len(uids) == len(USERS)


def test_files_survive_stop_and_start_with_the_same_uid(servers, hub):
    before = probe(servers["alice"])
    servers["alice"].close()
    hub.stop_server("alice")
    result = hub.spawn("alice")
    assert result.ready, result.message
    messages = [e.get("message", "") for e in result.events]
    assert any("Creating your server container" in m for m in messages), messages
    kernel = Kernel(hub, "alice")
    servers["alice"] = kernel
    assert probe(kernel)["uid"] == before["uid"]
    assert kernel.run("print(open('keep.txt').read())").strip() == "alice was here"
