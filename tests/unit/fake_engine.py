"""A small fake Docker engine, in the spirit of docker-py's own ``fake_api``.

It is a real ``docker.APIClient`` (so ``create_host_config`` and
``create_container_config`` are docker-py's own, for API 1.41) whose calls that would
reach an engine answer from dicts instead. It keeps just enough state for the spawner's
hooks: volumes, networks, images and containers with labels, states and logs.
"""

from __future__ import annotations

import contextlib
import itertools

import docker
import docker.errors
import requests
from image_exports import SINGLEUSER_IMAGE, export

from hardened_spawner import audit, labels
from hardened_spawner.docker import spawner as spawner_module
from hardened_spawner.docker.hub_context import reset_hub_contexts

NETWORK = "hardened-spawner-users"


class VolumeTable:
    """The engine's named volumes as docker-py's volume calls see them, for any fake engine
    (the calls are reported to ``_call``, which a fake may record or fail)."""

    volume_state: dict[str, dict]

    def _call(self, name: str) -> None:
        pass

    def create_volume(self, name=None, driver=None, driver_opts=None, labels=None):
        self._call("create_volume")
        self.volume_state.setdefault(name, {"Name": name, "Labels": dict(labels or {}),
                                            "Mountpoint": f"/var/lib/docker/volumes/{name}/_data"})
        return self.volume_state[name]

    def inspect_volume(self, name):
        self._call("inspect_volume")
        if name not in self.volume_state:
            raise docker.errors.NotFound(name)
        return self.volume_state[name]

    def remove_volume(self, name, force=False):
        self._call("remove_volume")
        if self.volume_state.pop(name, None) is None:
            raise docker.errors.NotFound(name)

    def volumes(self, filters=None):
        self._call("volumes")
        return {"Volumes": [v for v in self.volume_state.values() if _matches(v["Labels"], filters)]}


