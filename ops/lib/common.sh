# Shared settings for the ops/ scripts. Sourced, never run.
# Every address and data path of the local stack is defined here, once.
set -euo pipefail

GANTRY_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
GANTRY_STATE="${GANTRY_STATE:-$GANTRY_ROOT/.gantry}"

GANTRY_REDIS_PORT="${GANTRY_REDIS_PORT:-6390}"
GANTRY_AMQP_PORT="${GANTRY_AMQP_PORT:-5682}"
GANTRY_AMQP_DIST_PORT="${GANTRY_AMQP_DIST_PORT:-25682}"
GANTRY_KAFKA_PORT="${GANTRY_KAFKA_PORT:-9092}"

export GANTRY_REDIS_URL="${GANTRY_REDIS_URL:-redis://127.0.0.1:$GANTRY_REDIS_PORT}"
export GANTRY_AMQP_URL="${GANTRY_AMQP_URL:-amqp://guest:guest@127.0.0.1:$GANTRY_AMQP_PORT/}"
export GANTRY_KAFKA_BROKERS="${GANTRY_KAFKA_BROKERS:-127.0.0.1:$GANTRY_KAFKA_PORT}"

# RabbitMQ runs as its own node with every file under .gantry/.
export RABBITMQ_NODENAME="${RABBITMQ_NODENAME:-gantry@localhost}"
export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
export RABBITMQ_NODE_PORT="$GANTRY_AMQP_PORT"
export RABBITMQ_DIST_PORT="$GANTRY_AMQP_DIST_PORT"
export RABBITMQ_MNESIA_BASE="$GANTRY_STATE/rabbitmq/mnesia"
export RABBITMQ_LOG_BASE="$GANTRY_STATE/rabbitmq/log"
export RABBITMQ_PID_FILE="$GANTRY_STATE/rabbitmq/rabbitmq.pid"
export RABBITMQ_ENABLED_PLUGINS_FILE="$GANTRY_STATE/rabbitmq/enabled_plugins"
export RABBITMQ_CONFIG_FILE="$GANTRY_STATE/rabbitmq/rabbitmq"
export RABBITMQ_ADVANCED_CONFIG_FILE="$GANTRY_STATE/rabbitmq/advanced.config"
export RABBITMQ_CONF_ENV_FILE="$GANTRY_STATE/rabbitmq/rabbitmq-env.conf"
export HOME="${HOME:-/root}"
RABBITMQ_BIN=/usr/lib/rabbitmq/bin

log() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# wait_until DESCRIPTION SECONDS COMMAND...: polls COMMAND until it succeeds or time runs out.
wait_until() {
    local what=$1 seconds=$2; shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            log "$what did not become ready within ${seconds}s"
            return 1
        fi
        sleep 0.2
    done
}

# pid_alive FILE: true when FILE names a running process.
pid_alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
