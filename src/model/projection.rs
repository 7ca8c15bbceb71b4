//! `encode_proj`: `Linear(H, 2H) → GELU(erf) → LayerNorm(2H) → Linear(2H, P)` (spec §2.4).

use burn::nn::{LayerNorm, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::gelu;

use super::transformer::layer_norm;

/// The 2-layer projection head on the token-0 state (Sequential indices 0, 2, 3 upstream).
#[derive(Module, Debug)]
pub struct ProjectionHead<B: Backend> {
    /// `encode_proj.0`.
    pub dense: Linear<B>,
    /// `encode_proj.2`.
    pub layer_norm: LayerNorm<B>,
    /// `encode_proj.3`.
    pub output: Linear<B>,
}

/// Intermediate values of the head, for parity checks (`*.proj_linear0/gelu/layernorm`).
#[derive(Debug, Clone)]
pub struct ProjectionStages<B: Backend> {
    /// `[batch, 2H]`.
    pub linear0: Tensor<B, 2>,
    /// `[batch, 2H]`.
    pub gelu: Tensor<B, 2>,
    /// `[batch, 2H]`.
    pub layernorm: Tensor<B, 2>,
    /// `[batch, P]`.
    pub output: Tensor<B, 2>,
}

impl<B: Backend> ProjectionHead<B> {
    pub fn new(hidden: usize, project_dim: usize, device: &B::Device) -> Self {
        Self {
            dense: LinearConfig::new(hidden, 2 * hidden).init(device),
            layer_norm: layer_norm(2 * hidden, device),
            output: LinearConfig::new(2 * hidden, project_dim).init(device),
        }
    }

    /// `[batch, H]` → `[batch, P]`.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.output
            .forward(self.layer_norm.forward(gelu(self.dense.forward(x))))
    }

    /// Same as [`forward`](Self::forward), keeping every stage.
    pub fn forward_stages(&self, x: Tensor<B, 2>) -> ProjectionStages<B> {
        let linear0 = self.dense.forward(x);
        let g = gelu(linear0.clone());
        let ln = self.layer_norm.forward(g.clone());
        let output = self.output.forward(ln.clone());
        ProjectionStages {
            linear0,
            gelu: g,
            layernorm: ln,
            output,
        }
    }
}
