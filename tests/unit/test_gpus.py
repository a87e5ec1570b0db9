"""Table-driven tests of the GPU inventory parsers, policy validation and allocator."""

import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from hardened_spawner.core.gpus import (
    GpuAllocationError,
    GpuAllocator,
    GpuConfigError,
    GpuDevice,
    GpuPolicy,
    GpuQuotaExceeded,
    GpuSummary,
    GpuUnavailable,
    Holding,
    discover_nvidia_smi,
    discover_nvml,
    inventory_from_nvidia_smi,
    parse_nvidia_smi_list,
    parse_nvidia_smi_query,
    parse_static_inventory,
    validate_policy,
)

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)

A, B, C, D = (GpuDevice(f"GPU-{x}", str(i), "NVIDIA L4") for i, x in enumerate("abcd"))
FOUR = (A, B, C, D)
# A static inventory holding a whole GPU and its own slices: the conflict case.
M = GpuDevice("GPU-m", "0", "NVIDIA A100")
M0 = GpuDevice("MIG-m0", "0:0", "NVIDIA A100 MIG 1g.10gb", "GPU-m")
M1 = GpuDevice("MIG-m1", "0:1", "NVIDIA A100 MIG 1g.10gb", "GPU-m")
N = GpuDevice("GPU-n", "1", "NVIDIA A100")
MIXED = (M, M0, M1, N)

SMI_QUERY = """\
0, GPU-11111111-aaaa, NVIDIA A100-SXM4-40GB
1, GPU-22222222-bbbb, NVIDIA A100-SXM4-40GB

"""
SMI_LIST = """\
GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-11111111-aaaa)
  MIG 1g.10gb     Device  0: (UUID: MIG-aaaa-0)
  MIG 2g.20gb     Device  1: (UUID: MIG-aaaa-1)
GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-22222222-bbbb)
"""
SMI_GPU0 = GpuDevice("GPU-11111111-aaaa", "0", "NVIDIA A100-SXM4-40GB")
SMI_MIG0 = GpuDevice("MIG-aaaa-0", "0:0", "NVIDIA A100-SXM4-40GB MIG 1g.10gb", SMI_GPU0.uuid)
SMI_MIG1 = GpuDevice("MIG-aaaa-1", "0:1", "NVIDIA A100-SXM4-40GB MIG 2g.20gb", SMI_GPU0.uuid)
SMI_GPU1 = GpuDevice("GPU-22222222-bbbb", "1", "NVIDIA A100-SXM4-40GB")


# --- nvidia-smi ----------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", ()),
        (SMI_QUERY, (SMI_GPU0, SMI_GPU1)),
        ("10, GPU-x, Tesla T4, rev 2\n", (GpuDevice("GPU-x", "10", "Tesla T4, rev 2"),)),
    ],
)
def test_parse_nvidia_smi_query(text, expected):
    assert parse_nvidia_smi_query(text) == expected


def test_parse_nvidia_smi_query_rejects_garbage():
    with pytest.raises(GpuConfigError) as err:
        parse_nvidia_smi_query("No devices were found\n")
    assert str(err.value) == (
        "gpu_inventory: nvidia-smi printed 'No devices were found', which is "
        "not 'index, uuid, name'. Check the NVIDIA driver, or list the devices in this setting "
        "instead."
    )


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", ()),
        ("No devices were found\n", ()),
        (SMI_LIST, (SMI_GPU0, SMI_MIG0, SMI_MIG1, SMI_GPU1)),
        (  # the older driver format: MIG UUIDs built from the GPU UUID
            "GPU 3: A100-PCIE-40GB (UUID: GPU-c)\n  MIG 3g.20gb Device 0: (UUID: MIG-GPU-c/1/0)\n",
            (
                GpuDevice("GPU-c", "3", "A100-PCIE-40GB"),
                GpuDevice("MIG-GPU-c/1/0", "3:0", "A100-PCIE-40GB MIG 3g.20gb", "GPU-c"),
            ),
        ),
    ],
)
def test_parse_nvidia_smi_list(text, expected):
    assert parse_nvidia_smi_list(text) == expected


def test_inventory_from_nvidia_smi_drops_gpus_in_mig_mode():
    assert inventory_from_nvidia_smi(SMI_QUERY, SMI_LIST) == (SMI_MIG0, SMI_MIG1, SMI_GPU1)


