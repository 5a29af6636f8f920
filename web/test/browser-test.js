// The browser suite, in the page: the real model through the worker, against the golden greedy
// tokens, streaming, a few training steps with progress, a cancel, the adapter exported as PEFT
// files and reloaded to the same output, the error paths, and the WebGPU path (Chromium's
// software adapter, SwiftShader, in CI) against the CPU path. Reports to window.adaptkitTest
// (test/run.mjs reads it).
import { AdaptError, LanguageModel } from "../src/adaptkit.js";

const results = [];
const line = (text) => {
  document.getElementById("log").textContent += text + "\n";
  console.log(text); // test/run.mjs shows the page's console as the suite runs
};

async function test(name, body) {
  const started = performance.now();
  try {
    const note = await body();
    results.push({ name, ok: true, seconds: (performance.now() - started) / 1000, note });
    line(`ok   ${name}${note ? ` (${note})` : ""}`);
  } catch (e) {
    results.push({ name, ok: false, error: `${e?.name}: ${e?.message}` });
    line(`FAIL ${name}: ${e?.name}: ${e?.message}`);
  }
}

function check(condition, message) {
  if (!condition) throw new Error(message);
}

async function rejects(kind, promise) {
  try {
    await promise;
  } catch (e) {
    check(e instanceof AdaptError && e.kind === kind, `expected ${kind}, got ${e?.name}: ${e?.message}`);
    return e;
  }
  throw new Error(`expected ${kind}, nothing was thrown`);
}

const greedy = (maxTokens) => ({ maxTokens, temperature: 0 });
const collect = async (iterable) => { let text = ""; for await (const piece of iterable) text += piece; return text; };

