#!/usr/bin/env bash
# Builds the kzero image on this machine's private Docker engine (scripts/docker.sh), with no
# container registry needed: the base image is made from Debian packages, and every pip install in
# the build uses the host's pip configuration over the host network.
#
#   scripts/image.sh base     the base image KZERO_BASE_IMAGE, once: unless it exists, debootstrap
#                             bookworm (minbase + python3.11, python3.11-venv, CA certificates) and
#                             `docker import` it. Cached in the engine's data root from then on.
#   scripts/image.sh build    base, then `docker build` the Dockerfile into KZERO_IMAGE. Layers and
#                             pip's downloads (a BuildKit cache mount) are cached between builds;
#                             superseded (untagged) images are removed after it.
#
# Both start the engine if needed (scripts/docker.sh start) and print the image's name as the last
# stdout line; progress goes to stderr.
#
# Environment:
#   KZERO_IMAGE         the tag to build (default kzero:dev).
#   KZERO_BASE_IMAGE    BASE_IMAGE for the Dockerfile (default kzero-base:bookworm-python3.11, made
#                       here). Any image that exists or can be pulled works, e.g. python:3.11-slim-bookworm.
#   KZERO_TORCH_INDEX   TORCH_INDEX for the Dockerfile (default empty: torch from the pip index
#                       the host's pip configuration names; the Dockerfile's own default is the PyTorch index).
#   KZERO_DEBIAN_MIRROR debootstrap's mirror (default: debootstrap's own).
#   KZERO_PIP_PYTHON    the interpreter whose `pip config list` is the host's pip configuration (default python3).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
IMAGE="${KZERO_IMAGE:-kzero:dev}"
DEFAULT_BASE="kzero-base:bookworm-python3.11"
BASE="${KZERO_BASE_IMAGE:-$DEFAULT_BASE}"
TORCH_INDEX="${KZERO_TORCH_INDEX:-}"
MIRROR="${KZERO_DEBIAN_MIRROR:-}"
PIP_PYTHON="${KZERO_PIP_PYTHON:-python3}"
WORK_DIR="${KZERO_DOCKER_HOME:-${HOME}/.cache/kzero/docker}"

log() { echo "image.sh: $*" >&2; }
die() { echo "image.sh: error: $*" >&2; exit 1; }

DOCKER_HOST="$("$SCRIPT_DIR/docker.sh" start)" || die "no Docker engine (scripts/docker.sh start failed)"
export DOCKER_HOST
DOCKER="$("$SCRIPT_DIR/docker.sh" cli)"

cmd_base() {
    if "$DOCKER" image inspect "$BASE" >/dev/null 2>&1; then
        echo "$BASE"
        return 0
    fi
    [[ "$BASE" == "$DEFAULT_BASE" ]] || {
        log "pulling $BASE"
        "$DOCKER" pull "$BASE" >&2 || die "cannot pull $BASE (unset KZERO_BASE_IMAGE to make $DEFAULT_BASE from Debian packages)"
        echo "$BASE"
        return 0
    }
    ((EUID == 0)) || die "debootstrap needs root"
    if ! command -v debootstrap >/dev/null 2>&1; then
        log "installing debootstrap (once)"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; } >&2 ||
            die "apt-get install debootstrap failed"
    fi
    local rootfs="$WORK_DIR/rootfs.$$" started=$SECONDS
    mkdir -p "$WORK_DIR"
    trap 'rm -rf "$rootfs"' EXIT
    log "debootstrap bookworm into $rootfs (once; log $WORK_DIR/debootstrap.log)"
    # python3.11-venv depends on python3.11-distutils, which only python3-distutils provides and
    # debootstrap's resolver does not follow: name it.
    if ! debootstrap --variant=minbase --include=python3.11,python3.11-venv,python3-distutils,ca-certificates \
        bookworm "$rootfs" ${MIRROR:+"$MIRROR"} >"$WORK_DIR/debootstrap.log" 2>&1; then
        tail -n 20 "$WORK_DIR/debootstrap.log" >&2
        [[ -f "$rootfs/debootstrap/debootstrap.log" ]] && tail -n 20 "$rootfs/debootstrap/debootstrap.log" >&2
        die "debootstrap failed"
    fi
    # Package lists, downloaded .debs, docs and translations are of no use in an image.
    rm -rf "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc \
        "$rootfs"/usr/share/man "$rootfs"/usr/share/info "$rootfs"/usr/share/locale "$rootfs"/var/log/*
    tar -C "$rootfs" --numeric-owner -c . |
        "$DOCKER" import \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'ENV LANG=C.UTF-8' \
            --change 'CMD ["python3"]' \
            --message "debootstrap bookworm minbase + python3.11 (scripts/image.sh)" - "$BASE" >/dev/null
    rm -rf "$rootfs"
    trap - EXIT
    log "made $BASE in $((SECONDS - started))s"
    echo "$BASE"
}