def test_discover_nvidia_smi_runs_both_commands():
    calls = []

    def run(argv, **kwargs):
        calls.append(argv)
        out = SMI_LIST if argv == ["nvidia-smi", "-L"] else SMI_QUERY
        return subprocess.CompletedProcess(argv, 0, stdout=out)

    assert len(discover_nvidia_smi(run)) == 3
    assert calls == [
        ["nvidia-smi", "--query-gpu=index,uuid,name", "--format=csv,noheader"],
        ["nvidia-smi", "-L"],
    ]


def test_discover_nvidia_smi_without_driver():
    def run(argv, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", "nvidia-smi")

    with pytest.raises(GpuConfigError) as err:
        discover_nvidia_smi(run)
    assert str(err.value) == (
        "gpu_inventory: running nvidia-smi failed ([Errno 2] No such file or "
        "directory: 'nvidia-smi'). Install the NVIDIA driver on the hub host, or list the "
        "devices in this setting instead."
    )


# --- NVML, through a fake module -----------------------------------------


class FakeNvml:
    """Just the pynvml surface discover_nvml uses; GPUs are dicts, MIG slots None when empty."""

    NVML_DEVICE_MIG_ENABLE = 1

    class NVMLError(Exception):
        pass

    class NVMLError_NotFound(NVMLError):
        pass

    class NVMLError_NotSupported(NVMLError):
        pass

    def __init__(self, gpus, init_error=None):
        self.gpus, self.init_error, self.shut_down = gpus, init_error, False

    def nvmlInit(self):
        if self.init_error:
            raise self.NVMLError(self.init_error)

    def nvmlShutdown(self):
        self.shut_down = True

    def nvmlDeviceGetCount(self):
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i):
        return self.gpus[i]

    def nvmlDeviceGetUUID(self, handle):
        return handle["uuid"]

    def nvmlDeviceGetName(self, handle):
        return handle["name"]

    def nvmlDeviceGetMigMode(self, handle):
        if "mig" not in handle:
            raise self.NVMLError_NotSupported("Not Supported")
        return [int(handle["mig"] is not False), 0]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle):
        return len(handle["mig"])

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle, slot):
        if handle["mig"][slot] is None:
            raise self.NVMLError_NotFound("Not Found")
        return handle["mig"][slot]


@pytest.mark.parametrize(
    "gpus, expected",
    [
        ([], ()),
        (
            [
                {"uuid": "GPU-t4", "name": "Tesla T4"},  # no MIG support at all
                {"uuid": "GPU-off", "name": "A100", "mig": False},  # MIG capable, disabled
            ],
            (GpuDevice("GPU-t4", "0", "Tesla T4"), GpuDevice("GPU-off", "1", "A100")),
        ),
        (
            [
                {
                    "uuid": "GPU-on",
                    "name": "A100",
                    "mig": [{"uuid": "MIG-0", "name": "A100 MIG 1g.10gb"}, None,
                            {"uuid": "MIG-2", "name": "A100 MIG 2g.20gb"}],
                },
                {"uuid": "GPU-empty", "name": "A100", "mig": [None, None]},
            ],
            (
                GpuDevice("MIG-0", "0:0", "A100 MIG 1g.10gb", "GPU-on"),
                GpuDevice("MIG-2", "0:2", "A100 MIG 2g.20gb", "GPU-on"),
            ),
        ),
    ],
)
def test_discover_nvml(gpus, expected):
    nvml = FakeNvml(gpus)
    assert discover_nvml(nvml) == expected
    assert nvml.shut_down


def test_discover_nvml_init_failure():
    with pytest.raises(GpuConfigError) as err:
        discover_nvml(FakeNvml([], init_error="Driver Not Loaded"))
    assert str(err.value) == (
        "gpu_inventory: NVML could not start (Driver Not Loaded). Check the "
        "NVIDIA driver on the hub host, or list the devices in this setting instead."
    )


def test_discover_nvml_without_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes the import fail
    with pytest.raises(GpuConfigError) as err:
        discover_nvml()
    assert str(err.value) == (
        "gpu_inventory: NVML discovery needs the nvidia-ml-py package, which is "
        "not installed. Install it (pip install 'jupyterhub-hardened-spawner[nvml]'), or list "
        "the devices in this setting instead."
    )


# --- static inventory ----------------------------------------------------


