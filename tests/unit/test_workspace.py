"""workspace_helper (decisions, account files, and main() against a temporary directory)
and workspace (the helper's container spec, labels, and reading its result)."""

import json
import os
import stat
from pathlib import Path

import pytest

from hardened_spawner.core.identity import make_identity
from hardened_spawner.docker import workspace_helper
from hardened_spawner.docker.workspace import (
    IDENTITY_VOLUME,
    PreparedMarker,
    WorkspaceError,
    helper_container_spec,
    helper_source,
    identity_file_sources,
    interpret_helper_result,
    volume_labels,
)
from hardened_spawner.docker.workspace_helper import (
    ADOPT,
    INITIALISE,
    READY,
    REFUSE,
    decide,
    merge_account_file,
)

ALICE = make_identity("alice", 300001, "/home/{username}")
PASSWD_ENTRY = "alice:x:300001:300001::/home/alice:/bin/bash"
GROUP_ENTRY = "alice:x:300001:"

# --- workspace_helper.decide ---------------------------------------------


@pytest.mark.parametrize(
    "owner_uid, is_empty, adopt, expected",
    [
        # already the user's: nothing to decide, whatever else holds
        (300001, True, False, READY),
        (300001, False, False, READY),
        (300001, False, True, READY),
        # a fresh volume: empty and root-owned
        (0, True, False, INITIALISE),
        (0, True, True, INITIALISE),
        # root-owned but holding data: somebody's files
        (0, False, False, REFUSE),
        (0, False, True, ADOPT),
        # another user's UID, empty or not
        (300002, True, False, REFUSE),
        (300002, False, False, REFUSE),
        (300002, True, True, ADOPT),
        (300002, False, True, ADOPT),
    ],
)
def test_decide(owner_uid, is_empty, adopt, expected):
    assert decide(owner_uid, is_empty, 300001, adopt) == expected


def test_actions_are_the_documented_strings():
    assert (READY, INITIALISE, ADOPT, REFUSE) == ("ready", "initialise", "adopt", "refuse")
    assert workspace_helper.EXIT_REFUSED == 3


# --- workspace_helper.merge_account_file ---------------------------------

IMAGE_PASSWD = """\
root:x:0:0:root:/root:/bin/bash
jovyan:x:1000:100::/home/jovyan:/bin/bash
alice:x:1001:1001::/home/alice:/bin/sh
other:x:300001:300001::/home/other:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
"""

IMAGE_GROUP = """\
root:x:0:
users:x:100:jovyan
alice:x:1001:
other:x:300001:
"""


@pytest.mark.parametrize(
    "image_text, entry, expected",
    [
        (
            IMAGE_PASSWD,
            PASSWD_ENTRY,
            # 'alice' (same name) and 'other' (same number) go; the rest stay in order
            "root:x:0:0:root:/root:/bin/bash\n"
            "jovyan:x:1000:100::/home/jovyan:/bin/bash\n"
            "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
            "alice:x:300001:300001::/home/alice:/bin/bash\n",
        ),
        (
            IMAGE_GROUP,
            GROUP_ENTRY,
            "root:x:0:\nusers:x:100:jovyan\nalice:x:300001:\n",
        ),
        # no trailing newline in the image, blank lines and junk without 3 fields dropped
        (
            "root:x:0:0:root:/root:/bin/bash\n\n# comment\njunk",
            PASSWD_ENTRY,
            "root:x:0:0:root:/root:/bin/bash\nalice:x:300001:300001::/home/alice:/bin/bash\n",
        ),
        # an image without the file at all
        ("", PASSWD_ENTRY, "alice:x:300001:300001::/home/alice:/bin/bash\n"),
        ("", GROUP_ENTRY, "alice:x:300001:\n"),
    ],
)
def test_merge_account_file(image_text, entry, expected):
    assert merge_account_file(image_text, entry) == expected


def test_merge_account_file_compares_whole_fields():
    # 'alice2' and UID 3000010 only look like the entry; they stay
    text = "alice2:x:1002:1002::/home/alice2:/bin/sh\nbig:x:3000010:3000010::/x:/bin/sh\n"
    assert merge_account_file(text, PASSWD_ENTRY) == text + PASSWD_ENTRY + "\n"


# --- workspace_helper.main, for real, against a temporary directory -------

FAKE_IMAGE_FILES = {"/etc/passwd": IMAGE_PASSWD, "/etc/group": IMAGE_GROUP}


