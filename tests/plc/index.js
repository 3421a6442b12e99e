"use strict";
// A real PLC directory server (@did-plc/server) for pdsup's tests, with the
// in-memory database: every start begins empty, nothing is written to disk.
//   PLC_PORT  port to listen on (default 2582)
//   PLC_HOST  address to bind (default: all addresses)
// Started and stopped by scripts/harness/services.sh (start_plc / stop_plc).
const { PlcServer, Database } = require("@did-plc/server");
const { version } = require("@did-plc/server/package.json");

async function main() {
  const port = parseInt(process.env.PLC_PORT || "2582", 10);
  const host = process.env.PLC_HOST || undefined;
  const plc = PlcServer.create({ db: Database.mock(), port, version });
  // PlcServer.start() listens on every address; listen ourselves to honour PLC_HOST.
  const server = plc.app.listen(port, host);
  await new Promise((resolve, reject) => {
    server.once("listening", resolve);
    server.once("error", reject);
  });
  console.error(`plc ${version} (in-memory) listening on ${host || "*"}:${port}`);

  const stop = (signal) => {
    console.error(`plc stopping (${signal})`);
    server.close(() => process.exit(0));
    server.closeAllConnections();
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
}

main().catch((err) => {
  console.error("plc failed to start:", err);
  process.exit(1);
});