@pytest.mark.parametrize(
    "entries, expected",
    [
        ([], ()),
        (["GPU-a", "GPU-b"], (GpuDevice("GPU-a", "0"), GpuDevice("GPU-b", "1"))),
        (
            [
                {"uuid": "GPU-m", "index": 0, "name": "A100"},
                {"uuid": "MIG-m0", "index": "0:0", "parent_uuid": "GPU-m"},
                "GPU-n",
            ],
            (
                GpuDevice("GPU-m", "0", "A100"),
                GpuDevice("MIG-m0", "0:0", "", "GPU-m"),
                GpuDevice("GPU-n", "2"),
            ),
        ),
    ],
)
def test_parse_static_inventory(entries, expected):
    assert parse_static_inventory(entries) == expected


@pytest.mark.parametrize(
    "entry", [{"index": 0}, {"uuid": "GPU-a", "parent": "GPU-m"}, 3]
)
def test_parse_static_inventory_rejects(entry):
    with pytest.raises(GpuConfigError) as err:
        parse_static_inventory(["GPU-x", entry])
    assert str(err.value) == (
        f"gpu_inventory: entry 1 is {entry!r}, but each entry must be a device "
        "UUID or a dict with 'uuid' and optionally 'index', 'name' and 'parent_uuid'. "
        "Fix that entry."
    )


# --- validation ----------------------------------------------------------


@pytest.mark.parametrize(
    "policy, inventory, setting, message",
    [
        (
            GpuPolicy(),
            (A, B, A),
            "gpu_inventory",
            "GPU-a is listed 2 times. List each device once.",
        ),
        (
            GpuPolicy(default_per_user=-1),
            FOUR,
            "gpu_default_per_user",
            "-1 is not a GPU count. Use 0 (no GPUs) or a positive number.",
        ),
        (
            GpuPolicy(max_per_user=-2),
            FOUR,
            "gpu_max_per_user",
            "-2 is not a GPU count. Use 0 (no GPUs) or a positive number.",
        ),
        (
            GpuPolicy(group_max={"students": -1}),
            FOUR,
            "gpu_group_max",
            "group students has -1, which is not a GPU count. Use 0 (no GPUs) or a positive "
            "number.",
        ),
        (
            GpuPolicy(max_users_per_gpu=0),
            FOUR,
            "gpu_max_users_per_gpu",
            "sharing set to 0, so nobody could use a GPU. Use 1 for exclusive GPUs, or more to "
            "let that many servers share one without isolation.",
        ),
        (
            GpuPolicy(default_per_user=2, max_per_user=1),
            FOUR,
            "gpu_default_per_user",
            "2 is more than gpu_max_per_user (1) allows. Lower the default or "
            "raise the maximum.",
        ),
        (
            GpuPolicy(pool=("GPU-a", "GPU-z")),
            (A, B),
            "gpu_pool",
            "GPU-z is not in the inventory (known: GPU-a, GPU-b). Fix the UUIDs or remove them "
            "from the pool.",
        ),
        (
            GpuPolicy(pool=("GPU-y", "GPU-z")),
            (A, B),
            "gpu_pool",
            "GPU-y, GPU-z are not in the inventory (known: GPU-a, GPU-b). Fix the UUIDs or "
            "remove them from the pool.",
        ),
        (
            GpuPolicy(pins={"alice": ("GPU-xyz",)}),
            (A, B),
            "gpu_pins",
            "alice is pinned to GPU-xyz, which is not in the inventory (known: GPU-a, GPU-b). "
            "Fix the UUID or remove the pin.",
        ),
        (
            GpuPolicy(pins={"alice": ("GPU-a",), "bob": ("GPU-b", "GPU-a")}),
            FOUR,
            "gpu_pins",
            "alice and bob are pinned to GPU-a, but at most 1 may hold a device "
            "(gpu_max_users_per_gpu is 1). Pin them to different devices, or "
            "raise gpu_max_users_per_gpu to let them share it without isolation.",
        ),
        (
            GpuPolicy(pins=dict.fromkeys(("ann", "bo", "cy"), ("GPU-a",)), max_users_per_gpu=2),
            FOUR,
            "gpu_pins",
            "ann, bo and cy are pinned to GPU-a, but at most 2 may hold a device "
            "(gpu_max_users_per_gpu is 2). Pin them to different devices, or "
            "raise gpu_max_users_per_gpu to let them share it without isolation.",
        ),
        (
            GpuPolicy(pins={"alice": ("GPU-m",), "bob": ("MIG-m1",)}),
            MIXED,
            "gpu_pins",
            "GPU-m (pinned to alice) and its MIG slice MIG-m1 (pinned to bob) cannot be held at "
            "the same time. Pin the whole GPU or its slices, not both.",
        ),
    ],
)
def test_validate_policy_rejects(policy, inventory, setting, message):
    with pytest.raises(GpuConfigError) as err:
        validate_policy(policy, inventory)
    assert err.value.setting == setting
    assert err.value.naming("HardenedSpawner") == f"HardenedSpawner.{setting}: {message}"
    assert str(err.value) == f"{setting}: {message}"


