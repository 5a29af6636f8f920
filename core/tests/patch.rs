//! Adapter patches on the tiny random model: a dense patch is the adapter it came from, a
//! ComPEFT patch decodes to exactly the ternary tensors it encoded, patches refuse another base
//! unless ported, porting onto the same base changes nothing, merged patches equal the adapters
//! attached together, and damaged or untrusted patches are refused with the model untouched.

use adaptkit::adapt::{self, AdapterSet};
use adaptkit::format::patch_file::Encoding;
use adaptkit::model::{Llama, NoAdapters};
use adaptkit::patch::compress::{auto, compress, Budget, Scores};
use adaptkit::patch::keys::signing_key;
use adaptkit::patch::merge::combine;
use adaptkit::patch::port::{norm_drift, port, targets, weight_drift};
use adaptkit::patch::{load_adapter, AttachOptions, DenseType, Fingerprint, FingerprintCache, Patch};
use adaptkit::quant::GgmlType;
use adaptkit::Error;

mod common;
use common::*;

struct Base {
    path: std::path::PathBuf,
    model: Llama,
    fingerprint: Fingerprint,
}

fn base(dir: &TempDir, seed: u64) -> Base {
    let path = dir.join(&format!("base{seed}.gguf"));
    Weights::random(seed).write_gguf(&path, GgmlType::Q8_0, None);
    let model = load_gguf(&path);
    let fingerprint = Fingerprint::compute(&path, &model, None).unwrap();
    Base { path, model, fingerprint }
}

/// A LoRA of rank `rank` saved as PEFT and made into a dense f32 patch for `base`.
fn lora_patch(dir: &TempDir, base: &Base, seed: u64, rank: usize) -> (std::path::PathBuf, Patch) {
    let adapter = dir.join(&format!("lora{seed}"));
    Lora::random(seed, rank, false).write_peft(&adapter);
    let patch = Patch::from_adapter_dir(&adapter, base.fingerprint.clone(), DenseType::F32).unwrap();
    (adapter, patch)
}

fn attach(model: &Llama, patch: &Patch) -> AdapterSet {
    let mut set = AdapterSet::new();
    set.push(patch.to_method(model, std::path::Path::new("test.akp")).unwrap(), patch.scale);
    set
}

fn no_port() -> AttachOptions<'static> {
    AttachOptions { trusted_keys: &[], allow_port: false }
}

#[test]
fn a_dense_patch_is_the_adapter_it_came_from() {
    let dir = tempdir();
    let base = base(&dir, 40);
    let (adapter_dir, patch) = lora_patch(&dir, &base, 1, 4);
    let file = dir.join("dense.akp");
    patch.write(&file, None).unwrap();
    let read = Patch::read(&file).unwrap();
    assert_eq!(read, patch);
    // The tensors are the PEFT adapter's, bit for bit.
    let peft = adaptkit::format::peft::PeftDir::read(&adapter_dir).unwrap();
    for v in read.values().unwrap() {
        assert_eq!(v.values, peft.tensors.tensor_f32(&v.name).unwrap(), "{}", v.name);
    }
    // Attaching the patch is attaching the adapter.
    let adapter = adapt::load(&adapter_dir, &base.model).unwrap();
    let want = adapted_logits(&base.model, &TOKENS, adapter.as_ref());
    let (method, scale) =
        load_adapter(&file, &base.model, &mut || Ok(base.fingerprint.clone()), &no_port()).unwrap();
    assert_eq!(scale, 1.0);
    assert_eq!(adapted_logits(&base.model, &TOKENS, method.as_ref()), want);
    // f16 storage rounds, and only that.
    let f16 = read.to_dense(DenseType::F16).unwrap();
    assert!(max_diff(&adapted_logits(&base.model, &TOKENS, &attach(&base.model, &f16)), &want) < 2e-3);
}

