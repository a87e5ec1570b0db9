"""deploy/kubernetes/values.yaml through a real hub start: the z2jh chart's translation of the
values (tests/kube_chart.py) written out as the hub's jupyterhub_config.py, run by ``python -m
jupyterhub -f`` (every spawner entry point loaded, as in the chart's hub pod) against the fake
Kubernetes API (tests/fake_kube_api.py).

The README and values.yaml promise that a chart value that becomes a refused KubeSpawner
setting stops the hub, naming the setting; only a real start shows that the check runs for
``hardened-kube`` at all (a direct ``check_config()`` call would pass either way).
"""

import pytest
import requests

from tests.fake_kube_api import FakeKubeApi, KubeHub
from tests.kube_chart import NS, VALUES, chart_config_source

pytestmark = pytest.mark.integration


@pytest.fixture
def kube_api():
    with FakeKubeApi() as api:
        yield api


@pytest.fixture
def chart_hub(tmp_path, kube_api):
    """Start a hub from the chart's config for some values files; stopped after the test."""
    hubs = []

    def start(*values_files: dict, wait: bool = True) -> KubeHub:
        hub = KubeHub(workdir=tmp_path / f"hub{len(hubs)}", extra_config=chart_config_source(*values_files),
                      kube_api=kube_api)
        hubs.append(hub)
        return hub.start(wait=wait)

    yield start
    for hub in hubs:
        hub.stop()


def log_of(hub: KubeHub) -> str:
    return hub.log_path.read_text(errors="replace")[hub.log_offset:]


def assert_stopped_naming(hub: KubeHub, refused: str) -> None:
    """The hub exited non-zero at start, with a critical line that names the refused setting."""
    status = hub.wait_refused(timeout=60)
    assert status != 0, hub.log_tail()
    critical = [line for line in log_of(hub).splitlines() if line.startswith("[C ")]
    assert any(refused in line and "is not supported by HardenedKubeSpawner" in line for line in critical), (
        f"no critical log line names {refused!r}:\n" + "\n".join(critical) + "\n" + hub.log_tail())


def test_the_charts_config_from_these_values_starts_the_hub_after_its_check(chart_hub, kube_api):
    hub = chart_hub(VALUES)
    checked = "HardenedKubeSpawner configuration checked" in log_of(hub)
    # the values' extraConfig turns the GPU board on: it answers (the values give no GPUs)
    hub.create_user("nell")
    r = requests.get(f"{hub.url}/hub/api/gpus", headers={"Authorization": f"token {hub.user_token('nell')}"},
                     timeout=30)
    assert (checked, r.status_code) == (True, 200), f"{r.status_code} {r.text}\n{hub.log_tail()}"
    assert r.json()["summary"] == {"total": 0, "busy": 0, "free": 0}
    # the start audit asked the cluster for the namespace's user pods
    assert kube_api.wait_seen(f"/api/v1/namespaces/{NS}/pods", labelSelector="component=singleuser-server"), \
        kube_api.log()


def test_the_charts_defaults_alone_would_stop_the_hub(chart_hub):
    only_the_spawner = {"hub": {"config": {"JupyterHub": {"spawner_class": "hardened-kube"}}}}
    assert_stopped_naming(chart_hub(only_the_spawner, wait=False), "KubeSpawner.uid = 1000")


@pytest.mark.parametrize("site, refused", [
    ({"singleuser": {"uid": 1000}}, "KubeSpawner.uid = 1000"),
    ({"singleuser": {"fsGid": 100}}, "KubeSpawner.fs_gid = 100"),
    ({"singleuser": {"allowPrivilegeEscalation": None}}, "KubeSpawner.allow_privilege_escalation = None"),
    ({"singleuser": {"storage": {"type": "dynamic"}}}, "KubeSpawner.storage_pvc_ensure = True"),
    ({"scheduling": {"userPods": {"nodeAffinity": {"matchNodePurpose": "prefer"}}}},
     "KubeSpawner.node_affinity_preferred = [{'weight': 100"),
    ({"singleuser": {"lifecycleHooks": {"postStart": {"exec": {"command": ["true"]}}}}},
     "KubeSpawner.lifecycle_hooks = {'postStart'"),
    ({"singleuser": {"extraResource": {"limits": {"nvidia.com/gpu": "1"}}}},
     "KubeSpawner.extra_resource_limits = {'nvidia.com/gpu': '1'}"),
    ({"singleuser": {"profileList": [{"display_name": "GPU"}]}}, "KubeSpawner.profile_list = [{'display_name'"),
])
def test_a_value_that_the_chart_makes_a_refused_setting_stops_the_hub(chart_hub, site, refused):
    assert_stopped_naming(chart_hub(VALUES, site, wait=False), refused)
