#!/usr/bin/env bash
# droplet.sh: run throwaway "droplets" (systemd + sshd containers) for the tests.
#
#   droplet.sh start NAME [bookworm|trixie]  boot one; prints one JSON line on stdout:
#        {"name":"pdsup-test-NAME","ip":"10.213.0.x","ssh_port":N,"http_port":N,"https_port":N}
#   droplet.sh info NAME                     the same JSON line for a running droplet
#   droplet.sh stop NAME                     remove it with its volumes
#   droplet.sh ssh NAME [USER] [CMD...]      interactive/debug SSH with the test key
#   droplet.sh list                          list all pdsup-test-* droplets
#   droplet.sh gc                            remove all pdsup-test-* droplets
#
# NAME gets the prefix pdsup-test- unless it already has it. Ports 22, 80 and 443 are
# published on free loopback ports. Everything but the JSON goes to stderr.
# PDSUP_KEEP_DROPLETS=1 keeps a droplet whose boot failed, for debugging.
source "$(dirname "$0")/common.sh"

SSH_OPTS=(-i "$KEY" -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
          -o LogLevel=ERROR -o ConnectTimeout=5 -o IdentitiesOnly=yes)

full_name() {
  local n=${1:?droplet name required}
  case "$n" in "$DROPLET_PREFIX"*) echo "$n" ;; *) echo "$DROPLET_PREFIX$n" ;; esac
}

host_port() { # NAME CONTAINER_PORT -> loopback port number
  docker port "$1" "$2/tcp" | head -n1 | sed 's/.*://'
}

info_json() {
  local name=$1 ip
  ip=$(docker inspect "$name" -f "{{(index .NetworkSettings.Networks \"$NETWORK\").IPAddress}}") \
    || die "no droplet named $name" "$0 list"
  printf '{"name":"%s","ip":"%s","ssh_port":%s,"http_port":%s,"https_port":%s}\n' \
    "$name" "$ip" "$(host_port "$name" 22)" "$(host_port "$name" 80)" "$(host_port "$name" 443)"
}

systemd_up() {
  local state
  state=$(docker exec "$1" systemctl is-system-running 2>/dev/null) || true
  [ "$state" = running ] || [ "$state" = degraded ]
}

ssh_up() {
  ssh "${SSH_OPTS[@]}" -p "$2" root@127.0.0.1 true
}

boot_failed() { # NAME WHAT
  local name=$1 what=$2
  {
    echo "---- droplet $name: $what; last log lines:"
    docker logs --tail 30 "$name" 2>&1 || true
    echo "---- failed units:"
    docker exec "$name" systemctl --no-pager --failed 2>&1 || true
  } >&2
  if [ "${PDSUP_KEEP_DROPLETS:-}" = 1 ]; then
    die "$what" "droplet $name kept (PDSUP_KEEP_DROPLETS=1): docker exec -it $name bash; then $0 stop $name"
  fi
  docker rm -fv "$name" >/dev/null 2>&1 || true
  die "$what" "re-run with PDSUP_KEEP_DROPLETS=1 to keep the droplet and inspect it"
}

cmd_start() {
  local name release=${2:-bookworm}
  name=$(full_name "${1:-}")
  case "$release" in bookworm|trixie) ;; *) die "unknown release '$release'" "use bookworm or trixie";; esac
  local image="$IMAGE_REPO:$release"

  # Create what is missing (both are quick no-ops when cached); keep stdout clean.
  "$HARNESS_DIR/engine.sh" >&2
  "$HARNESS_DIR/droplet-image.sh" "$release" >&2

  if docker inspect "$name" >/dev/null 2>&1; then
    die "a container named $name already exists" "$0 stop $name"
  fi

  local t0=$SECONDS
  log "starting $name ($image)"
  docker run -d --name "$name" --hostname "$(echo "${name#"$DROPLET_PREFIX"}" | cut -c1-63)" \
    --label pdsup.test=droplet --network "$NETWORK" \
    --cap-add SYS_ADMIN --cap-add NET_ADMIN --cap-add SYS_PTRACE --cap-add MKNOD \
    --cap-add AUDIT_WRITE --cap-add NET_RAW --cap-add SYS_CHROOT --cap-add SETFCAP --cap-add IPC_LOCK \
    --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
    --device-cgroup-rule='a *:* rmw' -v /sys/fs/cgroup:/sys/fs/cgroup:rw \
    -v /var/lib/docker --tmpfs /run --tmpfs /run/lock -e container=docker \
    -p 127.0.0.1::22 -p 127.0.0.1::80 -p 127.0.0.1::443 \
    "$image" /sbin/init >/dev/null \
    || { docker rm -fv "$name" >/dev/null 2>&1 || true; die "docker run failed for $name" "see the error above; check $HARNESS_DIR/engine.sh"; }

  local deadline=$((SECONDS + ${PDSUP_BOOT_TIMEOUT:-180}))
  until systemd_up "$name"; do
    if [ "$(docker inspect "$name" -f '{{.State.Running}}' 2>/dev/null)" != true ]; then
      boot_failed "$name" "the container exited during boot"
    fi
    [ $SECONDS -lt $deadline ] || boot_failed "$name" "systemd did not reach running/degraded"
    sleep 0.5
  done
  log "systemd up in $((SECONDS - t0)) s"

  local port
  port=$(host_port "$name" 22)
  until ssh_up "$name" "$port" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || boot_failed "$name" "sshd did not accept the test key"
    sleep 0.5
  done
  log "droplet $name ready in $((SECONDS - t0)) s"
  info_json "$name"
}

cmd_stop() {
  local name
  name=$(full_name "${1:-}")
  docker rm -fv "$name" >/dev/null 2>&1 || true
  log "removed $name"
}

cmd_ssh() {
  local name user=${2:-root}
  name=$(full_name "${1:-}")
  shift $(( $# < 2 ? $# : 2 ))
  exec ssh "${SSH_OPTS[@]}" -o BatchMode=no -p "$(host_port "$name" 22)" "$user@127.0.0.1" "$@"
}

cmd_list() {
  docker ps -a --filter "name=^$DROPLET_PREFIX" \
    --format 'table {{.Names}}\t{{.Image}}\t{{.Status}}\t{{.Ports}}'
}

cmd_gc() {
  local ids
  ids=$(docker ps -aq --filter "name=^$DROPLET_PREFIX")
  if [ -n "$ids" ]; then
    # shellcheck disable=SC2086
    docker rm -fv $ids >/dev/null
    log "removed $(echo "$ids" | wc -l) droplet(s)"
  fi
}

sub=${1:-}
shift || true
case "$sub" in
  start) cmd_start "$@" ;;
  info)  info_json "$(full_name "${1:-}")" ;;
  stop)  cmd_stop "$@" ;;
  ssh)   cmd_ssh "$@" ;;
  list)  cmd_list ;;
  gc)    cmd_gc ;;
  *) die "unknown command '$sub'" "usage: $0 start NAME [bookworm|trixie] | info NAME | stop NAME | ssh NAME [USER] [CMD...] | list | gc" ;;
esac
