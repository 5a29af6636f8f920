//! Federated aggregation on the real model, in process: devices continue the same shared LoRA
//! on their own shard of the bundled journal, and the aggregation rules combine their adapters.
//! Averaging the true weight changes (FedAvg of `B·A`, re-factored to the rank) must beat
//! averaging `A` and `B` apart (FedIt): in the weight change itself, and in the held-out
//! perplexity of every shard.

#[path = "common/real_model.rs"]
mod shared_model;

use adaptkit::federated::{aggregate, Contribution, Rule};
use adaptkit::patch::{DenseType, Patch, Values};
use adaptkit::runtime::{
    Adapter, AdapterSource, CancelToken, LoadOptions, MemoryStore, MethodOptions, Model, OpenOptions,
    TrainConfig, TrainingData,
};

const JOURNAL: &str = include_str!("../../data/sample/journal.txt");
const DEVICES: usize = 4;
const SEQ: usize = 64;

/// The journal's entries cut into `DEVICES` consecutive shards (different months: non-IID),
/// each split into training text and its last entries held out.
fn shards() -> Vec<(String, String)> {
    let entries: Vec<&str> = JOURNAL.split("\n\n").filter(|e| !e.trim().is_empty()).collect();
    let per = entries.len() / DEVICES;
    (0..DEVICES)
        .map(|d| {
            let shard = &entries[d * per..(d + 1) * per];
            let held = (shard.len() / 6).max(1);
            (shard[..shard.len() - held].join("\n\n"), shard[shard.len() - held..].join("\n\n"))
        })
        .collect()
}

fn perplexity(model: &Model, adapter: Option<&Adapter>, text: &str) -> f64 {
    let id = adapter.map(|a| model.attach(a, 1.0).unwrap());
    let report = model.perplexity(text, SEQ, &CancelToken::new(), &mut |_, _| {}).unwrap();
    if let Some(id) = id {
        model.detach(id).unwrap();
    }
    report.perplexity
}

/// The adapter with these tensors (its config and base from `like`), loaded for `model`.
fn adapter_of(model: &Model, like: &Patch, tensors: &[Values]) -> Adapter {
    let patch = Patch::new(like.config.clone(), tensors, like.base.clone(), DenseType::F32, None).unwrap();
    let source = AdapterSource::Patch { bytes: patch.to_bytes(None), label: "aggregate".into() };
    model.load_adapter(source, &LoadOptions::default()).unwrap()
}

/// One round: every device continues `start` on its shard; the adapters' tensors.
fn round(model: &Model, start: &Adapter, shards: &[(String, String)], steps: usize) -> Vec<Vec<Values>> {
    let config = TrainConfig {
        method: start.method(),
        steps,
        batch: 2,
        seq: SEQ,
        // Large enough steps that the devices' A drift apart, as they do over a federated
        // task's many local steps.
        lr: Some(1e-2),
        eval_every: 0,
        checkpoint_every: 0,
        ..TrainConfig::default()
    };
    let base = model.fingerprint().unwrap();
    shards
        .iter()
        .enumerate()
        .map(|(d, (train, held))| {
            let data =
                TrainingData::of_texts(&format!("shard {d}"), train.clone(), false, Some(held.clone()), None);
            let trained = model
                .train_from(
                    start,
                    &data,
                    &TrainConfig { seed: d as u64, ..config.clone() },
                    &MemoryStore::new(),
                    &CancelToken::new(),
                    &mut |_| {},
                )
                .unwrap();
            trained.adapter.to_patch(base.clone(), DenseType::F32).unwrap().values().unwrap()
        })
        .collect()
}

