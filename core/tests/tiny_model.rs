//! Tiny random Llama models written by the test itself (GGUF in every block format, and HF
//! safetensors), checked against a naive reference forward pass written here independently of
//! burn: loaders agree, quantized kernels agree with their dequantized weights, the KV cache and
//! batching change nothing, and bad models give typed errors.

use std::path::Path;

use adaptkit::adapt::merge::{export_merged, MergedType};
use adaptkit::adapt::{AdapterSet, LoraAdapter, LoraConfig};
use adaptkit::burn::tensor::Device;
use adaptkit::format::gguf::{GgufFile, GgufWriter};
use adaptkit::format::peft::PeftDir;
use adaptkit::format::safetensors::{write_safetensors, Dtype, SafetensorsFile};
use adaptkit::model::{Adapters, KvCache, Llama, LlamaConfig, NoAdapters, Projection};
use adaptkit::quant::{self, GgmlType};
use adaptkit::train::{collect_grads, loss_and_gradients, masked_next_token_loss, next_token_loss, AdamW};
use adaptkit::Error;

const VOCAB: usize = 128;
const D: usize = 256; // K-quants need rows of 256 values
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = D / HEADS;
const FFN: usize = 512;
const LAYERS: usize = 2;
const CONTEXT: usize = 320; // > the decoder's prefill chunk of 256
const EPS: f32 = 1e-5;
const THETA: f32 = 10_000.0;

#[derive(Clone)]
struct Layer {
    attn_norm: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    o: Vec<f32>,
    ffn_norm: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    down: Vec<f32>,
}

/// Weights in GGUF layout (row-major `[out, in]`, q/k rows in RoPE-pair order).
#[derive(Clone)]
struct Weights {
    embed: Vec<f32>,
    layers: Vec<Layer>,
    output_norm: Vec<f32>,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * scale).collect()
    }
    fn norm(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| 1.0 + 0.2 * self.next()).collect()
    }
}

impl Weights {
    fn random(seed: u64) -> Self {
        let mut r = Rng(seed);
        let s = 1.0 / (D as f32).sqrt();
        let layers = (0..LAYERS)
            .map(|_| Layer {
                attn_norm: r.norm(D),
                q: r.vec(D * D, s),
                k: r.vec(KV_HEADS * HEAD_DIM * D, s),
                v: r.vec(KV_HEADS * HEAD_DIM * D, s),
                o: r.vec(D * D, s),
                ffn_norm: r.norm(D),
                gate: r.vec(FFN * D, s),
                up: r.vec(FFN * D, s),
                down: r.vec(D * FFN, 1.0 / (FFN as f32).sqrt()),
            })
            .collect();
        Self { embed: r.vec(VOCAB * D, 1.0), layers, output_norm: r.norm(D) }
    }

    /// The weights a model quantized to `ty` effectively has.
    fn round_tripped(&self, ty: GgmlType) -> Self {
        let rt = |w: &Vec<f32>| {
            let mut out = vec![0.0; w.len()];
            quant::dequantize(ty, &quant::quantize(ty, w).unwrap(), &mut out).unwrap();
            out
        };
        Self {
            embed: rt(&self.embed),
            layers: self
                .layers
                .iter()
                .map(|l| Layer {
                    attn_norm: l.attn_norm.clone(),
                    q: rt(&l.q),
                    k: rt(&l.k),
                    v: rt(&l.v),
                    o: rt(&l.o),
                    ffn_norm: l.ffn_norm.clone(),
                    gate: rt(&l.gate),
                    up: rt(&l.up),
                    down: rt(&l.down),
                })
                .collect(),
            output_norm: self.output_norm.clone(),
        }
    }

    /// GGUF with every matrix (embedding included) in `ty`; `skip` leaves one tensor out.
    fn write_gguf(&self, path: &Path, ty: GgmlType, skip: Option<&str>) {
        let mut w = GgufWriter::new();
        for (key, value) in [
            ("llama.block_count", LAYERS),
            ("llama.embedding_length", D),
            ("llama.feed_forward_length", FFN),
            ("llama.attention.head_count", HEADS),
            ("llama.attention.head_count_kv", KV_HEADS),
            ("llama.context_length", CONTEXT),
        ] {
            w.add_metadata(key, value as u32).unwrap();
        }
        w.add_metadata("general.architecture", "llama").unwrap();
        w.add_metadata("llama.rope.freq_base", THETA).unwrap();
        w.add_metadata("llama.attention.layer_norm_rms_epsilon", EPS).unwrap();
        let mut add = |name: String, ty: GgmlType, dims: &[u64], values: &[f32]| {
            if skip != Some(name.as_str()) {
                w.add_tensor(name, ty, dims, quant::quantize(ty, values).unwrap()).unwrap();
            }
        };
        add("token_embd.weight".into(), ty, &[D as u64, VOCAB as u64], &self.embed);
        add("output_norm.weight".into(), GgmlType::F32, &[D as u64], &self.output_norm);
        let kv = (KV_HEADS * HEAD_DIM) as u64;
        for (i, l) in self.layers.iter().enumerate() {
            let n = |part: &str| format!("blk.{i}.{part}.weight");
            add(n("attn_norm"), GgmlType::F32, &[D as u64], &l.attn_norm);
            add(n("attn_q"), ty, &[D as u64, D as u64], &l.q);
            add(n("attn_k"), ty, &[D as u64, kv], &l.k);
            add(n("attn_v"), ty, &[D as u64, kv], &l.v);
            add(n("attn_output"), ty, &[D as u64, D as u64], &l.o);
            add(n("ffn_norm"), GgmlType::F32, &[D as u64], &l.ffn_norm);
            add(n("ffn_gate"), ty, &[D as u64, FFN as u64], &l.gate);
            add(n("ffn_up"), ty, &[D as u64, FFN as u64], &l.up);
            add(n("ffn_down"), ty, &[FFN as u64, D as u64], &l.down);
        }
        w.write_file(path).unwrap();
    }

