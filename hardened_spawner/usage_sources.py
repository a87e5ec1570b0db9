"""Where the usage ledger's inputs come from: the audit trail file, the engine's running
servers, the hub's database for groups. The ledger itself is pure (`usage`); this is its I/O,
shared by ``hardened-spawner usage`` (`cli`) and the GPU board (`gpu_pages`).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import os
import threading
from collections.abc import Iterator

from . import labels
from .errors import CannotCheck
from .usage import Interval, Ledger, Running, Use, read_events

#: how much of the trail is read at a time
CHUNK = 16 * 1024 * 1024
DEFAULT_DB_URL = "sqlite:///jupyterhub.sqlite"


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Building a year's ledger allocates a million small tuples, none of them cyclic: the
    collector's full passes over them would cost a third of the time."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _lines(path: str, offset: int = 0) -> Iterator[tuple[int, list[str]]]:
    """(offset after them, complete lines) of the file from ``offset``, a chunk at a time; a
    last line without its newline (the hub writing it now) is left for the next read."""
    with open(path, "rb") as trail:
        trail.seek(offset)
        while True:
            lines = trail.readlines(CHUNK)
            if not lines:
                return
            done = not lines[-1].endswith(b"\n")
            if done:
                lines.pop()
            offset += sum(map(len, lines))
            if lines:
                yield offset, [line.decode("utf-8", "replace") for line in lines]
            if done:
                return


def read_ledger(path: str, *, exclusive: bool = True, keep_from: float | None = None,
                problems: list[str] | None = None) -> Ledger:
    """The ledger of a whole trail file (see `usage`). Raises CannotCheck when it cannot be read.

    Read as text a chunk of lines at a time (faster than the follower's bytes, which it needs
    for offsets); a last line without its newline is the hub writing it now, and left out."""
    book = Ledger(exclusive=exclusive)
    if keep_from is not None:
        book.keep_from = keep_from
    try:
        with _gc_paused(), open(path, encoding="utf-8", errors="replace", newline="\n") as trail:
            number = 1
            while lines := trail.readlines(CHUNK):
                if not lines[-1].endswith("\n"):
                    lines.pop()
                book.feed(read_events(lines, problems, number))
                number += len(lines)
    except OSError as e:
        raise CannotCheck(f"cannot read the audit trail {path}: {e.strerror or e}") from None
    return book


class TrailFollower:
    """The ledger of a trail file the hub appends to, brought up to date at each `update`
    by reading only what was appended since. A rotated (new file) or truncated trail starts
    the ledger over from the new file."""

    def __init__(self, path: str, *, exclusive: bool = True):
        self.path = path
        self.exclusive = exclusive
        self._lock = threading.Lock()
        self._start()

    def _start(self) -> None:
        self.ledger = Ledger(exclusive=self.exclusive)
        self.problems: list[str] = []
        self._offset = 0
        self._number = 1  # of the next line
        self._file: tuple[int, int] | None = None

    def update(self, keep_from: float | None = None) -> Ledger:
        """Read what was appended; ``keep_from``: forget intervals that ended before it. A
        trail not written yet is an empty one."""
        with self._lock:
            return self._update(keep_from)

    def _update(self, keep_from: float | None) -> Ledger:
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            self._start()
            return self.ledger
        if (stat.st_dev, stat.st_ino) != self._file or stat.st_size < self._offset:
            self._start()
            self._file = (stat.st_dev, stat.st_ino)
        if keep_from is not None:
            self.ledger.forget_before(keep_from)
        with _gc_paused():
            for offset, lines in _lines(self.path, self._offset):
                self.ledger.feed(read_events(lines, self.problems, self._number))
                self._offset, self._number = offset, self._number + len(lines)
        return self.ledger

    def read(self, running: list[Running], now: float, keep_from: float | None = None) -> tuple[list[Interval], list[Use]]:
        """`update`, then the ledger's intervals with ``running``, and its GPU time used (under
        the follower's lock: the ledger is not read while another thread feeds it)."""
        with self._lock:
            book = self._update(keep_from)
            return book.intervals(running, now), list(book.used)


