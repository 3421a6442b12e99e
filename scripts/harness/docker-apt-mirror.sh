#!/usr/bin/env bash
# docker-apt-mirror.sh: a local apt repository laid out like Docker's
# (https://download.docker.com/linux), so that pdsup's default Docker path
# (`--docker-source docker`) runs for real against it, signed by a test key:
#
#   $PDSUP_CACHE/mirror/docker-apt/linux/debian/dists/<codename>/{InRelease,Release,Release.gpg}
#   $PDSUP_CACHE/mirror/docker-apt/linux/debian/dists/<codename>/stable/binary-amd64/Packages{,.gz}
#   $PDSUP_CACHE/mirror/docker-apt/linux/debian/dists/<codename>/pool/stable/amd64/*.deb
#
# for <codename> = bookworm and trixie, served by services.sh as
# http://10.213.0.1:8080/docker-apt/linux (pdsup appends /debian, as for Docker's own).
# Signed by tests/fixtures/docker-apt/mirror-key (the key pdsup is told to trust with
# --docker-apt-key). The same packages under mirror/docker-apt-other-key/ are signed by
# tests/fixtures/docker-apt/other-key instead, for the refusal test.
#
# The packages stand in for Docker's, under Docker's names: Debian's own `docker.io`
# conflicts with `docker-ce`/`docker-ce-cli`, so a stand-in cannot simply depend on it.
# Instead `docker-ce` is Debian's docker.io repackaged under Docker's name (same files,
# same maintainer scripts, so a working engine); `docker-ce-cli` is trixie's docker-cli
# repackaged (on bookworm docker.io carries the CLI itself, so it is an empty package);
# `containerd.io` is an empty package depending on Debian's containerd and runc. The
# Debian .debs come from each droplet image's own apt (a throw-away container on the
# droplet network), so they match what the droplets install. The repository is built
# with apt-ftparchive (apt-utils), dpkg-deb and gpg.
#
# Idempotent: the Debian .debs are downloaded once, and the repository is rebuilt only
# when this script, the keys or the .debs change. Prints the trusted base URL on stdout.
source "$(dirname "$0")/common.sh"

RELEASES=(bookworm trixie)
FIXTURES="$REPO_DIR/tests/fixtures/docker-apt"
WORK="$PDSUP_CACHE/docker-apt"                      # downloaded .debs, built stand-ins
TRUSTED="$PDSUP_CACHE/mirror/docker-apt"
UNTRUSTED="$PDSUP_CACHE/mirror/docker-apt-other-key"
APT_LOG="$LOG_DIR/docker-apt-mirror.log"

for tool in apt-ftparchive dpkg-deb gpg gpgv docker sha256sum; do
  command -v "$tool" >/dev/null \
    || die "$tool is missing" "run scripts/harness/install-deps.sh (apt-ftparchive is in apt-utils)"
done

# The Debian packages the stand-ins are made of, per release.
debian_debs() {
  case "$1" in
    bookworm) echo docker.io ;;
    trixie) echo docker.io docker-cli ;;
  esac
}

# download RELEASE: Debian's .debs into $WORK/debian/RELEASE, through the droplet image.
download() {
  local release=$1 dir="$WORK/debian/$1" pkgs
  pkgs=$(debian_debs "$release")
  local missing=0 p
  for p in $pkgs; do
    compgen -G "$dir/${p}_*.deb" >/dev/null || missing=1
  done
  [ "$missing" = 0 ] && return
  "$HARNESS_DIR/droplet-image.sh" "$release" --check \
    || die "the droplet image $IMAGE_REPO:$release is missing or stale" "run scripts/harness/up.sh first"
  log "downloading $pkgs for $release (through $IMAGE_REPO:$release's apt)"
  rm -rf "$dir" && mkdir -p "$dir"
  docker run --rm --network "$NETWORK" --entrypoint /bin/sh -v "$dir:/out" "$IMAGE_REPO:$release" \
    -c "apt-get update -qq && cd /out && apt-get download -qq $pkgs" >>"$APT_LOG" 2>&1 \
    || { rm -rf "$dir"; die "downloading $pkgs for $release failed" "read $APT_LOG"; }
}

# control_field FILE FIELD
control_field() { sed -n "s/^$2: //p" "$1" | head -n1; }

