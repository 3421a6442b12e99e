# shellcheck shell=bash
# Sourced by every script in scripts/harness/. Shared names and helpers of the
# "droplet in a box" test harness; see scripts/harness/README.md.

set -euo pipefail

HARNESS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$HARNESS_DIR/../.." && pwd)"

# Everything the harness builds or keeps (images' build dirs, keys, logs, pidfiles,
# the mirror's files). Scripts create whatever is missing in it.
PDSUP_CACHE="${PDSUP_CACHE:-/var/cache/pdsup-test}"
export PDSUP_CACHE

NETWORK=pdsup-droplets           # docker network of the droplets
SUBNET=10.213.0.0/24
GATEWAY=10.213.0.1               # host side of $NETWORK: mirror, Pebble, PLC listen here
OUTER_BIP=10.214.0.1/24          # outer dockerd's default bridge (never 172.17/16)
IMAGE_REPO=pdsup-droplet         # images are $IMAGE_REPO:<release>
DROPLET_PREFIX=pdsup-test-       # every droplet container's name starts with this
KEY="$PDSUP_CACHE/keys/id_ed25519"
LOG_DIR="$PDSUP_CACHE/log"
RUN_DIR="$PDSUP_CACHE/run"       # pidfiles

mkdir -p "$PDSUP_CACHE" "$LOG_DIR" "$RUN_DIR"

_ts() { date +%H:%M:%S; }
log()  { printf '[%s] %s: %s\n' "$(_ts)" "${0##*/}" "$*" >&2; }
warn() { printf '[%s] %s: WARNING: %s\n' "$(_ts)" "${0##*/}" "$*" >&2; }
# die "what went wrong" "what to do about it"
die() {
  printf '[%s] %s: ERROR: %s\n' "$(_ts)" "${0##*/}" "$1" >&2
  if [ $# -ge 2 ]; then printf '    -> %s\n' "$2" >&2; fi
  exit 1
}

need_root() {
  [ "$(id -u)" = 0 ] || die "must run as root" "re-run with sudo: sudo $0 $*"
}

# wait_for SECONDS DESCRIPTION CMD...: retry CMD every 0.5 s until it succeeds.
wait_for() {
  local secs=$1 what=$2; shift 2
  local deadline=$(( $(date +%s) + secs ))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then return 1; fi
    sleep 0.5
  done
  log "ready: $what"
}

# with_lock NAME CMD...: run CMD holding an exclusive lock (serialises parallel
# callers, e.g. several tests starting droplets while the image is (re)built).
with_lock() {
  local name=$1; shift
  mkdir -p "$RUN_DIR"
  (
    flock -w 1800 9 || die "timed out waiting for lock $RUN_DIR/$name.lock"
    "$@"
  ) 9>"$RUN_DIR/$name.lock"
}

engine_ok() { docker info >/dev/null 2>&1; }
network_ok() { docker network inspect "$NETWORK" >/dev/null 2>&1; }

# The mirror this machine's apt uses (deb822 .sources or one-line .list files).
# $1 = debian | debian-security. Override: PDSUP_DEBIAN_MIRROR / PDSUP_DEBIAN_SECURITY_MIRROR.
host_mirror() {
  local kind=$1 found
  found=$(
    {
      grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | cut -d: -f2- | tr ' ' '\n'
      grep -hE '^deb[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
        | sed 's/\[[^]]*\]//' | awk '{print $2}'
    } | grep -E "^https?://.*/$kind/?\$" | head -n1 | sed 's:/*$::'
  ) || true
  echo "${found:-http://deb.debian.org/$kind}"
}
