#!/usr/bin/env bash
# Starts N `meshnode run` processes on 127.0.0.1, each with its own home under DIR, all
# bootstrapping from the first. Prints how to reach each node, then waits; Ctrl-C stops them all.
#
#   scripts/local-mesh.sh [N=4] [DIR=./local-mesh]
#
# Node i listens on 127.0.0.1:(4100+i) for peers and serves its API on 127.0.0.1:(8100+i).
# Re-running reuses the homes (identities, catalogs, logs) in DIR.
set -euo pipefail
N=${1:-4}
DIR=${2:-./local-mesh}
DOMAINS=(sales billing logistics analytics marketing finance hr support legal research)
cd "$(dirname "$0")/.."
cargo build --quiet -p mesh-node --bin meshnode
BIN=target/debug/meshnode
mkdir -p "$DIR"

pids=()
cleanup() {
    echo "stopping ${#pids[@]} node(s)"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
}
trap cleanup EXIT INT TERM

bootstrap=""
for ((i = 0; i < N; i++)); do
    domain=${DOMAINS[$((i % ${#DOMAINS[@]}))]}
    [ "$i" -ge "${#DOMAINS[@]}" ] && domain="$domain$i"
    home="$DIR/$domain"
    if [ ! -f "$home/identity.key" ]; then
        "$BIN" init --home "$home" --domain "$domain" \
            --listen "/ip4/127.0.0.1/tcp/$((4100 + i))" --api "127.0.0.1:$((8100 + i))" >/dev/null
    fi
    args=(run --home "$home")
    [ -n "$bootstrap" ] && args+=(--peer "$bootstrap")
    "$BIN" "${args[@]}" >"$home/run.log" 2>&1 &
    pids+=($!)
    # Wait for the node to print its address (at most 10 s).
    for _ in $(seq 1 100); do
        grep -q "^listening on " "$home/run.log" 2>/dev/null && break
        sleep 0.1
    done
    addr=$(grep -m1 "^listening on " "$home/run.log" | cut -d' ' -f3)
    [ -z "$addr" ] && { echo "node $domain did not start; see $home/run.log" >&2; exit 1; }
    [ -z "$bootstrap" ] && bootstrap=$addr
    echo "$domain  api 127.0.0.1:$((8100 + i))  p2p $addr  (log: $home/run.log)"
done

cat <<HELP

Try:
  $BIN status --api 127.0.0.1:8100
  $BIN check examples/orders.yaml
  $BIN publish --api 127.0.0.1:8100 examples/orders.yaml
  $BIN catalog --api 127.0.0.1:8101
Ctrl-C stops every node.
HELP
wait