@pytest.fixture
def helper_dirs(tmp_path, monkeypatch):
    workspace = tmp_path / "workspace"
    identity = tmp_path / "identity"
    workspace.mkdir(mode=0o755)
    identity.mkdir()
    monkeypatch.setattr(workspace_helper, "WORKSPACE", str(workspace))
    monkeypatch.setattr(workspace_helper, "IDENTITY", str(identity))
    # the image's own /etc files, not the test host's
    monkeypatch.setattr(workspace_helper, "_read", FAKE_IMAGE_FILES.__getitem__)
    return workspace, identity


def _helper_env(monkeypatch, uid, gid, adopt, name="alice"):
    monkeypatch.setenv("HS_UID", str(uid))
    monkeypatch.setenv("HS_GID", str(gid))
    monkeypatch.setenv("HS_ADOPT", "1" if adopt else "0")
    monkeypatch.setenv("HS_PASSWD_ENTRY", f"{name}:x:{uid}:{gid}::/home/{name}:/bin/bash")
    monkeypatch.setenv("HS_GROUP_ENTRY", f"{name}:x:{gid}:")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_main_ready_writes_identity_files(helper_dirs, monkeypatch, capsys):
    workspace, identity = helper_dirs
    uid, gid = os.getuid(), os.getgid()
    (workspace / "notebook.ipynb").write_text("{}")
    _helper_env(monkeypatch, uid, gid, adopt=False)

    assert workspace_helper.main() == 0

    assert json.loads(capsys.readouterr().out) == {"action": "ready", "owner_uid": uid, "owner_gid": gid}
    assert (workspace.stat().st_uid, workspace.stat().st_gid) == (uid, gid)
    assert _mode(workspace) == 0o700
    target = identity / str(uid)
    assert sorted(p.name for p in target.iterdir()) == ["group", "passwd"]  # no .tmp left
    passwd, group = target / "passwd", target / "group"
    assert _mode(passwd) == 0o644
    assert _mode(group) == 0o644
    assert passwd.read_text() == merge_account_file(IMAGE_PASSWD, f"alice:x:{uid}:{gid}::/home/alice:/bin/bash")
    assert group.read_text() == merge_account_file(IMAGE_GROUP, f"alice:x:{gid}:")
    assert passwd.read_text().endswith(f"alice:x:{uid}:{gid}::/home/alice:/bin/bash\n")


def test_main_replaces_existing_identity_files(helper_dirs, monkeypatch, capsys):
    workspace, identity = helper_dirs
    uid, gid = os.getuid(), os.getgid()
    target = identity / str(uid)
    target.mkdir()
    (target / "passwd").write_text("stale\n")
    os.chmod(target / "passwd", 0o600)
    _helper_env(monkeypatch, uid, gid, adopt=False, name="bob")

    assert workspace_helper.main() == 0

    capsys.readouterr()
    assert (target / "passwd").read_text().endswith(f"bob:x:{uid}:{gid}::/home/bob:/bin/bash\n")
    assert "stale" not in (target / "passwd").read_text()
    assert _mode(target / "passwd") == 0o644


def test_main_refuses_someone_elses_workspace(helper_dirs, monkeypatch, capsys):
    workspace, identity = helper_dirs
    me, my_gid = os.getuid(), os.getgid()
    (workspace / "theirs.txt").write_text("private")  # not empty, so never a fresh volume
    before = workspace.stat()
    _helper_env(monkeypatch, me + 1, my_gid + 1, adopt=False)

    assert workspace_helper.main() == workspace_helper.EXIT_REFUSED

    assert json.loads(capsys.readouterr().out) == {"action": "refuse", "owner_uid": me, "owner_gid": my_gid}
    after = workspace.stat()
    assert (after.st_uid, after.st_gid, after.st_mode) == (before.st_uid, before.st_gid, before.st_mode)
    assert (workspace / "theirs.txt").stat().st_uid == me
    assert list(identity.iterdir()) == []  # no account files for a refused user


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another UID needs root")


@needs_root
def test_main_initialises_a_fresh_root_owned_volume(helper_dirs, monkeypatch, capsys):
    workspace, identity = helper_dirs
    os.chown(workspace, 0, 0)
    _helper_env(monkeypatch, 300001, 300001, adopt=False)

    assert workspace_helper.main() == 0

    assert json.loads(capsys.readouterr().out) == {"action": "initialise", "owner_uid": 0, "owner_gid": 0}
    assert (workspace.stat().st_uid, workspace.stat().st_gid, _mode(workspace)) == (300001, 300001, 0o700)
    assert (identity / "300001" / "passwd").read_text().endswith(PASSWD_ENTRY + "\n")
    # what a server's start would write, there before a quota can be full (issue 28)
    jupyter, marker = workspace / ".jupyter", workspace / ".jupyter" / "migrated"
    assert [(p.stat().st_uid, p.stat().st_gid, _mode(p)) for p in (jupyter, marker)] == [
        (300001, 300001, 0o700), (300001, 300001, 0o600)]
    assert marker.read_text() == ""


