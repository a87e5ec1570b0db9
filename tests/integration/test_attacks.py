"""Issue 5: attacks typed into a notebook, each blocked, while the hub and the neighbours live.

Every attack is a snippet that runs unchanged in two places and prints a verdict:

- in eve's kernel, in a server HardenedSpawner started: it must be blocked;
- in a container from the same image started with plain ``docker run`` and
  exactly one protection taken away (``WEAKENED``): it must get through.

The second half is the proof that each first half can fail: a check that
passes against the weakened container would be testing nothing.
"""

import json
import textwrap

import pytest
import requests

from hubdriver import SINGLEUSER_IMAGE, TEST_PREFIX, Kernel

ATTACK_HUB = """
c.HardenedSpawner.pids_limit = 256
c.HardenedSpawner.mem_limit = "1G"
c.HardenedSpawner.tmp_size = "256M"
c.HardenedSpawner.shm_size = "256M"
"""

VERDICT = "\nprint(__import__('json').dumps({'blocked': bool(blocked), 'detail': str(detail)}))"

#: Write 512 MiB into a scratch filesystem whose limit is 256 MiB in the hardened server.
FILL = """
    import os
    written, detail = 0, "no limit hit"
    chunk = b"\\0" * (16 * 1024 * 1024)
    try:
        with open("{path}", "wb") as f:
            while written < 512 * 1024 * 1024:
                f.write(chunk); f.flush(); written += len(chunk)
    except OSError as e:
        detail = e.strerror
    os.remove("{path}")
    blocked, detail = written < 512 * 1024 * 1024, f"{{detail}} after {{written >> 20}} MiB"
"""

ATTACKS = {
    "chmod-777-root": """
        import os
        try:
            os.chmod("/", 0o777); blocked, detail = False, "chmod worked"
        except OSError as e:
            blocked, detail = True, e.strerror
    """,
    "write-etc-usr-opt": """
        import os
        outcomes = {}
        for path in ("/etc/evil.conf", "/usr/evil", "/opt/evil", "/etc/passwd"):
            try:
                with open(path, "a") as f:
                    f.write("pwned\\n")
                outcomes[path] = "written"
            except OSError as e:
                outcomes[path] = e.strerror
        blocked, detail = "written" not in outcomes.values(), outcomes
    """,
    "setuid-0": """
        import os
        try:
            os.setuid(0); blocked, detail = os.getuid() != 0, "setuid returned"
        except OSError as e:
            blocked, detail = True, e.strerror
    """,
    "change-own-uid-or-groups": """
        import os
        outcomes = {}
        for name, call in (("setgid", lambda: os.setgid(0)), ("setgroups", lambda: os.setgroups([0, 27])),
                           ("setresuid", lambda: os.setresuid(1000, 1000, 1000))):
            try:
                call(); outcomes[name] = "changed"
            except OSError as e:
                outcomes[name] = e.strerror
        blocked, detail = "changed" not in outcomes.values(), outcomes
    """,
    "mount": """
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        os.makedirs("/tmp/mnt", exist_ok=True)
        rc = libc.mount(b"none", b"/tmp/mnt", b"tmpfs", 0, None)
        blocked, detail = rc != 0, os.strerror(ctypes.get_errno()) if rc else "mounted"
    """,
    "load-kernel-module": """
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        SYS_finit_module = 313  # x86_64; fd 0 is no module: only the permission check matters
        rc = libc.syscall(SYS_finit_module, 0, b"", 0)
        err = ctypes.get_errno()
        blocked, detail = rc != 0 and err == 1, os.strerror(err)
    """,
    "setuid-binaries-sudo-su": """
        import os, stat, shutil, subprocess
        found = []
        for top in ("/bin", "/sbin", "/usr", "/opt"):
            for root, _, files in os.walk(top):
                for name in files:
                    path = os.path.join(root, name)
                    try:
                        mode = os.lstat(path).st_mode
                    except OSError:
                        continue
                    if stat.S_ISREG(mode) and mode & (stat.S_ISUID | stat.S_ISGID):
                        found.append(path)
        su = shutil.which("su")
        su_uid = subprocess.run([su, "-c", "id -u"], input="", capture_output=True, text=True,
                                timeout=10).stdout.strip() if su else ""
        blocked = not found and not shutil.which("sudo") and su_uid != "0"
        detail = {"setuid": found[:5], "sudo": shutil.which("sudo"), "su_uid": su_uid}
    """,
    "docker-socket": """
        import os, socket
        found = [p for p in ("/var/run/docker.sock", "/run/docker.sock") if os.path.exists(p)]
        answers = []
        for path in found:
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(5)
            try:
                s.connect(path); s.send(b"GET /version HTTP/1.0\\r\\n\\r\\n"); answers.append(s.recv(20).decode())
            except OSError as e:
                answers.append(str(e))
        blocked, detail = not found, dict(zip(found, answers))
    """,
    "fill-tmp": FILL.format(path="/tmp/fill"),
    "fill-dev-shm": FILL.format(path="/dev/shm/fill"),
    "fork-bomb": """
        import os, signal, subprocess, sys, time
        bomb = subprocess.Popen([sys.executable, "-c",
            "import os, time\\nfor _ in range(2000):\\n    try:\\n        if os.fork() == 0:\\n            os.execvp('sleep', ['sleep', '60'])\\n    except OSError:\\n        pass\\ntime.sleep(60)"],
            start_new_session=True, stderr=subprocess.DEVNULL)
        time.sleep(8)
        peak = sum(1 for p in os.listdir("/proc") if p.isdigit())
        os.killpg(bomb.pid, signal.SIGKILL)
        bomb.wait()
        blocked, detail = peak <= 256, f"{peak} processes at the peak"
    """,
}

