"""What an image's final filesystem holds, read from its layers without running it.

The engine's image export (``docker save``, the API's ``GET /images/{name}/get``) is a tar
of the image's layers, each a tar itself, plus a ``manifest.json`` that gives their order.
The filesystem a container sees is those layers applied in order: a later layer replaces a
path, removes it with a whiteout (``.wh.NAME``) or hides a whole directory of the layers
below with an opaque marker (``.wh..wh..opq``). A setuid binary that a later layer removed
is not in the image; one that a later layer merely ``chmod``-ed is replaced by the new
entry. So each layer is read once, as it streams by, into a small record (its special
files, every path it writes, its whiteouts), and the records are stacked in the manifest's
order at the end: no layer is unpacked, nothing of the image runs, nothing needs root.

Both export layouts are read: Docker's own (``<id>/layer.tar``) and the OCI layout newer
engines write (``blobs/sha256/<digest>``, possibly gzip-compressed).

Pure: a file object in, a `FileScan` out (standard library only).
"""

from __future__ import annotations

import io
import json
import posixpath
import struct
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO, BinaryIO

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
#: the extended attribute a file capability lives in, as a layer tar carries it (PAX)
CAPABILITY_XATTR = "SCHILY.xattr.security.capability"

SETUID, SETGID = 0o4000, 0o2000

#: capability numbers (linux/capability.h) for naming a file capability
CAPABILITY_NAMES = (
    "chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid", "setuid",
    "setpcap", "linux_immutable", "net_bind_service", "net_broadcast", "net_admin", "net_raw",
    "ipc_lock", "ipc_owner", "sys_module", "sys_rawio", "sys_chroot", "sys_ptrace", "sys_pacct",
    "sys_admin", "sys_boot", "sys_nice", "sys_resource", "sys_time", "sys_tty_config", "mknod",
    "lease", "audit_write", "audit_control", "setfcap", "mac_override", "mac_admin", "syslog",
    "wake_alarm", "block_suspend", "audit_read", "perfmon", "bpf", "checkpoint_restore",
)


@dataclass(frozen=True)
class SpecialFile:
    """A file that hands whoever runs it more than they have: setuid, setgid, or a file
    capability."""

    path: str  # absolute, as the container sees it
    mode: int  # permission bits, with the setuid/setgid bits
    uid: int
    gid: int
    capabilities: str = ""  # "cap_net_raw+ep" for a file capability, else ""

    @property
    def kinds(self) -> tuple[str, ...]:
        found = []
        if self.mode & SETUID:
            found.append("setuid")
        if self.mode & SETGID:
            found.append("setgid")
        if self.capabilities:
            found.append("file capability")
        return tuple(found)

    def describe(self) -> str:
        what = ", ".join(self.kinds)
        detail = f" {self.capabilities}" if self.capabilities else ""
        return f"{self.path} ({what}{detail}, owner {self.uid}:{self.gid}, mode {self.mode:04o})"


@dataclass(frozen=True)
class Entry:
    """A path of interest in the final filesystem (see `scan_image`'s ``names``)."""

    path: str
    kind: str  # "file", "link" (symbolic), "dir", "other"
    mode: int
    target: str = ""  # a link's target


@dataclass(frozen=True)
class FileScan:
    """What the final filesystem holds that admission judges."""

    special: tuple[SpecialFile, ...]
    entries: dict[str, Entry]  # final paths of files named in ``names`` and of executables, by path
    links: dict[str, str]  # every symbolic link in the final filesystem: path -> target
    layers: int
    #: every directory a layer wrote, with its permission bits (a directory no layer wrote,
    #: only implied by the paths below it, is made 0755 by the engine and is not here; nor
    #: is "/", whose mode is the runtime's)
    dirs: dict[str, int] = field(default_factory=dict)

    def walk(self, path: str, limit: int = 40) -> tuple[str, tuple[str, ...]]:
        """``path`` with every symbolic link along it followed, as the kernel would
        (``/bin/sh`` on a merged-/usr system is ``/usr/bin/dash``), and every directory a
        name was looked up in on the way, in order: the ones whoever opens ``path`` must be
        allowed to search (``x``), those holding the links included."""
        parts = [p for p in path.split("/") if p]
        resolved = "/"
        searched: list[str] = []
        while parts and limit > 0:
            if resolved not in searched:
                searched.append(resolved)
            candidate = posixpath.join(resolved, parts.pop(0))
            target = self.links.get(candidate)
            if target is None:
                resolved = candidate
                continue
            limit -= 1
            base = "/" if target.startswith("/") else resolved
            parts = [p for p in posixpath.normpath(posixpath.join(base, target)).split("/") if p] + parts
            resolved = "/"
        return posixpath.normpath(resolved), tuple(searched)

    def resolve(self, path: str) -> str:
        """``path`` with every symbolic link along it followed (`walk`)."""
        return self.walk(path)[0]

    def closed_to_others(self, path: str) -> tuple[tuple[str, int], ...]:
        """The directories on the way to ``path`` (`walk`) that others may not search, with
        their modes: a process whose UID owns none of them and whose groups own none of them
        cannot reach ``path`` at all."""
        found = []
        for directory in self.walk(path)[1]:
            mode = self.dirs.get(directory)
            if mode is not None and not mode & 0o001:
                found.append((directory, mode))
        return tuple(found)

    def find(self, path: str) -> Entry | None:
        """The entry at ``path`` after following links, or None."""
        return self.entries.get(self.resolve(path))


