//! Hostile but fair input against `train`, `--resume`, `--adapter` and `patch`, on a tiny model
//! the test writes itself: corrupt and edited checkpoints, checkpoints of other settings,
//! non-finite and wrongly typed adapters and patches, scales that overflow the model, and data
//! files that are not what they claim. Each must fail with exit code 2 and one stderr line
//! naming what is wrong, never panic, and leave every file as it was.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use adaptkit::format::patch_file::{Encoding, PatchFile};
use adaptkit::quant::GgmlType;

#[path = "../../core/tests/common/mod.rs"]
mod common;

fn adaptkit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_adaptkit")).args(args).env_remove("RUST_BACKTRACE").output().unwrap()
}

/// Every file under `dir` and its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

/// The scratch directory, its tiny model, its training notes and a trained adapter (with the
/// checkpoint of its run).
struct Setup {
    root: common::TempDir,
    model: String,
    notes: PathBuf,
    run: PathBuf,
}

impl Setup {
    fn new() -> Self {
        let root = common::tempdir();
        let model = root.join("tiny.gguf");
        common::Weights::random(61).write_gguf(&model, GgmlType::Q8_0, None);
        let notes = root.join("notes.txt");
        let text = "the bees are out in the sun and the hive is warm.\n\n\
                    saturday is bread day: i feed the starter at seven and bake at noon.\n\n\
                    the starter is called henrik, and henrik is old, calm and a little sour.\n";
        std::fs::write(&notes, text.repeat(3)).unwrap();
        let setup = Self { model: model.display().to_string(), notes, run: root.join("run"), root };
        let out = setup.train(&setup.run, &[]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        setup
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// `train` of 4 steps (a checkpoint every 2) into `out`, with `extra` arguments.
    fn train(&self, out: &Path, extra: &[&str]) -> Output {
        let data = self.notes.display().to_string();
        let out = out.display().to_string();
        let base = [
            "train",
            "--model",
            &self.model,
            "--data",
            &data,
            "--out",
            &out,
            "--steps",
            "4",
            "--seq",
            "16",
            "--batch",
            "2",
            "--checkpoint-every",
            "2",
            "--eval-every",
            "2",
        ];
        adaptkit(&[&base[..], extra].concat())
    }

    fn generate(&self, adapter: &str) -> Output {
        adaptkit(&[
            "generate",
            "--model",
            &self.model,
            "--adapter",
            adapter,
            "--max-tokens",
            "3",
            "--prompt",
            "the bees",
        ])
    }

    fn eval(&self, adapter: &str) -> Output {
        let data = self.notes.display().to_string();
        adaptkit(&["eval", "--model", &self.model, "--adapter", adapter, "--seq", "16", "--data", &data])
    }

    /// A copy of the trained adapter directory, with `change` applied to it.
    fn adapter_with(&self, name: &str, change: impl FnOnce(&Path)) -> String {
        let dir = self.path(name);
        std::fs::create_dir_all(&dir).unwrap();
        for file in ["adapter_config.json", "adapter_model.safetensors"] {
            std::fs::copy(self.run.join(file), dir.join(file)).unwrap();
        }
        change(&dir);
        dir.display().to_string()
    }
}

/// Runs `attempt`, which must fail with exit code 2 and one stderr line containing `needle`
/// (no panic) and change no file under the scratch directory.
fn refused(setup: &Setup, case: &str, needle: &str, attempt: impl FnOnce() -> Output) {
    let before = snapshot(&setup.root.0);
    let out = attempt();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{case}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{case}: one line expected: {err}");
    assert!(err.starts_with("error: ") && err.contains(needle), "{case}: {needle:?} not in {err}");
    assert!(!err.contains("panicked"), "{case}: {err}");
    assert!(snapshot(&setup.root.0) == before, "{case}: files changed");
}

fn edit_json(path: &Path, change: impl FnOnce(&mut serde_json::Value)) {
    let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    change(&mut json);
    std::fs::write(path, json.to_string()).unwrap();
}

/// `bytes` with the first `from` replaced by `to` (of the same length).
fn replaced(bytes: &[u8], from: &str, to: &str) -> Vec<u8> {
    let at = bytes.windows(from.len()).position(|w| w == from.as_bytes()).unwrap();
    let mut out = bytes.to_vec();
    out[at..at + to.len()].copy_from_slice(to.as_bytes());
    out
}

#[test]
fn corrupt_and_foreign_checkpoints_are_refused_and_the_adapter_kept() {
    let setup = Setup::new();
    let checkpoint = setup.run.join("checkpoint.safetensors");
    let good = std::fs::read(&checkpoint).unwrap();
    let resume = |extra: &[&str]| setup.train(&setup.run, &[&["--resume"][..], extra].concat());
    let with_checkpoint = |case: &str, bytes: Vec<u8>, extra: &[&str], needle: &str| {
        std::fs::write(&checkpoint, bytes).unwrap();
        refused(&setup, case, needle, || resume(extra));
    };
    let mut flipped = good.clone();
    let last = flipped.len() - 7;
    flipped[last] ^= 0x10;
    with_checkpoint("flipped byte", flipped, &[], "fails its checksum");
    let step = replaced(&good, r#"\"step\":4"#, r#"\"step\":1"#);
    with_checkpoint("edited step", step, &[], "fails its checksum");
    with_checkpoint("truncated", good[..good.len() / 2].to_vec(), &[], "checkpoint.safetensors");
    with_checkpoint(
        "not a checkpoint",
        std::fs::read(setup.run.join("adapter_model.safetensors")).unwrap(),
        &[],
        "not an adaptkit training checkpoint",
    );
    for (flags, needle) in [
        (
            &["--targets", "q,v"][..],
            "started with options.targets = \"q,k,v,o,gate,up,down\" (this run: \"q,v\")",
        ),
        (&["--alpha", "32"][..], "started with options.alpha = \"16\" (this run: \"32\")"),
        (&["--rank", "4"][..], "started with options.rank"),
        (&["--seed", "3"][..], "started with seed = 0 (this run: 3)"),
        (&["--method", "dora"][..], "the checkpoint is of a lora run; this run trains dora"),
    ] {
        with_checkpoint(&format!("resume with {flags:?}"), good.clone(), flags, needle);
    }
    let empty = setup.path("empty-run");
    refused(&setup, "nothing to resume", "no checkpoint to resume from", || {
        setup.train(&empty, &["--resume"])
    });

    // The intact checkpoint resumes, and stale temp files of a killed write are swept.
    std::fs::write(&checkpoint, &good).unwrap();
    std::fs::write(setup.run.join(".checkpoint.safetensors.0.tmp"), &good[..100]).unwrap();
    let out = resume(&["--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!setup.run.join(".checkpoint.safetensors.0.tmp").exists(), "the temp file is swept");
}

#[test]
fn non_finite_and_wrongly_typed_adapters_and_scales_are_refused() {
    let setup = Setup::new();
    let run = setup.run.display().to_string();
    // The trained adapter with one value of its first lora_B set to `value`.
    let with_value = |name: &str, value: f32| {
        setup.adapter_with(name, |dir| {
            let path = dir.join("adapter_model.safetensors");
            let file = adaptkit::format::safetensors::SafetensorsFile::open(&path).unwrap();
            let b = file.tensors().iter().find(|t| t.name.contains("lora_B")).unwrap().name.clone();
            let mut tensors = Vec::new();
            for t in file.tensors() {
                let mut values = file.tensor_f32(&t.name).unwrap();
                if t.name == b {
                    values[3] = value;
                }
                let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                tensors.push((
                    t.name.clone(),
                    adaptkit::format::safetensors::Dtype::F32,
                    t.shape.clone(),
                    bytes,
                ));
            }
            adaptkit::format::safetensors::write_safetensors(&path, &tensors, &[]).unwrap();
        })
    };
    let nan = with_value("nan", f32::NAN);
    refused(&setup, "NaN tensor", "holds NaN at index 3", || setup.generate(&nan));
    let alpha = setup.adapter_with("alpha", |dir| {
        edit_json(&dir.join("adapter_config.json"), |c| c["lora_alpha"] = "NaN".into())
    });
    refused(&setup, "string alpha", "lora_alpha must be a number", || setup.generate(&alpha));
    let targets = setup.adapter_with("targets", |dir| {
        edit_json(&dir.join("adapter_config.json"), |c| c["target_modules"] = serde_json::json!(["q_proj"]))
    });
    refused(&setup, "subset of targets", "which target_modules does not name", || setup.generate(&targets));
    let huge = format!("{run}:1e30");
    refused(&setup, "scale 1e30 generate", "the next-token logits (with lora", || setup.generate(&huge));
    refused(&setup, "scale 1e30 eval", "the loss of window 1 (with lora", || setup.eval(&huge));
    refused(&setup, "scale inf", "must be finite", || setup.generate(&format!("{run}:inf")));
    // A finite value and scale so large that merging them overflows the weight.
    let overflowing = with_value("overflowing", 3e38);
    let merged = setup.path("merged.gguf").display().to_string();
    refused(&setup, "overflowing merge", "the merged tensor 'blk.0.", || {
        let adapter = format!("{overflowing}:1e10");
        adaptkit(&["merge", "--model", &setup.model, "--adapter", &adapter, "--out", &merged])
    });

    // Patches: a scale that is not a number or overflows, a dense tensor holding NaN.
    let patch = setup.path("run.akp");
    let out = adaptkit(&[
        "patch",
        "compress",
        "--model",
        &setup.model,
        "--density",
        "dense",
        "--dtype",
        "f32",
        "--out",
        patch.to_str().unwrap(),
        &run,
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let good = PatchFile::from_bytes(&std::fs::read(&patch).unwrap()).unwrap();
    let variant = |name: &str, change: &dyn Fn(&mut PatchFile)| -> String {
        let mut file = good.clone();
        change(&mut file);
        let path = setup.path(name);
        std::fs::write(&path, file.to_bytes(None)).unwrap();
        path.display().to_string()
    };
    for (scale, needle) in [
        (serde_json::json!("x"), "metadata field 'scale' is \"x\", not a number"),
        (serde_json::Value::Null, "metadata field 'scale' is null, not a number"),
        (serde_json::json!(1e300), "metadata field 'scale' (inf as f32) is not finite"),
    ] {
        let path = variant("scale.akp", &|f| f.metadata["scale"] = scale.clone());
        refused(&setup, &format!("patch scale {scale}"), needle, || setup.generate(&path));
    }
    let path = variant("big.akp", &|f| f.metadata["scale"] = 1e30.into());
    refused(&setup, "patch scale 1e30", "the next-token logits", || setup.generate(&path));
    let path = variant("nan.akp", &|f| {
        let t =
            f.tensors.iter_mut().find(|t| t.encoding == Encoding::F32 && t.name.contains("lora_B")).unwrap();
        t.bytes[8..12].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    refused(&setup, "dense NaN patch", "holds NaN at index 2", || setup.generate(&path));
}

#[test]
fn data_that_is_not_what_it_claims_is_named() {
    let setup = Setup::new();
    let out = setup.path("out");
    let with_data = |name: &str, bytes: &[u8]| {
        let path = setup.path(name);
        std::fs::write(&path, bytes).unwrap();
        path.display().to_string()
    };
    let train = |data: &str| {
        let out = out.display().to_string();
        adaptkit(&[
            "train",
            "--model",
            &setup.model,
            "--data",
            data,
            "--out",
            &out,
            "--steps",
            "1",
            "--seq",
            "16",
        ])
    };
    let csv = with_data("data.csv", b"text\nthe bees are out\n");
    refused(&setup, "csv", "data.csv: not a data format adaptkit reads", || train(&csv));
    let latin1 = with_data("latin1.txt", b"the bees are out.\nthe caf\xe9 is warm.\n");
    refused(
        &setup,
        "latin-1",
        "latin1.txt: not UTF-8 text: byte 0xe9 at line 2, column 8 (byte offset 25)",
        || train(&latin1),
    );
    let jsonl = with_data("bad.jsonl", b"{\"text\": \"the bees\"}\n{\"text\": 3}\n");
    refused(&setup, "jsonl line", "line 2", || train(&jsonl));
    let empty = with_data("empty.txt", b"");
    refused(&setup, "empty", "empty.txt", || train(&empty));
    let notes = setup.notes.display().to_string();
    let missing = setup.path("missing.txt").display().to_string();
    refused(&setup, "missing eval", "missing.txt", || {
        let out = out.display().to_string();
        adaptkit(&["train", "--model", &setup.model, "--data", &notes, "--eval", &missing, "--out", &out])
    });
}
