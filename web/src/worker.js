// The Web Worker every heavy call runs in (the page never blocks): it holds the model, the
// adapters and the storages, and answers src/adaptkit.js's messages
//   {id, op, args}  ->  {id, event} ... then {id, result} or {id, error: {kind, message}}.
// A call's events cancel it when the page has set the shared cancel flag to its id (a
// SharedArrayBuffer: the worker is busy inside the call and reads no messages until it ends).
import init, * as wasm from "../pkg/adaptkit_wasm.js";

const ready = init();
const KINDS = new Set(["Io", "Model", "Adapter", "Patch", "InvalidArgument", "MemoryBudget", "ContextFull",
  "Training", "Device", "Cancelled", "Closed", "Internal"]);
let model = null;
let cancelFlag = null;
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
    return cancelFlag !== null && Atomics.load(cancelFlag, 0) === id;
  };
}

const ops = {
  setup(_id, flag) {
    cancelFlag = flag ? new Int32Array(flag) : null;
  },
  open(_id, bytes, trainable) {
    model?.free();
    model = null;
    model = wasm.Model.open(new Uint8Array(bytes), trainable);
    return JSON.parse(model.info());
  },
  info: () => JSON.parse(opened().info()),
  fingerprint: () => opened().fingerprint(),
  generate: (id, request) => JSON.parse(opened().generate(JSON.stringify(request), events(id))),
  logits: (_id, tokens) => opened().logits(Uint32Array.from(tokens)),
  perplexity: (_id, text, seq) => JSON.parse(opened().perplexity(text, seq)),
  plan: (_id, config) => JSON.parse(opened().plan(JSON.stringify(config))),
  train(id, data, config, storage) {
    const trained = opened().train(JSON.stringify(data), JSON.stringify(config), held(storage, "storage"), events(id));
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
  peftFiles(_id, adapter) {
    const a = held(adapter, "adapter");
    return { config: a.configJson(), safetensors: a.safetensors(), training: a.trainingJson() ?? null };
  },
  save: (_id, adapter, storage) => held(adapter, "adapter").save(held(storage, "storage")),
  attach: (_id, adapter, scale) => opened().attach(held(adapter, "adapter"), scale),
  detach: (_id, attached) => opened().detach(attached),
  detachAll: () => opened().detachAll(),
  setScale: (_id, attached, scale) => opened().setScale(attached, scale),
  compress(_id, adapter, options) {
    const patch = opened().compress(held(adapter, "adapter"), JSON.stringify(options));
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

self.onmessage = async ({ data: { id, op, args } }) => {
  try {
    await ready;
    const result = ops[op](id, ...args);
    self.postMessage({ id, result });
  } catch (error) {
    // wasm errors are named after their kind (`ModelError`); anything else is a bug here.
    const kind = String(error?.name ?? "").replace(/Error$/, "");
    const known = KINDS.has(kind) ? kind : "Internal";
    self.postMessage({ id, error: { kind: known, message: String(error?.message ?? error) } });
  }
};
