"""Engine labels the spawner puts on every container and volume it creates.

Labels are how the engine, not the hub's database, stays the source of truth:
the admin CLI, the GPU allocator's rebuild after a hub restart and the audit
all find managed objects through them.
"""

PREFIX = "org.jupyter.hardened-spawner"

MANAGED = f"{PREFIX}.managed"  # "true" on everything we create
ROLE = f"{PREFIX}.role"  # "server", "workspace", "identity", "helper"
OWNER = f"{PREFIX}.owner"  # hub user name
SERVER_NAME = f"{PREFIX}.server-name"  # named server ("" for the default)
UID = f"{PREFIX}.uid"
GID = f"{PREFIX}.gid"
VERSION = f"{PREFIX}.version"
POLICY = f"{PREFIX}.policy-fingerprint"
GPUS = f"{PREFIX}.gpus"  # comma-separated device UUIDs, "" for none
GPUS_SINCE = f"{PREFIX}.gpus-since"  # ISO 8601 UTC time of assignment
HUB = f"{PREFIX}.hub"  # which hub database started a server (a digest of its URL)
HUB_PROCESS = f"{PREFIX}.hub-process"  # which hub process runs a helper (random, per process)

ROLE_SERVER = "server"
ROLE_WORKSPACE = "workspace"
ROLE_IDENTITY = "identity"
ROLE_HELPER = "helper"
ROLE_UID_CLAIM = "uid-claim"  # an empty volume per UID: who holds it, claimed atomically

#: the engine's filter for the running server containers of every hardened hub
MANAGED_SERVERS = {"label": [f"{MANAGED}=true", f"{ROLE}={ROLE_SERVER}"]}