@pytest.mark.parametrize(
    "policy, inventory",
    [
        (GpuPolicy(), ()),
        (GpuPolicy(default_per_user=1, max_per_user=4, group_max={"staff": 0}), FOUR),
        (GpuPolicy(pins={"a": ("GPU-a",), "b": ("GPU-a",)}, max_users_per_gpu=2), FOUR),
        (GpuPolicy(pins={"a": ("MIG-m0",), "b": ("MIG-m1",)}, pool=("GPU-n",)), MIXED),
    ],
)
def test_validate_policy_accepts(policy, inventory):
    validate_policy(policy, inventory)


# --- allocation ----------------------------------------------------------


def allocator(inventory=FOUR, **policy):
    return GpuAllocator(inventory, GpuPolicy(**{"max_per_user": 4, **policy}))


def test_allocator_validates_its_policy():
    with pytest.raises(GpuConfigError):
        GpuAllocator(FOUR, GpuPolicy(max_users_per_gpu=0))


@pytest.mark.parametrize(
    "inventory, policy, requests, expected",
    [
        # lowest index first, exclusive by default
        (FOUR, {}, [1, 2, 1], [("GPU-a",), ("GPU-b", "GPU-c"), ("GPU-d",)]),
        # index order, not inventory order; "10" after "9"
        (
            (GpuDevice("GPU-10", "10"), GpuDevice("GPU-9", "9"), GpuDevice("GPU-0:1", "0:1")),
            {},
            [1, 1, 1],
            [("GPU-0:1",), ("GPU-9",), ("GPU-10",)],
        ),
        # the pool limits what is picked automatically
        (FOUR, {"pool": ("GPU-d", "GPU-b")}, [1, 1], [("GPU-b",), ("GPU-d",)]),
        # sharing spreads first, then fills up to N per device
        (
            (A, B),
            {"max_users_per_gpu": 2},
            [1, 1, 1, 1],
            [("GPU-a",), ("GPU-b",), ("GPU-a",), ("GPU-b",)],
        ),
        # a whole GPU taken: its slices are skipped
        (MIXED, {}, [1, 1, 1], [("GPU-m",), ("GPU-n",), ()]),
        # count 0 holds nothing
        (FOUR, {}, [0, 1], [(), ("GPU-a",)]),
    ],
)
def test_assignment_order(inventory, policy, requests, expected):
    alloc = allocator(inventory, **policy)
    got = []
    for i, count in enumerate(requests):
        try:
            got.append(alloc.assign(f"u{i}", (), count, now=NOW))
        except GpuUnavailable:
            got.append(())
    assert got == expected


def test_mig_conflict_gpu_blocks_slice_and_slice_blocks_gpu():
    alloc = allocator(MIXED, pool=("GPU-m", "MIG-m0", "MIG-m1"))
    # the whole GPU held: neither slice can be chosen or picked
    alloc.assign("alice", (), devices=["GPU-m"], now=NOW)
    with pytest.raises(GpuUnavailable):
        alloc.assign("bob", (), devices=["MIG-m0"], now=NOW)
    with pytest.raises(GpuUnavailable):
        alloc.assign("bob", (), 1, now=NOW)
    alloc.release("alice")
    # a slice held: the whole GPU is skipped, the sibling slice is fine
    assert alloc.assign("bob", (), devices=["MIG-m0"], now=NOW) == ("MIG-m0",)
    with pytest.raises(GpuUnavailable):
        alloc.assign("alice", (), devices=["GPU-m"], now=NOW)
    assert alloc.assign("carol", (), 1, now=NOW) == ("MIG-m1",)
    # one request never holds a GPU and its own slice either
    alloc.release("bob")
    alloc.release("carol")
    with pytest.raises(GpuUnavailable):
        alloc.assign("dan", (), 3, now=NOW)
    with pytest.raises(GpuAllocationError) as err:
        alloc.assign("dan", (), devices=["MIG-m1", "GPU-m"], now=NOW)
    assert err.value.user_message == (
        "GPU-m and its MIG slice MIG-m1 cannot go to one server. Choose the whole GPU or its "
        "slices, not both."
    )
    assert alloc.holdings() == []