class ExportError(ValueError):
    """The stream is not an image export this module can read."""


@dataclass
class _Layer:
    """One layer's record, made while it streams by."""

    paths: set[str] = field(default_factory=set)
    nondirs: set[str] = field(default_factory=set)  # paths written as anything but a directory
    whiteouts: set[str] = field(default_factory=set)
    opaque: set[str] = field(default_factory=set)
    special: dict[str, SpecialFile] = field(default_factory=dict)
    entries: dict[str, Entry] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    dirs: dict[str, int] = field(default_factory=dict)


def decode_capabilities(raw: bytes | str) -> str:
    """``vfs_cap_data`` (v2 or v3) as ``cap_a,cap_b+ep``; what ``getcap`` would print."""
    if isinstance(raw, str):
        raw = raw.encode("latin-1", "surrogateescape")
    if len(raw) < 12:
        return "unreadable capability data"
    magic = struct.unpack_from("<I", raw, 0)[0]
    permitted = struct.unpack_from("<I", raw, 4)[0]
    inheritable = struct.unpack_from("<I", raw, 8)[0]
    if len(raw) >= 20:  # v2/v3 carry the high words
        permitted |= struct.unpack_from("<I", raw, 12)[0] << 32
        inheritable |= struct.unpack_from("<I", raw, 16)[0] << 32
    names = [
        CAPABILITY_NAMES[bit] if bit < len(CAPABILITY_NAMES) else f"cap_{bit}"
        for bit in range(64) if (permitted | inheritable) >> bit & 1
    ]
    flags = ("e" if magic & 1 else "") + ("p" if permitted else "") + ("i" if inheritable else "")
    return ",".join(n if n.startswith("cap_") else f"cap_{n}" for n in names) + (f"+{flags}" if flags else "")


def _normal(name: str) -> str:
    return posixpath.normpath("/" + name.lstrip("./").lstrip("/")) if name not in (".", "./") else "/"


def read_layer(layer: tarfile.TarFile, names: frozenset[str]) -> _Layer:
    """One layer's record: ``names`` are the base names whose entries are kept (the
    commands admission looks for), besides every executable; special files, links,
    directories' modes and paths are always kept."""
    record = _Layer()
    hardlinks: list[tuple[str, tarfile.TarInfo]] = []
    for member in layer:
        path = _normal(member.name)
        base = posixpath.basename(path)
        parent = posixpath.dirname(path)
        if base == OPAQUE:
            record.opaque.add(parent)
            continue
        if base.startswith(WHITEOUT):
            record.whiteouts.add(posixpath.join(parent, base[len(WHITEOUT):]))
            continue
        record.paths.add(path)
        if member.isdir():
            # not "/": the engine does not apply a layer's "./" (a debootstrap tar's is often
            # 0700); the container's root is the runtime's, 0755
            if path != "/":
                record.dirs[path] = member.mode & 0o7777
        else:
            record.nondirs.add(path)
        if member.issym():
            record.links[path] = member.linkname
        if member.islnk():
            hardlinks.append((path, member))
        if member.isfile() or member.islnk():
            capability = member.pax_headers.get(CAPABILITY_XATTR)
            if member.mode & (SETUID | SETGID) or capability:
                record.special[path] = SpecialFile(
                    path, member.mode & 0o7777, member.uid, member.gid,
                    decode_capabilities(capability) if capability else "",
                )
        # the commands asked for, and every executable file: a command is often a link to one
        # (/usr/bin/python3 -> python3.11) whose name no one asked for
        executable = (member.isfile() or member.islnk()) and member.mode & 0o111
        if base in names or executable:
            kind = "file" if member.isfile() or member.islnk() else "link" if member.issym() else \
                "dir" if member.isdir() else "other"
            record.entries[path] = Entry(path, kind, member.mode & 0o7777, member.linkname if member.issym() else "")
    # a hard link to a special file in the same layer is as special as its target
    for path, member in hardlinks:
        target = record.special.get(_normal(member.linkname))
        if target is not None and path not in record.special:
            record.special[path] = SpecialFile(path, target.mode, target.uid, target.gid, target.capabilities)
    return record


