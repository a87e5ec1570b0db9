"""The spawn page's GPU choice: the form, and re-validation of what comes back.

User options can arrive from the form or straight from the REST API, so
`gpu_request` checks them again before anything is assigned.
"""

from __future__ import annotations

from html import escape


class OptionsError(ValueError):
    """Invalid user options; the message is shown on the spawn page."""


async def gpu_options_form(spawner) -> str:
    """A GPU count select (0..the user's limit), shown only when the hub has GPUs."""
    allocator = spawner.gpus.allocator
    summary = allocator.summary()
    if not summary.total:
        return ""
    limit = allocator.user_limit(spawner.user.name, [g.name for g in spawner.user.groups])
    default = min(spawner.gpu_default_per_user, limit)
    choices = "".join(
        f'<option value="{n}"{" selected" if n == default else ""}>'
        f'{n}{" (CPU only)" if n == 0 else ""}</option>'
        for n in range(limit + 1)
    )
    form = (
        '<label for="hs-gpus">GPUs</label>'
        f'<select id="hs-gpus" name="gpus" class="form-control">{choices}</select>'
        f"<p>{summary.free} of {summary.total} GPUs are free right now.{_board_link(spawner)}</p>"
        f"{_reclaim_notice(spawner)}"
    )
    if spawner.user.admin:
        devices = ", ".join(escape(d.uuid) for d in allocator.inventory)
        form += (
            '<label for="hs-gpu-devices">Specific GPU UUIDs (admins, optional)</label>'
            '<input id="hs-gpu-devices" name="gpu_devices" class="form-control" '
            f'placeholder="{devices}">'
        )
    return form


def _board_link(spawner) -> str:
    if not spawner.gpu_board:
        return ""
    return f' <a id="hs-gpu-board" href="{escape(spawner.hub.base_url)}gpus">See the GPU board</a> for who holds which.'


def _reclaim_notice(spawner) -> str:
    """What the GPU culler will do, said before the user asks for a GPU."""
    text = reclaim_text(spawner.gpu_idle_timeout, spawner.gpu_max_hold, spawner.gpu_underused_timeout,
                        spawner.gpu_underused_percent)
    return f'<p id="hs-gpu-reclaim">{text}</p>' if text else ""


def reclaim_text(idle_timeout: int, max_hold: int, underused_timeout: int = 0, underused_percent: int = 5) -> str:
    """The GPU culler's rule in words, for the spawn form and the GPU board ("" when off)."""
    rules = []
    if idle_timeout:
        rules.append(f"after {duration(idle_timeout)} without activity")
    if underused_timeout:
        rules.append(f"after {duration(underused_timeout)} with its GPUs under {underused_percent} % busy")
    if max_hold:
        rules.append(f"after {duration(max_hold)} in any case")
    if not rules:
        return ""
    return f"A server holding GPUs is stopped {' or '.join(rules)}, so its GPUs go back to everyone; its files stay."


def duration(seconds: int) -> str:
    """60 -> "1 minute", 5400 -> "90 minutes", 7200 -> "2 hours", 45 -> "45 seconds"."""
    for unit, size in (("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            n = seconds // size
            return f"{n} {unit}{'' if n == 1 else 's'}"
    return f"{seconds} second{'' if seconds == 1 else 's'}"


def parse_gpu_options(formdata: dict) -> dict:
    """Form fields (lists of strings) to user options."""
    options = {}
    if formdata.get("gpus", [""])[0].strip():
        options["gpus"] = formdata["gpus"][0].strip()
    devices = [d.strip() for d in formdata.get("gpu_devices", [""])[0].split(",") if d.strip()]
    if devices:
        options["gpu_devices"] = devices
    if formdata.get("image", [""])[0].strip():
        options["image"] = formdata["image"][0].strip()
    return options


#: The user options the spawner reads when a server starts: the GPU request, and
#: DockerSpawner's own image choice (with ``allowed_images``).
KNOWN_OPTIONS = ("gpus", "gpu_devices", "image")


def unknown_options(user_options: dict) -> list[str]:
    """Keys of ``user_options`` nothing reads (a typo in a REST call, another spawner's form)."""
    return sorted(str(key) for key in user_options if key not in KNOWN_OPTIONS)


def gpu_request(user_options: dict) -> tuple[int | None, list[str] | None]:
    """(count, devices) from user options, or `OptionsError` saying what is wrong."""
    count = user_options.get("gpus")
    if count is not None:
        # the form sends text, the REST API any JSON: accept "2" and 2, not 2.5 or true
        if isinstance(count, str) and count.strip().lstrip("-").isdigit():
            count = int(count)
        if isinstance(count, bool) or not isinstance(count, int):
            raise OptionsError(f"The number of GPUs must be a whole number, not {count!r}.")
        if count < 0:
            raise OptionsError(f"The number of GPUs cannot be negative ({count}).")
    devices = user_options.get("gpu_devices")
    if devices is not None and (
        not isinstance(devices, list) or not all(isinstance(d, str) for d in devices)
    ):
        raise OptionsError("gpu_devices must be a list of GPU UUIDs.")
    return count, devices
