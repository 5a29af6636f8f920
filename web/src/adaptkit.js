// adaptkit for the browser: a language model that runs and fine-tunes on the user's machine.
// Every call runs in a Web Worker (src/worker.js) and returns a promise or an async iterator;
// an AbortSignal cancels a call (a training run saves its checkpoint first). Options use
// JavaScript's spelling (maxTokens) and become the runtime's (max_tokens). Failures reject with
// an AdaptError whose `kind` is the runtime's (Io, Model, Adapter, Patch, InvalidArgument,
// MemoryBudget, ContextFull, Training, Device, Cancelled, Closed, Internal).
//
// The model runs on WebGPU when the browser gives a hardware adapter (`device: "auto"`, the
// default), else on the CPU (WebAssembly SIMD), and `info.device` / `info.deviceFallback` say
// which and why. A running call on WebGPU can always be cancelled; on the CPU that needs a
// cross-origin isolated page (COOP/COEP headers: the page and the worker share a
// SharedArrayBuffer flag), and elsewhere an AbortSignal cancels a call that has not started.

export class AdaptError extends Error {
  constructor(kind, message) {
    super(message);
    this.name = `${kind}Error`;
    this.kind = kind;
  }
}

const snake = (key) => key.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
const camel = (key) => key.replace(/_([a-z])/g, (_, c) => c.toUpperCase());

/** `value` with its object keys respelled by `spell`, deeply. */
function respell(value, spell) {
  if (Array.isArray(value)) return value.map((v) => respell(v, spell));
  if (value === null || typeof value !== "object" || ArrayBuffer.isView(value)) return value;
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined).map(([k, v]) => [spell(k), respell(v, spell)]));
}

const toRuntime = (value) => respell(value ?? {}, snake);
const fromRuntime = (value) => respell(value, camel);

const SAMPLING = ["temperature", "top_k", "top_p", "min_p", "repetition_penalty", "repeat_last_n", "seed"];

const METHOD_OPTIONS = ["rank", "alpha", "dropout", "rslora", "init", "freeze_a", "targets", "virtual_tokens", "prompt_init",
  "max_len", "embedding_lr", "heads", "select_steps", "l1"];

/** `options` (flat, as the Kotlin and Swift faces spell them) in the runtime's shape: the `keys` nested under `field`. */
function nest(options, keys, field) {
  const flat = toRuntime(options);
  const inner = Object.fromEntries(keys.filter((k) => k in flat).map((k) => [k, flat[k]]));
  const rest = Object.fromEntries(Object.entries(flat).filter(([k]) => !keys.includes(k)));
  return Object.keys(inner).length ? { ...rest, [field]: inner } : rest;
}

const generateOptions = (options) => nest(options, SAMPLING, "sampling");
const trainConfig = (config) => nest(config, METHOD_OPTIONS, "options");

/** The worker and its calls: ids, results, streamed events, cancel. */
class Connection {
  constructor(workerUrl) {
    // The literal `new URL(…, import.meta.url)` form lets bundlers (Vite) build the worker.
    this.worker = workerUrl
      ? new Worker(workerUrl, { type: "module" })
      : new Worker(new URL("./worker.js", import.meta.url), { type: "module" });
    this.calls = new Map();
    this.next = 1;
    this.cancelFlag = globalThis.crossOriginIsolated ? new Int32Array(new SharedArrayBuffer(4)) : null;
    this.worker.onmessage = ({ data }) => {
      const call = this.calls.get(data.id);
      if (!call) return;
      if ("event" in data) return call.onEvent?.(fromRuntime(data.event));
      this.calls.delete(data.id);
      if (data.error) call.reject(new AdaptError(data.error.kind, data.error.message));
      else call.resolve(data.result);
    };
    this.worker.onerror = (e) => {
      for (const call of this.calls.values()) call.reject(new AdaptError("Internal", e.message ?? "the worker failed"));
      this.calls.clear();
    };
    this.call("setup", [this.cancelFlag?.buffer ?? null]);
  }

  /** Runs `op` in the worker; `onEvent` sees its events; `signal` cancels it. */
  call(op, args, { onEvent, signal, transfer = [] } = {}) {
    const id = this.next++;
    return new Promise((resolve, reject) => {
      if (signal?.aborted) return reject(new AdaptError("Cancelled", "cancelled"));
      this.calls.set(id, { resolve, reject, onEvent });
      signal?.addEventListener("abort", () => {
        if (this.cancelFlag) Atomics.store(this.cancelFlag, 0, id);
        this.worker.postMessage({ op: "cancel", args: [id] });
      }, { once: true });
      this.worker.postMessage({ id, op, args }, transfer);
    });
  }
}

