// Type-checks the browser package's declarations (src/adaptkit.d.ts) as an app uses them:
// `tsc -p web/test/tsconfig.json` (scripts/browser-test.sh runs it).
import { AdaptError, LanguageModel, type TrainingEvent } from "../src/adaptkit.js";

export async function personalize(url: string, notes: string): Promise<string> {
  const model = await LanguageModel.open(url, { device: "auto", onProgress: ({ received, total }) => console.log(received / total) });
  const layers: number = model.info.layers;
  let before = "";
  for await (const piece of model.generate("Saturday is bread day.", { maxTokens: 20, temperature: 0 })) before += piece;
  const controller = new AbortController();
  const run = model.train({ text: notes }, { method: "lora", rank: 8, steps: 40, lr: 3.5e-4, packing: "documents" }, { signal: controller.signal });
  for await (const event of run) {
    const e: TrainingEvent = event;
    if (e.type === "step" && e.loss > 10) controller.abort();
  }
  const { adapter, report } = await run.result;
  const steps: number = report.steps;
  await model.attach(adapter, 1);
  const files = await adapter.peftFiles();
  const patch = await model.compress(adapter, { density: "0.1" });
  const reloaded = await model.loadPatch(patch.bytes, { label: "notes.akp" });
  const ratio: number = patch.report.ratioVsF16;
  const reply = await model.complete({ chat: [{ role: "user", content: "Hi" }] }, { maxTokens: 8 });
  try {
    await model.loadPeft({ config: files.config, safetensors: new Uint8Array() });
  } catch (e) {
    if (e instanceof AdaptError && e.kind === "Adapter") console.log(e.message);
  }
  await reloaded.free();
  await model.close();
  return `${layers} ${steps} ${ratio} ${before} ${reply.text}`;
}
