"""The generated Pod, run for real: Debian's podman (4.3) plays the workspace claim and the
Pod that `kubernetes.objects` renders for one decision, with the project's image, and the
attack suite's checks run inside it (as code the user would run) and outside it
(``podman inspect``).

No kube-apiserver or kubelet can run here, and podman is not one: it honours some Pod
fields and silently ignores others (README, "Kubernetes": the table of what podman honours
was measured field by field). What it ignores is proven only by the schema and policy
checks (test_kube_manifests, test_checkov), and nothing here claims otherwise. Two things
podman cannot run at all are changed for it, and only these:

- the identity ConfigMap's ``subPath`` mounts over /etc/passwd and /etc/group are left out:
  podman 4.3 mounts a configMap volume as a directory and fails on a file ("not a
  directory");
- the pod gets ``--network slirp4netns``: kube play turns a container port into a port
  mapping, which ``--network none`` refuses, and slirp4netns touches no iptables rules
  (the isolation tests on this host own those).
"""

import json
import os
import resource
import shutil
import subprocess

import pytest
import yaml

from hardened_spawner.core.decision import GpuGrant, decide
from hardened_spawner.core.identity import make_identity
from hardened_spawner.core.profile import SecurityProfile
from hardened_spawner.kubernetes.objects import PodPlacement, make_pod, make_workspace_claim, uid_claim_name
from hubdriver import SINGLEUSER_IMAGE

UID = 210001
GIB = 1024**3
PREFIX = os.environ.get("HSTEST_PREFIX", "hstest")
POD = f"{PREFIX}-kube-alice"
WORKSPACE = f"{PREFIX}-kube-workspace-alice"
PODMAN_IMAGE = f"localhost/{SINGLEUSER_IMAGE}"
PROFILE = SecurityProfile(mem_limit=2 * GIB, cpu_limit=1.5, pids_limit=1024, shm_size=GIB, tmpfs={"/tmp": GIB})


def _run(*args, check=True, timeout=300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, check=check, timeout=timeout, **kwargs)


def manifests(pod_name: str = POD, weaken=None) -> list[dict]:
    """The workspace claim and the Pod for alice, as the spawner would send them, with the
    two changes podman needs (module docstring); ``weaken`` changes the container's
    securityContext, to show the checks below see what podman does with a field."""
    identity = make_identity("alice", UID, "/home/{username}")
    decision = decide(
        owner="alice", server_name="", image=PODMAN_IMAGE, port=8888,
        command=["python3", "-c", "import time; time.sleep(3600)"],  # what runs instead of a hub's server
        identity=identity, profile=PROFILE, workspace=WORKSPACE, gpus=GpuGrant(), hub_environment={},
    )
    placement = PodPlacement(
        name=pod_name, namespace="default", identity_claim=uid_claim_name(UID),
        labels={"app": "jupyterhub", "component": "singleuser-server"}, cpu_request=0.5, memory_request=GIB,
        version="test", health_path="/user/alice/api", image_pull_policy="Never",
    )
    pod = make_pod(decision, placement)
    pod["spec"]["volumes"] = [v for v in pod["spec"]["volumes"] if v["name"] != "identity"]
    container = pod["spec"]["containers"][0]
    container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] != "identity"]
    if weaken:
        weaken(container["securityContext"])
    claim = make_workspace_claim(WORKSPACE, "default", "alice", identity, capacity="1Gi", storage_class=None,
                                 access_modes=("ReadWriteOnce",), version="test")
    return [claim, pod]


@pytest.fixture(scope="module")
def podman_env(engine, tmp_path_factory):
    """podman with this machine's limits, and the project's image loaded from the engine."""
    if not shutil.which("podman"):
        pytest.fail("podman is missing. Run scripts/setup.sh --gpu-stub first.")
    # podman asks for more open files and processes than this sandbox's hard limits allow
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 32768)
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    conf.write_text(f'[containers]\ndefault_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n')
    env = {**os.environ, "CONTAINERS_CONF": str(conf)}
    want = engine.images.get(SINGLEUSER_IMAGE).id.removeprefix("sha256:")
    have = _run("podman", "image", "inspect", "--format", "{{.Id}}", PODMAN_IMAGE, check=False, env=env).stdout.strip()
    if have != want:
        with subprocess.Popen(["docker", "save", SINGLEUSER_IMAGE], stdout=subprocess.PIPE) as save:
            _run("podman", "load", stdin=save.stdout, env=env, timeout=600)
    return env


def _play(env, path, documents):
    def clean():
        _run("podman", "kube", "down", str(path), check=False, env=env)
        _run("podman", "volume", "rm", "-f", WORKSPACE, "tmp", "dshm", check=False, env=env)

    path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    clean()
    _run("podman", "kube", "play", "--build=false", "--network", "slirp4netns", str(path), env=env)
    return clean


@pytest.fixture(scope="module")
def played(podman_env, tmp_path_factory):
    clean = _play(podman_env, tmp_path_factory.mktemp("kube") / "alice.yaml", manifests())
    yield podman_env
    clean()