    /// A HF checkpoint directory: config.json + model.safetensors in HF's names and q/k layout.
    fn write_hf(&self, dir: &Path, dtype: Dtype) {
        std::fs::create_dir_all(dir).unwrap();
        let config = serde_json::json!({
            "model_type": "llama", "hidden_size": D, "intermediate_size": FFN,
            "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
            "num_hidden_layers": LAYERS, "vocab_size": VOCAB, "max_position_embeddings": CONTEXT,
            "rope_theta": THETA, "rms_norm_eps": EPS, "tie_word_embeddings": true,
        });
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        let encode = |v: &[f32]| -> Vec<u8> {
            match dtype {
                Dtype::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                Dtype::BF16 => v.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect(),
                _ => v.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect(),
            }
        };
        let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        // Norms stay f32, as in the GGUF files, so that only the matrices' dtype differs.
        let mut add = |name: String, shape: Vec<usize>, v: &[f32]| {
            let dtype = if shape.len() == 1 { Dtype::F32 } else { dtype };
            let bytes =
                if shape.len() == 1 { v.iter().flat_map(|x| x.to_le_bytes()).collect() } else { encode(v) };
            tensors.push((name, dtype, shape, bytes))
        };
        add("model.embed_tokens.weight".into(), vec![VOCAB, D], &self.embed);
        add("model.norm.weight".into(), vec![D], &self.output_norm);
        for (i, l) in self.layers.iter().enumerate() {
            let n = |part: &str| format!("model.layers.{i}.{part}.weight");
            add(n("input_layernorm"), vec![D], &l.attn_norm);
            add(n("self_attn.q_proj"), vec![D, D], &pairs_to_rotate_half(&l.q, HEADS, D));
            add(
                n("self_attn.k_proj"),
                vec![KV_HEADS * HEAD_DIM, D],
                &pairs_to_rotate_half(&l.k, KV_HEADS, D),
            );
            add(n("self_attn.v_proj"), vec![KV_HEADS * HEAD_DIM, D], &l.v);
            add(n("self_attn.o_proj"), vec![D, D], &l.o);
            add(n("post_attention_layernorm"), vec![D], &l.ffn_norm);
            add(n("mlp.gate_proj"), vec![FFN, D], &l.gate);
            add(n("mlp.up_proj"), vec![FFN, D], &l.up);
            add(n("mlp.down_proj"), vec![D, FFN], &l.down);
        }
        write_safetensors(dir.join("model.safetensors"), &tensors, &[("format", "pt")]).unwrap();
    }

