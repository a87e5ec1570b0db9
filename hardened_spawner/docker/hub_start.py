"""What the Docker backend does once in the background when a hub starts
(`hubstart` schedules it): connect to the engine, remove the workspace helpers a killed
process left, then, side by side, audit the server containers already running and check the
network isolation, admit the images users may start (a few at a time, so a user's first
spawn seldom finds its image unread), and say whether the workspace quota the settings ask
for can be enforced here. Nothing raised here reaches the hub.
"""

from __future__ import annotations

import asyncio

import docker.errors

from .. import hub_database
from ..admission.rules import describe_refusal
from . import admission, checks, engine, image_records
from .hub_context import EngineUnavailable


async def hub_start_work(spawner, app) -> None:
    context = spawner.context
    try:
        await context.run(lambda: context.client)
    except EngineUnavailable as e:
        app.log.error(
            "%s Spawns are refused with a clear message until it answers; the hub asks again "
            "at every spawn.", e,
        )
        return
    app.log.info("Connected to the Docker engine at %s", context.address)
    await _remove_abandoned_helpers(app, context)
    # the images' reads take seconds each and wait for nothing here: they start now, beside
    # the audit and the isolation check (which waits for the hub's API to listen)
    await asyncio.gather(_audit_and_isolation(spawner, app, context), _admit_images(spawner, app.log),
                         spawner.check_workspace_quota(app.log))


async def _audit_and_isolation(spawner, app, context) -> None:
    await _audit(spawner, app.log, context)
    await _check_isolation(spawner, app)


#: images read at once at hub start. Each read keeps the engine busy making the image's export
#: (about a core and the disk) and one of the hub's Docker threads parsing it, which holds the
#: hub's one interpreter lock about a quarter of the time (4.5 of 17 s for the 1.45 GB project
#: image), shared with the hub's event loop. Measured on a 2-CPU engine, six distinct 1.45 GB
#: images: one at a time 110 s, two 86 s, three 108 s. So two, and never more than the
#: engine's CPUs.
READS_AT_ONCE = 2


def reads_at_once(engine_cpus: int | None) -> int:
    return max(1, min(READS_AT_ONCE, engine_cpus or READS_AT_ONCE))


async def _admit_images(spawner, log) -> None:
    """Judge `image` and every `allowed_images` entry once, now: their layers are read (and
    the engine keeps the facts), names seen for the first time are approved for what they
    point at, and the scanner runs. What would be refused is said in the log now.

    `reads_at_once` images at a time, `image` first and the rest in their order. A spawn of an
    image not read yet does not wait for this queue: it reads its image itself at once, or, when
    this work is reading that very image, waits for that one read (`admission.admit` holds one
    lock per image ID)."""
    if not spawner.image_admission:
        return
    context, settings = spawner.context, spawner.admission_settings()
    try:
        removed = await context.run(image_records.prune, context.client)
        if removed:
            log.info("Removed the admission records of %d image(s) no longer on the engine", len(removed))
    except Exception:
        log.exception("Removing the admission records of images no longer on the engine failed")
    try:
        cpus = (await context.docker("info")).get("NCPU")
    except Exception:
        cpus = None
    turns = asyncio.Semaphore(reads_at_once(cpus))
    command = tuple(spawner.cmd or ())
    await asyncio.gather(*(_admit_image(spawner, log, settings, name, command, turns)
                           for name in spawner.admitted_images()))


async def _admit_image(spawner, log, settings, name: str, command: tuple[str, ...], turns: asyncio.Semaphore) -> None:
    context = spawner.context
    async with turns:  # asyncio's semaphore lets waiters in in the order they came
        try:
            inspect = await context.docker("inspect_image", name)
            verdict = await admission.admit(context, context.images, settings, name, inspect, command)
        except docker.errors.ImageNotFound:
            log.warning("Image %s is not on the engine: spawns of it are refused until it is built or loaded.", name)
            return
        except Exception:
            log.exception("Admitting the image %s at hub start failed", name)
            return
    facts = verdict.case.facts
    if verdict.first_approval is not None:
        spawner.audit.emit("image-approved", **admission.first_sight_fields(verdict.case, verdict.first_approval))
    if verdict.admitted:
        log.info("Image %s (%s) is admitted (its layers were read in %.1f s)", name, facts.image_id[:19],
                 facts.read_seconds)
    else:
        log.warning("%s", describe_refusal(name, facts.image_id, verdict.violations))


async def _remove_abandoned_helpers(app, context) -> None:
    """Workspace helpers an earlier, killed process of this hub left (`engine`), so their
    workspaces are free at once; this process's own helpers carry its id and are kept."""
    try:
        await engine.remove_abandoned_helpers(context, hub_database.hub_id(app.db))
    except Exception:
        app.log.exception("Removing the workspace helpers an earlier hub process left failed")


async def _audit(spawner, log, context) -> None:
    """Check the managed server containers already on the engine and log what is found
    (`checks.audit_at_hub_start`), on the hub's Docker threads, with the hub's client.
    That function never raises; a failure to run it at all (a pool shut down) must not
    stop the hub either."""
    try:
        await context.run(checks.audit_at_hub_start, spawner, log)
    except Exception:
        log.exception("The hub-start audit of the existing server containers could not run")


#: seconds the hub-start isolation check waits for the hub's own API to listen
API_WAIT = 30


async def _listening(host: str, port: int, timeout: float = API_WAIT) -> bool:
    """Wait until something accepts connections at host:port (the hub API, which
    starts listening after this check is scheduled)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2)
        except (OSError, asyncio.TimeoutError):
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.25)
        else:
            writer.close()
            return True


async def _check_isolation(spawner, app) -> None:
    """Check the users' network isolation once at hub start: a missing rule shows up in
    the log before anyone spawns."""
    if not spawner.network_isolation:
        app.log.warning(checks.ISOLATION_OFF)
        return
    try:
        spawner.hub = app.hub
        await spawner.engine_facts()  # creates the users' network if it is missing
        # the probe container must find the hub API listening, which it is not yet
        policy = await spawner.hub_policy()
        if not await _listening(policy.hub_ip, policy.hub_port):
            app.log.warning("The hub API at %s:%s is not answering after %s s; checking the "
                            "network isolation anyway", policy.hub_ip, policy.hub_port, API_WAIT)
        await spawner.check_isolation(force=True)
    except Exception:
        app.log.exception("Checking the users' network isolation at hub start failed")
