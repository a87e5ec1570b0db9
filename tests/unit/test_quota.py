"""Workspace quotas (issue 28), pure: the decision for a user (core.quota), the Docker side's
readings and btrfs commands with a fake host (docker.quota), and the settings' checks."""

from __future__ import annotations

import subprocess

import docker.errors
import pytest
import requests
from traitlets import TraitError
from traitlets.config import Config

from hardened_spawner import labels
from hardened_spawner.core.quota import (
    BTRFS,
    ENGINE_SIZE,
    NO_METHOD,
    NO_QUOTA,
    QuotaPolicy,
    docker_method,
    format_size,
    quota_for,
    storage_request,
)
from hardened_spawner.docker import checks, quota
from hardened_spawner.docker.spawner import HardenedSpawner

MIB, GIB = 1024**2, 1024**3

# --- core.quota: one user's quota ---------------------------------------------------

POLICY = QuotaPolicy(default=10 * GIB, groups={"thesis": 200 * GIB, "guests": 1 * GIB, "staff": None})


@pytest.mark.parametrize(
    "groups, expected",
    [
        ([], 10 * GIB),  # nobody's group is listed: the default
        (["students"], 10 * GIB),
        (["thesis"], 200 * GIB),  # a group's entry replaces the default...
        (["guests"], 1 * GIB),  # ...also downwards
        (["guests", "thesis"], 200 * GIB),  # the largest of the user's groups wins
        (["thesis", "guests", "students"], 200 * GIB),
        (["staff"], None),  # a group without a quota
        (["staff", "thesis"], None),  # no quota is larger than any size
    ],
)
def test_quota_for(groups, expected):
    assert quota_for(POLICY, groups) == expected


@pytest.mark.parametrize(
    "policy, groups, expected",
    [
        (QuotaPolicy(), ["thesis"], None),  # no quota at all
        (QuotaPolicy(default=None, groups={"thesis": 200 * GIB}), ["thesis"], 200 * GIB),
        (QuotaPolicy(default=None, groups={"thesis": 200 * GIB}), ["other"], None),
        (QuotaPolicy(default=0), [], None),  # 0 is no quota too
    ],
)
def test_quota_for_without_a_default(policy, groups, expected):
    assert quota_for(policy, groups) == expected


@pytest.mark.parametrize(
    "policy, asks",
    [(QuotaPolicy(), False), (QuotaPolicy(10 * GIB), True), (QuotaPolicy(None, {"g": None}), False),
     (QuotaPolicy(None, {"g": GIB}), True)],
)
def test_asks_for_quotas(policy, asks):
    assert policy.asks_for_quotas is asks


@pytest.mark.parametrize(
    "wanted, btrfs_root, host_path, method",
    [
        (None, "", False, NO_QUOTA),
        (None, "/srv/workspaces", False, NO_QUOTA),
        (None, "", True, NO_QUOTA),
        (50 * MIB, "", False, ENGINE_SIZE),  # the engine's XFS size
        (50 * MIB, "/srv/workspaces", False, BTRFS),
        (50 * MIB, "", True, NO_METHOD),  # a host folder has none
    ],
)
def test_docker_method(wanted, btrfs_root, host_path, method):
    assert docker_method(wanted, btrfs_root=btrfs_root, host_path=host_path) == method


@pytest.mark.parametrize(
    "wanted, expected",
    [(None, "10Gi"), (0, "10Gi"), (50 * MIB, "50Mi"), (200 * GIB, "200Gi"), (1024**4, "1Ti"),
     (1536 * MIB, "1536Mi"), (3 * 1024 + 1, "3073")],
)
def test_storage_request(wanted, expected):
    assert storage_request(wanted, "10Gi") == expected


@pytest.mark.parametrize(
    "size, words",
    [(None, "no quota"), (512, "512 bytes"), (50 * MIB, "50 MiB"), (1536 * MIB, "1.5 GiB"), (10 * GIB, "10 GiB"),
     (2048, "2 KiB")],
)
def test_format_size(size, words):
    assert format_size(size) == words


# --- docker.quota: what an existing volume holds ---------------------------------------


