#!/usr/bin/env bash
# The protocol core must stay sans-IO: no async runtime, no networking, no storage engine.
# Fails if any of them appears anywhere in mesh-protocol's normal dependency tree.
set -euo pipefail
cd "$(dirname "$0")/.."
forbidden='^(tokio|libp2p[a-z0-9-]*|sled|async-std|mio) v'
found=$(cargo tree -p mesh-protocol -e normal --prefix none --no-dedupe | grep -E "$forbidden" | sort -u || true)
if [ -n "$found" ]; then
    echo "mesh-protocol must not depend on IO crates, but its tree has:" >&2
    echo "$found" >&2
    exit 1
fi
echo "sans-IO check: mesh-protocol depends on none of tokio, libp2p, sled, async-std, mio"
