//! Named intermediate tensors of one tower, in the names of fixtures/expected/main.safetensors.

use burn::prelude::*;

use super::projection::{ProjectionHead, ProjectionStages};

/// Everything a tower computes on one batch.
#[derive(Debug, Clone)]
pub struct TowerStages<B: Backend> {
    /// `[batch, seq, H]` input of layer 0.
    pub embedding_output: Tensor<B, 3>,
    /// Each layer's output `[batch, seq, H]`; the last is `sequence_output`.
    pub layers: Vec<Tensor<B, 3>>,
    /// Projection head stages (absent when project_dim = 0).
    pub projection: Option<ProjectionStages<B>>,
    /// `[batch, P]` tower output.
    pub pooled: Tensor<B, 2>,
}

impl<B: Backend> TowerStages<B> {
    pub(crate) fn new(
        embedding_output: Tensor<B, 3>,
        layers: Vec<Tensor<B, 3>>,
        head: Option<&ProjectionHead<B>>,
    ) -> Self {
        let last = layers
            .last()
            .cloned()
            .unwrap_or_else(|| embedding_output.clone());
        let first = first_token(last);
        let projection = head.map(|h| h.forward_stages(first.clone()));
        let pooled = projection
            .as_ref()
            .map(|p| p.output.clone())
            .unwrap_or(first);
        Self {
            embedding_output,
            layers,
            projection,
            pooled,
        }
    }

    /// Last layer output `[batch, seq, H]`.
    pub fn sequence_output(&self) -> Tensor<B, 3> {
        self.layers
            .last()
            .cloned()
            .unwrap_or_else(|| self.embedding_output.clone())
    }

    /// `(name, tensor)` pairs under `prefix` (e.g. `txt`): `embedding_output`, `layer_{i}`,
    /// `sequence_output`, `proj_linear0`, `proj_gelu`, `proj_layernorm`, `pooled`.
    pub fn named(&self, prefix: &str) -> Vec<(String, NamedTensor<B>)> {
        let mut out = vec![(
            format!("{prefix}.embedding_output"),
            NamedTensor::D3(self.embedding_output.clone()),
        )];
        for (i, l) in self.layers.iter().enumerate() {
            out.push((format!("{prefix}.layer_{i}"), NamedTensor::D3(l.clone())));
        }
        out.push((
            format!("{prefix}.sequence_output"),
            NamedTensor::D3(self.sequence_output()),
        ));
        if let Some(p) = &self.projection {
            out.push((
                format!("{prefix}.proj_linear0"),
                NamedTensor::D2(p.linear0.clone()),
            ));
            out.push((
                format!("{prefix}.proj_gelu"),
                NamedTensor::D2(p.gelu.clone()),
            ));
            out.push((
                format!("{prefix}.proj_layernorm"),
                NamedTensor::D2(p.layernorm.clone()),
            ));
        }
        out.push((
            format!("{prefix}.pooled"),
            NamedTensor::D2(self.pooled.clone()),
        ));
        out
    }
}

/// A stage tensor of rank 2 or 3.
#[derive(Debug, Clone)]
pub enum NamedTensor<B: Backend> {
    D2(Tensor<B, 2>),
    D3(Tensor<B, 3>),
}

impl<B: Backend> NamedTensor<B> {
    /// Host copy: `(shape, values)`.
    pub fn to_host(&self) -> (Vec<usize>, Vec<f32>) {
        let data = match self {
            NamedTensor::D2(t) => t.to_data(),
            NamedTensor::D3(t) => t.to_data(),
        };
        let shape = data.shape.to_vec();
        let values = data.convert::<f32>().into_vec::<f32>().unwrap_or_default();
        (shape, values)
    }
}

/// `[batch, seq, H]` → `[batch, H]` at position 0.
pub(crate) fn first_token<B: Backend>(x: Tensor<B, 3>) -> Tensor<B, 2> {
    let [b, _, h] = x.dims();
    x.slice([0..b, 0..1, 0..h]).reshape([b, h])
}
