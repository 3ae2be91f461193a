#!/usr/bin/env bash
# Runs the benchmarks on real daemons and rewrites BENCHMARKS.md (as root).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --locked --release -p shoal -p shoal-testbed
exec target/release/shoal-bench target/release/shoal BENCHMARKS.md
