//! The post-LN BERT layer stack shared by both towers (spec §10).
//!
//! Every `Linear` is fed a 2-D `[rows, features]` tensor: burn's CPU backends are several times
//! slower on 3-D inputs (../shared/burn-notes.md).

use burn::nn::{Dropout, DropoutConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::{gelu, softmax};

use super::config::{EncoderConfig, LAYER_NORM_EPS};

/// Additive attention bias for padded keys (`(1 - mask) * -10000`, not `-inf`, so that fully
/// padded rows stay finite exactly as in the reference).
pub const MASK_BIAS: f32 = -10000.0;

pub(crate) fn layer_norm<B: Backend>(size: usize, device: &B::Device) -> LayerNorm<B> {
    LayerNormConfig::new(size)
        .with_epsilon(LAYER_NORM_EPS)
        .init(device)
}

/// Applies a `Linear` to `[batch, seq, in]` through a 2-D view.
pub(crate) fn linear3<B: Backend>(layer: &Linear<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    let [b, s, d] = x.dims();
    let y = layer.forward(x.reshape([b * s, d]));
    let out = y.dims()[1];
    y.reshape([b, s, out])
}

/// Multi-head self-attention with its output projection and residual LayerNorm
/// (`BertAttention` = `BertSelfAttention` + `BertSelfOutput`).
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub query: Linear<B>,
    pub key: Linear<B>,
    pub value: Linear<B>,
    /// `attention.output.dense`.
    pub output: Linear<B>,
    /// `attention.output.LayerNorm`.
    pub output_norm: LayerNorm<B>,
    attn_dropout: Dropout,
    hidden_dropout: Dropout,
    num_heads: usize,
}

impl<B: Backend> Attention<B> {
    fn new(cfg: &EncoderConfig, device: &B::Device) -> Self {
        let h = cfg.hidden_size;
        Self {
            query: LinearConfig::new(h, h).init(device),
            key: LinearConfig::new(h, h).init(device),
            value: LinearConfig::new(h, h).init(device),
            output: LinearConfig::new(h, h).init(device),
            output_norm: layer_norm(h, device),
            attn_dropout: DropoutConfig::new(cfg.attention_probs_dropout_prob).init(),
            hidden_dropout: DropoutConfig::new(cfg.hidden_dropout_prob).init(),
            num_heads: cfg.num_attention_heads,
        }
    }

    /// `x`: `[batch * seq, H]` rows; `mask_bias`: `[batch, 1, 1, seq]`. Returns `[batch * seq, H]`.
    fn forward(
        &self,
        x: Tensor<B, 2>,
        batch: usize,
        seq: usize,
        mask_bias: Tensor<B, 4>,
    ) -> Tensor<B, 2> {
        let [_, hidden] = x.dims();
        let heads = self.num_heads;
        let dh = hidden / heads;
        let split = |t: Tensor<B, 2>| t.reshape([batch, seq, heads, dh]).swap_dims(1, 2);
        let q = split(self.query.forward(x.clone()));
        let k = split(self.key.forward(x.clone()));
        let v = split(self.value.forward(x.clone()));
        let scores = q.matmul(k.transpose()).div_scalar((dh as f64).sqrt()) + mask_bias;
        let probs = self.attn_dropout.forward(softmax(scores, 3));
        let context = probs
            .matmul(v)
            .swap_dims(1, 2)
            .reshape([batch * seq, hidden]);
        let out = self.hidden_dropout.forward(self.output.forward(context));
        self.output_norm.forward(out + x)
    }
}

/// One post-LN Transformer layer (`BertLayer`).
#[derive(Module, Debug)]
pub struct Layer<B: Backend> {
    pub attention: Attention<B>,
    /// `intermediate.dense` (H → FFN).
    pub intermediate: Linear<B>,
    /// `output.dense` (FFN → H).
    pub output: Linear<B>,
    /// `output.LayerNorm`.
    pub output_norm: LayerNorm<B>,
    dropout: Dropout,
}

