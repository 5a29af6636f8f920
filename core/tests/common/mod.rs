//! The tiny random Llama model the integration tests write themselves (GGUF in every block
//! format, and HF safetensors), a naive f64 reference forward pass written independently of
//! burn, and the LoRA adapters the tests know by their raw matrices. Each test binary uses a
//! part of it.
#![allow(dead_code)]

pub mod golden;
mod real_model;
pub use real_model::*;

use std::path::Path;

use adaptkit::adapt::Method;
use adaptkit::burn::tensor::{Device, Tensor, TensorData};
use adaptkit::format::gguf::{GgufFile, GgufWriter};
use adaptkit::format::peft::PeftDir;
use adaptkit::format::safetensors::{write_safetensors, Dtype};
use adaptkit::model::{Adapters, Decoder, Projection};
use adaptkit::quant::{self, GgmlType};
use adaptkit::train::next_token_loss;

pub const VOCAB: usize = 128;

pub const D: usize = 256; // K-quants need rows of 256 values

pub const HEADS: usize = 4;

pub const KV_HEADS: usize = 2;

pub const HEAD_DIM: usize = D / HEADS;

pub const FFN: usize = 512;

pub const LAYERS: usize = 2;

pub const CONTEXT: usize = 320; // > the decoder's prefill chunk of 256

pub const EPS: f32 = 1e-5;

pub const THETA: f32 = 10_000.0;

#[derive(Clone)]
pub struct Layer {
    pub attn_norm: Vec<f32>,
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub o: Vec<f32>,
    pub ffn_norm: Vec<f32>,
    pub gate: Vec<f32>,
    pub up: Vec<f32>,
    pub down: Vec<f32>,
}

/// Weights in GGUF layout (row-major `[out, in]`, q/k rows in RoPE-pair order).
#[derive(Clone)]
pub struct Weights {
    pub embed: Vec<f32>,
    pub layers: Vec<Layer>,
    pub output_norm: Vec<f32>,
}

pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * scale).collect()
    }
    pub fn norm(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| 1.0 + 0.2 * self.next()).collect()
    }
}

