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
