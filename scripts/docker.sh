#!/usr/bin/env bash
# A private Docker engine (dockerd from Debian's docker.io package) for building and smoke-testing
# the image on a machine without one: its own data root, exec root and socket under the cache dir,
# no iptables, no bridge. Builds and containers use host networking (loopback only here); with
# --bridge=none there is no other network to give them.
#
#   scripts/docker.sh start    install docker.io if dockerd is missing (apt-get, as root), start the
#                              daemon in the background, wait until it answers, then print the
#                              DOCKER_HOST to use (unix://.../docker.sock) as the last stdout line.
#                              Idempotent: when already running it only prints the DOCKER_HOST.
#   scripts/docker.sh stop     SIGTERM to the daemon's pid (it stops its containerd), SIGKILL after
#                              KZERO_DOCKER_STOP_TIMEOUT s. Containers still running are killed with it.
#   scripts/docker.sh status   prints "running <DOCKER_HOST> (pid N)" and exits 0, or "stopped" and exits 1.
#   scripts/docker.sh cli      prints the docker client to use with that engine (see KZERO_DOCKER_CLI).
#
# Environment:
#   DOCKER_HOST               if set, `start` starts nothing and prints it (an engine you run yourself).
#   KZERO_DOCKER_HOME         cache root (default ~/.cache/kzero/docker): data/ (images, build cache),
#                             run/ (exec root), docker.sock, dockerd.pid, dockerd.log.
#   KZERO_DOCKER_CLI          docker client (default: the first of `docker` on PATH and Debian's
#                             /usr/bin/docker that builds with BuildKit: 20.10 has it built in,
#                             23.0 and later need the buildx plugin).
#   KZERO_DOCKER_START_TIMEOUT  seconds to wait for the daemon (default 60).
#   KZERO_DOCKER_STOP_TIMEOUT   seconds to wait after SIGTERM before SIGKILL (default 30).
#
# Progress and errors go to stderr; stdout carries only the DOCKER_HOST (start), status or client path.
set -euo pipefail

DOCKER_HOME_DIR="${KZERO_DOCKER_HOME:-${HOME}/.cache/kzero/docker}"
DATA_ROOT="$DOCKER_HOME_DIR/data"
EXEC_ROOT="$DOCKER_HOME_DIR/run"
SOCK="$DOCKER_HOME_DIR/docker.sock"
PID_FILE="$DOCKER_HOME_DIR/dockerd.pid"
LOG_FILE="$DOCKER_HOME_DIR/dockerd.log"
START_TIMEOUT="${KZERO_DOCKER_START_TIMEOUT:-60}"
STOP_TIMEOUT="${KZERO_DOCKER_STOP_TIMEOUT:-30}"

log() { echo "docker.sh: $*" >&2; }
die() { echo "docker.sh: error: $*" >&2; exit 1; }