    /// Naive f64 forward pass: logits of every position, `[len][vocab]`.
    fn reference_logits(&self, tokens: &[u32]) -> Vec<Vec<f32>> {
        let matvec = |w: &[f32], x: &[f64], rows: usize| -> Vec<f64> {
            let cols = x.len();
            (0..rows).map(|r| (0..cols).map(|c| w[r * cols + c] as f64 * x[c]).sum()).collect()
        };
        let norm = |x: &[f64], w: &[f32]| -> Vec<f64> {
            let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
            let inv = 1.0 / (ms + EPS as f64).sqrt();
            x.iter().zip(w).map(|(v, w)| v * inv * *w as f64).collect()
        };
        let rope = |x: &mut [f64], pos: usize| {
            for head in x.chunks_mut(HEAD_DIM) {
                for i in 0..HEAD_DIM / 2 {
                    let freq = 1.0 / (THETA as f64).powf(2.0 * i as f64 / HEAD_DIM as f64);
                    let (s, c) = (pos as f64 * freq).sin_cos();
                    let (a, b) = (head[2 * i], head[2 * i + 1]);
                    head[2 * i] = a * c - b * s;
                    head[2 * i + 1] = a * s + b * c;
                }
            }
        };
        let mut xs: Vec<Vec<f64>> = tokens
            .iter()
            .map(|&t| self.embed[t as usize * D..][..D].iter().map(|&v| v as f64).collect())
            .collect();
        for l in &self.layers {
            let mut keys = Vec::new();
            let mut values = Vec::new();
            for (pos, x) in xs.iter_mut().enumerate() {
                let h = norm(x, &l.attn_norm);
                let mut q = matvec(&l.q, &h, D);
                let mut k = matvec(&l.k, &h, KV_HEADS * HEAD_DIM);
                rope(&mut q, pos);
                rope(&mut k, pos);
                keys.push(k);
                values.push(matvec(&l.v, &h, KV_HEADS * HEAD_DIM));
                let mut context = vec![0.0; D];
                for head in 0..HEADS {
                    let kv = head / (HEADS / KV_HEADS);
                    let qh = &q[head * HEAD_DIM..][..HEAD_DIM];
                    let scores: Vec<f64> = keys
                        .iter()
                        .map(|k| {
                            qh.iter().zip(&k[kv * HEAD_DIM..]).map(|(a, b)| a * b).sum::<f64>()
                                / (HEAD_DIM as f64).sqrt()
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                    let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let total: f64 = weights.iter().sum();
                    for (w, v) in weights.iter().zip(&values) {
                        for d in 0..HEAD_DIM {
                            context[head * HEAD_DIM + d] += w / total * v[kv * HEAD_DIM + d];
                        }
                    }
                }
                let o = matvec(&l.o, &context, D);
                x.iter_mut().zip(o).for_each(|(a, b)| *a += b);
                let h = norm(x, &l.ffn_norm);
                let gate = matvec(&l.gate, &h, FFN);
                let up = matvec(&l.up, &h, FFN);
                let act: Vec<f64> = gate.iter().zip(&up).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
                let down = matvec(&l.down, &act, D);
                x.iter_mut().zip(down).for_each(|(a, b)| *a += b);
            }
        }
        xs.iter()
            .map(|x| {
                matvec(&self.embed, &norm(x, &self.output_norm), VOCAB).iter().map(|&v| v as f32).collect()
            })
            .collect()
    }
}

/// HF's rotate-half row order from GGUF's pair order (the inverse of the loader's permutation),
/// for rows of `row_len` values.
fn pairs_to_rotate_half(w: &[f32], heads: usize, row_len: usize) -> Vec<f32> {
    let half = HEAD_DIM / 2;
    let mut out = vec![0.0; w.len()];
    for h in 0..heads {
        for i in 0..half {
            for p in 0..2 {
                let gguf = (h * HEAD_DIM + 2 * i + p) * row_len;
                let hf = (h * HEAD_DIM + p * half + i) * row_len;
                out[hf..hf + row_len].copy_from_slice(&w[gguf..gguf + row_len]);
            }
        }
    }
    out
}

const TOKENS: [u32; 12] = [1, 17, 99, 3, 3, 64, 127, 0, 42, 8, 77, 5];

fn all_logits(model: &Llama, tokens: &[u32]) -> Vec<f32> {
    let mut cache = model.new_cache(1);
    let hidden = model.forward(tokens, 1, &mut cache).unwrap();
    model.logits(hidden, 0..tokens.len()).unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn load_gguf(path: &Path) -> Llama {
    Llama::from_gguf(&GgufFile::open(path).unwrap(), &Device::flex()).unwrap()
}

#[test]
fn f32_model_matches_the_naive_reference() {
    let dir = tempdir();
    let weights = Weights::random(1);
    weights.write_gguf(&dir.join("m.gguf"), GgmlType::F32, None);
    let got = all_logits(&load_gguf(&dir.join("m.gguf")), &TOKENS);
    let want: Vec<f32> = weights.reference_logits(&TOKENS).concat();
    let diff = max_diff(&got, &want);
    assert!(diff < 1e-3, "max |logit diff| {diff}");
}

#[test]
fn gguf_and_safetensors_loaders_agree() {
    let dir = tempdir();
    let weights = Weights::random(2);
    for (dtype, ty) in
        [(Dtype::F32, GgmlType::F32), (Dtype::F16, GgmlType::F16), (Dtype::BF16, GgmlType::BF16)]
    {
        let gguf = dir.join(&format!("{ty}.gguf"));
        let hf = dir.join(&format!("hf-{ty}"));
        weights.write_gguf(&gguf, ty, None);
        weights.write_hf(&hf, dtype);
        let from_gguf = all_logits(&load_gguf(&gguf), &TOKENS);
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(hf.join("config.json")).unwrap()).unwrap();
        let file = SafetensorsFile::open(hf.join("model.safetensors")).unwrap();
        let model =
            Llama::from_safetensors(LlamaConfig::from_hf_json(&json).unwrap(), &[file], &Device::flex())
                .unwrap();
        assert_eq!(model.blocks()[0].attn_q.weight().ty(), ty, "matrices keep their dtype");
        let from_hf = all_logits(&model, &TOKENS);
        assert_eq!(max_diff(&from_gguf, &from_hf), 0.0, "{ty}: loaders must build the same model");
    }
}

#[test]
fn every_block_format_runs_like_its_dequantized_weights() {
    let dir = tempdir();
    let weights = Weights::random(3);
    for ty in quant::SUPPORTED_TYPES {
        let path = dir.join(&format!("{ty}.gguf"));
        weights.write_gguf(&path, ty, None);
        let got = all_logits(&load_gguf(&path), &TOKENS);
        let want: Vec<f32> = weights.round_tripped(ty).reference_logits(&TOKENS).concat();
        let diff = max_diff(&got, &want);
        assert!(diff < 2e-3, "{ty}: max |logit diff| {diff}");
    }
}

#[test]
fn kv_cache_decoding_equals_one_full_pass() {
    let dir = tempdir();
    Weights::random(4).write_gguf(&dir.join("m.gguf"), GgmlType::Q4_1, None);
    let model = load_gguf(&dir.join("m.gguf"));
    let full = all_logits(&model, &TOKENS);
    let mut cache = model.new_cache(1);
    let mut stepwise = Vec::new();
    let hidden = model.forward(&TOKENS[..5], 1, &mut cache).unwrap();
    stepwise.extend(model.logits(hidden, 0..5).unwrap());
    // A several-token chunk after cached ones: the causal mask with an offset.
    let hidden = model.forward(&TOKENS[5..9], 1, &mut cache).unwrap();
    stepwise.extend(model.logits(hidden, 0..4).unwrap());
    for &t in &TOKENS[9..] {
        let hidden = model.forward(&[t], 1, &mut cache).unwrap();
        stepwise.extend(model.logits(hidden, 0..1).unwrap());
    }
    let diff = max_diff(&full, &stepwise);
    assert!(diff < 1e-4, "max |logit diff| {diff}");
}

#[test]
fn a_batch_equals_its_rows_run_alone() {
    let dir = tempdir();
    Weights::random(5).write_gguf(&dir.join("m.gguf"), GgmlType::Q8_0, None);
    let model = load_gguf(&dir.join("m.gguf"));
    let (a, b) = (&TOKENS[..6], &TOKENS[6..]);
    let mut cache = model.new_cache(2);
    let hidden = model.forward(&[a, b].concat(), 2, &mut cache).unwrap();
    let batched = model.logits(hidden, 0..6).unwrap();
    let alone = [all_logits(&model, a), all_logits(&model, b)].concat();
    let diff = max_diff(&batched, &alone);
    assert!(diff < 1e-4, "max |logit diff| {diff}");
}

#[test]
fn bad_models_and_inputs_give_typed_errors() {
    let dir = tempdir();
    let weights = Weights::random(6);
    weights.write_gguf(&dir.join("missing.gguf"), GgmlType::F32, Some("blk.1.ffn_up.weight"));
    let err =
        Llama::from_gguf(&GgufFile::open(dir.join("missing.gguf")).unwrap(), &Device::flex()).err().unwrap();
    assert!(matches!(&err, Error::MissingTensor(name) if name == "blk.1.ffn_up.weight"), "{err}");

    weights.write_gguf(&dir.join("m.gguf"), GgmlType::F32, None);
    let model = load_gguf(&dir.join("m.gguf"));
    let mut cache = model.new_cache(1);
    let err = model.forward(&[VOCAB as u32], 1, &mut cache).err().unwrap();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    let err = model.forward(&vec![1; CONTEXT + 1], 1, &mut cache).err().unwrap();
    assert!(
        matches!(err, Error::ContextOverflow { tokens, context: CONTEXT } if tokens == CONTEXT + 1),
        "{err}"
    );
    let other = LlamaConfig { n_layers: LAYERS + 1, ..model.config().clone() };
    let err = model.forward(&[1], 1, &mut KvCache::new(&other, 1)).err().unwrap();
    assert!(err.to_string().contains("another model"), "{err}");

    let mut bad = serde_json::json!({"model_type": "gpt2"});
    let err = LlamaConfig::from_hf_json(&bad).err().unwrap();
    assert!(matches!(&err, Error::UnsupportedArchitecture(a) if a == "gpt2"), "{err}");
    bad = serde_json::json!({"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
        "num_attention_heads": 3, "num_key_value_heads": 2, "num_hidden_layers": 1, "vocab_size": 10,
        "max_position_embeddings": 16});
    let err = LlamaConfig::from_hf_json(&bad).err().unwrap();
    assert!(err.to_string().contains("not a multiple"), "{err}");
    bad["num_attention_heads"] = 4.into();
    bad["attention_bias"] = true.into();
    let err = LlamaConfig::from_hf_json(&bad).err().unwrap();
    assert!(err.to_string().contains("attention_bias"), "{err}");
    bad["attention_bias"] = false.into();
    bad["rope_scaling"] = serde_json::json!({"rope_type": "linear", "factor": 0.0});
    let err = LlamaConfig::from_hf_json(&bad).err().unwrap();
    assert!(err.to_string().contains("RoPE scaling"), "{err}");
    bad["rope_scaling"] = serde_json::json!({"rope_type": "default"});
    assert!(LlamaConfig::from_hf_json(&bad).is_ok());
    bad["num_hidden_layers"] = (1u64 << 62).into();
    bad["hidden_size"] = (1u64 << 40).into();
    let err = LlamaConfig::from_hf_json(&bad).err().unwrap();
    assert!(err.to_string().contains("overflow"), "{err}");
}

#[test]
fn a_long_input_runs_in_chunks_like_the_reference() {
    let dir = tempdir();
    let weights = Weights::random(8);
    weights.write_gguf(&dir.join("m.gguf"), GgmlType::F32, None);
    let model = load_gguf(&dir.join("m.gguf"));
    let tokens: Vec<u32> = (0..300u32).map(|i| (i * 37 + 11) % VOCAB as u32).collect();
    let got = all_logits(&model, &tokens);
    let want: Vec<f32> = weights.reference_logits(&tokens).concat();
    let diff = max_diff(&got, &want);
    assert!(diff < 2e-3, "max |logit diff| {diff}");
}

/// A scratch directory removed when the test ends.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn join(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir() -> TempDir {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("adaptkit-tiny-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

/// A LoRA adapter as the test knows it: `A: [rank, in]`, `B: [out, rank]` in GGUF row order.
struct Lora {
    rank: usize,
    alpha: f32,
    pairs: Vec<(usize, Projection, Vec<f32>, Vec<f32>)>,
}

fn dims(p: Projection) -> (usize, usize) {
    match p {
        Projection::Q | Projection::O => (D, D),
        Projection::K | Projection::V => (KV_HEADS * HEAD_DIM, D),
        Projection::Gate | Projection::Up => (FFN, D),
        Projection::Down => (D, FFN),
    }
}

fn matrix(layer: &mut Layer, p: Projection) -> &mut Vec<f32> {
    match p {
        Projection::Q => &mut layer.q,
        Projection::K => &mut layer.k,
        Projection::V => &mut layer.v,
        Projection::O => &mut layer.o,
        Projection::Gate => &mut layer.gate,
        Projection::Up => &mut layer.up,
        Projection::Down => &mut layer.down,
    }
}

impl Lora {
    fn random(seed: u64, rank: usize, zero_b: bool) -> Self {
        let mut r = Rng(seed);
        let pairs = (0..LAYERS)
            .flat_map(|layer| Projection::ALL.map(|p| (layer, p)))
            .map(|(layer, p)| {
                let (out, inp) = dims(p);
                let b = if zero_b { vec![0.0; out * rank] } else { r.vec(out * rank, 0.05) };
                (layer, p, r.vec(rank * inp, 1.0 / (inp as f32).sqrt()), b)
            })
            .collect();
        Self { rank, alpha: 2.0 * rank as f32, pairs }
    }

    /// A PEFT directory in Hugging Face's layout (q/k `lora_B` rows in rotate-half order).
    fn write_peft(&self, dir: &Path) {
        let encode = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let mut tensors = Vec::new();
        for (layer, p, a, b) in &self.pairs {
            let (out, inp) = dims(*p);
            let b = match p {
                Projection::Q => pairs_to_rotate_half(b, HEADS, self.rank),
                Projection::K => pairs_to_rotate_half(b, KV_HEADS, self.rank),
                _ => b.clone(),
            };
            let name =
                |w: &str| format!("base_model.model.model.layers.{layer}.{}.lora_{w}.weight", p.hf_path());
            tensors.push((name("A"), Dtype::F32, vec![self.rank, inp], encode(a)));
            tensors.push((name("B"), Dtype::F32, vec![out, self.rank], encode(&b)));
        }
        let config = serde_json::json!({
            "peft_type": "LORA", "r": self.rank, "lora_alpha": self.alpha, "bias": "none",
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        });
        PeftDir::write(dir, &config, &tensors).unwrap();
    }

    /// `weights` with `scale · (alpha / rank) · B A` added to every adapted matrix.
    fn merge_into(&self, weights: &mut Weights, scale: f32) {
        let s = scale * self.alpha / self.rank as f32;
        for (layer, p, a, b) in &self.pairs {
            let (out, inp) = dims(*p);
            let w = matrix(&mut weights.layers[*layer], *p);
            for o in 0..out {
                for i in 0..inp {
                    w[o * inp + i] +=
                        s * (0..self.rank).map(|k| b[o * self.rank + k] * a[k * inp + i]).sum::<f32>();
                }
            }
        }
    }
}

fn adapted_logits(model: &Llama, tokens: &[u32], adapters: &dyn Adapters) -> Vec<f32> {
    let mut cache = model.new_cache(1);
    let hidden = model.forward_adapted(tokens, 1, &mut cache, adapters).unwrap();
    model.logits(hidden, 0..tokens.len()).unwrap()
}

#[test]
fn a_peft_lora_runs_like_its_merged_weights() {
    let dir = tempdir();
    let weights = Weights::random(9);
    weights.write_gguf(&dir.join("m.gguf"), GgmlType::F32, None);
    let model = load_gguf(&dir.join("m.gguf"));
    let (first, second) = (Lora::random(10, 4, false), Lora::random(11, 2, false));
    first.write_peft(&dir.join("first"));
    second.write_peft(&dir.join("second"));

    let mut set = AdapterSet::new();
    set.push(LoraAdapter::load(&dir.join("first"), &model).unwrap(), 1.0);
    let mut merged = weights.clone();
    first.merge_into(&mut merged, 1.0);
    let diff = max_diff(&adapted_logits(&model, &TOKENS, &set), &merged.reference_logits(&TOKENS).concat());
    assert!(diff < 1e-3, "one adapter: max |logit diff| {diff}");

    // Two at once with their own scales, against both merged.
    set.push(LoraAdapter::load(&dir.join("second"), &model).unwrap(), -0.5);
    second.merge_into(&mut merged, -0.5);
    let diff = max_diff(&adapted_logits(&model, &TOKENS, &set), &merged.reference_logits(&TOKENS).concat());
    assert!(diff < 1e-3, "two adapters: max |logit diff| {diff}");
}

#[test]
fn lora_round_trips_through_peft_and_a_zero_b_changes_nothing() {
    let dir = tempdir();
    Weights::random(12).write_gguf(&dir.join("m.gguf"), GgmlType::Q8_0, None);
    let model = load_gguf(&dir.join("m.gguf"));
    Lora::random(13, 3, false).write_peft(&dir.join("lora"));
    let loaded = LoraAdapter::load(&dir.join("lora"), &model).unwrap();
    assert_eq!(loaded.config().rank, 3);
    loaded.save(&dir.join("again"), &model).unwrap();
    assert_eq!(
        adapted_logits(&model, &TOKENS, &loaded),
        adapted_logits(&model, &TOKENS, &LoraAdapter::load(&dir.join("again"), &model).unwrap()),
        "save then load must give the same adapter"
    );
    Lora::random(14, 3, true).write_peft(&dir.join("zero"));
    let zero = LoraAdapter::load(&dir.join("zero"), &model).unwrap();
    assert_eq!(adapted_logits(&model, &TOKENS, &zero), all_logits(&model, &TOKENS));
}

#[test]
fn bad_adapters_are_named() {
    let dir = tempdir();
    Weights::random(15).write_gguf(&dir.join("m.gguf"), GgmlType::F32, None);
    let model = load_gguf(&dir.join("m.gguf"));
    let lora = Lora::random(16, 2, false);
    let load = |name: &str, edit: &dyn Fn(&mut serde_json::Value)| {
        let path = dir.join(name);
        lora.write_peft(&path);
        let config_path = path.join("adapter_config.json");
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
        edit(&mut config);
        std::fs::write(&config_path, config.to_string()).unwrap();
        LoraAdapter::load(&path, &model).err().map(|e| e.to_string()).unwrap_or_default()
    };
    assert!(load("prefix", &|c| c["peft_type"] = "PREFIX_TUNING".into()).contains("not LORA"));
    assert!(load("embed", &|c| c["target_modules"] = serde_json::json!(["embed_tokens"]))
        .contains("embed_tokens"));
    assert!(load("rank0", &|c| c["r"] = 0.into()).contains("rank"));
    assert!(load("rank", &|c| c["r"] = 5.into()).contains("expected [5,"));
    assert!(load("dora", &|c| c["use_dora"] = true.into()).contains("DoRA"));
    let missing = LoraAdapter::load(&dir.join("nowhere"), &model).err().unwrap().to_string();
    assert!(missing.contains("adapter_config.json"), "{missing}");
}

#[test]
fn merged_gguf_equals_the_unmerged_adapters() {
    let dir = tempdir();
    Weights::random(17).write_gguf(&dir.join("m.gguf"), GgmlType::Q8_0, None);
    let base = GgufFile::open(dir.join("m.gguf")).unwrap();
    let model = load_gguf(&dir.join("m.gguf"));
    Lora::random(18, 4, false).write_peft(&dir.join("a"));
    Lora::random(19, 2, false).write_peft(&dir.join("b"));
    let mut set = AdapterSet::new();
    set.push(LoraAdapter::load(&dir.join("a"), &model).unwrap(), 1.0);
    set.push(LoraAdapter::load(&dir.join("b"), &model).unwrap(), 0.5);
    let unmerged = adapted_logits(&model, &TOKENS, &set);
    let moved = max_diff(&unmerged, &all_logits(&model, &TOKENS));
    assert!(moved > 0.05, "the adapters must change the model ({moved})");

    let report = export_merged(&base, &set, MergedType::Fixed(GgmlType::F32), &dir.join("f32.gguf")).unwrap();
    assert_eq!(report.tensors_merged, LAYERS * 7);
    let diff = max_diff(&all_logits(&load_gguf(&dir.join("f32.gguf")), &TOKENS), &unmerged);
    assert!(diff < 1e-3, "merged in f32: max |logit diff| {diff}");

    // Requantized to the base's Q8_0: what remains is Q8_0's rounding of the merged weights.
    export_merged(&base, &set, MergedType::Same, &dir.join("q8.gguf")).unwrap();
    let merged_q8 = load_gguf(&dir.join("q8.gguf"));
    assert_eq!(merged_q8.blocks()[0].attn_q.weight().ty(), GgmlType::Q8_0);
    let diff = max_diff(&all_logits(&merged_q8, &TOKENS), &unmerged);
    assert!(diff < moved / 5.0, "merged in Q8_0: max |logit diff| {diff}, adapters moved logits by {moved}");
}

fn load_for_training(path: &Path) -> Llama {
    Llama::from_gguf(&GgufFile::open(path).unwrap(), &Device::flex().autodiff()).unwrap()
}

fn scalar(t: adaptkit::burn::tensor::Tensor<1>) -> f32 {
    t.into_data().try_to_vec::<f32>().unwrap()[0]
}

#[test]
fn lora_gradients_match_finite_differences_through_the_quantized_base() {
    let dir = tempdir();
    Weights::random(20).write_gguf(&dir.join("m.gguf"), GgmlType::Q4_1, None);
    let model = load_for_training(&dir.join("m.gguf"));
    Lora::random(21, 2, false).write_peft(&dir.join("lora"));
    let mut adapter = LoraAdapter::load(&dir.join("lora"), &model).unwrap().trainable();
    let grads = next_token_loss(&model, &adapter, &TOKENS, 1).unwrap().backward();
    let mut analytic = Vec::new();
    for (name, param) in adapter.parameters_mut() {
        // Layer 0's A and B of q and down: gradients that pass through RoPE, attention, the MLP
        // and every later quantized layer.
        if name.contains("layers.0.self_attn.q_proj") || name.contains("layers.0.mlp.down_proj") {
            let g = param.grad(&grads).expect("tracked").into_data().try_to_vec::<f32>().unwrap();
            let at = (0..g.len()).max_by(|&i, &j| g[i].abs().total_cmp(&g[j].abs())).unwrap();
            analytic.push((name, at, g[at]));
        }
    }
    assert_eq!(analytic.len(), 4);
    let eps = 1e-2;
    for (name, at, g) in analytic {
        let mut loss_at = |delta: f32| {
            for (n, param) in adapter.parameters_mut() {
                if n == name {
                    let mut values = param.clone().into_data().try_to_vec::<f32>().unwrap();
                    values[at] += delta;
                    *param = adaptkit::burn::tensor::Tensor::from_data(
                        adaptkit::burn::tensor::TensorData::new(values, param.dims()),
                        model.device(),
                    );
                }
            }
            scalar(next_token_loss(&model, &adapter, &TOKENS, 1).unwrap())
        };
        let (plus, minus) = (loss_at(eps), loss_at(-2.0 * eps));
        loss_at(eps);
        let numeric = (plus - minus) / (2.0 * eps);
        eprintln!("{name}[{at}]: autodiff {g:.6} finite difference {numeric:.6}");
        assert!(
            (numeric - g).abs() < 0.05 * g.abs() + 2e-4,
            "{name}[{at}]: autodiff {g} vs finite difference {numeric}"
        );
    }
}

/// Activation checkpointing (blocks rerun in backward from their saved inputs) gives the
/// same loss and gradients as keeping the whole graph, with a mask and a batch of two.
#[test]
fn checkpointed_gradients_equal_the_full_graph() {
    let dir = tempdir();
    Weights::random(25).write_gguf(&dir.join("m.gguf"), GgmlType::Q4K, None);
    let model = load_for_training(&dir.join("m.gguf"));
    Lora::random(26, 2, false).write_peft(&dir.join("lora"));
    let mut adapter = LoraAdapter::load(&dir.join("lora"), &model).unwrap().trainable();
    let counted: Vec<bool> = (0..TOKENS.len()).map(|i| i % 5 != 2).collect();
    let (full_loss, full) =
        loss_and_gradients(&model, &mut adapter, &TOKENS, Some(&counted), 2, false).unwrap();
    let (loss, checkpointed) =
        loss_and_gradients(&model, &mut adapter, &TOKENS, Some(&counted), 2, true).unwrap();
    assert!((loss - full_loss).abs() < 1e-5 * full_loss, "loss {loss} vs {full_loss}");
    assert_same_gradients(&full, &checkpointed);
}

type Grads = std::collections::BTreeMap<String, adaptkit::burn::tensor::Tensor<2>>;

/// The same parameters, each with a non-zero gradient equal within 1e-4 of its largest value.
fn assert_same_gradients(want: &Grads, got: &Grads) {
    assert_eq!(want.keys().collect::<Vec<_>>(), got.keys().collect::<Vec<_>>());
    assert!(want.len() >= 4);
    for (name, g) in want {
        let a = g.clone().into_data().try_to_vec::<f32>().unwrap();
        let b = got[name].clone().into_data().try_to_vec::<f32>().unwrap();
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(scale > 0.0, "{name} has no gradient");
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-4 * scale, "{name}: {x} vs {y}");
        }
    }
}

