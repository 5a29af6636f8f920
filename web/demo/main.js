// The demo page: load SmolLM2 with a byte progress bar, chat, fine-tune on pasted or dropped
// text with a live loss chart and a cancel button, compare answers before and after, held-out
// perplexity before and after, and download the adapter (PEFT files) and its patch.
import { LanguageModel } from "../src/adaptkit.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const MODEL_URL = params.get("model") ?? "/model.gguf";
// `?device=gpu` runs on any WebGPU adapter (a software one too), `?device=cpu` on the CPU.
const DEVICE = params.get("device") ?? "auto";
let model;
let adapter = null;
let attached = null;
let training = null;
const history = [];

function showError(error) {
  $("error").hidden = false;
  $("error").textContent = `${error.kind ?? error.name}: ${error.message}`;
}

function clearError() {
  $("error").hidden = true;
}

/** Runs an action from a control: errors are shown, the page keeps working. */
function act(action) {
  return async (event) => {
    event?.preventDefault();
    clearError();
    try {
      await action();
    } catch (e) {
      if (e.kind !== "Cancelled") showError(e);
    }
  };
}

function enable(ids, on = true) {
  for (const id of ids) $(id).disabled = !on;
}

async function load() {
  const mb = (n) => (n / 1048576).toFixed(1);
  try {
    model = await LanguageModel.open(MODEL_URL, {
      device: DEVICE,
      onProgress: ({ received, total }) => {
        $("load-bar").value = total ? received / total : 0;
        $("load-text").textContent = total ? `${mb(received)} / ${mb(total)} MiB` : `${mb(received)} MiB`;
      },
    });
  } catch (e) {
    $("device").textContent = "The model did not load.";
    return showError(e);
  }
  $("load-bar").value = 1;
  const info = model.info;
  const gpu = info.device.startsWith("WebGPU");
  const where = gpu ? `on ${info.device}` : "on the CPU (WebAssembly SIMD, one thread)";
  const why = info.deviceFallback ? `; not on WebGPU: ${info.deviceFallback}` : "";
  const threads = gpu || crossOriginIsolated ? "" : " (this page is not cross-origin isolated: Cancel stops training after the current call)";
  $("device").textContent = `${info.name ?? "model"}: ${(info.parameters / 1e6).toFixed(0)}M parameters ${where}${why}${threads}`;
  enable(["chat-input", "chat-send", "train-start", "compare-input", "compare-run"]);
}

function say(role, text) {
  const p = document.createElement("p");
  p.className = role;
  p.textContent = text;
  $("messages").append(p);
  $("messages").scrollTop = $("messages").scrollHeight;
  return p;
}

$("chat-form").addEventListener("submit", act(async () => {
  const text = $("chat-input").value.trim();
  if (!text) return;
  $("chat-input").value = "";
  say("user", text);
  history.push({ role: "user", content: text });
  const reply = say("assistant", "");
  enable(["chat-send"], false);
  try {
    for await (const piece of model.chat(history, { maxTokens: 200, temperature: 0.7 })) reply.textContent += piece;
    history.push({ role: "assistant", content: reply.textContent });
  } finally {
    enable(["chat-send"]);
  }
}));

// Drop a .txt or .jsonl file on the text box.
const box = $("train-text");
box.addEventListener("dragover", (e) => { e.preventDefault(); box.classList.add("drop"); });
box.addEventListener("dragleave", () => box.classList.remove("drop"));
box.addEventListener("drop", act(async (e) => {
  box.classList.remove("drop");
  const file = e.dataTransfer.files[0];
  if (!file) return;
  if (!/\.(txt|jsonl|md)$/i.test(file.name)) throw Object.assign(new Error(`${file.name}: drop a .txt or .jsonl file`), { kind: "InvalidArgument" });
  box.value = await file.text();
  box.dataset.jsonl = file.name.endsWith(".jsonl") ? "1" : "";
  box.dataset.name = file.name;
}));

/** The loss curve so far, drawn on the canvas. */
function draw(losses, steps) {
  const canvas = $("loss");
  const g = canvas.getContext("2d");
  const { width: w, height: h } = canvas;
  g.clearRect(0, 0, w, h);
  if (!losses.length) return;
  const top = Math.max(...losses) * 1.05;
  const bottom = Math.min(...losses) * 0.95;
  const x = (i) => 30 + ((w - 40) * i) / Math.max(steps - 1, 1);
  const y = (l) => 10 + ((h - 30) * (top - l)) / Math.max(top - bottom, 1e-6);
  g.strokeStyle = "#c8ccd4";
  g.strokeRect(30, 10, w - 40, h - 30);
  g.fillStyle = "#667085";
  g.font = "12px system-ui";
  g.fillText(top.toFixed(2), 0, 14);
  g.fillText(bottom.toFixed(2), 0, h - 20);
  g.fillText(`step ${losses.length}/${steps}`, w - 90, h - 4);
  g.strokeStyle = "#3a6df0";
  g.lineWidth = 2;
  g.beginPath();
  losses.forEach((l, i) => (i ? g.lineTo(x(i), y(l)) : g.moveTo(x(i), y(l))));
  g.stroke();
}

