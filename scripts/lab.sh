#!/usr/bin/env bash
# The main job: build calico-rs and bring up a lab cluster of network namespaces on this machine
# (3 nodes, 2 pods each, a BIRD top-of-rack router), then print BGP status and pod reachability.
# Needs root. Everything it creates lives in network namespaces named crslab-*; nothing touches
# the host's own networking. Extra arguments go to `calico-node-rs lab up` (e.g. --nodes 5).
# Remove it with: target/release/calico-node-rs lab down
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "lab.sh: run as root (it creates network namespaces)" >&2
  exit 1
fi
need=()
for pkg in bird2:bird gobgpd:gobgpd nftables:nft iproute2:ip iputils-ping:ping; do
  command -v "${pkg#*:}" >/dev/null || need+=("${pkg%%:*}")
done
if [ "${#need[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  [ -e /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; }
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
cargo build --release -p calico-node --bins
target/release/calico-node-rs lab down >/dev/null 2>&1 || true
exec target/release/calico-node-rs lab up "$@"
