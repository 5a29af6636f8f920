//! PortLLM (Khan et al. 2024, "PortLLM: personalizing evolving large language models with
//! training-free and portable model patches"): a patch made on base `θ` attached to an updated
//! base `θ'` of the same architecture, without training: `θ' + λΔ`. Porting checks shapes and
//! vocabulary, measures how far each targeted weight moved, and re-addresses the patch to the
//! new base with its λ.

use serde::Serialize;
use serde_json::json;

use super::{Fingerprint, Patch};
use crate::error::Error;
use crate::model::{Decoder, Projection};

/// How far one weight moved between the bases: `‖W' − W‖_F / ‖W‖_F` when both bases are at
/// hand; otherwise `|‖W'‖_F − ‖W‖_F| / ‖W‖_F` from the norms the patch carries (a lower bound).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Drift {
    pub layer: usize,
    pub projection: &'static str,
    pub relative: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DriftReport {
    /// `true`: measured against the old weights; `false`: from their norms only.
    pub exact: bool,
    pub weights: Vec<Drift>,
}

impl DriftReport {
    pub fn max(&self) -> f64 {
        self.weights.iter().map(|d| d.relative).fold(0.0, f64::max)
    }

    pub fn mean(&self) -> f64 {
        self.weights.iter().map(|d| d.relative).sum::<f64>() / self.weights.len().max(1) as f64
    }
}

/// The projections a patch changes, from its tensor names (`…layers.{i}.{self_attn|mlp}.{x}_proj…`);
/// every projection when it names none (soft prompts act on all of them through the input).
pub fn targets(patch: &Patch, layers: usize) -> Vec<(usize, Projection)> {
    let mut found: Vec<(usize, Projection)> = patch
        .tensors
        .iter()
        .filter_map(|t| {
            let rest = &t.name[t.name.find("layers.")? + "layers.".len()..];
            let (layer, rest) = rest.split_once('.')?;
            let projection = Projection::ALL.into_iter().find(|p| rest.starts_with(p.hf_path()))?;
            Some((layer.parse().ok()?, projection))
        })
        .collect();
    if found.is_empty() {
        found = (0..layers).flat_map(|l| Projection::ALL.map(|p| (l, p))).collect();
    }
    found.sort_by_key(|&(l, p)| (l, p.hf_path()));
    found.dedup();
    found
}

/// Exact drift of `targets` from `old` to `new` (same shapes).
pub fn weight_drift(
    old: &Decoder,
    new: &Decoder,
    targets: &[(usize, Projection)],
) -> Result<DriftReport, Error> {
    let mut weights = Vec::with_capacity(targets.len());
    for &(layer, projection) in targets {
        let (Some(a), Some(b)) = (old.blocks().get(layer), new.blocks().get(layer)) else {
            return Err(Error::InvalidArgument(format!("layer {layer} is not in both models")));
        };
        let w = a.linear(projection).weight().dequantize();
        let w2 = b.linear(projection).weight().dequantize();
        if w.len() != w2.len() {
            return Err(Error::InvalidArgument(format!(
                "layer {layer} {}: {} weights in the old base, {} in the new",
                projection.hf_name(),
                w.len(),
                w2.len()
            )));
        }
        let norm: f64 = w.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
        let diff: f64 =
            w.iter().zip(&w2).map(|(&x, &y)| (f64::from(y) - f64::from(x)).powi(2)).sum::<f64>().sqrt();
        weights.push(Drift {
            layer,
            projection: projection.hf_name(),
            relative: diff / norm.max(f64::MIN_POSITIVE),
        });
    }
    Ok(DriftReport { exact: true, weights })
}

/// Drift of `targets` as far as the two fingerprints' norms tell.
pub fn norm_drift(old: &Fingerprint, new: &Fingerprint, targets: &[(usize, Projection)]) -> DriftReport {
    let weights = targets
        .iter()
        .filter_map(|&(layer, projection)| {
            let at = Projection::ALL.iter().position(|&p| p == projection)?;
            let (a, b) = (old.projection_norms.get(layer)?[at], new.projection_norms.get(layer)?[at]);
            Some(Drift {
                layer,
                projection: projection.hf_name(),
                relative: f64::from((b - a).abs()) / f64::from(a).max(f64::MIN_POSITIVE),
            })
        })
        .collect();
    DriftReport { exact: false, weights }
}

/// `patch` re-addressed to `new_base` at `λ·` its scale. Refuses another architecture or
/// vocabulary whatever the drift.
pub fn port(patch: &Patch, new_base: &Fingerprint, lambda: f32, drift: &DriftReport) -> Result<Patch, Error> {
    if !lambda.is_finite() {
        return Err(Error::InvalidArgument(format!("λ = {lambda} is not finite")));
    }
    patch
        .base
        .same_shapes(new_base)
        .map_err(|m| Error::InvalidArgument(format!("cannot port this patch: {m}")))?;
    let mut ported = patch.clone();
    ported.base = new_base.clone();
    ported.scale = patch.scale * lambda;
    ported.signer = None;
    ported.ported = Some(json!({
        "from": patch.base.id,
        "lambda": lambda,
        "drift_exact": drift.exact,
        "max_drift": drift.max(),
        "mean_drift": drift.mean(),
        "previous": patch.ported,
    }));
    Ok(ported)
}