def test_sharing_up_to_n_users():
    alloc = allocator((A,), max_users_per_gpu=3)
    for user in ("ann", "bo", "cy"):
        assert alloc.assign(user, (), 1, now=NOW) == ("GPU-a",)
    assert alloc.holder_of("GPU-a") == ("ann", "bo", "cy")
    with pytest.raises(GpuUnavailable) as err:
        alloc.assign("dee", (), 1, now=NOW)
    assert err.value.user_message == (
        "You asked for 1 GPU, but 1 of 1 GPUs are busy. Try again later, ask for fewer GPUs, "
        "or start your server with 0 GPUs."
    )
    assert alloc.summary() == GpuSummary(total=1, assigned=1, free=0)


@pytest.mark.parametrize(
    "policy, groups, count, expected",
    [
        ({"max_per_user": 1}, (), 1, ("GPU-a",)),
        ({"default_per_user": 1, "max_per_user": 2}, (), None, ("GPU-a",)),
        ({"max_per_user": 1, "group_max": {"ml": 3, "staff": 2}}, ("staff", "ml"), 3,
         ("GPU-a", "GPU-b", "GPU-c")),
        # a group entry lowers the limit, and the default follows it down
        ({"default_per_user": 1, "max_per_user": 1, "group_max": {"guests": 0}}, ("guests",),
         None, ()),
    ],
)
def test_quota_allows(policy, groups, count, expected):
    assert allocator(**policy).assign("alice", groups, count, now=NOW) == expected


@pytest.mark.parametrize(
    "policy, groups, count, message",
    [
        ({"max_per_user": 1}, (), 2,
         "You asked for 2 GPUs, but your limit is 1 GPU. Ask for 1 or fewer, or ask your hub "
         "administrator to raise your limit."),
        ({"max_per_user": 4, "group_max": {"ml": 3, "staff": 2}}, ("staff", "ml"), 4,
         "You asked for 4 GPUs, but your limit is 3 GPUs. Ask for 3 or fewer, or ask your hub "
         "administrator to raise your limit."),
        ({"max_per_user": 1, "group_max": {"guests": 0}}, ("guests",), 1,
         "You asked for 1 GPU, but your account may not use GPUs. Start your server with 0 "
         "GPUs, or ask your hub administrator for GPU access."),
    ],
)
def test_quota_refuses(policy, groups, count, message):
    alloc = allocator(**policy)
    with pytest.raises(GpuQuotaExceeded) as err:
        alloc.assign("alice", groups, count, now=NOW)
    assert err.value.user_message == str(err.value) == message
    assert alloc.holdings() == []


def test_user_limit():
    alloc = allocator(max_per_user=1, group_max={"ml": 3, "guests": 0})
    assert [alloc.user_limit("x", g) for g in ((), ("other",), ("guests",), ("guests", "ml"))] == [
        1, 1, 0, 3,
    ]


def test_negative_count():
    with pytest.raises(GpuAllocationError) as err:
        allocator().assign("alice", (), -1, now=NOW)
    assert err.value.user_message == "You asked for -1 GPUs; ask for 0 or more."


def test_pins_win_over_count_and_are_reserved():
    alloc = allocator(max_per_user=1, pins={"alice": ("GPU-a", "GPU-c")})
    assert alloc.assign("alice", (), 0, now=NOW) == ("GPU-a", "GPU-c")
    alloc.release("alice")
    # nobody else gets a pinned device, even while its owner is away
    assert [alloc.assign(u, (), 1, now=NOW) for u in ("bob", "cy")] == [("GPU-b",), ("GPU-d",)]
    with pytest.raises(GpuUnavailable):
        alloc.assign("dee", (), 1, now=NOW)
    assert alloc.assign("alice", (), now=NOW) == ("GPU-a", "GPU-c")


def test_pinned_device_held_by_someone_else():
    alloc = allocator(pins={"alice": ("GPU-a",)})
    alloc.assign("admin-choice", (), devices=["GPU-a"], now=NOW)
    with pytest.raises(GpuUnavailable) as err:
        alloc.assign("alice", (), now=NOW)
    assert err.value.user_message == (
        "The GPUs reserved for you are in use by another server right now (1 of 4 GPUs are "
        "busy). Try again later, or ask your hub administrator."
    )


