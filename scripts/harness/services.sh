#!/usr/bin/env bash
# services.sh start|stop|status: the host-side services droplets talk to, all bound
# to the droplet network's gateway 10.213.0.1 (reachable from droplets and from here):
#
#   mirror   http://10.213.0.1:8080/      static files from $PDSUP_CACHE/mirror
#   pebble   https://10.213.0.1:14000/dir ACME test CA (PEBBLE_VA_ALWAYS_VALID=1)
#            https://10.213.0.1:15000     its management API (/roots/0 = current root)
#            its own TLS cert  -> $PDSUP_CACHE/pebble/cert.pem (trust this to talk to it)
#            its root CA       -> $PDSUP_CACHE/pebble/root.pem (issues the ACME certs;
#                                 a new one at every Pebble start)
#   plc      see the PLC section below
#
# pidfiles: $PDSUP_CACHE/run/<service>.pid, logs: $PDSUP_CACHE/log/<service>.log.
# `start` is idempotent (running services are left alone); `status` exits 1 if any
# service is down.
source "$(dirname "$0")/common.sh"

MIRROR_DIR="$PDSUP_CACHE/mirror"
MIRROR_PORT=8080
PEBBLE_DIR="$PDSUP_CACHE/pebble"
PEBBLE_PORT=14000
PEBBLE_MGMT_PORT=15000

# ---- generic background-process helpers ------------------------------------------

pidfile() { echo "$RUN_DIR/$1.pid"; }

