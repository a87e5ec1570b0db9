"""What HardenedSpawner does once when a hub starts, before anyone spawns.

JupyterHub has no start hook for spawners and creates them lazily, so a bad
setting would otherwise only surface at someone's first spawn, on their spawn
page. These checks run when the hub has read its config: validate it (and stop
the hub with the setting's name), then, in the background without delaying the
start, connect to the engine, audit the existing server containers and check the
network isolation.
"""

import asyncio
import sys
from types import SimpleNamespace

from traitlets import TraitError

from . import checks, engine, hub_database
from .gpu_board import ReclaimRule, culler_missing
from .gpu_pages import SPAWNER_SETTING
from .hub_context import EngineUnavailable


def install_hub_start_checks(spawner_class) -> None:
    """Make a bad configuration stop the hub at start, not fail a user's spawn.

    JupyterHub creates spawners lazily, so a bad setting would otherwise only
    surface at someone's first spawn, on their spawn page. JupyterHub imports
    every spawner entry point while it constructs its app, before it reads the
    config; so this wraps its ``init_tornado_settings`` (called once the
    config is complete, before anything is served) to build one spawner from
    the config first, which runs every validator and `check_config`, and then
    audits the server containers already running, in the background. When the
    hub uses another spawner class, the wrapper does nothing.
    """
    app_module = sys.modules.get("jupyterhub.app")
    if app_module is None:
        return
    hub_class = app_module.JupyterHub
    original = hub_class.init_tornado_settings
    if getattr(original, "_hardened_spawner_check", False):
        return

    def init_tornado_settings(app):
        if isinstance(app.spawner_class, type) and issubclass(app.spawner_class, spawner_class):
            try:
                # a stand-in user: DockerSpawner's observers render name templates
                # (with the hub's database, so that the GPU table it may build knows this hub)
                probe_user = SimpleNamespace(name="config-check", id=0, admin=False, groups=[], db=app.db)
                spawner = app.spawner_class(config=app.config, log=app.log, user=probe_user)
                spawner.check_config()
            except TraitError as e:
                app.log.critical("Invalid HardenedSpawner configuration: %s", e)
                app.exit(1)
            app.log.info("HardenedSpawner configuration checked")
            # the GPU board's pages reach the hub's GPU table through it (`gpu_pages`)
            app.tornado_settings[SPAWNER_SETTING] = spawner
            missing = culler_missing(ReclaimRule(spawner.gpu_idle_timeout, spawner.gpu_max_hold),
                                     [service.get("name") for service in app.services])
            if missing:
                app.log.warning(missing)
            _start_in_background(spawner, app)
        return original(app)

    init_tornado_settings._hardened_spawner_check = True  # type: ignore[attr-defined]
    hub_class.init_tornado_settings = init_tornado_settings


#: keeps the hub-start work's task referenced until it is done
_background: set = set()


def _start_in_background(spawner, app) -> None:
    """Connect to the engine, audit the servers already running, then check the network
    isolation: in the background, so the hub's start never waits, and nothing raised
    reaches the hub. The hub-wide context (client, Docker threads) is built here, on the
    hub's event loop, before any thread can ask for it."""
    context = spawner.context
    try:
        task = asyncio.get_running_loop().create_task(_hub_start_work(spawner, app, context))
    except RuntimeError as e:  # no running event loop to schedule it on
        app.log.warning("Not checking the engine at hub start: %s", e)
        return
    _background.add(task)
    task.add_done_callback(_background.discard)


async def _hub_start_work(spawner, app, context) -> None:
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
    await _audit(spawner, app.log, context)
    await _check_isolation(spawner, app)


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