#[test]
fn a_compeft_patch_decodes_to_the_ternary_tensors_it_encoded() {
    let dir = tempdir();
    let base = base(&dir, 40);
    let (_, patch) = lora_patch(&dir, &base, 2, 4);
    let (coded, reports) = compress(&patch, 0.2).unwrap();
    assert!(coded.tensors.iter().all(|t| matches!(t.encoding, Encoding::Ternary { .. })));
    assert_eq!(reports.len(), coded.tensors.len());
    let file = dir.join("coded.akp");
    coded.write(&file, None).unwrap();
    let read = Patch::read(&file).unwrap();
    assert_eq!(read.values().unwrap(), coded.values().unwrap());
    for (t, v) in read.tensors.iter().zip(read.values().unwrap()) {
        let Encoding::Ternary { scale, nonzeros, .. } = t.encoding else { unreachable!() };
        assert!(v.values.iter().all(|&x| x == 0.0 || x.abs() == scale.abs()));
        assert_eq!(v.values.iter().filter(|&&x| x != 0.0).count() as u64, nonzeros);
    }
    // Smaller than the adapter in f16, and its change to the logits points the adapter's way.
    assert!(std::fs::metadata(&file).unwrap().len() * 4 < patch.f16_bytes() as u64);
    let plain = adapted_logits(&base.model, &TOKENS, &NoAdapters);
    let change = |logits: Vec<f32>| -> Vec<f32> { logits.iter().zip(&plain).map(|(x, p)| x - p).collect() };
    let cosine = |a: &[f32], b: &[f32]| {
        let dot = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(a, b)| a * b).sum::<f32>();
        dot(a, b) / (dot(a, a) * dot(b, b)).sqrt()
    };
    let want = change(adapted_logits(&base.model, &TOKENS, &attach(&base.model, &patch)));
    let got = change(adapted_logits(&base.model, &TOKENS, &attach(&base.model, &read)));
    let agreement = cosine(&got, &want);
    assert!(agreement > 0.5, "{agreement}");
    // Recoding a coded patch is stable: its product is already ternary.
    let again =
        change(adapted_logits(&base.model, &TOKENS, &attach(&base.model, &compress(&read, 0.2).unwrap().0)));
    assert!(cosine(&again, &got) > 0.9, "{}", cosine(&again, &got));
}

#[test]
fn a_patch_for_another_base_is_refused_unless_ported() {
    let dir = tempdir();
    let (a, b) = (base(&dir, 40), base(&dir, 41));
    let (_, patch) = lora_patch(&dir, &a, 3, 4);
    let file = dir.join("p.akp");
    patch.write(&file, None).unwrap();
    let err = load_adapter(&file, &b.model, &mut || Ok(b.fingerprint.clone()), &no_port()).err().unwrap();
    assert!(matches!(err, Error::PatchBase { .. }), "{err}");
    assert!(err.to_string().contains("adaptkit patch port"), "{err}");
    let port_ok = AttachOptions { trusted_keys: &[], allow_port: true };
    load_adapter(&file, &b.model, &mut || Ok(b.fingerprint.clone()), &port_ok).unwrap();
    // Another architecture is refused even with --port.
    let mut other = b.fingerprint.clone();
    other.layers += 1;
    other.id = "different".into();
    let err = patch.check_base(&other, true, "p.akp").unwrap_err();
    assert!(err.to_string().contains("architecture differs"), "{err}");
    assert!(port(&patch, &other, 1.0, &norm_drift(&patch.base, &other, &[])).is_err());
}

