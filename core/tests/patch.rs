//! Adapter patches on the tiny random model: a dense patch is the adapter it came from, a
//! ComPEFT patch decodes to exactly the ternary tensors it encoded, patches refuse another base
//! unless ported, porting onto the same base changes nothing, merged patches equal the adapters
//! attached together, and damaged or untrusted patches are refused with the model untouched.

use std::path::Path;
use std::sync::Arc;

use adaptkit::adapt::{self, AdapterSet};
use adaptkit::format::patch_file::Encoding;
use adaptkit::model::{Decoder, NoAdapters};
use adaptkit::patch::compress::{auto, compress, Budget, Scores};
use adaptkit::patch::keys::signing_key;
use adaptkit::patch::merge::combine;
use adaptkit::patch::port::{norm_drift, port, targets, weight_drift};
use adaptkit::patch::{AttachOptions, DenseType, Fingerprint, Patch};
use adaptkit::quant::GgmlType;
use adaptkit::runtime::{AdapterSource, Model, OpenOptions};
use adaptkit::store::{FileStore, MemoryStore, Store};
use adaptkit::Error;

mod common;
use common::*;

struct Base {
    path: std::path::PathBuf,
    model: Model,
    fingerprint: Fingerprint,
}

impl Base {
    fn llama(&self) -> &Decoder {
        self.model.engine().model()
    }
}

fn base(dir: &TempDir, seed: u64) -> Base {
    let path = dir.join(&format!("base{seed}.gguf"));
    Weights::random(seed).write_gguf(&path, GgmlType::Q8_0, None);
    let model = Model::open_path(&path, &OpenOptions::default()).unwrap();
    let fingerprint = model.fingerprint().unwrap();
    Base { path, model, fingerprint }
}

/// A LoRA of rank `rank` saved as PEFT and made into a dense f32 patch for `base`.
fn lora_patch(dir: &TempDir, base: &Base, seed: u64, rank: usize) -> (std::path::PathBuf, Patch) {
    let adapter = dir.join(&format!("lora{seed}"));
    Lora::random(seed, rank, false).write_peft(&adapter);
    let patch = Patch::from_adapter_dir(&adapter, base.fingerprint.clone(), DenseType::F32).unwrap();
    (adapter, patch)
}

fn attach(model: &Decoder, patch: &Patch) -> AdapterSet {
    let mut set = AdapterSet::new();
    set.push(patch.to_method(model, Path::new("test.akp")).unwrap(), patch.scale).unwrap();
    set
}

fn trusting(keys: &[[u8; 32]], allow_port: bool) -> AttachOptions {
    AttachOptions { trusted_keys: keys.to_vec(), allow_port }
}

/// The logits of [`TOKENS`] with the model's attached adapters.
fn logits(model: &Model) -> Vec<f32> {
    model.logits(&TOKENS).unwrap()
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
    let adapter = adapt::load(&adapter_dir, base.llama()).unwrap();
    let want = adapted_logits(base.llama(), &TOKENS, adapter.as_ref());
    let loaded = base.model.load_adapter(AdapterSource::Path(file), &AttachOptions::default()).unwrap();
    assert_eq!(loaded.info().scale, 1.0);
    let id = base.model.attach(&loaded, 1.0).unwrap();
    assert_eq!(logits(&base.model), want);
    base.model.detach(id).unwrap();
    // f16 storage rounds, and only that.
    let f16 = read.to_dense(DenseType::F16).unwrap();
    assert!(max_diff(&adapted_logits(base.llama(), &TOKENS, &attach(base.llama(), &f16)), &want) < 2e-3);
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
    let plain = adapted_logits(base.llama(), &TOKENS, &NoAdapters);
    let change = |logits: Vec<f32>| -> Vec<f32> { logits.iter().zip(&plain).map(|(x, p)| x - p).collect() };
    let cosine = |a: &[f32], b: &[f32]| {
        let dot = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(a, b)| a * b).sum::<f32>();
        dot(a, b) / (dot(a, a) * dot(b, b)).sqrt()
    };
    let want = change(adapted_logits(base.llama(), &TOKENS, &attach(base.llama(), &patch)));
    let got = change(adapted_logits(base.llama(), &TOKENS, &attach(base.llama(), &read)));
    let agreement = cosine(&got, &want);
    assert!(agreement > 0.5, "{agreement}");
    // Recoding a coded patch is stable: its product is already ternary.
    let again = change(adapted_logits(
        base.llama(),
        &TOKENS,
        &attach(base.llama(), &compress(&read, 0.2).unwrap().0),
    ));
    assert!(cosine(&again, &got) > 0.9, "{}", cosine(&again, &got));
}

