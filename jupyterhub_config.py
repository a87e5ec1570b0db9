# JupyterHub configuration for a shared GPU server, with HardenedSpawner.
#
# The README's demo (scripts/demo.sh) and the compose deployment both use this
# file. Deployment-specific values come from environment variables (listed
# below with their defaults); everything else is a commented, deliberate
# choice you can edit in place.
#
#   HUB_BIND_URL          where people reach the hub            http://127.0.0.1:8000
#   HUB_CONNECT_IP        where user containers reach the hub   the docker0 address
#   HUB_DATA_DIR          database and cookie secret            current directory
#   HUB_AUTHENTICATOR     "dummy" for the demo; set a real one  dummy
#   HUB_DEMO_PASSWORD     the demo's shared password            (none: any password)
#   HUB_ADMIN_USERS       comma-separated admin user names      admin
#   SINGLEUSER_IMAGE      the users' image                      hardened-spawner-singleuser:latest
#   HARDENED_GPUS         "none", "nvml", "nvidia-smi", or comma-separated GPU UUIDs   none
#   HARDENED_AUDIT_LOG    audit trail file ("" for none)         $HUB_DATA_DIR/audit.jsonl
#   HARDENED_NETWORK      the users' Docker network             hardened-spawner-users
#   HARDENED_EGRESS       what servers reach outside: "internet" (public addresses) or "none"
#   HARDENED_ALLOW_CIDRS  private ranges servers may reach, comma-separated   (none)
#   HARDENED_ALLOW_DNS    DNS resolvers in a blocked range, opened on port 53 only
#                         (unset: this host's resolvers that the rules would block)
#   HARDENED_FIREWALL_REQUIRED  "true": refuse spawns while the rules are missing   false
#   HARDENED_UID_MIN      first UID of the users' range         200000
#   HARDENED_WORKSPACE_VOLUME  workspace volume name template   jupyterhub-workspace-{username}
#   HARDENED_NAME_TEMPLATE     server container name template   (spawner default: jupyter-{username})
#   HARDENED_WORKSPACE_QUOTA   most a user keeps in their workspace ("none": no quota)   10G
#   HARDENED_BTRFS_ROOT   a btrfs directory with quotas on, for the workspaces' quotas   (none: XFS size)
#   HARDENED_CPU_LIMIT    CPUs per server                       4 (or fewer, on a smaller host)
#   HUB_IDLE_TIMEOUT      seconds before idle servers stop (0 = never)   3600
#   HUB_GPU_IDLE_TIMEOUT  seconds before an idle server holding GPUs stops (0 = never)   900
#   HUB_GPU_MAX_HOLD      seconds a server may hold GPUs at all (0 = no limit)   0
#   HUB_GPU_CULL_EVERY    seconds between two GPU culler rounds     60
#   HUB_GPU_UNDERUSED_TIMEOUT  seconds a server may hold GPUs under 5 % busy (0 = never;
#                         needs HARDENED_GPUS=nvml)   3600 with nvml, else 0
import os
import signal
import subprocess
import sys

c = get_config()  # noqa: F821 (provided by JupyterHub)

# A hub started in the background (`scripts/demo.sh &`, a test harness) inherits SIGINT
# ignored, and so would the services it starts: on SIGINT the hub then waits 30 s for each
# (JupyterHub's interrupt_timeout) before it sends SIGTERM. Services that hear SIGINT stop
# in well under a second.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def env(name, default):
    return os.environ.get(name, default)