@pytest.mark.parametrize(
    "options, method, size, path",
    [
        (None, NO_QUOTA, None, ""),
        ({}, NO_QUOTA, None, ""),
        ({"type": "none", "o": "bind", "device": "/srv/workspaces/jupyterhub-workspace-alice"}, BTRFS, None,
         "/srv/workspaces/jupyterhub-workspace-alice"),
        # a bind elsewhere is the admin's own volume, not a quota'd subvolume
        ({"type": "none", "o": "bind", "device": "/data/alice"}, NO_QUOTA, None, ""),
        ({"type": "none", "o": "bind", "device": "/srv/workspaces/a/b"}, NO_QUOTA, None, ""),
        ({"size": "10737418240"}, ENGINE_SIZE, 10 * GIB, ""),
        ({"size": "10G"}, ENGINE_SIZE, 10 * GIB, ""),
        ({"size": "512m"}, ENGINE_SIZE, 512 * MIB, ""),
        ({"size": "lots"}, NO_QUOTA, None, ""),
    ],
)
def test_volume_quota(options, method, size, path):
    assert quota.volume_quota({"Name": "v", "Options": options}, "/srv/workspaces/") == quota.VolumeQuota(
        method, size, path)


def test_a_bind_is_no_btrfs_quota_without_a_btrfs_root():
    volume = {"Options": {"type": "none", "o": "bind", "device": "/srv/workspaces/v"}}
    assert quota.volume_quota(volume, "").method == NO_QUOTA


def test_driver_options():
    assert quota.bind_options("/srv/workspaces/v") == {"type": "none", "o": "bind", "device": "/srv/workspaces/v"}
    assert quota.size_options(50 * MIB) == {"size": "52428800"}


@pytest.mark.parametrize("volume", ["", "..", ".", "a/b", "../etc"])
def test_subvolume_path_stays_under_the_root(volume):
    with pytest.raises(quota.BtrfsError):
        quota.subvolume_path("/srv/workspaces", volume)


def test_subvolume_path():
    assert quota.subvolume_path("/srv/workspaces/", "jupyterhub-workspace-alice") == (
        "/srv/workspaces/jupyterhub-workspace-alice")


# --- docker.quota: btrfs on a fake host --------------------------------------------

#: `btrfs qgroup show -rf --raw PATH` of btrfs-progs 6.2 (Debian 12), as measured here
SHOW_62 = """\
Qgroupid    Referenced    Exclusive  Max referenced   Path
--------    ----------    ---------  --------------   ----
0/256         52396032     52396032        52428800   jupyterhub-workspace-alice
"""
#: the same from btrfs-progs 5.x, without the Path column, and with no limit
SHOW_5 = """\
qgroupid         rfer         excl     max_rfer
--------         ----         ----     --------
0/257           16384        16384         none
"""


@pytest.mark.parametrize("text, expected", [(SHOW_62, (52396032, 52428800)), (SHOW_5, (16384, None))])
def test_parse_qgroup_show(text, expected):
    if text is SHOW_5:  # older headers: the same columns under other names
        text = text.replace("rfer", "referenced", 1).replace("excl ", "exclusive ").replace("max_rfer", "max referenced")
    assert quota.parse_qgroup_show(text) == expected


@pytest.mark.parametrize("text", ["", "ERROR: something", "Qgroupid    Referenced\n--------\n"])
def test_parse_qgroup_show_refuses_what_it_cannot_read(text):
    with pytest.raises(quota.BtrfsError):
        quota.parse_qgroup_show(text)


