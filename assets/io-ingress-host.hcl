# Written by pdsup: IO ingress for the Bluesky PDS (the seed article's `host` block, for IO images before July 2026).
host "{{hostname}}" {
  name    = "pds"
  backend = "nomad:pds"
}