/** An async iterator over a streaming call's items; the call's result is `iterator.result`. */
function stream(run, pick) {
  const items = [];
  let wake = null;
  let done = false;
  let failure = null;
  const result = run((event) => {
    const item = pick(event);
    if (item !== undefined) items.push(item);
    wake?.();
  }).then(
    (value) => { done = true; wake?.(); return value; },
    (error) => { failure = error; done = true; wake?.(); throw error; },
  );
  result.catch(() => {}); // reported through the iterator
  return {
    result,
    async *[Symbol.asyncIterator]() {
      for (;;) {
        if (items.length) { yield items.shift(); continue; }
        if (failure) throw failure;
        if (done) return;
        await new Promise((r) => { wake = r; });
        wake = null;
      }
    },
  };
}

/** The model file's bytes: from the Cache API when cached, else fetched (with progress) and cached. */
export async function fetchModel(url, { onProgress, cache = "adaptkit-models", signal } = {}) {
  const store = cache && globalThis.caches ? await caches.open(cache) : null;
  const cached = await store?.match(url);
  if (cached) return new Uint8Array(await cached.arrayBuffer());
  const response = await fetch(url, { signal });
  if (!response.ok) throw new AdaptError("Io", `${url}: HTTP ${response.status}`);
  const total = Number(response.headers.get("content-length")) || 0;
  const bytes = new Uint8Array(total || 0);
  const chunks = [];
  let received = 0;
  const reader = response.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (total && received + value.length <= total) bytes.set(value, received);
    else chunks.push(value);
    received += value.length;
    onProgress?.({ received, total });
  }
  const whole = chunks.length ? concat(total ? [bytes.subarray(0, total), ...chunks] : chunks) : bytes.subarray(0, received);
  try {
    await store?.put(url, new Response(whole));
  } catch (e) {
    // The page works without the cache; say why it will download again.
    const quota = e?.name === "QuotaExceededError";
    console.warn(quota ? `adaptkit: storage quota exceeded; ${url} is not cached` : `adaptkit: not cached: ${e}`);
  }
  return whole;
}

function concat(parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}

/**
 * The runtime's benchmark of a GGUF model in a worker of its own (the code `adaptkit bench` runs
 * natively): prefill, decode and LoRA training tokens/s. `onProgress` sees a line per run.
 */
export async function bench(source, { promptTokens, genTokens, repeats, trainSteps, onProgress, workerUrl } = {}) {
  const bytes = source instanceof Uint8Array ? source.slice() : await fetchModel(String(source));
  const connection = new Connection(workerUrl);
  try {
    const options = toRuntime({ promptTokens, genTokens, repeats, trainSteps });
    const report = await connection.call("bench", [bytes.buffer, options], { transfer: [bytes.buffer], onEvent: (e) => onProgress?.(e.line) });
    return fromRuntime(report);
  } finally {
    connection.worker.terminate();
  }
}

/** Checkpoints and saved adapters, in the worker's memory (copy them out with `entries`). */
export class Storage {
  constructor(connection, handle) {
    this.connection = connection;
    this.handle = handle;
  }
  async entries() {
    const keys = await this.connection.call("storageKeys", [this.handle]);
    return Promise.all(keys.map(async (key) => [key, await this.connection.call("storageRead", [this.handle, key])]));
  }
  write(key, bytes) {
    return this.connection.call("storageWrite", [this.handle, key, bytes]);
  }
}

/** An adapter held by the worker. */
export class Adapter {
  constructor(connection, handle) {
    this.connection = connection;
    this.handle = handle;
  }
  async info() {
    return fromRuntime(await this.connection.call("adapterInfo", [this.handle]));
  }
  /** Its PEFT files: `{config, safetensors, training}` (adapter_config.json, adapter_model.safetensors, training.json). */
  peftFiles() {
    return this.connection.call("peftFiles", [this.handle]);
  }
  save(storage) {
    return this.connection.call("save", [this.handle, storage.handle]);
  }
  free() {
    return this.connection.call("free", [this.handle]);
  }
}

export class LanguageModel {
  constructor(connection, info) {
    this.connection = connection;
    this.info = fromRuntime(info);
  }