class FakeHost:
    """A host's `btrfs` command: answers from a table of subvolumes and limits, and keeps
    every command it was given."""

    def __init__(self, subvolumes=None, folders=(), quotas_on=True, installed=True, btrfs=True):
        self.subvolumes: dict[str, int | None] = dict(subvolumes or {})  # path -> limit
        self.folders = set(folders)
        self.quotas_on, self.installed, self.btrfs = quotas_on, installed, btrfs
        self.commands: list[list[str]] = []

    def __call__(self, argv):
        argv = list(argv)
        if not self.installed:
            raise FileNotFoundError(2, "No such file or directory", "btrfs")
        self.commands.append(argv)
        path = argv[-1]
        match argv[1:3]:
            case ["subvolume", "show"]:
                return self._done(0 if path in self.subvolumes else 1, err="ERROR: Not a Btrfs subvolume")
            case ["subvolume", "create"]:
                if path in self.folders or path in self.subvolumes:
                    return self._done(1, err=f"ERROR: target path already exists: {path}")
                self.subvolumes[path] = None
                return self._done(0, out=f"Create subvolume '{path}'")
            case ["qgroup", "show"]:
                if not self.btrfs:
                    return self._done(1, err=f"ERROR: not a btrfs filesystem: {path}")
                if not self.quotas_on:
                    return self._done(1, err="ERROR: can't list qgroups: quotas not enabled")
                limit = self.subvolumes.get(path)
                return self._done(0, out=SHOW_62.replace("52428800", str(limit) if limit else "none"))
            case ["qgroup", "limit"]:
                self.subvolumes[path] = None if argv[3] == "none" else int(argv[3])
                return self._done(0)
        raise AssertionError(f"unexpected command {argv}")

    @staticmethod
    def _done(code, out="", err=""):
        return subprocess.CompletedProcess([], code, out, err)


ROOT = "/srv/workspaces"
ALICE = f"{ROOT}/jupyterhub-workspace-alice"


def test_a_new_workspace_becomes_a_subvolume_with_its_limit():
    host = FakeHost()
    assert quota.apply_btrfs_quota(ALICE, 50 * MIB, host) == (True, None)
    assert host.commands == [
        ["btrfs", "subvolume", "show", ALICE],
        ["btrfs", "subvolume", "create", ALICE],
        ["btrfs", "qgroup", "show", "-rf", "--raw", ALICE],
        ["btrfs", "qgroup", "limit", "52428800", ALICE],
    ]
    assert host.subvolumes == {ALICE: 50 * MIB}


def test_a_limit_that_is_right_is_left_alone():
    host = FakeHost({ALICE: 50 * MIB})
    assert quota.apply_btrfs_quota(ALICE, 50 * MIB, host) == (False, 50 * MIB)
    assert [c[1:3] for c in host.commands] == [["subvolume", "show"], ["qgroup", "show"]]


@pytest.mark.parametrize("wanted, argument", [(200 * GIB, "214748364800"), (20 * MIB, "20971520"), (None, "none")])
def test_a_changed_quota_changes_the_limit_and_nothing_else(wanted, argument):
    host = FakeHost({ALICE: 50 * MIB})
    assert quota.apply_btrfs_quota(ALICE, wanted, host) == (False, 50 * MIB)
    assert host.commands[-1] == ["btrfs", "qgroup", "limit", argument, ALICE]
    assert not [c for c in host.commands if c[1] == "subvolume" and c[2] != "show"]  # no create, no delete


def test_a_folder_that_is_no_subvolume_is_left_alone():
    host = FakeHost(folders={ALICE})
    with pytest.raises(quota.BtrfsError, match="target path already exists"):
        quota.apply_btrfs_quota(ALICE, 50 * MIB, host)
    assert [c[1:3] for c in host.commands] == [["subvolume", "show"], ["subvolume", "create"]]


@pytest.mark.parametrize(
    "host, problem",
    [
        (FakeHost(), ""),
        (FakeHost(quotas_on=False), "btrfs qgroup show /srv/workspaces failed: ERROR: can't list qgroups: "
                                    "quotas not enabled"),
        (FakeHost(btrfs=False), "btrfs qgroup show /srv/workspaces failed: ERROR: not a btrfs filesystem: "
                                "/srv/workspaces"),
        (FakeHost(installed=False), "the btrfs command is not installed where the hub runs (Debian: btrfs-progs)"),
    ],
)
def test_btrfs_problem(host, problem):
    assert quota.btrfs_problem(ROOT, host) == problem


def test_btrfs_problem_asks_the_root_itself():
    host = FakeHost()
    quota.btrfs_problem(ROOT, host)
    assert host.commands == [["btrfs", "qgroup", "show", "-f", "--raw", ROOT]]


