// Serves what the build step wrote, on $PORT; the node it runs on is named too.
"use strict";
const fs = require("fs");
const http = require("http");
const built = fs.readFileSync("dist/index.html", "utf8").trim();
http
  .createServer((req, res) => {
    res.writeHead(200, { "Content-Type": "text/plain; charset=utf-8" });
    res.end(`${built}; running ${process.version}\n`);
  })
  .listen(Number(process.env.PORT));
