#!/bin/sh
# Installed by `pdsup backup --schedule`, run by pdsup-backup.service: the
# consistent snapshot `pdsup backup` takes (SQLite's online backup of every
# database, then the other files, SHA256SUMS and the repo heads), staged in
# /var/lib/pdsup-backup/stage, sent to the restic repository; then the
# snapshots the retention does not keep are forgotten and pruned.
set -eu
umask 077
. /etc/pdsup-backup/config
stage=/var/lib/pdsup-backup/stage
rm -rf "$stage"
mkdir -p "$stage"
trap 'rm -rf "$stage"' EXIT
taken_at=$(/usr/local/lib/pdsup-backup/stage.sh)
rm -f "$stage/databases"
printf '%s\n' "$taken_at" > "$stage/TAKEN_AT"
# A new repository is initialized on the first run; an existing one that
# cannot be read (wrong password, unreachable) fails `init` too, loudly.
pdsup-restic cat config >/dev/null 2>&1 || pdsup-restic init
pdsup-restic backup --host "$PDSUP_HOSTNAME" --tag pdsup "$stage"
set -- --keep-daily "$PDSUP_KEEP_DAILY" --keep-weekly "$PDSUP_KEEP_WEEKLY"
[ "${PDSUP_KEEP_LAST:-0}" -eq 0 ] || set -- "$@" --keep-last "$PDSUP_KEEP_LAST"
pdsup-restic forget --host "$PDSUP_HOSTNAME" --tag pdsup --prune "$@"
