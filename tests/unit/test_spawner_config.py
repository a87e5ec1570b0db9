"""HardenedSpawner's settings: defaults, validation at construction, and check_config(),
without a hub or a Docker engine (only traitlets)."""

import re

import pytest
from dockerspawner import DockerSpawner
from traitlets import TraitError
from traitlets.config import Config

from hardened_spawner.docker.spawner import HardenedSpawner


def _spawner(**settings) -> HardenedSpawner:
    config = Config()
    for name, value in settings.items():
        setattr(config.HardenedSpawner, name, value)
    return HardenedSpawner(config=config)


def _exactly(message: str) -> str:
    return "^" + re.escape(message) + "$"


# --- defaults ------------------------------------------------------------


def test_defaults():
    spawner = _spawner()
    assert spawner.mem_limit == 8 * 1024**3
    assert spawner.cpu_limit == 4.0
    assert spawner.remove is True
    assert spawner.network_name == "hardened-spawner-users"
    assert spawner.shm_size == 1024**3
    assert spawner.tmp_size == 1024**3
    assert spawner.pids_limit == 1024
    assert spawner.uid_min == 200000
    assert spawner.uid_max == 999_999_999
    assert spawner.uid_map == {}
    assert spawner.cap_add == []
    assert spawner.extra_tmpfs == {}
    assert spawner.seccomp_profile == ""
    assert spawner.apparmor_profile == "docker-default"
    assert spawner.workspace_allow_adopt is False
    assert spawner.gpu_inventory == "none"
    assert spawner.gpu_max_per_user == 1
    assert spawner.gpu_max_users_per_gpu == 1
    assert spawner.gpu_default_per_user == 0


def test_the_start_has_the_time_plain_dockerspawner_has_for_start_and_answer_together():
    # DockerSpawner: 60 s to start the container, then http_timeout for the server to answer;
    # HardenedSpawner's start covers both (and the start queue), so its default is their sum
    assert (HardenedSpawner().start_timeout, DockerSpawner().start_timeout + DockerSpawner().http_timeout) == (90, 90)
    assert HardenedSpawner(http_timeout=120).start_timeout == 180
    assert HardenedSpawner(start_timeout=45, http_timeout=120).start_timeout == 45  # an admin's value stands


def test_default_config_passes_check_config():
    assert _spawner().check_config() is None


@pytest.mark.parametrize(
    "cap_add, expected",
    [
        (["net_bind_service"], ["NET_BIND_SERVICE"]),
        (["CAP_KILL", "sys_nice"], ["KILL", "SYS_NICE"]),
        ([], []),
    ],
)
def test_cap_add_is_normalised(cap_add, expected):
    assert _spawner(cap_add=cap_add).cap_add == expected


def test_sizes_are_parsed():
    spawner = _spawner(shm_size="2G", tmp_size="512M", extra_tmpfs={"/var/tmp": "256M"}, mem_limit="1G")
    assert (spawner.shm_size, spawner.tmp_size, spawner.mem_limit) == (2 * 1024**3, 512 * 1024**2, 1024**3)
    assert spawner.extra_tmpfs == {"/var/tmp": 256 * 1024**2}


def test_seccomp_profile_file_is_accepted(tmp_path):
    profile = tmp_path / "seccomp.json"
    profile.write_text('{"defaultAction": "SCMP_ACT_ERRNO"}')
    assert _spawner(seccomp_profile=str(profile)).seccomp_profile == str(profile)


# --- refused at construction -----------------------------------------------

TMPFS_PATH = (
    "HardenedSpawner.extra_tmpfs: {!r} must be an absolute path other than /, /tmp and /dev/shm "
    "(those have tmp_size and shm_size)."
)