#[test]
fn fedavg_of_the_deltas_beats_averaging_a_and_b_apart_on_the_real_model() {
    let Some(path) = shared_model::real_model() else { return };
    let model =
        Model::open_path(&path, &OpenOptions { trainable: true, threads: 2, ..Default::default() }).unwrap();
    let shards = shards();
    let held_out: String = shards.iter().map(|(_, h)| h.as_str()).collect::<Vec<_>>().join("\n\n");
    let new = |freeze_a| {
        let options = MethodOptions { rank: Some(8), freeze_a, ..Default::default() };
        model.new_adapter(&TrainConfig { options, seed: 1, ..TrainConfig::default() }).unwrap()
    };
    let base_ppl = perplexity(&model, None, &held_out);

    let start = new(None);
    let start_patch = start.to_patch(model.fingerprint().unwrap(), DenseType::F32).unwrap();
    let global = start_patch.values().unwrap();
    let adapters = round(&model, &start, &shards, 10);
    let contributions: Vec<Contribution> =
        adapters.iter().map(|t| Contribution { tensors: t.clone(), weight: 1.0 }).collect();
    let ppl = |rule: Rule| {
        let (tensors, _) = aggregate(rule, &global, &contributions).unwrap();
        perplexity(&model, Some(&adapter_of(&model, &start_patch, &tensors)), &held_out)
    };
    let (fedavg, fedit) = (ppl(Rule::FedAvg), ppl(Rule::FedIt));
    // The weight change itself, at a few sites: how far each rule is from the exact mean of
    // s·B_i·A_i (the same s everywhere, left out).
    let sites = ["layers.0.self_attn.q_proj", "layers.15.mlp.down_proj", "layers.29.self_attn.v_proj"];
    let change_error = |rule: Rule| {
        let (tensors, _) = aggregate(rule, &global, &contributions).unwrap();
        let mut worst = 0f64;
        for site in sites {
            let exact = mean_product(adapters.iter().map(|t| t.as_slice()), site);
            let got = mean_product(std::iter::once(tensors.as_slice()), site);
            let norm = exact.iter().map(|x| x * x).sum::<f64>().sqrt();
            let err = exact.iter().zip(&got).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt();
            worst = worst.max(err / norm);
        }
        worst
    };
    let (fedavg_error, fedit_error) = (change_error(Rule::FedAvg), change_error(Rule::FedIt));

    eprintln!(
        "{DEVICES} devices on non-IID shards, held-out perplexity: base {base_ppl:.2}, FedAvg of B·A {fedavg:.3}, FedIt (A, B apart) {fedit:.3}; error of the weight change vs the exact mean: FedAvg {:.1}%, FedIt {:.1}%",
        100.0 * fedavg_error,
        100.0 * fedit_error
    );
    assert!(fedavg < base_ppl, "the shared adapter improves on the base: {fedavg} vs {base_ppl}");
    // FedAvg's error is the truncation to rank r, the least any rank-r adapter can have
    // (Eckart-Young); FedIt adds its bias on top.
    assert!(
        fedit_error > fedavg_error * 1.1,
        "FedIt's weight change is further from the mean: {fedit_error} vs {fedavg_error}"
    );
    assert!(
        fedit > fedavg * 1.01,
        "averaging A and B apart is measurably worse: FedIt {fedit} vs FedAvg {fedavg}"
    );
}

/// The mean over `adapters` of `B·A` at `site` (dense, f64).
fn mean_product<'a>(adapters: impl Iterator<Item = &'a [Values]>, site: &str) -> Vec<f64> {
    let mut sum: Vec<f64> = Vec::new();
    let mut count = 0.0;
    for tensors in adapters {
        let find =
            |w: &str| tensors.iter().find(|v| v.name.ends_with(&format!("{site}.lora_{w}.weight"))).unwrap();
        let (a, b) = (find("A"), find("B"));
        let (rank, inputs, outputs) = (a.shape[0], a.shape[1], b.shape[0]);
        sum.resize(outputs * inputs, 0.0);
        for o in 0..outputs {
            for r in 0..rank {
                let bv = f64::from(b.values[o * rank + r]);
                for i in 0..inputs {
                    sum[o * inputs + i] += bv * f64::from(a.values[r * inputs + i]);
                }
            }
        }
        count += 1.0;
    }
    sum.iter().map(|x| x / count).collect()
}