# drop_relations "a, b (>= 1), c" "b c": the relation list without the named packages.
drop_relations() {
  local list=$1 drop=$2
  echo "$list" | tr ',' '\n' | sed 's/^ *//; s/ *$//' | while read -r rel; do
    [ -n "$rel" ] || continue
    local name=${rel%% *}
    case " $drop " in *" $name "*) ;; *) echo "$rel" ;; esac
  done | paste -sd, - | sed 's/,/, /g'
}

# set_field FILE FIELD VALUE: replace (or, empty VALUE, remove) a control field.
set_field() {
  local file=$1 field=$2 value=$3
  sed -i "/^$field: /d" "$file"
  if [ -n "$value" ]; then
    # Before the Description, which may span several lines and must stay last.
    sed -i "/^Description: /i $field: $value" "$file"
  fi
}

# repack DEB NEWNAME DEPENDS_EXTRA DROP_FROM_RELATIONS OUT_DIR: the same files and
# maintainer scripts under Docker's package name.
repack() {
  local deb=$1 name=$2 extra=$3 drop=$4 out=$5 tmp
  tmp=$(mktemp -d)
  dpkg-deb -R "$deb" "$tmp/pkg"
  local control="$tmp/pkg/DEBIAN/control" orig field value
  orig=$(control_field "$control" Package)
  sed -i "s/^Package: .*/Package: $name/" "$control"
  for field in Depends Recommends Suggests Conflicts Breaks Replaces Provides; do
    value=$(control_field "$control" "$field")
    [ -n "$value" ] || continue
    set_field "$control" "$field" "$(drop_relations "$value" "$drop")"
  done
  if [ -n "$extra" ]; then
    value=$(control_field "$control" Depends)
    set_field "$control" Depends "${value:+$value, }$extra"
  fi
  sed -i "s/^Description: .*/Description: pdsup test stand-in for Docker's $name (Debian's $orig repackaged)/" "$control"
  local version arch
  version=$(control_field "$control" Version)
  arch=$(control_field "$control" Architecture)
  dpkg-deb --root-owner-group -Zgzip -z1 -b "$tmp/pkg" "$out/${name}_${version}_${arch}.deb" >/dev/null
  rm -rf "$tmp"
}

# empty NAME DEPENDS OUT_DIR DESCRIPTION: a package with no files.
empty() {
  local name=$1 depends=$2 out=$3 what=$4 tmp
  tmp=$(mktemp -d)
  mkdir -p "$tmp/pkg/DEBIAN"
  {
    echo "Package: $name"
    echo "Version: 1.0~pdsup-test"
    echo "Architecture: amd64"
    echo "Maintainer: pdsup tests <tests@pdsup.invalid>"
    [ -n "$depends" ] && echo "Depends: $depends"
    echo "Description: pdsup test stand-in for Docker's $name ($what)"
  } >"$tmp/pkg/DEBIAN/control"
  dpkg-deb --root-owner-group -b "$tmp/pkg" "$out/${name}_1.0~pdsup-test_amd64.deb" >/dev/null
  rm -rf "$tmp"
}

# standins RELEASE OUT_DIR: docker-ce, docker-ce-cli, containerd.io for RELEASE.
standins() {
  local release=$1 out=$2 dir="$WORK/debian/$1"
  mkdir -p "$out"
  empty containerd.io "containerd, runc" "$out" "Debian's containerd and runc"
  case "$release" in
    bookworm)
      empty docker-ce-cli "" "$out" "on bookworm the CLI is in docker-ce, as in Debian's docker.io"
      repack "$dir"/docker.io_*.deb docker-ce "containerd.io, docker-ce-cli" \
        "docker-ce docker-ce-cli docker-ce-rootless-extras" "$out"
      ;;
    trixie)
      repack "$dir"/docker-cli_*.deb docker-ce-cli "" "docker-ce-cli podman-docker" "$out"
      repack "$dir"/docker.io_*.deb docker-ce "containerd.io, docker-ce-cli" \
        "docker-ce docker-ce-cli docker-ce-rootless-extras docker-cli" "$out"
      ;;
  esac
}

