#!/usr/bin/env bash
# droplet-image.sh [bookworm|trixie] [--check]
#
# Builds and caches the docker image pdsup-droplet:<release>: a Debian rootfs from
# debootstrap (minbase + systemd, sshd, sudo, curl, gnupg, ...) booted with /sbin/init.
#   - test key pair $PDSUP_CACHE/keys/id_ed25519 (generated once), authorized for
#     root, deploy (passwordless sudo) and pwuser (sudo asks for 'pwuser-test-password')
#   - apt inside uses the Debian mirror(s) of this machine's apt sources
#   - nothing droplet-specific: sshd host keys are created at each droplet's first boot,
#     /etc/machine-id is empty
# The image carries label pdsup.recipe=<hash of this script, the key, the release and
# the mirrors>; it is rebuilt only when that hash changes.
# --check: exit 0 when the image is present and current, 1 otherwise (builds nothing).
source "$(dirname "$0")/common.sh"

RELEASE=bookworm
CHECK_ONLY=0
for arg in "$@"; do
  case "$arg" in
    bookworm|trixie) RELEASE=$arg ;;
    --check) CHECK_ONLY=1 ;;
    *) die "unknown argument '$arg'" "usage: $0 [bookworm|trixie] [--check]" ;;
  esac
done
IMAGE="$IMAGE_REPO:$RELEASE"

MIRROR="${PDSUP_DEBIAN_MIRROR:-$(host_mirror debian)}"
SECURITY_MIRROR="${PDSUP_DEBIAN_SECURITY_MIRROR:-$(host_mirror debian-security)}"

ensure_key() {
  [ -f "$KEY" ] && [ -f "$KEY.pub" ] && return
  log "generating test key $KEY"
  mkdir -p "$(dirname "$KEY")"
  chmod 700 "$(dirname "$KEY")"
  rm -f "$KEY" "$KEY.pub"
  ssh-keygen -q -t ed25519 -N '' -C pdsup-test -f "$KEY"
}

recipe_hash() {
  { cat "$0"; cat "$KEY.pub"; echo "$RELEASE $MIRROR $SECURITY_MIRROR"; } | sha256sum | cut -c1-32
}

current_label() {
  docker image inspect "$IMAGE" -f '{{index .Config.Labels "pdsup.recipe"}}' 2>/dev/null || true
}

# --- the rootfs -------------------------------------------------------------------

