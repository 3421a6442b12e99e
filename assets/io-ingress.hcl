# Written by pdsup: IO ingress for the Bluesky PDS (the seed article's block).
host "{{hostname}}" {
  name    = "pds"
  backend = "nomad:pds"
}