def test_main_seeds_only_a_fresh_workspace(helper_dirs, monkeypatch, capsys):
    workspace, identity = helper_dirs
    _helper_env(monkeypatch, os.getuid(), os.getgid(), adopt=False)
    assert workspace_helper.main() == 0  # READY: the user's own files are never touched
    assert list(workspace.iterdir()) == []


@needs_root
def test_main_adopts_without_following_symlinks(helper_dirs, monkeypatch, capsys, tmp_path):
    workspace, identity = helper_dirs
    outside = tmp_path / "outside.txt"
    outside.write_text("host file")
    os.chown(outside, 0, 0)
    (workspace / "sub").mkdir()
    (workspace / "sub" / "data.csv").write_text("1,2")
    (workspace / "link").symlink_to(outside)
    for path in (workspace, workspace / "sub", workspace / "sub" / "data.csv"):
        os.chown(path, 4242, 4242)
    os.lchown(workspace / "link", 4242, 4242)
    _helper_env(monkeypatch, 300001, 300001, adopt=True)

    assert workspace_helper.main() == 0

    assert json.loads(capsys.readouterr().out) == {"action": "adopt", "owner_uid": 4242, "owner_gid": 4242}
    for path in (workspace, workspace / "sub", workspace / "sub" / "data.csv"):
        assert (path.stat().st_uid, path.stat().st_gid) == (300001, 300001), path
    assert os.lstat(workspace / "link").st_uid == 300001
    assert (outside.stat().st_uid, outside.stat().st_gid) == (0, 0)  # the link's target is untouched


# --- workspace: the helper's container spec -------------------------------


def _expected_helper_spec(adopt: bool):
    create = {
        "image": "registry.example.org/singleuser:1.2",
        "command": ["python3", "-c", helper_source()],
        "user": "0:0",
        "entrypoint": [],
        "environment": {
            "HS_UID": "300001",
            "HS_GID": "300001",
            "HS_ADOPT": "1" if adopt else "0",
            "HS_PASSWD_ENTRY": "alice:x:300001:300001::/home/alice:/bin/bash",
            "HS_GROUP_ENTRY": "alice:x:300001:",
        },
        "labels": {
            "org.jupyter.hardened-spawner.managed": "true",
            "org.jupyter.hardened-spawner.role": "helper",
            "org.jupyter.hardened-spawner.owner": "alice@example.org",
            "org.jupyter.hardened-spawner.version": "0.1.0",
        },
        "network_disabled": True,
    }
    host = {
        "mounts": [
            {
                "Type": "volume",
                "Source": "jupyterhub-workspace-alice",
                "Target": "/workspace",
                "VolumeOptions": {"NoCopy": True},
            },
            {"Type": "volume", "Source": "hardened-spawner-identity", "Target": "/identity"},
        ],
        "network_mode": "none",
        "cap_drop": ["ALL"],
        "cap_add": ["CHOWN", "FOWNER", "DAC_READ_SEARCH"] if adopt else ["CHOWN", "FOWNER"],
        "read_only": True,
        "security_opt": ["no-new-privileges:true"],
        "pids_limit": 32,
        "mem_limit": 134217728,
    }
    return create, host


@pytest.mark.parametrize("adopt", [False, True])
def test_helper_container_spec(adopt):
    spec = helper_container_spec(
        image="registry.example.org/singleuser:1.2",
        volume="jupyterhub-workspace-alice",
        identity=ALICE,
        owner="alice@example.org",
        allow_adopt=adopt,
        version="0.1.0",
    )
    assert spec == _expected_helper_spec(adopt)


def test_helper_source_is_the_helper_module():
    assert helper_source() == Path(workspace_helper.__file__).read_text()
    compile(helper_source(), "<helper>", "exec")  # what `python3 -c` will run


def test_identity_volume_name():
    assert IDENTITY_VOLUME == "hardened-spawner-identity"


@pytest.mark.parametrize(
    "mountpoint",
    [
        "/var/lib/docker/volumes/hardened-spawner-identity/_data",
        "/var/lib/docker/volumes/hardened-spawner-identity/_data/",
    ],
)
def test_identity_file_sources(mountpoint):
    assert identity_file_sources(mountpoint, 300001) == {
        "/var/lib/docker/volumes/hardened-spawner-identity/_data/300001/passwd": "/etc/passwd",
        "/var/lib/docker/volumes/hardened-spawner-identity/_data/300001/group": "/etc/group",
    }