class FakeEngine(VolumeTable, docker.APIClient):
    def __init__(self, *, server_ip: str = "127.0.0.1"):
        super().__init__(base_url="unix:///nonexistent/fake.sock", version="1.41")
        self.server_ip = server_ip
        self.volume_state: dict[str, dict] = {}
        self.container_state: dict[str, dict] = {}
        self.networks_by_name = {NETWORK: _network(NETWORK)}
        self.images = {"hardened-spawner-singleuser:latest": {
            "Id": "sha256:image", "RepoDigests": [], "Config": {"Cmd": ["jupyterhub-singleuser"]}}}
        #: each image ID's export (`image_exports`), for admission's read of its layers
        self.exports = {"sha256:image": export(SINGLEUSER_IMAGE)}
        self.calls: list[str] = []
        self.down = False  # True: every call fails as when the engine is gone
        self.dies_on_start = False  # True: a server container exits at once
        self._ids = itertools.count(1)

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.down:
            raise requests.exceptions.ConnectionError("('Connection aborted.', FileNotFoundError(2))")

    # --- engine facts, images, networks ------------------------------------------------

    def info(self):
        self._call("info")
        return {"SecurityOptions": ["name=seccomp,profile=default"], "NCPU": 2}

    def inspect_image(self, image):
        self._call("inspect_image")
        by_id = {found["Id"]: found for found in self.images.values()}
        if image not in self.images and image not in by_id:
            raise docker.errors.ImageNotFound(f"No such image: {image}")
        return self.images.get(image) or by_id[image]

    def get_image(self, image, chunk_size=None):
        self._call("get_image")
        data = self.exports[self.inspect_image(image)["Id"]]
        return iter([data[i:i + (chunk_size or 65536)] for i in range(0, len(data), chunk_size or 65536)])

    def networks(self, names=None, **kwargs):
        self._call("networks")
        return [n for n in self.networks_by_name.values() if not names or n["Name"] in names]

    def inspect_network(self, name, **kwargs):
        self._call("inspect_network")
        if name not in self.networks_by_name:
            raise docker.errors.NotFound(name)
        return self.networks_by_name[name]

    # --- containers -------------------------------------------------------------------

    def create_container(self, image, command=None, host_config=None, labels=None, **kwargs):
        """The workspace helper: it reports success as the real one does."""
        self._call("create_container")
        cid = f"helper{next(self._ids)}"
        self.container_state[cid] = {"Id": cid, "Name": f"/{cid}", "Labels": dict(labels or {}),
                                     "Running": False, "ExitCode": 0, "Config": None,
                                     "Logs": b'{"action": "initialise", "owner_uid": 0}\n'}
        return {"Id": cid}

    def create_container_from_config(self, config, name=None, platform=None):
        self._call("create_container_from_config")
        if name in {c["Name"].lstrip("/") for c in self.container_state.values()}:
            raise docker.errors.APIError("Conflict", response=_response(409))
        cid = f"server{next(self._ids)}"
        self.container_state[cid] = {"Id": cid, "Name": f"/{name}", "Labels": dict(config.get("Labels") or {}),
                                     "Running": False, "ExitCode": 0, "Config": config,
                                     "Logs": b"[I] starting\n[E] Traceback: boom\n"}
        return {"Id": cid}

    def start(self, container, *args, **kwargs):
        self._call("start")
        found = self._find(container)
        found["Running"] = not (self.dies_on_start and found["Config"] is not None)
        found["ExitCode"] = 1 if self.dies_on_start and found["Config"] is not None else 0

    def wait(self, container, timeout=None, condition=None):
        self._call("wait")
        return {"StatusCode": self._find(container)["ExitCode"]}

    def logs(self, container, *args, **kwargs):
        self._call("logs")
        return self._find(container)["Logs"]

    def stop(self, container, timeout=None):
        self._call("stop")
        self._find(container)["Running"] = False

    def remove_container(self, container, v=False, link=False, force=False):
        self._call("remove_container")
        found = self._find(container)
        if found["Running"] and not force:
            raise docker.errors.APIError("You cannot remove a running container", response=_response(409))
        del self.container_state[found["Id"]]

    def inspect_container(self, container):
        self._call("inspect_container")
        found = self._find(container)
        return {
            "Id": found["Id"],
            "Name": found["Name"],
            "Config": {"Labels": found["Labels"], "Env": []},
            "State": {"Running": found["Running"], "ExitCode": found["ExitCode"], "Error": "",
                      "OOMKilled": False, "FinishedAt": "2026-12-01T00:00:00Z"},
            "NetworkSettings": {"Networks": {NETWORK: {"IPAddress": self.server_ip}}},
        }

    def containers(self, quiet=False, all=False, filters=None, **kwargs):
        self._call("containers")
        return [
            {"Id": c["Id"], "Names": [c["Name"]], "Labels": c["Labels"], "State": "running" if c["Running"] else "exited",
             "Image": (c["Config"] or {}).get("Image", ""), "ImageID": "sha256:image"}
            for c in self.container_state.values()
            if (all or c["Running"]) and _matches(c["Labels"], filters)
            and c["Id"] in (filters or {}).get("id", [c["Id"]])
        ]

    def servers(self) -> list[dict]:
        """The server containers (not helpers) the spawner made."""
        return [c for c in self.container_state.values() if c["Config"] is not None]

    def _find(self, key: str) -> dict:
        for found in self.container_state.values():
            if key in (found["Id"], found["Name"].lstrip("/")):
                return found
        raise docker.errors.NotFound(f"No such container: {key}", response=_response(404))


def _network(name: str) -> dict:
    return {
        "Name": name, "Id": f"net-{name}", "Driver": "bridge",
        "Options": {"com.docker.network.bridge.name": "hs-users",
                    "com.docker.network.bridge.enable_icc": "false"},
        "IPAM": {"Config": [{"Subnet": "172.30.0.0/24", "Gateway": "172.30.0.1"}]},
        "EnableIPv6": False,
        "Labels": {labels.MANAGED: "true"},
    }


def _matches(found_labels: dict, filters: dict | None) -> bool:
    for wanted in (filters or {}).get("label", []):
        key, _, value = wanted.partition("=")
        if key not in found_labels or (value and found_labels[key] != value):
            return False
    return True


def _response(status: int):
    response = requests.Response()
    response.status_code = status
    return response


@contextlib.contextmanager
def engine_in_use(monkeypatch, fake: FakeEngine):
    """Every HardenedSpawner made inside talks to ``fake``, with fresh hub contexts; the
    audit trails they opened (kept per sink for the process) are closed after."""
    reset_hub_contexts()
    monkeypatch.setattr(spawner_module, "connect", lambda *args: fake)
    trails = dict(audit._TRAILS)
    try:
        yield fake
    finally:
        reset_hub_contexts()
        for key, trail in list(audit._TRAILS.items()):
            if trails.get(key) is not trail:
                trail.close()
