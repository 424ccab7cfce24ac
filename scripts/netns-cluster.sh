#!/usr/bin/env bash
# A plexus cluster on separate network stacks, on one machine (run as root):
#
#   scripts/netns-cluster.sh up N [--rate RATE] [--loss PERCENT] [--transport quic]
#       N network namespaces plexus-ns0..N-1, each with one interface (eth0,
#       10.77.0.<i+1>/24) on a bridge (plexus-br0, 10.77.0.254); with --rate, each
#       namespace's interface sends at most RATE (tc tbf, like a host's NIC: 1gbit,
#       500mbit...); with --loss, each namespace drops that percentage of what it sends
#       (TCP and UDP; nftables, numgen random); with --transport quic, links run over QUIC
#       under a throwaway certificate authority made for the cluster (openssl), and each
#       namespace's kernel tracks UDP flows so the bench can count QUIC links. Writes one
#       agent configuration per namespace, a cluster
#       secret and the agents' logs into a new directory, starts one `plexus agent` in each
#       namespace, waits until every one serves its socket, and prints the directory (also
#       written to scripts/.netns-cluster.dir).
#   scripts/netns-cluster.sh loss PERCENT
#       Changes the loss of the running cluster (0 removes it).
#   scripts/netns-cluster.sh down
#       Stops the agents and removes every namespace, the bridge, the rules and the
#       directory it made.
#
# Then: plexus bench --cluster "$(cat scripts/.netns-cluster.dir)" --json
# The plexus binary is PLEXUS_BIN, else `plexus` on the PATH, else target/release/plexus.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
state="$here/.netns-cluster.dir"
prefix=plexus-ns
bridge=plexus-br0
net=10.77.0
port=7100
metrics_port=9464

bin=${PLEXUS_BIN:-$(command -v plexus || true)}
[ -n "$bin" ] || bin="$here/../target/release/plexus"

die() { echo "netns-cluster: $*" >&2; exit 1; }

need_root() { [ "$(id -u)" = 0 ] || die "run as root (it creates network namespaces)"; }

# Drops PERCENT (0 to 100, decimals allowed) of what namespace $1 sends.
set_loss() {
    local ns=$1 percent=$2
    ip netns exec "$ns" nft delete table inet plexus_loss 2>/dev/null || true
    local per_10k
    per_10k=$(awk -v p="$percent" 'BEGIN { printf "%d", p * 100 }')
    [ "$per_10k" -gt 0 ] || return 0
    command -v nft >/dev/null || die "--loss needs nft (apt-get install nftables)"
    ip netns exec "$ns" nft -f - <<EOF
table inet plexus_loss {
    chain out {
        type filter hook output priority 0; policy accept;
        meta l4proto { tcp, udp } numgen random mod 10000 < $per_10k drop
    }
}
EOF
}

# Makes a certificate authority and a certificate naming each of nodes 0..$2-1 in $1.
make_certs() {
    local dir=$1 n=$2
    command -v openssl >/dev/null || die "--transport quic needs openssl to make certificates"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 7 \
        -subj "/CN=plexus netns cluster authority" -keyout "$dir/ca.key" -out "$dir/ca.crt" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" \
        2>/dev/null
    for ((i = 0; i < n; i++)); do
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
            -subj "/CN=node-$i.plexus" -keyout "$dir/node$i.key" -out "$dir/node$i.csr" 2>/dev/null
        printf 'subjectAltName=DNS:node-%d.plexus\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n' "$i" \
            >"$dir/node$i.ext"
        openssl x509 -req -in "$dir/node$i.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
            -CAcreateserial -days 7 -extfile "$dir/node$i.ext" -out "$dir/node$i.crt" 2>/dev/null
        rm -f "$dir/node$i.csr" "$dir/node$i.ext"
    done
    rm -f "$dir/ca.key" "$dir/ca.srl"
}

# Makes namespace $1's kernel track UDP flows (QUIC links), for the bench to count.
track_flows() {
    ip netns exec "$1" nft -f - <<EOF
table inet plexus_flows {
    chain out {
        type filter hook output priority 0; policy accept;
        ct state new counter
    }
}
EOF
}

