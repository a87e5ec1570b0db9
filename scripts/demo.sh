#!/usr/bin/env bash
# Bring up the demo hub at http://127.0.0.1:8000 with HardenedSpawner.
# Log in with any user name and any password ("admin" is an admin). Ctrl-C stops the hub;
# users' servers keep running until stopped from the hub, or removed with
#   docker rm -f $(docker ps -aq --filter label=org.jupyter.hardened-spawner.role=server)
# Their workspaces (volumes jupyterhub-workspace-*) are kept.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$REPO/scripts/setup.sh"
# The hub's database and cookie secret (HUB_DATA_DIR: the tests put them elsewhere).
export HUB_DATA_DIR="${HUB_DATA_DIR:-$REPO/.demo}"
mkdir -p "$HUB_DATA_DIR"
cd "$HUB_DATA_DIR"
# Network isolation: the rules go on the host first (as jupyterhub_config.py sets them).
"$REPO/.venv/bin/hardened-spawner" firewall apply -f "$REPO/jupyterhub_config.py"
cat <<MSG
==> Demo hub starting at ${HUB_BIND_URL:-http://127.0.0.1:8000}
    Log in with any name and any password ("admin" is an admin); Ctrl-C to stop.
MSG
exec "$REPO/.venv/bin/jupyterhub" -f "$REPO/jupyterhub_config.py" "$@"
