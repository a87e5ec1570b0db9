"""The one exception type for spawns this spawner refuses on purpose.

A refusal is the user's or the admin's to fix, not a hub failure: it must show
its message on the spawn page and must not count toward the hub's
``consecutive_failure_limit`` (which only counts 5xx errors and non-HTTP
exceptions). JupyterHub 6 has `SpawnException` for exactly this; on
JupyterHub 5 a 4xx `HTTPError` carrying ``jupyterhub_message`` does the same.
"""

from tornado import web


class CannotCheck(Exception):
    """An admin command (or the hub's own start-up check) cannot do its work; the message
    says why and what to do."""


try:
    from jupyterhub.spawner import SpawnException as _Base
except ImportError:  # JupyterHub 5
    _Base = None


if _Base is not None:

    class SpawnRefused(_Base):
        def __init__(self, message, *, reason, log_message="", status_code=400, html_message=""):
            super().__init__(message, reason=reason, log_message=log_message, status_code=status_code)
            # what the spawn page's progress stream shows, instead of the repr
            self.jupyterhub_message = message
            if html_message:  # the same, with links (the progress page prefers it)
                self.jupyterhub_html_message = html_message

else:

    class SpawnRefused(web.HTTPError):  # type: ignore[no-redef]  # the same name on JupyterHub 5
        def __init__(self, message, *, reason, log_message="", status_code=400, html_message=""):
            super().__init__(status_code, "%s", log_message or message)
            self.reason = reason
            self.message = message
            self.jupyterhub_message = message
            if html_message:
                self.jupyterhub_html_message = html_message