#[test]
fn porting_measures_drift_and_keeps_the_adapter_on_the_same_base() {
    let dir = tempdir();
    let (a, b) = (base(&dir, 40), base(&dir, 41));
    let (_, patch) = lora_patch(&dir, &a, 4, 4);
    let want = adapted_logits(&a.model, &TOKENS, &attach(&a.model, &patch));
    // Onto the same base: nothing changes (methods.md §2 test 2).
    let targets = targets(&patch, a.fingerprint.layers);
    assert_eq!(targets.len(), 7 * a.fingerprint.layers);
    let same = weight_drift(&a.model, &a.model, &targets).unwrap();
    assert_eq!(same.max(), 0.0);
    let ported = port(&patch, &a.fingerprint, 1.0, &same).unwrap();
    assert_eq!(adapted_logits(&a.model, &TOKENS, &attach(&a.model, &ported)), want);
    // λ scales the change like an adapter attached at scale λ.
    let half = port(&patch, &a.fingerprint, 0.5, &same).unwrap();
    let mut at_half = AdapterSet::new();
    at_half.push(patch.to_method(&a.model, std::path::Path::new("p")).unwrap(), 0.5);
    let got = adapted_logits(&a.model, &TOKENS, &attach(&a.model, &half));
    assert!(max_diff(&got, &adapted_logits(&a.model, &TOKENS, &at_half)) < 1e-5);
    // Onto another base: addressed to it, with the measured drift recorded; the exact drift
    // bounds the drift seen from norms alone.
    let exact = weight_drift(&a.model, &b.model, &targets).unwrap();
    let from_norms = norm_drift(&a.fingerprint, &b.fingerprint, &targets);
    assert!(exact.max() > 0.1 && from_norms.max() <= exact.max());
    let moved = port(&patch, &b.fingerprint, 1.0, &exact).unwrap();
    assert_eq!(moved.base, b.fingerprint);
    assert_eq!(moved.ported.as_ref().unwrap()["from"], a.fingerprint.id.as_str());
    moved.check_base(&b.fingerprint, false, "moved").unwrap();
}

#[test]
fn merged_patches_equal_the_adapters_attached_together() {
    let dir = tempdir();
    let base = base(&dir, 40);
    let (_, p1) = lora_patch(&dir, &base, 5, 2);
    let (_, p2) = lora_patch(&dir, &base, 6, 4);
    let merged = combine(&[(p1.clone(), 0.7), (p2.clone(), -0.3)], DenseType::F32).unwrap();
    assert_eq!(merged.config["r"], 6);
    let mut together = AdapterSet::new();
    together.push(p1.to_method(&base.model, std::path::Path::new("p1")).unwrap(), 0.7);
    together.push(p2.to_method(&base.model, std::path::Path::new("p2")).unwrap(), -0.3);
    let want = adapted_logits(&base.model, &TOKENS, &together);
    let got = adapted_logits(&base.model, &TOKENS, &attach(&base.model, &merged));
    assert!(max_diff(&got, &want) < 1e-4, "{}", max_diff(&got, &want));
    // Patches for different bases do not merge.
    let other = self::base(&dir, 41);
    let (_, p3) = lora_patch(&dir, &other, 7, 2);
    assert!(combine(&[(p1, 1.0), (p3, 1.0)], DenseType::F32).is_err());
}

#[test]
fn damaged_untrusted_or_oversized_patches_are_refused_and_the_model_is_unchanged() {
    let dir = tempdir();
    let base = base(&dir, 40);
    let before = adapted_logits(&base.model, &TOKENS, &NoAdapters);
    let (_, patch) = lora_patch(&dir, &base, 8, 2);
    let coded = compress(&patch, 0.1).unwrap().0;
    let key = signing_key([11; 32]);
    let bytes = coded.to_bytes(Some(&key));
    let trusted = [key.verifying_key().to_bytes()];
    let file = dir.join("p.akp");
    let mut fp = || Ok(base.fingerprint.clone());
    let signed_only = AttachOptions { trusted_keys: &trusted, allow_port: false };

    std::fs::write(&file, &bytes).unwrap();
    load_adapter(&file, &base.model, &mut fp, &signed_only).unwrap();
    // Every single-bit flip anywhere in the file.
    for bit in 0..bytes.len() * 8 {
        let mut flipped = bytes.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        assert!(Patch::from_bytes(&flipped, "flipped").is_err(), "flip of bit {bit} accepted");
    }
    // Truncated, at a few points, through the loader.
    for len in [0, 7, 31, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&file, &bytes[..len]).unwrap();
        let err = load_adapter(&file, &base.model, &mut fp, &no_port()).err().unwrap();
        assert!(matches!(err, Error::Patch { .. }), "{err}");
    }
    // Unsigned, or signed by someone else, when a trusted signature is required.
    std::fs::write(&file, coded.to_bytes(None)).unwrap();
    let err = load_adapter(&file, &base.model, &mut fp, &signed_only).err().unwrap();
    assert!(err.to_string().contains("not signed"), "{err}");
    std::fs::write(&file, coded.to_bytes(Some(&signing_key([12; 32])))).unwrap();
    let err = load_adapter(&file, &base.model, &mut fp, &signed_only).err().unwrap();
    assert!(err.to_string().contains("not one of the trusted keys"), "{err}");
    // Oversized: refused from its size, before reading (a sparse file costs no disk).
    let huge = std::fs::File::create(&file).unwrap();
    huge.set_len(adaptkit::patch::MAX_PATCH_BYTES + 1).unwrap();
    let err = Patch::read(&file).unwrap_err();
    assert!(err.to_string().contains("more than"), "{err}");
    // Not a patch at all.
    let err = Patch::read(&base.path).unwrap_err();
    assert!(err.to_string().contains("bad magic"), "{err}");
    assert_eq!(adapted_logits(&base.model, &TOKENS, &NoAdapters), before);
}

