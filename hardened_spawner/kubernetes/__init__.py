"""The Kubernetes backend: `HardenedKubeSpawner` (a KubeSpawner) renders the same policy
decision (`core.decision`) as a Pod that passes the Pod Security Standards' *restricted*
profile plus a read-only root, with a PersistentVolumeClaim workspace, a per-server
NetworkPolicy and a UID claim object.

- `objects`: the pure builders (decision in, API-shaped dicts out).
- `guard`: the policy's rules judged on the final Pod manifest, before it is sent.
- `claims`: UIDs that survive a new hub database, decided by the cluster's objects.
- `settings`: the settings only this backend carries out.
- `spawner`: the glue between JupyterHub, kubespawner and the pieces above.
- `check`: ``hardened-spawner check --kubernetes``, the guard over running user pods.
"""