async function main() {
  const golden = await (await fetch("/golden/greedy.json")).json();
  const notes = await (await fetch("/data/sample/notes.txt")).text();
  let model;
  let loaded = 0;
  await test("the model loads from a URL with byte progress", async () => {
    model = await LanguageModel.open("/model.gguf", { onProgress: ({ received }) => { loaded = received; } });
    check(model.info.architecture === "llama" && model.info.layers === 30, JSON.stringify(model.info));
    check(loaded > 50e6, `progress reported ${loaded} bytes`);
    // `auto` takes WebGPU only on a hardware adapter, and says why not.
    const why = model.info.deviceFallback ?? "";
    check(model.info.device === "cpu" && /software GPU|no WebGPU adapter/.test(why), `${model.info.device}: ${why}`);
    return `${(loaded / 1e6).toFixed(1)} MB, device ${model.info.device} (${why})`;
  });
  if (!model) return;

  await test("last-token logits are the reference's (as natively: max |diff| < 1e-3)", async () => {
    const index = await (await fetch("/golden/logits.json")).json();
    const reference = new Float32Array(await (await fetch("/golden/logits.f32")).arrayBuffer());
    const vocab = index.vocab_size;
    let worst = 0;
    for (const prompt of index.prompts) {
      const all = await model.logits(prompt.ids);
      const got = all.subarray(all.length - vocab);
      const want = reference.subarray(prompt.row * vocab, (prompt.row + 1) * vocab);
      let diff = 0;
      for (let i = 0; i < vocab; i++) diff = Math.max(diff, Math.abs(got[i] - want[i]));
      check(diff < 1e-3, `${prompt.name}: max |logit diff| ${diff}`);
      worst = Math.max(worst, diff);
    }
    return `${index.prompts.length} prompts, worst ${worst.toExponential(2)}`;
  });

  await test("greedy tokens are the golden ones (until a near-tie)", async () => {
    const cases = Object.values(golden).find(Array.isArray);
    let same = 0;
    let total = 0;
    for (const c of cases.slice(0, 3)) {
      const report = await model.complete({ tokens: c.prompt_ids }, { ...greedy(golden.max_new_tokens), stopAtEos: false });
      let n = 0;
      while (n < c.tokens.length && report.tokens[n] === c.tokens[n]) n++;
      if (n < c.tokens.length) check(c.steps[n].gap < golden.near_tie_threshold, `${c.name}: diverged at step ${n}`);
      same += n;
      total += c.tokens.length;
    }
    check(same * 10 >= total * 9, `only ${same} of ${total} tokens compared`);
    return `${same}/${total} tokens identical`;
  });

  await test("streamed pieces are the completion's text", async () => {
    const streamed = await collect(model.generate("The capital of France is", greedy(12)));
    const report = await model.complete({ text: "The capital of France is" }, greedy(12));
    check(streamed === report.text && report.tokens.length === 12, `'${streamed}' vs '${report.text}'`);
    return `${report.decodeTokS.toFixed(1)} tok/s decode`;
  });

  const config = { rank: 4, steps: 8, batch: 1, seq: 64, evalEvery: 0, heldOutFraction: 0, checkpointEvery: 0, lr: 1e-3 };
  let trained;
  await test("training streams its steps and the loss falls", async () => {
    const run = model.train({ text: notes, name: "notes.txt" }, config);
    const losses = [];
    for await (const event of run) if (event.type === "step") losses.push(event.loss);
    trained = await run.result;
    check(losses.length === 8 && trained.report.steps === 8, `steps ${losses.length}`);
    const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;
    check(mean(losses.slice(-3)) < mean(losses.slice(0, 3)), `losses ${losses.map((l) => l.toFixed(3))}`);
    window.adaptkitLosses = losses;
    return `loss ${losses[0].toFixed(3)} -> ${losses.at(-1).toFixed(3)}, ${trained.report.tokensPerS.toFixed(0)} tok/s`;
  });

  await test("an exported adapter reloads to the same output", async () => {
    const files = await trained.adapter.peftFiles();
    check(new TextDecoder().decode(files.config).includes('"peft_type"'), "no PEFT config");
    const prompt = { text: "Saturday is bread day." };
    const id = await model.attach(trained.adapter);
    const direct = (await model.complete(prompt, greedy(8))).tokens;
    await model.detach(id);
    const reloaded = await model.loadPeft(files);
    await model.attach(reloaded);
    const again = (await model.complete(prompt, greedy(8))).tokens;
    const perplexity = (await model.perplexity(notes, 64)).perplexity;
    await model.detachAll();
    check(JSON.stringify(direct) === JSON.stringify(again), `${direct} vs ${again}`);
    // run.mjs saves the files; the CLI must score them as the page did.
    window.adaptkitPeft = { config: Array.from(files.config), safetensors: Array.from(files.safetensors), perplexity };
    const patch = await model.compress(reloaded, { density: "0.3" });
    check(patch.report.ratioVsF16 > 10, `patch ratio ${patch.report.ratioVsF16}`);
    return `patch ${(patch.bytes.length / 1024).toFixed(0)} KiB`;
  });

  await test("an aborted training run is cancelled and the model keeps working", async () => {
    const controller = new AbortController();
    const run = model.train({ text: notes }, { ...config, steps: 50 }, { signal: controller.signal });
    let steps = 0;
    const error = await rejects("Cancelled", (async () => {
      for await (const event of run) if (event.type === "step" && ++steps === 1) controller.abort();
    })());
    check(steps <= 3, `ran ${steps} steps after the abort`);
    check((await model.complete({ text: "Hi" }, greedy(4))).tokens.length === 4, "the model stopped working");
    return error.message;
  });

  await test("bad input is a typed error", async () => {
    const truncated = new Uint8Array(await (await fetch("/model.gguf")).arrayBuffer()).slice(0, 4096);
    await rejects("Model", LanguageModel.open(truncated));
    await rejects("Adapter", model.loadPeft({ config: new TextEncoder().encode("{}"), safetensors: new Uint8Array([1, 2, 3]) }));
    await rejects("InvalidArgument", model.complete({ text: "Hi" }, { maxTokens: 4, temperature: -1 }));
    await rejects("InvalidArgument", model.plan({ rank: 0 }));
  });

  const tinyBytes = new Uint8Array(await (await fetch("/tiny.gguf")).arrayBuffer());
  const tinyNative = await (await fetch("/tiny-logits.json")).json();
  const maxDiff = (a, b) => a.reduce((worst, v, i) => Math.max(worst, Math.abs(v - b[i])), 0);
  await test("the CPU path gives the native runtime's logits on a tiny model (max |diff| < 1e-4)", async () => {
    const tiny = await LanguageModel.open(tinyBytes, { device: "cpu" });
    try {
      const diff = maxDiff(await tiny.logits(tinyNative.tokens), tinyNative.logits);
      check(diff < 1e-4, `max |logit diff| page vs native ${diff}`);
      return `${tinyNative.logits.length} logits, worst ${diff.toExponential(2)}`;
    } finally {
      await tiny.close();
    }
  });

  const started = performance.now();
  const stage = (what) => line(`     webgpu: ${what} at ${((performance.now() - started) / 1000).toFixed(0)} s`);
  await test("on WebGPU the real model gives the CPU path's logits and greedy tokens", async () => {
    const gpu = await LanguageModel.open("/model.gguf", { device: "gpu", trainable: false });
    try {
      check(gpu.info.device.startsWith("WebGPU"), `device ${gpu.info.device}`);
      stage("opened");
      const index = await (await fetch("/golden/logits.json")).json();
      const ids = index.prompts[0].ids;
      const diff = maxDiff(await gpu.logits(ids), await model.logits(ids));
      check(diff < 1e-3, `max |logit diff| GPU vs CPU ${diff}`);
      stage("logits");
      const text = { text: "Saturday is bread day." };
      const tokens = async (m) => (await m.complete(text, greedy(4))).tokens.join(",");
      check(await tokens(gpu) === await tokens(model), "GPU and CPU greedy tokens differ");
      stage("generated");
      return `${gpu.info.device}; logits within ${diff.toExponential(1)}`;
    } finally {
      await gpu.close();
    }
  });

  await test("on WebGPU training gives the CPU's losses and the adapter exports to the CPU", async () => {
    const [gpu, cpu] = [await LanguageModel.open(tinyBytes, { device: "gpu" }), await LanguageModel.open(tinyBytes, { device: "cpu" })];
    try {
      // Two steps on each device from the same seed: the same losses (the second after an update).
      const short = { ...config, steps: 2, seq: 16 };
      const losses = async (m) => {
        const run = m.train({ text: notes }, short);
        const seen = [];
        for await (const event of run) if (event.type === "step") seen.push(event.loss);
        return { seen, trained: await run.result };
      };
      const [g, c] = [await losses(gpu), await losses(cpu)];
      stage("trained");
      const close = g.seen.length === 2 && g.seen.every((l, i) => Math.abs(l - c.seen[i]) < 1e-3 * Math.abs(c.seen[i]));
      check(close, `losses GPU ${g.seen} vs CPU ${c.seen}`);
      // The adapter trained on the GPU, exported and loaded on the CPU, acts as it does on the GPU.
      const files = await g.trained.adapter.peftFiles();
      await gpu.attach(g.trained.adapter);
      await cpu.attach(await cpu.loadPeft(files));
      const ids = tinyNative.tokens;
      const diff = maxDiff(await gpu.logits(ids), await cpu.logits(ids));
      check(diff < 1e-3, `with the adapter: max |logit diff| GPU vs CPU ${diff}`);
      stage("exported");
      return `losses ${g.seen.map((l) => l.toFixed(5)).join(", ")} (CPU ${c.seen.map((l) => l.toFixed(5)).join(", ")}); adapter logits within ${diff.toExponential(1)}`;
    } finally {
      await Promise.all([gpu.close(), cpu.close()]);
    }
  });
}

main().finally(() => { window.adaptkitTest = results; });
