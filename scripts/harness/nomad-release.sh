#!/usr/bin/env bash
# nomad-release.sh [VERSION]: packages the Nomad *test double* (tests/nomad-double, not
# HashiCorp Nomad) like a HashiCorp release, so that pdsup installs it through its real
# download-and-verify path from the harness mirror:
#
#   $PDSUP_CACHE/mirror/nomad/<V>/nomad_<V>_linux_amd64.zip       (contains `nomad`)
#   $PDSUP_CACHE/mirror/nomad/<V>/nomad_<V>_SHA256SUMS            (sha256sum format)
#   $PDSUP_CACHE/mirror/nomad/<V>/nomad_<V>_SHA256SUMS.sig        (detached, binary)
#   $PDSUP_CACHE/mirror/test-release-key.asc                      (public key, armored)
#
# served by services.sh at http://10.213.0.1:8080/nomad/<V>/... . V defaults to
# $NOMAD_DOUBLE_VERSION, else 1.10.5; the double reports it in `nomad version` and
# /v1/agent/self. The signing key is a test RSA 3072 key made once (no passphrase) in
# $PDSUP_CACHE/gnupg. Idempotent: cargo rebuilds only when the source changed, and the
# files are rewritten only when the binary changed. Prints the zip's path on stdout.
#
# Without a version, the mirror also gets a second release of the same double,
# $NOMAD_DOUBLE_SECOND_VERSION (default 1.10.6), for tests/e2e_upgrade.rs's
# `upgrade --nomad`: made once (skipped while its signed files are there), and before
# the default one, so that target/double/nomad is left as the default version.
source "$(dirname "$0")/common.sh"

V="${1:-${NOMAD_DOUBLE_VERSION:-1.10.5}}"
[[ "$V" =~ ^[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.-]+)?$ ]] \
  || die "bad version '$V'" "give a version like 1.10.5 (no leading v)"
OUT="$PDSUP_CACHE/mirror/nomad/$V"
ZIP="nomad_${V}_linux_amd64.zip"
SUMS="nomad_${V}_SHA256SUMS"
KEY_ASC="$PDSUP_CACHE/mirror/test-release-key.asc"
export GNUPGHOME="$PDSUP_CACHE/gnupg"
KEY_UID="pdsup test release key (not HashiCorp) <test-release@pdsup.invalid>"

for tool in cargo zip gpg gpgv sha256sum; do
  command -v "$tool" >/dev/null || die "$tool is missing" "apt-get install zip gnupg gpgv coreutils (cargo: rustup)"
done

release() {
  # 1. Build (a no-op when nothing changed; a new version forces a rebuild via option_env!).
  # The `double` profile (Cargo.toml): optimised, without the shipped binary's LTO.
  log "building nomad-double $V (profile double)"
  ( cd "$REPO_DIR" && NOMAD_DOUBLE_VERSION="$V" cargo build --quiet -p nomad-double --profile double ) \
    || die "cargo build -p nomad-double --profile double failed" "fix the build, then re-run $0"
  local target="${CARGO_TARGET_DIR:-$REPO_DIR/target}"
  local bin="$target/double/nomad"
  [ -x "$bin" ] || die "$bin missing after the build"
  local got
  got=$("$bin" version)
  [ "$got" = "Nomad v$V (pdsup test double, not HashiCorp Nomad)" ] \
    || die "the built binary reports '$got', not v$V" "touch tests/nomad-double/src/main.rs and re-run"

  # 2. The signing key, made once.
  mkdir -p -m 700 "$GNUPGHOME"
  if ! gpg --batch --list-secret-keys "$KEY_UID" >/dev/null 2>&1; then
    log "generating the test release key (RSA 3072) in $GNUPGHOME"
    gpg --batch --quiet --pinentry-mode loopback --passphrase '' \
      --quick-generate-key "$KEY_UID" rsa3072 sign never 2>>"$LOG_DIR/nomad-release.log" \
      || die "gpg key generation failed" "read $LOG_DIR/nomad-release.log"
  fi
  local fpr
  fpr=$(gpg --batch --with-colons --list-secret-keys "$KEY_UID" 2>/dev/null | awk -F: '/^fpr:/ {print $10; exit}')
  [ -n "$fpr" ] || die "no fingerprint for the test release key in $GNUPGHOME"
  mkdir -p "$OUT"
  gpg --batch --armor --export "$fpr" >"$KEY_ASC.tmp" && mv "$KEY_ASC.tmp" "$KEY_ASC"

  # 3. Package, unless these exact bytes are already packaged and signed.
  local bin_sum stamp="$OUT/.nomad.sha256"
  bin_sum=$(sha256sum "$bin" | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$bin_sum:$fpr" ] \
     && [ -f "$OUT/$ZIP" ] && [ -f "$OUT/$SUMS" ] && [ -f "$OUT/$SUMS.sig" ]; then
    log "release $V is up to date"
  else
    log "packaging $OUT/$ZIP"
    local tmp
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' RETURN
    install -m 0755 "$bin" "$tmp/nomad"
    touch -d '2025-01-01 00:00:00 UTC' "$tmp/nomad"   # same bytes in, same zip out
    ( cd "$tmp" && zip -q -X "$ZIP" nomad )
    ( cd "$tmp" && sha256sum "$ZIP" >"$SUMS" )
    gpg --batch --yes --quiet --pinentry-mode loopback --passphrase '' --local-user "$fpr" \
      --detach-sign --output "$tmp/$SUMS.sig" "$tmp/$SUMS"
    mv "$tmp/$ZIP" "$tmp/$SUMS" "$tmp/$SUMS.sig" "$OUT/"
    echo "$bin_sum:$fpr" >"$stamp"
  fi

  # 4. Verify what is published, as a client would: signature, then checksum.
  local keyring
  keyring=$(mktemp)
  gpg --batch --dearmor <"$KEY_ASC" >"$keyring"
  gpgv --quiet --keyring "$keyring" "$OUT/$SUMS.sig" "$OUT/$SUMS" 2>>"$LOG_DIR/nomad-release.log" \
    || { rm -f "$keyring"; die "signature check of $OUT/$SUMS failed" "read $LOG_DIR/nomad-release.log; delete $OUT and re-run"; }
  rm -f "$keyring"
  ( cd "$OUT" && sha256sum --check --quiet "$SUMS" ) \
    || die "checksum of $OUT/$ZIP does not match $SUMS" "delete $OUT and re-run"
  gpgconf --kill gpg-agent 2>/dev/null || true   # the agent of $GNUPGHOME only
  log "release $V ready: http://$GATEWAY:8080/nomad/$V/$ZIP (key: $KEY_ASC)"
  echo "$OUT/$ZIP"
}

SECOND="${NOMAD_DOUBLE_SECOND_VERSION:-1.10.6}"
if [ $# -eq 0 ] && [ -z "${NOMAD_DOUBLE_VERSION:-}" ] && [ "$SECOND" != "$V" ] \
   && ! [ -f "$PDSUP_CACHE/mirror/nomad/$SECOND/nomad_${SECOND}_SHA256SUMS.sig" ]; then
  "$0" "$SECOND" >/dev/null || die "making the second release $SECOND failed"
fi
with_lock nomad-release release
