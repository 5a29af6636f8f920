// Types of the browser package (src/adaptkit.js), checked with `tsc` against test/types.ts.

export type ErrorKind =
  | "Io" | "Model" | "Adapter" | "Patch" | "InvalidArgument" | "MemoryBudget" | "ContextFull"
  | "Training" | "Device" | "Cancelled" | "Closed" | "Internal";

/** Every failure: `kind` says what failed, the message is the runtime's. */
export class AdaptError extends Error {
  readonly kind: ErrorKind;
  constructor(kind: ErrorKind, message: string);
}

export interface ModelInfo {
  model: string;
  format: "gguf" | "safetensors";
  architecture: string;
  name: string | null;
  parameters: number;
  layers: number;
  dModel: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  ffnDim: number;
  vocabSize: number;
  contextLen: number;
  /** `cpu`, or `WebGPU: ` and the adapter's name. */
  device: string;
  /** Why the CPU was chosen when `device: "auto"` was asked for (no adapter, or a software one). */
  deviceFallback: string | null;
  threads: number;
  trainable: boolean;
  [key: string]: unknown;
}

export interface ChatMessage { role: "system" | "user" | "assistant"; content: string }

export type Prompt = { text: string } | { chat: ChatMessage[] } | { tokens: number[] };

/** Sampling and stopping; unset fields take the runtime's defaults (temperature 0 is greedy). */
export interface GenerateOptions {
  maxTokens?: number;
  temperature?: number;
  topK?: number;
  topP?: number;
  minP?: number;
  repetitionPenalty?: number;
  repeatLastN?: number;
  seed?: number;
  stopStrings?: string[];
  stopAtEos?: boolean;
}

export interface GenerationReport {
  text: string;
  tokens: number[];
  promptTokens: number;
  prefillTokS: number;
  decodeTokS: number;
  stop: "end_of_generation" | "stop_string" | "max_tokens" | "context_full";
  prefillMs: number;
  decodeMs: number;
}

export interface PerplexityReport { perplexity: number; tokens: number; windows: number; seq: number }

/** How to train; unset fields take the runtime's defaults (`adaptkit methods` lists a method's). */
export interface TrainConfig {
  method?: "lora" | "dora" | "ia3" | "prompt" | "prefix" | "dept" | "peqa" | "lofit";
  /** The method's options: an option the method does not take is an InvalidArgument error. */
  rank?: number; alpha?: number; dropout?: number; rslora?: boolean; init?: "kaiming" | "pissa"; freezeA?: boolean;
  targets?: ("q" | "k" | "v" | "o" | "gate" | "up" | "down")[]; virtualTokens?: number; promptInit?: string;
  maxLen?: number; embeddingLr?: number; heads?: number; selectSteps?: number; l1?: number;
  steps?: number;
  batch?: number;
  seq?: number;
  packing?: "stream" | "documents";
  accumulate?: number;
  lr?: number;
  lrSchedule?: "constant" | "linear" | "cosine" | "cosine_with_min_lr";
  minLrRatio?: number;
  warmup?: number;
  maxGradNorm?: number;
  weightDecay?: number;
  seed?: number;
  evalEvery?: number;
  patience?: number;
  checkpointActivations?: boolean;
  checkpointEvery?: number;
  heldOutFraction?: number;
  memoryBudgetMb?: number;
  resume?: boolean;
}

export interface TrainingData { text: string; name?: string; jsonl?: boolean; evalText?: string; generalText?: string }

export interface MemoryPlan { budgetMb: number | null; batch: number; accumulate: number; checkpointActivations: boolean; predictedPeakMb: number }

export interface Evaluation { step: number; heldOut: number | null; general: number | null; generalRise: number | null }

export type TrainingEvent =
  | { type: "plan"; plan: MemoryPlan }
  | { type: "stage"; name: string; steps: number }
  | { type: "step"; step: number; steps: number; loss: number; lr: number; gradNorm: number; tokensPerS: number; evaluation: Evaluation | null }
  | { type: "checkpoint"; step: number; key: string }
  | { type: "warning"; message: string };

