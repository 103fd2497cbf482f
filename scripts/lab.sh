#!/usr/bin/env bash
# The main job: build calico-rs and bring up a lab cluster of network namespaces on this machine
# (3 nodes, 2 pods each, a BIRD top-of-rack router), then print BGP status and pod reachability.
# Needs root. Everything it creates lives in network namespaces named crslab-*; nothing touches
# the host's own networking. Extra arguments go to `calico-lab-rs up` (e.g. --nodes 5, or
# --datastore kubernetes for the cluster held in a Kubernetes API server inside the lab).
# Remove it with: target/release/calico-lab-rs down
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "lab.sh: run as root (it creates network namespaces)" >&2
  exit 1
fi
. scripts/deps.sh
deps=("${LAB_DEPS[@]}")
case " $* " in *" kubernetes "*|*"=kubernetes "*) deps+=("${KUBE_DEPS[@]}") ;; esac
calico_rs_deps "${deps[@]}"
# The lab binary runs the calico-node-rs, calicoctl-rs and (for `--datastore kubernetes`) the
# test API server kube-test-server built beside it.
cargo build --release -p calico-node -p calico-lab -p kube-test-server --bins
target/release/calico-lab-rs down >/dev/null 2>&1 || true
exec target/release/calico-lab-rs up "$@"
