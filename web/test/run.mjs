// Runs the browser suite (test/index.html) in headless Chromium (Debian's, driven by
// playwright-core) against a local server that serves the repository, the model and
// cross-origin isolation headers (so a running call can be cancelled). Keeps a screenshot.
// Usage: node web/test/run.mjs MODEL.gguf ARTIFACT_DIR
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { chromium } from "playwright-core";
import { serve } from "../serve.mjs";

const [modelPath, artifacts] = process.argv.slice(2);
const root = resolve(new URL("../..", import.meta.url).pathname);
const golden = (name) => join(root, "tests/reference/golden", name);
const server = await serve(root, {
  "/model.gguf": modelPath,
  "/golden/greedy.json": golden("greedy.json"),
  "/golden/logits.json": golden("logits.json"),
  "/golden/logits.f32": golden("logits.f32"),
  "/tiny.gguf": join(artifacts, "fixture/tiny.gguf"),
  "/tiny-logits.json": join(artifacts, "fixture/tiny-logits.json"),
});
const url = `http://127.0.0.1:${server.address().port}/web/test/index.html`;
mkdirSync(artifacts, { recursive: true });

/**
 * The demo page (web/demo, built by Vite) as a user drives it: it loads and names its device,
 * chats, fine-tunes on the sample notes with a live loss chart, reports held-out perplexity
 * before and after, and compares answers; screenshots at desktop and phone widths.
 */
async function demoChecks(url) {
  const page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
  page.on("pageerror", (e) => console.log(`demo error: ${e.message}`));
  const started = Date.now();
  try {
    await page.goto(url);
    await page.waitForFunction(() => !document.getElementById("train-start").disabled || !document.getElementById("error").hidden, null, { timeout: 300_000 });
    const device = await page.textContent("#device");
    if (!/on the CPU/.test(device)) throw new Error(`device line: ${device}`);
    await page.fill("#chat-input", "Say hello.");
    await page.click("#chat-send");
    await page.waitForFunction(() => document.querySelector("#messages .assistant")?.textContent.length > 0 && !document.getElementById("chat-send").disabled, null, { timeout: 120_000 });
    await page.fill("#train-text", readFileSync(join(root, "data/sample/notes.txt"), "utf8"));
    await page.fill("#steps", "4");
    await page.click("#train-start");
    await page.waitForFunction(() => /^(done|cancelled)/.test(document.getElementById("train-status").textContent) || !document.getElementById("error").hidden, null, { timeout: 600_000 });
    const status = await page.textContent("#train-status");
    const error = await page.evaluate(() => (document.getElementById("error").hidden ? "" : document.getElementById("error").textContent));
    if (error || !status.startsWith("done")) throw new Error(`training: ${status} ${error}`);
    // The chart drew: pixels of the curve's blue.
    const drawn = await page.evaluate(() => {
      const c = document.getElementById("loss");
      const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
      let blue = 0;
      for (let i = 0; i < d.length; i += 4) if (d[i + 2] > 200 && d[i] < 120) blue++;
      return blue;
    });
    if (drawn < 50) throw new Error(`the loss chart has ${drawn} curve pixels`);
    const perplexity = await page.textContent("#perplexity");
    if (!/before, .* after/.test(perplexity)) throw new Error(`perplexity line: ${perplexity}`);
    await page.fill("#compare-input", "Saturday is bread day.");
    await page.click("#compare-run");
    await page.waitForFunction(() => document.getElementById("after").textContent.length > 0, null, { timeout: 120_000 });
    await page.screenshot({ path: join(artifacts, "demo-desktop.png"), fullPage: true });
    await page.setViewportSize({ width: 390, height: 844 });
    await page.screenshot({ path: join(artifacts, "demo-phone.png"), fullPage: true });
    const seconds = (Date.now() - started) / 1000;
    return [{ name: "the demo page loads, chats, fine-tunes with a live chart and compares", ok: true, seconds, note: `${status}; ${perplexity}` }];
  } catch (e) {
    await page.screenshot({ path: join(artifacts, "demo-failed.png"), fullPage: true }).catch(() => {});
    return [{ name: "the demo page", ok: false, error: e.message }];
  }
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-dev-shm-usage", "--enable-unsafe-webgpu"],
});
let failed = 1;
try {
  const page = await browser.newPage();
  page.on("console", (m) => console.log(`page: ${m.text()}`));
  page.on("pageerror", (e) => console.log(`page error: ${e.message}`));
  await page.goto(url);
  await page.waitForFunction(() => window.adaptkitTest, null, { timeout: 20 * 60 * 1000, polling: 1000 });
  const results = await page.evaluate(() => window.adaptkitTest);
  await page.screenshot({ path: join(artifacts, "browser-test.png"), fullPage: true });
  const peft = await page.evaluate(() => window.adaptkitPeft ?? null);
  if (peft) {
    mkdirSync(join(artifacts, "adapter"), { recursive: true });
    writeFileSync(join(artifacts, "adapter/adapter_config.json"), Buffer.from(peft.config));
    writeFileSync(join(artifacts, "adapter/adapter_model.safetensors"), Buffer.from(peft.safetensors));
    writeFileSync(join(artifacts, "adapter/page-perplexity.json"), JSON.stringify({ text: "data/sample/notes.txt", seq: 64, perplexity: peft.perplexity }));
  }
  results.push(...(await demoChecks(`http://127.0.0.1:${server.address().port}/web/demo/dist/index.html`)));
  for (const r of results) console.log(`test ${r.name} ... ${r.ok ? `ok (${r.seconds.toFixed(1)} s${r.note ? `, ${r.note}` : ""})` : `FAILED: ${r.error}`}`);
  failed = results.filter((r) => !r.ok).length + (results.length < 12 ? 1 : 0);
  console.log(failed ? `browser: ${failed} failed` : `browser: all ${results.length} tests passed`);
} finally {
  await browser.close();
  server.close();
}
process.exit(failed ? 1 : 0);
