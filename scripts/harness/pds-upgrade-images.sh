#!/usr/bin/env bash
# pds-upgrade-images.sh: the images tests/e2e_upgrade.rs upgrades to, made from the PDS
# image pds-image.sh built (run that first). Prints the archive's path on stdout.
#
#   pdsup-test/pds:<V+1>  "good": the same @atproto/pds build with PDS_VERSION=<V+1>, so
#                         /xrpc/_health reports the new version. Not a second npm version:
#                         building a second @atproto/pds from npm doubles the slowest part
#                         of the harness (npm ci, better-sqlite3 compiled from source, ~10
#                         min on the 2-core test machine) for a test of how pdsup deploys
#                         an image, which does not depend on what changed inside it.
#   pdsup-test/pds:<V+2>  "bad": the same image whose command (`false`) exits at once, so
#                         it never becomes healthy and Nomad must revert the deployment.
#
# <V> is the version of the base image (label-free: read from its tag pdsup-test/pds:<V>).
# Output: $PDSUP_CACHE/pds-upgrade-images.tar (docker save of both tags). Idempotent:
# rebuilt only when the base image changed (its id is kept next to the archive).
source "$(dirname "$0")/common.sh"

BASE=ghcr.io/bluesky-social/pds:0.4
TARBALL="$PDSUP_CACHE/pds-upgrade-images.tar"
STAMP="$TARBALL.base"

engine_ok || die "the docker engine does not answer" "run $HARNESS_DIR/engine.sh"
base_id=$(docker image inspect "$BASE" -f '{{.Id}}' 2>/dev/null) \
  || die "$BASE is not in the engine" "run $HARNESS_DIR/pds-image.sh first"
version=$(docker image ls --format '{{.Tag}} {{.ID}}' pdsup-test/pds \
  | awk -v id="${base_id#sha256:}" 'index(id, $2) == 1 && $1 ~ /^[0-9]+\.[0-9]+\.[0-9]+$/ {print $1; exit}')
[ -n "$version" ] || die "no pdsup-test/pds:<version> tag for $BASE" "re-run $HARNESS_DIR/pds-image.sh --force"
IFS=. read -r major minor patch <<<"$version"
good="pdsup-test/pds:$major.$minor.$((patch + 1))"
bad="pdsup-test/pds:$major.$minor.$((patch + 2))"

if [ -f "$TARBALL" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$base_id" ] \
  && docker image inspect "$good" "$bad" >/dev/null 2>&1; then
  echo "$TARBALL"; exit 0
fi

make_image() { # TAG CHANGE...
  local tag=$1; shift
  local cid
  cid=$(docker create "$BASE") || die "docker create $BASE failed"
  local args=()
  for change in "$@"; do args+=(--change "$change"); done
  docker commit "${args[@]}" "$cid" "$tag" >/dev/null || { docker rm "$cid" >/dev/null; die "docker commit $tag failed"; }
  docker rm "$cid" >/dev/null
}
log "making $good (PDS_VERSION=${good##*:}) and $bad (exits at once) from $BASE ($version)"
make_image "$good" "ENV PDS_VERSION=${good##*:}" \
  "LABEL pdsup.test=\"@atproto/pds $version with PDS_VERSION=${good##*:}\""
make_image "$bad" "ENV PDS_VERSION=${bad##*:}" 'CMD ["false"]' \
  "LABEL pdsup.test=\"never healthy: its command exits\""
docker save -o "$TARBALL.tmp" "$good" "$bad" || die "docker save failed" "check free space in $PDSUP_CACHE"
mv "$TARBALL.tmp" "$TARBALL"
echo "$base_id" >"$STAMP"
echo "$TARBALL"
