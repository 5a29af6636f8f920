//! Adaptation methods. Each implements the model's [`Adapters`] trait for the sites it uses;
//! the model never imports this module (see `shared/design.md`).

pub mod lora;
pub mod merge;
pub mod pissa;

pub use lora::{LoraAdapter, LoraConfig, LoraInit};

use burn::tensor::Tensor;

use crate::error::Error;
use crate::model::{Adapters, Projection};

/// Several adapters acting at once, each with its own scale. Switching adapters means building
/// another set; the model is never reloaded.
#[derive(Default)]
pub struct AdapterSet {
    members: Vec<(LoraAdapter, f32)>,
}

impl AdapterSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, adapter: LoraAdapter, scale: f32) {
        self.members.push((adapter, scale));
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The summed, scaled weight change of one projection (`[out, in]`), if any member adapts it.
    pub fn weight_delta(&self, layer: usize, projection: Projection) -> Result<Option<Vec<f32>>, Error> {
        let mut total: Option<Vec<f32>> = None;
        for (adapter, scale) in &self.members {
            if let Some(delta) = adapter.weight_delta(layer, projection)? {
                let total = total.get_or_insert_with(|| vec![0.0; delta.len()]);
                total.iter_mut().zip(delta).for_each(|(t, d)| *t += scale * d);
            }
        }
        Ok(total)
    }
}

impl Adapters for AdapterSet {
    fn linear_delta(&self, layer: usize, projection: Projection, x: &Tensor<3>) -> Option<Tensor<3>> {
        self.members
            .iter()
            .filter_map(|(adapter, scale)| Some(adapter.delta(layer, projection, x)?.mul_scalar(*scale)))
            .reduce(|a, b| a + b)
    }
}
