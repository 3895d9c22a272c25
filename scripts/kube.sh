#!/usr/bin/env bash
# The Kubernetes parts the cluster tests run (tests/cluster/), built from their Go modules once and
# cached, like scripts/kafka.sh fetches Kafka's jars once. Nothing here starts a server: the
# session fixtures in tests/cluster/ start them, inside a network namespace of their own.
#
#   scripts/kube.sh build    build what is missing, then print NAME=PATH lines on stdout:
#                            etcd, kube-apiserver, kube-controller-manager, kwok, and Knative
#                            Serving's controller, webhook and autoscaler, plus
#                            knative-{serving,networking,caching}-module and kwok-module (their
#                            sources in the Go module cache: Knative's ConfigMaps and CRDs, kwok's stages).
#   scripts/kube.sh paths    the same lines without building; exit 1 if anything is missing.
#
# What is built (each in a small wrapper Go module under the cache dir, so the Go toolchain and
# the module proxy do all the work):
#   k8s.io/kubernetes $KUBE_VERSION      kube-apiserver + kube-controller-manager, one `go build`
#                                        (its go.mod replaces ./staging/* modules; the wrapper points
#                                        each at the published k8s.io/<name> v0.<minor>.<patch>)
#   knative.dev/serving $KNATIVE_VERSION cmd/controller, cmd/webhook, cmd/autoscaler
#   sigs.k8s.io/kwok $KWOK_VERSION       cmd/kwok (fake nodes and pod status, no kubelet)
# etcd comes from Debian's etcd-server package (installed with apt-get when missing and root).
#
# Cold build times measured on the 2-core CI-sized machine (empty GOCACHE and GOMODCACHE, module
# downloads included) are in docs/deploy.md ("Testing against a real API server"); a rebuild with a
# warm Go build cache takes about a minute per group. Progress goes to stderr, with the elapsed time.
#
# Environment:
#   KZERO_KUBE_HOME      cache root (default ~/.cache/kzero/kube): <group>-<version>/{go.mod,bin/}
#   KZERO_KUBE_VERSION, KZERO_KNATIVE_SERVING_VERSION, KZERO_KWOK_VERSION   override the pins below
#   GO                   the go command (default: go on PATH)
set -euo pipefail

KUBE_VERSION="${KZERO_KUBE_VERSION:-v1.37.2}"
KNATIVE_VERSION="${KZERO_KNATIVE_SERVING_VERSION:-v0.50.0}"
KWOK_VERSION="${KZERO_KWOK_VERSION:-v0.8.0}"
HOME_DIR="${KZERO_KUBE_HOME:-${HOME}/.cache/kzero/kube}"
GO="${GO:-go}"

KUBE_DIR="$HOME_DIR/kubernetes-$KUBE_VERSION"
KNATIVE_DIR="$HOME_DIR/knative-serving-$KNATIVE_VERSION"
KWOK_DIR="$HOME_DIR/kwok-$KWOK_VERSION"

log() { echo "kube.sh: $*" >&2; }
die() { echo "kube.sh: error: $*" >&2; exit 1; }

need_go() {
    command -v "$GO" >/dev/null 2>&1 ||
        die "Go not found: building kube-apiserver, Knative Serving and kwok needs Go >= 1.26 (or set GO)"
}

# Run a long command with a progress line every 60 s on stderr; its output goes to LOG.
with_progress() { # what log-file command...
    local what="$1" logfile="$2"
    shift 2
    local start=$SECONDS
    "$@" >"$logfile" 2>&1 &
    local pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        for _ in $(seq 60); do
            sleep 1
            kill -0 "$pid" 2>/dev/null || break
        done
        kill -0 "$pid" 2>/dev/null && log "$what: still building ($((SECONDS - start)) s)"
    done
    if ! wait "$pid"; then
        tail -n 30 "$logfile" >&2
        die "$what failed after $((SECONDS - start)) s; full log: $logfile"
    fi
    log "$what: done in $((SECONDS - start)) s"
}

# A wrapper module requiring MODULE@VERSION, with a tools.go importing the commands to build.
write_wrapper() { # dir module version package...
    local dir="$1" module="$2" version="$3"
    shift 3
    mkdir -p "$dir/bin"
    {
        echo "module kzero.local/build"
        echo
        echo "go 1.26.0"
        echo
        echo "require $module $version"
    } >"$dir/go.mod"
    {
        echo "//go:build tools"
        echo
        echo "package tools"
        echo
        echo "import ("
        printf '\t_ "%s"\n' "$@"
        echo ")"
    } >"$dir/tools.go"
}

# k8s.io/kubernetes replaces its staging modules by local paths, which a dependent module cannot
# see: point each at the published module of the same release (v1.37.2 -> v0.37.2).
kubernetes_replaces() {
    local gomod staging
    gomod="$(cd "$KUBE_DIR" && "$GO" mod download -json "k8s.io/kubernetes@$KUBE_VERSION" |
        sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
    [[ -f "$gomod" ]] || die "could not download k8s.io/kubernetes@$KUBE_VERSION's go.mod"
    staging="v0.${KUBE_VERSION#v1.}"
    echo
    echo "replace ("
    sed -n 's#^[[:space:]]*\(k8s\.io/[A-Za-z0-9._-]*\) => \./staging/.*#\1#p' "$gomod" |
        while read -r mod; do printf '\t%s => %s %s\n' "$mod" "$mod" "$staging"; done
    echo ")"
}

