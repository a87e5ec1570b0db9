"""HardenedKubeSpawner's own calls (the UID claim, the workspace claim, the NetworkPolicy,
the pod; poll; stop) driven through kubespawner's API seams against `fake_kube`, the way
kubespawner's no-cluster tests do it. Not integration tests: no cluster is involved; the
Pod's security is proven by test_kube_guard, test_kube_manifests and the podman run."""

import json

import pytest
from fake_kube import NS, fake_cluster, kube_spawner, sent_pods
from traitlets import TraitError

from hardened_spawner import gpu_broker
from hardened_spawner.core.identity import make_identity
from hardened_spawner.errors import SpawnRefused
from hardened_spawner.kubernetes.guard import PodGuardPolicy, check_pod
from hardened_spawner.kubernetes.objects import GPUS, OWNER, UID, make_workspace_claim


@pytest.fixture
async def cluster(monkeypatch, tmp_path):
    return fake_cluster(monkeypatch, tmp_path / "audit.jsonl")


make_spawner = kube_spawner


def audit_events(cluster) -> list[str]:
    return [json.loads(line)["event"] for line in cluster.audit.read_text().splitlines()]


async def test_storage_extra_labels_reach_the_workspace_claim_and_never_replace_the_spawners(cluster):
    spawner = make_spawner(cluster, storage_extra_labels={"team": "{username}", "backup": "nightly"})
    await spawner.start()
    claim_labels = cluster.core.claims["workspace-alice"]["metadata"]["labels"]
    assert claim_labels["team"] == "alice" and claim_labels["backup"] == "nightly"
    assert claim_labels[UID] == "200001"