def _ancestors(path: str) -> Iterable[str]:
    while path != "/":
        path = posixpath.dirname(path)
        yield path


def _survives(path: str, above: list[_Layer]) -> bool:
    """Whether ``path`` from a lower layer is still there under the ``above`` layers
    (nearest first): not replaced, not whited out, not hidden with its directory."""
    ancestors = tuple(_ancestors(path))
    for layer in above:
        if path in layer.paths or path in layer.whiteouts:
            return False
        for directory in ancestors:
            # a directory removed, emptied of what lies below, or replaced by a file or link
            if directory in layer.opaque or directory in layer.whiteouts or directory in layer.nondirs:
                return False
    return True


def stack(layers: list[_Layer]) -> FileScan:
    """The final filesystem's special files, kept entries, links and directories' modes
    (layers bottom first)."""
    special: dict[str, SpecialFile] = {}
    entries: dict[str, Entry] = {}
    links: dict[str, str] = {}
    dirs: dict[str, int] = {}
    for index, layer in enumerate(layers):
        above = layers[index + 1:]  # nearest first
        for path, found in layer.special.items():
            if _survives(path, above):
                special[path] = found
        for path, entry in layer.entries.items():
            if _survives(path, above):
                entries[path] = entry
        for path, target in layer.links.items():
            if _survives(path, above):
                links[path] = target
        for path, mode in layer.dirs.items():
            if _survives(path, above):
                dirs[path] = mode
    return FileScan(tuple(sorted(special.values(), key=lambda s: s.path)), entries, links, len(layers), dirs)


def _as_tar(head: bytes, rest: IO[bytes]) -> tarfile.TarFile | None:
    """The member as a tar stream when it is one (plain or gzip), else None."""
    stream = io.BufferedReader(_Chain(head, rest), 1 << 20)
    if head[:2] == b"\x1f\x8b":  # an OCI layer blob may be compressed
        return tarfile.open(fileobj=stream, mode="r|gz")
    if head[257:262] != b"ustar":  # a config or manifest blob
        return None
    return tarfile.open(fileobj=stream, mode="r|")


class _Chain(io.RawIOBase):
    """Bytes already read, then the rest of a stream."""

    def __init__(self, head: bytes, rest: IO[bytes]):
        self._head, self._rest = head, rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n], self._head = self._head[:n], self._head[n:]
            return n
        data = self._rest.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def scan_image(export: BinaryIO, names: Iterable[str] = ()) -> FileScan:
    """Read an image export (a ``docker save`` tar stream) once, front to back."""
    wanted = frozenset(names)
    records: dict[str, _Layer] = {}
    manifest = None
    try:
        with tarfile.open(fileobj=export, mode="r|") as outer:
            for member in outer:
                if not member.isfile():
                    continue
                name = member.name.lstrip("./")
                data = outer.extractfile(member)
                if data is None:
                    continue
                if name == "manifest.json":
                    manifest = json.load(data)
                    continue
                if not (name.endswith("/layer.tar") or name.startswith("blobs/")):
                    continue
                head = data.read(512)
                layer = _as_tar(head, data)
                if layer is not None:
                    records[name] = read_layer(layer, wanted)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ExportError(f"the image export is not a readable tar: {e}") from None
    if not manifest or not isinstance(manifest, list) or "Layers" not in manifest[0]:
        raise ExportError("the image export has no manifest.json with the layers' order")
    order = manifest[0]["Layers"]
    missing = [name for name in order if name not in records]
    if missing:
        raise ExportError(f"the image export lacks layers its manifest names: {', '.join(missing[:3])}")
    return stack([records[name] for name in order])
