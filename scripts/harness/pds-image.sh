#!/usr/bin/env bash
# pds-image.sh [--check] [--force]
#
# Builds the test stand-in for ghcr.io/bluesky-social/pds:0.4 (ghcr.io is not reachable
# here) from the npm package @atproto/pds pinned in tests/pds-image/package-lock.json,
# with our entry tests/pds-image/index.js. Recipe (see shared TESTING.md, "The PDS image"):
#   - rootfs: debootstrap --variant=minbase bookworm (+ dumb-init, ca-certificates),
#     docs/locales/apt lists removed
#   - /usr/local/bin/node: this machine's node binary (stripped of debug info)
#   - /app: package.json, node_modules from `npm ci --omit=dev` (better-sqlite3 compiled
#     against this node), index.js; dev files pruned (sqlite sources, build objects,
#     .ts/.d.ts/.map, docs)
#   - docker import with the official image's settings: ENTRYPOINT dumb-init --,
#     CMD node --enable-source-maps index.js, WORKDIR /app, PDS_PORT=3000,
#     NODE_ENV=production, UV_USE_IO_URING=0, EXPOSE 3000
# Tags: ghcr.io/bluesky-social/pds:0.4 and pdsup-test/pds:<@atproto/pds version>.
# Output: $PDSUP_CACHE/pds-image.tar (docker save of both tags) for the droplets'
# engines, with its recipe hash in $PDSUP_CACHE/pds-image.tar.recipe.
#
# Cached: nothing is rebuilt while the recipe hash (lockfile, package.json, index.js,
# this script, node version, Debian mirror) is unchanged; the image carries it as
# label pdsup.recipe. A current tarball with the image missing from the engine is
# just `docker load`ed.
#   --check  exit 0 when the tarball and the image are current, 1 otherwise (builds nothing)
#   --force  rebuild even when current
source "$(dirname "$0")/common.sh"

CHECK_ONLY=0
FORCE=0
for arg in "$@"; do
  case "$arg" in
    --check) CHECK_ONLY=1 ;;
    --force) FORCE=1 ;;
    *) die "unknown argument '$arg'" "usage: $0 [--check] [--force]" ;;
  esac
done

SRC="$REPO_DIR/tests/pds-image"
IMAGE=ghcr.io/bluesky-social/pds:0.4
TARBALL="$PDSUP_CACHE/pds-image.tar"
STAMP="$TARBALL.recipe"
BUILD="$PDSUP_CACHE/build"
BLOG="$LOG_DIR/pds-image.log"
RELEASE=bookworm
MIRROR="${PDSUP_DEBIAN_MIRROR:-}"

[ -n "$MIRROR" ] || MIRROR=$(host_mirror debian)   # common.sh

pds_version() {
  # The version npm ci will install: the lockfile's entry for @atproto/pds.
  node -e 'const l=require(process.argv[1]);console.log(l.packages["node_modules/@atproto/pds"].version)' \
    "$SRC/package-lock.json"
}

recipe_hash() {
  {
    cat "$0" "$SRC/package.json" "$SRC/package-lock.json" "$SRC/index.js"
    node --version
    echo "$RELEASE $MIRROR"
  } | sha256sum | cut -c1-32
}

image_label() {
  docker image inspect "$IMAGE" -f '{{index .Config.Labels "pdsup.recipe"}}' 2>/dev/null || true
}

# t_start / t_done WHAT: timings for the log (stderr).
t_start() { T0=$SECONDS; }
t_done() { log "$1: $((SECONDS - T0)) s"; }

# --- the base rootfs, cached as a tarball (debootstrap is the slow part) -------------

