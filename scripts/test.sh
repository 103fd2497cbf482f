#!/usr/bin/env bash
# Runs every test: formatting, lints, unit tests and the network-namespace integration tests.
# Needs root (network namespaces); installs the Debian packages it needs if any is missing
# (scripts/deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
calico_rs_deps "${TEST_DEPS[@]}"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --bins --examples
cargo test --workspace
