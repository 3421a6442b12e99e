#!/usr/bin/env bash
# The floor a fresh `pdsup up` is measured against (issue 12): the same deployment
# as `pdsup up` with scripts/bench's settings (Caddy, the distribution's docker.io,
# Nomad from the harness's release mirror, the PDS image from an archive), written
# as a careful person would type it: one SSH connection (a ControlMaster carrying
# three commands), one apt transaction, `set -e`, checksums, secrets only on stdin,
# and no checks beyond that. It deploys on a fresh droplet only; it is no installer.
#
#   scripts/floor.sh USER@HOST PORT
#
# Writes the same files as pdsup: Docker's log rotation in daemon.json (before
# Docker is installed, so no restart), assets/nomad.service, the nomad.hcl pdsup
# writes on a fresh droplet, the Caddyfile pdsup renders, the site's pds.env as
# /srv/nomad/pds/pds.env (root, 0600); submits the same job body to Nomad's HTTP
# API (no secret in it: the task sources pds.env before the image's own command,
# read from the image) and creates the first account with an invite, with curl.
# Ends with the PDS answering /xrpc/_health and prints the account's DID.
# Settings (the harness's by default): FLOOR_HOSTNAME, FLOOR_EMAIL, FLOOR_HANDLE,
# FLOOR_RELEASE_URL, FLOOR_RELEASE_KEY, FLOOR_IMAGE_ARCHIVE, FLOOR_PLC_URL,
# FLOOR_ACME_CA, FLOOR_ACME_CA_ROOT, FLOOR_SSH_KEY.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/harness/common.sh