impl<B: Backend> Layer<B> {
    fn new(cfg: &EncoderConfig, device: &B::Device) -> Self {
        Self {
            attention: Attention::new(cfg, device),
            intermediate: LinearConfig::new(cfg.hidden_size, cfg.intermediate_size).init(device),
            output: LinearConfig::new(cfg.intermediate_size, cfg.hidden_size).init(device),
            output_norm: layer_norm(cfg.hidden_size, device),
            dropout: DropoutConfig::new(cfg.hidden_dropout_prob).init(),
        }
    }

    fn forward(
        &self,
        x: Tensor<B, 2>,
        batch: usize,
        seq: usize,
        mask_bias: Tensor<B, 4>,
    ) -> Tensor<B, 2> {
        let a = self.attention.forward(x, batch, seq, mask_bias);
        let h = self
            .output
            .forward(gelu(self.intermediate.forward(a.clone())));
        self.output_norm.forward(self.dropout.forward(h) + a)
    }
}

/// The layer stack (`BertEncoder` / UNITER's `UniterEncoder`).
#[derive(Module, Debug)]
pub struct Encoder<B: Backend> {
    pub layers: Vec<Layer<B>>,
}

impl<B: Backend> Encoder<B> {
    pub fn new(cfg: &EncoderConfig, device: &B::Device) -> Self {
        Self {
            layers: (0..cfg.num_hidden_layers)
                .map(|_| Layer::new(cfg, device))
                .collect(),
        }
    }

    /// `x`: `[batch, seq, H]`, `attention_mask`: `[batch, seq]` of 1 (attend) / 0 (padding).
    /// Returns every layer's output, each `[batch, seq, H]` (the last one is `sequence_output`).
    pub fn forward_all(
        &self,
        x: Tensor<B, 3>,
        attention_mask: Tensor<B, 2, Int>,
    ) -> Vec<Tensor<B, 3>> {
        let [batch, seq, hidden] = x.dims();
        let bias = mask_bias(attention_mask);
        let mut h = x.reshape([batch * seq, hidden]);
        let mut outs = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            h = layer.forward(h, batch, seq, bias.clone());
            outs.push(h.clone().reshape([batch, seq, hidden]));
        }
        outs
    }

    /// Like [`forward_all`](Self::forward_all) but returns only the last layer `[batch, seq, H]`.
    pub fn forward(&self, x: Tensor<B, 3>, attention_mask: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [batch, seq, hidden] = x.dims();
        let bias = mask_bias(attention_mask);
        let mut h = x.reshape([batch * seq, hidden]);
        for layer in &self.layers {
            h = layer.forward(h, batch, seq, bias.clone());
        }
        h.reshape([batch, seq, hidden])
    }
}

/// `[batch, seq]` 1/0 mask → `[batch, 1, 1, seq]` additive bias.
fn mask_bias<B: Backend>(mask: Tensor<B, 2, Int>) -> Tensor<B, 4> {
    let [batch, seq] = mask.dims();
    let m = mask.float();
    (m.neg() + 1.0)
        .mul_scalar(MASK_BIAS)
        .reshape([batch, 1, 1, seq])
}

/// `BertPooler` (dense + tanh on token 0). Kept so that every checkpoint key has a home; the
/// bi-encoder never calls it (spec §2.2), the UNITER re-ranker does.
#[derive(Module, Debug)]
pub struct Pooler<B: Backend> {
    pub dense: Linear<B>,
}

impl<B: Backend> Pooler<B> {
    pub fn new(hidden: usize, device: &B::Device) -> Self {
        Self {
            dense: LinearConfig::new(hidden, hidden).init(device),
        }
    }

    /// `first_token`: `[batch, H]` → `[batch, H]`.
    pub fn forward(&self, first_token: Tensor<B, 2>) -> Tensor<B, 2> {
        self.dense.forward(first_token).tanh()
    }
}