# alive NAME MATCH: the pidfile's process runs and its command line contains MATCH.
alive() {
  local pid
  pid=$(cat "$(pidfile "$1")" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$2"
}

# spawn NAME CMD...: start CMD detached, log to $LOG_DIR/NAME.log, pid to the pidfile.
spawn() {
  local name=$1; shift
  # 9>&-: do not hand our lock (see with_lock) to the daemon.
  setsid nohup "$@" >>"$LOG_DIR/$name.log" 2>&1 </dev/null 9>&- &
  echo $! >"$(pidfile "$name")"
}

# halt NAME MATCH: stop the process of the pidfile (only if it is ours).
halt() {
  local name=$1 match=$2 pid
  if alive "$name" "$match"; then
    pid=$(cat "$(pidfile "$name")")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    log "stopped $name (pid $pid)"
  fi
  rm -f "$(pidfile "$name")"
}

ensure_pkg() { # COMMAND PACKAGE
  command -v "$1" >/dev/null && return
  need_root
  log "installing $2"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2"; } >>"$LOG_DIR/apt.log" 2>&1 \
    || die "apt-get install $2 failed" "see $LOG_DIR/apt.log"
}

python_bin() { if [ -x /usr/bin/python3 ]; then echo /usr/bin/python3; else command -v python3; fi; }

# ---- mirror: static HTTP server -----------------------------------------------------

start_mirror() {
  mkdir -p "$MIRROR_DIR"
  if alive mirror http.server; then return; fi
  ensure_pkg python3 python3
  log "starting mirror http://$GATEWAY:$MIRROR_PORT/ serving $MIRROR_DIR"
  spawn mirror "$(python_bin)" -m http.server "$MIRROR_PORT" --bind "$GATEWAY" --directory "$MIRROR_DIR"
  wait_for 20 "mirror" curl -fsS -o /dev/null "http://$GATEWAY:$MIRROR_PORT/" \
    || die "mirror did not answer on $GATEWAY:$MIRROR_PORT" "read $LOG_DIR/mirror.log (port taken?)"
}
stop_mirror() { halt mirror http.server; }
status_mirror() {
  if alive mirror http.server && curl -fsS -o /dev/null "http://$GATEWAY:$MIRROR_PORT/"; then
    echo "mirror  running  http://$GATEWAY:$MIRROR_PORT/ -> $MIRROR_DIR"
  else
    echo "mirror  DOWN"; return 1
  fi
}

# ---- pebble: ACME test CA -----------------------------------------------------------

pebble_cert() {
  mkdir -p "$PEBBLE_DIR"
  if [ -f "$PEBBLE_DIR/cert.pem" ] && [ -f "$PEBBLE_DIR/key.pem" ] \
     && openssl x509 -in "$PEBBLE_DIR/cert.pem" -noout -checkend 86400 >/dev/null 2>&1 \
     && openssl x509 -in "$PEBBLE_DIR/cert.pem" -noout -ext subjectAltName 2>/dev/null | grep -q "IP Address:$GATEWAY"; then
    return
  fi
  log "making Pebble's TLS certificate for $GATEWAY"
  # Self-signed, not a CA (rustls refuses a CA certificate as a server certificate);
  # clients trust this very certificate (cert.pem).
  cat >"$PEBBLE_DIR/openssl.cnf" <<EOC
[req]
distinguished_name = dn
x509_extensions = ext
prompt = no
[dn]
CN = pdsup-test pebble
[ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:$GATEWAY, IP:127.0.0.1, DNS:localhost, DNS:pebble
subjectKeyIdentifier = hash
EOC
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -config "$PEBBLE_DIR/openssl.cnf" \
    -keyout "$PEBBLE_DIR/key.pem" -out "$PEBBLE_DIR/cert.pem" >>"$LOG_DIR/pebble.log" 2>&1 \
    || die "openssl could not make Pebble's certificate" "read $LOG_DIR/pebble.log"
}

start_pebble() {
  ensure_pkg pebble pebble
  ensure_pkg openssl openssl
  if ! alive pebble pebble; then
    pebble_cert
    cat >"$PEBBLE_DIR/config.json" <<EOC
{
  "pebble": {
    "listenAddress": "$GATEWAY:$PEBBLE_PORT",
    "managementListenAddress": "$GATEWAY:$PEBBLE_MGMT_PORT",
    "certificate": "$PEBBLE_DIR/cert.pem",
    "privateKey": "$PEBBLE_DIR/key.pem",
    "httpPort": 5002,
    "tlsPort": 5001,
    "ocspResponderURL": "",
    "externalAccountBindingRequired": false
  }
}
EOC
    log "starting pebble https://$GATEWAY:$PEBBLE_PORT/dir"
    # ALWAYS_VALID: no challenge is checked (no DNS here); NOSLEEP: no random delays;
    # NONCEREJECT=0: no deliberate badNonce errors.
    spawn pebble env PEBBLE_VA_ALWAYS_VALID=1 PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0 \
      pebble -config "$PEBBLE_DIR/config.json"
  fi
  wait_for 30 "pebble" curl -fsS -o /dev/null --cacert "$PEBBLE_DIR/cert.pem" "https://$GATEWAY:$PEBBLE_PORT/dir" \
    || die "pebble did not answer on $GATEWAY:$PEBBLE_PORT" "read $LOG_DIR/pebble.log"
  # The root changes at every Pebble start: export the current one.
  curl -fsS --cacert "$PEBBLE_DIR/cert.pem" "https://$GATEWAY:$PEBBLE_MGMT_PORT/roots/0" -o "$PEBBLE_DIR/root.pem.tmp" \
    && mv "$PEBBLE_DIR/root.pem.tmp" "$PEBBLE_DIR/root.pem" \
    || die "could not fetch Pebble's root CA from its management API" "read $LOG_DIR/pebble.log"
}
stop_pebble() { halt pebble pebble; }
status_pebble() {
  if alive pebble pebble && curl -fsS -o /dev/null --cacert "$PEBBLE_DIR/cert.pem" "https://$GATEWAY:$PEBBLE_PORT/dir"; then
    echo "pebble  running  https://$GATEWAY:$PEBBLE_PORT/dir (cert $PEBBLE_DIR/cert.pem, root $PEBBLE_DIR/root.pem)"
  else
    echo "pebble  DOWN"; return 1
  fi
}

# ==== PLC directory ==================================================================
# Owned by the PLC/PDS engineer: fill in these three functions (code in tests/plc/).
# Conventions: bind to $GATEWAY (suggested port 2582), pidfile "$(pidfile plc)",
# log "$LOG_DIR/plc.log"; use spawn/alive/halt/wait_for above. start_plc must be
# idempotent; status_plc prints one line and returns 1 when down.
source "$HARNESS_DIR/plc.sh"   # start_plc, stop_plc, status_plc (tests/plc/)
# ==== end PLC ========================================================================

main() {
  case "${1:-}" in
    start)
      "$HARNESS_DIR/engine.sh"   # the gateway address exists only with the network
      ensure_pkg curl curl
      start_mirror
      start_pebble
      start_plc
      status_mirror >&2; status_pebble >&2; status_plc >&2
      ;;
    stop)
      stop_plc; stop_pebble; stop_mirror ;;
    status)
      local rc=0
      status_mirror || rc=1
      status_pebble || rc=1
      status_plc || rc=1
      return $rc ;;
    *) die "unknown command '${1:-}'" "usage: $0 start|stop|status" ;;
  esac
}

if [ "${1:-}" = status ]; then main "$@"; else with_lock services main "$@"; fi
