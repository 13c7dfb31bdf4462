#!/usr/bin/env bash
# One-time set-up on a fresh Debian 12 machine (run as root): system packages, then a
# virtualenv in .venv with the project installed in editable mode with its test extras.
# Safe to run again: apt-get and pip skip what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  gcc libc6-dev libssl-dev python3-dev pkg-config make   # build of the C fast path
  iproute2 nftables iputils-ping util-linux              # network namespaces, firewall
  iperf3 tshark                                          # traffic and wire checks
  strongswan-charon strongswan-swanctl strongswan-pki    # interop peer
  libcharon-extra-plugins libstrongswan-extra-plugins libstrongswan-standard-plugins
  wireshark-common
  openssl ca-certificates procps psmisc
  openvpn ocserv openconnect wireguard-go wireguard-tools  # bench/ baseline rows
)

if [ "$(id -u)" -ne 0 ]; then
  echo "setup.sh: run as root (it installs Debian packages and the tests use network namespaces)" >&2
  exit 1
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  echo "setup.sh: apt-get install ${missing[*]}"
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections || true
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip setuptools wheel 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -m pip install -q -e '.[test]' 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -c "import vpn.fastpath" || { echo "setup.sh: the C fast path did not build" >&2; exit 1; }
