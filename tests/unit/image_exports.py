"""Image exports made in memory, in the engine's own ``docker save`` layout (or the OCI one),
for tests of the layer walker and for the fake engine's ``get_image``.

A layer is a list of `Item`s; an item is what one tar entry says (path, type, mode, owner,
link target, extended attributes). Whiteouts are entries named ``.wh.NAME`` as the engine
writes them.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field

#: vfs_cap_data v2 for cap_net_raw+ep (what `setcap cap_net_raw+ep FILE` writes)
NET_RAW_EP = bytes.fromhex("01000002" "00200000" "00000000" "00000000" "00000000")


@dataclass(frozen=True)
class Item:
    path: str
    kind: str = "file"  # file, dir, symlink, hardlink
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    target: str = ""  # symlink or hardlink target
    xattrs: dict[str, bytes] = field(default_factory=dict)
    data: bytes = b""


def f(path: str, mode: int = 0o644, **kwargs) -> Item:
    return Item(path, "file", mode, **kwargs)


def d(path: str, mode: int = 0o755) -> Item:
    return Item(path, "dir", mode)


def link(path: str, target: str) -> Item:
    return Item(path, "symlink", 0o777, target=target)


def whiteout(path: str) -> Item:
    head, _, base = path.rpartition("/")
    return f(f"{head}/.wh.{base}", 0o644)


def opaque(directory: str) -> Item:
    return f(f"{directory.rstrip('/')}/.wh..wh..opq", 0o644)


def layer_tar(items: list[Item]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for item in items:
            info = tarfile.TarInfo(item.path.lstrip("/"))
            info.mode, info.uid, info.gid = item.mode, item.uid, item.gid
            info.type = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
                         "hardlink": tarfile.LNKTYPE}[item.kind]
            info.linkname = item.target.lstrip("/") if item.kind == "hardlink" else item.target
            info.size = len(item.data) if item.kind == "file" else 0
            if item.xattrs:
                info.pax_headers = {f"SCHILY.xattr.{k}": v.decode("latin-1") for k, v in item.xattrs.items()}
            tar.addfile(info, io.BytesIO(item.data) if item.kind == "file" else None)
    return out.getvalue()


def export(layers: list[list[Item]], *, oci: bool = False, gzip_layers: bool = False, shuffle: bool = True) -> bytes:
    """A whole image export. Layers are written in reverse order when ``shuffle`` (an export
    does not promise its members' order; only the manifest gives the layers')."""
    blobs = [layer_tar(items) for items in layers]
    if gzip_layers:
        blobs = [gzip.compress(b) for b in blobs]
    names = []
    members = []
    for blob in blobs:
        digest = hashlib.sha256(blob).hexdigest()
        name = f"blobs/sha256/{digest}" if oci else f"{digest}/layer.tar"
        names.append(name)
        members.append((name, blob))
    config = json.dumps({"rootfs": {"type": "layers"}}).encode()
    members.append(("blobs/sha256/" + hashlib.sha256(config).hexdigest() if oci else "config.json", config))
    if shuffle:
        members.reverse()
    members.append(("manifest.json", json.dumps([{"Config": "config.json", "RepoTags": [], "Layers": names}]).encode()))
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


#: a minimal image a server can start from: jupyterhub-singleuser on the PATH, for anyone
SINGLEUSER_IMAGE = [[d("usr"), d("usr/local"), d("usr/local/bin"),
                     f("usr/local/bin/jupyterhub-singleuser", 0o755, data=b"#!/usr/bin/python3\n")]]