configure_rootfs() {
  local root=$1 pub
  pub=$(cat "$KEY.pub")

  # apt: the host's mirror, with updates and security like a cloud image.
  rm -f "$root/etc/apt/sources.list"
  cat >"$root/etc/apt/sources.list.d/debian.sources" <<EOS
Types: deb
URIs: $MIRROR
Suites: $RELEASE $RELEASE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY_MIRROR
Suites: $RELEASE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOS
  # The mirror may be a dated snapshot: do not reject its Release files as expired.
  cat >"$root/etc/apt/apt.conf.d/99pdsup-test-mirror" <<'EOS'
Acquire::Check-Valid-Until "false";
Acquire::Check-Date "false";
EOS

  # sshd host keys: none in the image; each droplet makes its own at first boot.
  rm -f "$root"/etc/ssh/ssh_host_*
  cat >"$root/etc/systemd/system/ssh-hostkeys.service" <<'EOS'
[Unit]
Description=Generate this droplet's SSH host keys (pdsup test image)
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A
RemainAfterExit=yes

[Install]
WantedBy=multi-user.target
RequiredBy=ssh.service
EOS
  chroot "$root" systemctl enable ssh-hostkeys.service ssh.service >/dev/null 2>&1 \
    || die "systemctl enable failed in the rootfs" "inspect $root"

  # A new machine id per droplet (systemd fills an empty file at boot).
  : >"$root/etc/machine-id"
  rm -f "$root/var/lib/dbus/machine-id"

  # Units that only make sense on a real machine.
  for unit in systemd-remount-fs.service console-getty.service; do
    chroot "$root" systemctl mask "$unit" >/dev/null 2>&1 || true
  done

  # Users: root, deploy (passwordless sudo), pwuser (sudo needs its password).
  chroot "$root" useradd -m -s /bin/bash deploy
  chroot "$root" useradd -m -s /bin/bash -G sudo pwuser
  echo 'pwuser:pwuser-test-password' | chroot "$root" chpasswd
  echo 'deploy ALL=(ALL) NOPASSWD:ALL' >"$root/etc/sudoers.d/deploy"
  chmod 0440 "$root/etc/sudoers.d/deploy"
  local u home
  for u in root deploy pwuser; do
    home=$([ "$u" = root ] && echo /root || echo "/home/$u")
    mkdir -p "$root$home/.ssh"
    echo "$pub" >"$root$home/.ssh/authorized_keys"
    chmod 700 "$root$home/.ssh"
    chmod 600 "$root$home/.ssh/authorized_keys"
    chroot "$root" chown -R "$u:$u" "$home/.ssh"
  done

  # Leave no build-time state behind.
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin \
         "$root"/var/cache/apt/archives/*.deb "$root"/var/log/*.log "$root"/tmp/* \
         "$root"/root/.bash_history
  mkdir -p "$root/var/lib/apt/lists/partial"
}

build() {
  local hash=$1
  local root="$PDSUP_CACHE/build/$RELEASE.rootfs" debs="$PDSUP_CACHE/debs/$RELEASE"
  local blog="$LOG_DIR/droplet-image-$RELEASE.log"
  command -v debootstrap >/dev/null || {
    need_root
    log "installing debootstrap"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >>"$LOG_DIR/apt.log" 2>&1
  } || die "could not install debootstrap" "apt-get install debootstrap"
  need_root
  log "building $IMAGE from $MIRROR (log: $blog)"
  rm -rf "$root"
  mkdir -p "$root" "$debs"
  local t0=$SECONDS
  debootstrap --variant=minbase --cache-dir="$debs" \
    --include=systemd,systemd-sysv,dbus,openssh-server,sudo,ca-certificates,curl,gnupg,iproute2 \
    "$RELEASE" "$root" "$MIRROR" >"$blog" 2>&1 \
    || die "debootstrap $RELEASE failed" "read $blog (mirror: $MIRROR)"
  log "debootstrap done in $((SECONDS - t0)) s"
  configure_rootfs "$root" >>"$blog" 2>&1 || die "configuring the rootfs failed" "read $blog"
  local old
  old=$(docker image inspect "$IMAGE" -f '{{.Id}}' 2>/dev/null || true)
  tar -C "$root" --numeric-owner -c . | docker import \
      -c "LABEL pdsup.recipe=$hash" -c "LABEL pdsup.release=$RELEASE" \
      -c 'ENV container=docker' -c 'CMD ["/sbin/init"]' - "$IMAGE" >/dev/null \
    || die "docker import failed" "check the engine: $HARNESS_DIR/engine.sh"
  rm -rf "$root"
  # Drop the previous build unless a droplet still uses it.
  [ -n "$old" ] && docker rmi "$old" >/dev/null 2>&1 || true
  log "built $IMAGE in $((SECONDS - t0)) s"
}

main() {
  if [ "$CHECK_ONLY" = 1 ] && [ ! -f "$KEY.pub" ]; then
    echo "test key $KEY is missing: run $HARNESS_DIR/droplet-image.sh $RELEASE" >&2
    return 1
  fi
  ensure_key
  local hash
  hash=$(recipe_hash)
  if [ "$(current_label)" = "$hash" ]; then
    [ "$CHECK_ONLY" = 1 ] || log "$IMAGE is up to date"
    return 0
  fi
  if [ "$CHECK_ONLY" = 1 ]; then
    echo "$IMAGE is missing or stale: run $HARNESS_DIR/droplet-image.sh $RELEASE" >&2
    return 1
  fi
  engine_ok || die "the docker engine does not answer" "run $HARNESS_DIR/engine.sh"
  build "$hash"
}

if [ "$CHECK_ONLY" = 1 ]; then
  # No lock: a check must not wait behind a build.
  main
else
  with_lock "image-$RELEASE" main
fi