/** The pasted text, with its last tenth held out for perplexity before and after. */
function split(text) {
  const cut = text.lastIndexOf("\n", Math.floor(text.length * 0.9));
  return cut > text.length / 2 ? [text.slice(0, cut), text.slice(cut)] : [text, null];
}

$("train-start").addEventListener("click", act(async () => {
  const text = box.value.trim();
  if (text.length < 200) throw Object.assign(new Error("paste at least a paragraph (200 characters) to learn from"), { kind: "InvalidArgument" });
  const jsonl = box.dataset.jsonl === "1";
  const [train, heldOut] = jsonl ? [text, null] : split(text);
  const method = $("method").value;
  const steps = Number($("steps").value);
  const config = { method, steps, batch: 2, seq: 128, heldOutFraction: 0, evalEvery: 0, checkpointEvery: 0 };
  if (method === "lora" || method === "dora") Object.assign(config, { rank: Number($("rank").value), packing: "documents" });
  if (attached !== null) { await model.detach(attached); attached = null; }
  const before = heldOut ? await model.perplexity(heldOut, 64) : null;

  training = new AbortController();
  enable(["train-start", "download-peft", "download-patch"], false);
  enable(["train-cancel"]);
  const losses = [];
  try {
    const run = model.train({ text: train, name: box.dataset.name ?? "pasted.txt", jsonl }, config, { signal: training.signal });
    for await (const event of run) {
      if (event.type === "step") {
        losses.push(event.loss);
        draw(losses, event.steps);
        $("train-status").textContent = `step ${event.step}/${event.steps} · loss ${event.loss.toFixed(3)} · ${event.tokensPerS.toFixed(0)} tokens/s`;
      }
    }
    const { adapter: trained, report } = await run.result;
    await adapter?.free();
    adapter = trained;
    attached = await model.attach(adapter);
    if (before) {
      $("train-status").textContent = "measuring held-out perplexity…";
      const after = await model.perplexity(heldOut, 64);
      $("perplexity").textContent = `held-out perplexity: ${before.perplexity.toFixed(2)} before, ${after.perplexity.toFixed(2)} after`;
    }
    $("train-status").textContent = `done: ${report.steps} steps, loss ${report.trainLoss.toFixed(3)}, ${report.tokensPerS.toFixed(0)} tokens/s`;
    enable(["download-peft", "download-patch"]);
  } catch (e) {
    if (e.kind === "Cancelled") $("train-status").textContent = `cancelled after ${losses.length} steps`;
    throw e;
  } finally {
    training = null;
    enable(["train-start"]);
    enable(["train-cancel"], false);
  }
}));

$("train-cancel").addEventListener("click", () => training?.abort());

$("compare-form").addEventListener("submit", act(async () => {
  const prompt = $("compare-input").value.trim();
  if (!prompt) return;
  const options = { maxTokens: 48, temperature: 0 };
  $("before").textContent = "";
  $("after").textContent = "";
  const was = attached;
  if (was !== null) await model.setScale(was, 0);
  try {
    for await (const piece of model.generate(prompt, options)) $("before").textContent += piece;
  } finally {
    if (was !== null) await model.setScale(was, 1);
  }
  if (was === null) return void ($("after").textContent = "(fine-tune first)");
  for await (const piece of model.generate(prompt, options)) $("after").textContent += piece;
}));

function download(name, bytes, type = "application/octet-stream") {
  const url = URL.createObjectURL(new Blob([bytes], { type }));
  const a = Object.assign(document.createElement("a"), { href: url, download: name });
  a.click();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

$("download-peft").addEventListener("click", act(async () => {
  const files = await adapter.peftFiles();
  download("adapter_config.json", files.config, "application/json");
  download("adapter_model.safetensors", files.safetensors);
}));

$("download-patch").addEventListener("click", act(async () => {
  const patch = await model.compress(adapter, { density: "0.1" });
  download("adapter.akp", patch.bytes);
  $("perplexity").textContent += ` · patch ${(patch.bytes.length / 1024).toFixed(0)} KiB (${patch.report.ratioVsF16.toFixed(0)}× smaller than F16)`;
}));

load();