def test_a_command_that_cannot_run_is_a_btrfs_error():
    def hangs(argv):
        raise subprocess.TimeoutExpired(argv, 60)

    with pytest.raises(quota.BtrfsError, match="could not run"):
        quota.set_limit(ALICE, MIB * 50, hangs)


# --- docker.quota: the engine's XFS size ----------------------------------------------


class SizeEngine:
    def __init__(self, supported):
        self.supported, self.volumes = supported, {}

    def create_volume(self, name=None, driver=None, driver_opts=None, labels=None):
        if not self.supported:
            response = requests.Response()
            response.status_code = 500
            raise docker.errors.APIError("500 Server Error", response,
                                         explanation=f"create {name}: {quota.NO_ENGINE_QUOTA}")
        self.volumes[name] = driver_opts

    def remove_volume(self, name, force=False):
        del self.volumes[name]


def test_the_engine_size_probe_leaves_nothing():
    engine = SizeEngine(supported=True)
    assert quota.engine_size_problem(engine) == ""
    assert engine.volumes == {}


def test_the_engine_size_probe_says_what_the_engine_answered():
    assert quota.engine_size_problem(SizeEngine(supported=False)) == "quota size requested but no quota support"


# --- the words ----------------------------------------------------------------------------


def test_the_hub_start_warning_names_the_setting_and_what_to_provide():
    assert quota.unenforced_message("HardenedSpawner", "10 GiB", ENGINE_SIZE, "the engine said no", False) == (
        "HardenedSpawner.workspace_quota is 10 GiB, but it cannot be enforced here: the engine said no. Provide "
        "XFS with project quotas for the engine's volumes (/var/lib/docker/volumes on an XFS filesystem mounted "
        "with the pquota option), or a btrfs directory with quotas on (btrfs quota enable) named in "
        "HardenedSpawner.workspace_btrfs_root. Workspaces are made without a quota meanwhile: one user can fill "
        "the disk. Set HardenedSpawner.workspace_quota = None to run without quotas knowingly, or "
        "HardenedSpawner.workspace_quota_required = True to refuse such spawns."
    )
    assert quota.unenforced_message("HardenedSpawner", "50 MiB", BTRFS, "no btrfs", True).endswith(
        "Spawns are refused until it can (HardenedSpawner.workspace_quota_required is True).")


def test_the_refusal_names_the_setting_and_no_host_path():
    refusal = quota.refusal("HardenedSpawner", 50 * MIB, "jupyterhub-workspace-alice", "detail for the log: /srv/x")
    assert str(refusal) == (
        "Your server was not started: this hub requires a disk quota on every workspace "
        "(HardenedSpawner.workspace_quota_required), and the quota of 50 MiB cannot be enforced on your "
        "workspace (volume jupyterhub-workspace-alice) at the moment. Nothing of yours was changed. Please "
        "tell your hub admin; the hub log says what is missing.")
    assert refusal.detail == "detail for the log: /srv/x"


# --- the settings -------------------------------------------------------------------------


def _spawner(**settings) -> HardenedSpawner:
    config = Config()
    for name, value in settings.items():
        setattr(config.HardenedSpawner, name, value)
    return HardenedSpawner(config=config)


def test_defaults():
    spawner = _spawner()
    assert spawner.workspace_quota == 10 * GIB
    assert spawner.workspace_quota_group == {}
    assert spawner.workspace_quota_required is False
    assert spawner.workspace_btrfs_root == ""
    assert spawner.container_log_config() == {
        "type": "json-file", "config": {"max-size": "10485760", "max-file": "3"}}


@pytest.mark.parametrize(
    "settings, expected",
    [
        ({"workspace_quota": "50M"}, 50 * MIB),
        ({"workspace_quota": "50m"}, 50 * MIB),
        ({"workspace_quota": "1.5G"}, 1536 * MIB),
        ({"workspace_quota": 52428800}, 50 * MIB),
        ({"workspace_quota": "52428800"}, 50 * MIB),
        ({"workspace_quota": None}, None),
        ({"workspace_quota": 0}, None),
        ({"workspace_quota": "0"}, None),
    ],
)
def test_workspace_quota_values(settings, expected):
    assert _spawner(**settings).workspace_quota == expected


