// Runs a wasm32-wasip1 program (a `cargo test` binary) under Node's WASI, passing its arguments
// on: the runner of scripts/test-kernels-cross.sh, which tests the SIMD128 kernels on the engine
// that browsers share with Node (V8).
// Usage: node scripts/wasi-run.mjs PROGRAM.wasm [ARGS...]
import { readFile } from "node:fs/promises";
import { argv, env, exit } from "node:process";
import { WASI } from "node:wasi";

const [program, ...args] = argv.slice(2);
const wasi = new WASI({ version: "preview1", args: [program, ...args], env, returnOnExit: true });
const module = await WebAssembly.compile(await readFile(program));
const instance = await WebAssembly.instantiate(module, wasi.getImportObject());
exit(wasi.start(instance));
