#!/usr/bin/env bash
# Runs every test: formatting, lints, unit tests and the network-namespace integration tests.
# Needs root (network namespaces); installs the Debian packages it needs if any is missing, and
# the tests' Python venv (scripts/deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
calico_rs_deps "${TEST_DEPS[@]}"
calico_rs_pyenv   # exports CALICO_RS_VENV for the tests that run Python (tests/manifests)
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --bins --examples
cargo test --workspace
