//! Merging adapters into the base weights and exporting the result as a GGUF model that any
//! GGUF runtime loads without adapters.

use std::path::Path;

use crate::adapt::AdapterSet;
use crate::error::Error;
use crate::format::gguf::{GgufFile, GgufWriter};
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

/// Writes `out`: `base` with every matrix that `adapters` change replaced by `W + ΔW` in
/// `merged_type`, every other tensor and all metadata copied unchanged. Atomic (temp file,
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
    let mut merged: std::collections::HashMap<String, Vec<f32>> = std::collections::HashMap::new();
    for layer in 0..layers {
        for projection in Projection::ALL {
            if let Some(delta) = adapters.weight_delta(layer, projection)? {
                merged.insert(projection.gguf_tensor(layer), delta);
            }
        }
    }
    for info in base.tensors() {
        let data = base.tensor_data(info);
        match merged.remove(&info.name) {
            Some(delta) => {
                let (cols, rows) = (info.dims[0] as usize, info.dims.get(1).copied().unwrap_or(1) as usize);
                let mut weights = QuantMatrix::new(info.ty, rows, cols, data)?.dequantize();
                if weights.len() != delta.len() {
                    return Err(Error::TensorShape {
                        name: info.name.clone(),
                        expected: vec![rows, cols],
                        found: vec![delta.len() / cols.max(1), cols],
                    });
                }
                weights.iter_mut().zip(&delta).for_each(|(w, d)| *w += d);
                let ty = match merged_type {
                    MergedType::Same => info.ty,
                    MergedType::Fixed(ty) => ty,
                };
                writer.add_tensor(info.name.clone(), ty, &info.dims, quant::quantize(ty, &weights)?)?;
                report.tensors_merged += 1;
            }
            None => {
                writer.add_tensor(info.name.clone(), info.ty, &info.dims, data.to_vec())?;
                report.tensors_copied += 1;
            }
        }
    }
    if let Some(name) = merged.keys().next() {
        return Err(Error::MissingTensor(name.clone()));
    }
    writer.write_file(out)?;
    Ok(report)
}