def inside(env, code: str, pod: str = POD) -> str:
    """Run Python in the user's container, as code in their kernel would run."""
    done = _run("podman", "exec", f"{pod}-notebook", "python3", "-c", code, check=False, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_inside_the_user_runs_as_their_own_uid_with_no_capabilities_and_no_new_privileges(played):
    status = json.loads(inside(played, (
        "import json, os\n"
        "fields = dict(l.split(':\\t') for l in open('/proc/self/status').read().splitlines() if ':\\t' in l)\n"
        "print(json.dumps({'ids': [os.getuid(), os.getgid(), os.getgroups()],"
        " **{k: fields[k].strip() for k in ('CapEff', 'CapPrm', 'CapBnd', 'CapAmb', 'NoNewPrivs', 'Seccomp')}}))"
    )))
    assert status == {"ids": [UID, UID, []],  # no supplementary group
                      "CapEff": "0000000000000000", "CapPrm": "0000000000000000",
                      "CapBnd": "0000000000000000", "CapAmb": "0000000000000000", "NoNewPrivs": "1",
                      # a filter is on; podman applies its default one whatever seccompProfile says
                      "Seccomp": "2"}


def test_inside_the_root_is_read_only_and_the_workspace_and_tmp_are_the_users(played):
    result = json.loads(inside(played, (
        "import errno, json, os\n"
        "def write(path):\n"
        "    try:\n"
        "        open(path, 'w').write('x'); return 'written'\n"
        "    except OSError as e:\n"
        "        return errno.errorcode[e.errno]\n"
        "home = os.environ['HOME']\n"
        "print(json.dumps({'root': write('/x'), 'etc': write('/etc/x'), 'usr': write('/usr/x'),\n"
        "                  'tmp': write('/tmp/x'), 'home': write(home + '/x'),\n"
        "                  'home_owner': [os.stat(home).st_uid, os.stat(home).st_gid],\n"
        "                  'file_owner': os.stat(home + '/x').st_uid, 'cwd': os.getcwd()}))"
    )))
    assert result == {"root": "EROFS", "etc": "EROFS", "usr": "EROFS", "tmp": "written", "home": "written",
                      "home_owner": [UID, UID], "file_owner": UID, "cwd": "/home/alice"}


def test_inside_there_is_no_way_back_to_root(played):
    result = json.loads(inside(played, (
        "import json, os\n"
        "def attempt(f):\n"
        "    try:\n"
        "        f(); return 'done'\n"
        "    except OSError as e:\n"
        "        return e.strerror\n"
        "print(json.dumps({'setuid': attempt(lambda: os.setuid(0)), 'setgid': attempt(lambda: os.setgid(0)),\n"
        "                  'chmod': attempt(lambda: os.chmod('/', 0o777)),\n"
        "                  'chown': attempt(lambda: os.chown('/tmp', 0, 0))}))"
    )))
    assert result == {"setuid": "Operation not permitted", "setgid": "Operation not permitted",
                      "chmod": "Read-only file system", "chown": "Operation not permitted"}


def test_inside_the_limits_are_the_profiles(played):
    limits = json.loads(inside(played, (
        "import json\n"
        "read = lambda p: int(open(p).read())\n"
        "print(json.dumps([read('/sys/fs/cgroup/memory/memory.limit_in_bytes'),"
        " read('/sys/fs/cgroup/cpu/cpu.cfs_quota_us') / read('/sys/fs/cgroup/cpu/cpu.cfs_period_us')]))"
    )))
    assert limits == [PROFILE.mem_limit, PROFILE.cpu_limit]


def test_outside_podman_inspect_shows_the_same(played):
    (container,) = json.loads(_run("podman", "inspect", f"{POD}-notebook", env=played).stdout)
    host = container["HostConfig"]
    assert container["Config"]["User"] == f"{UID}:{UID}"
    assert host["ReadonlyRootfs"] is True
    assert host["Privileged"] is False
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["CapAdd"] == [] and len(host["CapDrop"]) >= 14  # every capability podman grants by default
    assert host["Memory"] == PROFILE.mem_limit


def _weakened(context: dict) -> None:
    context.update(allowPrivilegeEscalation=True, readOnlyRootFilesystem=False)
    context.pop("capabilities")


def test_the_checks_see_the_fields_podman_honours(podman_env, tmp_path_factory):
    # the same pod with those protections taken out: the checks above would fail on it
    weak = f"{POD}-weakened"
    clean = _play(podman_env, tmp_path_factory.mktemp("weak") / "weak.yaml", manifests(weak, _weakened))
    try:
        result = json.loads(inside(podman_env, (
            "import json\n"
            "fields = dict(l.split(':\\t') for l in open('/proc/self/status').read().splitlines() if ':\\t' in l)\n"
            "import errno\n"
            "try:\n"
            "    open('/x', 'w')\n"
            "except OSError as e:\n"
            "    fields['root'] = errno.errorcode[e.errno]\n"
            "print(json.dumps({k: fields[k].strip() for k in ('CapBnd', 'NoNewPrivs', 'root')}))"
        ), weak))
    finally:
        clean()
    # no EROFS: a writable root, which only file permissions keep a non-root user off
    assert result["NoNewPrivs"] == "0" and result["CapBnd"] != "0000000000000000" and result["root"] == "EACCES"