def docker0_address():
    """The host's address on Docker's default bridge; containers reach the hub there."""
    try:
        out = subprocess.run(
            ["ip", "-4", "-o", "addr", "show", "docker0"], capture_output=True, text=True, check=True
        ).stdout
        return out.split()[3].split("/")[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "172.17.0.1"


data_dir = env("HUB_DATA_DIR", os.getcwd())

# --- the hub ------------------------------------------------------------------
c.JupyterHub.bind_url = env("HUB_BIND_URL", "http://127.0.0.1:8000")
# The hub API listens on all interfaces so user containers can reach it; the
# users' network isolation (see the README) allows them the hub and nothing else.
c.JupyterHub.hub_ip = "0.0.0.0"
c.JupyterHub.hub_connect_ip = env("HUB_CONNECT_IP", "") or docker0_address()
c.JupyterHub.db_url = f"sqlite:///{data_dir}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = f"{data_dir}/jupyterhub_cookie_secret"
# Keep users' servers running when the hub restarts; the spawner finds them
# again (and rebuilds its GPU table from their labels).
c.JupyterHub.cleanup_servers = False

# --- who may log in -----------------------------------------------------------
c.JupyterHub.authenticator_class = env("HUB_AUTHENTICATOR", "dummy")
if c.JupyterHub.authenticator_class == "dummy":
    # Demo only: anyone may log in with any name (and the shared password, if set).
    c.Authenticator.allow_all = True
    if env("HUB_DEMO_PASSWORD", ""):
        c.DummyAuthenticator.password = env("HUB_DEMO_PASSWORD", "")
c.Authenticator.admin_users = {u for u in env("HUB_ADMIN_USERS", "admin").split(",") if u}

# --- the hardened spawner -------------------------------------------------------
c.JupyterHub.spawner_class = "hardened"


def landing_page(handler):
    """Where a login (or the hub's root URL) leads: admins to the hub's home page, so that
    reaching the admin panel starts no server they did not ask for; everyone else to their
    server, which JupyterHub starts (the "" default)."""
    user = handler.current_user
    return handler.hub.base_url + "home" if user is not None and user.admin else ""


c.JupyterHub.default_url = landing_page
# The home page also tells users how to SSH into their running server (README, "SSH").
c.JupyterHub.template_paths = [__import__("hardened_spawner").TEMPLATES]
c.HardenedSpawner.image = env("SINGLEUSER_IMAGE", "hardened-spawner-singleuser:latest")
# There is no registry on an offline GPU server: use the local image, never pull.
c.HardenedSpawner.pull_policy = "never"
c.HardenedSpawner.network_name = env("HARDENED_NETWORK", "hardened-spawner-users")


def env_list(name):
    return [item.strip() for item in env(name, "").split(",") if item.strip()]


# Network isolation: servers reach the hub and, by default, public addresses; never each
# other, the host, link-local (cloud metadata) or private ranges. The rules come from
# `hardened-spawner firewall apply -f jupyterhub_config.py` (as root on the Docker host;
# scripts/demo.sh and the compose stack run it), and the hub checks them.
c.HardenedSpawner.egress = env("HARDENED_EGRESS", "internet")
c.HardenedSpawner.egress_allow_cidrs = env_list("HARDENED_ALLOW_CIDRS")
# Docker's DNS forwards servers' lookups to the host's resolvers; where those sit in a
# private range, names would not resolve in servers unless opened (port 53 only).
if "HARDENED_ALLOW_DNS" in os.environ:
    c.HardenedSpawner.egress_allow_dns = env_list("HARDENED_ALLOW_DNS")
else:
    from hardened_spawner.docker.isolation.resolv import blocked_host_resolvers

    c.HardenedSpawner.egress_allow_dns = blocked_host_resolvers()
c.HardenedSpawner.firewall_required = env("HARDENED_FIREWALL_REQUIRED", "false").lower() in ("1", "true", "yes")

# Identity: UID = uid_min + the hub's user id, far above host accounts.
c.HardenedSpawner.uid_min = int(env("HARDENED_UID_MIN", "200000"))

# Resources per server. The memory limit includes /tmp and /dev/shm use.
c.HardenedSpawner.mem_limit = "8G"
# The engine refuses a limit above the host's CPU count, so a small machine gets all of its CPUs.
c.HardenedSpawner.cpu_limit = float(env("HARDENED_CPU_LIMIT", str(min(4, os.cpu_count() or 1))))
c.HardenedSpawner.pids_limit = 1024
c.HardenedSpawner.shm_size = "2G"  # DataLoader workers pass batches through /dev/shm
c.HardenedSpawner.tmp_size = "1G"

# One persistent workspace volume per user, mounted at /home/<name>.
c.HardenedSpawner.workspace_volume_name = env("HARDENED_WORKSPACE_VOLUME", "jupyterhub-workspace-{username}")
# A quota on each workspace, enforced by the storage (see the README's Disk section): a btrfs
# directory with quotas on, or XFS project quotas under the engine's volumes. Where neither is
# there the hub says so at start, and workspaces are made without one.
quota = env("HARDENED_WORKSPACE_QUOTA", "10G")
c.HardenedSpawner.workspace_quota = None if quota.lower() in ("", "none", "0") else quota
c.HardenedSpawner.workspace_btrfs_root = env("HARDENED_BTRFS_ROOT", "")
if env("HARDENED_NAME_TEMPLATE", ""):
    # Give named servers their own containers: include {servername} if you use them.
    c.HardenedSpawner.name_template = env("HARDENED_NAME_TEMPLATE", "")

# GPUs: exclusive by default, one per server at most, none unless asked for.
gpus = env("HARDENED_GPUS", "none")
c.HardenedSpawner.gpu_inventory = (
    gpus if gpus in ("none", "nvml", "nvidia-smi") else [u.strip() for u in gpus.split(",") if u.strip()]
)
c.HardenedSpawner.gpu_default_per_user = 0
c.HardenedSpawner.gpu_max_per_user = 1

# Who started what, when, with which GPUs: JSON lines for Loki / Elasticsearch.
c.HardenedSpawner.audit_log = env("HARDENED_AUDIT_LOG", f"{data_dir}/audit.jsonl")

# Give servers time to start on a busy morning.
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 60

# --- idle culling: stopped servers give their GPUs back ---------------------------
idle_timeout = int(env("HUB_IDLE_TIMEOUT", "3600"))
if idle_timeout > 0:
    try:
        import jupyterhub_idle_culler  # noqa: F401
    except ImportError:
        print("jupyterhub-idle-culler is not installed: idle servers are not stopped", file=sys.stderr)
    else:
        c.JupyterHub.services = [
            {
                "name": "idle-culler",
                "command": [sys.executable, "-m", "jupyterhub_idle_culler", f"--timeout={idle_timeout}"],
            }
        ]
        c.JupyterHub.load_roles = [
            {
                "name": "idle-culler",
                "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
                "services": ["idle-culler"],
            }
        ]

# --- the GPU board and the GPU culler: idle GPUs come back sooner ----------------
# /hub/gpus shows every GPU and who holds it (GET /hub/api/gpus for scripts, scope
# custom:gpus:read); the gpu-culler service stops servers holding GPUs after their own,
# shorter idle timeout (README, "GPU assignment").
__import__("hardened_spawner.gpu_pages").gpu_pages.enable(c, cull_every=int(env("HUB_GPU_CULL_EVERY", "60")))
c.HardenedSpawner.gpu_idle_timeout = int(env("HUB_GPU_IDLE_TIMEOUT", "900"))
c.HardenedSpawner.gpu_max_hold = int(env("HUB_GPU_MAX_HOLD", "0"))
# With NVML the hub samples the GPUs' utilisation (every 30 s): the board shows it, the usage
# ledger counts GPU-hours used beside GPU-hours held, and a server whose GPUs stay under 5 %
# busy for this long is stopped however busy its kernel, after 10 minutes' warning.
c.HardenedSpawner.gpu_underused_timeout = int(env("HUB_GPU_UNDERUSED_TIMEOUT", "3600" if gpus == "nvml" else "0"))