async def test_the_workspace_claim_is_the_users_quota_and_the_pod_bounds_its_node_disk(cluster):
    spawner = make_spawner(cluster, groups=["thesis"], workspace_quota="5G",
                           workspace_quota_group={"thesis": "200G"}, ephemeral_storage_limit="512M")
    await spawner.start()
    claim = cluster.core.claims["workspace-alice"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "200Gi"
    (pod,) = sent_pods(cluster)
    resources = pod["spec"]["containers"][0]["resources"]
    assert resources["limits"]["ephemeral-storage"] == resources["requests"]["ephemeral-storage"] == "512Mi"
    other = make_spawner(cluster, name="bo", user_id=2, workspace_quota="5G")
    await other.start()
    assert cluster.core.claims["workspace-bo"]["spec"]["resources"]["requests"]["storage"] == "5Gi"


def test_a_tiny_ephemeral_storage_limit_stops_the_hub(cluster):
    with pytest.raises(TraitError, match=r"^HardenedKubeSpawner.ephemeral_storage_limit is 1048576 bytes; use at least 64M"):
        make_spawner(cluster, ephemeral_storage_limit="1M")


async def test_a_netpol_lets_dns_reach_a_node_local_cache(cluster):
    spawner = make_spawner(cluster)
    await spawner.start()
    policy = cluster.net.policies[spawner.pod_name]
    dns = [rule for rule in policy["spec"]["egress"]
           if {"ipBlock": {"cidr": "169.254.20.10/32"}} in rule.get("to", [])]
    assert dns and {p["port"] for p in dns[0]["ports"]} == {53}


async def test_start_makes_the_claim_the_workspace_the_policy_and_a_pod_that_passes_the_guard(cluster):
    spawner = make_spawner(cluster)
    url = await spawner.start()
    assert url == "http://10.0.0.5:8888"
    assert [c[0] for c in cluster.core.calls] == ["create_config_map", "create_pvc", "create_pod"]
    assert cluster.net.calls == [("create", spawner.pod_name)]
    (pod,) = sent_pods(cluster)
    assert pod["spec"]["containers"][0]["securityContext"]["runAsUser"] == 200001  # uid_min + hub user id
    assert check_pod(pod, PodGuardPolicy()) == []
    claim = cluster.core.claims["workspace-alice"]
    assert claim["metadata"]["labels"][UID] == "200001" and claim["metadata"]["annotations"][OWNER] == "alice"
    assert cluster.core.config_maps["hardened-spawner-uid-200001"]["data"]["passwd"].endswith(
        "alice:x:200001:200001::/home/alice:/bin/bash\n")
    assert spawner.get_state()["uid"] == 200001
    assert [e["message"] async for e in spawner.progress()] == [
        "Checking your identity", "Assigning GPUs", "Preparing your workspace", "Creating your server pod",
        "Waiting for your server to answer"]
    assert audit_events(cluster) == ["spawn-requested", "server-started"]


async def test_poll_and_stop(cluster):
    spawner = make_spawner(cluster)
    await spawner.start()
    assert await spawner.poll() is None
    await spawner.stop()
    assert ("delete_pod", spawner.pod_name, 1) in cluster.core.calls
    assert cluster.net.policies == {}
    assert await spawner.poll() == 1
    assert audit_events(cluster)[-1] == "server-stopped"
    assert "workspace-alice" in cluster.core.claims  # the workspace outlives the server


async def test_a_new_hub_database_keeps_each_users_uid_from_the_cluster(cluster):
    await make_spawner(cluster, "alice", user_id=1).start()
    await make_spawner(cluster, "bob", user_id=2).start()
    # a fresh database hands the ids out again, the other way round
    bob, alice = make_spawner(cluster, "bob", user_id=1), make_spawner(cluster, "alice", user_id=2)
    for spawner in (bob, alice):
        cluster.reflector.pods.clear()
        await spawner.start()
    assert [p["spec"]["securityContext"]["runAsUser"] for p in sent_pods(cluster)] == [200001, 200002, 200002, 200001]


async def test_a_new_user_never_gets_a_uid_another_users_objects_carry(cluster):
    carol = make_identity("carol", 200001, "/home/{username}")
    cluster.core.claims["workspace-carol"] = make_workspace_claim(
        "workspace-carol", NS, "carol", carol, capacity="1Gi", storage_class=None, access_modes=("ReadWriteOnce",),
        version="0")
    spawner = make_spawner(cluster, "alice", user_id=1)
    await spawner.start()
    assert sent_pods(cluster)[0]["spec"]["securityContext"]["runAsUser"] == 200002


async def test_two_spawns_racing_for_one_uid_get_two(cluster):
    # another hub claimed 200001 between this hub's look at the holders and its claim
    real_create = cluster.core.create_namespaced_config_map

    async def create_after_another_hub(namespace, body, **kwargs):
        if not cluster.core.config_maps:
            other = json.loads(json.dumps(body))
            other["metadata"]["annotations"][OWNER] = "someone-else"
            cluster.core.config_maps[body["metadata"]["name"]] = other
        return await real_create(namespace, body, **kwargs)

    cluster.core.create_namespaced_config_map = create_after_another_hub
    await make_spawner(cluster).start()
    assert sent_pods(cluster)[0]["spec"]["securityContext"]["runAsUser"] == 200002


async def test_a_workspace_claim_of_another_user_is_refused_and_nothing_is_started(cluster):
    bob = make_identity("bob", 200009, "/home/{username}")
    cluster.core.claims["workspace-alice"] = make_workspace_claim(
        "workspace-alice", NS, "bob", bob, capacity="1Gi", storage_class=None, access_modes=("ReadWriteOnce",),
        version="0")
    with pytest.raises(SpawnRefused) as refused:
        await make_spawner(cluster).start()
    assert str(refused.value.jupyterhub_message).startswith(
        "Your workspace claim workspace-alice belongs to UID 200009 of 'bob', so the hub will not hand its files to you.")
    assert refused.value.status_code == 409
    assert sent_pods(cluster) == [] and audit_events(cluster) == ["spawn-requested", "spawn-refused"]


async def test_a_pod_an_escape_hatch_weakens_is_refused_in_the_spawn_page_words(cluster):
    spawner = make_spawner(cluster, extra_container_config={"securityContext": {"privileged": True}})
    with pytest.raises(SpawnRefused) as refused:
        await spawner.start()
    assert refused.value.jupyterhub_message.startswith(
        "The server was not started because its container would break the security policy:\n"
        "- A container would run privileged")
    assert refused.value.status_code == 403 and sent_pods(cluster) == []


async def test_modify_pod_hook_is_judged_too(cluster):
    def hook(spawner, pod):
        pod.spec.host_network = True
        return pod

    with pytest.raises(SpawnRefused, match="share the node's network namespace"):
        await make_spawner(cluster, modify_pod_hook=hook).start()
    assert sent_pods(cluster) == []


async def test_gpus_are_asked_for_by_count_within_the_users_quota(cluster):
    gpus = {"gpu_resources": {"nvidia.com/gpu": 1}, "gpu_max_per_user": 1}
    alice = make_spawner(cluster, options={"gpus": 1}, **gpus)
    await alice.start()
    container = sent_pods(cluster)[0]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "NVIDIA_VISIBLE_DEVICES" not in {e["name"] for e in container["env"]}
    assert sent_pods(cluster)[0]["metadata"]["annotations"][GPUS] == "nvidia.com/gpu#0"
    bob = make_spawner(cluster, "bob", user_id=2, options={"gpus": 1}, **gpus)
    with pytest.raises(SpawnRefused) as busy:
        await bob.start()
    assert busy.value.reason == "gpu" and busy.value.status_code == 409
    await alice.stop()
    cluster.reflector.pods.clear()
    await make_spawner(cluster, "bob", user_id=2, options={"gpus": 1}, **gpus).start()
    assert sent_pods(cluster)[-1]["metadata"]["annotations"][GPUS] == "nvidia.com/gpu#0"


async def test_the_gpu_table_is_rebuilt_from_the_running_pods_after_a_hub_restart(cluster):
    gpus = {"gpu_resources": {"nvidia.com/gpu": 1}}
    await make_spawner(cluster, options={"gpus": 1}, **gpus).start()
    gpu_broker.reset()  # a new hub process: nothing in memory
    with pytest.raises(SpawnRefused, match="GPU"):
        await make_spawner(cluster, "bob", user_id=2, options={"gpus": 1}, **gpus).start()
    async with make_spawner(cluster, "carol", user_id=3, **gpus).gpus.table() as table:
        assert [h.user for h in table.holdings()] == ["alice"]


async def test_naming_gpu_devices_is_refused_on_kubernetes(cluster):
    spawner = make_spawner(cluster, options={"gpus": 1, "gpu_devices": ["nvidia.com/gpu#0"]},
                           gpu_resources={"nvidia.com/gpu": 1})
    spawner.user.admin = True
    with pytest.raises(SpawnRefused, match="the scheduler picks the GPUs"):
        await spawner.start()


async def test_a_dead_server_gives_its_gpus_back(cluster):
    spawner = make_spawner(cluster, options={"gpus": 1}, gpu_resources={"nvidia.com/gpu": 1})
    await spawner.start()
    pod = cluster.reflector.pods[f"{NS}/{spawner.pod_name}"]
    pod["status"]["containerStatuses"][0]["state"] = {"terminated": {"exitCode": 137}}
    assert await spawner.poll() == 137
    assert await spawner.gpus.held_by("alice") == ()
    assert "server-died" in audit_events(cluster)


@pytest.mark.parametrize("config, message", [
    ({"privileged": True}, "KubeSpawner.privileged = True is not supported by HardenedKubeSpawner: servers never run privileged."),
    ({"uid": 1000}, "KubeSpawner.uid = 1000 is not supported by HardenedKubeSpawner: the spawner gives each user a UID"),
    ({"delete_pvc": True}, "KubeSpawner.delete_pvc = True is not supported by HardenedKubeSpawner: a user's workspace is never deleted"),
    ({"cap_add": ["CHOWN"]}, "HardenedKubeSpawner.cap_add: CHOWN may not be added on Kubernetes; the Pod Security Standards' restricted profile allows only NET_BIND_SERVICE."),
    ({"gpu_inventory": "nvml"}, "HardenedKubeSpawner.gpu_inventory is for a Docker host's own GPUs"),
    ({"gpu_pins": {"alice": ["nvidia.com/gpu#0"]}}, "HardenedKubeSpawner.gpu_pins, gpu_pool and gpu_max_users_per_gpu name or share devices"),
    ({"uid_min": 10}, "HardenedKubeSpawner.uid_min is 10; it must be at least 1000"),
    ({"pod_security_context": {"runAsUser": 0}}, "KubeSpawner.pod_security_context = {'runAsUser': 0} is not supported"),
    ({"lifecycle_hooks": {"postStart": {}}}, "KubeSpawner.lifecycle_hooks = {'postStart': {}} is not supported"),
])
async def test_bad_settings_stop_the_hub_with_the_settings_name(cluster, config, message):
    with pytest.raises(TraitError) as error:
        make_spawner(cluster, **config).check_config()
    assert str(error.value).startswith(message)


@pytest.mark.parametrize("resources", [{"nvidia.com/gpu ": 1}, {"amd.com/gpu": 1}, {"nvidia.com/gpu": -1}])
async def test_bad_gpu_resources_are_refused(cluster, resources):
    with pytest.raises(TraitError, match="gpu_resources"):
        make_spawner(cluster, gpu_resources=resources)


async def test_the_defaults_pass_the_checks(cluster):
    spawner = make_spawner(cluster)
    spawner.check_config()
    assert (spawner.pvc_name, spawner.storage_pvc_ensure, spawner.delete_pvc) == ("workspace-alice", False, False)


async def test_what_the_spawner_sends_is_valid_for_the_apis_schema(cluster):
    import kubernetes_validate

    spawner = make_spawner(cluster, options={"gpus": 1}, gpu_resources={"nvidia.com/mig-1g.10gb": 2},
                           extra_tmpfs={"/var/tmp": "128M"}, egress="none", egress_allow_cidrs=["10.20.30.0/24"])
    await spawner.start()
    sent = [*cluster.core.config_maps.values(), *cluster.core.claims.values(), *sent_pods(cluster),
            *cluster.net.policies.values()]
    assert [m["kind"] for m in sent] == ["ConfigMap", "PersistentVolumeClaim", "Pod", "NetworkPolicy"]
    for manifest in sent:
        kubernetes_validate.validate(manifest, kubernetes_validate.latest_version(), strict=True)


async def test_the_gpu_board_shows_the_clusters_slots_and_their_holders(cluster):
    from datetime import datetime, timezone

    from hardened_spawner.gpu_board import ReclaimRule, Viewer, board

    gpus = {"gpu_resources": {"nvidia.com/gpu": 1, "nvidia.com/mig-1g.10gb": 1}}
    await make_spawner(cluster, options={"gpus": 1}, **gpus).start()
    async with make_spawner(cluster, "bob", user_id=2, **gpus).gpus.table() as table:
        shown = board(table, {}, ReclaimRule(0, 0), Viewer("bob", (), False), names_public=True,
                      now=datetime.now(timezone.utc))
    assert shown["summary"] == {"total": 2, "busy": 1, "free": 1}
    assert [(d["uuid"], [h["user"] for h in d["holders"]]) for d in shown["devices"]] == [
        ("nvidia.com/gpu#0", ["alice"]), ("nvidia.com/mig-1g.10gb#0", [])]


async def test_kubespawner_volumes_and_containers_are_rendered_and_judged(cluster):
    datasets = {"name": "datasets", "persistentVolumeClaim": {"claimName": "datasets", "readOnly": True}}
    spawner = make_spawner(cluster, volumes=[datasets], volume_mounts=[{"name": "datasets", "mountPath": "/data"}],
                           image_pull_secrets=["registry"], extra_labels={"hub.jupyter.org/network-access-hub": "true"})
    await spawner.start()
    (pod,) = sent_pods(cluster)
    assert pod["spec"]["volumes"][-1] == datasets
    assert pod["spec"]["containers"][0]["volumeMounts"][-1] == {"name": "datasets", "mountPath": "/data"}
    assert pod["spec"]["imagePullSecrets"] == [{"name": "registry"}]
    assert pod["metadata"]["labels"]["hub.jupyter.org/network-access-hub"] == "true"


async def test_a_sidecar_that_keeps_root_privileges_is_refused(cluster):
    sidecar = {"name": "sidecar", "image": "busybox", "securityContext": {"runAsUser": 0}}
    with pytest.raises(SpawnRefused) as refused:
        await make_spawner(cluster, extra_containers=[sidecar]).start()
    assert "spec.containers[sidecar]" in refused.value.jupyterhub_message and sent_pods(cluster) == []
