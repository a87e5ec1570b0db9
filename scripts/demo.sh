#!/usr/bin/env bash
# Bring up the demo hub at http://127.0.0.1:8000 with HardenedSpawner.
# Log in with any user name and any password ("admin" is an admin). Ctrl-C stops the hub;
# users' servers keep running until stopped from the hub, or removed with
#   docker rm -f $(docker ps -aq --filter label=org.jupyter.hardened-spawner.role=server --filter name=^demo-)
# Their workspaces (volumes demo-workspace-*) are kept.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$REPO/scripts/setup.sh"
# Names of the demo's own, so it never collides with a compose stack (or another hub) on this
# engine: its servers' containers, their workspaces and the users' network.
names='demo-{username}--{servername}' workspaces='demo-workspace-{username}'
export HARDENED_NAME_TEMPLATE="${HARDENED_NAME_TEMPLATE:-$names}"
export HARDENED_WORKSPACE_VOLUME="${HARDENED_WORKSPACE_VOLUME:-$workspaces}"
export HARDENED_NETWORK="${HARDENED_NETWORK:-hardened-spawner-demo}"
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
# A crash of the interpreter writes every thread's stack to the hub's log (this terminal).
export PYTHONFAULTHANDLER=1
exec "$REPO/.venv/bin/jupyterhub" -f "$REPO/jupyterhub_config.py" "$@"
