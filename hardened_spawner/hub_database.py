"""What the spawner asks of the hub's own database (a SQLAlchemy session, ``user.db``)."""

from __future__ import annotations

import hashlib


def hub_id(db) -> str:
    """Which hub database this is (a digest of its URL, never the URL: it may hold a
    password), labelled on every server: a restarted hub removes the servers of its own
    database that it no longer knows, and never another hub's. "" without a database."""
    if db is None:
        return ""
    url = db.get_bind().url.render_as_string(hide_password=True)
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def servers_in_database(db) -> set[tuple[str, str]] | None:
    """(user, server name) of every server the database has as running or starting; None
    without a database (then nothing is an orphan)."""
    if db is None:
        return None
    from jupyterhub import orm

    rows = db.query(orm.Spawner).filter(orm.Spawner.server_id.isnot(None)).all()
    return {(row.user.name, row.name or "") for row in rows}