def test_explicit_devices():
    alloc = allocator(max_per_user=0, pool=("GPU-a",))
    # an admin's choice ignores quota and pool, keeps its order and drops repeats
    assert alloc.assign("alice", (), devices=["GPU-d", "GPU-b", "GPU-d"], now=NOW) == (
        "GPU-d",
        "GPU-b",
    )
    with pytest.raises(GpuUnavailable) as err:
        alloc.assign("bob", (), devices=["GPU-b"], now=NOW)
    assert err.value.user_message == (
        "The chosen GPUs are not free right now (0 of 1 GPUs are busy). Choose other GPUs, or "
        "start the server with 0 GPUs."
    )
    with pytest.raises(GpuAllocationError) as err:
        alloc.assign("bob", (), devices=["GPU-zz"], now=NOW)
    assert err.value.user_message == (
        "Device GPU-zz is not one of this hub's GPUs. Choose a listed GPU, or start the server "
        "with 0 GPUs."
    )


def test_reassign_releases_first():
    alloc = allocator((A, B))
    assert alloc.assign("alice", (), 2, now=NOW) == ("GPU-a", "GPU-b")
    later = NOW + timedelta(hours=1)
    assert alloc.assign("alice", (), 1, now=later) == ("GPU-a",)
    assert alloc.holdings() == [Holding("alice", ("GPU-a",), later)]
    assert alloc.assign("alice", (), 0, now=later) == ()
    assert alloc.holdings() == []


def test_release_is_idempotent():
    alloc = allocator()
    alloc.assign("alice", (), 2, now=NOW)
    assert alloc.release("alice") == ("GPU-a", "GPU-b")
    assert alloc.release("alice") == ()
    assert alloc.release("nobody") == ()
    assert alloc.holder_of("GPU-a") == ()


def test_no_gpus_at_all():
    with pytest.raises(GpuUnavailable) as err:
        allocator(()).assign("alice", (), 1, now=NOW)
    assert err.value.user_message == (
        "This hub has no GPUs to assign. Start your server with 0 GPUs."
    )


def test_thirty_users_contend_for_four_devices():
    alloc = allocator(default_per_user=1, max_per_user=1)
    winners, refusals = {}, []
    for i in range(30):
        try:
            winners[f"user{i:02d}"] = alloc.assign(f"user{i:02d}", ("students",), now=NOW)
        except GpuUnavailable as err:
            refusals.append(err.user_message)
    assert list(winners) == ["user00", "user01", "user02", "user03"]
    assert sorted(d for devs in winners.values() for d in devs) == [d.uuid for d in FOUR]
    assert refusals == [
        "You asked for 1 GPU, but 4 of 4 GPUs are busy. Try again later, ask for fewer GPUs, "
        "or start your server with 0 GPUs."
    ] * 26
    assert not any("user" in message for message in refusals)
    assert alloc.summary() == GpuSummary(total=4, assigned=4, free=0)
    alloc.release("user02")
    assert alloc.assign("user29", (), now=NOW) == ("GPU-c",)


def test_rebuild_keeps_everything_and_warns():
    alloc = allocator(MIXED)
    warnings = alloc.rebuild(
        [
            Holding("alice", ("GPU-m",), NOW),
            Holding("bob", ("MIG-m0",), NOW),
            Holding("cy", ("GPU-n", "GPU-gone"), NOW),
            Holding("dee", ("GPU-n",), NOW),
            Holding("eve", (), NOW),
            Holding("cy", ("GPU-n",), NOW - timedelta(days=1)),  # a second named server
        ]
    )
    assert warnings == [
        "GPU-n is held by cy and dee, more than gpu_max_users_per_gpu (1) "
        "allows; nobody else gets it until they stop.",
        "GPU-gone is held by cy but is not in the GPU inventory; it stays held until that "
        "server stops.",
        "GPU-m is held by alice while its MIG slice MIG-m0 is held by bob; neither is handed "
        "out again until both stop.",
    ]
    assert alloc.holdings() == [
        Holding("alice", ("GPU-m",), NOW),
        Holding("bob", ("MIG-m0",), NOW),
        Holding("cy", ("GPU-n", "GPU-gone"), NOW - timedelta(days=1)),
        Holding("dee", ("GPU-n",), NOW),
    ]
    assert alloc.holder_of("GPU-n") == ("cy", "dee")
    assert alloc.summary() == GpuSummary(total=4, assigned=3, free=0)
    with pytest.raises(GpuUnavailable):
        alloc.assign("fay", (), 1, now=NOW)
    assert alloc.rebuild([]) == []
    assert alloc.holdings() == []


