// A static server for the browser suite and the demo: files under `root`, a few fixed `routes`
// (the model), and the cross-origin isolation headers that let the page cancel a running call.
import { createServer } from "node:http";
import { createReadStream, statSync } from "node:fs";
import { extname, join, normalize, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const TYPES = {
  ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css",
  ".wasm": "application/wasm", ".json": "application/json", ".txt": "text/plain", ".svg": "image/svg+xml",
};

/** Serves `root` (and `routes`: URL path -> file) on 127.0.0.1:`port` (0: any free port). */
export async function serve(root, routes = {}, port = 0) {
  root = resolve(root);
  const server = createServer((req, res) => {
    let path = decodeURIComponent(new URL(req.url, "http://localhost").pathname);
    if (path.endsWith("/")) path += "index.html";
    const file = routes[path] ?? normalize(join(root, path));
    if (!routes[path] && !file.startsWith(root)) return res.writeHead(403).end();
    let size;
    try {
      size = statSync(file).size;
    } catch {
      return res.writeHead(404).end();
    }
    res.writeHead(200, {
      "content-type": TYPES[extname(file)] ?? "application/octet-stream",
      "content-length": size,
      "cross-origin-opener-policy": "same-origin",
      "cross-origin-embedder-policy": "require-corp",
    });
    createReadStream(file).pipe(res);
  });
  await new Promise((resolve) => server.listen(port, "127.0.0.1", resolve));
  return server;
}

// As a command: node web/serve.mjs ROOT PORT [/url=FILE ...]
if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const [root, port, ...mapped] = process.argv.slice(2);
  const routes = Object.fromEntries(mapped.map((m) => m.split(/=(.*)/s).slice(0, 2)));
  const server = await serve(resolve(root), routes, Number(port));
  console.log(`serving ${resolve(root)} on http://127.0.0.1:${server.address().port}/`);
}