#[test]
fn a_patch_for_another_base_is_refused_unless_ported() {
    let dir = tempdir();
    let (a, b) = (base(&dir, 40), base(&dir, 41));
    let (_, patch) = lora_patch(&dir, &a, 3, 4);
    let file = dir.join("p.akp");
    patch.write(&file, None).unwrap();
    let source = || AdapterSource::Path(file.clone());
    let err = b.model.load_adapter(source(), &AttachOptions::default()).err().unwrap();
    assert!(matches!(err, Error::PatchBase { .. }), "{err}");
    assert!(err.to_string().contains("adaptkit patch port"), "{err}");
    b.model.load_adapter(source(), &trusting(&[], true)).unwrap();
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
    let want = adapted_logits(a.llama(), &TOKENS, &attach(a.llama(), &patch));
    // Onto the same base: nothing changes.
    let targets = targets(&patch, a.fingerprint.layers);
    assert_eq!(targets.len(), 7 * a.fingerprint.layers);
    let same = weight_drift(a.llama(), a.llama(), &targets).unwrap();
    assert_eq!(same.max(), 0.0);
    let ported = port(&patch, &a.fingerprint, 1.0, &same).unwrap();
    assert_eq!(adapted_logits(a.llama(), &TOKENS, &attach(a.llama(), &ported)), want);
    // λ scales the change like an adapter attached at scale λ.
    let half = port(&patch, &a.fingerprint, 0.5, &same).unwrap();
    let mut at_half = AdapterSet::new();
    at_half.push(patch.to_method(a.llama(), Path::new("p")).unwrap(), 0.5).unwrap();
    let got = adapted_logits(a.llama(), &TOKENS, &attach(a.llama(), &half));
    assert!(max_diff(&got, &adapted_logits(a.llama(), &TOKENS, &at_half)) < 1e-5);
    // Onto another base: addressed to it, with the measured drift recorded; the exact drift
    // bounds the drift seen from norms alone.
    let exact = weight_drift(a.llama(), b.llama(), &targets).unwrap();
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
    together.push(p1.to_method(base.llama(), Path::new("p1")).unwrap(), 0.7).unwrap();
    together.push(p2.to_method(base.llama(), Path::new("p2")).unwrap(), -0.3).unwrap();
    let want = adapted_logits(base.llama(), &TOKENS, &together);
    let got = adapted_logits(base.llama(), &TOKENS, &attach(base.llama(), &merged));
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
    let (adapter_dir, patch) = lora_patch(&dir, &base, 8, 2);
    let coded = compress(&patch, 0.1).unwrap().0;
    let key = signing_key([11; 32]);
    let bytes = coded.to_bytes(Some(&key));
    let trusted = [key.verifying_key().to_bytes()];
    let file = dir.join("p.akp");
    let signed_only = trusting(&trusted, false);
    let load = |options: &AttachOptions| base.model.load_adapter(AdapterSource::Path(file.clone()), options);

    // One good patch attached first: every failure below must leave it attached, alone, and
    // the model's logits as they are with it.
    std::fs::write(&file, &bytes).unwrap();
    let good = load(&signed_only).unwrap();
    base.model.attach(&good, 1.0).unwrap();
    let before = logits(&base.model);
    assert!(max_diff(&before, &adapted_logits(base.llama(), &TOKENS, &NoAdapters)) > 1e-3, "the patch acts");
    let unchanged = |what: &str| {
        let attached = base.model.attached();
        assert_eq!(attached.len(), 1, "{what}: the attached adapters changed");
        assert_eq!(logits(&base.model), before, "{what}: the model's output changed");
    };
    // Every single-bit flip anywhere in the file.
    for bit in 0..bytes.len() * 8 {
        let mut flipped = bytes.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        assert!(Patch::from_bytes(&flipped, "flipped").is_err(), "flip of bit {bit} accepted");
    }
    // Truncated, at a few points, through the loader.
    for len in [0, 7, 31, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&file, &bytes[..len]).unwrap();
        let err = load(&AttachOptions::default()).err().unwrap();
        assert!(matches!(err, Error::Patch { .. }), "{err}");
    }
    unchanged("truncated patches");
    // Unsigned, or signed by someone else, when a trusted signature is required.
    std::fs::write(&file, coded.to_bytes(None)).unwrap();
    let err = load(&signed_only).err().unwrap();
    assert!(err.to_string().contains("not signed"), "{err}");
    std::fs::write(&file, coded.to_bytes(Some(&signing_key([12; 32])))).unwrap();
    let err = load(&signed_only).err().unwrap();
    assert!(err.to_string().contains("not one of the trusted keys"), "{err}");
    // An adapter directory, or PEFT bytes, cannot be signed: refused when keys are trusted.
    let err = base.model.load_adapter(AdapterSource::Path(adapter_dir.clone()), &signed_only).err().unwrap();
    assert!(err.to_string().contains("no signature"), "{err}");
    let store = Arc::new(MemoryStore::new());
    let adapter =
        base.model.load_adapter(AdapterSource::Path(adapter_dir), &AttachOptions::default()).unwrap();
    adapter.save(store.as_ref()).unwrap();
    let err = base.model.load_adapter(AdapterSource::Store(store), &signed_only).err().unwrap();
    assert!(err.to_string().contains("no signature"), "{err}");
    unchanged("unsigned adapters");
    // A failed attach (a soft-prompt scale) and a failed detach change nothing either.
    assert!(base.model.detach(99).is_err());
    assert!(base.model.set_scale(99, 0.5).is_err());
    unchanged("a failed detach");
    // Oversized: refused from its size, before reading (a sparse file costs no disk).
    let huge = std::fs::File::create(&file).unwrap();
    huge.set_len(adaptkit::patch::MAX_PATCH_BYTES + 1).unwrap();
    let err = Patch::read(&file).unwrap_err();
    assert!(err.to_string().contains("more than"), "{err}");
    // Not a patch at all.
    let err = Patch::read(&base.path).unwrap_err();
    assert!(err.to_string().contains("bad magic"), "{err}");
    unchanged("bad files");
}

