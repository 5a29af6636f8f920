//! Several patches made for one base, combined into one: the weighted sum of their changes, as
//! each method's [`Combine`] rule in the registry says. LoRA patches stack their ranks
//! (`Σ wᵢ sᵢ Bᵢ Aᵢ = [w₁s₁B₁ … ]·[A₁; …]`), which is exact for any ranks and targets; (IA)³
//! vectors sum their changes, `1 + Σ wᵢ (lᵢ − 1)`. Other methods do not add up into one adapter
//! of the same kind; attach them together instead (`--adapter a.akp:0.5 --adapter b.akp:0.5`).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use super::{dense_tensor, DenseType, Patch, Values};
use crate::adapt::lora::{parse_config, LAYERS};
use crate::adapt::registry::Combine;
use crate::error::Error;

/// The weighted sum of `patches` (each with its weight), as one dense patch.
pub fn combine(patches: &[(Patch, f32)], dense: DenseType) -> Result<Patch, Error> {
    let Some((first, _)) = patches.first() else {
        return Err(Error::InvalidArgument("no patches to merge".into()));
    };
    for (p, w) in patches {
        if p.base.id != first.base.id {
            return Err(Error::InvalidArgument(format!(
                "the patches were made for different base models ({} and {}); port them to one base first",
                first.base.short_id(),
                p.base.short_id()
            )));
        }
        if p.method != first.method {
            return Err(Error::InvalidArgument(format!(
                "a {} patch and a {} patch do not merge into one; attach them together with repeated --adapter",
                first.method.name(),
                p.method.name()
            )));
        }
        if !w.is_finite() {
            return Err(Error::InvalidArgument(format!("weight {w} is not finite")));
        }
    }
    let (config, values) = match first.method.spec().combine {
        Combine::StackLora => stack_lora(patches)?,
        Combine::SumChanges(init) => sum_changes(patches, init)?,
        Combine::Not => {
            return Err(Error::InvalidArgument(format!(
                "{} patches do not merge into one (LoRA and (IA)³ do); attach them together with repeated --adapter",
                first.method.name()
            )))
        }
    };
    Ok(Patch {
        method: first.method,
        config,
        base: first.base.clone(),
        scale: 1.0,
        training: Some(json!({
            "merged_from": patches.iter().map(|(p, w)| json!({"weight": w, "training": p.training, "scale": p.scale})).collect::<Vec<_>>(),
        })),
        compression: None,
        ported: None,
        tensors: values.iter().map(|v| dense_tensor(v, dense)).collect(),
        signer: None,
    })
}

/// Module name (`…q_proj`) → (A, B) of one LoRA patch.
type Pairs = BTreeMap<String, (Values, Values)>;

fn lora_pairs(patch: &Patch) -> Result<Pairs, Error> {
    let mut a = BTreeMap::new();
    let mut b = BTreeMap::new();
    for v in patch.values()? {
        if let Some(module) = v.name.strip_suffix(".lora_A.weight") {
            a.insert(module.to_string(), v);
        } else if let Some(module) = v.name.strip_suffix(".lora_B.weight") {
            b.insert(module.to_string(), v);
        }
    }
    a.into_iter()
        .map(|(module, av)| {
            let bv = b
                .remove(&module)
                .ok_or_else(|| Error::InvalidArgument(format!("'{module}' has lora_A but no lora_B")))?;
            Ok((module, (av, bv)))
        })
        .collect()
}

fn stack_lora(patches: &[(Patch, f32)]) -> Result<(Value, Vec<Values>), Error> {
    let base = &patches[0].0.base;
    let mut parts = Vec::new();
    let mut targets = BTreeSet::new();
    let mut layers = BTreeSet::new();
    for (patch, weight) in patches {
        let config = parse_config(&patch.config).map_err(Error::InvalidArgument)?;
        targets.extend(config.targets.iter().copied());
        let pairs = lora_pairs(patch)?;
        for module in pairs.keys() {
            let layer =
                module.strip_prefix(LAYERS).and_then(|rest| rest.split('.').next()?.parse::<usize>().ok());
            layers.insert(layer.ok_or_else(|| {
                Error::InvalidArgument(format!("'{module}' is not a decoder layer's module"))
            })?);
        }
        // PEFT's scaling of this adapter, times its patch scale (λ) and its merge weight.
        parts.push((pairs, config.rank, config.scale() * patch.scale * weight));
    }
    let rank: usize = parts.iter().map(|(_, r, _)| r).sum();
    let mut values = Vec::new();
    // Every target in every layer any patch adapts, as PEFT builds it from the config: zeros
    // where a patch has no pair.
    for &layer in &layers {
        for &projection in &targets {
            let module = format!("{LAYERS}{layer}.{}", projection.hf_path());
            let (out, inp) = base.projection_shape(projection);
            let mut a_all = Vec::with_capacity(rank * inp);
            let mut b_all = vec![0f32; out * rank];
            let mut col = 0;
            for (pairs, r, s) in &parts {
                match pairs.get(&module) {
                    Some((a, b)) if a.shape == [*r, inp] && b.shape == [out, *r] => {
                        a_all.extend_from_slice(&a.values);
                        for row in 0..out {
                            for j in 0..*r {
                                b_all[row * rank + col + j] = s * b.values[row * r + j];
                            }
                        }
                    }
                    Some((a, b)) => {
                        return Err(Error::InvalidArgument(format!(
                            "'{module}': shapes {:?} and {:?} do not fit the base model",
                            a.shape, b.shape
                        )))
                    }
                    None => a_all.extend(std::iter::repeat_n(0.0, r * inp)),
                }
                col += r;
            }
            values.push(Values {
                name: format!("{module}.lora_A.weight"),
                shape: vec![rank, inp],
                values: a_all,
            });
            values.push(Values {
                name: format!("{module}.lora_B.weight"),
                shape: vec![out, rank],
                values: b_all,
            });
        }
    }
    // Scaling 1 (alpha = r, no rsLoRA): the weights are already in B.
    let mut config = patches[0].0.config.clone();
    if let Some(c) = config.as_object_mut() {
        c.insert("r".into(), json!(rank));
        c.insert("lora_alpha".into(), json!(rank));
        c.insert("use_rslora".into(), json!(false));
        c.insert("lora_dropout".into(), json!(0.0));
        c.insert("target_modules".into(), json!(targets.iter().map(|p| p.hf_name()).collect::<Vec<_>>()));
        c.insert("layers_to_transform".into(), json!(layers.iter().collect::<Vec<_>>()));
        c.insert("rank_pattern".into(), json!({}));
        c.insert("alpha_pattern".into(), json!({}));
    }
    Ok((config, values))
}

/// `init + Σ wᵢ sᵢ (vᵢ − init)` of every tensor, for patches of one config.
fn sum_changes(patches: &[(Patch, f32)], init: f32) -> Result<(Value, Vec<Values>), Error> {
    let first = &patches[0].0;
    if patches.iter().any(|(p, _)| p.config != first.config) {
        return Err(Error::InvalidArgument(format!(
            "{} patches merge only with the same targets (their configs differ)",
            first.method.name()
        )));
    }
    let mut total: Vec<Values> = first.values()?;
    total.iter_mut().for_each(|v| v.values.iter_mut().for_each(|x| *x = init));
    for (patch, weight) in patches {
        let w = weight * patch.scale;
        for (t, v) in total.iter_mut().zip(patch.values()?) {
            t.values.iter_mut().zip(v.values).for_each(|(t, l)| *t += w * (l - init));
        }
    }
    Ok((first.config.clone(), total))
}
