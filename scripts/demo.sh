#!/usr/bin/env bash
# Bring up the demo hub at http://127.0.0.1:8000 with HardenedSpawner.
# Log in with any user name and any password ("admin" is an admin). Ctrl-C stops the hub;
# users' servers keep running until stopped from the hub, or removed with
#   docker rm -f $(docker ps -aq --filter label=org.jupyter.hardened-spawner.role=server)
# Their workspaces (volumes jupyterhub-workspace-*) are kept.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$REPO/scripts/setup.sh"
mkdir -p "$REPO/.demo"
cd "$REPO/.demo"
export HUB_DATA_DIR="$REPO/.demo"
# Network isolation: the host's DNS resolvers that the rules would block are opened on
# port 53 only (unless HARDENED_ALLOW_DNS is set), then the rules go on the host.
if [ -z "${HARDENED_ALLOW_DNS+x}" ]; then
    HARDENED_ALLOW_DNS="$("$REPO/.venv/bin/hardened-spawner" firewall resolvers)"
    export HARDENED_ALLOW_DNS
fi
"$REPO/.venv/bin/hardened-spawner" firewall apply -f "$REPO/jupyterhub_config.py"
cat <<MSG
==> Demo hub starting at http://127.0.0.1:8000
    Log in with any name and any password ("admin" is an admin); Ctrl-C to stop.
MSG
exec "$REPO/.venv/bin/jupyterhub" -f "$REPO/jupyterhub_config.py" "$@"