BASE_PKGS=dumb-init,ca-certificates
base_rootfs() { # -> path of the cached base tarball
  local key base
  key=$(echo "base $RELEASE $MIRROR $BASE_PKGS $(sed -n '/^base_rootfs()/,/^}/p' "$0" | sha256sum)" \
    | sha256sum | cut -c1-16)
  base="$BUILD/pds-base-$RELEASE-$key.tar"
  if [ -f "$base" ]; then echo "$base"; return; fi
  command -v debootstrap >/dev/null || {
    need_root
    log "installing debootstrap"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap; } >>"$LOG_DIR/apt.log" 2>&1
  } || die "could not install debootstrap" "apt-get install debootstrap"
  need_root
  local root="$BUILD/pds-base.rootfs"
  rm -rf "$root"; mkdir -p "$root" "$PDSUP_CACHE/debs/pds-$RELEASE"
  log "debootstrap $RELEASE minbase from $MIRROR (log: $BLOG)"
  t_start
  debootstrap --variant=minbase --include="$BASE_PKGS" --cache-dir="$PDSUP_CACHE/debs/pds-$RELEASE" \
    "$RELEASE" "$root" "$MIRROR" >>"$BLOG" 2>&1 \
    || die "debootstrap $RELEASE failed" "read $BLOG (mirror: $MIRROR)"
  t_done "debootstrap"
  # Nothing a container running node needs: docs, man pages, locales, apt's state.
  rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
         "$root"/usr/share/locale/* "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* \
         "$root"/var/cache/debconf/*-old "$root"/var/log/* "$root"/tmp/*
  : >"$root/etc/machine-id"
  rm -f "$BUILD"/pds-base-"$RELEASE"-*.tar
  tar -C "$root" --numeric-owner -cf "$base.tmp" . && mv "$base.tmp" "$base"
  rm -rf "$root"
  echo "$base"
}

# --- node_modules: npm ci once per lockfile ------------------------------------------

app_modules() { # -> dir holding package.json, package-lock.json and pruned node_modules
  local key dir
  key=$( { cat "$SRC/package.json" "$SRC/package-lock.json"; node --version;
           sed -n '/^app_modules()/,/^}/p' "$0"; } | sha256sum | cut -c1-16)
  dir="$BUILD/pds-app-$key"
  if [ -f "$dir/.done" ]; then echo "$dir"; return; fi
  rm -rf "$BUILD"/pds-app-*
  mkdir -p "$dir"
  cp "$SRC/package.json" "$SRC/package-lock.json" "$dir/"
  # better-sqlite3 has no prebuilt binary reachable here: node-gyp compiles it against
  # the headers of this machine's node (nodedir), so it matches the node we copy.
  local nodedir=()
  [ -f /usr/include/node/node.h ] && nodedir=(--nodedir=/usr)
  log "npm ci in $dir (log: $BLOG)"
  t_start
  (cd "$dir" && npm ci --omit=dev --no-audit --no-fund "${nodedir[@]}") >>"$BLOG" 2>&1 \
    || die "npm ci failed" "read $BLOG"
  t_done "npm ci"
  local nm="$dir/node_modules"
  [ -f "$nm/better-sqlite3/build/Release/better_sqlite3.node" ] \
    || die "better-sqlite3 was not compiled" "read $BLOG (node-gyp needs g++, make, python3 and node headers)"
  # Prune what only a build or an editor uses. Keep LICENSE files.
  ( cd "$nm/better-sqlite3" && rm -rf deps src build/Release/obj build/Release/obj.target \
      build/Release/.deps build/Release/test_extension.node build/deps build/*.mk \
      build/Makefile build/config.gypi build/node_gyp_bins )
  find "$nm" -type f \( -name '*.map' -o -name '*.ts' -o -name '*.mts' -o -name '*.cts' \
      -o -iname '*.md' -o -name '*.tsbuildinfo' \) -delete
  find "$nm" -depth -type d \( -name '__tests__' -o -name '.github' \) -exec rm -rf {} +
  rm -rf "$dir/.npm"
  touch "$dir/.done"
  echo "$dir"
}

# node-gyp compiles better-sqlite3: it needs a C++ compiler, make and python3.
ensure_build_tools() {
  local missing=() pair
  for pair in g++:g++ make:make python3:python3; do
    command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
  done
  [ ${#missing[@]} -eq 0 ] && return
  need_root
  log "installing ${missing[*]} (for node-gyp)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } \
    >>"$LOG_DIR/apt.log" 2>&1 || die "apt-get install ${missing[*]} failed" "see $LOG_DIR/apt.log"
}

# --- image ---------------------------------------------------------------------------

build() {
  local hash=$1 version base app root
  version=$(pds_version)
  need_root
  mkdir -p "$BUILD"
  : >"$BLOG"
  local t_all=$SECONDS
  base=$(base_rootfs)
  ensure_build_tools
  app=$(app_modules)

  root="$BUILD/pds.rootfs"
  rm -rf "$root"; mkdir -p "$root"
  t_start
  tar -C "$root" -xf "$base"
  install -m 0755 "$(readlink -f "$(command -v node)")" "$root/usr/local/bin/node"
  # The distribution's node carries debug info: 12 MB less without it.
  command -v strip >/dev/null && strip "$root/usr/local/bin/node"
  mkdir -p "$root/app"
  cp -a "$app/package.json" "$app/package-lock.json" "$app/node_modules" "$root/app/"
  install -m 0644 "$SRC/index.js" "$root/app/index.js"
  # Smoke test in the rootfs: the PDS loads and better-sqlite3 opens a database.
  chroot "$root" /bin/sh -c 'cd /app && /usr/local/bin/node -e "require(\"@atproto/pds\"); require(\"better-sqlite3\")(\":memory:\")"' >>"$BLOG" 2>&1 \
    || die "node or better-sqlite3 does not run inside the rootfs" "read $BLOG"
  t_done "assemble rootfs"

  t_start
  local old
  old=$(docker image inspect "$IMAGE" -f '{{.Id}}' 2>/dev/null || true)
  tar -C "$root" --numeric-owner -c . | docker import \
      -c 'ENTRYPOINT ["dumb-init", "--"]' \
      -c 'CMD ["node", "--enable-source-maps", "index.js"]' \
      -c 'WORKDIR /app' \
      -c 'EXPOSE 3000' \
      -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      -c 'ENV PDS_PORT=3000' -c 'ENV NODE_ENV=production' -c 'ENV UV_USE_IO_URING=0' \
      -c "LABEL pdsup.recipe=$hash" \
      -c "LABEL org.opencontainers.image.version=$version" \
      -c 'LABEL org.opencontainers.image.description="pdsup test stand-in for the AT Protocol PDS image (@atproto/pds from npm)"' \
      - "$IMAGE" >/dev/null \
    || die "docker import failed" "check the engine: $HARNESS_DIR/engine.sh"
  docker tag "$IMAGE" "pdsup-test/pds:$version"
  rm -rf "$root"
  t_done "docker import"
  if [ -n "$old" ] && [ "$old" != "$(docker image inspect "$IMAGE" -f '{{.Id}}')" ]; then
    docker rmi "$old" >/dev/null 2>&1 || true
  fi
  save "$hash" "$version"
  log "built $IMAGE (@atproto/pds $version) in $((SECONDS - t_all)) s; size $(image_size)"
}

save() {
  local hash=$1 version=$2
  t_start
  rm -f "$STAMP"
  docker save -o "$TARBALL.tmp" "$IMAGE" "pdsup-test/pds:$version" \
    || die "docker save failed" "check the engine and free space in $PDSUP_CACHE"
  mv "$TARBALL.tmp" "$TARBALL"
  echo "$hash" >"$STAMP"
  t_done "docker save ($(du -h "$TARBALL" | cut -f1) -> $TARBALL)"
}

image_size() {
  docker image inspect "$IMAGE" -f '{{.Size}}' | awk '{printf "%d MB", $1/1000/1000}'
}

main() {
  [ -f "$SRC/package-lock.json" ] || die "$SRC/package-lock.json is missing" "restore it from git"
  command -v node >/dev/null || die "node is not installed" "install node 20 (the image copies this machine's node)"
  local hash
  hash=$(recipe_hash)
  local tar_ok=0 img_ok=0
  [ -f "$TARBALL" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$hash" ] && tar_ok=1
  engine_ok && [ "$(image_label)" = "$hash" ] && img_ok=1
  if [ "$CHECK_ONLY" = 1 ]; then
    [ $tar_ok = 1 ] && [ $img_ok = 1 ] && return 0
    echo "$IMAGE or $TARBALL is missing or stale: run $HARNESS_DIR/pds-image.sh" >&2
    return 1
  fi
  engine_ok || die "the docker engine does not answer" "run $HARNESS_DIR/engine.sh"
  if [ $FORCE = 0 ] && [ $tar_ok = 1 ] && [ $img_ok = 1 ]; then
    log "$IMAGE is up to date ($TARBALL)"
    return 0
  fi
  if [ $FORCE = 0 ] && [ $tar_ok = 1 ]; then
    log "loading $TARBALL into the engine"
    t_start
    docker load -i "$TARBALL" >/dev/null || die "docker load failed" "re-run with --force"
    t_done "docker load"
    return 0
  fi
  if [ $FORCE = 0 ] && [ $img_ok = 1 ]; then
    save "$hash" "$(pds_version)"
    return 0
  fi
  build "$hash"
}

if [ "$CHECK_ONLY" = 1 ]; then
  main # no lock: a check must not wait behind a build
else
  with_lock pds-image main
fi
