// The build step (`npm run build`): writes dist/index.html, which the server answers with.
"use strict";
const fs = require("fs");
fs.mkdirSync("dist", { recursive: true });
fs.writeFileSync("dist/index.html", `built by npm run build with node ${process.version}\n`);
