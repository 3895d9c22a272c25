#!/usr/bin/env bash
# Single-node Apache Kafka 4.x broker (KRaft combined broker+controller, no ZooKeeper, no Docker)
# for dev, demos, tests and CI. The broker jars come from Maven Central via scripts/kafka/pom.xml.
#
#   scripts/kafka.sh start    resolve jars once (cached), format storage once, start the broker in
#                             the background, wait until it answers a Metadata request, then print
#                             the bootstrap address (e.g. 127.0.0.1:9092) as the last stdout line.
#                             Idempotent: when already running it only prints the address.
#   scripts/kafka.sh stop     SIGTERM, wait, SIGKILL after KZERO_KAFKA_STOP_TIMEOUT s. Idempotent.
#   scripts/kafka.sh status   prints "running <address> (pid N)" and exits 0, or "stopped" and exits 1.
#
# Environment:
#   KAFKA_BOOTSTRAP_SERVERS       if set, `start` starts nothing and prints it (external broker).
#   KZERO_KAFKA_VERSION           kafka_2.13 version on Maven Central (default 4.4.0).
#   KZERO_KAFKA_HOME              cache root (default ~/.cache/kzero/kafka); jars in <home>/<version>/libs.
#   KZERO_KAFKA_DATA              data dir: config, pid file, kafka.log, log.dirs (default <home>/data).
#   KZERO_KAFKA_PORT              PLAINTEXT listener port (default 9092).
#   KZERO_KAFKA_SASL_PORT         if set, also a SASL_PLAINTEXT listener (mechanism PLAIN) on this port,
#                                 for testing authenticated clients; the printed address stays PLAINTEXT.
#   KZERO_KAFKA_SASL_USER         its user (default kzero); with KZERO_KAFKA_SASL_PORT only.
#   KZERO_KAFKA_SASL_PASSWORD     that user's password (default kzero-secret); with KZERO_KAFKA_SASL_PORT only.
#   KZERO_KAFKA_CONTROLLER_PORT   KRaft CONTROLLER listener port (default PORT+1).
#   KZERO_KAFKA_HEAP_OPTS         JVM heap (default "-Xms256m -Xmx512m").
#   KZERO_KAFKA_START_TIMEOUT     seconds to wait for readiness (default 60).
#   KZERO_KAFKA_STOP_TIMEOUT      seconds to wait after SIGTERM before SIGKILL (default 30).
#
# Progress and errors go to stderr; stdout carries only the bootstrap address (start) or status.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
POM="$SCRIPT_DIR/kafka/pom.xml"

VERSION="${KZERO_KAFKA_VERSION:-4.4.0}"
KAFKA_HOME_DIR="${KZERO_KAFKA_HOME:-${HOME}/.cache/kzero/kafka}"
DIST_DIR="$KAFKA_HOME_DIR/$VERSION"
LIBS_DIR="$DIST_DIR/libs"
RESOLVED_MARKER="$DIST_DIR/.resolved"
DATA_DIR="${KZERO_KAFKA_DATA:-$KAFKA_HOME_DIR/data}"
PORT="${KZERO_KAFKA_PORT:-9092}"
CONTROLLER_PORT="${KZERO_KAFKA_CONTROLLER_PORT:-$((PORT + 1))}"
SASL_PORT="${KZERO_KAFKA_SASL_PORT:-}"
SASL_USER="${KZERO_KAFKA_SASL_USER:-kzero}"
SASL_PASSWORD="${KZERO_KAFKA_SASL_PASSWORD:-kzero-secret}"
HOST="127.0.0.1"
ADDRESS="$HOST:$PORT"
HEAP_OPTS="${KZERO_KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}"
START_TIMEOUT="${KZERO_KAFKA_START_TIMEOUT:-60}"
STOP_TIMEOUT="${KZERO_KAFKA_STOP_TIMEOUT:-30}"

PID_FILE="$DATA_DIR/kafka.pid"
LOG_FILE="$DATA_DIR/kafka.log"
CONFIG_FILE="$DATA_DIR/server.properties"
LOG4J_FILE="$DATA_DIR/log4j2.properties"
LOG_DIRS="$DATA_DIR/kraft-logs"

log() { echo "kafka.sh: $*" >&2; }
die() { echo "kafka.sh: error: $*" >&2; exit 1; }

