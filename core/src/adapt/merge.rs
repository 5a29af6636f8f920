//! Merging adapters into the base weights and exporting the result as a GGUF model that any
//! GGUF runtime loads without adapters. The file is streamed: its header is written first, then
//! one tensor at a time (merged, or copied from the base), so the merged model never has to fit
//! in memory next to the base.

use std::collections::HashMap;

use crate::adapt::AdapterSet;
use crate::error::Error;
use crate::format::gguf::{GgufFile, GgufStream, GgufWriter, TensorInfo};
use crate::model::rope::{permute_rotary_rows, permute_rotary_values, RowOrder};
use crate::model::{Decoder, DecoderConfig, Projection, RotaryRows};
use crate::quant::{self, GgmlType, QuantMatrix};

/// What block format merged matrices are written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MergedType {
    /// The base tensor's own format (requantized: small, but rounds the change like the base).
    Same,
    /// One format for every merged matrix (e.g. F16 keeps the change almost exactly).
    Fixed(GgmlType),
}

impl core::str::FromStr for MergedType {
    type Err = Error;

    /// `same`, or the name of a block format this build writes (`F16`, `Q8_0`, …), any case.
    fn from_str(name: &str) -> Result<Self, Error> {
        if name.eq_ignore_ascii_case("same") {
            return Ok(Self::Same);
        }
        let upper = name.to_ascii_uppercase();
        quant::SUPPORTED_TYPES.iter().find(|ty| ty.name() == upper).map(|&ty| Self::Fixed(ty)).ok_or_else(
            || {
                let names: Vec<&str> = quant::SUPPORTED_TYPES.iter().map(|t| t.name()).collect();
                Error::option(
                    "type",
                    name,
                    format!("not a block format we can write (same, {})", names.join(", ")),
                )
            },
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MergeReport {
    pub tensors_merged: usize,
    pub tensors_copied: usize,
}

/// Writes into `out` the GGUF `base` (the file `model` was loaded from; checked) with every
/// matrix that `adapters` change replaced by the merged one, every other tensor and all
/// metadata copied unchanged, and the output biases the adapters add (LoFiT) added or summed
/// into the base's. A single adapter that changes the quantized blocks themselves (PEQA)
/// writes its blocks as they are when `merged_type` is `Same`; otherwise merged matrices are
/// `W'` (dense) in `merged_type`. Soft prompts do not merge and are refused.
pub fn export_merged(
    base: &GgufFile,
    model: &Decoder,
    adapters: &AdapterSet,
    merged_type: MergedType,
    out: &mut (dyn std::io::Write + Send),
) -> Result<MergeReport, Error> {
    adapters.check_mergeable()?;
    let config = model.config();
    if DecoderConfig::from_gguf(base)? != *config {
        return Err(Error::InvalidArgument(
            "this GGUF is not the model the adapters were loaded for (its configuration differs)".into(),
        ));
    }
    let sites: HashMap<String, (usize, Projection)> = (0..config.n_layers)
        .flat_map(|layer| Projection::ALL.map(|p| (p.gguf_tensor(layer), (layer, p))))
        .collect();
    let biases: HashMap<String, (usize, Projection)> = (0..config.n_layers)
        .flat_map(|layer| Projection::ALL.map(|p| (p.gguf_bias(layer), (layer, p))))
        .filter(|(_, (layer, p))| adapters.adds_bias(*layer, *p))
        .collect();

    // The header: every tensor in the base's order, merged ones in their new type, then the
    // biases the base lacks.
    let mut metadata = GgufWriter::new();
    for (key, value) in base.metadata() {
        metadata.add_metadata(key.clone(), value.clone())?;
    }
    let mut stream = GgufStream::new(&metadata);
    let mut plan: Vec<Tensor> = Vec::new();
    for info in base.tensors() {
        let tensor = match (sites.get(&info.name), biases.get(&info.name)) {
            (Some(&(layer, p)), _) if adapters.changes_weight(layer, p) => {
                let expected = config.projection_shape(p);
                let dims = [expected.1 as u64, expected.0 as u64];
                if info.dims != dims {
                    return Err(Error::TensorShape {
                        name: info.name.clone(),
                        expected: vec![expected.1, expected.0],
                        found: info.dims.iter().map(|&d| d as usize).collect(),
                    });
                }
                let ty = match merged_type {
                    MergedType::Same => info.ty,
                    MergedType::Fixed(ty) => ty,
                };
                stream.declare(info.name.clone(), ty, &info.dims)?;
                Tensor::Weight { info, layer, projection: p, ty }
            }
            (_, Some(&(layer, p))) => {
                stream.declare(info.name.clone(), GgmlType::F32, &info.dims)?;
                Tensor::Bias { layer, projection: p, base: Some(info) }
            }
            _ => {
                stream.declare(info.name.clone(), info.ty, &info.dims)?;
                Tensor::Copied(info)
            }
        };
        plan.push(tensor);
    }
    let mut added: Vec<(&String, &(usize, Projection))> =
        biases.iter().filter(|(name, _)| base.tensor(name).is_none()).collect();
    added.sort();
    for (name, &(layer, p)) in added {
        stream.declare(name.clone(), GgmlType::F32, &[config.projection_shape(p).0 as u64])?;
        plan.push(Tensor::Bias { layer, projection: p, base: None });
    }

    let mut merger = Merger { base, config, adapters, merged_type, pending: HashMap::new() };
    let mut report = MergeReport { tensors_merged: 0, tensors_copied: 0 };
    // `plan[i]` is the `i`-th tensor declared.
    stream.write(out, |i| -> Result<Vec<u8>, Error> {
        match &plan[i] {
            Tensor::Copied(info) => {
                report.tensors_copied += 1;
                Ok(base.tensor_data(info).to_vec())
            }
            Tensor::Weight { info, layer, projection, ty } => {
                report.tensors_merged += 1;
                merger.weight(info, *layer, *projection, *ty)
            }
            Tensor::Bias { layer, projection, base: own, .. } => {
                report.tensors_merged += 1;
                merger.bias(*layer, *projection, *own)
            }
        }
    })?;
    Ok(report)
}

/// One tensor of the merged file and where its bytes come from.
enum Tensor<'a> {
    Copied(&'a TensorInfo),
    Weight {
        info: &'a TensorInfo,
        layer: usize,
        projection: Projection,
        ty: GgmlType,
    },
    /// An output bias the adapters add; `base`: the base's own, which they add to.
    Bias {
        layer: usize,
        projection: Projection,
        base: Option<&'a TensorInfo>,
    },
}

/// Merges projections on demand. A projection's merged weight and the bias computed from it
/// are made together; whichever the file lists first makes both, and the other is kept until
/// its turn (one matrix at most).
struct Merger<'a> {
    base: &'a GgufFile,
    config: &'a DecoderConfig,
    adapters: &'a AdapterSet,
    merged_type: MergedType,
    pending: HashMap<(usize, Projection), Merged>,
}

#[derive(Default)]
struct Merged {
    weight: Option<Vec<u8>>,
    bias: Option<Vec<f32>>,
}

impl Merger<'_> {
    fn weight(
        &mut self,
        info: &TensorInfo,
        layer: usize,
        projection: Projection,
        ty: GgmlType,
    ) -> Result<Vec<u8>, Error> {
        if let Some(weight) = self.pending.get_mut(&(layer, projection)).and_then(|m| m.weight.take()) {
            return Ok(weight);
        }
        let merged = self.merge(info, layer, projection, ty)?;
        if merged.bias.is_some() {
            self.pending.insert((layer, projection), Merged { weight: None, bias: merged.bias });
        }
        merged.weight.ok_or_else(|| {
            Error::InvalidArgument(format!("the adapters said they change '{}' and then did not", info.name))
        })
    }

    fn bias(
        &mut self,
        layer: usize,
        projection: Projection,
        own: Option<&TensorInfo>,
    ) -> Result<Vec<u8>, Error> {
        let added = match self.pending.get_mut(&(layer, projection)).and_then(|m| m.bias.take()) {
            Some(bias) => bias,
            None => {
                let name = projection.gguf_tensor(layer);
                let info = self.base.tensor(&name).ok_or_else(|| Error::MissingTensor(name.clone()))?;
                let ty = match self.merged_type {
                    MergedType::Same => info.ty,
                    MergedType::Fixed(ty) => ty,
                };
                let mut merged = self.merge(info, layer, projection, ty)?;
                let bias = merged.bias.take();
                if merged.weight.is_some() {
                    self.pending.insert((layer, projection), merged);
                }
                bias.ok_or_else(|| Error::InvalidArgument(format!("no adapter adds a bias to '{name}'")))?
            }
        };
        let mut bias = vec![0.0; added.len()];
        if let Some(info) = own {
            quant::dequantize(info.ty, &self.base.tensor_data(info), &mut bias)?;
        }
        bias.iter_mut().zip(added).for_each(|(b, a)| *b += a);
        Ok(bias.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    /// The merged weight of one projection (`None` when the adapters leave it), in `ty`, and
    /// the bias the adapters add to it.
    fn merge(
        &self,
        info: &TensorInfo,
        layer: usize,
        projection: Projection,
        ty: GgmlType,
    ) -> Result<Merged, Error> {
        let data = self.base.tensor_data(info);
        let (cols, rows) = (info.dims[0] as usize, info.dims.get(1).copied().unwrap_or(1) as usize);
        // The adapters work in the decoder's row order; a rotate-half file's q/k rows are
        // permuted into it and back.
        let rotated_heads = match (self.config.parts.rotary_rows, projection) {
            (RotaryRows::Halves, Projection::Q) => Some(self.config.n_heads),
            (RotaryRows::Halves, Projection::K) => Some(self.config.n_kv_heads),
            _ => None,
        };
        let head_dim = self.config.head_dim;
        if self.merged_type == MergedType::Same {
            if let Some(mut blocks) = self.adapters.merge_blocks(layer, projection)? {
                if blocks.len() != data.len() {
                    return Err(Error::InvalidArgument(format!(
                        "tensor '{}' of this GGUF is not the one the adapter was trained on",
                        info.name
                    )));
                }
                if let Some(heads) = rotated_heads {
                    blocks = permute_rotary_rows(
                        &blocks,
                        heads,
                        head_dim,
                        blocks.len() / rows,
                        RowOrder::ToRotateHalf,
                    );
                }
                return Ok(Merged { weight: Some(blocks), bias: None });
            }
        }
        let mut weights = QuantMatrix::new(info.ty, rows, cols, data)?.dequantize();
        if let Some(heads) = rotated_heads {
            weights = permute_rotary_values(&weights, heads, head_dim, cols, RowOrder::ToPairs);
        }
        let changed = self.adapters.merge_weight(layer, projection, &mut weights)?;
        if changed && weights.iter().any(|w| !w.is_finite()) {
            return Err(Error::NonFiniteOutput { what: format!("the merged tensor '{}'", info.name) });
        }
        let mut bias = self.adapters.merge_bias(layer, projection, &weights)?;
        if let Some(heads) = rotated_heads {
            weights = permute_rotary_values(&weights, heads, head_dim, cols, RowOrder::ToRotateHalf);
            bias = bias.map(|b| permute_rotary_values(&b, heads, head_dim, 1, RowOrder::ToRotateHalf));
        }
        let weight = if changed { Some(quant::quantize(ty, &weights)?) } else { None };
        Ok(Merged { weight, bias })
    }
}
