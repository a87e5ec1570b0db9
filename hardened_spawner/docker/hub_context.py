"""What every spawner of one hub process shares, built once and safe to use from threads.

DockerSpawner keeps its engine client and its thread pool as lazy class
attributes. That is safe upstream only because every Docker call goes through
one thread. HardenedSpawner uses `docker_threads` threads, and the hub-start
audit runs in another one: two threads that found no client at the same moment
each made one, the second assignment dropped the first, and the dropped
client's connection pool closed sockets another thread was reading from. The
hub died of a segmentation fault (issue 15).

So everything the whole hub shares lives here, in one `HubContext` per set of
engine settings:

- the docker-py client, made once under a lock by whoever asks first (the
  hub-start work, right after the hub built the context on its event loop) and
  never replaced: when the engine does not answer, nothing is stored and the
  next call tries again;
- the thread pool for Docker calls;
- the engine facts and the isolation checks, each keyed by the settings it depends on
  (the GPU table is the hub's, for either backend: `gpu_broker.broker_for`);
- what admission knows of images (`admission.ImageCache`), by image ID and name;
- the one watch over the servers starting at a moment (`start_watch.StartWatch`), and the
  queue that lets only so many start at once (`start_queue.StartQueue`).

`hub_context` finds or builds the context under a process-wide lock;
`reset_hub_contexts` forgets them all (for tests).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import docker
import docker.errors
import docker.tls
import requests.exceptions
from docker.utils import kwargs_from_env

from .admission import ImageCache
from .start_queue import StartQueue
from .start_watch import StartWatch

#: the errors docker-py raises when the engine cannot be reached or goes away
ENGINE_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException)


class EngineUnavailable(Exception):
    """The Docker engine does not answer; the message says where it was asked and why."""


#: everything a call to the engine may raise because it is out of reach or refused
UNREACHABLE = (EngineUnavailable, *ENGINE_ERRORS)


def engine_address(client_kwargs: dict) -> str:
    """Where the engine is asked, for messages (the settings' base_url, DOCKER_HOST, or the default)."""
    return (
        client_kwargs.get("base_url")
        or os.environ.get("DOCKER_HOST")
        or "unix:///var/run/docker.sock"
    )


def unreachable_message(address: str, error: BaseException) -> str:
    return (
        f"Cannot reach the Docker engine at {address}: {error}. Is the engine running, and "
        "may this account use it (the docker group, DOCKER_HOST, DockerSpawner.client_kwargs)?"
    )


_ENGINE_ENVIRONMENT = ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH")


def engine_settings(tls_config: dict, client_kwargs: dict) -> dict:
    """What the engine client is made from (the context's key): DockerSpawner's settings
    and the environment docker-py reads."""
    return {"tls_config": tls_config, "client_kwargs": client_kwargs,
            "env": {k: os.environ.get(k) for k in _ENGINE_ENVIRONMENT}}


def connect(tls_config: dict, client_kwargs: dict, threads: int):
    """The engine client, as DockerSpawner makes it, with a connection for every Docker
    thread (docker-py keeps 10, and drops the rest after each call)."""
    kwargs: dict[str, Any] = {"version": "auto", "max_pool_size": threads}
    if tls_config:
        kwargs["tls"] = docker.tls.TLSConfig(**tls_config)
    kwargs.update(kwargs_from_env())
    kwargs.update(client_kwargs)
    return docker.APIClient(**kwargs)


@dataclass(frozen=True)
class EngineFacts:
    """What every spawn needs to know of the engine, asked once per hub process and users'
    network (`HardenedSpawner.engine_facts`)."""

    apparmor: bool  # whether the engine can apply an AppArmor profile
    identity_mountpoint: str  # the identity volume's path on the host (its files are bind-mounted)
    cpus: int  # the engine's CPUs; 0 when it did not say


@dataclass
class IsolationCheck:
    """The last check of one users' network's isolation (see `HardenedSpawner`)."""

    when: float
    method: str
    problems: tuple[str, ...]
    blocking: tuple[str, ...] = ()


class HubContext:
    """The engine client, the Docker thread pool and the hub-wide Docker tables of one hub."""

    def __init__(self, connect: Callable[[], Any], threads: int, address: str = ""):
        """``connect`` makes the docker-py client (it may ask the engine its API version)."""
        self.address = address or engine_address({})
        #: marks the helper containers this process runs, so a later process of the same hub
        #: can tell the ones a killed process left behind (`engine.run_helper`)
        self.process_id = secrets.token_hex(8)
        self._connect = connect
        self._client: Any = None
        self._client_lock = threading.Lock()
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="hardened-docker")
        # asyncio primitives bind to the running loop at first use, not here
        self.engine_lock = asyncio.Lock()
        self.isolation_lock = asyncio.Lock()
        #: one spawn at a time picks and claims a UID (see `uid_claims`)
        self.uid_lock = asyncio.Lock()
        #: (owner, workspace) -> the UID this process already claimed or checked for them: a
        #: later spawn of theirs asks the engine nothing more (a claim is never taken back)
        self.claimed: dict[tuple[str, str], int] = {}
        #: facts about the engine, keyed by the users' network they were gathered for
        self.engine_facts: dict[str, EngineFacts] = {}
        #: the last isolation check, keyed by (network name, the policy's summary)
        self.isolation: dict[tuple[str, str], IsolationCheck] = {}
        #: image facts, scans and approvals (`admission`)
        self.images = ImageCache()
        #: which starting servers still run, one look for all of them (`start_watch`)
        self.start_watch = StartWatch(self)
        #: how many servers start at once, the others in line (`start_queue`)
        self.start_queue = StartQueue()
        #: the engine's answer to a volume with a ``size`` when it has no XFS quotas (the hub-start
        #: check's, or a spawn's): later workspaces do not ask again ("" until it refused one)
        self.engine_size_refused = ""

    @property
    def client(self):
        """The one docker-py client; raises `EngineUnavailable` (and keeps trying on
        later calls) while the engine does not answer."""
        client = self._client
        if client is not None:
            return client
        with self._client_lock:
            if self._client is None:
                try:
                    self._client = self._connect()
                except ENGINE_ERRORS as e:
                    raise EngineUnavailable(unreachable_message(self.address, e)) from None
            return self._client

    @property
    def connected(self) -> bool:
        return self._client is not None

    def run(self, function: Callable, *args) -> asyncio.Future:
        """Run a blocking function (engine calls, subprocesses) on the Docker threads."""
        return asyncio.wrap_future(self.executor.submit(function, *args))

    def docker(self, method: str, *args, **kwargs) -> asyncio.Future:
        """Call a docker-py ``APIClient`` method on the Docker threads."""
        return self.run(lambda: getattr(self.client, method)(*args, **kwargs))

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


@dataclass(frozen=True)
class _Registry:
    lock: threading.Lock = field(default_factory=threading.Lock)
    contexts: dict[str, HubContext] = field(default_factory=dict)


_REGISTRY = _Registry()


def context_key(settings: dict, threads: int) -> str:
    """The same engine settings give the same key (objects in them count by their type)."""
    return json.dumps([settings, threads], sort_keys=True, default=lambda o: f"<{type(o).__name__}>")


def hub_context(settings: dict, threads: int, connect: Callable[[], Any],
                address: str = "") -> HubContext:
    """The context for these engine settings (``settings``: what ``connect`` reads),
    built the first time they are asked for."""
    key = context_key(settings, threads)
    with _REGISTRY.lock:
        context = _REGISTRY.contexts.get(key)
        if context is None:
            context = _REGISTRY.contexts[key] = HubContext(connect, threads, address)
        return context


def reset_hub_contexts() -> None:
    """Forget every context (tests that build hubs with other settings in one process)."""
    with _REGISTRY.lock:
        for context in _REGISTRY.contexts.values():
            context.shutdown()
        _REGISTRY.contexts.clear()