  /**
   * Opens a GGUF model: `source` is its bytes, or a URL fetched (and cached) with `onProgress`.
   * `trainable: false` saves memory when only generating. `device`: "auto" (a hardware WebGPU
   * adapter, else the CPU), "gpu" (WebGPU, any adapter, or a DeviceError) or "cpu".
   */
  static async open(source, { trainable = true, device = "auto", onProgress, signal, workerUrl } = {}) {
    const bytes = source instanceof Uint8Array ? source : await fetchModel(String(source), { onProgress, signal });
    const connection = new Connection(workerUrl);
    const copy = bytes.slice(); // transferred to the worker, so the caller's bytes stay usable
    const info = await connection.call("open", [copy.buffer, trainable, device], { transfer: [copy.buffer] });
    return new LanguageModel(connection, info);
  }

  /** Text generated from `prompt`, piece by piece. `options`: maxTokens, temperature, topK, … */
  generate(prompt, options = {}, { signal } = {}) {
    return this.#stream({ text: prompt }, options, signal);
  }

  /** The assistant's reply to `messages` ([{role, content}]), piece by piece. */
  chat(messages, options = {}, { signal } = {}) {
    return this.#stream({ chat: messages }, options, signal);
  }

  /** Generation with its report (text, tokens, timings, why it stopped). `prompt`: {text} | {chat} | {tokens}. */
  async complete(prompt, options = {}, { signal } = {}) {
    return fromRuntime(await this.connection.call("generate", [{ prompt, options: generateOptions(options) }], { signal }));
  }

  #stream(prompt, options, signal) {
    return stream(
      (onEvent) => this.connection.call("generate", [{ prompt, options: generateOptions(options) }], { onEvent, signal }).then(fromRuntime),
      (event) => ((event.type === "token" || event.type === "tail") && event.text ? event.text : undefined),
    );
  }

  /** The logits of every position of `tokens` (token ids): `tokens.length x vocabSize` floats, row-major. */
  logits(tokens) {
    return this.connection.call("logits", [tokens]);
  }

  async perplexity(text, seq = 128) {
    return fromRuntime(await this.connection.call("perplexity", [text, seq]));
  }

  async plan(config) {
    return fromRuntime(await this.connection.call("plan", [trainConfig(config)]));
  }

  /** A storage for checkpoints and saved adapters. */
  async storage() {
    return new Storage(this.connection, await this.connection.call("storage", []));
  }

  /**
   * Trains an adapter on `data` ({text, name?, jsonl?, evalText?, generalText?}) as `config`
   * (method, rank, steps, lr, …, flat as in Kotlin and Swift; any unset takes the runtime's
   * default). Iterate it for the
   * events ({type: "plan" | "stage" | "step" | "checkpoint" | "warning", …}); `result`
   * resolves to {adapter, report}. Checkpoints go to `storage`; `resume: true` continues.
   */
  train(data, config = {}, { storage, signal } = {}) {
    const run = stream(
      async (onEvent) => {
        const target = storage ?? (await this.storage());
        const { adapter, report } = await this.connection.call("train", [toRuntime(data), trainConfig(config), target.handle], { onEvent, signal });
        return { adapter: new Adapter(this.connection, adapter), report: fromRuntime(report) };
      },
      (event) => event,
    );
    return run;
  }

  /** Loads PEFT files ({config, safetensors, training?}) made for this model. */
  async loadPeft(files) {
    return new Adapter(this.connection, await this.connection.call("loadPeft", [files]));
  }

  /** Loads an `.akp` patch; with `trustedKeys` only one signed by them. */
  async loadPatch(bytes, { label = "patch.akp", trustedKeys = [], allowPort = false } = {}) {
    return new Adapter(this.connection, await this.connection.call("loadPatch", [bytes, label, trustedKeys, allowPort]));
  }

  async loadStored(storage) {
    return new Adapter(this.connection, await this.connection.call("loadStored", [storage.handle]));
  }

  /** Attaches `adapter` at `scale`; returns the id `detach` takes. */
  attach(adapter, scale = 1) {
    return this.connection.call("attach", [adapter.handle, scale]);
  }
  detach(id) {
    return this.connection.call("detach", [id]);
  }
  detachAll() {
    return this.connection.call("detachAll", []);
  }
  setScale(id, scale) {
    return this.connection.call("setScale", [id, scale]);
  }

  /** `adapter` as a ComPEFT patch: {bytes, report}. options: density ("0.1", "auto", "dense"), secretKey, … */
  async compress(adapter, options = {}) {
    const { bytes, report } = await this.connection.call("compress", [adapter.handle, toRuntime(options)]);
    return { bytes, report: fromRuntime(report) };
  }

  /** Frees the model and stops its worker. */
  async close() {
    await this.connection.call("close", []);
    this.connection.worker.terminate();
  }
}