def test_group_quotas_are_parsed():
    spawner = _spawner(workspace_quota_group={"thesis": "200G", "staff": None, "guests": 0, "lab": 50 * MIB})
    assert spawner.workspace_quota_group == {"thesis": 200 * GIB, "staff": None, "guests": None, "lab": 50 * MIB}
    assert spawner.workspace_quota_for(["guests", "lab"]) is None
    assert spawner.workspace_quota_for(["lab"]) == 50 * MIB
    assert spawner.quota_summary() == "10 GiB (guests: no quota, lab: 50 MiB, staff: no quota, thesis: 200 GiB)"


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"workspace_quota": "10GB"}, "HardenedSpawner.workspace_quota = '10GB' is not a size like '10G' or '512M'."),
        ({"workspace_quota": "lots"}, "HardenedSpawner.workspace_quota = 'lots' is not a size like '10G' or '512M'."),
        ({"workspace_quota": "1M"},
         "HardenedSpawner.workspace_quota is 1048576 bytes; use None or 0 for no quota, or at least 10M."),
        ({"workspace_quota": -5},
         "HardenedSpawner.workspace_quota is -5 bytes; use None or 0 for no quota, or at least 10M."),
        ({"workspace_quota_group": {"thesis": "lots"}},
         "HardenedSpawner.workspace_quota_group['thesis'] = 'lots' is not a size like '200G' (or None for no quota)."),
        ({"workspace_quota_group": {"thesis": [1]}},
         "HardenedSpawner.workspace_quota_group['thesis'] = [1] is not a size like '200G' (or None for no quota)."),
        ({"workspace_quota_group": {"thesis": "1K"}},
         "HardenedSpawner.workspace_quota_group['thesis'] is 1024 bytes; use None or 0 for no quota, or at least 10M."),
        ({"container_log_driver": "syslog"},
         "HardenedSpawner.container_log_driver must be 'json-file' or 'local', not 'syslog': other drivers keep "
         "no per-container cap on the host or no log the hub can read."),
        ({"container_log_max_size": "10K"}, "HardenedSpawner.container_log_max_size must be at least 1M, not 10240."),
        ({"container_log_max_size": "ten"},
         "HardenedSpawner.container_log_max_size = 'ten' is not a size like '10G' or '512M'."),
        ({"container_log_max_files": 0}, "HardenedSpawner.container_log_max_files must be 1 to 100, not 0."),
        ({"workspace_btrfs_root": "srv/workspaces"},
         "HardenedSpawner.workspace_btrfs_root must be an absolute directory other than /, not 'srv/workspaces'."),
        ({"workspace_btrfs_root": "/"},
         "HardenedSpawner.workspace_btrfs_root must be an absolute directory other than /, not '/'."),
    ],
    ids=lambda value: next(iter(value)) if isinstance(value, dict) else None,
)
def test_refused_at_construction(settings, message):
    with pytest.raises(TraitError) as refused:
        _spawner(**settings)
    assert str(refused.value) == message


def test_the_log_settings_make_the_log_config():
    spawner = _spawner(container_log_driver="local", container_log_max_size="2M", container_log_max_files=2)
    assert spawner.container_log_config() == {"type": "local", "config": {"max-size": "2097152", "max-file": "2"}}


def test_btrfs_root_is_normalised():
    assert _spawner(workspace_btrfs_root="/srv/workspaces/").workspace_btrfs_root == "/srv/workspaces"


def test_a_btrfs_root_and_host_folders_are_one_too_many():
    spawner = _spawner(workspace_btrfs_root="/srv/workspaces", workspace_host_path="/data/{username}")
    with pytest.raises(TraitError, match="workspace_btrfs_root and HardenedSpawner.workspace_host_path are both set"):
        spawner.check_config()


