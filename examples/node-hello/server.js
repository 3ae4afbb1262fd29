// A tiny web app for PaaSTech: Node's http module only.
// Serves on $PORT. `/` answers with $GREETING (default "hello") and $PAASTECH_VERSION when
// set; every request is logged to stdout.
"use strict";

const http = require("http");

const port = Number(process.env.PORT || 5000);

const server = http.createServer((req, res) => {
  console.log(`${req.socket.remoteAddress} "${req.method} ${req.url}"`);
  if (req.url !== "/") {
    res.writeHead(404, { "Content-Type": "text/plain; charset=utf-8" });
    res.end("not found\n");
    return;
  }
  const greeting = process.env.GREETING || "hello";
  const version = process.env.PAASTECH_VERSION;
  let body = `${greeting} from node-hello`;
  if (version) body += ` (version ${version})`;
  res.writeHead(200, { "Content-Type": "text/plain; charset=utf-8" });
  res.end(body + "\n");
});

server.listen(port, "127.0.0.1", () => {
  console.log(`node-hello listening on 127.0.0.1:${port}`);
});

process.on("SIGTERM", () => server.close(() => process.exit(0)));
