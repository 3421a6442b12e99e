#!/usr/bin/env bash
# up.sh: everything the harness tests need, idempotent and quick when cached:
# host packages, the outer Docker engine + droplet network, both droplet images,
# and the host-side services (mirror, Pebble, PLC). Run as root before `cargo test`.
source "$(dirname "$0")/common.sh"
need_root

t0=$SECONDS
# Host tools the harness and its tests use (Debian packages).
missing=()
for pair in debootstrap:debootstrap ssh:openssh-client ssh-keygen:openssh-client \
            ssh-keyscan:openssh-client curl:curl openssl:openssl pebble:pebble \
            python3:python3 flock:util-linux setsid:util-linux; do
  command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
done
[ -x /bin/busybox ] && /bin/busybox --help 2>&1 | head -1 | grep -q . \
  && ! ldd /bin/busybox >/dev/null 2>&1 || missing+=(busybox-static)
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
log "harness ready in $((SECONDS - t0)) s"