export interface TrainingReport {
  method: string;
  steps: number;
  trainLoss: number;
  evalLossBefore: number | null;
  evalLoss: number | null;
  tokens: number;
  tokensPerS: number;
  plan: MemoryPlan;
  [key: string]: unknown;
}

export interface PeftFiles { config: Uint8Array; safetensors: Uint8Array; training?: Uint8Array | null }

export interface CompressOptions {
  /** A fraction in (0, 1], `auto` or `dense` (default 0.1). */
  density?: string;
  denseType?: "f16" | "f32";
  evalText?: string;
  generalText?: string;
  /** A secret key file's text: the patch is signed. */
  secretKey?: string;
}

export interface CompressedPatch { bytes: Uint8Array; report: { ratioVsF16: number; bytes: number; signed: boolean; base: string; [key: string]: unknown } }

/** A streaming call: iterate it for its items; `result` settles when the call ends. */
export interface Streaming<T, R> extends AsyncIterable<T> { readonly result: Promise<R> }

export interface CallOptions { signal?: AbortSignal }

export function fetchModel(url: string, options?: { onProgress?: (p: { received: number; total: number }) => void; cache?: string | false; signal?: AbortSignal }): Promise<Uint8Array>;

export interface BenchReport {
  prefillTokS: number;
  decodeTokS: number;
  trainTokS: number | null;
  threads: number;
  promptTokens: number;
  genTokens: number;
  [key: string]: unknown;
}

/** The runtime's benchmark (what `adaptkit bench` runs natively), in a worker of its own. */
export function bench(source: string | Uint8Array, options?: { promptTokens?: number; genTokens?: number; repeats?: number; trainSteps?: number; onProgress?: (line: string) => void; workerUrl?: URL }): Promise<BenchReport>;

export class Storage {
  entries(): Promise<[string, Uint8Array][]>;
  write(key: string, bytes: Uint8Array): Promise<void>;
}

export class Adapter {
  info(): Promise<{ method: string; label: string; trainableParameters: number; scale: number; [key: string]: unknown }>;
  peftFiles(): Promise<PeftFiles>;
  save(storage: Storage): Promise<void>;
  free(): Promise<void>;
}

export class LanguageModel {
  readonly info: ModelInfo;
  static open(source: string | URL | Uint8Array, options?: { trainable?: boolean; device?: "auto" | "gpu" | "cpu"; onProgress?: (p: { received: number; total: number }) => void; signal?: AbortSignal; workerUrl?: URL }): Promise<LanguageModel>;
  generate(prompt: string, options?: GenerateOptions, call?: CallOptions): Streaming<string, GenerationReport>;
  chat(messages: ChatMessage[], options?: GenerateOptions, call?: CallOptions): Streaming<string, GenerationReport>;
  complete(prompt: Prompt, options?: GenerateOptions, call?: CallOptions): Promise<GenerationReport>;
  /** The logits of every position of `tokens`: `tokens.length x vocabSize` floats, row-major. */
  logits(tokens: number[]): Promise<Float32Array>;
  perplexity(text: string, seq?: number): Promise<PerplexityReport>;
  plan(config: TrainConfig): Promise<MemoryPlan>;
  storage(): Promise<Storage>;
  train(data: TrainingData, config?: TrainConfig, call?: CallOptions & { storage?: Storage }): Streaming<TrainingEvent, { adapter: Adapter; report: TrainingReport }>;
  loadPeft(files: PeftFiles): Promise<Adapter>;
  loadPatch(bytes: Uint8Array, options?: { label?: string; trustedKeys?: string[]; allowPort?: boolean }): Promise<Adapter>;
  loadStored(storage: Storage): Promise<Adapter>;
  attach(adapter: Adapter, scale?: number): Promise<number>;
  detach(id: number): Promise<void>;
  detachAll(): Promise<void>;
  setScale(id: number, scale: number): Promise<void>;
  compress(adapter: Adapter, options?: CompressOptions): Promise<CompressedPatch>;
  close(): Promise<void>;
}
