#!/usr/bin/env bash
# Runs every test: formatting, lints, unit tests and the network-namespace integration tests.
# Needs root (network namespaces) and the Debian packages that .ci/run installs.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --bins --examples
cargo test --workspace
