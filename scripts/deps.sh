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
  calico_rs_apt "${need[@]}"
}

# Installs the given Debian packages (root only).
calico_rs_apt() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing $*: run as root to install them (apt-get)" >&2
    exit 1
  fi
  echo "installing $* (apt-get)" >&2
  export DEBIAN_FRONTEND=noninteractive
  [ -e /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; }
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# What the lab runs (kubectl too, with `--datastore kubernetes`: KUBE_DEPS).
LAB_DEPS=(bird2:bird gobgpd:gobgpd nftables:nft iproute2:ip iputils-ping:ping util-linux:setsid procps:sysctl)
# kubectl: kept if present (any version the tests' API server answers), else Debian's.
KUBE_DEPS=(kubernetes-client:kubectl)
# What the tests run besides (python3-pip and python3-venv: the tests' Python venv, below).
# containernetworking-plugins: the stock CNI plugins the CNI tests delegate to and chain with (not
# on PATH, so named by path); podman and runc run containers through our plugin, from a rootfs
# holding busybox-static; containerd's `ctr run --cni` does too.
TEST_DEPS=("${LAB_DEPS[@]}" "${KUBE_DEPS[@]}" frr:vtysh iperf3:iperf3 socat:socat netcat-openbsd:nc kmod:modprobe python3-pip:pip3
  containernetworking-plugins:/usr/lib/cni/host-local podman:podman runc:runc busybox-static:busybox containerd:ctr)

# The tests' Python venv (the manifest checker, the Kubernetes API test server's client checks):
# at ${CALICO_RS_VENV:-/root/.cache/calico-rs/venv}, made with `python3 -m venv` (Debian's
# python3-venv), with these PyPI packages installed by its own pip.
PY_DEPS=(kubernetes kubernetes-validate jsonschema pyyaml)
# The module each of PY_DEPS provides, in the same order.
PY_MODULES=(kubernetes kubernetes_validate jsonschema yaml)

# Creates the venv if it is missing and installs whichever of PY_DEPS it lacks; exports
# CALICO_RS_VENV. Idempotent, and one Python start when everything is there already.
calico_rs_pyenv() {
  export CALICO_RS_VENV="${CALICO_RS_VENV:-/root/.cache/calico-rs/venv}"
  local py="$CALICO_RS_VENV/bin/python3" need=() i
  if [ -x "$py" ] && "$py" -c "import $(IFS=,; echo "${PY_MODULES[*]}")" 2>/dev/null; then
    return 0
  fi
  if [ ! -x "$py" ]; then
    # Debian's python3 lacks ensurepip (so venv fails) until python3-venv is installed.
    if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
      calico_rs_apt python3-venv
    fi
    echo "creating the Python venv $CALICO_RS_VENV" >&2
    mkdir -p "$(dirname "$CALICO_RS_VENV")"
    python3 -m venv "$CALICO_RS_VENV" || { echo "python3 -m venv $CALICO_RS_VENV failed" >&2; exit 1; }
  fi
  for i in "${!PY_DEPS[@]}"; do
    "$py" -c "import ${PY_MODULES[$i]}" 2>/dev/null || need+=("${PY_DEPS[$i]}")
  done
  if [ "${#need[@]}" -eq 0 ]; then
    echo "$CALICO_RS_VENV: every package is there but importing them together fails" >&2
    "$py" -c "import $(IFS=,; echo "${PY_MODULES[*]}")"
    exit 1
  fi
  echo "installing ${need[*]} into $CALICO_RS_VENV (pip)" >&2
  "$py" -m pip install -q --disable-pip-version-check "${need[@]}" \
    || { echo "pip install ${need[*]} failed" >&2; exit 1; }
}