def test_the_kubernetes_spawner_words_its_own_class():
    class Other(quota_settings_class()):  # stands for HardenedKubeSpawner, whose mixin this is too
        pass

    with pytest.raises(TraitError, match=r"^Other\.workspace_quota = 'x' is not a size"):
        Other(workspace_quota="x")


def quota_settings_class():
    from hardened_spawner.quota_settings import WorkspaceQuotaSettings

    return WorkspaceQuotaSettings


# --- `check`: workspaces without a quota ---------------------------------------------


def _workspace(name, uid, options=None):
    return {"Name": name, "Options": options,
            "Labels": {labels.MANAGED: "true", labels.ROLE: labels.ROLE_WORKSPACE, labels.OWNER: name.split("-")[-1],
                       labels.UID: str(uid)}}


class Volumes:
    def __init__(self, volumes):
        self.found = volumes
        self.filters = None

    def volumes(self, filters=None):
        self.filters = filters
        return {"Volumes": self.found}


WORKSPACES = [
    _workspace("ws-carol", 200003, {"size": str(10 * GIB)}),
    _workspace("ws-alice", 200001, {"type": "none", "o": "bind", "device": f"{ROOT}/ws-alice"}),
    _workspace("ws-bob", 200002),  # from before quotas
]


def test_check_lists_the_workspaces_and_their_quotas():
    client, host = Volumes(WORKSPACES), FakeHost({f"{ROOT}/ws-alice": 50 * MIB})
    found = checks.workspace_quotas(client, ROOT, host)
    assert client.filters == {"label": [f"{labels.MANAGED}=true", f"{labels.ROLE}=workspace"]}
    assert found == [
        checks.WorkspaceQuota("ws-alice", "alice", "200001", BTRFS, 50 * MIB, 52396032),
        checks.WorkspaceQuota("ws-bob", "bob", "200002", NO_QUOTA),
        checks.WorkspaceQuota("ws-carol", "carol", "200003", ENGINE_SIZE, 10 * GIB),
    ]


def test_check_says_which_workspaces_have_no_quota():
    spawner = _spawner(workspace_btrfs_root=ROOT, workspace_quota="50M")
    report = checks.workspace_quota_report(Volumes(WORKSPACES), spawner, FakeHost({f"{ROOT}/ws-alice": None}))
    assert checks.workspace_quota_as_text(report) == (
        "Workspaces without a quota (HardenedSpawner.workspace_quota is 50 MiB): 2 of 3.\n"
        "    ws-alice  owner=alice  uid=200001\n"
        "    ws-bob  owner=bob  uid=200002\n"
        "  They are used as they are; move their files into a new workspace to give them one.\n"
    )
    assert checks.workspace_quota_exit_status(report) == 0  # informational unless quotas are required
    assert checks.workspace_quota_as_json(report)["without_quota"] == ["ws-alice", "ws-bob"]
    required = _spawner(workspace_btrfs_root=ROOT, workspace_quota="50M", workspace_quota_required=True)
    report = checks.workspace_quota_report(Volumes(WORKSPACES), required, FakeHost({f"{ROOT}/ws-alice": 50 * MIB}))
    assert checks.workspace_quota_exit_status(report) == 1
    assert "(HardenedSpawner.workspace_quota_required refuses their spawns)" in checks.workspace_quota_as_text(report)


def test_check_says_when_a_btrfs_limit_cannot_be_read():
    report = checks.workspace_quota_report(Volumes(WORKSPACES[1:2]), _spawner(workspace_btrfs_root=ROOT),
                                           FakeHost(installed=False))
    assert checks.workspace_quota_as_text(report).splitlines()[1:] == [
        "    ws-alice: its btrfs limit could not be read (the btrfs command is not installed where the hub runs "
        "(Debian: btrfs-progs))",
    ]


def test_check_says_nothing_of_quotas_when_none_is_asked():
    report = checks.workspace_quota_report(Volumes(WORKSPACES), _spawner(workspace_quota=None))
    assert report is None
    assert checks.workspace_quota_as_text(report) == "" and checks.workspace_quota_as_json(report) is None
    assert checks.workspace_quota_exit_status(report) == 0
