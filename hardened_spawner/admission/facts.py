"""The facts about one image that admission judges, read once per image ID.

An image ID is the digest of the image's config, which names every layer's digest: the same
ID is the same bytes, so facts read once hold for as long as the ID exists. `ImageFacts`
is what the engine's ``inspect`` and one read of the layers (`layers.scan_image`) say; it
round-trips through JSON so the engine can keep it (`docker.images`) and the admin command
can show it without reading the layers again.

Pure: standard library only.
"""

from __future__ import annotations

import posixpath
from dataclasses import asdict, dataclass, field

from .layers import Entry, FileScan, SpecialFile

#: the program a single-user server runs
SINGLEUSER = "jupyterhub-singleuser"
#: special files kept in the facts (the rest are counted): enough for any message
KEEP_SPECIAL = 200
#: how the facts are read: facts an older reading kept on the engine are read again
#: (4: the directories on the way to each command, kept where a version-2 reader ignores them)
FACTS_VERSION = 4


@dataclass(frozen=True)
class Located:
    """Where a command resolves on the image's PATH, and whether anyone may run it."""

    name: str  # as the image or the settings give it
    path: str = ""  # the final file it resolves to; "" when not found
    mode: int = 0
    #: the directories on the way to it (links followed) that others may not search, with
    #: their modes: (path, mode) pairs, nearest the root first
    closed: tuple[tuple[str, int], ...] = ()

    @property
    def found(self) -> bool:
        return bool(self.path)

    @property
    def runs_as_anyone(self) -> bool:
        """The server's UID owns no file or directory of the image and its private GID is
        no file's group: only the bits for others count, on the file (``x``) and on every
        directory the kernel searches to reach it (``x``)."""
        return self.found and bool(self.mode & 0o001) and not self.closed


@dataclass(frozen=True)
class ImageFacts:
    image_id: str
    user: str  # the image's USER ("" is root)
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    path: str  # the image's PATH
    home: str  # the image's HOME, "" when it sets none
    volumes: tuple[str, ...]  # paths the image declares as VOLUME
    special: tuple[SpecialFile, ...]  # setuid/setgid/capability files, at most KEEP_SPECIAL
    special_count: int
    commands: dict[str, Located] = field(default_factory=dict)  # by name: the ones looked for
    layers: int = 0
    read_seconds: float = 0.0  # how long reading the layers took
    version: int = FACTS_VERSION

    def covers(self, names: tuple[str, ...]) -> bool:
        """Whether these facts were read by this reading and looked for every one of ``names``
        (`commands_to_find`); if not, the layers must be read again."""
        return self.version == FACTS_VERSION and all(name in self.commands for name in names)

    # --- JSON, for the engine's cache ------------------------------------------

    def to_json(self) -> dict:
        """The facts as JSON. A command's closed directories are kept apart from the command
        (``closed``, by name): a hub of an older version reads ``commands`` as ``Located(**found)``,
        and must find only the fields it knows there, see the version and read the layers again,
        not fail."""
        data = asdict(self)
        data["commands"] = {name: {"name": found.name, "path": found.path, "mode": found.mode}
                            for name, found in self.commands.items()}
        data["closed"] = {name: [list(c) for c in found.closed] for name, found in self.commands.items() if found.closed}
        return data

    @classmethod
    def from_json(cls, data: dict) -> ImageFacts:
        closed = data.get("closed") or {}
        return cls(
            image_id=data["image_id"], user=data["user"], entrypoint=tuple(data["entrypoint"]),
            cmd=tuple(data["cmd"]), path=data["path"], home=data["home"], volumes=tuple(data["volumes"]),
            special=tuple(SpecialFile(**s) for s in data["special"]), special_count=data["special_count"],
            commands={name: Located(found["name"], found["path"], found["mode"],
                                    tuple((str(d), int(m)) for d, m in closed.get(name, ())))
                      for name, found in data["commands"].items()},
            layers=data["layers"], read_seconds=data["read_seconds"], version=data.get("version", 1),
        )


def config_of(inspect: dict) -> dict:
    return inspect.get("Config") or {}


def environment(inspect: dict) -> dict[str, str]:
    return dict(item.partition("=")[::2] for item in config_of(inspect).get("Env") or [])


def commands_to_find(inspect: dict, command: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The programs whose files admission looks for: the server program, the image's
    entrypoint and command, and the command the spawner would give instead."""
    config = config_of(inspect)
    names = [SINGLEUSER]
    for argv in (config.get("Entrypoint") or [], config.get("Cmd") or [], list(command)):
        if argv and argv[0] not in names:
            names.append(argv[0])
    return tuple(names)


def locate(name: str, scan: FileScan, path_variable: str, workdir: str = "/") -> Located:
    """``name`` as an ``execvp`` in the container would find it (absolute, relative to the
    working directory when it has a slash, else on PATH), following links, with the
    directories on the way that others may not search. The first file found is the one
    judged, as root sees the image: a copy later on PATH is not looked for."""
    if "/" in name:
        candidates = [name if name.startswith("/") else posixpath.join(workdir or "/", name)]
    else:
        candidates = [posixpath.join(d or ".", name) for d in path_variable.split(":") if d.startswith("/")]
    for candidate in candidates:
        entry: Entry | None = scan.find(candidate)
        if entry is not None and entry.kind == "file":
            return Located(name, entry.path, entry.mode, scan.closed_to_others(candidate))
    return Located(name)


def image_facts(inspect: dict, scan: FileScan, names: tuple[str, ...], read_seconds: float = 0.0) -> ImageFacts:
    config = config_of(inspect)
    env = environment(inspect)
    path_variable = env.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    return ImageFacts(
        image_id=inspect["Id"],
        user=config.get("User") or "",
        entrypoint=tuple(config.get("Entrypoint") or ()),
        cmd=tuple(config.get("Cmd") or ()),
        path=path_variable,
        home=env.get("HOME", ""),
        volumes=tuple(sorted(config.get("Volumes") or {})),
        special=scan.special[:KEEP_SPECIAL],
        special_count=len(scan.special),
        commands={name: locate(name, scan, path_variable, config.get("WorkingDir") or "/") for name in names},
        layers=scan.layers,
        read_seconds=round(read_seconds, 3),
    )