#[test]
fn fingerprints_are_cached_and_follow_the_file() {
    let dir = tempdir();
    let a = base(&dir, 40);
    let cache = FingerprintCache::new(dir.join("fingerprints"));
    assert_eq!(cache.get(&a.path, &a.model, None).unwrap(), a.fingerprint);
    assert_eq!(std::fs::read_dir(dir.join("fingerprints")).unwrap().count(), 1);
    assert_eq!(cache.get(&a.path, &a.model, None).unwrap(), a.fingerprint);
    // Another model written over the same path is fingerprinted afresh.
    let other = dir.join("base41.gguf");
    Weights::random(41).write_gguf(&other, GgmlType::Q8_0, None);
    std::fs::copy(&other, &a.path).unwrap();
    let model = load_gguf(&a.path);
    let fresh = cache.get(&a.path, &model, None).unwrap();
    assert_ne!(fresh.id, a.fingerprint.id);
    assert_eq!(fresh.weights_sha256, Fingerprint::compute(&other, &model, None).unwrap().weights_sha256);
}

#[test]
fn auto_density_picks_the_smallest_density_within_the_budget() {
    let dir = tempdir();
    let base = base(&dir, 40);
    let (_, patch) = lora_patch(&dir, &base, 9, 2);
    // A stand-in for held-out text: the dense adapter scores 5 against the base's 20; below 10%
    // density the patch loses gain; general text suffers below 15%.
    let mut score = |candidate: Option<&Patch>| -> Result<Scores, Error> {
        let Some(p) = candidate else { return Ok(Scores { held_out: 20.0, general: Some(10.0) }) };
        let d = p.compression.as_ref().map_or(1.0, |c| c["density"].as_f64().unwrap());
        Ok(Scores {
            held_out: 5.0 * (1.0 + 5.0 * (0.1 - d).max(0.0)),
            general: Some(10.0 * (1.0 + 2.0 * (0.15 - d).max(0.0))),
        })
    };
    let lenient = Budget { keep_gain: 0.95, max_general_rise: 1.0 };
    let choice = auto(&patch, lenient, &mut score).unwrap();
    assert_eq!(choice.patch.compression.as_ref().unwrap()["density"], 0.1);
    assert!(choice.trials.last().unwrap().accepted);
    // Smaller densities were tried first, each with larger scales after its fitted one.
    assert_eq!(choice.trials.iter().filter(|t| t.density < 0.1).count(), 3 * 3);
    let strict = Budget { keep_gain: 0.95, max_general_rise: 0.05 };
    let choice = auto(&patch, strict, &mut score).unwrap();
    assert_eq!(choice.patch.compression.as_ref().unwrap()["density"], 0.15);
    let at_ten =
        choice.trials.iter().filter(|t| t.density == 0.1).map(|t| t.alpha_factor).collect::<Vec<_>>();
    assert_eq!(at_ten, [1.0, 0.8, 0.65], "general text too high: smaller scales");
    // An adapter with no gain is refused by name.
    let mut no_gain =
        |_: Option<&Patch>| -> Result<Scores, Error> { Ok(Scores { held_out: 9.0, general: None }) };
    assert!(auto(&patch, lenient, &mut no_gain).err().unwrap().to_string().contains("no gain"));
}