impl Weights {
    pub fn random(seed: u64) -> Self {
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
    pub fn round_tripped(&self, ty: GgmlType) -> Self {
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
    pub fn write_gguf(&self, path: &Path, ty: GgmlType, skip: Option<&str>) {
        self.write_gguf_as(Family::Llama, path, ty, skip);
    }

    /// [`write_gguf`](Self::write_gguf) as a model of `family`: for Gemma 3 with its metadata
    /// (a sliding window of [`GEMMA_WINDOW`]), q/k rows in its rotate-half order, and the norms
    /// it adds (random, from the layer's index).
    pub fn write_gguf_as(&self, family: Family, path: &Path, ty: GgmlType, skip: Option<&str>) {
        let mut w = GgufWriter::new();
        match family {
            Family::Llama => add_tiny_metadata(&mut w, None),
            Family::Gemma3 => add_tiny_gemma3_metadata(&mut w, Some(GEMMA_WINDOW), CONTEXT),
        }
        self.write_gguf_with(w, family, path, ty, skip);
    }

    /// The tensors of [`write_gguf_as`](Self::write_gguf_as) after the metadata already in `w`.
    pub fn write_gguf_with(
        &self,
        mut w: GgufWriter,
        family: Family,
        path: &Path,
        ty: GgmlType,
        skip: Option<&str>,
    ) {
        let mut add = |name: String, ty: GgmlType, dims: &[u64], values: &[f32]| {
            if skip != Some(name.as_str()) {
                w.add_tensor(name, ty, dims, quant::quantize(ty, values).unwrap()).unwrap();
            }
        };
        let gemma = family == Family::Gemma3;
        let rotary =
            |w: &[f32], heads: usize| if gemma { pairs_to_rotate_half(w, heads, D) } else { w.to_vec() };
        add("token_embd.weight".into(), ty, &[D as u64, VOCAB as u64], &self.embed);
        add("output_norm.weight".into(), GgmlType::F32, &[D as u64], &self.output_norm);
        let kv = (KV_HEADS * HEAD_DIM) as u64;
        for (i, l) in self.layers.iter().enumerate() {
            let n = |part: &str| format!("blk.{i}.{part}.weight");
            add(n("attn_norm"), GgmlType::F32, &[D as u64], &l.attn_norm);
            add(n("attn_q"), ty, &[D as u64, D as u64], &rotary(&l.q, HEADS));
            add(n("attn_k"), ty, &[D as u64, kv], &rotary(&l.k, KV_HEADS));
            add(n("attn_v"), ty, &[D as u64, kv], &l.v);
            add(n("attn_output"), ty, &[D as u64, D as u64], &l.o);
            add(n("ffn_norm"), GgmlType::F32, &[D as u64], &l.ffn_norm);
            add(n("ffn_gate"), ty, &[D as u64, FFN as u64], &l.gate);
            add(n("ffn_up"), ty, &[D as u64, FFN as u64], &l.up);
            add(n("ffn_down"), ty, &[FFN as u64, D as u64], &l.down);
            if gemma {
                let mut r = Rng(1000 + i as u64);
                add(n("post_attention_norm"), GgmlType::F32, &[D as u64], &r.norm(D));
                add(n("post_ffw_norm"), GgmlType::F32, &[D as u64], &r.norm(D));
                add(n("attn_q_norm"), GgmlType::F32, &[HEAD_DIM as u64], &r.norm(HEAD_DIM));
                add(n("attn_k_norm"), GgmlType::F32, &[HEAD_DIM as u64], &r.norm(HEAD_DIM));
            }
        }
        w.write_file(path).unwrap();
    }

    /// The whole GGUF file in `ty`, in memory.
    pub fn gguf_bytes(&self, ty: GgmlType) -> Vec<u8> {
        let dir = tempdir();
        let path = dir.join("m.gguf");
        self.write_gguf(&path, ty, None);
        std::fs::read(path).unwrap()
    }

    /// A HF checkpoint directory: config.json + model.safetensors in HF's names and q/k layout.
    pub fn write_hf(&self, dir: &Path, dtype: Dtype) {
        self.write_hf_as(Family::Llama, dir, dtype);
    }

    /// [`write_hf`](Self::write_hf) as a model of `family`: for Gemma 3 the checkpoint of the
    /// model [`write_gguf_as`](Self::write_gguf_as) writes, as transformers saves it
    /// (`gemma3_text`, norms stored as `w` for `1 + w`, its norm names).
    pub fn write_hf_as(&self, family: Family, dir: &Path, dtype: Dtype) {
        std::fs::create_dir_all(dir).unwrap();
        let gemma = family == Family::Gemma3;
        let mut config = serde_json::json!({
            "model_type": "llama", "hidden_size": D, "intermediate_size": FFN,
            "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
            "num_hidden_layers": LAYERS, "vocab_size": VOCAB, "max_position_embeddings": CONTEXT,
            "rope_theta": THETA, "rms_norm_eps": EPS, "tie_word_embeddings": true,
        });
        if gemma {
            config["model_type"] = "gemma3_text".into();
            config["head_dim"] = HEAD_DIM.into();
            config["sliding_window"] = GEMMA_WINDOW.into();
            config["layer_types"] = vec!["sliding_attention"; LAYERS].into();
            config["query_pre_attn_scalar"] = HEAD_DIM.into();
            config["rope_parameters"] = serde_json::json!({
                "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
            });
        }
        // Gemma's checkpoints store a norm's `w` where its GGUFs store `1 + w`.
        let norm = |w: &[f32]| -> Vec<f32> { w.iter().map(|v| if gemma { v - 1.0 } else { *v }).collect() };
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
        add("model.norm.weight".into(), vec![D], &norm(&self.output_norm));
        for (i, l) in self.layers.iter().enumerate() {
            let n = |part: &str| format!("model.layers.{i}.{part}.weight");
            add(n("input_layernorm"), vec![D], &norm(&l.attn_norm));
            add(n("self_attn.q_proj"), vec![D, D], &pairs_to_rotate_half(&l.q, HEADS, D));
            add(
                n("self_attn.k_proj"),
                vec![KV_HEADS * HEAD_DIM, D],
                &pairs_to_rotate_half(&l.k, KV_HEADS, D),
            );
            add(n("self_attn.v_proj"), vec![KV_HEADS * HEAD_DIM, D], &l.v);
            add(n("self_attn.o_proj"), vec![D, D], &l.o);
            add(n("mlp.gate_proj"), vec![FFN, D], &l.gate);
            add(n("mlp.up_proj"), vec![FFN, D], &l.up);
            add(n("mlp.down_proj"), vec![D, FFN], &l.down);
            if gemma {
                // The same random norms as the GGUF's, in the same (rotate-half) order.
                let mut r = Rng(1000 + i as u64);
                add(n("post_attention_layernorm"), vec![D], &norm(&r.norm(D)));
                add(n("post_feedforward_layernorm"), vec![D], &norm(&r.norm(D)));
                add(n("self_attn.q_norm"), vec![HEAD_DIM], &norm(&r.norm(HEAD_DIM)));
                add(n("self_attn.k_norm"), vec![HEAD_DIM], &norm(&r.norm(HEAD_DIM)));
                add(n("pre_feedforward_layernorm"), vec![D], &norm(&l.ffn_norm));
            } else {
                add(n("post_attention_layernorm"), vec![D], &l.ffn_norm);
            }
        }
        write_safetensors(dir.join("model.safetensors"), &tensors, &[("format", "pt")]).unwrap();
    }

    /// Naive f64 forward pass: logits of every position, `[len][vocab]`.
    pub fn reference_logits(&self, tokens: &[u32]) -> Vec<Vec<f32>> {
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
pub fn pairs_to_rotate_half(w: &[f32], heads: usize, row_len: usize) -> Vec<f32> {
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

/// The tiny model's metadata and tokenizer; `head_dim`, when given, is written as the attention
/// key and value width (otherwise it is `D / HEADS`).
pub fn add_tiny_metadata(w: &mut GgufWriter, head_dim: Option<usize>) {
    let widths = head_dim.map(|h| [("llama.attention.key_length", h), ("llama.attention.value_length", h)]);
    for (key, value) in [
        ("llama.block_count", LAYERS),
        ("llama.embedding_length", D),
        ("llama.feed_forward_length", FFN),
        ("llama.attention.head_count", HEADS),
        ("llama.attention.head_count_kv", KV_HEADS),
        ("llama.context_length", CONTEXT),
    ]
    .into_iter()
    .chain(widths.into_iter().flatten())
    {
        w.add_metadata(key, value as u32).unwrap();
    }
    w.add_metadata("general.architecture", "llama").unwrap();
    w.add_metadata("llama.rope.freq_base", THETA).unwrap();
    w.add_metadata("llama.attention.layer_norm_rms_epsilon", EPS).unwrap();
    add_tiny_tokenizer(w);
}

/// The decoder families the tiny models are written as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Llama,
    Gemma3,
}

pub const FAMILIES: [Family; 2] = [Family::Llama, Family::Gemma3];

/// The tiny Gemma's sliding window: shorter than [`TOKENS`], so that it hides keys.
pub const GEMMA_WINDOW: usize = 5;

/// The tiny model's shapes under Gemma 3's keys, with a sliding `window` (`None`: the key left
/// out) and `context`.
pub fn add_tiny_gemma3_metadata(w: &mut GgufWriter, window: Option<usize>, context: usize) {
    if let Some(window) = window {
        w.add_metadata("gemma3.attention.sliding_window", window as u32).unwrap();
    }
    for (key, value) in [
        ("gemma3.block_count", LAYERS),
        ("gemma3.embedding_length", D),
        ("gemma3.feed_forward_length", FFN),
        ("gemma3.attention.head_count", HEADS),
        ("gemma3.attention.head_count_kv", KV_HEADS),
        ("gemma3.attention.key_length", HEAD_DIM),
        ("gemma3.attention.value_length", HEAD_DIM),
        ("gemma3.context_length", context),
    ] {
        w.add_metadata(key, value as u32).unwrap();
    }
    w.add_metadata("general.architecture", "gemma3").unwrap();
    w.add_metadata("gemma3.rope.freq_base", 1_000_000.0f32).unwrap();
    w.add_metadata("gemma3.attention.layer_norm_rms_epsilon", EPS).unwrap();
    add_tiny_tokenizer(w);
}

/// A byte-level BPE of exactly [`VOCAB`] tokens for the tiny models: three special tokens, the
/// symbols of space, newline and printable ASCII, and merges of a few frequent pairs (ASCII text
/// only), with ChatML as its chat template.
pub fn add_tiny_tokenizer(w: &mut GgufWriter) {
    const SPECIAL: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
    const MERGES: [&str; 29] = [
        "Ġ t", "h e", "Ġt he", "i n", "e r", "a n", "o n", "r e", "a t", "e n", "o r", "e s", "Ġ a", "Ġ s",
        "Ġ w", "Ġ o", "Ġ b", "Ġ c", "Ġ f", "Ġ m", "Ġ p", "i s", "i t", "o u", "l e", "s t", "n d", "a r",
        "Ġ d",
    ];
    // GPT-2's byte-level alphabet keeps printable ASCII and maps space and newline to Ġ and Ċ.
    let symbols = ['Ġ', 'Ċ'].into_iter().chain((33u8..=126).map(char::from));
    let tokens: Vec<String> = SPECIAL
        .iter()
        .map(|s| s.to_string())
        .chain(symbols.map(String::from))
        .chain(MERGES.iter().map(|m| m.replace(' ', "")))
        .collect();
    assert_eq!(tokens.len(), VOCAB);
    let types: Vec<i32> = (0..VOCAB).map(|i| if i < SPECIAL.len() { 3 } else { 1 }).collect();
    w.add_metadata("tokenizer.ggml.model", "gpt2").unwrap();
    w.add_metadata("tokenizer.ggml.pre", "smollm").unwrap();
    w.add_metadata("tokenizer.ggml.tokens", tokens).unwrap();
    w.add_metadata("tokenizer.ggml.merges", MERGES.iter().map(|m| m.to_string()).collect::<Vec<_>>())
        .unwrap();
    w.add_metadata("tokenizer.ggml.token_type", types).unwrap();
    w.add_metadata("tokenizer.ggml.eos_token_id", 0u32).unwrap();
    w.add_metadata("tokenizer.ggml.add_bos_token", false).unwrap();
    w.add_metadata(
        "tokenizer.chat_template",
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
    )
    .unwrap();
}

pub const TOKENS: [u32; 12] = [1, 17, 99, 3, 3, 64, 127, 0, 42, 8, 77, 5];

pub fn all_logits(model: &Decoder, tokens: &[u32]) -> Vec<f32> {
    let mut cache = model.new_cache(1);
    let hidden = model.forward(tokens, 1, &mut cache).unwrap();
    model.logits(hidden, 0..tokens.len()).unwrap()
}

pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Writes the GGUF `base` with `set` merged into it (as loaded from `base`) to `out`.
pub fn write_merged(
    base: &Path,
    set: &adaptkit::adapt::AdapterSet,
    ty: adaptkit::adapt::merge::MergedType,
    out: &Path,
) {
    let gguf = GgufFile::open(base).unwrap();
    let model = load_gguf(base);
    let mut file = std::io::BufWriter::new(std::fs::File::create(out).unwrap());
    adaptkit::adapt::merge::export_merged(&gguf, &model, set, ty, &mut file).unwrap();
    std::io::Write::flush(&mut file).unwrap();
}

pub fn load_gguf(path: &Path) -> Decoder {
    Decoder::from_gguf(&GgufFile::open(path).unwrap(), &Device::flex()).unwrap()
}

/// A scratch directory removed when the test ends.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn join(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn tempdir() -> TempDir {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("adaptkit-tiny-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

/// A LoRA adapter as the test knows it: `A: [rank, in]`, `B: [out, rank]` in GGUF row order.
pub struct Lora {
    pub rank: usize,
    pub alpha: f32,
    pub pairs: Vec<(usize, Projection, Vec<f32>, Vec<f32>)>,
}

pub fn dims(p: Projection) -> (usize, usize) {
    match p {
        Projection::Q | Projection::O => (D, D),
        Projection::K | Projection::V => (KV_HEADS * HEAD_DIM, D),
        Projection::Gate | Projection::Up => (FFN, D),
        Projection::Down => (D, FFN),
    }
}

pub fn matrix(layer: &mut Layer, p: Projection) -> &mut Vec<f32> {
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
    pub fn random(seed: u64, rank: usize, zero_b: bool) -> Self {
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
    pub fn write_peft(&self, dir: &Path) {
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
    pub fn merge_into(&self, weights: &mut Weights, scale: f32) {
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

pub fn adapted_logits(model: &Decoder, tokens: &[u32], adapters: &dyn Adapters) -> Vec<f32> {
    let mut cache = model.new_cache(1);
    let hidden = model.forward_adapted(tokens, 1, &mut cache, adapters).unwrap();
    model.logits(hidden, 0..tokens.len()).unwrap()
}

pub fn load_for_training(path: &Path) -> Decoder {
    Decoder::from_gguf(&GgufFile::open(path).unwrap(), &Device::flex().autodiff()).unwrap()
}

pub fn scalar(t: adaptkit::burn::tensor::Tensor<1>) -> f32 {
    t.into_data().try_to_vec::<f32>().unwrap()[0]
}

pub type Grads = std::collections::BTreeMap<String, adaptkit::burn::tensor::Tensor<2>>;

/// The same parameters, each with a non-zero gradient equal within 1e-4 of its largest value.
pub fn assert_same_gradients(want: &Grads, got: &Grads) {
    assert_close_gradients(want, got, 1e-4);
}

/// The same parameters, each with a non-zero gradient equal within `tolerance` of its largest
/// value; returns the largest difference seen, as a fraction of that value.
pub fn assert_close_gradients(want: &Grads, got: &Grads, tolerance: f32) -> f32 {
    let mut worst = 0f32;
    assert_eq!(want.keys().collect::<Vec<_>>(), got.keys().collect::<Vec<_>>());
    assert!(!want.is_empty());
    for (name, g) in want {
        let a = g.clone().into_data().try_to_vec::<f32>().unwrap();
        let b = got[name].clone().into_data().try_to_vec::<f32>().unwrap();
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(scale > 0.0, "{name} has no gradient");
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= tolerance * scale, "{name}: {x} vs {y}");
            worst = worst.max((x - y).abs() / scale);
        }
    }
    worst
}

/// The GPU for parity tests: `None` (the test is skipped, with a note) on a machine without
/// one, unless `ADAPTKIT_REQUIRE_GPU` is set (not to `0`), as CI does after installing lavapipe.
pub fn test_gpu() -> Option<Device> {
    test_compute_gpu().map(|gpu| gpu.device)
}

/// [`test_gpu`] with its name and failure record.
pub fn test_compute_gpu() -> Option<adaptkit::device::ComputeDevice> {
    use adaptkit::device::{ComputeDevice, DeviceChoice};
    match ComputeDevice::select(DeviceChoice::Gpu) {
        Ok(gpu) => {
            eprintln!("GPU: {}", gpu.name);
            Some(gpu)
        }
        Err(e) if !env_flag("ADAPTKIT_REQUIRE_GPU") => {
            eprintln!("skipped, no GPU: {e}");
            None
        }
        Err(e) => panic!("ADAPTKIT_REQUIRE_GPU is set, but {e}"),
    }
}

/// Checks the autodiff gradient `g` of entry `at` of parameter `name` of `method` against the
/// central finite difference of the next-token loss with step `eps` (the parameter is restored
/// after): within 5% plus 2e-4.
pub fn assert_finite_difference(
    model: &Decoder,
    method: &mut dyn Method,
    name: &str,
    at: usize,
    g: f32,
    eps: f32,
) {
    let mut loss_at = |delta: f32| {
        for (n, param) in method.parameters_mut() {
            if n == name {
                let mut values = param.clone().into_data().try_to_vec::<f32>().unwrap();
                values[at] += delta;
                *param = Tensor::from_data(TensorData::new(values, param.dims()), model.device());
            }
        }
        scalar(next_token_loss(model, &*method, &TOKENS, 1).unwrap())
    };
    let (plus, minus) = (loss_at(eps), loss_at(-2.0 * eps));
    loss_at(eps);
    let numeric = (plus - minus) / (2.0 * eps);
    eprintln!("{} {name}[{at}]: autodiff {g:.6} finite difference {numeric:.6}", method.kind().name());
    assert!(
        (numeric - g).abs() < 0.05 * g.abs() + 2e-4,
        "{} {name}[{at}]: autodiff {g} vs finite difference {numeric}",
        method.kind().name()
    );
}
