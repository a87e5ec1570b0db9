"""What the hardened spawners do once when a hub starts, before anyone spawns.

JupyterHub has no start hook for spawners and creates them lazily, so a bad
setting would otherwise only surface at someone's first spawn, on their spawn
page. These checks run when the hub has read its config: validate it (and stop
the hub with the setting's name), then, in the background without delaying the
start, the backend's own hub-start work (`hub_start_work`: on Docker, connect to the
engine, audit the existing server containers and check the network isolation).
"""

import asyncio
import contextlib
import sys
from types import SimpleNamespace

from traitlets import TraitError

from .gpu_board import culler_missing
from .gpu_pages import SAMPLER_SETTING, SPAWNER_SETTING, reclaim_rule
from .gpu_sampler import sampler_for
from .lifecycle import HardenedLifecycle


def install_hub_start_checks() -> None:
    """Make a bad configuration stop the hub at start, not fail a user's spawn.

    JupyterHub creates spawners lazily, so a bad setting would otherwise only
    surface at someone's first spawn, on their spawn page. JupyterHub imports
    every spawner entry point while it constructs its app, before it reads the
    config; so this wraps its ``init_tornado_settings`` (called once the
    config is complete, before anything is served) to build one spawner from
    the config first, which runs every validator and `check_config`, and then
    does the backend's hub-start work in the background. It acts for any
    hardened spawner (a subclass of `HardenedLifecycle`, on either backend, whichever
    was imported first) and does nothing when the hub uses another spawner class.
    """
    app_module = sys.modules.get("jupyterhub.app")
    if app_module is None:
        return
    hub_class = app_module.JupyterHub
    original = hub_class.init_tornado_settings
    if getattr(original, "_hardened_spawner_check", False):
        return

    def init_tornado_settings(app):
        if isinstance(app.spawner_class, type) and issubclass(app.spawner_class, HardenedLifecycle):
            name = app.spawner_class.__name__
            try:
                # a stand-in user: the base spawners' observers render name templates
                # (with the hub's database, so that the GPU table it may build knows this hub)
                probe_user = SimpleNamespace(name="config-check", escaped_name="config-check", id=0, admin=False,
                                             groups=[], db=app.db, url="/user/config-check/")
                spawner = app.spawner_class(config=app.config, log=app.log, user=probe_user)
                spawner.check_config()
                sampler = sampler_for(spawner)
            except TraitError as e:
                app.log.critical("Invalid %s configuration: %s", name, e)
                app.exit(1)
            except Exception as e:  # the backend cannot be set up at all (no kube config, ...)
                app.log.debug("Building %s from the configuration failed", name, exc_info=True)
                app.log.critical("%s cannot start: %s: %s", name, type(e).__name__, e)
                app.exit(1)
            app.log.info("%s configuration checked", name)
            # the GPU board's pages reach the hub's GPU table through it (`gpu_pages`)
            app.tornado_settings[SPAWNER_SETTING] = spawner
            missing = culler_missing(reclaim_rule(spawner), [service.get("name") for service in app.services], name)
            if missing:
                app.log.warning(missing)
            _start_in_background(spawner.hub_start_work(app), app)
            if sampler is not None:  # built here, before any thread can reach it
                app.tornado_settings[SAMPLER_SETTING] = sampler
                _stop_at_cleanup(_start_in_background(sampler.run(), app), app)
        return original(app)

    init_tornado_settings._hardened_spawner_check = True  # type: ignore[attr-defined]
    hub_class.init_tornado_settings = init_tornado_settings


#: keeps the hub-start work's task referenced until it is done
_background: set = set()


def _start_in_background(work, app) -> asyncio.Task | None:
    """Hub-wide work (the backend's hub-start work, the GPU sampler), in the background, so
    the hub's start never waits. It is started here, on the hub's event loop, so what it
    builds hub-wide (the engine client and its threads) exists before any thread can ask
    for it."""
    try:
        task = asyncio.get_running_loop().create_task(work)
    except RuntimeError as e:  # no running event loop to schedule it on
        work.close()
        app.log.warning("Not starting the hub-wide work at hub start: %s", e)
        return None
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task


def _stop_at_cleanup(task: asyncio.Task | None, app) -> None:
    """Cancel ``task`` when the hub shuts down, before its own cleanup (which may stop every
    server), and wait for it: the GPU sampler then records the windows it has open, which a
    stop of the hub would otherwise lose (the event loop drops pending tasks unrun)."""
    if task is None:
        return
    original = app.cleanup

    async def cleanup():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await original()

    app.cleanup = cleanup
