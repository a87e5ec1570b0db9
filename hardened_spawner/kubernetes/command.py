"""What ``hardened-spawner check --kubernetes`` needs of the cluster: an API client from
the in-cluster service account or ``~/.kube/config``, and the namespace to look in. The
check itself is `check.run_kube_check`."""

from __future__ import annotations

from pathlib import Path

from ..errors import CannotCheck
from .check import run_kube_check

#: where a pod finds its own namespace (what kubespawner defaults to as well)
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

def default_namespace(config) -> str:
    """HardenedKubeSpawner.namespace (or KubeSpawner.namespace) of the hub's config, else the
    service account's, else ``default``."""
    for section in ("HardenedKubeSpawner", "KubeSpawner"):
        if config.get(section, {}).get("namespace"):
            return str(config[section]["namespace"])
    if SERVICE_ACCOUNT_NAMESPACE.exists():
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    return "default"


def core_api():
    """A CoreV1Api of the (sync) kubernetes client, configured as kubectl would be."""
    try:
        import kubernetes
    except ImportError:
        raise CannotCheck("the kubernetes client is not installed: pip install 'hardened-spawner[kubernetes]'") from None
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        try:
            kubernetes.config.load_kube_config()
        except (kubernetes.config.ConfigException, OSError) as e:
            raise CannotCheck(f"no Kubernetes API to ask: not in a cluster, and no usable kube config ({e}).") from None
    return kubernetes.client.CoreV1Api()


def check(namespace: str, *, as_json: bool) -> tuple[str, int]:
    """`check.run_kube_check` against the configured cluster; an API that cannot answer is
    said plainly (exit status 2), not as a traceback."""
    import kubernetes
    import urllib3

    api = core_api()
    try:
        return run_kube_check(api, namespace, as_json=as_json)
    except (kubernetes.client.exceptions.ApiException, urllib3.exceptions.HTTPError) as e:
        raise CannotCheck(f"the Kubernetes API did not list the pods of {namespace}: {e}") from None
