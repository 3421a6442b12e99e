# Written by pdsup: IO ingress for the Bluesky PDS (IO's `ingress` block, July 2026 and later).
ingress "{{hostname}}" {
  name    = "pds"
  backend = "nomad:pds"
}
