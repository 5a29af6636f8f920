// The demo's build: plain modules, the worker bundled as an ES module; the dev server sends the
// cross-origin isolation headers that let the page cancel a running call.
import { defineConfig } from "vite";

const isolation = { "Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp" };

export default defineConfig({
  // Relative asset paths: the built page works from any directory it is served under.
  base: "./",
  worker: { format: "es" },
  build: { target: "es2022", outDir: "dist", emptyOutDir: true },
  server: { headers: isolation, fs: { allow: [".."] } },
  preview: { headers: isolation },
});