@pytest.mark.parametrize(
    "settings, message",
    [
        (
            {"uid_min": 500},
            "HardenedSpawner.uid_min is 500; it must be at least 1000 so that no user runs as root "
            "or as a host system account. Pick a range above your host's human accounts, e.g. 200000.",
        ),
        (
            {"cap_add": ["SYS_ADMIN"]},
            "HardenedSpawner.cap_add: SYS_ADMIN may not be added; it would weaken isolation between "
            "users. Capabilities that may be added: CHOWN, FOWNER, KILL, NET_BIND_SERVICE, SETGID, "
            "SETUID, SYS_NICE.",
        ),
        ({"cap_add": ["NOPE"]}, "HardenedSpawner.cap_add: 'NOPE' is not a Linux capability."),
        ({"pids_limit": 0}, "HardenedSpawner.pids_limit must be at least 1, not 0."),
        ({"pids_limit": -1}, "HardenedSpawner.pids_limit must be at least 1, not -1."),
        ({"docker_threads": 0}, "HardenedSpawner.docker_threads must be at least 1, not 0."),
        ({"concurrent_starts": -1}, "HardenedSpawner.concurrent_starts must be 0 (no limit), a positive "
                                    "number or None (twice the engine's CPUs), not -1."),
        ({"shm_size": "1M"}, "HardenedSpawner.shm_size is 1048576 bytes; use at least 64M (e.g. '1G')."),
        ({"tmp_size": "63M"}, "HardenedSpawner.tmp_size is 66060288 bytes; use at least 64M (e.g. '1G')."),
        ({"extra_tmpfs": {"relative": "1M"}}, TMPFS_PATH.format("relative")),
        ({"extra_tmpfs": {"/tmp": "1M"}}, TMPFS_PATH.format("/tmp")),
        ({"extra_tmpfs": {"/tmp/": "1M"}}, TMPFS_PATH.format("/tmp/")),
        ({"extra_tmpfs": {"/dev/shm": "1M"}}, TMPFS_PATH.format("/dev/shm")),
        ({"extra_tmpfs": {"/": "1M"}}, TMPFS_PATH.format("/")),
        (
            {"extra_tmpfs": {"/var/tmp": "lots"}},
            "HardenedSpawner.extra_tmpfs['/var/tmp'] = 'lots' is not a size like '256M'.",
        ),
        ({"seccomp_profile": "unconfined"}, "HardenedSpawner.seccomp_profile: 'unconfined' is never allowed."),
        ({"seccomp_profile": " unconfined "}, "HardenedSpawner.seccomp_profile: 'unconfined' is never allowed."),
        (
            {"mem_limit": "100M"},
            "HardenedSpawner.mem_limit must be set and at least 128M, not 104857600.",
        ),
        ({"mem_limit": None}, "HardenedSpawner.mem_limit must be set and at least 128M, not None."),
        ({"cpu_limit": 0}, "HardenedSpawner.cpu_limit must be > 0, not 0.0."),
        ({"cpu_limit": -1.5}, "HardenedSpawner.cpu_limit must be > 0, not -1.5."),
        ({"cpu_limit": None}, "HardenedSpawner.cpu_limit must be > 0, not None."),
        (
            {"gpu_max_users_per_gpu": 0},
            "HardenedSpawner.gpu_max_users_per_gpu must be at least 1, not 0.",
        ),
        ({"gpu_max_per_user": -1}, "HardenedSpawner.gpu_max_per_user must be at least 0, not -1."),
        ({"gpu_default_per_user": -1}, "HardenedSpawner.gpu_default_per_user must be at least 0, not -1."),
        ({"gpu_idle_timeout": -1}, "HardenedSpawner.gpu_idle_timeout must be at least 0, not -1."),
        ({"gpu_max_hold": -60}, "HardenedSpawner.gpu_max_hold must be at least 0, not -60."),
        ({"image_allowed_special_files": ["usr/bin/ping"]},
         "HardenedSpawner.image_allowed_special_files: 'usr/bin/ping' is not an absolute path (name the file "
         "as the container sees it, e.g. /usr/bin/ping)."),
        ({"image_scanner": ["trivy", "image", "--format", "json"]},
         "HardenedSpawner.image_scanner must name the image to scan with {image_id} (or {image}), "
         "e.g. ['trivy', 'image', '--format', 'json', '{image_id}']."),
        ({"image_scanner": ["/nonexistent/trivy", "{image_id}"]},
         "HardenedSpawner.image_scanner: '/nonexistent/trivy' is not an executable on the hub's PATH. "
         "Install the scanner, or give its absolute path."),
        ({"image_scan_severity": "severe"},
         "HardenedSpawner.image_scan_severity must be one of UNKNOWN, NEGLIGIBLE, LOW, MEDIUM, HIGH, CRITICAL, "
         "not 'severe'."),
        ({"image_scan_max_age": 0}, "HardenedSpawner.image_scan_max_age must be a positive number of seconds."),
        ({"image_scan_timeout": -5}, "HardenedSpawner.image_scan_timeout must be a positive number of seconds."),
    ],
    ids=lambda value: next(iter(value)) if isinstance(value, dict) else None,
)
def test_refused_at_construction(settings, message):
    with pytest.raises(TraitError, match=_exactly(message)):
        _spawner(**settings)


@pytest.mark.parametrize(
    "content, error",
    [
        (None, "[Errno 2] No such file or directory: '{path}'"),
        ("not json", "Expecting value: line 1 column 1 (char 0)"),
    ],
    ids=["missing", "not-json"],
)
def test_seccomp_profile_unreadable(tmp_path, content, error):
    path = tmp_path / "seccomp.json"
    if content is not None:
        path.write_text(content)
    message = (
        f"HardenedSpawner.seccomp_profile: cannot read a JSON profile from {str(path)!r} "
        f"({error.format(path=path)})."
    )
    with pytest.raises(TraitError, match=_exactly(message)):
        _spawner(seccomp_profile=str(path))


def test_remove_false_refused_when_assigned():
    spawner = _spawner()
    with pytest.raises(
        TraitError,
        match=_exactly(
            "HardenedSpawner.remove must stay True: a kept container would restart with stale "
            "GPUs and an old policy. Workspaces persist anyway."
        ),
    ):
        spawner.remove = False
    assert spawner.remove is True


@pytest.mark.parametrize("section", ["HardenedSpawner", "DockerSpawner"])
def test_remove_false_refused_in_config(section):
    config = Config()
    config[section].remove = False
    with pytest.raises(
        TraitError,
        match=_exactly(
            "HardenedSpawner.remove must stay True: a kept container would restart with stale "
            "GPUs and an old policy. Workspaces persist anyway."
        ),
    ):
        HardenedSpawner(config=config)


