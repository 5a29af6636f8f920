// The Web Worker every heavy call runs in (the page never blocks): it holds the model, the
// adapters and the storages, and answers src/adaptkit.js's messages
//   {id, op, args}  ->  {id, event} ... then {id, result} or {id, error: {kind, message}}.
// Calls run one at a time, in order. A call's events cancel it when the page has asked: by a
// `cancel` message, which the worker reads whenever a call awaits (on WebGPU, at every
// read-back), or through the shared cancel flag (a SharedArrayBuffer: on the CPU the worker is
// busy inside the call and reads no messages until it ends).
//
// The runtime comes in two builds of one API: the CPU path alone (pkg, 2.5 MB gzipped) and with
// WebGPU (pkg-webgpu, 5.9 MB). A worker loads one, chosen by its first `open`: the WebGPU build
// when a GPU is asked for or, for "auto", when the browser has a hardware adapter (a fallback
// adapter such as SwiftShader is slower than the CPU path). Other first calls load the CPU build.
let wasm = null;
let wasmHasWebgpu = false;
let fallback = null; // why "auto" chose the CPU, decided here before the CPU build was loaded

async function load(webgpu) {
  if (wasm && wasmHasWebgpu !== webgpu) {
    throw Object.assign(new Error("this worker runs the other build: open the model in a new LanguageModel"), { name: "InvalidArgumentError" });
  }
  if (!wasm) {
    const module = webgpu ? await import("../pkg-webgpu/adaptkit_wasm.js") : await import("../pkg/adaptkit_wasm.js");
    await module.default();
    [wasm, wasmHasWebgpu] = [module, webgpu];
  }
}

/** The build and device for `open`'s `device`, and for "auto" on the CPU, why. */
async function choose(device) {
  if (device !== "auto") return { webgpu: device === "gpu", device };
  const adapter = await globalThis.navigator?.gpu?.requestAdapter().catch(() => null);
  if (!adapter) return { webgpu: false, device: "cpu", why: "no WebGPU adapter (the browser gave none)" };
  if (adapter.info?.isFallbackAdapter ?? adapter.isFallbackAdapter) {
    return { webgpu: false, device: "cpu", why: "only a software GPU was found (WebGPU: fallback (software) adapter); the CPU path is faster" };
  }
  return { webgpu: true, device: "auto" };
}

/** The model's info as the page sees it (with "auto"'s reason when the worker chose the CPU). */
function describe() {
  const info = JSON.parse(opened().info());
  if (fallback && info.device === "cpu") info.device_fallback = fallback;
  return info;
}
const KINDS = new Set(["Io", "Model", "Adapter", "Patch", "InvalidArgument", "MemoryBudget", "ContextFull",
  "Training", "Device", "Cancelled", "Closed", "Internal"]);
let model = null;
let cancelFlag = null;
const cancelled = new Set(); // ids of calls the page cancelled by message
const handles = new Map(); // id -> Adapter or Storage
let nextHandle = 1;

function keep(object) {
  handles.set(nextHandle, object);
  return nextHandle++;
}

function held(handle, what) {
  const object = handles.get(handle);
  if (!object) throw Object.assign(new Error(`no ${what} ${handle}: it was freed`), { name: "InvalidArgumentError" });
  return object;
}

function opened() {
  if (!model) throw Object.assign(new Error("no model is open"), { name: "ClosedError" });
  return model;
}

/** The callback a streaming call gets: posts each event, and cancels when asked to. */
function events(id) {
  return (json) => {
    self.postMessage({ id, event: JSON.parse(json) });
    return cancelled.has(id) || (cancelFlag !== null && Atomics.load(cancelFlag, 0) === id);
  };
}

