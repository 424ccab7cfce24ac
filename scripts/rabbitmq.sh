#!/usr/bin/env bash
# A RabbitMQ broker on loopback for `plexus bench --baseline rabbitmq` (measured for
# BENCHMARKS.md; CI does not run it).
#
#   scripts/rabbitmq.sh start   install Debian's rabbitmq-server if missing (apt-get, as
#                               root), start it listening on 127.0.0.1:5672 only, without
#                               the management plugin, and wait until it answers
#   scripts/rabbitmq.sh stop    stop it
#
# It runs without systemd, as the rabbitmq user, from a configuration of its own in
# $RABBITMQ_DIR (default /tmp/plexus-rabbitmq); the default user guest/guest may connect,
# from loopback only as RabbitMQ allows by default. Every port it opens (AMQP, Erlang
# distribution, epmd) is on loopback.
set -euo pipefail

dir=${RABBITMQ_DIR:-/tmp/plexus-rabbitmq}
port=5672

install() {
    if command -v rabbitmq-server >/dev/null; then
        return
    fi
    if [ "$(id -u)" -ne 0 ]; then
        echo "rabbitmq.sh: rabbitmq-server is not installed; run this as root to install it" >&2
        exit 1
    fi
    # Do not let the package start a broker of its own (bound to every address).
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends rabbitmq-server
    rm -f /usr/sbin/policy-rc.d
    trap - EXIT
}

configure() {
    mkdir -p "$dir/mnesia" "$dir/log"
    cat >"$dir/rabbitmq.conf" <<CONF
listeners.tcp.default = 127.0.0.1:$port
loopback_users.guest = true
CONF
    cat >"$dir/rabbitmq-env.conf" <<CONF
NODENAME=plexus@localhost
NODE_IP_ADDRESS=127.0.0.1
NODE_PORT=$port
CONFIG_FILE=$dir/rabbitmq.conf
MNESIA_BASE=$dir/mnesia
LOG_BASE=$dir/log
ENABLED_PLUGINS_FILE=$dir/enabled_plugins
SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
CONF
    # No plugins: no management listener.
    echo '[].' >"$dir/enabled_plugins"
    chown -R rabbitmq:rabbitmq "$dir"
}

# Runs a RabbitMQ command as the broker's user with this configuration.
as_broker() {
    local env=(RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf" ERL_EPMD_ADDRESS=127.0.0.1)
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u rabbitmq -- env "${env[@]}" "$@"
    else
        env "${env[@]}" "$@"
    fi
}

start() {
    install
    configure
    if as_broker rabbitmq-diagnostics -q -n plexus@localhost ping >/dev/null 2>&1; then
        echo "rabbitmq.sh: already running on 127.0.0.1:$port"
        return
    fi
    as_broker rabbitmq-server -detached
    for _ in $(seq 60); do
        if as_broker rabbitmq-diagnostics -q -n plexus@localhost check_port_connectivity >/dev/null 2>&1; then
            echo "rabbitmq.sh: running on 127.0.0.1:$port (logs in $dir/log)"
            return
        fi
        sleep 1
    done
    echo "rabbitmq.sh: the broker did not answer within 60 s; see $dir/log" >&2
    exit 1
}

stop() {
    if ! command -v rabbitmqctl >/dev/null; then
        echo "rabbitmq.sh: rabbitmq-server is not installed" >&2
        exit 1
    fi
    as_broker timeout 60 rabbitmqctl -n plexus@localhost stop
    # epmd, the Erlang port mapper the broker started, outlives it.
    as_broker epmd -kill >/dev/null 2>&1 || true
}

case "${1:-}" in
start) start ;;
stop) stop ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