_FOLLOWERS: dict[tuple[str, bool], TrailFollower] = {}
_FOLLOWERS_LOCK = threading.Lock()


def follower_for(path: str, exclusive: bool = True) -> TrailFollower:
    """The hub's one follower of its trail file."""
    key = (os.path.abspath(path), exclusive)
    with _FOLLOWERS_LOCK:
        found = _FOLLOWERS.get(key)
        if found is None:
            found = _FOLLOWERS[key] = TrailFollower(key[0], exclusive=exclusive)
        return found


def trail_file(audit_log: str, owner: str = "HardenedSpawner") -> str:
    """The trail file named by ``audit_log``; CannotCheck when auditing is off or goes to a stream."""
    if not audit_log:
        raise CannotCheck(f"{owner}.audit_log is '': there is no audit trail to count usage from. "
                          "Set it to a file, or name one with --audit.")
    if audit_log in ("-", "stdout", "stderr"):
        raise CannotCheck(f"{owner}.audit_log is {audit_log!r}, a stream: name the file it is kept in with --audit.")
    return audit_log


# --- the engine --------------------------------------------------------------------------


def running_from_containers(containers: list[dict], hub_id: str = "") -> list[Running]:
    """The running servers as the ledger takes them, from running managed server containers
    (``docker ps`` shape): who holds which devices since when, read from their labels as the
    hub's GPU table is rebuilt (`docker.holdings`), and each server started at its container's
    creation. With ``hub_id``, only that hub's servers (and unlabelled ones): other hubs on
    the engine keep their own trails."""
    from .docker.holdings import holdings_from_containers
    from .gpu_broker import holder_key

    kept = [c for c in containers if not hub_id or (c.get("Labels") or {}).get(labels.HUB, hub_id) == hub_id]
    holdings = {h.user: h for h in holdings_from_containers(kept)}
    found = []
    for container in kept:
        found_labels = container.get("Labels") or {}
        owner, server = found_labels.get(labels.OWNER, "?"), found_labels.get(labels.SERVER_NAME, "")
        holding = holdings.get(holder_key(owner, server))
        created = container.get("Created")
        found.append(Running(
            user=owner, server=server,
            devices=holding.devices if holding else (),
            gpus_since=holding.since.timestamp() if holding else None,
            started=float(created) if isinstance(created, (int, float)) else None,
        ))
    return found


# --- the hub's database ----------------------------------------------------------------------


def hub_id_for_url(db_url: str) -> str:
    """`hub_database.hub_id` of the hub whose database is at ``db_url`` (as configured), which
    labels its servers."""
    from sqlalchemy.engine import make_url

    return hashlib.sha256(make_url(db_url).render_as_string(hide_password=True).encode()).hexdigest()[:16]


def resolve_db_url(db_url: str, base_dir: str) -> str:
    """A relative SQLite path is relative to where the hub runs: taken here as the config
    file's folder."""
    prefix = "sqlite:///"
    if db_url.startswith(prefix) and not db_url.startswith(prefix + "/") and ":memory:" not in db_url:
        return prefix + os.path.join(os.path.abspath(base_dir), db_url[len(prefix):])
    return db_url


def groups_from_database(db_url: str) -> dict[str, list[str]]:
    """Each user's groups, as the hub's database has them now (read only)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    url = make_url(db_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:" \
            and not os.path.exists(url.database):
        raise CannotCheck(f"the hub's database {url.database} does not exist (JupyterHub.db_url, or --db-url)")
    engine = create_engine(url)
    query = text("SELECT users.name, groups.name FROM users "
                 "JOIN user_group_map ON user_group_map.user_id = users.id "
                 "JOIN groups ON groups.id = user_group_map.group_id")
    found: dict[str, list[str]] = {}
    try:
        with engine.connect() as connection:
            for user, group in connection.execute(query):
                found.setdefault(user, []).append(group)
    except SQLAlchemyError as e:
        raise CannotCheck(f"cannot read the groups from the hub's database "
                          f"{url.render_as_string(hide_password=True)}: {type(e).__name__}") from None
    finally:
        engine.dispose()
    return {user: sorted(groups) for user, groups in found.items()}