# containerd's sockets live under the exec root; a unix socket path is limited to 107 bytes.
((${#EXEC_ROOT} < 60)) || die "KZERO_DOCKER_HOME is too long for unix socket paths ($DOCKER_HOME_DIR); set a shorter one"

# pid of our daemon if it is running (pid file + a live dockerd with this data root, so a recycled
# pid is never mistaken for it), else empty.
daemon_pid() {
    [[ -f "$PID_FILE" ]] || return 0
    local pid
    pid="$(tr -dc '0-9' <"$PID_FILE")"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 0
    local cmd
    cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
    [[ "$cmd" == *dockerd*"$DATA_ROOT"* ]] || return 0
    echo "$pid"
}

find_dockerd() {
    if ! command -v dockerd >/dev/null 2>&1; then
        command -v apt-get >/dev/null 2>&1 || die "dockerd not found and no apt-get to install Debian's docker.io"
        ((EUID == 0)) || die "dockerd not found; install it as root: apt-get install docker.io"
        log "installing Debian's docker.io (once)"
        # The package's service stays off (no init here); we start our own daemon below.
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            docker.io >/dev/null; } >&2 || die "apt-get install docker.io failed"
    fi
    DOCKERD="$(command -v dockerd)"
}

# A client that builds with BuildKit: one with the buildx plugin, or one older than 23.0 (those
# have BuildKit built in). A newer standalone client without buildx only has the legacy builder,
# which knows no RUN --mount.
buildkit_client() { # path
    "$1" buildx version >/dev/null 2>&1 && return 0
    local major
    major="$("$1" version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1)"
    [[ "$major" =~ ^[0-9]+$ ]] && ((major < 23))
}

cli() {
    if [[ -n "${KZERO_DOCKER_CLI:-}" ]]; then
        echo "$KZERO_DOCKER_CLI"
        return 0
    fi
    local c
    for c in $(command -v docker) /usr/bin/docker; do
        [[ -x "$c" ]] && buildkit_client "$c" && { echo "$c"; return 0; }
    done
    die "no docker client with BuildKit found (install docker.io, or the buildx plugin, or set KZERO_DOCKER_CLI)"
}

answers() { # the daemon answers an API call on its socket
    DOCKER_HOST="unix://$SOCK" "$(cli)" version --format '{{.Server.Version}}' >/dev/null 2>&1
}

cmd_start() {
    if [[ -n "${DOCKER_HOST:-}" ]]; then
        log "DOCKER_HOST is set; using that engine, starting nothing"
        echo "$DOCKER_HOST"
        return 0
    fi
    mkdir -p "$DOCKER_HOME_DIR"
    # Serialise concurrent start/stop; fd 9 is closed for the daemon so it does not hold the lock.
    exec 9>"$DOCKER_HOME_DIR/.lock"
    flock -w 600 9 || die "timed out waiting for the lock on $DOCKER_HOME_DIR/.lock"

    local pid
    pid="$(daemon_pid)"
    if [[ -z "$pid" ]]; then
        find_dockerd
        ((EUID == 0)) || die "the Docker daemon needs root (it mounts overlay filesystems and cgroups)"
        rm -f "$PID_FILE" "$SOCK"
        mkdir -p "$DATA_ROOT" "$EXEC_ROOT"
        [[ -f "$LOG_FILE" ]] && mv -f "$LOG_FILE" "$LOG_FILE.1"
        log "starting dockerd (data $DATA_ROOT, socket $SOCK)"
        nohup "$DOCKERD" --iptables=false --ip6tables=false --ip-masq=false --bridge=none \
            --data-root "$DATA_ROOT" --exec-root "$EXEC_ROOT" --pidfile "$PID_FILE" \
            -H "unix://$SOCK" >"$LOG_FILE" 2>&1 </dev/null 9>&- &
        pid=$!
    fi
    local deadline=$((SECONDS + START_TIMEOUT))
    until answers; do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "dockerd exited during startup; last lines of $LOG_FILE:"
            tail -n 30 "$LOG_FILE" >&2 || true
            die "the Docker daemon failed to start"
        fi
        if ((SECONDS >= deadline)); then
            tail -n 30 "$LOG_FILE" >&2 || true
            die "dockerd did not answer within ${START_TIMEOUT}s (pid $pid still running; 'scripts/docker.sh stop' kills it)"
        fi
        sleep 0.5
    done
    echo "unix://$SOCK"
}

cmd_stop() {
    mkdir -p "$DOCKER_HOME_DIR"
    exec 9>"$DOCKER_HOME_DIR/.lock"
    flock -w 600 9 || die "timed out waiting for the lock on $DOCKER_HOME_DIR/.lock"
    local pid
    pid="$(daemon_pid)"
    if [[ -z "$pid" ]]; then
        log "not running"
        return 0
    fi
    log "stopping dockerd (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + STOP_TIMEOUT))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "still running after ${STOP_TIMEOUT}s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$PID_FILE"
    log "stopped"
}

cmd_status() {
    local pid
    pid="$(daemon_pid)"
    if [[ -n "$pid" ]]; then
        echo "running unix://$SOCK (pid $pid)"
        return 0
    fi
    echo "stopped"
    return 1
}

case "${1:-}" in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
cli) cli ;;
*)
    echo "usage: $0 start|stop|status|cli" >&2
    exit 2
    ;;
esac