@pytest.mark.parametrize(
    "inventory, policy, held, expected",
    [
        (FOUR, {}, {}, GpuSummary(4, 0, 4)),
        (FOUR, {"pool": ("GPU-a", "GPU-b")}, {"x": ("GPU-a", "GPU-c")}, GpuSummary(2, 1, 1)),
        ((A, B), {"max_users_per_gpu": 2}, {"x": ("GPU-a",), "y": ("GPU-a",)}, GpuSummary(2, 1, 1)),
        # a held slice blocks its GPU: neither assigned nor free
        (MIXED, {}, {"x": ("MIG-m0",)}, GpuSummary(4, 1, 2)),
    ],
)
def test_summary(inventory, policy, held, expected):
    alloc = allocator(inventory, **policy)
    alloc.rebuild(Holding(u, devs, NOW) for u, devs in held.items())
    assert alloc.summary() == expected


# --- named servers: one person, one quota ----------------------------------------


def test_named_servers_share_their_owners_quota():
    alloc = allocator(default_per_user=1, max_per_user=2)
    assert alloc.assign("alice", (), 1, now=NOW, owner="alice") == ("GPU-a",)
    assert alloc.assign("alice/big", (), 1, now=NOW, owner="alice") == ("GPU-b",)
    with pytest.raises(GpuQuotaExceeded) as refused:
        alloc.assign("alice/third", (), 1, now=NOW, owner="alice")
    assert str(refused.value) == (
        "You asked for 1 GPU, but your limit is 2 GPUs and your default server holds 1 GPU; "
        "your server 'big' holds 1 GPU. Ask for 0 or fewer, or stop one of them first."
    )
    # the default is lowered to what is left (here nothing), so the server still starts
    assert alloc.assign("alice/third", (), None, now=NOW, owner="alice") == ()
    # another person is not affected, and a server's own re-assignment does not count twice
    assert alloc.assign("bob", (), 1, now=NOW, owner="bob") == ("GPU-c",)
    assert alloc.assign("alice/big", (), 1, now=NOW, owner="alice") == ("GPU-b",)
    alloc.release("alice")
    assert alloc.assign("alice/third", (), 1, now=NOW, owner="alice") == ("GPU-a",)


def test_pins_are_a_persons_and_go_to_one_server_at_a_time():
    alloc = allocator(pins={"alice": ("GPU-d",)})
    assert alloc.assign("alice/train", (), None, now=NOW, owner="alice") == ("GPU-d",)
    with pytest.raises(GpuUnavailable):
        alloc.assign("alice/eval", (), None, now=NOW, owner="alice")


def test_rebuild_keeps_the_owner_so_quotas_survive_a_restart():
    alloc = allocator(max_per_user=1)
    alloc.rebuild([Holding("alice/big", ("GPU-a",), NOW, "alice")])
    with pytest.raises(GpuQuotaExceeded, match="your server 'big' holds 1 GPU. Ask for 0 or fewer, or stop that server first."):
        alloc.assign("alice", (), 1, now=NOW, owner="alice")


def test_holdings_from_the_engines_labels():
    from hardened_spawner.docker.holdings import holdings_from_containers

    p = "org.jupyter.hardened-spawner."
    containers = [
        {"Labels": {p + "owner": "alice", p + "server-name": "big", p + "gpus": "GPU-a,GPU-b",
                    p + "gpus-since": "2026-01-01T00:00:00+00:00"}, "Created": 0},
        {"Labels": {p + "owner": "bob", p + "server-name": "", p + "gpus": "GPU-c",
                    p + "gpus-since": "not a time"}, "Created": 1767225600},
        {"Labels": {p + "owner": "carol", p + "gpus": ""}, "Created": 0},  # no GPUs: no holding
    ]
    assert holdings_from_containers(containers) == [
        Holding("alice/big", ("GPU-a", "GPU-b"), NOW, "alice"),
        Holding("bob", ("GPU-c",), datetime(2026, 1, 1, tzinfo=timezone.utc), "bob"),
    ]
