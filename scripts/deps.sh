#!/usr/bin/env bash
# Sourced by lab.sh and test.sh: puts rustup's cargo on PATH and installs, with apt-get, whichever
# Debian packages of the list below are missing (one per command the lab or the tests run). Needs
# root for the install. Packaged services (bird, gobgpd, frr) are kept from starting: calico-rs starts
# its own inside network namespaces.

# rustup's cargo, wherever the login profile would have put it on PATH.
export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo >/dev/null || { echo "cargo not found: install Rust with rustup (https://rustup.rs)" >&2; exit 1; }

# Installs the packages of the given package:command pairs whose command is missing.
calico_rs_deps() {
  local need=() pkg
  for pkg in "$@"; do
    command -v "${pkg#*:}" >/dev/null || need+=("${pkg%%:*}")
  done
  [ "${#need[@]}" -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing ${need[*]}: run as root to install them (apt-get)" >&2
    exit 1
  fi
  echo "installing ${need[*]} (apt-get)" >&2
  export DEBIAN_FRONTEND=noninteractive
  [ -e /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; }
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

# What the lab runs.
LAB_DEPS=(bird2:bird gobgpd:gobgpd nftables:nft iproute2:ip iputils-ping:ping util-linux:setsid procps:sysctl)
# What the tests run besides.
TEST_DEPS=("${LAB_DEPS[@]}" frr:vtysh iperf3:iperf3 socat:socat netcat-openbsd:nc kmod:modprobe)