# publish ROOT RELEASE POOL_SRC KEY_FPR: dists/RELEASE of ROOT/linux/debian, signed.
publish() {
  local root=$1/linux/debian release=$2 pool_src=$3 fpr=$4
  local dist="dists/$release"
  rm -rf "${root:?}/$dist" && mkdir -p "$root/$dist/stable/binary-amd64" "$root/$dist/pool/stable"
  cp -al "$pool_src" "$root/$dist/pool/stable/amd64"
  (
    cd "$root"
    apt-ftparchive packages "$dist/pool/stable/amd64" >"$dist/stable/binary-amd64/Packages" 2>>"$APT_LOG"
    gzip -9nk "$dist/stable/binary-amd64/Packages"
    apt-ftparchive \
      -o APT::FTPArchive::Release::Origin=Docker \
      -o "APT::FTPArchive::Release::Label=Docker CE (pdsup test mirror)" \
      -o "APT::FTPArchive::Release::Suite=$release" \
      -o "APT::FTPArchive::Release::Codename=$release" \
      -o APT::FTPArchive::Release::Architectures=amd64 \
      -o APT::FTPArchive::Release::Components=stable \
      release "$dist" >"$dist/Release.tmp" 2>>"$APT_LOG"
    mv "$dist/Release.tmp" "$dist/Release"
    gpg --batch --yes --quiet --local-user "$fpr!" --digest-algo SHA512 --clearsign \
      --output "$dist/InRelease" "$dist/Release"
    gpg --batch --yes --quiet --local-user "$fpr!" --digest-algo SHA512 --armor --detach-sign \
      --output "$dist/Release.gpg" "$dist/Release"
  ) || die "publishing $root/$dist failed" "read $APT_LOG"
}

fingerprint() { gpg --batch --with-colons --show-keys "$1" | awk -F: '/^fpr:/ {print $10; exit}'; }

build() {
  local release
  for release in "${RELEASES[@]}"; do download "$release"; done

  local stamp="$TRUSTED/.recipe" recipe
  recipe=$({ cat "$0" "$FIXTURES"/*.asc; sha256sum "$WORK"/debian/*/*.deb; } | sha256sum | cut -c1-32)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$recipe" ] && [ -f "$UNTRUSTED/.recipe" ]; then
    log "docker apt mirror is up to date"
  else
    log "building the docker apt mirror (${RELEASES[*]})"
    export GNUPGHOME
    GNUPGHOME=$(mktemp -d)
    trap 'gpgconf --kill gpg-agent 2>/dev/null; rm -rf "$GNUPGHOME"' EXIT
    gpg --batch --quiet --import "$FIXTURES/mirror-key.secret.asc" "$FIXTURES/other-key.secret.asc" 2>>"$APT_LOG" \
      || die "importing the test keys failed" "read $APT_LOG"
    local good other
    good=$(fingerprint "$FIXTURES/mirror-key.asc")
    other=$(fingerprint "$FIXTURES/other-key.asc")
    rm -rf "$WORK/standins" "$TRUSTED" "$UNTRUSTED"
    for release in "${RELEASES[@]}"; do
      standins "$release" "$WORK/standins/$release"
      publish "$TRUSTED" "$release" "$WORK/standins/$release" "$good"
      publish "$UNTRUSTED" "$release" "$WORK/standins/$release" "$other"
    done
    echo "$recipe" >"$UNTRUSTED/.recipe"
    echo "$recipe" >"$stamp"
  fi

  # Verify what is published, as apt would: the trusted tree with the mirror key only,
  # the other tree must not verify with it.
  local keyring
  keyring=$(mktemp)
  gpg --batch --dearmor <"$FIXTURES/mirror-key.asc" >"$keyring"
  for release in "${RELEASES[@]}"; do
    local dist="linux/debian/dists/$release"
    gpgv --quiet --keyring "$keyring" "$TRUSTED/$dist/InRelease" 2>>"$APT_LOG" \
      || { rm -f "$keyring" "$TRUSTED/.recipe"; die "InRelease of $release does not verify with the mirror key" "read $APT_LOG and re-run"; }
    if gpgv --quiet --keyring "$keyring" "$UNTRUSTED/$dist/InRelease" 2>/dev/null; then
      rm -f "$keyring" "$TRUSTED/.recipe"; die "the other-key tree of $release verifies with the mirror key" "re-run $0"
    fi
    for p in docker-ce docker-ce-cli containerd.io; do
      grep -q "^Package: $p\$" "$TRUSTED/$dist/stable/binary-amd64/Packages" \
        || { rm -f "$keyring" "$TRUSTED/.recipe"; die "$p is missing from $release's Packages" "re-run $0"; }
    done
  done
  rm -f "$keyring"
  log "docker apt mirror ready: http://$GATEWAY:8080/docker-apt/linux (other key: .../docker-apt-other-key/linux)"
  echo "http://$GATEWAY:8080/docker-apt/linux"
}

with_lock docker-apt-mirror build
