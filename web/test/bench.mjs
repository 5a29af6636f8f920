// Runs the runtime's benchmark in headless Chromium (web/test/bench.html) and prints its report
// as one JSON line. Usage: node web/test/bench.mjs MODEL.gguf [QUERY]  (QUERY: trainSteps=3&…)
import { join, resolve } from "node:path";
import { chromium } from "playwright-core";
import { serve } from "../serve.mjs";

const [modelPath, query = ""] = process.argv.slice(2);
const root = resolve(new URL("../..", import.meta.url).pathname);
const server = await serve(root, { "/model.gguf": modelPath });
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium", args: ["--no-sandbox", "--disable-dev-shm-usage"] });
try {
  const page = await browser.newPage();
  page.on("console", (m) => console.error(`page: ${m.text()}`));
  await page.goto(`http://127.0.0.1:${server.address().port}/web/test/bench.html?${query}`);
  await page.waitForFunction(() => window.adaptkitBench, null, { timeout: 30 * 60 * 1000, polling: 1000 });
  console.error(await page.textContent("#log"));
  const report = await page.evaluate(() => window.adaptkitBench);
  console.log(JSON.stringify(report));
  if (report.error) process.exitCode = 1;
} finally {
  await browser.close();
  server.close();
}