up() {
    need_root
    local n=${1:-}; shift || true
    [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 2 ] && [ "$n" -le 250 ] || die "up N: N from 2 to 250"
    local rate="" loss=0 transport=tcp
    while [ $# -gt 0 ]; do
        case $1 in
            --rate) rate=${2:?--rate RATE}; shift 2 ;;
            --loss) loss=${2:?--loss PERCENT}; shift 2 ;;
            --transport) transport=${2:?--transport tcp|quic}; shift 2 ;;
            *) die "unknown option $1" ;;
        esac
    done
    [ "$transport" = tcp ] || [ "$transport" = quic ] || die "--transport is tcp or quic"
    [ -x "$bin" ] || die "no plexus binary at $bin (build it: cargo build --release)"
    [ ! -e "$state" ] || die "a cluster is up already ($(cat "$state")): down first"
    local dir
    dir=$(mktemp -d /tmp/plexus-netns.XXXXXX)
    chmod 700 "$dir"
    echo "$dir" >"$state"

    ip link add "$bridge" type bridge
    ip addr add "$net.254/24" dev "$bridge"
    ip link set "$bridge" up
    for ((i = 0; i < n; i++)); do
        local ns=$prefix$i
        ip netns add "$ns"
        ip link add "pxv$i" type veth peer name eth0 netns "$ns"
        ip link set "pxv$i" master "$bridge"
        ip link set "pxv$i" up
        ip -n "$ns" addr add "$net.$((i + 1))/24" dev eth0
        ip -n "$ns" link set eth0 up
        ip -n "$ns" link set lo up
        if [ -n "$rate" ]; then
            # A NIC's rate: the bucket holds a few milliseconds' worth at that rate.
            tc -n "$ns" qdisc add dev eth0 root tbf rate "$rate" burst 1mb latency 50ms
        fi
        set_loss "$ns" "$loss"
        if [ "$transport" = quic ]; then
            track_flows "$ns"
        fi
    done

    "$bin" secret --out "$dir/cluster.secret"
    if [ "$transport" = quic ]; then
        make_certs "$dir" "$n"
    fi
    local members=""
    for ((i = 0; i < n; i++)); do
        members+="  { id = $i, address = \"$net.$((i + 1)):$port\" },"$'\n'
    done
    for ((i = 0; i < n; i++)); do
        cat >"$dir/node$i.toml" <<EOF
# Node $i of a cluster made by scripts/netns-cluster.sh (namespace $prefix$i).
node = $i
cluster = 7077
secret_file = "cluster.secret"
listen = "$net.$((i + 1)):$port"
members = [
$members]
socket = "$dir/node$i.sock"
metrics = "$net.$((i + 1)):$metrics_port"
transport = "$transport"
EOF
        if [ "$transport" = quic ]; then
            printf '\n[tls]\ncert = "node%d.crt"\nkey = "node%d.key"\nca = "ca.crt"\n' "$i" "$i" \
                >>"$dir/node$i.toml"
        fi
        echo "$prefix$i" >"$dir/node$i.netns"
        ip netns exec "$prefix$i" setsid "$bin" agent --config "$dir/node$i.toml" \
            >"$dir/node$i.log" 2>&1 </dev/null &
        echo $! >"$dir/node$i.pid"
    done
    for ((i = 0; i < n; i++)); do
        local waited=0
        until [ -S "$dir/node$i.sock" ]; do
            sleep 0.1
            waited=$((waited + 1))
            if [ "$waited" -gt 200 ] || ! kill -0 "$(cat "$dir/node$i.pid")" 2>/dev/null; then
                cat "$dir/node$i.log" >&2 || true
                die "node $i's agent did not start (its log is above); run down to clean up"
            fi
        done
    done
    echo "$dir"
}

loss() {
    need_root
    local percent=${1:?loss PERCENT}
    [ -e "$state" ] || die "no cluster is up"
    for f in "$(cat "$state")"/node*.netns; do
        set_loss "$(cat "$f")" "$percent"
    done
}

down() {
    need_root
    if [ -e "$state" ]; then
        local dir
        dir=$(cat "$state")
        for pidfile in "$dir"/node*.pid; do
            [ -e "$pidfile" ] && kill -TERM "$(cat "$pidfile")" 2>/dev/null || true
        done
        for pidfile in "$dir"/node*.pid; do
            [ -e "$pidfile" ] || continue
            local pid waited=0
            pid=$(cat "$pidfile")
            while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt 100 ]; do
                sleep 0.1
                waited=$((waited + 1))
            done
            kill -KILL "$pid" 2>/dev/null || true
        done
        rm -rf "$dir"
        rm -f "$state"
    fi
    for ns in $(ip netns list | awk '{print $1}' | grep "^$prefix" || true); do
        ip netns del "$ns"
    done
    ip link del "$bridge" 2>/dev/null || true
}

case ${1:-} in
    up) shift; up "$@" ;;
    loss) shift; loss "$@" ;;
    down) down ;;
    *) die "usage: $0 up N [--rate RATE] [--loss PERCENT] [--transport quic] | loss PERCENT | down" ;;
esac