# --- refused by check_config() ----------------------------------------------


@pytest.mark.parametrize(
    "settings, message",
    [
        (
            {"uid_min": 300000, "uid_max": 300000},
            "HardenedSpawner.uid_max (300000) must be greater than HardenedSpawner.uid_min (300000).",
        ),
        (
            {"uid_min": 300000, "uid_max": 200000},
            "HardenedSpawner.uid_max (200000) must be greater than HardenedSpawner.uid_min (300000).",
        ),
        (
            {"uid_max": 2**31},
            "HardenedSpawner.uid_max (2147483648) is above the largest UID Linux accepts (2147483646).",
        ),
        (
            {"uid_map": {"alice": 5000, "bob": 5000}},
            "HardenedSpawner.uid_map gives UID 5000 to both 'alice' and 'bob'; every user needs a "
            "UID of their own.",
        ),
        (
            {"uid_map": {"alice": 250000}},
            "HardenedSpawner.uid_map['alice'] is 250000, inside the derived range 200000-999999999 "
            "(HardenedSpawner.uid_min/uid_max), where it would collide with another user's UID. "
            "Choose a UID outside that range.",
        ),
        (
            {"uid_map": {"alice": 0}},
            "HardenedSpawner.uid_map['alice'] is 0; UIDs below 1000 (root and system accounts) are "
            "never handed out.",
        ),
        (
            {"gpu_inventory": ["GPU-a", "GPU-b"], "gpu_pins": {"alice": ["GPU-z"]}},
            "HardenedSpawner.gpu_pins: alice is pinned to GPU-z, which is not in the inventory "
            "(known: GPU-a, GPU-b). Fix the UUID or remove the pin.",
        ),
        (
            {"gpu_inventory": ["GPU-a", "GPU-b"], "gpu_pins": {"alice": ["GPU-a"], "bob": ["GPU-a"]}},
            "HardenedSpawner.gpu_pins: alice and bob are pinned to GPU-a, but at most 1 may hold a "
            "device (gpu_max_users_per_gpu is 1). Pin them to different devices, or "
            "raise gpu_max_users_per_gpu to let them share it without isolation.",
        ),
        (
            {"gpu_inventory": "bogus"},
            "HardenedSpawner.gpu_inventory: 'bogus' is not 'nvml', 'nvidia-smi', 'none' or a list.",
        ),
    ],
    ids=["uid-equal", "uid-reversed", "uid-max-linux", "uid-map-duplicate", "uid-map-in-range",
         "uid-map-root", "pin-unknown", "pin-shared", "inventory"],
)
def test_check_config_refuses(settings, message):
    spawner = _spawner(**settings)  # each value is fine alone
    with pytest.raises(TraitError, match=_exactly(message)):
        spawner.check_config()


@pytest.mark.parametrize(
    "settings",
    [
        {"uid_map": {"alice": 5000, "bob": 5001}},
        {"uid_map": lambda spawner: 5000},  # a callable is checked per spawn, not here
        {"gpu_inventory": ["GPU-a", "GPU-b"], "gpu_pins": {"alice": ["GPU-a"], "bob": ["GPU-b"]}},
        {
            "gpu_inventory": ["GPU-a"],
            "gpu_pins": {"alice": ["GPU-a"], "bob": ["GPU-a"]},
            "gpu_max_users_per_gpu": 2,
        },
    ],
    ids=["uid-map", "uid-map-callable", "pins-distinct", "pins-shared-allowed"],
)
def test_check_config_accepts(settings):
    assert _spawner(**settings).check_config() is None


@pytest.mark.parametrize(
    "settings, message",
    [
        (
            {"links": {"db": "db"}},
            "DockerSpawner.links = {'db': 'db'} is not supported by HardenedSpawner: legacy links "
            "join a server to containers outside the users' network. Remove it; servers reach other "
            "services through the network (HardenedSpawner.egress_allow_cidrs).",
        ),
        (
            {"mounts": [{"Type": "bind", "Source": "/data", "Target": "/data"}]},
            "DockerSpawner.mounts = [{'Type': 'bind', 'Source': '/data', 'Target': '/data'}] is not "
            "supported by HardenedSpawner: use DockerSpawner.volumes (and read_only_volumes) "
            "instead, which the guard checks like every other mount.",
        ),
        (
            {"use_internal_ip": False},
            "DockerSpawner.use_internal_ip = False is not supported by HardenedSpawner: servers are "
            "reached at their address on the users' network; a published port (what False would "
            "need) is refused by the guard. Remove the setting.",
        ),
    ],
    ids=["links", "mounts", "use-internal-ip"],
)
def test_dockerspawner_settings_the_spawner_would_ignore_stop_the_hub(settings, message):
    with pytest.raises(TraitError, match=_exactly(message)):
        _spawner(**settings).check_config()


def test_the_default_use_internal_ip_is_fine():
    assert _spawner().use_internal_ip is True
