"""The hub's start, as an admin runs it, for each hardened spawner: a real ``python -m
jupyterhub -f CONFIG`` process, which imports every spawner entry point (``hardened`` first)
before it reads the config, so what one entry point's import installs in JupyterHub must act
for whichever class the config names.

For each of ``hardened`` (Docker, `hubdriver.Hub`) and ``hardened-kube`` (Kubernetes,
`KubeHub` against the fake API server of tests/fake_kube_api.py):

- a bad setting stops the hub, and its log names the setting as the admin wrote it (the
  class they configured);
- a good config starts, the log says that class's configuration was checked, and the hub's
  start work ran (on Kubernetes: the audit listed the namespace's user pods and named the
  one that breaks the policy);
- the GPU board answers ``GET /hub/api/gpus`` from the spawner's GPU table (not 503).
"""

from __future__ import annotations

import asyncio
import json
import re
import textwrap
import time
from dataclasses import dataclass

import pytest
import requests
from kubernetes_asyncio import client, config, watch

from hardened_spawner.kubernetes import objects
from hubdriver import Hub
from tests.fake_kube_api import FakeKubeApi, KubeHub

NAMESPACE = "jhub"
DOCKER_GPU = "GPU-00000000-0000-0000-0000-0000000051a7"
KUBE_IMAGE = "registry.example.org/singleuser@sha256:" + "0" * 64
BOARD = '__import__("hardened_spawner.gpu_pages").gpu_pages.enable(c)'

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Backend:
    entry_point: str
    spawner_class: str  # the class whose section the admin configures
    config: str  # a good config: the spawner's settings, a small GPU pool, the GPU board
    gpus: int  # the GPUs in that pool


DOCKER = Backend("hardened", "HardenedSpawner", f"""
    c.HardenedSpawner.gpu_inventory = [{{"uuid": "{DOCKER_GPU}", "index": "0", "name": "Fake GPU"}}]
    {BOARD}
    """, gpus=1)
KUBE = Backend("hardened-kube", "HardenedKubeSpawner", f"""
    c.HardenedKubeSpawner.namespace = "{NAMESPACE}"
    c.HardenedKubeSpawner.image = "{KUBE_IMAGE}"
    c.HardenedKubeSpawner.gpu_resources = {{"nvidia.com/gpu": 2}}
    {BOARD}
    """, gpus=2)
BACKENDS = {backend.entry_point: backend for backend in (DOCKER, KUBE)}


