//! Adaptation methods. Each implements the model's [`Adapters`] trait for the sites it uses;
//! the model never imports this module (see `shared/design.md`).

pub mod lora;

pub use lora::{LoraAdapter, LoraConfig};

use burn::tensor::Tensor;

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
}

impl Adapters for AdapterSet {
    fn linear_delta(&self, layer: usize, projection: Projection, x: &Tensor<3>) -> Option<Tensor<3>> {
        self.members
            .iter()
            .filter_map(|(adapter, scale)| Some(adapter.delta(layer, projection, x)?.mul_scalar(*scale)))
            .reduce(|a, b| a + b)
    }
}
