#!/usr/bin/env bash
# Installs what building and running shoal needs on a Debian machine (as root):
# a C toolchain for ring, iproute2 and util-linux for the namespaced nodes, runc for
# containers, busybox-static for the sample image, docker-registry for pull tests,
# nftables for task networking (outbound NAT of the node bridge, the overlay guard),
# tcpdump for the tests that look at the wire, and Rust.
set -euo pipefail
need=()
for p in build-essential pkg-config iproute2 util-linux procps ca-certificates curl tar \
         runc busybox-static tini docker-registry nftables tcpdump; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  [ -x "$HOME/.cargo/bin/cargo" ] || curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
fi