dest=${1:?usage: scripts/floor.sh USER@HOST PORT}
port=${2:?usage: scripts/floor.sh USER@HOST PORT}
pds_host=${FLOOR_HOSTNAME:-pds.test}
email=${FLOOR_EMAIL:-bench@example.com}
handle=${FLOOR_HANDLE:-bench}.$pds_host
release_url=${FLOOR_RELEASE_URL:-http://$GATEWAY:8080}
release_key=${FLOOR_RELEASE_KEY:-$PDSUP_CACHE/mirror/test-release-key.asc}
image_archive=${FLOOR_IMAGE_ARCHIVE:-$PDSUP_CACHE/pds-image.tar}
plc_url=${FLOOR_PLC_URL:-http://$GATEWAY:2582}
acme_ca=${FLOOR_ACME_CA:-https://$GATEWAY:14000/dir}
acme_ca_root=${FLOOR_ACME_CA_ROOT:-$PDSUP_CACHE/pebble/cert.pem}
ssh_key=${FLOOR_SSH_KEY:-$KEY}
image=ghcr.io/bluesky-social/pds:0.4
nomad_version=1.10.5

work=$(mktemp -d)
ssh_opts=(-i "$ssh_key" -p "$port" -o BatchMode=yes -o StrictHostKeyChecking=no
          -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o IdentitiesOnly=yes
          -o ControlPath="$work/ssh")
finish() { ssh "${ssh_opts[@]}" -O exit "$dest" 2>/dev/null || true; rm -rf "$work"; }
trap finish EXIT
t0=$EPOCHREALTIME
say() { awk -v t0="$t0" -v t1="$EPOCHREALTIME" -v what="$1" 'BEGIN { printf "floor: %-30s %6.1f s\n", what, t1 - t0 }' >&2; }

# On this machine, as pdsup does on the laptop: the release's SHA256SUMS must be
# signed by the trusted key; the droplet then checks the zip against it.
base="$release_url/nomad/$nomad_version"
curl -fsS -o "$work/sums" "$base/nomad_${nomad_version}_SHA256SUMS"
curl -fsS -o "$work/sums.sig" "$base/nomad_${nomad_version}_SHA256SUMS.sig"
gpg --batch --quiet --dearmor < "$release_key" > "$work/key.gpg"
gpgv --quiet --keyring "$work/key.gpg" "$work/sums.sig" "$work/sums" 2>/dev/null \
  || die "the Nomad SHA256SUMS is not signed by $release_key"

# The PDS's secrets, as the official installer makes them.
jwt_secret=$(openssl rand -hex 16)
admin_password=$(openssl rand -hex 16)
rotation_key=$(openssl ecparam -name secp256k1 -genkey -noout -outform DER | tail -c +8 | head -c 32 | xxd -p -c 32)
account_password=$(openssl rand -hex 12)

caddyfile=$(cat <<EOF
# Written by pdsup: Caddy in front of the Bluesky PDS at $pds_host.
# Certificates are obtained on demand for the hostname and for account handles
# under it (alice.$pds_host); Caddy asks the PDS's /tls-check first, so it
# never requests a certificate for a name the PDS does not serve.
{
	email $email
	acme_ca $acme_ca
	acme_ca_root /etc/caddy/acme-ca-root.pem
	on_demand_tls {
		ask http://127.0.0.1:3000/tls-check
	}
}

$pds_host, *.$pds_host {
	tls {
		on_demand
	}
	reverse_proxy 127.0.0.1:3000
}
EOF
)

nomad_hcl=$(cat <<'EOF'
# Nomad agent configuration for a single-node Bluesky PDS droplet.
#
# Written by pdsup. On later runs pdsup only adds missing host_volume blocks
# inside `client` (keeping your comments and layout); the rest is yours to
# change. Options: https://developer.hashicorp.com/nomad/docs/configuration

data_dir = "/opt/nomad/data"

# Listen on loopback only. This agent runs without ACLs, so anyone who can
# reach its HTTP API (port 4646) could run any container on this machine.
# pdsup reaches the API through an SSH tunnel, the proxy reaches it locally.
bind_addr = "127.0.0.1"

# With a loopback bind_addr, Nomad refuses to start unless the addresses it
# advertises are set explicitly.
advertise {
  http = "127.0.0.1"
  rpc  = "127.0.0.1"
  serf = "127.0.0.1"
}

# This node is its own server: a cluster of one.
server {
  enabled          = true
  bootstrap_expect = 1
}

# This node also runs the jobs. Each host_volume names a directory on the
# droplet that a job may mount: "pds" holds the PDS's data, "io" the proxy's
# configuration and certificates.
client {
  enabled = true
  servers = ["127.0.0.1"]

  # Task ports are allocated on loopback, so the PDS is reachable only
  # through the proxy, never straight from the internet.
  network_interface = "lo"

  host_volume "pds" {
    path = "/srv/nomad/pds"
    read_only = false
  }
}

plugin "docker" {
  config {
    # No privileged containers: a job cannot take over the host.
    allow_privileged = false

    # No bind mounts of arbitrary host paths: jobs see only the host
    # volumes declared in `client`.
    volumes {
      enabled = false
    }
  }
}

# Do not call HashiCorp's update-check service.
disable_update_check = true
EOF
)

# The site's pds.env (pdsadmin's format), sent on stdin to the droplet.
pds_env=$(cat <<EOF
PDS_HOSTNAME=$pds_host
PDS_JWT_SECRET=$jwt_secret
PDS_ADMIN_PASSWORD=$admin_password
PDS_PLC_ROTATION_KEY_K256_PRIVATE_KEY_HEX=$rotation_key
PDS_DATA_DIRECTORY=/pds
PDS_BLOBSTORE_DISK_LOCATION=/pds/blocks
PDS_BLOB_UPLOAD_LIMIT=104857600
PDS_DID_PLC_URL=$plc_url
PDS_BSKY_APP_VIEW_URL=https://api.bsky.app
PDS_BSKY_APP_VIEW_DID=did:web:api.bsky.app
PDS_REPORT_SERVICE_URL=https://mod.bsky.app
PDS_REPORT_SERVICE_DID=did:plc:ar7c4by46qjdydhdevvrndac
PDS_CRAWLERS=
LOG_ENABLED=true
EOF
)

# The body pdsup posts to /v1/jobs (src/nomad/job.rs), durations in nanoseconds;
# ENTRYPOINT_ARGS is the image's own entrypoint and command, read on the droplet.
job_json=$(cat <<EOF
{"Job":{"ID":"pds","Name":"pds","Type":"service","Datacenters":["dc1"],"Meta":{"managed-by":"pdsup"},"TaskGroups":[{
 "Name":"pds","Count":1,
 "Networks":[{"ReservedPorts":[{"Label":"http","Value":3000,"To":3000}]}],
 "Services":[{"Name":"pds","PortLabel":"http","Provider":"nomad","Checks":[
   {"Type":"http","Path":"/xrpc/_health","Interval":2000000000,"Timeout":2000000000}]}],
 "Volumes":{"pds":{"Name":"pds","Type":"host","Source":"pds","ReadOnly":false}},
 "Update":{"HealthCheck":"checks","MinHealthyTime":5000000000,"HealthyDeadline":300000000000,
   "ProgressDeadline":600000000000,"AutoRevert":false},
 "Tasks":[{"Name":"pds","Driver":"docker","Config":{"image":"$image","ports":["http"],
     "entrypoint":["/bin/sh","-c","set -a; . /pds/pds.env; set +a; exec \\"\$@\\"","--"],
     "args":ENTRYPOINT_ARGS},
   "Env":{"TZ":"UTC","PDS_HOSTNAME":"$pds_host","PDS_PORT":"3000",
     "PDS_DATA_DIRECTORY":"/pds","PDS_BLOBSTORE_DISK_LOCATION":"/pds/blocks",
     "PDS_BLOBSTORE_DISK_TMP_LOCATION":"/pds/temp","PDS_BLOB_UPLOAD_LIMIT":"104857600",
     "PDS_DID_PLC_URL":"$plc_url","PDS_BSKY_APP_VIEW_URL":"https://api.bsky.app",
     "PDS_BSKY_APP_VIEW_DID":"did:web:api.bsky.app","PDS_REPORT_SERVICE_URL":"https://mod.bsky.app",
     "PDS_REPORT_SERVICE_DID":"did:plc:ar7c4by46qjdydhdevvrndac","PDS_CRAWLERS":"",
     "PDS_INVITE_REQUIRED":"true","PDS_RATE_LIMITS_ENABLED":"true","LOG_ENABLED":"true"},
   "VolumeMounts":[{"Volume":"pds","Destination":"/pds","ReadOnly":false}],
   "Resources":{"CPU":500,"MemoryMB":512}}]}]}}
EOF
)

# `NAME=VALUE` lines for the remote scripts: values travel on ssh's stdin, never
# in a command line.
vars() { for v in "$@"; do printf '%s=%q\n' "$v" "${!v}"; done; }
remote() { ssh "${ssh_opts[@]}" "$dest" "$@"; }

ssh "${ssh_opts[@]}" -o ControlMaster=yes -o ControlPersist=yes -fN "$dest"
say "connected"

# 1. Packages, Nomad, its configuration, Caddy.
nomad_unit=$(cat assets/nomad.service)
acme_root=$(cat "$acme_ca_root")
nomad_sums=$(cat "$work/sums")
{
  vars release_url nomad_version nomad_sums nomad_unit nomad_hcl caddyfile acme_root
  cat <<'EOF'
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
mkdir -p /etc/docker
printf '%s\n' '{"log-driver":"json-file","log-opts":{"max-size":"500m","max-file":"4"}}' > /etc/docker/daemon.json
apt-get -q update >/dev/null
apt-get -q -y -o Dpkg::Options::=--force-confold install docker.io unzip curl caddy >/dev/null
systemctl enable --now docker

id nomad >/dev/null 2>&1 || useradd --system --user-group --shell /bin/false nomad
mkdir -p /opt/nomad/data /etc/nomad.d /srv/nomad/pds
chown nomad:nomad /opt/nomad/data
chmod 700 /opt/nomad/data /srv/nomad/pds
zip=nomad_${nomad_version}_linux_$(dpkg --print-architecture).zip
cd "$(mktemp -d)"
curl -fsSLO "$release_url/nomad/$nomad_version/$zip"
printf '%s\n' "$nomad_sums" | sha256sum -c --ignore-missing --quiet -
unzip -o -q "$zip" nomad
install -m 0755 nomad /usr/local/bin/nomad
printf '%s\n' "$nomad_unit" > /etc/systemd/system/nomad.service
(umask 027; printf '%s\n' "$nomad_hcl" > /etc/nomad.d/nomad.hcl)
systemctl daemon-reload
systemctl enable --now nomad

printf '%s\n' "$acme_root" > /etc/caddy/acme-ca-root.pem
printf '%s\n' "$caddyfile" > /etc/caddy/Caddyfile
systemctl restart caddy
EOF
} | remote bash -s
say "packages, Nomad, Caddy"

# 2. The PDS image, streamed into docker load.
remote docker load -q < "$image_archive" >/dev/null
say "PDS image loaded"

# 3. pds.env on the droplet, the job, the PDS's health, the first account.
{
  vars job_json pds_env admin_password account_password email handle image
  cat <<'EOF'
set -euo pipefail
(umask 077; printf '%s\n' "$pds_env" > /srv/nomad/pds/pds.env)
read -r entrypoint cmd < <(docker image inspect --format '{{json .Config.Entrypoint}} {{json .Config.Cmd}}' "$image")
[ "$entrypoint" != null ] || entrypoint='[]'
[ "$cmd" != null ] || cmd='[]'
if [ "$entrypoint" = '[]' ]; then args=$cmd
elif [ "$cmd" = '[]' ]; then args=$entrypoint
else args="${entrypoint%]},${cmd#[}"; fi
job_json=${job_json/ENTRYPOINT_ARGS/$args}
until curl -fsS -o /dev/null http://127.0.0.1:4646/v1/agent/health; do sleep 0.2; done
printf '%s' "$job_json" | curl -fsS -o /dev/null --data-binary @- http://127.0.0.1:4646/v1/jobs
for _ in $(seq 600); do
  curl -fsS -o /dev/null http://127.0.0.1:3000/xrpc/_health 2>/dev/null && break
  sleep 0.2
done
curl -fsS -o /dev/null http://127.0.0.1:3000/xrpc/_health
xrpc=http://127.0.0.1:3000/xrpc
invite=$(printf 'user = "admin:%s"\n' "$admin_password" \
  | curl -fsS --config - -H 'Content-Type: application/json' --data '{"useCount":1}' \
      "$xrpc/com.atproto.server.createInviteCode" \
  | sed -n 's/.*"code":"\([^"]*\)".*/\1/p')
did=$(printf '{"email":"%s","handle":"%s","password":"%s","inviteCode":"%s"}' \
    "$email" "$handle" "$account_password" "$invite" \
  | curl -fsS -H 'Content-Type: application/json' --data-binary @- \
      "$xrpc/com.atproto.server.createAccount" \
  | sed -n 's/.*"did":"\([^"]*\)".*/\1/p')
[ -n "$did" ]
echo "account created: $handle $did"
EOF
} | remote bash -s
say "job running, account created"