build_group() { # dir label ldflags module version package...
    local dir="$1" label="$2" ldflags="$3" module="$4" version="$5"
    shift 5
    local packages=("$@")
    log "$label: preparing the wrapper module in $dir (module downloads on the first run)"
    write_wrapper "$dir" "$module" "$version" "${packages[@]}"
    if [[ "$module" == "k8s.io/kubernetes" ]]; then
        kubernetes_replaces >>"$dir/go.mod"
    fi
    (cd "$dir" && with_progress "$label: go mod tidy" "$dir/tidy.log" "$GO" mod tidy)
    log "$label: go build ${packages[*]} (the first build takes minutes: see the script header)"
    (cd "$dir" && with_progress "$label: go build" "$dir/build.log" \
        "$GO" build -ldflags "$ldflags" -o "$dir/bin/" "${packages[@]}")
}

kube_ldflags() {
    local minor="${KUBE_VERSION#v1.}"
    minor="${minor%%.*}"
    local flags="" pkg
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        flags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
        flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
    done
    echo "$flags"
}

have() { local f; for f in "$@"; do [[ -x "$f" ]] || return 1; done; }

build_kubernetes() {
    have "$KUBE_DIR/bin/kube-apiserver" "$KUBE_DIR/bin/kube-controller-manager" && return 0
    # One go build for both: they share most of their packages, which then compile once.
    build_group "$KUBE_DIR" "kubernetes $KUBE_VERSION" "$(kube_ldflags)" k8s.io/kubernetes "$KUBE_VERSION" \
        k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager
    [[ "$("$KUBE_DIR/bin/kube-apiserver" --version)" == "Kubernetes $KUBE_VERSION" ]] ||
        die "kube-apiserver reports '$("$KUBE_DIR/bin/kube-apiserver" --version)', not $KUBE_VERSION"
}

build_knative() {
    have "$KNATIVE_DIR/bin/controller" "$KNATIVE_DIR/bin/webhook" "$KNATIVE_DIR/bin/autoscaler" && return 0
    build_group "$KNATIVE_DIR" "knative serving $KNATIVE_VERSION" "" knative.dev/serving "$KNATIVE_VERSION" \
        knative.dev/serving/cmd/controller knative.dev/serving/cmd/webhook knative.dev/serving/cmd/autoscaler
}

build_kwok() {
    have "$KWOK_DIR/bin/kwok" && return 0
    build_group "$KWOK_DIR" "kwok $KWOK_VERSION" "" sigs.k8s.io/kwok "$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok
}

ensure_etcd() {
    command -v etcd >/dev/null 2>&1 && return 0
    [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1 ||
        die "etcd not found: install Debian's etcd-server package (apt-get install -y etcd-server)"
    log "installing etcd-server with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q etcd-server >&2 ||
        { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q etcd-server >&2; } ||
        die "apt-get install etcd-server failed"
}

# Where the Go module cache holds a module of the Knative build: its config/ has the CRDs and the
# ConfigMaps the fixtures install (serving: config/core; networking and caching: the internal CRDs).
knative_module_dir() { # module
    (cd "$KNATIVE_DIR" && "$GO" list -m -f '{{.Dir}}' "$1")
}

print_paths() {
    local missing=0 line name path
    local lines=(
        "etcd=$(command -v etcd || true)"
        "kube-apiserver=$KUBE_DIR/bin/kube-apiserver"
        "kube-controller-manager=$KUBE_DIR/bin/kube-controller-manager"
        "kwok=$KWOK_DIR/bin/kwok"
        "knative-controller=$KNATIVE_DIR/bin/controller"
        "knative-webhook=$KNATIVE_DIR/bin/webhook"
        "knative-autoscaler=$KNATIVE_DIR/bin/autoscaler"
    )
    for line in "${lines[@]}"; do
        name="${line%%=*}"
        path="${line#*=}"
        [[ -n "$path" && -x "$path" ]] || { log "missing: $name"; missing=1; }
        echo "$line"
    done
    local module dir
    for module in serving networking caching; do
        dir=""
        [[ -f "$KNATIVE_DIR/go.sum" ]] && dir="$(knative_module_dir "knative.dev/$module" 2>/dev/null || true)"
        [[ -n "$dir" && -d "$dir/config" ]] || { log "missing: knative-$module-module"; missing=1; }
        echo "knative-$module-module=$dir"
    done
    # kwok's stages (node and pod lifecycles) ship in its module, not in the binary.
    dir=""
    [[ -f "$KWOK_DIR/go.sum" ]] && dir="$(cd "$KWOK_DIR" && "$GO" list -m -f '{{.Dir}}' sigs.k8s.io/kwok 2>/dev/null || true)"
    [[ -n "$dir" && -d "$dir/kustomize/stage" ]] || { log "missing: kwok-module"; missing=1; }
    echo "kwok-module=$dir"
    return "$missing"
}

case "${1:-}" in
    build)
        need_go
        ensure_etcd
        build_kubernetes
        build_knative
        build_kwok
        print_paths
        ;;
    paths)
        print_paths
        ;;
    *)
        echo "usage: $0 build|paths" >&2
        exit 2
        ;;
esac
