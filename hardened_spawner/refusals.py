"""What went wrong in a spawn, said to the user: one table from error type to refusal.

Each row is (the error types, a function that returns the refusal's message and whether
the admin needs the details in the log, its reason, its status code). The first row that
matches decides. Expected refusals are 4xx (they do not count toward JupyterHub's
``consecutive_failure_limit``); anything unexpected keeps its traceback in the hub log
only, and the user is told to ask the admin. The rows here are both backends'; each
backend adds its own (`docker.refusals`, `kubernetes.refusals`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

from .core.gpus import GpuAllocationError, GpuQuotaExceeded, GpuUnavailable
from .core.identity import IdentityError
from .errors import SpawnRefused


@dataclass(frozen=True)
class Situation:
    """What the messages may name: the image asked for and where the backend was asked."""

    image: str
    engine_address: str  # the Docker engine's, or the Kubernetes API's
    gpu_board_url: str = ""  # where the GPU board is, "" when the hub has none


@dataclass(frozen=True)
class Row:
    errors: tuple[type[BaseException], ...]
    message: Callable[[BaseException, Situation], str]
    reason: str
    status_code: int
    matches: Callable[[BaseException], bool] = lambda e: True
    #: what the hub log gets besides the user's message ("" for nothing)
    log: Callable[[BaseException, Situation], str] = lambda e, s: ""
    #: the message with links, for the progress page ("" for the plain message)
    html: Callable[[BaseException, Situation], str] = lambda e, s: ""


def _with_board_link(message: str, situation: Situation) -> str:
    """A GPU refusal with the way to the GPU board, where the user sees who holds what."""
    if not situation.gpu_board_url:
        return ""
    return (f"Spawn failed: {escape(message)} "
            f'<a href="{escape(situation.gpu_board_url)}">See the GPU board</a> for who holds the GPUs.')


IDENTITY = Row((IdentityError,), lambda e, s: str(e), "identity", 403)
GPUS = Row((GpuAllocationError,), lambda e, s: e.user_message, "gpu", 409,  # type: ignore[attr-defined]
           html=lambda e, s: _with_board_link(e.user_message, s) if isinstance(e, GpuUnavailable | GpuQuotaExceeded) else "")

INTERNAL = (
    "Your server could not be started because of an internal error; the hub admin can find "
    "the details in the hub log."
)


def as_refusal(error: BaseException, situation: Situation, log, name: str, table: Sequence[Row]) -> SpawnRefused:
    """The refusal the user sees for ``error`` (itself, if it is one already)."""
    if isinstance(error, SpawnRefused):
        return error
    for row in table:
        if isinstance(error, row.errors) and row.matches(error):
            detail = row.log(error, situation)
            if detail:
                log.error("%s's spawn: %s", name, detail)
            return SpawnRefused(row.message(error, situation), reason=row.reason, status_code=row.status_code,
                                html_message=row.html(error, situation))
    log.exception("Unexpected error starting %s", name)
    return SpawnRefused(INTERNAL, reason="error", status_code=500)