# The host's pip settings as the build's secrets: a pip.conf holding what reaches an index
# (index URLs, trusted hosts, proxy, timeouts) and, when it names one, the CA bundle. Host paths
# such as find-links mean nothing in the build and are left out.
write_pip_secrets() { # dir
    "$PIP_PYTHON" - "$1" <<'PY'
import ast
import configparser
import pathlib
import shutil
import subprocess
import sys

out = pathlib.Path(sys.argv[1])
carried = {"index-url", "extra-index-url", "trusted-host", "proxy", "timeout", "default-timeout", "retries", "cert"}
listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True)
settings = {}
for line in listing.stdout.splitlines():  # "<scope>.<key>='<value>'", environment variables last
    name, _, value = line.partition("=")
    key = name.rpartition(".")[2]
    if key in carried and value:
        settings["timeout" if key == "default-timeout" else key] = ast.literal_eval(value)
cert = settings.pop("cert", None)
if cert and pathlib.Path(cert).is_file():
    shutil.copyfile(cert, out / "pip-cert")
    settings["cert"] = "/run/secrets/pip-cert"
config = configparser.ConfigParser(interpolation=None)  # pip reads it raw: a % in a URL stays
config["global"] = settings
with open(out / "pip.conf", "w") as f:
    config.write(f)
print(", ".join(sorted(settings)) or "none", file=sys.stderr)
PY
}

cmd_build() {
    local base started=$SECONDS
    base="$(cmd_base)"
    secrets="$(mktemp -d)"  # global: the EXIT trap runs after this function returns
    trap 'rm -rf "$secrets"' EXIT
    log "host pip settings carried into the build: $(write_pip_secrets "$secrets" 2>&1)"
    local args=(--secret "id=pip.conf,src=$secrets/pip.conf")
    [[ -f "$secrets/pip-cert" ]] && args+=(--secret "id=pip-cert,src=$secrets/pip-cert")
    log "building $IMAGE (BASE_IMAGE=$base, TORCH_INDEX=${TORCH_INDEX:-<the pip index>})"
    # Host networking: the engine has no bridge, and the host's pip settings may point at loopback.
    DOCKER_BUILDKIT=1 "$DOCKER" build --network host --progress plain \
        --build-arg "BASE_IMAGE=$base" --build-arg "TORCH_INDEX=$TORCH_INDEX" \
        "${args[@]}" -t "$IMAGE" "$ROOT" >&2 || die "docker build of $IMAGE failed"
    log "built $IMAGE in $((SECONDS - started))s ($("$DOCKER" image inspect --format '{{.Size}}' "$IMAGE" |
        awk '{printf "%.2f GB", $1 / 1e9}'))"
    # Each change to the requirements leaves the superseded image (4-5 GB) behind untagged: drop it.
    # The build cache is left alone: a cache hit does not refresh the "last used" time of the
    # layers under it, so pruning by size or age breaks the chain the next build needs.
    "$DOCKER" image prune --force >/dev/null
    echo "$IMAGE"
}

case "${1:-}" in
base) cmd_base ;;
build) cmd_build ;;
*)
    echo "usage: $0 base|build" >&2
    exit 2
    ;;
esac