#[test]
fn fingerprints_are_of_the_loaded_bytes_and_cached_while_the_file_is_unchanged() {
    let dir = tempdir();
    let a = base(&dir, 40);
    let other = base(&dir, 41);
    let cache: Arc<dyn Store> = Arc::new(FileStore::new(dir.join("cache")));
    let cached = |path: &Path| {
        Model::open_path(path, &OpenOptions { cache: Some(cache.clone()), ..Default::default() }).unwrap()
    };
    assert_eq!(cached(&a.path).fingerprint().unwrap(), a.fingerprint);
    let entries = std::fs::read_dir(dir.join("cache/fingerprints")).unwrap().count();
    assert_eq!(entries, 1);
    // The next open reads the cache (seen by marking the cached entry).
    let entry = std::fs::read_dir(dir.join("cache/fingerprints")).unwrap().next().unwrap().unwrap().path();
    let marked = std::fs::read_to_string(&entry).unwrap().replace(&a.fingerprint.id, "marked");
    std::fs::write(&entry, marked).unwrap();
    assert_eq!(cached(&a.path).fingerprint().unwrap().id, "marked");

    // Another model written in place over the same path, of the same size and with the old
    // modification time put back: not taken for the cached one.
    let modified = std::fs::metadata(&a.path).unwrap().modified().unwrap();
    std::fs::write(&a.path, std::fs::read(&other.path).unwrap()).unwrap();
    std::fs::File::options().write(true).open(&a.path).unwrap().set_modified(modified).unwrap();
    assert_eq!(std::fs::metadata(&a.path).unwrap().modified().unwrap(), modified);
    assert_eq!(cached(&a.path).fingerprint().unwrap(), other.fingerprint);

    // A model fingerprints the bytes it loaded, even after its file is replaced (renamed over).
    let path = dir.join("replaced.gguf");
    Weights::random(42).write_gguf(&path, GgmlType::Q8_0, None);
    let loaded = Model::open_path(&path, &OpenOptions::default()).unwrap();
    let renamed = dir.join("incoming.gguf");
    std::fs::copy(&other.path, &renamed).unwrap();
    std::fs::rename(&renamed, &path).unwrap();
    let fingerprint = loaded.fingerprint().unwrap();
    assert_ne!(fingerprint.id, other.fingerprint.id, "it hashed the file now at the path");
    assert_eq!(fingerprint, Fingerprint::of(loaded.engine()).unwrap());
    // Bytes are fingerprinted as the file is.
    let bytes = Model::open(
        adaptkit::ModelSource::Gguf(std::fs::read(&other.path).unwrap()),
        &OpenOptions { cache: Some(Arc::new(MemoryStore::new())), ..Default::default() },
    )
    .unwrap();
    assert_eq!(bytes.fingerprint().unwrap(), other.fingerprint);
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

/// A tiny model whose 4 attention heads are 32 wide (attention width 128, half of `d_model`),
/// written by hand: every other shape is the common tiny model's.
fn narrow_heads_base(dir: &TempDir, seed: u64) -> Base {
    use adaptkit::format::gguf::GgufWriter;
    const HEAD: usize = 32;
    let (attention, kv) = (HEADS * HEAD, KV_HEADS * HEAD);
    let mut r = Rng(seed);
    let mut w = GgufWriter::new();
    add_tiny_metadata(&mut w, Some(HEAD));
    let mut add = |name: String, cols: usize, rows: usize, values: Vec<f32>| {
        let ty = if rows == 1 { GgmlType::F32 } else { GgmlType::Q8_0 };
        let dims: Vec<u64> = if rows == 1 { vec![cols as u64] } else { vec![cols as u64, rows as u64] };
        w.add_tensor(name, ty, &dims, adaptkit::quant::quantize(ty, &values).unwrap()).unwrap();
    };
    add("token_embd.weight".into(), D, VOCAB, r.vec(D * VOCAB, 1.0));
    add("output_norm.weight".into(), D, 1, r.norm(D));
    for i in 0..LAYERS {
        let n = |part: &str| format!("blk.{i}.{part}.weight");
        let s = 1.0 / (D as f32).sqrt();
        add(n("attn_norm"), D, 1, r.norm(D));
        add(n("attn_q"), D, attention, r.vec(D * attention, s));
        add(n("attn_k"), D, kv, r.vec(D * kv, s));
        add(n("attn_v"), D, kv, r.vec(D * kv, s));
        add(n("attn_output"), attention, D, r.vec(attention * D, 1.0 / (attention as f32).sqrt()));
        add(n("ffn_norm"), D, 1, r.norm(D));
        add(n("ffn_gate"), D, FFN, r.vec(D * FFN, s));
        add(n("ffn_up"), D, FFN, r.vec(D * FFN, s));
        add(n("ffn_down"), FFN, D, r.vec(FFN * D, 1.0 / (FFN as f32).sqrt()));
    }
    let path = dir.join(&format!("narrow{seed}.gguf"));
    w.write_file(&path).unwrap();
    let model = Model::open_path(&path, &OpenOptions::default()).unwrap();
    let fingerprint = model.fingerprint().unwrap();
    Base { path, model, fingerprint }
}

/// A random LoRA of `rank` on every projection of the narrow-headed model, as a dense patch.
fn narrow_lora_patch(dir: &TempDir, base: &Base, seed: u64, rank: usize) -> Patch {
    use adaptkit::format::peft::PeftDir;
    use adaptkit::format::safetensors::Dtype;
    let (attention, kv) = (HEADS * 32, KV_HEADS * 32);
    let mut r = Rng(seed);
    let mut tensors = Vec::new();
    for layer in 0..LAYERS {
        for p in adaptkit::model::Projection::ALL {
            use adaptkit::model::Projection::*;
            let (out, inp) = match p {
                Q => (attention, D),
                K | V => (kv, D),
                O => (D, attention),
                Gate | Up => (FFN, D),
                Down => (D, FFN),
            };
            let name =
                |w: &str| format!("base_model.model.model.layers.{layer}.{}.lora_{w}.weight", p.hf_path());
            let bytes = |v: Vec<f32>| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
            tensors.push((name("A"), Dtype::F32, vec![rank, inp], bytes(r.vec(rank * inp, 0.1))));
            tensors.push((name("B"), Dtype::F32, vec![out, rank], bytes(r.vec(out * rank, 0.05))));
        }
    }
    let config = serde_json::json!({
        "peft_type": "LORA", "r": rank, "lora_alpha": rank, "bias": "none",
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    });
    let path = dir.join(&format!("narrow-lora{seed}"));
    PeftDir::write(&path, &config, &tensors).unwrap();
    Patch::from_adapter_dir(&path, base.fingerprint.clone(), DenseType::F32).unwrap()
}

#[test]
fn heads_narrower_than_the_model_are_told_apart_and_their_patches_merge() {
    let dir = tempdir();
    let (wide, narrow) = (base(&dir, 40), narrow_heads_base(&dir, 43));
    assert_eq!((wide.fingerprint.head_dim, narrow.fingerprint.head_dim), (None, Some(32)));
    assert_eq!(narrow.fingerprint.head_dim(), 32);
    // Same layers, width, heads and MLP: only the heads' width differs, and that is another
    // architecture, to which a patch cannot be ported.
    let err = wide.fingerprint.same_shapes(&narrow.fingerprint).unwrap_err();
    assert!(err.contains("of 64") && err.contains("of 32"), "{err}");
    // Merging patches of it builds q, k, v and o in the model's shapes.
    let (p1, p2) = (narrow_lora_patch(&dir, &narrow, 1, 2), narrow_lora_patch(&dir, &narrow, 2, 3));
    let merged = combine(&[(p1.clone(), 0.7), (p2.clone(), -0.3)], DenseType::F32).unwrap();
    let mut together = AdapterSet::new();
    together.push(p1.to_method(narrow.llama(), Path::new("p1")).unwrap(), 0.7).unwrap();
    together.push(p2.to_method(narrow.llama(), Path::new("p2")).unwrap(), -0.3).unwrap();
    let want = adapted_logits(narrow.llama(), &TOKENS, &together);
    let got = adapted_logits(narrow.llama(), &TOKENS, &attach(narrow.llama(), &merged));
    assert!(max_diff(&got, &want) < 1e-4, "{}", max_diff(&got, &want));
}