const ops = {
  setup(_id, flag) {
    cancelFlag = flag ? new Int32Array(flag) : null;
  },
  async open(_id, bytes, trainable, device) {
    model?.free();
    model = null;
    const choice = await choose(device);
    await load(choice.webgpu);
    fallback = choice.why ?? null;
    model = await wasm.Model.open(new Uint8Array(bytes), trainable, choice.device);
    return describe();
  },
  info: describe,
  fingerprint: () => opened().fingerprint(),
  generate: async (id, request) => JSON.parse(await opened().generate(JSON.stringify(request), events(id))),
  logits: (_id, tokens) => opened().logits(Uint32Array.from(tokens)),
  perplexity: async (_id, text, seq) => JSON.parse(await opened().perplexity(text, seq)),
  plan: (_id, config) => JSON.parse(opened().plan(JSON.stringify(config))),
  async train(id, data, config, storage) {
    const trained = await opened().train(JSON.stringify(data), JSON.stringify(config), held(storage, "storage"), events(id));
    const result = { adapter: keep(trained.takeAdapter()), report: JSON.parse(trained.report) };
    trained.free();
    return result;
  },
  storage: () => keep(new wasm.Storage()),
  storageKeys: (_id, storage) => held(storage, "storage").keys(),
  storageRead: (_id, storage, key) => held(storage, "storage").read(key) ?? null,
  storageWrite: (_id, storage, key, bytes) => held(storage, "storage").write(key, new Uint8Array(bytes)),
  loadPeft: (_id, files) => keep(opened().loadPeft(files.config, files.safetensors, files.training ?? undefined)),
  loadPatch: (_id, bytes, label, trustedKeys, allowPort) => keep(opened().loadPatch(bytes, label, trustedKeys, allowPort)),
  loadStored: (_id, storage) => keep(opened().loadStored(held(storage, "storage"))),
  adapterInfo: (_id, adapter) => JSON.parse(held(adapter, "adapter").info()),
  async peftFiles(_id, adapter) {
    const files = await held(adapter, "adapter").peftFiles();
    return { ...files, training: files.training ?? null };
  },
  save: (_id, adapter, storage) => held(adapter, "adapter").save(held(storage, "storage")),
  attach: (_id, adapter, scale) => opened().attach(held(adapter, "adapter"), scale),
  detach: (_id, attached) => opened().detach(attached),
  detachAll: () => opened().detachAll(),
  setScale: (_id, attached, scale) => opened().setScale(attached, scale),
  async compress(_id, adapter, options) {
    const patch = await opened().compress(held(adapter, "adapter"), JSON.stringify(options));
    const result = { bytes: patch.bytes, report: JSON.parse(patch.report) };
    patch.free();
    return result;
  },
  inspect: (_id, bytes, label) => JSON.parse(wasm.inspect(bytes, label)),
  verify: (_id, bytes, label, trustedKeys) => JSON.parse(wasm.verify(bytes, label, trustedKeys)),
  keygen: () => JSON.parse(wasm.keygen()),
  bench: (id, bytes, options) => JSON.parse(wasm.bench(new Uint8Array(bytes), JSON.stringify(options), (line) => self.postMessage({ id, event: { type: "progress", line } }))),
  free(_id, handle) {
    handles.get(handle)?.free();
    handles.delete(handle);
  },
  close() {
    model?.free();
    model = null;
  },
};

async function run(id, op, args) {
  try {
    // `open` chooses the build; `setup` (the connection's first message) needs none.
    if (op !== "open" && op !== "setup" && !wasm) await load(false);
    const result = await ops[op](id, ...args);
    self.postMessage({ id, result });
  } catch (error) {
    // wasm errors are named after their kind (`ModelError`); anything else is a bug here.
    const kind = String(error?.name ?? "").replace(/Error$/, "");
    const known = KINDS.has(kind) ? kind : "Internal";
    self.postMessage({ id, error: { kind: known, message: String(error?.message ?? error) } });
  } finally {
    cancelled.delete(id);
  }
}

let queue = Promise.resolve();
self.onmessage = ({ data: { id, op, args } }) => {
  // A cancel is for a call that is running or queued: it must not wait behind it.
  if (op === "cancel") return void cancelled.add(args[0]);
  queue = queue.then(() => run(id, op, args));
};