/// LoRA dropout acts only while a seed is set, draws the same masks for the same seed, and
/// the blocks recomputed by activation checkpointing see the masks of the first pass.
#[test]
fn lora_dropout_follows_its_seed_and_survives_recomputation() {
    let dir = tempdir();
    Weights::random(27).write_gguf(&dir.join("m.gguf"), GgmlType::Q8_0, None);
    let model = load_for_training(&dir.join("m.gguf"));
    Lora::random(28, 2, false).write_peft(&dir.join("lora"));
    let config_path = dir.join("lora/adapter_config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    config["lora_dropout"] = serde_json::json!(0.3);
    std::fs::write(&config_path, config.to_string()).unwrap();
    let mut adapter = LoraAdapter::load(&dir.join("lora"), &model).unwrap().trainable();
    let loss = |adapter: &mut LoraAdapter, seed: Option<u64>| {
        adapter.set_dropout_seed(seed);
        loss_and_gradients(&model, adapter, &TOKENS, None, 1, false).unwrap()
    };
    let (plain, _) = loss(&mut adapter, None);
    let (dropped, full) = loss(&mut adapter, Some(7));
    assert_ne!(plain, dropped, "dropout changes the training loss");
    assert_eq!(loss(&mut adapter, Some(7)).0, dropped, "the same seed draws the same masks");
    assert_ne!(loss(&mut adapter, Some(8)).0, dropped);
    adapter.set_dropout_seed(Some(7));
    let (recomputed, checkpointed) =
        loss_and_gradients(&model, &mut adapter, &TOKENS, None, 1, true).unwrap();
    assert!((recomputed - dropped).abs() < 1e-5 * dropped, "{recomputed} vs {dropped}");
    assert_same_gradients(&full, &checkpointed);
}

/// PiSSA: the split base (residual + principal adapter) starts as the original model, and after
/// training, the saved adapter (converted to rank 2r) on the original base is the trained model
/// (exactly with an f32 base; within the Q8_0 residual's rounding with a Q4_0 base).
#[test]
fn pissa_starts_at_the_base_and_saves_for_the_original_base() {
    let dir = tempdir();
    for (ty, relative) in [(GgmlType::F32, 1e-5), (GgmlType::Q4_0, 2e-3)] {
        let path = dir.join(&format!("{ty}.gguf"));
        Weights::random(29).write_gguf(&path, ty, None);
        let original = load_gguf(&path);
        let base = adapted_logits(&original, &TOKENS, &NoAdapters);
        let tolerance = relative * base.iter().fold(0f32, |m, v| m.max(v.abs()));
        let mut split = load_for_training(&path);
        let config = LoraConfig::new(2, 4.0, Projection::ALL.to_vec());
        let mut adapter = LoraAdapter::new_pissa(config, &mut split, 5).unwrap().trainable();
        let started = adapted_logits(&split, &TOKENS, &adapter);
        assert!(
            max_diff(&started, &base) < tolerance,
            "{ty}: PiSSA moved the start by {}",
            max_diff(&started, &base)
        );

        let mut optimizer = AdamW::new(0.0);
        for _ in 0..3 {
            let (_, grads) = loss_and_gradients(&split, &mut adapter, &TOKENS, None, 1, false).unwrap();
            optimizer.step(&mut adapter, &grads, 1e-2);
        }
        let trained = adapted_logits(&split, &TOKENS, &adapter);
        adapter.save(&dir.join("pissa"), &split).unwrap();
        let loaded = LoraAdapter::load(&dir.join("pissa"), &original).unwrap();
        assert_eq!(loaded.config().rank, 4);
        let ported = adapted_logits(&original, &TOKENS, &loaded);
        let moved = max_diff(&trained, &base);
        assert!(moved > 10.0 * tolerance, "{ty}: training moved the logits by only {moved}");
        assert!(
            max_diff(&ported, &trained) < tolerance,
            "{ty}: saved adapter off by {}",
            max_diff(&ported, &trained)
        );
    }
    // PEFT's unconverted PiSSA adapters need their residual base: refused by name.
    let config_path = dir.join("pissa/adapter_config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    config["init_lora_weights"] = serde_json::json!("pissa_niter_4");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let model = load_gguf(&dir.join("F32.gguf"));
    let error = LoraAdapter::load(&dir.join("pissa"), &model).err().expect("refused").to_string();
    assert!(error.contains("init_lora_weights") && error.contains("residual"), "{error}");
}

#[test]
fn lora_training_memorises_a_sequence() {
    const STEPS: usize = 100;
    let dir = tempdir();
    // Unit-scale random embeddings give logits in the hundreds; a trained model's are O(1).
    let mut weights = Weights::random(22);
    weights.embed.iter_mut().for_each(|v| *v *= 0.05);
    weights.write_gguf(&dir.join("m.gguf"), GgmlType::Q8_0, None);
    let model = load_for_training(&dir.join("m.gguf"));
    let config = LoraConfig::new(8, 16.0, Projection::ALL.to_vec());
    let mut adapter = LoraAdapter::new(config, &model, 1).unwrap().trainable();
    let mut optimizer = AdamW::new(0.0);
    let first = scalar(next_token_loss(&model, &adapter, &TOKENS, 1).unwrap());
    let mut last = first;
    for _ in 0..STEPS {
        let loss = next_token_loss(&model, &adapter, &TOKENS, 1).unwrap();
        let grads = loss.backward();
        last = scalar(loss);
        let grads = collect_grads(&mut adapter, &grads);
        optimizer.step(&mut adapter, &grads, 3e-3);
    }
    eprintln!("memorising {} tokens: loss {first:.4} -> {last:.4} in {STEPS} steps", TOKENS.len());
    assert!(first > 4.0 && last < 0.15, "loss {first} -> {last}");
}

#[test]
fn accumulating_two_micro_batches_is_one_batch_of_two() {
    let dir = tempdir();
    Weights::random(23).write_gguf(&dir.join("m.gguf"), GgmlType::Q4_0, None);
    let model = load_for_training(&dir.join("m.gguf"));
    Lora::random(24, 2, false).write_peft(&dir.join("lora"));
    let load = || LoraAdapter::load(&dir.join("lora"), &model).unwrap().trainable();
    let (rows, row) = (TOKENS.to_vec(), TOKENS.len() / 2);

    let mut batched = load();
    let grads = next_token_loss(&model, &batched, &rows, 2).unwrap().backward();
    let batched = collect_grads(&mut batched, &grads);

    let mut accumulated = load();
    let mut sum: Grads = Default::default();
    for micro in rows.chunks(row) {
        let grads = next_token_loss(&model, &accumulated, micro, 1).unwrap().backward();
        for (name, g) in collect_grads(&mut accumulated, &grads) {
            let total = sum.remove(&name).map_or(g.clone(), |t| t + g);
            sum.insert(name, total);
        }
    }
    let values = |grads: &Grads, scale: f32| -> Vec<f32> {
        grads
            .values()
            .flat_map(|g| g.clone().mul_scalar(scale).into_data().try_to_vec::<f32>().unwrap())
            .collect()
    };
    let (want, got) = (values(&batched, 1.0), values(&sum, 0.5));
    let largest = want.iter().fold(0.0f32, |m, g| m.max(g.abs()));
    let diff = max_diff(&want, &got);
    assert!(
        largest > 1e-3 && diff < 1e-5 * largest.max(1.0),
        "max |gradient diff| {diff} (largest {largest})"
    );
}

#[test]
fn a_masked_loss_splits_the_full_loss_by_position() {
    let dir = tempdir();
    Weights::random(25).write_gguf(&dir.join("m.gguf"), GgmlType::Q8_0, None);
    let model = load_gguf(&dir.join("m.gguf"));
    let targets: Vec<bool> = (0..TOKENS.len()).map(|i| i % 3 == 0).collect();
    let others: Vec<bool> = targets.iter().map(|t| !t).collect();
    let count = |t: &[bool]| t[1..].iter().filter(|&&x| x).count() as f32;
    let loss =
        |t: Option<&[bool]>| scalar(masked_next_token_loss(&model, &NoAdapters, &TOKENS, t, 1).unwrap());
    let whole = loss(None) * (TOKENS.len() - 1) as f32;
    let split = loss(Some(&targets)) * count(&targets) + loss(Some(&others)) * count(&others);
    assert!((whole - split).abs() < 1e-3 * whole.abs(), "{whole} vs {split}");
    assert_eq!(loss(Some(&vec![true; TOKENS.len()])), loss(None));
    assert!(
        masked_next_token_loss(&model, &NoAdapters, &TOKENS, Some(&vec![false; TOKENS.len()]), 1).is_err()
    );
}

#[test]
fn a_resumed_run_repeats_the_uninterrupted_losses() {
    use adaptkit::control::CancelToken;
    use adaptkit::train::data::{Window, Windows};
    use adaptkit::train::{checkpoint, fit, Checkpointing, TrainOptions};

    let dir = tempdir();
    Weights::random(26).write_gguf(&dir.join("m.gguf"), GgmlType::Q4_1, None);
    let model = load_for_training(&dir.join("m.gguf"));
    let window = |shift: u32| Window {
        tokens: TOKENS.iter().map(|t| (t + shift) % VOCAB as u32).collect(),
        targets: vec![true; TOKENS.len()],
    };
    let windows =
        Windows { train: (0..5).map(window).collect(), held_out: vec![window(9)], general: Vec::new() };
    let options = TrainOptions {
        steps: 5,
        batch: 2,
        accumulate: 1,
        lr: 1e-2,
        warmup: 1,
        max_grad_norm: Some(1.0),
        weight_decay: 0.01,
        seed: 4,
        eval_every: 0,
        patience: None,
        checkpoint_activations: false,
    };
    let config = LoraConfig::new(4, 8.0, Projection::ALL.to_vec());
    let fresh = || LoraAdapter::new(config.clone(), &model, 7).unwrap().trainable();

    let mut straight = Vec::new();
    fit(&model, &mut fresh(), &windows, &options, Checkpointing::default(), &CancelToken::new(), &mut |s| {
        straight.push(s.loss)
    })
    .unwrap();

    // Interrupted after step 2, right after its checkpoint was written (as if killed there).
    let path = dir.join("checkpoint.safetensors");
    let cancel = CancelToken::new();
    let mut first = Vec::new();
    let save = Checkpointing { resume: None, save: Some((&path, 2)) };
    let interrupted = fit(&model, &mut fresh(), &windows, &options, save, &cancel, &mut |s| {
        first.push(s.loss);
        if s.step == 2 {
            cancel.cancel();
        }
    });
    assert!(matches!(interrupted, Err(adaptkit::Error::Cancelled)));

    let mut resumed = fresh();
    let state = checkpoint::load(&path, &mut resumed).unwrap();
    assert_eq!(state.step, 2);
    let mut rest = Vec::new();
    let from = Checkpointing { resume: Some(state), save: None };
    fit(&model, &mut resumed, &windows, &options, from, &CancelToken::new(), &mut |s| rest.push(s.loss))
        .unwrap();
    let joined = [first, rest].concat();
    eprintln!("straight {straight:?}\nresumed  {joined:?}");
    assert_eq!(joined.len(), straight.len());
    assert!(max_diff(&joined, &straight) < 1e-5, "straight {straight:?} vs resumed {joined:?}");
}

// ---- GPU parity (burn-wgpu; Mesa's lavapipe in CI) ----

/// The GPU for parity tests: `None` (the test is skipped, with a note) on a machine without
/// one, unless `ADAPTKIT_REQUIRE_GPU` is set, as CI does after installing lavapipe.
fn test_gpu() -> Option<Device> {
    use adaptkit::device::{ComputeDevice, DeviceChoice};
    match ComputeDevice::select(DeviceChoice::Gpu) {
        Ok(gpu) => {
            eprintln!("GPU: {}", gpu.name);
            Some(gpu.device)
        }
        Err(e) if std::env::var_os("ADAPTKIT_REQUIRE_GPU").is_none() => {
            eprintln!("skipped, no GPU: {e}");
            None
        }
        Err(e) => panic!("ADAPTKIT_REQUIRE_GPU is set, but {e}"),
    }
}

/// Logits of the whole input at once (the decoded-matrix product) and then token by token
/// through the KV cache (the in-kernel level product).
fn prefill_and_decode_logits(model: &Llama) -> Vec<f32> {
    let mut logits = all_logits(model, &TOKENS);
    let mut cache = model.new_cache(1);
    for &t in &TOKENS {
        let hidden = model.forward(&[t], 1, &mut cache).unwrap();
        logits.extend(model.logits(hidden, 0..1).unwrap());
    }
    logits
}

#[test]
fn every_block_format_runs_on_the_gpu_like_on_the_cpu() {
    let Some(gpu) = test_gpu() else { return };
    let dir = tempdir();
    let weights = Weights::random(30);
    for ty in quant::SUPPORTED_TYPES {
        let path = dir.join(&format!("{ty}.gguf"));
        weights.write_gguf(&path, ty, None);
        let gguf = GgufFile::open(&path).unwrap();
        let cpu = prefill_and_decode_logits(&Llama::from_gguf(&gguf, &Device::flex()).unwrap());
        let on_gpu = prefill_and_decode_logits(&Llama::from_gguf(&gguf, &gpu).unwrap());
        let diff = max_diff(&cpu, &on_gpu);
        let scale = cpu.iter().fold(0f32, |m, v| m.max(v.abs()));
        eprintln!("{ty}: max |logit diff| {diff:.2e} of logits up to {scale:.2}");
        assert!(diff < 1e-4 * (1.0 + scale), "{ty}: CPU vs GPU max |logit diff| {diff}");
    }
}

/// The training step on the GPU (quantized linear op and its backward, the burn-op loss) gives
/// the CPU's loss and LoRA gradients, with and without activation checkpointing.
#[test]
fn lora_training_on_the_gpu_matches_the_cpu() {
    let Some(gpu) = test_gpu() else { return };
    let dir = tempdir();
    Weights::random(31).write_gguf(&dir.join("m.gguf"), GgmlType::Q4_1, None);
    Lora::random(32, 2, false).write_peft(&dir.join("lora"));
    let gguf = GgufFile::open(dir.join("m.gguf")).unwrap();
    let counted: Vec<bool> = (0..TOKENS.len()).map(|i| i % 5 != 2).collect();
    let mut results = Vec::new();
    for device in [Device::flex().autodiff(), gpu.autodiff()] {
        let model = Llama::from_gguf(&gguf, &device).unwrap();
        let mut adapter = LoraAdapter::load(&dir.join("lora"), &model).unwrap().trainable();
        for recompute in [false, true] {
            results.push(
                loss_and_gradients(&model, &mut adapter, &TOKENS, Some(&counted), 2, recompute).unwrap(),
            );
        }
    }
    let (cpu_loss, cpu_grads) = &results[0];
    for (loss, grads) in &results[1..] {
        assert!((loss - cpu_loss).abs() < 1e-4 * cpu_loss, "loss {loss} vs CPU {cpu_loss}");
        assert_same_gradients(cpu_grads, grads);
    }
}

/// Exhausting GPU memory (a 256 GiB tensor) gives `Error::Device` naming the failure, not a
/// panic or a hang, and the device keeps working afterwards.
#[test]
fn out_of_gpu_memory_is_an_error_and_the_device_recovers() {
    use adaptkit::burn::tensor::Tensor;
    use adaptkit::device::{guard, ComputeDevice, DeviceChoice};
    if test_gpu().is_none() {
        return;
    }
    let gpu = ComputeDevice::select(DeviceChoice::Gpu).unwrap();
    let huge = guard(&gpu, || {
        let t = Tensor::<2>::ones([1 << 18, 1 << 18], &gpu.device).add_scalar(1.0);
        Ok(t.slice([0..1, 0..4]).into_data().try_to_vec::<f32>().unwrap())
    });
    match huge {
        Err(Error::Device(message)) => assert!(message.contains(&gpu.name), "{message}"),
        other => panic!("a 256 GiB tensor gave {other:?}"),
    }
    let small = guard(&gpu, || {
        Ok(Tensor::<1>::ones([4], &gpu.device).add_scalar(1.0).into_data().try_to_vec::<f32>().unwrap())
    });
    assert_eq!(small.unwrap(), vec![2.0; 4]);
}
