"""GPU inventory and allocation policy, as pure logic.

Nothing here talks to Docker, reads traits or awaits: the spawner turns its
settings into a `GpuPolicy`, calls `GpuAllocator` under its own lock and
renders the returned UUIDs into device requests. Keeping the decision apart
from the engine is what lets the same policy later drive Swarm or Kubernetes,
and lets every rule be tested in microseconds.

Devices are identified by UUID, never by index: indices shift when a GPU is
added, removed or switched into MIG mode, UUIDs do not. Whole GPUs and MIG
slices are both first-class devices; a GPU and one of its own slices are
never held at the same time, because the whole GPU includes the slice.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class GpuConfigError(ValueError):
    """Bad GPU configuration, raised at hub start so the admin fixes it before anyone spawns."""

    def __init__(self, setting: str, message: str):
        self.setting = setting
        self.message = message
        super().__init__(f"{setting}: {message}")

    def naming(self, owner: str) -> str:
        """The message with the setting as the admin writes it (``owner``: the configured class)."""
        return f"{owner}.{self.setting}: {self.message}"


class GpuAllocationError(Exception):
    """A refused GPU request; `user_message` is safe for the spawn page (it names no other user)."""

    def __init__(self, user_message: str):
        self.user_message = user_message
        super().__init__(user_message)


class GpuQuotaExceeded(GpuAllocationError):
    """The user asked for more GPUs than their limit allows."""


class GpuUnavailable(GpuAllocationError):
    """The GPUs the user needs are held by other servers right now."""


@dataclass(frozen=True)
class GpuDevice:
    """One allocatable device; `index` ("0", or "0:1" for a MIG slice) is for display only."""

    uuid: str
    index: str
    name: str = ""
    parent_uuid: str | None = None  # the whole GPU a MIG slice belongs to


@dataclass(frozen=True)
class GpuPolicy:
    """Who may hold how many GPUs; the spawner fills it from its `gpu_*` settings.

    `pins` reserve devices: a pinned user always gets exactly those devices
    (whatever count they ask for), and pinned devices are never picked for
    anyone else, even outside the pool. `max_users_per_gpu` above 1 lets that
    many servers share a device with NO isolation between them: they see each
    other's memory use and can starve each other.
    """

    default_per_user: int = 0
    max_per_user: int = 1
    group_max: Mapping[str, int] = field(default_factory=dict)
    pins: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    max_users_per_gpu: int = 1
    pool: tuple[str, ...] | None = None  # None: every device in the inventory


@dataclass(frozen=True)
class Holding:
    """Devices one holder (a user's server) holds since a time; rebuilt from container
    labels after a hub restart. ``owner`` is the person, whose servers share one quota."""

    user: str
    devices: tuple[str, ...]
    since: datetime
    owner: str = ""

    @property
    def person(self) -> str:
        return self.owner or self.user

    @property
    def server(self) -> str:
        """The server name in the holder key (`gpu_broker.holder_key`): "" for the default one."""
        return self.user[len(self.person) + 1:] if self.user != self.person else ""

    def described(self) -> str:
        """How its owner knows this server: "your server 'train'", "your default server"."""
        return f"your server '{self.server}'" if self.server else "your default server"


@dataclass(frozen=True)
class GpuSummary:
    """Counts over the pool: `assigned` devices have a holder (a shared one counts once);
    `free` ones have no holder and no held GPU/MIG relative. The rest are blocked by a relative."""

    total: int
    assigned: int
    free: int


# --- inventory sources ---------------------------------------------------

_GPU_LINE = re.compile(r"^GPU\s+(\d+):\s+(.*?)\s+\(UUID:\s*(GPU-[^)\s]+)\)")
_MIG_LINE = re.compile(r"^\s+(MIG\s+\S+)\s+Device\s+(\d+):\s+\(UUID:\s*(MIG-[^)\s]+)\)")
_STATIC_KEYS = {"uuid", "index", "name", "parent_uuid"}
_Holders = dict[str, set[str]]  # device UUID -> users holding it

# Spawn-page messages carry counts, never names: they reach the browser of the
# user who was refused, and who holds which GPU is nobody else's business.
_AUTO_BUSY = (
    "You asked for {wanted}, but {busy} of {total} GPUs are busy. "
    "Try again later, ask for fewer GPUs, or start your server with 0 GPUs."
)
_PINNED_BUSY = (
    "The GPUs reserved for you are in use by another server right now "
    "({busy} of {total} GPUs are busy). Try again later, or ask your hub administrator."
)
_CHOSEN_BUSY = (
    "The chosen GPUs are not free right now ({busy} of {total} GPUs are busy). "
    "Choose other GPUs, or start the server with 0 GPUs."
)


def parse_nvidia_smi_query(text: str) -> tuple[GpuDevice, ...]:
    """Whole GPUs from `nvidia-smi --query-gpu=index,uuid,name --format=csv,noheader`."""
    devices = []
    for line in filter(None, map(str.strip, text.splitlines())):
        parts = [p.strip() for p in line.split(",", 2)]
        if len(parts) != 3 or not parts[0].isdigit():
            raise GpuConfigError(
                "gpu_inventory",
                f"nvidia-smi printed {line!r}, which is not 'index, uuid, name'. "
                "Check the NVIDIA driver, or list the devices in this setting instead.",
            )
        devices.append(GpuDevice(uuid=parts[1], index=parts[0], name=parts[2]))
    return tuple(devices)


def parse_nvidia_smi_list(text: str) -> tuple[GpuDevice, ...]:
    """GPUs and the MIG slices listed under them by `nvidia-smi -L`; other lines are ignored."""
    devices: list[GpuDevice] = []
    gpu: GpuDevice | None = None
    for line in text.splitlines():
        if match := _GPU_LINE.match(line):
            gpu = GpuDevice(uuid=match[3], index=match[1], name=match[2])
            devices.append(gpu)
        elif (match := _MIG_LINE.match(line)) and gpu:
            devices.append(
                GpuDevice(match[3], f"{gpu.index}:{match[2]}", f"{gpu.name} {match[1]}", gpu.uuid)
            )
    return tuple(devices)


def inventory_from_nvidia_smi(query_csv: str, list_text: str) -> tuple[GpuDevice, ...]:
    """Whole GPUs from the CSV query, MIG slices from `-L`, in index order.

    A GPU with MIG slices is in MIG mode and cannot run work as a whole, so
    only its slices are allocatable; it is left out.
    """
    slices = [d for d in parse_nvidia_smi_list(list_text) if d.parent_uuid]
    in_mig_mode = {d.parent_uuid for d in slices}
    whole = [d for d in parse_nvidia_smi_query(query_csv) if d.uuid not in in_mig_mode]
    return tuple(sorted(whole + slices, key=lambda d: _index_key(d.index)))


def discover_nvidia_smi(run: Callable[..., Any] = subprocess.run) -> tuple[GpuDevice, ...]:
    """Run nvidia-smi twice and parse it; `run` is injectable so tests need no driver."""
    outputs = []
    for args in (["--query-gpu=index,uuid,name", "--format=csv,noheader"], ["-L"]):
        try:
            done = run(
                ["nvidia-smi", *args], capture_output=True, text=True, check=True, timeout=30
            )
        except (OSError, subprocess.SubprocessError) as err:
            raise GpuConfigError(
                "gpu_inventory",
                f"running nvidia-smi failed ({err}). Install the NVIDIA driver on the hub host, "
                "or list the devices in this setting instead.",
            ) from err
        outputs.append(done.stdout)
    return inventory_from_nvidia_smi(*outputs)


def nvml_module():
    """nvidia-ml-py's ``pynvml``, or the setting's error saying how to install it."""
    try:
        import pynvml
    except ImportError as err:
        raise GpuConfigError(
            "gpu_inventory",
            "NVML discovery needs the nvidia-ml-py package, which is not installed. "
            "Install it (pip install 'jupyterhub-hardened-spawner[nvml]'), "
            "or list the devices in this setting instead.",
        ) from err
    return pynvml


def discover_nvml(nvml=None) -> tuple[GpuDevice, ...]:
    """Devices through NVML (`nvidia-ml-py`); `nvml` is injectable so tests need no driver.

    A GPU with MIG mode enabled is itself not allocatable, only its MIG slices
    are: CUDA cannot use a MIG-mode GPU as a whole. Its empty slots
    (NVMLError_NotFound) are skipped.
    """
    if nvml is None:
        nvml = nvml_module()
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as err:
        raise GpuConfigError(
            "gpu_inventory",
            f"NVML could not start ({err}). Check the NVIDIA driver on the hub host, "
            "or list the devices in this setting instead.",
        ) from err
    try:
        devices = []
        for i in range(nvml.nvmlDeviceGetCount()):
            gpu = nvml.nvmlDeviceGetHandleByIndex(i)
            uuid, name = nvml.nvmlDeviceGetUUID(gpu), nvml.nvmlDeviceGetName(gpu)
            if not _mig_enabled(nvml, gpu):
                devices.append(GpuDevice(uuid, str(i), name))
                continue
            for slot in range(nvml.nvmlDeviceGetMaxMigDeviceCount(gpu)):
                try:
                    mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, slot)
                except nvml.NVMLError_NotFound:
                    continue
                mig_uuid, mig_name = nvml.nvmlDeviceGetUUID(mig), nvml.nvmlDeviceGetName(mig)
                devices.append(GpuDevice(mig_uuid, f"{i}:{slot}", mig_name, uuid))
        return tuple(devices)
    finally:
        nvml.nvmlShutdown()


def _mig_enabled(nvml, gpu) -> bool:
    """GPUs without MIG support answer NotSupported rather than "disabled"."""
    try:
        current, _pending = nvml.nvmlDeviceGetMigMode(gpu)
    except nvml.NVMLError_NotSupported:
        return False
    return current == nvml.NVML_DEVICE_MIG_ENABLE


def parse_static_inventory(entries: Iterable[str | Mapping]) -> tuple[GpuDevice, ...]:
    """Devices from config: UUID strings or dicts {uuid, index?, name?, parent_uuid?}.

    The index defaults to the entry's position; unknown keys are rejected so a
    typo such as `parent` cannot silently drop the GPU/MIG conflict rule.
    """
    devices = []
    for position, entry in enumerate(entries):
        if isinstance(entry, str):
            devices.append(GpuDevice(entry, str(position)))
        elif isinstance(entry, Mapping) and "uuid" in entry and set(entry) <= _STATIC_KEYS:
            parent = entry.get("parent_uuid")
            devices.append(
                GpuDevice(
                    uuid=str(entry["uuid"]),
                    index=str(entry.get("index", position)),
                    name=str(entry.get("name", "")),
                    parent_uuid=None if parent is None else str(parent),
                )
            )
        else:
            raise GpuConfigError(
                "gpu_inventory",
                f"entry {position} is {entry!r}, but each entry must be a device UUID or a dict "
                "with 'uuid' and optionally 'index', 'name' and 'parent_uuid'. Fix that entry.",
            )
    return tuple(devices)


# --- validation ----------------------------------------------------------


def validate_policy(policy: GpuPolicy, inventory: Sequence[GpuDevice]) -> None:
    """Raise GpuConfigError for the first setting that would make allocation wrong or surprising."""
    seen = _check_counts(policy, inventory)
    _check_pins(policy, inventory, seen)


def _check_counts(policy: GpuPolicy, inventory: Sequence[GpuDevice]) -> dict[str, int]:
    """The inventory lists each device once, counts are counts, the pool is in the inventory;
    returns how often each UUID is listed."""
    seen: dict[str, int] = {}
    for device in inventory:
        seen[device.uuid] = seen.get(device.uuid, 0) + 1
    for uuid, times in seen.items():
        if times > 1:
            raise GpuConfigError(
                "gpu_inventory", f"{uuid} is listed {times} times. List each device once."
            )
    for setting, value in (
        ("gpu_default_per_user", policy.default_per_user),
        ("gpu_max_per_user", policy.max_per_user),
    ):
        if value < 0:
            raise GpuConfigError(
                setting, f"{value} is not a GPU count. Use 0 (no GPUs) or a positive number."
            )
    for group, value in policy.group_max.items():
        if value < 0:
            raise GpuConfigError(
                "gpu_group_max",
                f"group {group} has {value}, which is not a GPU count. "
                "Use 0 (no GPUs) or a positive number.",
            )
    if policy.max_users_per_gpu < 1:
        raise GpuConfigError(
            "gpu_max_users_per_gpu",
            f"sharing set to {policy.max_users_per_gpu}, so nobody could use a GPU. "
            "Use 1 for exclusive GPUs, or more to let that many servers share one "
            "without isolation.",
        )
    if policy.default_per_user > policy.max_per_user:
        raise GpuConfigError(
            "gpu_default_per_user",
            f"{policy.default_per_user} is more than gpu_max_per_user "
            f"({policy.max_per_user}) allows. Lower the default or raise the maximum.",
        )
    known = ", ".join(seen)
    unknown = [uuid for uuid in policy.pool or () if uuid not in seen]
    if unknown:
        raise GpuConfigError(
            "gpu_pool",
            f"{', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not in the inventory "
            f"(known: {known}). Fix the UUIDs or remove them from the pool.",
        )
    return seen


def _check_pins(policy: GpuPolicy, inventory: Sequence[GpuDevice], seen: dict[str, int]) -> None:
    """Pins name known devices, no more users than may share one, never a GPU and its slice."""
    known = ", ".join(seen)
    pinned: dict[str, list[str]] = {}
    for user, devices in policy.pins.items():
        for uuid in devices:
            if uuid not in seen:
                raise GpuConfigError(
                    "gpu_pins",
                    f"{user} is pinned to {uuid}, which is not in the inventory "
                    f"(known: {known}). Fix the UUID or remove the pin.",
                )
            pinned.setdefault(uuid, []).append(user)
    limit = policy.max_users_per_gpu
    for uuid, users in pinned.items():
        if len(users) > limit:
            raise GpuConfigError(
                "gpu_pins",
                f"{_join(users)} are pinned to {uuid}, but at most {limit} may hold a device "
                f"(gpu_max_users_per_gpu is {limit}). Pin them to different "
                "devices, or raise gpu_max_users_per_gpu to let them share it without isolation.",
            )
    for device in inventory:
        if device.uuid in pinned and device.parent_uuid in pinned:
            raise GpuConfigError(
                "gpu_pins",
                f"{device.parent_uuid} (pinned to {_join(pinned[device.parent_uuid])}) and its "
                f"MIG slice {device.uuid} (pinned to {_join(pinned[device.uuid])}) cannot be held "
                "at the same time. Pin the whole GPU or its slices, not both.",
            )


# --- allocation ----------------------------------------------------------


def relatives(inventory: Iterable[GpuDevice]) -> dict[str, set[str]]:
    """For each device, the devices that cannot be held at the same time as it: a MIG
    slice and the whole GPU it is cut from, both ways."""
    found: dict[str, set[str]] = {}
    for d in inventory:
        if d.parent_uuid:
            found.setdefault(d.uuid, set()).add(d.parent_uuid)
            found.setdefault(d.parent_uuid, set()).add(d.uuid)
    return found


class GpuAllocator:
    """The in-memory table of who holds which devices; the engine's labels are the truth
    it is rebuilt from after a restart. Not thread-safe: the caller serialises calls."""

    def __init__(self, inventory: Sequence[GpuDevice], policy: GpuPolicy):
        validate_policy(policy, inventory)
        self.inventory = tuple(inventory)
        self.policy = policy
        self._known = {d.uuid for d in inventory}
        pool = self._known if policy.pool is None else set(policy.pool)
        in_order = sorted(inventory, key=lambda d: _index_key(d.index))
        self._pool = [d.uuid for d in in_order if d.uuid in pool]
        self._relatives = relatives(inventory)
        self._pinned_to = {uuid: user for user, devs in policy.pins.items() for uuid in devs}
        self._held: dict[str, Holding] = {}

    def user_limit(self, user: str, groups: Iterable[str]) -> int:
        """The highest gpu_group_max entry among the user's groups, else gpu_max_per_user."""
        limits = [self.policy.group_max[g] for g in groups if g in self.policy.group_max]
        return max(limits) if limits else self.policy.max_per_user

    def assign(
        self,
        user: str,
        groups: Iterable[str],
        count: int | None = None,
        devices: Sequence[str] | None = None,
        *,
        now: datetime,
        owner: str = "",
    ) -> tuple[str, ...]:
        """Give holder `user` (a server) devices, releasing what it held first.

        `owner` is the person (default: `user` itself): pins and the quota are a
        person's, so their named servers share them. Pins win over everything;
        `devices` is an admin's explicit choice, so no quota applies (the caller
        must only pass it for admins). Otherwise `count` (default:
        gpu_default_per_user, lowered to what the person's limit leaves, so a
        group capped at 0 still spawns) devices are picked from the pool.
        """
        person = owner or user
        self.release(user)
        holders = self._holders()
        if person in self.policy.pins:
            wanted = tuple(self.policy.pins[person])
            self._claim(user, wanted, holders, _PINNED_BUSY)
        elif devices is not None:
            wanted = self._checked_choice(devices)
            self._claim(user, wanted, holders, _CHOSEN_BUSY)
        else:
            wanted = self._pick(user, self._requested(person, groups, count), holders)
        if wanted:
            self._held[user] = Holding(user, wanted, now, owner)
        return wanted

    def release(self, user: str) -> tuple[str, ...]:
        """Forget what `user` holds; safe to call twice (the second call returns ())."""
        holding = self._held.pop(user, None)
        return holding.devices if holding else ()

    def rebuild(self, holdings: Iterable[Holding]) -> list[str]:
        """Replace the table with what the engine's containers hold; return warnings for the log.

        Running servers keep their devices even when that breaks the rules (a
        device gone from the inventory, too many sharers, a GPU and its slice):
        killing someone's work is worse than a warning, and it heals as they stop.
        """
        self._held = {}
        for h in holdings:
            if not h.devices:
                continue
            old = self._held.get(h.user)  # two containers of one server merge into one holding
            devices = tuple(dict.fromkeys((old.devices if old else ()) + tuple(h.devices)))
            since = min(old.since, h.since) if old else h.since
            self._held[h.user] = Holding(h.user, devices, since, h.owner)
        warnings = []
        holders, limit = self._holders(), self.policy.max_users_per_gpu
        for uuid, users in holders.items():
            names = _join(sorted(users))
            if uuid not in self._known:
                warnings.append(
                    f"{uuid} is held by {names} but is not in the GPU inventory; "
                    "it stays held until that server stops."
                )
            if len(users) > limit:
                warnings.append(
                    f"{uuid} is held by {names}, more than gpu_max_users_per_gpu "
                    f"({limit}) allows; nobody else gets it until they stop."
                )
        for d in self.inventory:
            if d.parent_uuid in holders and d.uuid in holders:
                warnings.append(
                    f"{d.parent_uuid} is held by {_join(sorted(holders[d.parent_uuid]))} while its "
                    f"MIG slice {d.uuid} is held by {_join(sorted(holders[d.uuid]))}; "
                    "neither is handed out again until both stop."
                )
        return warnings

    def holdings(self) -> list[Holding]:
        return sorted(self._held.values(), key=lambda h: h.user)

    def pool(self) -> list[GpuDevice]:
        """The devices that may be assigned, in index order."""
        by_uuid = {d.uuid: d for d in self.inventory}
        return [by_uuid[uuid] for uuid in self._pool]

    def blocked_by_relative(self, uuid: str) -> bool:
        """Whether `uuid` is unheld but unavailable because its GPU or one of its MIG slices is held."""
        return self._relative_held(uuid, self._holders(), ())

    def holder_of(self, uuid: str) -> tuple[str, ...]:
        """Users holding `uuid`, sorted; several when shared, or after a conflicting rebuild."""
        return tuple(sorted(self._holders().get(uuid, ())))

    def summary(self) -> GpuSummary:
        holders = self._holders()
        assigned = sum(1 for uuid in self._pool if uuid in holders)
        free = sum(
            1
            for uuid in self._pool
            if uuid not in holders and not self._relative_held(uuid, holders, ())
        )
        return GpuSummary(total=len(self._pool), assigned=assigned, free=free)

    def _holders(self) -> _Holders:
        holders: _Holders = {}
        for h in self._held.values():
            for uuid in h.devices:
                holders.setdefault(uuid, set()).add(h.user)
        return holders

    def _requested(self, owner: str, groups: Iterable[str], count: int | None) -> int:
        limit = self.user_limit(owner, groups)
        # what the person's other servers hold counts against the same limit
        elsewhere = len({uuid for h in self._held.values() if h.person == owner for uuid in h.devices})
        left = max(limit - elsewhere, 0)
        if count is None:
            return min(self.policy.default_per_user, left)
        if count < 0:
            raise GpuAllocationError(f"You asked for {count} GPUs; ask for 0 or more.")
        if count > limit and limit == 0:
            raise GpuQuotaExceeded(
                f"You asked for {_gpus(count)}, but your account may not use GPUs. Start your "
                "server with 0 GPUs, or ask your hub administrator for GPU access."
            )
        if count > limit:
            raise GpuQuotaExceeded(
                f"You asked for {_gpus(count)}, but your limit is {_gpus(limit)}. Ask for "
                f"{limit} or fewer, or ask your hub administrator to raise your limit."
            )
        if count > left:
            holding = sorted((h for h in self._held.values() if h.person == owner), key=lambda h: h.server)
            held = "; ".join(f"{h.described()} holds {_gpus(len(h.devices))}" for h in holding)
            raise GpuQuotaExceeded(
                f"You asked for {_gpus(count)}, but your limit is {_gpus(limit)} and {held}. "
                f"Ask for {left} or fewer, or stop {'that server' if len(holding) == 1 else 'one of them'} first."
            )
        return count

    def _pick(self, user: str, count: int, holders: _Holders) -> tuple[str, ...]:
        """Lowest index first, least-shared first, so sharers spread over devices.

        Greedy: a pool holding a GPU and its own slices could miss a fit, but
        discovered inventories never hold both.
        """
        candidates = sorted(
            (uuid for uuid in self._pool if uuid not in self._pinned_to),
            key=lambda uuid: len(holders.get(uuid, ())),
        )
        picked: list[str] = []
        for uuid in candidates:
            if len(picked) == count:
                break
            if self._available(uuid, holders, picked):
                picked.append(uuid)
        if len(picked) < count:
            if not self._pool:
                raise GpuUnavailable(
                    "This hub has no GPUs to assign. Start your server with 0 GPUs."
                )
            raise GpuUnavailable(self._busy_message(_AUTO_BUSY, user, holders, wanted=_gpus(count)))
        return tuple(picked)

    def _checked_choice(self, devices: Sequence[str]) -> tuple[str, ...]:
        """An admin's list, without repeats; unknown devices and GPU-plus-own-slice refused."""
        wanted = tuple(dict.fromkeys(devices))
        for uuid in wanted:
            if uuid not in self._known:
                raise GpuAllocationError(
                    f"Device {uuid} is not one of this hub's GPUs. "
                    "Choose a listed GPU, or start the server with 0 GPUs."
                )
        for d in self.inventory:
            if d.uuid in wanted and d.parent_uuid in wanted:
                raise GpuAllocationError(
                    f"{d.parent_uuid} and its MIG slice {d.uuid} cannot go to one server. "
                    "Choose the whole GPU or its slices, not both."
                )
        return wanted

    def _claim(self, user: str, wanted: tuple[str, ...], holders: _Holders, message: str) -> None:
        for uuid in wanted:
            if not self._available(uuid, holders, ()):
                raise GpuUnavailable(self._busy_message(message, user, holders))

    def _available(self, uuid: str, holders: _Holders, picked: Sequence[str]) -> bool:
        full = len(holders.get(uuid, ())) >= self.policy.max_users_per_gpu
        return not full and not self._relative_held(uuid, holders, picked)

    def _relative_held(self, uuid: str, holders: _Holders, picked: Sequence[str]) -> bool:
        return any(r in holders or r in picked for r in self._relatives.get(uuid, ()))

    def _busy_message(self, template: str, user: str, holders: _Holders, **extra: str) -> str:
        """Busy means "this user could not get it now", so the count matches the refusal."""
        open_ = sum(
            1
            for u in self._pool
            if self._pinned_to.get(u, user) == user and self._available(u, holders, ())
        )
        return template.format(busy=len(self._pool) - open_, total=len(self._pool), **extra)


def _index_key(index: str) -> tuple[float, ...]:
    """Sort "0:1" after "0" and before "1", and "10" after "9" (numbers, not text)."""
    return tuple(int(p) if p.isdigit() else float("inf") for p in index.split(":"))


def _gpus(n: int) -> str:
    return f"{n} GPU" if n == 1 else f"{n} GPUs"


def _join(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
