//! The CLI contract: one JSON object as the last stdout line with `--json`, and for bad input a
//! one-line error on stderr with exit code 2 (no panic, no backtrace).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use adaptkit::format::gguf::GgufWriter;
use adaptkit::quant::GgmlType;

/// The real model's location, shared with the core's golden tests.
#[path = "../../core/tests/common/real_model.rs"]
mod shared_model;
use shared_model::env_flag;

fn adaptkit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_adaptkit")).args(args).env_remove("RUST_BACKTRACE").output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Exit code 2 and exactly one stderr line, which contains `needle`.
fn assert_clean_failure(out: &Output, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line expected: {err}");
    assert!(err.starts_with("error: ") && err.contains(needle), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

fn last_json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", stderr(out));
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

/// `adaptkit train` on `data` into `out`, with `extra` arguments.
fn train(model: &str, data: &Path, out: &Path, extra: &[&str]) -> Output {
    let base = ["train", "--model", model, "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap()];
    adaptkit(&[&base[..], extra].concat())
}

/// A bundled file of `data/sample/`.
fn sample(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/sample").join(name)
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("adaptkit-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// A GGUF with Llama metadata for a 1-layer model of width 256 and the given architecture,
/// holding only a token embedding of type `ty`.
fn write_partial_model(path: &Path, architecture: &str, ty: GgmlType) {
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", architecture).unwrap();
    for (key, value) in [
        ("block_count", 1u32),
        ("embedding_length", 256),
        ("feed_forward_length", 512),
        ("attention.head_count", 4),
        ("context_length", 64),
    ] {
        w.add_metadata(format!("{architecture}.{key}"), value).unwrap();
    }
    w.add_metadata(format!("{architecture}.attention.layer_norm_rms_epsilon"), 1e-5f32).unwrap();
    let bytes = ty.bytes_for(256 * 8).unwrap() as usize;
    w.add_tensor("token_embd.weight", ty, &[256, 8], vec![0; bytes]).unwrap();
    w.write_file(path).unwrap();
}

#[test]
fn missing_model_file_is_one_line_exit_2() {
    assert_clean_failure(
        &adaptkit(&["generate", "--model", "/nonexistent/m.gguf", "--prompt", "hi"]),
        "/nonexistent/m.gguf",
    );
    assert_clean_failure(&adaptkit(&["info", "/nonexistent/m.gguf", "--json"]), "no such file");
}

#[test]
fn a_file_that_is_not_gguf_is_named() {
    let path = scratch("not-a-model.gguf");
    std::fs::write(&path, b"this is a text file, not a model").unwrap();
    assert_clean_failure(&adaptkit(&["info", path.to_str().unwrap()]), "not a GGUF file");
    assert_clean_failure(
        &adaptkit(&["generate", "--model", path.to_str().unwrap(), "--prompt", "x"]),
        "not a GGUF file",
    );
}

#[test]
fn unsupported_architecture_and_tensor_type_are_named() {
    let gpt2 = scratch("gpt2.gguf");
    write_partial_model(&gpt2, "gpt2", GgmlType::F32);
    // A newcomer's first look: one line that names the architecture and what is supported.
    assert_clean_failure(
        &adaptkit(&["info", gpt2.to_str().unwrap()]),
        "unsupported architecture 'gpt2' (supported: llama, mistral, gemma3)",
    );
    assert_clean_failure(
        &adaptkit(&["generate", "--model", gpt2.to_str().unwrap(), "--prompt", "x"]),
        "'gpt2'",
    );
    let q2k = scratch("q2k.gguf");
    write_partial_model(&q2k, "llama", GgmlType::Q2K);
    assert_clean_failure(&adaptkit(&["generate", "--model", q2k.to_str().unwrap(), "--prompt", "x"]), "Q2_K");
}

#[test]
fn bad_sampling_options_are_refused_before_loading() {
    assert_clean_failure(&adaptkit(&["generate", "--prompt", "x", "--top-p", "0"]), "top-p");
    assert_clean_failure(&adaptkit(&["generate", "--prompt", "x", "--temperature=-1"]), "temperature");
}

/// The demo model, when fetched (CI fetches it and requires it; see scripts/test.sh).
fn real_model() -> Option<String> {
    shared_model::real_model().map(|path| path.to_string_lossy().into_owned())
}

/// Gemma 3 270M, when fetched (CI fetches it and requires it; see scripts/test.sh).
fn gemma_model() -> Option<String> {
    shared_model::gemma_model().map(|path| path.to_string_lossy().into_owned())
}

/// The user's journey on the second family: LoRA on the bundled journal lowers its held-out
/// perplexity with general English watched (and not worse), the adapter generates, merges into
/// a GGUF that scores like it (q/k rows back in Gemma's rotate-half order), and compresses into
/// a patch that scores like it.
#[test]
fn gemma3_trains_generates_merges_and_patches() {
    let Some(model) = gemma_model() else { return };
    let info = last_json(&adaptkit(&["info", &model, "--json"]));
    assert_eq!(
        (info["architecture"].as_str(), info["layers"].as_u64()),
        (Some("gemma3"), Some(18)),
        "{info}"
    );
    let out = scratch("gemma-lora");
    let general = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference/ppl_text.txt");
    let report = last_json(&train(
        &model,
        &sample("journal.txt"),
        &out,
        &[
            "--steps",
            "12",
            "--batch",
            "2",
            "--lr",
            "2e-4",
            "--eval-every",
            "0",
            "--general-eval",
            general.to_str().unwrap(),
            "--json",
        ],
    ));
    let (before, after) =
        (report["eval_loss_before"].as_f64().unwrap(), report["eval_loss"].as_f64().unwrap());
    let (general_base, general_after) =
        (report["general_loss_base"].as_f64().unwrap(), report["general_loss"].as_f64().unwrap());
    eprintln!(
        "gemma3 LoRA: held-out ppl {:.2} -> {:.2}, general English {:.2} -> {:.2}",
        before.exp(),
        after.exp(),
        general_base.exp(),
        general_after.exp()
    );
    assert!(after.exp() < 0.5 * before.exp(), "{report}");
    assert!(general_after < general_base + 0.05, "general English must not get worse: {report}");

    let adapter = out.to_str().unwrap();
    let generated = last_json(&adaptkit(&[
        "generate",
        "--model",
        &model,
        "--adapter",
        adapter,
        "--prompt",
        "Hive 3:",
        "--max-tokens",
        "8",
        "--temperature",
        "0",
        "--json",
    ]));
    assert!(!generated["tokens"].as_array().unwrap().is_empty(), "{generated}");

    let text = scratch("gemma-eval.txt");
    std::fs::write(&text, &std::fs::read_to_string(sample("journal.txt")).unwrap()[..3000]).unwrap();
    let text = text.to_str().unwrap();
    let eval = |args: &[&str]| {
        let mut all = vec!["eval", "--data", text, "--seq", "128", "--json"];
        all.extend(args);
        last_json(&adaptkit(&all))["perplexity"].as_f64().unwrap()
    };
    let (report, with_adapter, merged_ppl) =
        merge_and_score(&model, adapter, text, "128", "gemma-merged.gguf");
    assert!(with_adapter < 0.8 * eval(&["--model", &model]), "the adapter must matter on the journal");
    assert_eq!(report["tensors_merged"], 18 * 7, "{report}");
    assert!(
        (merged_ppl - with_adapter).abs() / with_adapter < 0.005,
        "unmerged {with_adapter} vs merged {merged_ppl}"
    );

    let patch = scratch("gemma.akp");
    let patch = patch.to_str().unwrap();
    last_json(&adaptkit(&[
        "patch",
        "compress",
        adapter,
        "--model",
        &model,
        "--out",
        patch,
        "--density",
        "dense",
        "--dtype",
        "f32",
        "--json",
    ]));
    assert_eq!(
        eval(&["--model", &model, "--adapter", patch]),
        with_adapter,
        "a dense f32 patch is the adapter"
    );
}

#[test]
fn info_and_generate_print_one_json_object_last() {
    let Some(model) = real_model() else { return };
    let info = last_json(&adaptkit(&["info", &model, "--json"]));
    assert_eq!(info["architecture"], "llama");
    assert_eq!(info["layers"], 30);
    assert_eq!(info["tensor_types"]["Q4_1"], 210);

    let out = adaptkit(&[
        "generate",
        "--model",
        &model,
        "--chat",
        "--prompt",
        "What is the capital of France?",
        "--temperature",
        "0",
        "--max-tokens",
        "12",
        "--threads",
        "2",
        "--json",
    ]);
    let result = last_json(&out);
    assert!(result["text"].as_str().unwrap().contains("Paris"), "{result}");
    assert!(result["tokens"].as_array().unwrap().len() <= 12);
    assert!(result["prompt_tokens"].as_u64().unwrap() > 10);
    assert!(result["prefill_tok_s"].as_f64().unwrap() > 0.0);
    assert!(["eos", "max_tokens"].contains(&result["stop"].as_str().unwrap()));
}

#[test]
fn a_prompt_longer_than_the_context_is_refused() {
    let Some(model) = real_model() else { return };
    let prompt = "word ".repeat(9000); // SmolLM2's context is 8192 tokens
    assert_clean_failure(&adaptkit(&["generate", "--model", &model, "--prompt", &prompt]), "context of 8192");
}

#[test]
fn sampling_is_reproducible_with_a_seed() {
    let Some(model) = real_model() else { return };
    let run = |seed: &str| {
        last_json(&adaptkit(&[
            "generate",
            "--model",
            &model,
            "--prompt",
            "Once upon a time",
            "--max-tokens",
            "12",
            "--seed",
            seed,
            "--json",
        ]))["tokens"]
            .clone()
    };
    assert_eq!(run("7"), run("7"));
}

#[test]
fn fetch_into_a_cache_that_has_the_model_downloads_nothing() {
    let Some(model) = real_model() else { return };
    let model = PathBuf::from(model);
    if model.file_name().unwrap() != "SmolLM2-135M-Instruct.Q4_1.gguf" {
        return; // a differently named test model is not the fetch target
    }
    let dir = model.parent().unwrap().to_str().unwrap();
    let result = last_json(&adaptkit(&["fetch", "--dir", dir, "--json"]));
    assert_eq!(result["downloaded"], false);
    assert_eq!(result["model"], model.to_str().unwrap());
    assert_eq!(result["sha256"], "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53");
}

/// A short scratch text for perplexity checks.
fn fox_text(name: &str) -> PathBuf {
    let text = scratch(name);
    std::fs::write(&text, "The quick brown fox jumps over the lazy dog. ".repeat(20)).unwrap();
    text
}

/// `eval --seq 64` of `text` with `extra` arguments (adapters) and environment `env`.
fn fox_perplexity(model: &str, text: &Path, extra: &[&str], env: &[(&str, &str)]) -> f64 {
    let mut args = vec!["eval", "--model", model, "--data", text.to_str().unwrap(), "--seq", "64", "--json"];
    args.extend(extra);
    last_json(&adaptkit_env(&args, env))["perplexity"].as_f64().unwrap()
}

#[test]
fn generate_and_eval_take_peft_adapters() {
    let Some(model) = real_model() else { return };
    let adapter = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference/golden/peft_lora");
    let adapter = adapter.to_str().unwrap();
    let run = |extra: &[&str]| {
        let mut args =
            vec!["generate", "--model", &model, "--prompt", "The quick brown fox", "--temperature", "0"];
        args.extend(["--max-tokens", "8", "--json"]);
        args.extend(extra);
        last_json(&adaptkit(&args))["tokens"].clone()
    };
    let base = run(&[]);
    assert_ne!(run(&["--adapter", adapter]), base, "the adapter changes the continuation");
    assert_eq!(run(&["--adapter", &format!("{adapter}:0")]), base, "scale 0 is the base model");

    let text = fox_text("eval.txt");
    let eval = |extra: &[&str]| fox_perplexity(&model, &text, extra, &[]);
    assert_ne!(eval(&["--adapter", adapter]), eval(&[]));

    assert_clean_failure(
        &adaptkit(&["generate", "--model", &model, "--prompt", "x", "--adapter", "/nonexistent"]),
        "no such adapter directory or patch file",
    );
}

#[test]
fn merge_writes_a_gguf_that_scores_like_the_unmerged_adapter() {
    let Some(model) = real_model() else { return };
    let adapter = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference/golden/peft_lora");
    let adapter = adapter.to_str().unwrap();
    let text = scratch("merge-eval.txt");
    std::fs::write(&text, "A short story: the lighthouse keeper counted ships every night. ".repeat(12))
        .unwrap();
    let (report, with_adapter, merged_ppl) =
        merge_and_score(&model, adapter, text.to_str().unwrap(), "64", "merged.gguf");
    assert_eq!(report["tensors_merged"], 21, "{report}");
    let merged = scratch("merged.gguf");
    let merged = merged.to_str().unwrap();
    assert!(
        (with_adapter - merged_ppl).abs() / with_adapter < 0.005,
        "unmerged {with_adapter} vs merged {merged_ppl}"
    );
    assert_clean_failure(&adaptkit(&["merge", "--model", &model, "--out", merged]), "--adapter");
    assert_clean_failure(
        &adaptkit(&["merge", "--model", &model, "--adapter", adapter, "--out", merged, "--type", "Q2_K"]),
        "Q2_K",
    );
}

/// `merge --type F16` of `adapter` into `model` as the scratch file `name`: its report, and the
/// perplexities of `text` (windows of `seq`) with the adapter unmerged and with the merged file.
fn merge_and_score(
    model: &str,
    adapter: &str,
    text: &str,
    seq: &str,
    name: &str,
) -> (serde_json::Value, f64, f64) {
    let merged = scratch(name);
    let merged = merged.to_str().unwrap();
    let report = last_json(&adaptkit(&[
        "merge",
        "--model",
        model,
        "--adapter",
        adapter,
        "--out",
        merged,
        "--type",
        "F16",
        "--json",
    ]));
    let eval = |args: &[&str]| {
        let mut all = vec!["eval", "--data", text, "--seq", seq, "--json"];
        all.extend(args);
        last_json(&adaptkit(&all))["perplexity"].as_f64().unwrap()
    };
    (report, eval(&["--model", model, "--adapter", adapter]), eval(&["--model", merged]))
}

#[test]
fn train_saves_an_adapter_that_generate_loads() {
    let Some(model) = real_model() else { return };
    let data = sample("notes.txt");
    let out = scratch("trained-adapter");
    const SHORT: [&str; 9] = ["--steps", "2", "--batch", "1", "--seq", "32", "--lr", "1e-3", "--json"];
    let report = last_json(&train(&model, &data, &out, &SHORT));
    assert_eq!(report["steps"], 2, "{report}");
    assert!(
        report["train_loss"].as_f64().unwrap().is_finite() && report["eval_loss"].as_f64().is_some(),
        "{report}"
    );
    assert!(out.join("adapter_config.json").is_file() && out.join("adapter_model.safetensors").is_file());
    let generated = last_json(&adaptkit(&[
        "generate",
        "--model",
        &model,
        "--adapter",
        out.to_str().unwrap(),
        "--prompt",
        "Bees",
        "--max-tokens",
        "4",
        "--json",
    ]));
    assert!(generated["tokens"].as_array().is_some());
    assert_clean_failure(&train(&model, &data, &out, &["--targets", "q,lm_head"]), "lm_head");
    assert_clean_failure(&train(&model, &data, &out, &["--rank", "0"]), "--rank");
}

/// Every method trains, saves, evaluates and generates from the CLI; the mergeable ones merge
/// into a GGUF that scores like the adapter; options that do not apply are refused.
#[test]
fn every_method_trains_evaluates_and_merges_from_the_cli() {
    let Some(model) = real_model() else { return };
    let data = sample("notes.txt");
    let text = scratch("methods-eval.txt");
    std::fs::write(
        &text,
        "Notes: the lighthouse keeper counted ships every night and wrote them down. ".repeat(10),
    )
    .unwrap();
    let eval = |args: &[&str]| {
        let mut all = vec!["eval", "--data", text.to_str().unwrap(), "--seq", "64", "--json"];
        all.extend(args);
        last_json(&adaptkit(&all))["perplexity"].as_f64().unwrap()
    };
    let base = eval(&["--model", &model]);
    const SHORT: [&str; 10] =
        ["--steps", "2", "--batch", "1", "--seq", "32", "--eval-every", "0", "--json", "--seed"];
    for (method, extra) in [
        ("lora", vec!["--rank", "2"]),
        ("dora", vec!["--rank", "2", "--targets", "q,v"]),
        ("ia3", vec![]),
        ("prompt", vec!["--virtual-tokens", "4", "--prompt-init", "Notes:"]),
        ("prefix", vec!["--virtual-tokens", "4"]),
        ("dept", vec!["--virtual-tokens", "4", "--rank", "2"]),
        // Two steps at the default rate move the scales by less than an f16 step.
        ("peqa", vec!["--targets", "v,o", "--lr", "2e-3"]),
        ("lofit", vec!["--heads", "4", "--select-steps", "1"]),
    ] {
        let out = scratch(&format!("method-{method}"));
        let mut args = vec!["--method", method];
        args.extend(SHORT);
        args.push("1");
        args.extend(extra);
        let report = last_json(&train(&model, &data, &out, &args));
        assert_eq!(report["method"], method, "{report}");
        assert!(report["trainable_parameters"].as_u64().unwrap() > 0, "{report}");
        let adapter = out.to_str().unwrap();
        let adapted = eval(&["--model", &model, "--adapter", adapter]);
        assert!(adapted.is_finite() && adapted != base, "{method}: perplexity {adapted} (base {base})");
        let generated = last_json(&adaptkit(&[
            "generate",
            "--model",
            &model,
            "--adapter",
            adapter,
            "--prompt",
            "Notes",
            "--max-tokens",
            "3",
            "--json",
        ]));
        assert!(generated["tokens"].as_array().is_some(), "{method}: {generated}");
        let merged = scratch(&format!("method-{method}.gguf"));
        let merge = adaptkit(&[
            "merge",
            "--model",
            &model,
            "--adapter",
            adapter,
            "--out",
            merged.to_str().unwrap(),
            "--type",
            "F16",
            "--json",
        ]);
        if matches!(method, "prompt" | "prefix" | "dept") {
            assert_clean_failure(&merge, &format!("a {method} adapter does not merge into the weights"));
            continue;
        }
        last_json(&merge);
        let merged_ppl = eval(&["--model", merged.to_str().unwrap()]);
        assert!(
            (merged_ppl - adapted).abs() / adapted < 2e-3,
            "{method}: merged {merged_ppl} vs unmerged {adapted}"
        );
    }
    // PEQA merged into the base's own format keeps Q4_1 and writes only the scales.
    let peqa = scratch("method-peqa");
    let same = scratch("method-peqa-same.gguf");
    last_json(&adaptkit(&[
        "merge",
        "--model",
        &model,
        "--adapter",
        peqa.to_str().unwrap(),
        "--out",
        same.to_str().unwrap(),
        "--json",
    ]));
    let info = last_json(&adaptkit(&["info", same.to_str().unwrap(), "--json"]));
    assert_eq!(info["tensor_types"], last_json(&adaptkit(&["info", &model, "--json"]))["tensor_types"]);
    let tuned = eval(&["--model", same.to_str().unwrap()]);
    let adapted = eval(&["--model", &model, "--adapter", peqa.to_str().unwrap()]);
    assert!((tuned - adapted).abs() / adapted < 1e-4, "PEQA GGUF {tuned} vs adapter {adapted}");

    let out = scratch("method-bad");
    // A bad value is one line too, naming the value and the choices.
    let unknown = train(&model, &data, &out, &["--method", "lorra"]);
    assert_clean_failure(&unknown, "'lorra'");
    assert!(stderr(&unknown)
        .contains("unknown method (one of: lora, dora, ia3, prompt, prefix, dept, peqa, lofit)"));
    assert_clean_failure(
        &train(&model, &data, &out, &["--method", "ia3", "--rank", "4"]),
        "--rank does not apply to --method ia3 (it takes --targets)",
    );
    assert_clean_failure(
        &train(&model, &data, &out, &["--method", "prompt", "--virtual-tokens", "9000"]),
        "do not fit in the model's context",
    );
}

#[test]
fn train_takes_chat_and_prompt_completion_jsonl() {
    let Some(model) = real_model() else { return };
    let data = sample("chat.jsonl");
    let out = scratch("chat-adapter");
    let report = last_json(&train(
        &model,
        &data,
        &out,
        &["--steps", "2", "--batch", "1", "--seq", "32", "--lr", "1e-3", "--json"],
    ));
    assert!(report["train_loss"].as_f64().unwrap().is_finite(), "{report}");
    let bad = scratch("bad.jsonl");
    std::fs::write(&bad, "{\"text\": \"fine\"}\n{\"question\": \"?\"}\n").unwrap();
    assert_clean_failure(&train(&model, &bad, &out, &[]), "data line 2");
}

#[test]
fn a_killed_training_run_resumes_to_the_same_result() {
    let Some(model) = real_model() else { return };
    let data = sample("notes.txt");
    let args = |out: &Path| -> Vec<String> {
        ["train", "--model", &model, "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap()]
            .into_iter()
            .chain([
                "--steps",
                "6",
                "--batch",
                "1",
                "--seq",
                "32",
                "--lr",
                "1e-3",
                "--checkpoint-every",
                "1",
                "--json",
            ])
            .map(String::from)
            .collect()
    };
    let straight_dir = scratch("straight");
    let straight =
        last_json(&Command::new(env!("CARGO_BIN_EXE_adaptkit")).args(args(&straight_dir)).output().unwrap());

    let killed_dir = scratch("killed");
    let _ = std::fs::remove_dir_all(&killed_dir);
    let mut child = Command::new(env!("CARGO_BIN_EXE_adaptkit"))
        .args(args(&killed_dir))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let checkpoint = killed_dir.join("checkpoint.safetensors");
    let started = std::time::Instant::now();
    while !checkpoint.exists() && started.elapsed().as_secs() < 120 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();
    assert!(checkpoint.exists(), "no checkpoint was written");

    let mut resume = args(&killed_dir);
    resume.push("--resume".into());
    let resumed = last_json(&Command::new(env!("CARGO_BIN_EXE_adaptkit")).args(resume).output().unwrap());
    assert_eq!(resumed["train_loss"], straight["train_loss"], "straight {straight} vs resumed {resumed}");
    assert_eq!(resumed["eval_loss"], straight["eval_loss"]);
}

#[test]
fn bench_reports_inference_and_training_figures() {
    let Some(model) = real_model() else { return };
    let report = last_json(&adaptkit(&[
        "bench",
        "--model",
        &model,
        "--prompt-tokens",
        "16",
        "--gen-tokens",
        "4",
        "--repeats",
        "1",
        "--train-steps",
        "1",
        "--train-seq",
        "32",
        "--threads",
        "2",
        "--json",
    ]));
    for key in ["prefill_tok_s", "decode_tok_s", "peak_rss_mb", "train_tok_s", "train_peak_rss_mb"] {
        assert!(report[key].as_f64().is_some_and(|v| v > 0.0), "{key}: {report}");
    }
    assert!(report["train_config"].as_str().unwrap().contains("batch 4 x 32 tokens"), "{report}");
    assert!(!report["decode_kernel"].as_str().unwrap().contains("i8"), "f32 activations by default");
    // Integer activations where the CPU has kernels for them, named in the report.
    let args = ["bench", "--model", &model, "--gen-tokens", "4", "--repeats", "1", "--train-steps", "0"];
    let int8 =
        last_json(&adaptkit(&[&args[..], &["--int8-activations", "--bf16-products", "--json"]].concat()));
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    let kernels = std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c");
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
    let kernels = false;
    assert_eq!(int8["decode_kernel"].as_str().unwrap().contains("i8 activations"), kernels, "{int8}");
    // And prefill on bf16 tiles where Linux lists them (the kernel's grant aside).
    let tiles = std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|info| info.contains(" amx_bf16"));
    assert_eq!(int8["product_kernel"].as_str().unwrap() == "amx bf16 tiles", tiles, "{int8}");
    assert_ne!(report["product_kernel"], "amx bf16 tiles", "f32 products by default");
    assert_clean_failure(&adaptkit(&["bench", "--model", &model, "--gen-tokens", "1"]), "--gen-tokens");
    assert_clean_failure(&adaptkit(&["bench", "--model", &model, "--train-seq", "1"]), "--train-seq");
}

/// A short general-English text (unrelated to the sample notes) for the forgetting watch.
fn general_text() -> PathBuf {
    let path = scratch("general.txt");
    std::fs::write(
        &path,
        "The committee met on Tuesday to review the budget for the new library. Most members agreed \
         that the reading rooms should stay open later in winter, when students have fewer quiet \
         places to work. The architect explained that the roof would be replaced first, because \
         rain had already damaged several shelves of old maps. After a long discussion about \
         heating costs, the chair asked for a written estimate before the next meeting, and the \
         session ended shortly after six o'clock.",
    )
    .unwrap();
    path
}

#[test]
fn train_evaluates_watches_general_text_and_plots() {
    let Some(model) = real_model() else { return };
    let data = sample("notes.txt");
    let (out, plot) = (scratch("watched"), scratch("curve.svg"));
    let general = general_text();
    let report = last_json(&train(
        &model,
        &data,
        &out,
        &[
            ["--steps", "4", "--batch", "1", "--seq", "32", "--lr", "1e-3", "--eval-every", "2"].as_slice(),
            &["--general-eval", general.to_str().unwrap(), "--plot", plot.to_str().unwrap(), "--json"],
        ]
        .concat(),
    ));
    let evaluations = report["evaluations"].as_array().unwrap();
    let steps: Vec<u64> = evaluations.iter().map(|e| e["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [0, 2, 4], "{report}");
    assert!(evaluations.iter().all(|e| e["held_out"].is_f64() && e["general"].is_f64()), "{report}");
    // Before training the adapter is the identity, so general text scores as the base model.
    assert!(evaluations[0]["general"] == report["general_loss_base"], "{report}");
    assert!(report["general_ppl_rise"].is_f64() && report["forgetting"].is_boolean(), "{report}");
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.contains("<polyline") && svg.matches("<circle").count() == 6, "{svg}");

    assert_clean_failure(&train(&model, &data, &out, &["--plot", "curve.png"]), ".svg");
    assert_clean_failure(&train(&model, &data, &out, &["--seq", "100000"]), "context");
    assert_clean_failure(&train(&model, &data, &out, &["--dropout", "1.5"]), "--dropout");
}

#[test]
fn early_stopping_keeps_the_best_adapter() {
    let Some(model) = real_model() else { return };
    let data = sample("notes.txt");
    let general = general_text();
    // A learning rate far too high makes the held-out loss (here: general text) rise at once.
    let report = last_json(&train(
        &model,
        &data,
        &scratch("early"),
        &[
            ["--steps", "20", "--batch", "1", "--seq", "32", "--lr", "5e-2", "--eval-every", "1"].as_slice(),
            &["--patience", "2", "--eval", general.to_str().unwrap(), "--json"],
        ]
        .concat(),
    ));
    let best = report["best_step"].as_u64().expect("stopped early");
    assert!(report["steps"].as_u64().unwrap() < 20, "{report}");
    let evaluations = report["evaluations"].as_array().unwrap();
    let at_best = evaluations.iter().find(|e| e["step"] == best).unwrap();
    // The kept adapter is the best one: the final evaluation repeats its held-out loss.
    assert_eq!(evaluations.last().unwrap()["held_out"], at_best["held_out"], "{report}");
    let lowest = evaluations.iter().map(|e| e["held_out"].as_f64().unwrap()).fold(f64::INFINITY, f64::min);
    assert_eq!(at_best["held_out"].as_f64().unwrap(), lowest, "{report}");
}

#[test]
fn a_non_finite_loss_stops_the_run_and_keeps_the_checkpoint() {
    let Some(model) = real_model() else { return };
    let data = sample("notes.txt");
    let out = scratch("diverged");
    let _ = std::fs::remove_dir_all(&out);
    // An absurd learning rate overflows the adapter in step 1's update: step 2's loss is NaN.
    let args = ["--steps", "3", "--batch", "1", "--seq", "32", "--checkpoint-every", "1", "--lr", "3e38"];
    let failed = train(&model, &data, &out, &args);
    assert_clean_failure(&failed, "step 2");
    assert!(stderr(&failed).contains("not finite") && stderr(&failed).contains("checkpoint"));
    let checkpoint = std::fs::read(out.join("checkpoint.safetensors")).unwrap();
    let step_1 = br#"\"step\":1,"#;
    assert!(checkpoint.windows(step_1.len()).any(|w| w == step_1), "step 1's checkpoint is kept");
    assert!(!out.join("adapter_model.safetensors").exists(), "nothing else is written");
}

#[cfg(unix)]
#[test]
fn ctrl_c_saves_a_checkpoint_that_resumes() {
    let Some(model) = real_model() else { return };
    let data = sample("notes.txt");
    let out = scratch("interrupted");
    let _ = std::fs::remove_dir_all(&out);
    let args = |steps: &str| -> Vec<String> {
        let out = out.to_str().unwrap();
        ["train", "--model", &model, "--data", data.to_str().unwrap(), "--out", out, "--steps", steps]
            .into_iter()
            .chain(["--batch", "1", "--seq", "32", "--checkpoint-every", "0", "--json"])
            .map(String::from)
            .collect()
    };
    let child = Command::new(env!("CARGO_BIN_EXE_adaptkit"))
        .args(args("1000"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Long enough to be inside the training loop (loading and the first evaluation take ~1 s).
    std::thread::sleep(std::time::Duration::from_secs(4));
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let interrupted = child.wait_with_output().unwrap();
    assert_eq!(interrupted.status.code(), Some(130), "{}", stderr(&interrupted));
    assert!(stderr(&interrupted).contains("--resume"), "{}", stderr(&interrupted));

    // Checkpoints were off: the one there was written by the interruption, at the step reached.
    let bytes = std::fs::read(out.join("checkpoint.safetensors")).expect("Ctrl-C saves the run");
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let state: serde_json::Value =
        serde_json::from_str(header["__metadata__"]["adaptkit_train_state"].as_str().unwrap()).unwrap();
    let step = state["step"].as_u64().unwrap();
    assert!((1..1000).contains(&step), "{state}");

    let mut resume = args(&(step + 2).to_string());
    resume.push("--resume".into());
    let output = Command::new(env!("CARGO_BIN_EXE_adaptkit")).args(resume).output().unwrap();
    // Resuming with other --steps is allowed (to extend or shorten a run), with a note.
    assert!(stderr(&output).contains("planned for 1000 steps"), "{}", stderr(&output));
    let resumed = last_json(&output);
    assert_eq!(resumed["steps"], step + 2, "{resumed}");
}

#[test]
fn a_pissa_adapter_is_saved_for_the_original_base() {
    let Some(model) = real_model() else { return };
    let out = scratch("pissa");
    let report = last_json(&train(
        &model,
        &sample("notes.txt"),
        &out,
        &[
            ["--init", "pissa", "--rank", "4", "--steps", "1", "--batch", "1", "--seq", "32"].as_slice(),
            &["--general-eval", general_text().to_str().unwrap(), "--json"],
        ]
        .concat(),
    ));
    // Forgetting is measured against the split model at its start, which is the base model.
    assert_eq!(report["evaluations"][0]["general"], report["general_loss_base"], "{report}");
    // The split base (Q8_0 residual + principal components) starts where the base model does.
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!((config["r"].as_u64(), config["lora_alpha"].as_f64()), (Some(8), Some(32.0)), "{config}");
    let eval = |adapter: Option<&Path>| {
        let mut args = vec![
            "eval",
            "--model",
            &model,
            "--data",
            "tests/reference/ppl_text.txt",
            "--seq",
            "128",
            "--json",
        ];
        let adapter = adapter.map(|a| a.to_str().unwrap().to_string());
        if let Some(a) = &adapter {
            args.extend(["--adapter", a.as_str()]);
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let out =
            Command::new(env!("CARGO_BIN_EXE_adaptkit")).args(&args).current_dir(root).output().unwrap();
        last_json(&out)["perplexity"].as_f64().unwrap()
    };
    let (base, adapted) = (eval(None), eval(Some(&out)));
    assert!((adapted / base - 1.0).abs() < 0.05, "one small step: {base} -> {adapted}; {report}");

    // A resumed PiSSA run rebuilds the same residual base and ends where a straight run does:
    // with checkpoints every 2 of 3 steps, the file left behind is step 2's, and the resumed
    // run reports the whole run.
    let run = |out: &Path, extra: &[&str]| {
        let base = ["--init", "pissa", "--rank", "4", "--steps", "3", "--batch", "1", "--seq", "32"];
        let args = [&base[..], &["--checkpoint-every", "2", "--json"], extra].concat();
        last_json(&train(&model, &sample("notes.txt"), out, &args))
    };
    let out = scratch("pissa-resumed");
    let straight = run(&out, &[]);
    let resumed = run(&out, &["--resume"]);
    assert_eq!(resumed["evaluations"], straight["evaluations"], "{straight} vs {resumed}");
    assert_eq!(resumed["tokens"], straight["tokens"]);
    assert_eq!(resumed["train_loss"], straight["train_loss"], "{straight} vs {resumed}");
    assert_eq!(resumed["eval_loss"], straight["eval_loss"]);
}

/// `adaptkit` with `env` set (e.g. a Vulkan loader pointed at no driver).
fn adaptkit_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_adaptkit"));
    command.args(args).env_remove("RUST_BACKTRACE");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().unwrap()
}

/// Whether this machine has a GPU for `--device gpu` tests: a one-token generation tells.
/// `ADAPTKIT_REQUIRE_GPU` (set in CI, which installs lavapipe) turns "no" into a failure.
fn gpu_available(model: &str) -> bool {
    let out =
        adaptkit(&["generate", "--model", model, "--device", "gpu", "--prompt", "a", "--max-tokens", "1"]);
    if out.status.success() {
        return true;
    }
    assert!(!env_flag("ADAPTKIT_REQUIRE_GPU"), "ADAPTKIT_REQUIRE_GPU is set: {}", stderr(&out));
    eprintln!("skipped, no GPU: {}", stderr(&out));
    false
}

#[test]
fn without_a_gpu_device_gpu_is_a_clean_error_and_auto_falls_back() {
    let Some(model) = real_model() else { return };
    // A Vulkan loader that finds no driver: the machine has no GPU as far as wgpu can tell.
    let no_gpu =
        [("VK_ICD_FILENAMES", "/nonexistent/icd.json"), ("VK_DRIVER_FILES", "/nonexistent/icd.json")];
    let generate = |device: &str| {
        adaptkit_env(
            &[
                "generate",
                "--model",
                &model,
                "--device",
                device,
                "--prompt",
                "Bees",
                "--max-tokens",
                "2",
                "--json",
            ],
            &no_gpu,
        )
    };
    assert_clean_failure(&generate("gpu"), "no GPU adapter found");
    let auto = generate("auto");
    assert!(last_json(&auto)["tokens"].as_array().is_some());
    assert!(stderr(&auto).contains("device: cpu (auto: GPU: no GPU adapter found"), "{}", stderr(&auto));
    // A usage error, reported by the argument parser (exit 2) before anything loads.
    let bad = adaptkit(&["generate", "--model", &model, "--device", "tpu"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("device 'tpu' (expected cpu, gpu or auto)"), "{}", stderr(&bad));
}

/// On the GPU: perplexity as on the CPU; `auto` declines a software GPU; and a training run
/// started on the GPU resumes on the CPU from its checkpoint to the losses of a CPU-only run.
#[test]
fn the_gpu_scores_and_trains_like_the_cpu_and_runs_move_between_them() {
    let Some(model) = real_model() else { return };
    if !gpu_available(&model) {
        return;
    }
    let text = general_text();
    let eval = |device: &str| {
        let out = adaptkit(&[
            "eval",
            "--model",
            &model,
            "--device",
            device,
            "--data",
            text.to_str().unwrap(),
            "--seq",
            "64",
            "--json",
        ]);
        last_json(&out)["perplexity"].as_f64().unwrap()
    };
    let (cpu, gpu) = (eval("cpu"), eval("gpu"));
    assert!((cpu - gpu).abs() < 1e-4 * cpu, "perplexity CPU {cpu} vs GPU {gpu}");
    let auto =
        adaptkit(&["generate", "--model", &model, "--device", "auto", "--prompt", "a", "--max-tokens", "1"]);
    let note = stderr(&auto);
    assert!(
        note.contains("device: cpu (auto: only a software GPU") || note.contains("device: Vulkan"),
        "{note}"
    );

    let data = sample("notes.txt");
    let args = |dir: &Path, device: &str| -> Vec<String> {
        ["train", "--model", &model, "--data", data.to_str().unwrap(), "--out", dir.to_str().unwrap()]
            .into_iter()
            .chain(["--device", device, "--steps", "4", "--batch", "1", "--seq", "32", "--lr", "1e-3"])
            .chain(["--checkpoint-every", "1", "--json"])
            .map(String::from)
            .collect()
    };
    let straight = last_json(
        &Command::new(env!("CARGO_BIN_EXE_adaptkit"))
            .args(args(&scratch("cpu-only"), "cpu"))
            .output()
            .unwrap(),
    );
    // Start on the GPU and stop it (Ctrl-C) once it has checkpointed, then finish on the CPU.
    let moved = scratch("gpu-then-cpu");
    let _ = std::fs::remove_dir_all(&moved);
    let child = Command::new(env!("CARGO_BIN_EXE_adaptkit"))
        .args(args(&moved, "gpu"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !moved.join("checkpoint.safetensors").exists() && started.elapsed().as_secs() < 300 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let stopped = child.wait_with_output().unwrap();
    assert!(matches!(stopped.status.code(), Some(130) | Some(0)), "{}", stderr(&stopped));
    let mut resume = args(&moved, "cpu");
    resume.push("--resume".into());
    let finished = last_json(&Command::new(env!("CARGO_BIN_EXE_adaptkit")).args(resume).output().unwrap());
    assert_eq!(finished["steps"], 4, "{finished}");
    for key in ["train_loss", "eval_loss"] {
        let (a, b) = (straight[key].as_f64().unwrap(), finished[key].as_f64().unwrap());
        assert!((a - b).abs() < 1e-3 * a, "{key}: CPU-only {a} vs GPU then CPU {b}");
    }
}

/// Every `patch` verb on the real model with PEFT's golden LoRA: a dense patch scores exactly
/// like the adapter, a ComPEFT patch is small and still acts, signatures are checked, damaged
/// files are refused, porting onto the same base at λ is the adapter at scale λ, merging two
/// halves gives the whole, and `apply` writes the adapter back as PEFT.
#[test]
fn patches_compress_sign_verify_port_merge_and_apply_from_the_cli() {
    let Some(model) = real_model() else { return };
    let home = scratch("patch-home");
    let home_env = [("ADAPTKIT_HOME", home.to_str().unwrap())];
    let run = |args: &[&str]| adaptkit_env(args, &home_env);
    let adapter = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference/golden/peft_lora");
    let adapter = adapter.to_str().unwrap();
    let path = |name: &str| scratch(name).to_str().unwrap().to_string();
    let (dense, coded, signed, key) = (path("dense.akp"), path("coded.akp"), path("signed.akp"), path("key"));
    let text = fox_text("patch-eval.txt");
    let eval = |extra: &[&str]| fox_perplexity(&model, &text, extra, &home_env);
    let compress = |out: &str, extra: &[&str]| {
        let mut args = vec!["patch", "compress", adapter, "--model", &model, "--out", out, "--json"];
        args.extend(extra);
        last_json(&run(&args))
    };

    let made = compress(&dense, &["--density", "dense", "--dtype", "f32"]);
    assert!(made["compression"].is_null());
    let with_adapter = eval(&["--adapter", adapter]);
    assert_eq!(eval(&["--adapter", &dense]), with_adapter, "a dense f32 patch is the adapter");
    let made = compress(&coded, &["--density", "0.1"]);
    assert!(made["ratio_vs_f16"].as_f64().unwrap() > 10.0, "{made}");
    let info = last_json(&run(&["patch", "inspect", &coded, "--json"]));
    assert_eq!(info["method"], "lora");
    assert_eq!(info["base"]["id"], made["base"]);
    assert_eq!(info["signed"], false);
    let tensors = info["tensors"].as_array().unwrap();
    // compress reports each coded tensor's statistics; inspect lists the same tensors.
    let stats = made["tensors"].as_array().unwrap();
    assert_eq!(stats.len(), tensors.len());
    assert!(stats.iter().all(|t| t["alpha"].as_f64().unwrap() > 0.0 && t["sigma"].as_f64().unwrap() > 0.0));
    assert!(tensors
        .iter()
        .all(|t| t["encoding"] == "ternary" && t["density"].as_f64().unwrap() <= 0.1 + 1e-6));
    let base = eval(&[]);
    let coded_ppl = eval(&["--adapter", &coded]);
    assert!(coded_ppl.is_finite() && coded_ppl != base);

    // Signing: only a patch signed by a trusted key passes when keys are given.
    last_json(&run(&["patch", "keygen", "--out", &key, "--json"]));
    assert_clean_failure(&run(&["patch", "keygen", "--out", &key]), "not overwriting");
    let public = format!("{key}.pub");
    last_json(&run(&["patch", "sign", &coded, "--key", &key, "--out", &signed, "--json"]));
    let verified = last_json(&run(&["patch", "verify", &signed, "--trusted-key", &public, "--json"]));
    assert_eq!((verified["signed"].clone(), verified["trusted"].clone()), (true.into(), true.into()));
    assert_eq!(eval(&["--adapter", &signed, "--trusted-key", &public]), coded_ppl);
    assert_clean_failure(&run(&["patch", "verify", &coded, "--trusted-key", &public]), "not signed");
    assert_clean_failure(
        &run(&[
            "eval",
            "--model",
            &model,
            "--data",
            text.to_str().unwrap(),
            "--adapter",
            &coded,
            "--trusted-key",
            &public,
        ]),
        "not signed",
    );
    assert_clean_failure(&run(&["patch", "sign", &coded, "--key", &public]), "not a secret key file");

    // Damaged files: a flipped byte, a truncated file.
    let bytes = std::fs::read(&signed).unwrap();
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x10;
    let broken = path("broken.akp");
    std::fs::write(&broken, &flipped).unwrap();
    assert_clean_failure(
        &run(&["eval", "--model", &model, "--data", text.to_str().unwrap(), "--adapter", &broken]),
        "checksum",
    );
    std::fs::write(&broken, &bytes[..bytes.len() - 10]).unwrap();
    assert_clean_failure(&run(&["patch", "inspect", &broken]), "truncated");

    // Porting onto the same base (exact drift 0) at λ = 0.5 is the adapter at scale 0.5.
    let ported = path("ported.akp");
    let report = last_json(&run(&[
        "patch", "port", &dense, "--model", &model, "--from", &model, "--out", &ported, "--lambda", "0.5",
        "--json",
    ]));
    assert_eq!((report["drift_exact"].clone(), report["max_drift"].as_f64()), (true.into(), Some(0.0)));
    let half = eval(&["--adapter", &format!("{adapter}:0.5")]);
    assert!((eval(&["--adapter", &ported]) - half).abs() < 1e-4 * half);

    // Two halves merged are the whole.
    let merged = path("merged.akp");
    last_json(&run(&[
        "patch",
        "merge",
        &format!("{dense}:0.5"),
        &format!("{dense}:0.5"),
        "--out",
        &merged,
        "--dtype",
        "f32",
        "--json",
    ]));
    assert!((eval(&["--adapter", &merged]) - with_adapter).abs() < 1e-4 * with_adapter);

    // Back to a PEFT directory.
    let peft = path("from-patch");
    last_json(&run(&["patch", "apply", &coded, "--model", &model, "--peft", &peft, "--json"]));
    assert_eq!(eval(&["--adapter", &peft]), coded_ppl);
}

/// The memory planner against real runs, each in its own process (peak memory is the
/// process's): six plans across methods, batches and checkpointing predicted within 15% of the
/// measured peak; a budget picks the fastest plan that fits, and one too small is refused with
/// the budget that would do.
#[test]
fn the_memory_planner_predicts_the_peak_and_keeps_to_a_budget() {
    let Some(model) = real_model() else { return };
    if !std::path::Path::new("/proc/self/status").exists() {
        return eprintln!("skipped: no peak memory figure on this OS");
    }
    let data = sample("journal.txt");
    // A short held-out text: one window, so the evaluations cost little.
    let journal = std::fs::read_to_string(&data).unwrap();
    let eval = scratch("plan-eval.txt");
    std::fs::write(&eval, &journal[..1500]).unwrap();
    let run = |name: &str, extra: &[&str]| {
        let out = scratch(&format!("plan-{name}"));
        // Two steps: from the second on, AdamW's moments live beside the activations.
        let common =
            ["--steps", "2", "--eval-every", "0", "--checkpoint-every", "0", "--threads", "2", "--json"];
        let args = [&common[..], &["--eval", eval.to_str().unwrap()], extra].concat();
        last_json(&train(&model, &data, &out, &args))
    };
    for (name, extra) in [
        ("lora-b1", &["--batch", "1", "--seq", "128"][..]),
        ("lora-b4-checkpointed", &["--batch", "4", "--seq", "128", "--checkpoint-activations"][..]),
        ("prompt-b2", &["--method", "prompt", "--batch", "2", "--seq", "128"][..]),
        ("ia3-b2", &["--method", "ia3", "--batch", "2", "--seq", "128"][..]),
        ("dora-b1", &["--method", "dora", "--batch", "1", "--seq", "128"][..]),
        ("peqa-b2", &["--method", "peqa", "--batch", "2", "--seq", "128"][..]),
    ] {
        let report = run(name, extra);
        let predicted = report["plan"]["predicted_peak_mb"].as_f64().unwrap();
        let measured = report["peak_rss_mb"].as_f64().unwrap();
        eprintln!("{name}: predicted {predicted:.0} MiB, measured {measured:.0} MiB");
        assert!(
            (predicted / measured - 1.0).abs() < 0.15,
            "{name}: predicted {predicted:.0}, measured {measured:.0}"
        );
    }
    // 450 MiB for batch 4 x 128: four micro-batches of one (faster than checkpointing) fit, two
    // of two do not.
    let report = run("budget", &["--batch", "4", "--seq", "128", "--memory-budget", "450M"]);
    let plan = &report["plan"];
    assert_eq!((plan["batch"].as_u64(), plan["accumulate"].as_u64()), (Some(1), Some(4)), "{plan}");
    assert_eq!(plan["checkpoint_activations"], false);
    assert!(report["peak_rss_mb"].as_f64().unwrap() < 450.0 * 1.15, "{report}");
    // 200 MiB fits nothing: refused before training, naming the budget that would fit.
    let out = train(&model, &data, &scratch("plan-small"), &["--memory-budget", "200M"]);
    assert_clean_failure(&out, "--memory-budget 200M: no plan fits");
    assert!(stderr(&out).contains("needs about"), "{}", stderr(&out));
}

/// The generator committed for the demo model (its name from `scripts/model.env`).
fn committed_generator() -> PathBuf {
    let name =
        include_str!("../../scripts/model.env").lines().find_map(|l| l.strip_prefix("GENERATOR=")).unwrap();
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models").join(name)
}

/// `personalize`: an adapter generated from a context, which `eval` loads; a state that a second
/// call extends; and bad input refused cleanly, leaving no state or adapter behind.
#[test]
fn personalize_generates_an_adapter_and_extends_a_kept_context() {
    let Some(model) = real_model() else { return };
    let generator = committed_generator();
    let generator = generator.to_str().unwrap();
    let (out, state) = (scratch("generated"), scratch("context.state"));
    let _ = std::fs::remove_file(&state);
    let personalize = |context: &Path, extra: &[&str]| {
        let args = [
            "personalize",
            "--model",
            &model,
            "--generator",
            generator,
            "--context",
            context.to_str().unwrap(),
        ];
        adaptkit(&[&args[..], &["--out", out.to_str().unwrap(), "--json"], extra].concat())
    };
    let first = last_json(&personalize(&sample("notes.txt"), &["--state", state.to_str().unwrap()]));
    let tokens = first["tokens"].as_u64().unwrap();
    assert!(tokens > 500 && first["total_tokens"] == first["tokens"], "{first}");
    assert_eq!(first["adapter"]["method"], "lora");
    let eval = last_json(&adaptkit(&[
        "eval",
        "--model",
        &model,
        "--data",
        sample("general.txt").to_str().unwrap(),
        "--seq",
        "128",
        "--adapter",
        out.to_str().unwrap(),
        "--json",
    ]));
    assert!(eval["perplexity"].as_f64().unwrap().is_finite());
    // `eval --prefix`: the same text read before each window makes it far easier to predict, and
    // the same tokens are scored.
    let notes = sample("notes.txt");
    let notes = notes.to_str().unwrap();
    let score = |extra: &[&str]| {
        let args = ["eval", "--model", &model, "--data", notes, "--seq", "256", "--json"];
        last_json(&adaptkit(&[&args[..], extra].concat()))
    };
    let (plain, primed) = (score(&[]), score(&["--prefix", notes]));
    assert_eq!(plain["tokens"], primed["tokens"]);
    assert!(
        primed["perplexity"].as_f64().unwrap() < 0.5 * plain["perplexity"].as_f64().unwrap(),
        "{plain} {primed}"
    );
    let second = last_json(&personalize(&sample("general.txt"), &["--state", state.to_str().unwrap()]));
    assert_eq!(second["total_tokens"].as_u64().unwrap(), tokens + second["tokens"].as_u64().unwrap());

    let empty = scratch("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let before = std::fs::read(&state).unwrap();
    assert_clean_failure(&personalize(&empty, &["--state", state.to_str().unwrap()]), "empty");
    assert_eq!(std::fs::read(&state).unwrap(), before, "a refused call leaves the state as it was");
    let junk = scratch("junk.safetensors");
    std::fs::write(&junk, b"not a generator").unwrap();
    let args = ["personalize", "--model", &model, "--generator", junk.to_str().unwrap(), "--context"];
    let out2 = scratch("never");
    let refused = adaptkit(
        &[&args[..], &[sample("notes.txt").to_str().unwrap(), "--out", out2.to_str().unwrap()]].concat(),
    );
    assert_clean_failure(&refused, "junk.safetensors");
    assert!(!out2.exists());
    // A state file that is not one.
    assert_clean_failure(
        &personalize(&sample("notes.txt"), &["--state", junk.to_str().unwrap()]),
        "junk.safetensors",
    );
}
