#!/usr/bin/env bash
# up.sh: everything the harness tests need, idempotent and quick when cached:
# host packages, the outer Docker engine + droplet network, both droplet images,
# the host-side services (mirror, Pebble, PLC) and the copy of Docker's apt
# repository on the mirror (docker-apt-mirror.sh). Run as root before `cargo test`.
source "$(dirname "$0")/common.sh"
need_root

t0=$SECONDS
# Debian packages the harness scripts and the proof tests use (docker.io is
# engine.sh's business).
missing=()
for p in debootstrap openssh-client curl openssl pebble python3 util-linux busybox-static apt-utils gnupg; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  { apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } >>"$LOG_DIR/apt.log" 2>&1 \
    || die "apt-get install ${missing[*]} failed" "see $LOG_DIR/apt.log"
fi

"$HARNESS_DIR/engine.sh"
"$HARNESS_DIR/droplet-image.sh" bookworm
"$HARNESS_DIR/droplet-image.sh" trixie
"$HARNESS_DIR/services.sh" start
"$HARNESS_DIR/docker-apt-mirror.sh" >/dev/null
log "harness ready in $((SECONDS - t0)) s"
