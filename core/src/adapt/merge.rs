//! Merging adapters into the base weights and exporting the result as a GGUF model that any
//! GGUF runtime loads without adapters.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use crate::adapt::AdapterSet;
use crate::bytes::SharedBytes;
use crate::error::Error;
use crate::format::gguf::{GgufFile, GgufWriter, TensorInfo};
use crate::model::Projection;
use crate::quant::{self, GgmlType, QuantMatrix};

/// What block format merged matrices are written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MergedType {
    /// The base tensor's own format (requantized: small, but rounds the change like the base).
    Same,
    /// One format for every merged matrix (e.g. F16 keeps the change almost exactly).
    Fixed(GgmlType),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergeReport {
    pub tensors_merged: usize,
    pub tensors_copied: usize,
}

/// Writes `out`: `base` with every matrix that `adapters` change replaced by the merged one,
/// every other tensor and all metadata copied unchanged. A single adapter that changes the
/// quantized blocks themselves (PEQA) writes its blocks as they are when `merged_type` is
/// `Same`; otherwise merged matrices are `W'` (dense) in `merged_type`. Atomic (temp file,
/// fsync, rename).
pub fn export_merged(
    base: &GgufFile,
    adapters: &AdapterSet,
    merged_type: MergedType,
    out: &Path,
) -> Result<MergeReport, Error> {
    let mut writer = GgufWriter::new();
    for (key, value) in base.metadata() {
        writer.add_metadata(key.clone(), value.clone())?;
    }
    let mut report = MergeReport { tensors_merged: 0, tensors_copied: 0 };
    let layers = base.tensors().iter().filter(|t| t.name.ends_with(".attn_norm.weight")).count();
    let sites: HashMap<String, (usize, Projection)> =
        (0..layers).flat_map(|layer| Projection::ALL.map(|p| (p.gguf_tensor(layer), (layer, p)))).collect();
    // Output biases the adapters add (LoFiT), by tensor name, until written.
    let mut biases: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    for info in base.tensors() {
        let data = base.tensor_data(info);
        let merged = match sites.get(&info.name) {
            Some(&(layer, projection)) => {
                let (merged, bias) = merged_tensor(info, &data, layer, projection, adapters, merged_type)?;
                if let Some(bias) = bias {
                    biases.insert(projection.gguf_bias(layer), bias);
                }
                merged
            }
            // The base's own bias, with the adapters' added.
            None => biases
                .remove(&info.name)
                .map(|added| -> Result<_, Error> {
                    let mut bias = vec![0.0; added.len()];
                    quant::dequantize(info.ty, &data, &mut bias)?;
                    bias.iter_mut().zip(added).for_each(|(b, a)| *b += a);
                    Ok((GgmlType::F32, f32_bytes(&bias)))
                })
                .transpose()?,
        };
        match merged {
            Some((ty, bytes)) => {
                writer.add_tensor(info.name.clone(), ty, &info.dims, bytes)?;
                report.tensors_merged += 1;
            }
            None => {
                writer.add_tensor(info.name.clone(), info.ty, &info.dims, data.to_vec())?;
                report.tensors_copied += 1;
            }
        }
    }
    for (name, bias) in biases {
        writer.add_tensor(name, GgmlType::F32, &[bias.len() as u64], f32_bytes(&bias))?;
        report.tensors_merged += 1;
    }
    writer.write_file(out)?;
    Ok(report)
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// A tensor as written: its type and bytes.
type Encoded = (GgmlType, Vec<u8>);

/// The merged form of one projection's tensor, `None` when no adapter changes it, and the
/// output bias the adapters add to it.
fn merged_tensor(
    info: &TensorInfo,
    data: &SharedBytes,
    layer: usize,
    projection: Projection,
    adapters: &AdapterSet,
    merged_type: MergedType,
) -> Result<(Option<Encoded>, Option<Vec<f32>>), Error> {
    if merged_type == MergedType::Same {
        if let Some(blocks) = adapters.merge_blocks(layer, projection)? {
            if blocks.len() != data.len() {
                return Err(Error::InvalidArgument(format!(
                    "tensor '{}' of this GGUF is not the one the adapter was trained on",
                    info.name
                )));
            }
            return Ok((Some((info.ty, blocks)), None));
        }
    }
    let (cols, rows) = (info.dims[0] as usize, info.dims.get(1).copied().unwrap_or(1) as usize);
    let mut weights = QuantMatrix::new(info.ty, rows, cols, data.clone())?.dequantize();
    let changed = adapters.merge_weight(layer, projection, &mut weights)?;
    let bias = adapters.merge_bias(layer, projection, &weights)?;
    if !changed {
        return Ok((None, bias));
    }
    let ty = match merged_type {
        MergedType::Same => info.ty,
        MergedType::Fixed(ty) => ty,
    };
    Ok((Some((ty, quant::quantize(ty, &weights)?)), bias))
}
