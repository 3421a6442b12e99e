#!/usr/bin/env bash
# engine.sh: make sure the outer Docker engine runs and the droplet network exists.
#   - installs Debian's docker.io when `docker`/`dockerd` are missing
#   - starts dockerd in the background (setsid nohup, --bip 10.214.0.1/24) when
#     `docker info` fails; log: $PDSUP_CACHE/log/dockerd.log
#   - creates network pdsup-droplets (10.213.0.0/24, gateway 10.213.0.1)
# Idempotent: a second run only checks.
source "$(dirname "$0")/common.sh"

ensure_docker_installed() {
  if command -v docker >/dev/null && command -v dockerd >/dev/null; then return; fi
  need_root
  log "installing docker.io (apt-get)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >>"$LOG_DIR/apt.log" 2>&1 \
    || die "apt-get install docker.io failed" "see $LOG_DIR/apt.log"
}

ensure_dockerd() {
  if engine_ok; then return; fi
  need_root
  if pgrep -x dockerd >/dev/null; then
    log "dockerd is running but not answering yet; waiting"
  else
    log "starting dockerd --bip $OUTER_BIP (log: $LOG_DIR/dockerd.log)"
    # No systemd on the test machine: run it detached from this shell.
    # 9>&-: do not hand our lock (see with_lock) to the daemon.
    setsid nohup dockerd --bip "$OUTER_BIP" >>"$LOG_DIR/dockerd.log" 2>&1 </dev/null 9>&- &
  fi
  wait_for 60 "docker engine" docker info \
    || die "dockerd did not answer within 60 s" "read $LOG_DIR/dockerd.log"
}

check_bridge_subnet() {
  # The droplets run their own Docker on 172.17.0.0/16; an outer engine on the same
  # subnet routes replies into the inner bridge (SSH resets). Refuse that setup.
  local subnet
  subnet=$(docker network inspect bridge -f '{{range .IPAM.Config}}{{.Subnet}} {{end}}' 2>/dev/null || true)
  case "$subnet" in
    *172.17.*) die "the outer docker bridge uses $subnet, which collides with the droplets' inner Docker" \
                   "restart dockerd with --bip $OUTER_BIP (stop it, then run $0)";;
  esac
}

ensure_network() {
  if network_ok; then
    local cfg
    cfg=$(docker network inspect "$NETWORK" -f '{{range .IPAM.Config}}{{.Subnet}} {{.Gateway}}{{end}}')
    [ "$cfg" = "$SUBNET $GATEWAY" ] \
      || die "network $NETWORK exists with '$cfg', expected '$SUBNET $GATEWAY'" \
             "remove it (docker network rm $NETWORK, after removing its containers) and re-run $0"
    return
  fi
  log "creating network $NETWORK ($SUBNET, gateway $GATEWAY)"
  docker network create --subnet "$SUBNET" --gateway "$GATEWAY" "$NETWORK" >/dev/null \
    || network_ok || die "could not create network $NETWORK" "see docker's error above"
}

main() {
  ensure_docker_installed
  ensure_dockerd
  check_bridge_subnet
  ensure_network
}

with_lock engine main