#: How to take exactly the protection away that each attack is stopped by, in a
#: plain `docker run` of the same image (keyword arguments of containers.run).
AS_ROOT_WRITABLE = {"user": "0:0", "read_only": False}
WEAKENED = {
    "chmod-777-root": AS_ROOT_WRITABLE,
    "write-etc-usr-opt": AS_ROOT_WRITABLE,
    "setuid-0": {"user": "0:0"},
    "change-own-uid-or-groups": {"user": "0:0"},
    "mount": {"user": "0:0", "cap_add": ["SYS_ADMIN"], "security_opt": ["seccomp=unconfined", "apparmor=unconfined"]},
    "load-kernel-module": {"user": "0:0", "cap_add": ["SYS_MODULE"], "security_opt": ["seccomp=unconfined"]},
    "setuid-binaries-sudo-su": {"image": "hardened-spawner-base:bookworm"},  # the base before our image strips setuid bits
    "docker-socket": {"volumes": {"/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"}}, "user": "0:0"},
    "fill-tmp": {"tmpfs": {"/tmp": "size=1g"}},
    "fill-dev-shm": {"shm_size": "1g"},
    "fork-bomb": {"pids_limit": 1024},
}


def snippet(name: str) -> str:
    return textwrap.dedent(ATTACKS[name]) + VERDICT


@pytest.fixture(scope="module")
def attack_hub(hub_factory):
    hub = hub_factory(ATTACK_HUB)
    for user in ("eve", "victor"):
        hub.create_user(user)
        result = hub.spawn(user)
        assert result.ready, result.message
    return hub


@pytest.fixture(scope="module")
def eve(attack_hub):
    kernel = Kernel(attack_hub, "eve")
    yield kernel
    kernel.close()


@pytest.fixture(scope="module")
def victor(attack_hub):
    kernel = Kernel(attack_hub, "victor")
    kernel.run("open('diary.txt', 'w').write('dear diary')")
    yield kernel
    kernel.close()


def assert_everyone_else_lives(hub, victor):
    assert hub.api("GET", "/").ok, "the hub stopped answering"
    assert victor.run("print(1 + 1)").strip() == "2", "victor's server stopped answering"


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_is_blocked_in_the_hardened_server(attack_hub, eve, victor, name):
    verdict = json.loads(eve.run(snippet(name), timeout=180).strip().splitlines()[-1])
    assert verdict["blocked"], verdict
    assert_everyone_else_lives(attack_hub, victor)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_gets_through_when_its_protection_is_removed(engine, name):
    """The mutation check: the same snippet, with one protection weakened, succeeds."""
    weakened = dict(WEAKENED[name])
    image = weakened.pop("image", SINGLEUSER_IMAGE)
    settings = {
        "user": "300999:300999",
        "read_only": True,
        "tmpfs": {"/tmp": "size=256m"},
        "shm_size": "256m",
        "pids_limit": 256,
        "mem_limit": "1g",
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "network_mode": "none",
        "environment": {"HOME": "/tmp"},
    }
    settings.update(weakened)
    if "cap_add" in weakened:
        settings.pop("cap_drop")
    container = engine.containers.run(
        image, ["python3", "-c", snippet(name)], name=f"{TEST_PREFIX}-weakened-{name}",
        detach=True, **settings,
    )
    try:
        container.wait(timeout=180)
        output = container.logs().decode()
    finally:
        container.remove(force=True)
    verdict = json.loads(output.strip().splitlines()[-1])
    assert not verdict["blocked"], verdict