def test_volume_labels():
    assert volume_labels("alice@example.org", ALICE, "0.1.0") == {
        "org.jupyter.hardened-spawner.managed": "true",
        "org.jupyter.hardened-spawner.role": "workspace",
        "org.jupyter.hardened-spawner.owner": "alice@example.org",
        "org.jupyter.hardened-spawner.uid": "300001",
        "org.jupyter.hardened-spawner.gid": "300001",
        "org.jupyter.hardened-spawner.version": "0.1.0",
    }


def test_prepared_marker_as_state():
    marker = PreparedMarker("jupyterhub-workspace-alice", 300001, "sha256:0123abcd")
    assert marker.as_state() == "jupyterhub-workspace-alice|300001|sha256:0123abcd"


# --- workspace: reading the helper's result -------------------------------


@pytest.mark.parametrize(
    "output, expected",
    [
        ('{"action": "ready", "owner_uid": 300001, "owner_gid": 300001}\n', "ready"),
        ('{"action": "initialise", "owner_uid": 0, "owner_gid": 0}', "initialise"),
        # anything the image prints first is ignored; the last line is the result
        ('some warning\n{"action": "adopt", "owner_uid": 4242, "owner_gid": 4242}\n\n', "adopt"),
    ],
)
def test_interpret_helper_result_success(output, expected):
    assert interpret_helper_result(0, output, volume="jupyterhub-workspace-alice", uid=300001) == expected


def test_interpret_helper_result_refusal():
    output = '{"action": "refuse", "owner_uid": 300002, "owner_gid": 300002}\n'
    with pytest.raises(WorkspaceError) as err:
        interpret_helper_result(3, output, volume="jupyterhub-workspace-alice", uid=300001)
    assert str(err.value) == (
        "Your workspace (volume jupyterhub-workspace-alice) belongs to UID 300002, not to your "
        "UID 300001, so it was left untouched. An admin can hand it over by setting "
        "HardenedSpawner.workspace_allow_adopt = True, or move the data."
    )


TRACEBACK = """\
Traceback (most recent call last):
  File "<string>", line 121, in <module>
  File "<string>", line 83, in main
  File "<string>", line 70, in main
    os.chown(WORKSPACE, uid, gid)
PermissionError: [Errno 1] Operation not permitted: '/workspace'
"""


@pytest.mark.parametrize(
    "exit_code, output, message",
    [
        (
            1,
            TRACEBACK,
            # the last five lines only
            "Preparing your workspace (volume jupyterhub-workspace-alice) failed with exit code 1: "
            '  File "<string>", line 121, in <module>\n'
            '  File "<string>", line 83, in main\n'
            '  File "<string>", line 70, in main\n'
            "    os.chown(WORKSPACE, uid, gid)\n"
            "PermissionError: [Errno 1] Operation not permitted: '/workspace'",
        ),
        (
            0,
            "hello from the entrypoint\n",
            "Preparing your workspace (volume jupyterhub-workspace-alice) failed with exit code 0: "
            "hello from the entrypoint",
        ),
        (
            0,
            "",
            "Preparing your workspace (volume jupyterhub-workspace-alice) failed with exit code 0: ",
        ),
        (
            0,
            "{}",
            "Preparing your workspace (volume jupyterhub-workspace-alice) failed with exit code 0: {}",
        ),
        (
            # a refusal exit code without the helper's JSON is a failure, not a refusal
            3,
            "exec: python3: not found",
            "Preparing your workspace (volume jupyterhub-workspace-alice) failed with exit code 3: "
            "exec: python3: not found",
        ),
        (
            # valid JSON but a failing exit code
            137,
            '{"action": "ready", "owner_uid": 0, "owner_gid": 0}',
            "Preparing your workspace (volume jupyterhub-workspace-alice) failed with exit code 137: "
            '{"action": "ready", "owner_uid": 0, "owner_gid": 0}',
        ),
    ],
)
def test_interpret_helper_result_failure(exit_code, output, message):
    with pytest.raises(WorkspaceError) as err:
        interpret_helper_result(exit_code, output, volume="jupyterhub-workspace-alice", uid=300001)
    assert str(err.value) == message


@pytest.mark.parametrize(
    "exit_code, output",
    [(0, "42"), (0, '"done"'), (0, '{"status": "ok"}'), (3, '{"action": "refuse"}')],
)
def test_interpret_helper_result_foreign_json_is_a_workspace_error(exit_code, output):
    with pytest.raises(WorkspaceError) as err:
        interpret_helper_result(exit_code, output, volume="jupyterhub-workspace-alice", uid=300001)
    assert str(err.value) == (
        f"Preparing your workspace (volume jupyterhub-workspace-alice) failed with exit code "
        f"{exit_code}: {output}"
    )
