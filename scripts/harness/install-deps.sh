#!/usr/bin/env bash
# Debian packages the test suite needs on the test machine. Idempotent and quick
# when everything is already installed.
set -euo pipefail
packages=(docker.io debootstrap openssh-server openssh-client gnupg zip unzip curl
  ca-certificates apt-utils pebble busybox-static sqlite3 iproute2 python3 g++ make nodejs npm
  openssl xxd)  # openssl, xxd: scripts/floor.sh (the benchmark's floor) makes the PDS secrets
packages+=(dnsmasq-base)  # tests/dns.rs: a DNS server for `pdsup dns --check` (no service, just the binary)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# node/npm may come from elsewhere (nodesource, the image): accept any working one.
if command -v node >/dev/null && command -v npm >/dev/null; then
  missing=("${missing[@]/nodejs}"); missing=("${missing[@]/npm}")
fi
read -r -a missing <<< "${missing[*]}"
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
echo "system packages: ok"