is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }
is_uint "$PORT" || die "KZERO_KAFKA_PORT must be a port number, got '$PORT'"
is_uint "$CONTROLLER_PORT" || die "KZERO_KAFKA_CONTROLLER_PORT must be a port number, got '$CONTROLLER_PORT'"
[[ "$PORT" != "$CONTROLLER_PORT" ]] || die "KZERO_KAFKA_PORT and KZERO_KAFKA_CONTROLLER_PORT must differ"
if [[ -n "$SASL_PORT" ]]; then
    is_uint "$SASL_PORT" || die "KZERO_KAFKA_SASL_PORT must be a port number, got '$SASL_PORT'"
    [[ "$SASL_PORT" != "$PORT" && "$SASL_PORT" != "$CONTROLLER_PORT" ]] ||
        die "KZERO_KAFKA_SASL_PORT must differ from KZERO_KAFKA_PORT and KZERO_KAFKA_CONTROLLER_PORT"
    # Both go into a JAAS line of a properties file: no quotes, spaces or escapes to get wrong.
    [[ "$SASL_USER" =~ ^[A-Za-z0-9._-]+$ ]] || die "KZERO_KAFKA_SASL_USER must match [A-Za-z0-9._-]+"
    [[ "$SASL_PASSWORD" =~ ^[A-Za-z0-9._-]+$ ]] || die "KZERO_KAFKA_SASL_PASSWORD must match [A-Za-z0-9._-]+"
fi

# ---------------------------------------------------------------------------------------------
# process helpers

# pid of our broker if it is running (pid file + live process whose command line is kafka.Kafka
# with this data dir's config, so a recycled pid is never mistaken for the broker), else empty.
broker_pid() {
    [[ -f "$PID_FILE" ]] || return 0
    local pid
    pid="$(tr -dc '0-9' <"$PID_FILE")"
    [[ -n "$pid" ]] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    if [[ -r "/proc/$pid/cmdline" ]]; then
        local cmd
        cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
        [[ "$cmd" == *kafka.Kafka*"$CONFIG_FILE"* ]] || return 0
    fi
    echo "$pid"
}

# Port of the running broker as recorded at start (the env may differ from what is running).
running_address() {
    if [[ -f "$DATA_DIR/kafka.address" ]]; then
        cat "$DATA_DIR/kafka.address"
    else
        echo "$ADDRESS"
    fi
}