def test_another_users_workspace_is_out_of_reach(attack_hub, eve, victor):
    """victor's files are neither mounted in eve's container nor reachable by path.

    Weakened, a shared volume (`volumes` with victor's workspace in eve's spec)
    would make /home/victor appear; the guard lets admins mount data, so the
    isolation comes from each server mounting its own workspace only.
    """
    seen = json.loads(eve.run(textwrap.dedent("""
        import os, json
        diaries = [os.path.join(root, "diary.txt")
                   for top in ("/home", "/tmp", "/mnt", "/srv", "/media", "/opt", "/var", "/run")
                   for root, _, files in os.walk(top) if "diary.txt" in files]
        print(json.dumps({"home": sorted(os.listdir("/home")), "diaries": diaries}))
    """)))
    assert seen == {"home": ["eve"], "diaries": []}
    assert_everyone_else_lives(attack_hub, victor)


def test_another_users_server_refuses_direct_requests(attack_hub, eve, victor, engine):
    """eve talks to victor's container directly, bypassing the proxy, with and without a token.

    With network isolation on, the connection itself fails; without it, victor's
    server answers 403/302 because eve's token grants no access to victor's
    server. Weakened, with victor's own token, the same request reads his files
    (checked at the end), so the probe does detect success.
    """
    victor_ip = next(iter(engine.containers.get(f"{TEST_PREFIX}-victor--").attrs["NetworkSettings"]["Networks"].values()))["IPAddress"]
    probe = textwrap.dedent(f"""
        import json, os, urllib.request, urllib.error
        def get(token):
            req = urllib.request.Request("http://{victor_ip}:8888/user/victor/api/contents/diary.txt")
            if token:
                req.add_header("Authorization", "token " + token)
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    return r.status, "dear diary" in r.read().decode()
            except urllib.error.HTTPError as e:
                return e.code, False
            except OSError as e:
                return str(e), False
        print(json.dumps([get(None), get(os.environ["JUPYTERHUB_API_TOKEN"])]))
    """)
    results = json.loads(eve.run(probe))
    for status, read_diary in results:
        assert not read_diary and status != 200, results
    assert_everyone_else_lives(attack_hub, victor)
    # the same request with victor's credentials reaches the diary (from the host)
    r = requests.get(
        f"http://{victor_ip}:8888/user/victor/api/contents/diary.txt",
        headers={"Authorization": f"token {attack_hub.user_token('victor')}"}, timeout=10,
    )
    assert r.status_code == 200 and "dear diary" in r.text


def test_memory_bomb_kills_the_kernel_not_the_server(attack_hub, victor, engine):
    """1.5 GiB in a 1 GiB server. Weakened (mem_limit 4G) the same allocation succeeds:
    see test_memory_bomb_needs_the_limit."""
    victim = Kernel(attack_hub, "eve")
    try:
        with pytest.raises(Exception):  # noqa: B017 - a killed kernel fails the call in more than one way
            victim.run("x = b'x' * (1536 * 1024 ** 2)\nprint('survived')", timeout=30)
    finally:
        victim.close()
    server = engine.containers.get(f"{TEST_PREFIX}-eve--")
    assert server.attrs["State"]["Running"]
    fresh = Kernel(attack_hub, "eve")
    assert fresh.run("print('still here')").strip() == "still here"
    fresh.close()
    assert_everyone_else_lives(attack_hub, victor)


def test_memory_bomb_needs_the_limit(engine):
    container = engine.containers.run(
        SINGLEUSER_IMAGE, ["python3", "-c", "x = b'x' * (1536 * 1024 ** 2); print('survived')"],
        name=f"{TEST_PREFIX}-weakened-memory", detach=True, mem_limit="4g", user="300999:300999",
        network_mode="none", read_only=True,
    )
    try:
        container.wait(timeout=120)
        assert "survived" in container.logs().decode()
    finally:
        container.remove(force=True)
