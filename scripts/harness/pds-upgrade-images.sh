#!/usr/bin/env bash
# pds-upgrade-images.sh: the images tests/e2e_upgrade.rs upgrades between, made from the PDS
# image pds-image.sh built (run that first). Prints the archive's path on stdout.
#
#   pdsup-test/pds:<O>    "older": a second npm version of @atproto/pds, <O> =
#                         $PDSUP_PDS_OLDER_NPM (default 0.4.209), installed with npm over the
#                         base image's /app. The site starts on it and upgrades to the base
#                         (<V>, the lockfile's version): two npm versions. Older, not newer:
#                         npm's next version after the base's 0.4.217 is 0.5.x, which needs
#                         Node 22 and a newer better-sqlite3 (compiled). 0.4.209 uses the same
#                         better-sqlite3 (10.x), so nothing compiles: `npm install` took 11 s on
#                         the test machine; its /app is kept in $PDSUP_CACHE/build (once per machine).
#   pdsup-test/pds:<V+1>  "good": the base build with PDS_VERSION=<V+1>, so /xrpc/_health
#                         reports the new version.
#   pdsup-test/pds:<V+2>  "bad": the same image whose command (`false`) exits at once, so
#                         it never becomes healthy and Nomad must revert the deployment.
#
# <V> is the version of the base image (label-free: read from its tag pdsup-test/pds:<V>).
# Output: $PDSUP_CACHE/pds-upgrade-images.tar (docker save of the three tags). Idempotent:
# rebuilt only when the base image or <O> changed (kept next to the archive).
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
OLDER_NPM="${PDSUP_PDS_OLDER_NPM:-0.4.209}"
older="pdsup-test/pds:$OLDER_NPM"
[ "$OLDER_NPM" != "$version" ] || die "PDSUP_PDS_OLDER_NPM is the base's own version $version"

if [ -f "$TARBALL" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$base_id $OLDER_NPM" ] \
  && docker image inspect "$good" "$bad" "$older" >/dev/null 2>&1; then
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
# The base image's /app with @atproto/pds at $OLDER_NPM: npm once per machine.
older_app() {
  local dir="$PDSUP_CACHE/build/pds-app-npm-$OLDER_NPM-${base_id:7:12}"
  if [ -f "$dir/.done" ]; then echo "$dir"; return; fi
  rm -rf "$PDSUP_CACHE"/build/pds-app-npm-*
  mkdir -p "$dir"
  local cid
  cid=$(docker create "$BASE") || die "docker create $BASE failed"
  docker cp "$cid:/app/." "$dir/" || { docker rm "$cid" >/dev/null; die "docker cp of /app failed"; }
  docker rm "$cid" >/dev/null
  local nodedir=()
  [ -f /usr/include/node/node.h ] && nodedir=(--nodedir=/usr)
  log "npm install @atproto/pds@$OLDER_NPM in $dir (log: $LOG_DIR/pds-upgrade-images.log)"
  ( cd "$dir" && npm install --omit=dev --no-audit --no-fund "${nodedir[@]}" "@atproto/pds@$OLDER_NPM" ) \
    >>"$LOG_DIR/pds-upgrade-images.log" 2>&1 || die "npm install failed" "read $LOG_DIR/pds-upgrade-images.log"
  local got
  got=$(node -p "require('$dir/node_modules/@atproto/pds/package.json').version")
  [ "$got" = "$OLDER_NPM" ] || die "npm installed @atproto/pds $got, not $OLDER_NPM"
  rm -rf "$dir/.npm"
  touch "$dir/.done"
  echo "$dir"
}

make_older() { # APP_DIR: the base image with its /app replaced
  local app=$1 cid entrypoint cmd
  entrypoint=$(docker image inspect -f '{{json .Config.Entrypoint}}' "$BASE")
  cmd=$(docker image inspect -f '{{json .Config.Cmd}}' "$BASE")
  cid=$(docker create --entrypoint sh "$BASE" -c 'rm -rf /app/node_modules /app/package.json /app/package-lock.json') \
    || die "docker create $BASE failed"
  docker start -a "$cid" >/dev/null && docker cp "$app/." "$cid:/app/" \
    && docker commit --change "ENTRYPOINT $entrypoint" --change "CMD $cmd" \
      --change "LABEL org.opencontainers.image.version=$OLDER_NPM" \
      --change "LABEL pdsup.test=\"@atproto/pds $OLDER_NPM from npm over $version's image\"" \
      "$cid" "$older" >/dev/null \
    || { docker rm "$cid" >/dev/null; die "making $older failed"; }
  docker rm "$cid" >/dev/null
}
log "making $older (@atproto/pds $OLDER_NPM from npm)"
make_older "$(older_app)"
log "making $good (PDS_VERSION=${good##*:}) and $bad (exits at once) from $BASE ($version)"
make_image "$good" "ENV PDS_VERSION=${good##*:}" \
  "LABEL pdsup.test=\"@atproto/pds $version with PDS_VERSION=${good##*:}\""
make_image "$bad" "ENV PDS_VERSION=${bad##*:}" 'CMD ["false"]' \
  "LABEL pdsup.test=\"never healthy: its command exits\""
docker save -o "$TARBALL.tmp" "$older" "$good" "$bad" || die "docker save failed" "check free space in $PDSUP_CACHE"
mv "$TARBALL.tmp" "$TARBALL"
echo "$base_id $OLDER_NPM" >"$STAMP"
echo "$TARBALL"