port_open() { # host port
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

# Ready = the broker answers a Metadata request listing itself (python3, stdlib only: a raw
# Metadata v4 request). Without python3: port accepts connections and the log says started.
metadata_ready() { # host port
    if command -v python3 >/dev/null 2>&1; then
        python3 - "$1" "$2" <<'PY' 2>/dev/null
import socket, struct, sys

host, port = sys.argv[1], int(sys.argv[2])
client_id = b"kzero-kafka-sh"
# RequestHeader v1: api_key=3 (Metadata), api_version=4, correlation_id, client_id;
# MetadataRequest v4: topics = [] (none, brokers only), allow_auto_topic_creation = false.
body = struct.pack(">hhih", 3, 4, 4242, len(client_id)) + client_id + struct.pack(">i?", 0, False)
try:
    with socket.create_connection((host, port), timeout=3) as s:
        s.settimeout(5)
        s.sendall(struct.pack(">i", len(body)) + body)
        def read(n):
            buf = b""
            while len(buf) < n:
                chunk = s.recv(n - len(buf))
                if not chunk:
                    raise EOFError
                buf += chunk
            return buf
        (size,) = struct.unpack(">i", read(4))
        resp = read(size)
    corr, _throttle, n_brokers = struct.unpack(">iii", resp[:12])
    sys.exit(0 if corr == 4242 and n_brokers >= 1 else 1)
except Exception:
    sys.exit(1)
PY
    else
        port_open "$1" "$2" && grep -q "Kafka Server started" "$LOG_FILE" 2>/dev/null
    fi
}

# ---------------------------------------------------------------------------------------------
# prerequisites and one-time jar resolution

find_java() {
    if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
        JAVA="$JAVA_HOME/bin/java"
    elif command -v java >/dev/null 2>&1; then
        JAVA="$(command -v java)"
    else
        die "java not found. Kafka $VERSION needs Java 17+ (e.g. 'apt-get install openjdk-17-jre-headless', or set JAVA_HOME)."
    fi
    local ver major
    ver="$("$JAVA" -version 2>&1 | awk -F'"' '/version/ {print $2; exit}')"
    major="${ver%%.*}"
    [[ "$major" == "1" ]] && major="$(echo "$ver" | cut -d. -f2)"
    if is_uint "${major:-x}" && ((major < 17)); then
        die "Java $ver found at $JAVA, but Kafka $VERSION needs Java 17+ (set JAVA_HOME to a newer JDK)."
    fi
}

resolve_jars() {
    [[ -f "$RESOLVED_MARKER" && -d "$LIBS_DIR" ]] && return 0
    command -v mvn >/dev/null 2>&1 ||
        die "mvn not found; Maven 3.6+ is needed once to fetch Kafka $VERSION jars from Maven Central into $LIBS_DIR (e.g. 'apt-get install maven')."
    [[ -f "$POM" ]] || die "missing $POM"
    mkdir -p "$DIST_DIR"
    local tmp="$DIST_DIR/libs.tmp.$$"
    rm -rf "$tmp"
    log "resolving org.apache.kafka:kafka_2.13:$VERSION and runtime deps from Maven Central into $LIBS_DIR (once)"
    if ! mvn -B -ntp -Dstyle.color=never -f "$POM" -Dkafka.version="$VERSION" \
        dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp" >"$DIST_DIR/mvn.log" 2>&1; then
        rm -rf "$tmp"
        grep -E "ERROR|FAIL" "$DIST_DIR/mvn.log" | head -n 20 >&2 || true
        die "mvn could not resolve org.apache.kafka:kafka_2.13:$VERSION (network to Maven Central? version exists?); full log: $DIST_DIR/mvn.log"
    fi
    ls "$tmp"/kafka_2.13-"$VERSION".jar >/dev/null 2>&1 || { rm -rf "$tmp"; die "kafka_2.13-$VERSION.jar missing after mvn"; }
    rm -rf "$LIBS_DIR"
    mv "$tmp" "$LIBS_DIR"
    (cd "$LIBS_DIR" && ls -1 ./*.jar | sed 's|^\./||') >"$RESOLVED_MARKER"
    log "resolved $(wc -l <"$RESOLVED_MARKER") jars"
}

# ---------------------------------------------------------------------------------------------
# config + storage

new_cluster_id() { # 16 random bytes, base64url without padding (Kafka Uuid format), no leading '-'
    local id
    while :; do
        id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
        [[ "$id" != -* ]] && { echo "$id"; return; }
    done
}

write_config() {
    # The optional SASL listener only adds to the default config, which stays exactly as it was.
    local sasl_listener="" sasl_protocol=""
    if [[ -n "$SASL_PORT" ]]; then
        sasl_listener=",SASL_PLAINTEXT://$HOST:$SASL_PORT"
        sasl_protocol=",SASL_PLAINTEXT:SASL_PLAINTEXT"
    fi
    cat >"$CONFIG_FILE" <<EOF
# Generated by scripts/kafka.sh on every start; edits are overwritten.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$CONTROLLER_PORT
listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT$sasl_listener
advertised.listeners=PLAINTEXT://$HOST:$PORT$sasl_listener
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT$sasl_protocol
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
log.dirs=$LOG_DIRS
num.partitions=4
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# small footprint: CI runners have 2 cores
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
background.threads=4
log.retention.hours=24
EOF
    if [[ -n "$SASL_PORT" ]]; then
        # Brokers talk to each other over PLAINTEXT, so the broker's own username/password go unused;
        # user_<name> entries are the accounts clients log in with.
        cat >>"$CONFIG_FILE" <<EOF
# SASL_PLAINTEXT listener for authenticated clients (KZERO_KAFKA_SASL_PORT)
sasl.enabled.mechanisms=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="$SASL_USER" password="$SASL_PASSWORD" user_$SASL_USER="$SASL_PASSWORD";
EOF
    fi
    cat >"$LOG4J_FILE" <<'EOF'
# Generated by scripts/kafka.sh. Console goes to kafka.log in the data dir.
status = warn
# keep logging through Kafka's own shutdown hook (log4j would otherwise stop first)
shutdownHook = disable
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
logger.authorizer.name = kafka.authorizer.logger
logger.authorizer.level = WARN
EOF
}

format_storage() {
    [[ -f "$LOG_DIRS/meta.properties" ]] && return 0
    local cluster_id
    cluster_id="$(new_cluster_id)"
    log "formatting $LOG_DIRS (cluster id $cluster_id)"
    "$JAVA" -Xmx256m -Dlog4j2.configurationFile="$LOG4J_FILE" -cp "$LIBS_DIR/*" \
        kafka.tools.StorageTool format --ignore-formatted -t "$cluster_id" -c "$CONFIG_FILE" \
        >>"$DATA_DIR/format.log" 2>&1 ||
        { cat "$DATA_DIR/format.log" >&2; die "kafka storage format failed (see $DATA_DIR/format.log)"; }
}

# ---------------------------------------------------------------------------------------------
# commands

wait_ready() { # pid host port
    local pid="$1" deadline=$((SECONDS + START_TIMEOUT))
    while ((SECONDS < deadline)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "broker exited during startup; last lines of $LOG_FILE:"
            tail -n 40 "$LOG_FILE" >&2 || true
            rm -f "$PID_FILE"
            die "Kafka failed to start"
        fi
        metadata_ready "$2" "$3" && return 0
        sleep 0.5
    done
    log "broker not ready after ${START_TIMEOUT}s; last lines of $LOG_FILE:"
    tail -n 40 "$LOG_FILE" >&2 || true
    die "Kafka did not become ready within ${START_TIMEOUT}s (pid $pid still running; 'scripts/kafka.sh stop' to kill it)"
}

cmd_start() {
    if [[ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ]]; then
        log "KAFKA_BOOTSTRAP_SERVERS is set; using the external broker, starting nothing"
        echo "$KAFKA_BOOTSTRAP_SERVERS"
        return 0
    fi
    mkdir -p "$DATA_DIR"
    # Serialise concurrent start/stop on one data dir. fd 9 is closed for the JVM (9>&-) so the
    # background broker does not keep holding the lock.
    exec 9>"$DATA_DIR/.lock"
    if command -v flock >/dev/null 2>&1; then
        flock -w 600 9 || die "timed out waiting for the lock on $DATA_DIR/.lock"
    fi

    local pid addr
    pid="$(broker_pid)"
    if [[ -n "$pid" ]]; then
        addr="$(running_address)"
        [[ "$addr" == "$ADDRESS" ]] || log "already running on $addr (not $ADDRESS); stop it first to change ports"
        wait_ready "$pid" "${addr%:*}" "${addr##*:}"
        echo "$addr"
        return 0
    fi
    rm -f "$PID_FILE"

    find_java
    resolve_jars
    if port_open "$HOST" "$PORT"; then
        die "port $PORT on $HOST is already in use by another process (set KZERO_KAFKA_PORT)"
    fi
    if port_open "$HOST" "$CONTROLLER_PORT"; then
        die "controller port $CONTROLLER_PORT on $HOST is already in use (set KZERO_KAFKA_CONTROLLER_PORT)"
    fi
    if [[ -n "$SASL_PORT" ]] && port_open "$HOST" "$SASL_PORT"; then
        die "SASL port $SASL_PORT on $HOST is already in use (set KZERO_KAFKA_SASL_PORT)"
    fi
    write_config
    format_storage

    [[ -f "$LOG_FILE" ]] && mv -f "$LOG_FILE" "$LOG_FILE.1"
    log "starting Kafka $VERSION on $ADDRESS (controller $HOST:$CONTROLLER_PORT${SASL_PORT:+, SASL_PLAINTEXT $HOST:$SASL_PORT}, data $DATA_DIR)"
    # shellcheck disable=SC2086  # HEAP_OPTS is a list of JVM flags
    nohup "$JAVA" $HEAP_OPTS -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
        -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$LOG4J_FILE" -Dkafka.logs.dir="$DATA_DIR" \
        -cp "$LIBS_DIR/*" kafka.Kafka "$CONFIG_FILE" \
        >"$LOG_FILE" 2>&1 </dev/null 9>&- &
    pid=$!
    echo "$pid" >"$PID_FILE"
    echo "$ADDRESS" >"$DATA_DIR/kafka.address"
    wait_ready "$pid" "$HOST" "$PORT"
    log "ready in ${SECONDS}s (pid $pid, log $LOG_FILE)"
    echo "$ADDRESS"
}

cmd_stop() {
    mkdir -p "$DATA_DIR"
    exec 9>"$DATA_DIR/.lock"
    if command -v flock >/dev/null 2>&1; then
        flock -w 600 9 || die "timed out waiting for the lock on $DATA_DIR/.lock"
    fi
    local pid
    pid="$(broker_pid)"
    if [[ -z "$pid" ]]; then
        rm -f "$PID_FILE"
        log "not running"
        return 0
    fi
    log "stopping Kafka (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + STOP_TIMEOUT))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "still running after ${STOP_TIMEOUT}s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    fi
    rm -f "$PID_FILE"
    log "stopped"
}

cmd_status() {
    local pid
    pid="$(broker_pid)"
    if [[ -n "$pid" ]]; then
        echo "running $(running_address) (pid $pid)"
        return 0
    fi
    echo "stopped"
    return 1
}

case "${1:-}" in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
*)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
