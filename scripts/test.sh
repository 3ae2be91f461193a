#!/usr/bin/env bash
# Runs the whole test suite: unit tests, the store's Raft conformance suite, and the
# integration tests that start real daemons in network namespaces (needs root).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
if [ "$(id -u)" != 0 ]; then echo "run as root: the integration tests make network namespaces" >&2; exit 1; fi
cargo build --locked --workspace --all-targets
cargo test --locked --workspace -- --test-threads 4
