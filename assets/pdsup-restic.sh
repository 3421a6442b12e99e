#!/bin/sh
# Installed by `pdsup backup --schedule`: restic with this site's repository and
# credentials, e.g. `pdsup-restic snapshots`. The settings are in
# /etc/pdsup-backup/config; the secrets in root-only files beside it.
set -eu
. /etc/pdsup-backup/config
export RESTIC_REPOSITORY="$PDSUP_REPOSITORY"
export RESTIC_PASSWORD_FILE=/etc/pdsup-backup/password
export RESTIC_CACHE_DIR=/var/cache/pdsup-backup/restic
if [ -f /etc/pdsup-backup/s3.env ]; then
  set -a
  . /etc/pdsup-backup/s3.env
  set +a
fi
if [ -n "${PDSUP_SFTP_COMMAND:-}" ]; then
  exec restic -o sftp.command="$PDSUP_SFTP_COMMAND" "$@"
fi
exec restic "$@"
