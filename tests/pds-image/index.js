"use strict";
// Entry point of pdsup's test stand-in for ghcr.io/bluesky-social/pds:0.4.
//
// Does what the official image's service/index.js does, written for pdsup's tests:
//   - configuration from the PDS_* environment (readEnv → envToCfg / envToSecrets),
//   - PDS_VERSION defaults to the installed @atproto/pds version, so that
//     /xrpc/_health reports {"version":"0.4.x"} as the official image does,
//   - GET /tls-check?domain=D for Caddy's on-demand TLS `ask`,
//   - SIGTERM (and SIGINT) → pds.destroy(), then exit 0.
// Built into an image by scripts/harness/pds-image.sh; never shipped.
const {
  PDS,
  envToCfg,
  envToSecrets,
  readEnv,
  httpLogger,
} = require("@atproto/pds");
const pkg = require("@atproto/pds/package.json");

async function main() {
  const env = readEnv();
  env.version ||= pkg.version; // the official entry does the same
  const cfg = envToCfg(env);
  const secrets = envToSecrets(env);
  const pds = await PDS.create(cfg, secrets);
  // The official entry adds this route after start(); adding it before closes the
  // short window in which it would answer 404. Express matches it either way: the
  // PDS's own routers answer only their paths.
  pds.app.get("/tls-check", (req, res) => {
    tlsCheck(pds, req, res);
  });
  await pds.start();
  httpLogger.info({ version: cfg.service.version }, "pds has started");
  // stderr too: the pino logs are off unless LOG_ENABLED=true.
  console.error(`pds ${cfg.service.version} listening on ${cfg.service.port}`);

  let stopping = false;
  const stop = async (signal) => {
    if (stopping) return; // a second signal while destroy() runs: keep waiting
    stopping = true;
    httpLogger.info({ signal }, "pds is stopping");
    try {
      await pds.destroy();
    } catch (err) {
      console.error("pds destroy failed:", err);
      process.exit(1);
    }
    httpLogger.info("pds is stopped");
    console.error(`pds stopped (${signal})`);
    process.exit(0);
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
}

// Same decisions as the official check: 200 for the service hostname or for the
// handle of an existing (active) account under one of the service handle domains;
// 400 for a missing domain or one we serve no handles under; 404 for an unknown
// handle; 500 when the lookup fails.
async function tlsCheck(pds, req, res) {
  try {
    const { domain } = req.query;
    if (!domain || typeof domain !== "string") {
      return res.status(400).json({
        error: "InvalidRequest",
        message: "bad or missing domain query param",
      });
    }
    if (domain === pds.ctx.cfg.service.hostname) {
      return res.json({ success: true });
    }
    const hosted = pds.ctx.cfg.identity.serviceHandleDomains.some((d) =>
      domain.endsWith(d)
    );
    if (!hosted) {
      return res.status(400).json({
        error: "InvalidRequest",
        message: "handles are not provided on this domain",
      });
    }
    const account = await pds.ctx.accountManager.getAccount(domain);
    if (!account) {
      return res.status(404).json({
        error: "NotFound",
        message: "handle not found for this domain",
      });
    }
    return res.json({ success: true });
  } catch (err) {
    httpLogger.error({ err }, "check handle failed");
    return res.status(500).json({
      error: "InternalServerError",
      message: "Internal Server Error",
    });
  }
}

main().catch((err) => {
  // A configuration error (say a missing secret) must end the container, loudly.
  console.error("pds failed to start:", err);
  process.exit(1);
});
