# shellcheck shell=bash
# Sourced by services.sh (uses its spawn/alive/halt/wait_for helpers): the PLC
# directory the PDSes under test register their DIDs with, on $GATEWAY:2582.
# A real @did-plc/server with its in-memory database (tests/plc/index.js): empty at
# every start, so a restart forgets every DID (PDSes made before it cannot update theirs).
# node_modules live in $PDSUP_CACHE/plc-server-<lockfile hash>/, installed by `npm ci`.
PLC_PORT=2582
PLC_URL="http://$GATEWAY:$PLC_PORT"

plc_dir() { # -> directory holding index.js + node_modules (npm ci once per lockfile)
  local src="$REPO_DIR/tests/plc" key dir
  key=$(cat "$src/package.json" "$src/package-lock.json" | sha256sum | cut -c1-16)
  dir="$PDSUP_CACHE/plc-server-$key"
  if [ ! -f "$dir/.done" ]; then
    command -v npm >/dev/null || die "npm is not installed" "install node 20 and npm"
    rm -rf "$PDSUP_CACHE"/plc-server-*
    mkdir -p "$dir"
    cp "$src/package.json" "$src/package-lock.json" "$dir/"
    log "npm ci for the PLC server in $dir"
    (cd "$dir" && npm ci --omit=dev --no-audit --no-fund) >>"$LOG_DIR/plc.log" 2>&1 \
      || die "npm ci for the PLC server failed" "read $LOG_DIR/plc.log"
    touch "$dir/.done"
  fi
  cp "$src/index.js" "$dir/index.js"
  echo "$dir"
}

plc_up() { curl -fsS -o /dev/null "$PLC_URL/_health"; }

start_plc() {
  if alive plc plc-server-; then return; fi
  command -v node >/dev/null || die "node is not installed" "install node 20"
  local dir
  dir=$(plc_dir)
  log "starting plc $PLC_URL (in-memory)"
  spawn plc env PLC_HOST="$GATEWAY" PLC_PORT="$PLC_PORT" node "$dir/index.js"
  wait_for 30 "plc" plc_up \
    || die "plc did not answer on $GATEWAY:$PLC_PORT" "read $LOG_DIR/plc.log (port taken?)"
}
stop_plc() { halt plc plc-server-; }
status_plc() {
  if alive plc plc-server- && plc_up; then
    echo "plc     running  $PLC_URL (in-memory @did-plc/server)"
  else
    echo "plc     DOWN"; return 1
  fi
}