def user_pod(name: str, owner: str, labels: dict | None = None, annotations: dict | None = None) -> dict:
    """A running user pod as the API lists it (kubespawner's labels), with a bare container."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": NAMESPACE, "uid": f"uid-{name}", "resourceVersion": "1",
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {"component": "singleuser-server", "hub.jupyter.org/username": owner, **(labels or {})},
            "annotations": annotations or {},
        },
        "spec": {"containers": [{"name": "notebook", "image": "quay.io/jupyterhub/k8s-singleuser-sample:4.4.0"}]},
        "status": {"phase": "Running"},
    }


#: what the cluster runs when the hub starts: a plain z2jh server (it breaks the policy, so
#: the start audit names it) and one of ours that holds a GPU slot (the board reads it)
CLUSTER_PODS = [
    user_pod("jupyter-bob", "bob"),
    user_pod("jupyter-ada", "ada", labels={objects.MANAGED: "true"},
             annotations={objects.OWNER: "ada", objects.SERVER_NAME: "", objects.GPUS: "nvidia.com/gpu#0",
                          objects.GPUS_SINCE: "2026-01-01T00:00:00+00:00"}),
]


@pytest.fixture
def kube_api():
    with FakeKubeApi(pods=[dict(pod) for pod in CLUSTER_PODS]) as api:
        yield api


@pytest.fixture
def start_hub(request, tmp_path, kube_api):
    """Start a hub with one backend and a config; each is stopped after the test."""
    started: list[Hub] = []

    def start(backend: Backend, config: str, wait: bool) -> Hub:
        if backend is DOCKER:  # the engine, the image and its own UID range (conftest)
            hub = request.getfixturevalue("hub_factory")(config, wait=False)
        else:
            hub = KubeHub(workdir=tmp_path / f"kubehub{len(started)}", extra_config=config,
                          kube_api=kube_api).start(False)
        started.append(hub)
        if wait:
            hub.wait_ready()
        return hub

    yield start
    for hub in started:
        hub.stop()


def log_of(hub: Hub) -> str:
    return hub.log_path.read_text(errors="replace")[hub.log_offset:]


def critical_lines(hub: Hub) -> list[str]:
    return [line for line in log_of(hub).splitlines() if line.startswith("[C ")]


def wait_for_log(hub: Hub, pattern: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, log_of(hub), re.M)
        if found:
            return found.group(0)
        time.sleep(0.2)
    raise AssertionError(f"no log line matches {pattern!r} within {timeout} s:\n{hub.log_tail()}")


@pytest.mark.parametrize("entry_point, setting, named", [
    ("hardened", "c.HardenedSpawner.pids_limit = 0", "HardenedSpawner.pids_limit"),
    ("hardened", 'c.DockerSpawner.links = {"db": "db"}',
     "DockerSpawner.links = {'db': 'db'} is not supported by HardenedSpawner"),
    ("hardened", "c.HardenedSpawner.gpu_underused_timeout = 3600",
     'HardenedSpawner.gpu_underused_timeout needs the GPUs\' utilisation, which the hub reads through NVML: '
     'set gpu_inventory = "nvml"'),
    ("hardened", "c.HardenedSpawner.gpu_underused_percent = 0", "HardenedSpawner.gpu_underused_percent must be 1 to 100"),
    ("hardened-kube", "c.HardenedKubeSpawner.pids_limit = 0", "HardenedKubeSpawner.pids_limit"),
    ("hardened-kube", "c.HardenedKubeSpawner.gpu_underused_timeout = 3600",
     "HardenedKubeSpawner.gpu_underused_timeout needs the GPUs' utilisation"),
    ("hardened-kube", "c.KubeSpawner.uid = 1000", "KubeSpawner.uid = 1000 is not supported by HardenedKubeSpawner"),
])
def test_a_bad_setting_stops_the_hub_and_the_log_names_it(start_hub, entry_point, setting, named):
    backend = BACKENDS[entry_point]
    hub = start_hub(backend, textwrap.dedent(backend.config) + f"{setting}\n", wait=False)
    status = hub.wait_refused(timeout=60)
    assert status != 0, log_of(hub)
    assert any(named in line for line in critical_lines(hub)), (
        f"no critical log line names {named!r}:\n" + "\n".join(critical_lines(hub)) + "\n" + hub.log_tail())


def test_a_kube_hub_without_a_cluster_config_stops_with_the_reason(tmp_path, kube_api):
    """A kube config that names no cluster to use (the admin's KUBECONFIG, outside a cluster):
    the hub stops at start with one line saying why, instead of failing at the first spawn.
    (The traceback is kept at debug level, for the admin who asks for it.)"""
    hub = KubeHub(workdir=tmp_path / "noconfig", extra_config=KUBE.config, kube_api=kube_api)
    no_context = tmp_path / "kubeconfig-without-context"
    no_context.write_text("apiVersion: v1\nkind: Config\nclusters: []\nusers: []\ncontexts: []\n")
    Hub.start(_with_env(hub, KUBECONFIG=str(no_context)), wait=False)
    try:
        assert hub.wait_refused(timeout=60) != 0, log_of(hub)
        assert any("HardenedKubeSpawner cannot start: ConfigException: Invalid kube-config file." in line
                   for line in critical_lines(hub)), hub.log_tail()
    finally:
        hub.stop()


def _with_env(hub: Hub, **env: str) -> Hub:
    hub.workdir.mkdir(parents=True, exist_ok=True)
    hub.env = {**hub.env, **env}
    return hub


@pytest.mark.parametrize("entry_point", BACKENDS)
def test_a_good_config_starts_the_hub_after_its_check_and_the_gpu_board_answers(start_hub, kube_api, entry_point):
    backend = BACKENDS[entry_point]
    hub = start_hub(backend, backend.config, wait=True)
    hub.create_user("nell")
    r = requests.get(f"{hub.url}/hub/api/gpus", headers={"Authorization": f"token {hub.user_token('nell')}"},
                     timeout=30)
    checked = f"{backend.spawner_class} configuration checked" in log_of(hub)
    # both at once, so a failure tells whether the check ran and what the board answered
    assert (checked, r.status_code) == (True, 200), f"{r.status_code} {r.text}\n{hub.log_tail()}"
    board = json.loads(r.text)
    if backend is DOCKER:
        assert board["summary"] == {"total": 1, "busy": 0, "free": 1}
        assert [device["uuid"] for device in board["devices"]] == [DOCKER_GPU]
        return

    # the board's table holds the cluster's slots, rebuilt from the running pods' annotations
    assert board["summary"] == {"total": 2, "busy": 1, "free": 1}, board
    (held,) = [device for device in board["devices"] if device["state"] == "busy"]
    assert held["uuid"] == "nvidia.com/gpu#0" and held["holders"][0]["user"] == "ada", board
    assert kube_api.wait_seen(f"/api/v1/namespaces/{NAMESPACE}/pods", labelSelector=f"{objects.MANAGED}=true"), \
        kube_api.log()
    # the start audit listed the namespace's user pods and named the one that breaks the policy
    wait_for_log(hub, rf"^\[W .*{NAMESPACE}/jupyter-bob.*")
    assert kube_api.wait_seen(f"/api/v1/namespaces/{NAMESPACE}/pods", labelSelector="component=singleuser-server"), \
        kube_api.log()


def test_the_fake_api_answers_as_kubernetes_asyncio_reads_it(kube_api, tmp_path):
    """The fake's answers parse as the client reads them (a list by label, a watch that ends
    at its timeout, a 404 Status), so a hub test that fails does not fail on the fake."""

    async def ask():
        configuration = client.Configuration()
        await config.load_kube_config(config_file=str(kube_api.write_kubeconfig(tmp_path / "kubeconfig")),
                                      client_configuration=configuration)
        async with client.ApiClient(configuration) as api_client:
            core = client.CoreV1Api(api_client)
            pods = await core.list_namespaced_pod(NAMESPACE, label_selector="component=singleuser-server")
            managed = await core.list_namespaced_pod(NAMESPACE, label_selector=f"{objects.MANAGED}=true")
            events = await core.list_namespaced_event(NAMESPACE)
            started = time.monotonic()
            async with watch.Watch().stream(core.list_namespaced_pod, NAMESPACE, timeout_seconds=1) as stream:
                seen = [event async for event in stream]
            watched = time.monotonic() - started
            with pytest.raises(client.ApiException) as missing:
                await core.read_namespaced_config_map("nothing", NAMESPACE)
            return pods, managed, events, seen, watched, missing.value.status

    pods, managed, events, seen, watched, missing = asyncio.run(ask())
    assert [p.metadata.name for p in pods.items] == ["jupyter-bob", "jupyter-ada"]
    assert [p.metadata.name for p in managed.items] == ["jupyter-ada"]
    assert events.items == [] and seen == [] and 0.5 < watched < 5 and missing == 404
    (watched_request,) = [r for r in kube_api.seen(f"/api/v1/namespaces/{NAMESPACE}/pods") if r.watch]
    assert watched_request.query["timeoutSeconds"] == "1"
