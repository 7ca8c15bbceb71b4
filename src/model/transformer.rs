//! The post-LN BERT layer stack shared by both towers (spec §10).
//!
//! Every `Linear` is fed a 2-D `[rows, features]` tensor: burn's CPU backends are several times
//! slower on 3-D inputs (../shared/burn-notes.md).
//!
//! Two inference-only shortcuts, both exact up to rounding (the parity tests check them):
//! - [`Encoder::fuse_qkv`] concatenates each layer's query/key/value weights into one
//!   `[H, 3H]` GEMM at load time. The three `Linear`s stay the parameters (checkpoint keys,
//!   records, conversion and export are unchanged); the fused copy is not a parameter, is not
//!   saved, and is built only on backends without autodiff, where nothing updates the weights.
//! - Without autodiff, attention is burn's `attention` op with a bool padding mask (fused
//!   flash kernels on CUDA, a fused kernel on CPU). The reference's additive `-10000` and the
//!   op's `-inf` give the same probabilities: `exp(-10000)` is 0 in f32 for every row that has a
//!   real token, and every sequence has one (`[CLS]`). Training keeps the decomposed form, whose
//!   gradients the fixtures check, with the softmax in f32 when the model runs in bf16.

use burn::nn::{Dropout, DropoutConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::{gelu, softmax};
use burn::tensor::module::{attention, linear};
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{DType, FloatDType};

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
    /// `[H, 3H]` weight and `[3H]` bias of query|key|value, built by [`Encoder::fuse_qkv`] on
    /// inference backends; not a parameter (never saved, never updated).
    #[module(skip)]
    qkv_weight: Option<Tensor<B, 2>>,
    #[module(skip)]
    qkv_bias: Option<Tensor<B, 1>>,
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
            qkv_weight: None,
            qkv_bias: None,
        }
    }

    /// Builds the fused query|key|value projection from the current weights.
    fn fuse_qkv(mut self) -> Self {
        let parts = [&self.query, &self.key, &self.value];
        self.qkv_weight = Some(Tensor::cat(
            parts.iter().map(|l| l.weight.val()).collect(),
            1,
        ));
        self.qkv_bias = parts
            .iter()
            .map(|l| l.bias.as_ref().map(|b| b.val()))
            .collect::<Option<Vec<_>>>()
            .map(|b| Tensor::cat(b, 0));
        self
    }

    /// `x`: `[batch * seq, H]` rows. Returns `[batch * seq, H]`.
    fn forward(
        &self,
        x: Tensor<B, 2>,
        batch: usize,
        seq: usize,
        mask: &AttentionMask<B>,
    ) -> Tensor<B, 2> {
        let [_, hidden] = x.dims();
        let heads = self.num_heads;
        let dh = hidden / heads;
        let split = |t: Tensor<B, 2>| t.reshape([batch, seq, heads, dh]).swap_dims(1, 2);
        let (q, k, v) = match &self.qkv_weight {
            Some(w) => {
                let qkv = linear(x.clone(), w.clone(), self.qkv_bias.clone());
                (
                    split(qkv.clone().narrow(1, 0, hidden)),
                    split(qkv.clone().narrow(1, hidden, hidden)),
                    split(qkv.narrow(1, 2 * hidden, hidden)),
                )
            }
            None => (
                split(self.query.forward(x.clone())),
                split(self.key.forward(x.clone())),
                split(self.value.forward(x.clone())),
            ),
        };
        let context = match mask {
            AttentionMask::Padding(m) => attention(
                q,
                k,
                v,
                Some(m.clone().expand([batch, heads, seq, seq])),
                None,
                AttentionModuleOptions::default(),
            ),
            AttentionMask::Bias(bias) => {
                let scores = q.matmul(k.transpose()).div_scalar((dh as f64).sqrt());
                let probs = self
                    .attn_dropout
                    .forward(masked_softmax_f32(scores, bias.clone()));
                probs.matmul(v)
            }
        };
        let context = context.swap_dims(1, 2).reshape([batch * seq, hidden]);
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
        mask: &AttentionMask<B>,
    ) -> Tensor<B, 2> {
        let a = self.attention.forward(x, batch, seq, mask);
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

    /// Builds every layer's fused query|key|value projection (see the module doc). Call it once
    /// the weights are final; on a backend with autodiff (training) it changes nothing, so a
    /// trained model never carries a stale copy.
    pub fn fuse_qkv(mut self) -> Self {
        if let Some(device) = self.layers.first().map(|l| l.output.weight.device())
            && !B::ad_enabled(&device)
        {
            self.layers = self
                .layers
                .into_iter()
                .map(|mut l| {
                    l.attention = l.attention.fuse_qkv();
                    l
                })
                .collect();
        }
        self
    }

    /// `x`: `[batch, seq, H]`, `attention_mask`: `[batch, seq]` of 1 (attend) / 0 (padding).
    /// Returns every layer's output, each `[batch, seq, H]` (the last one is `sequence_output`).
    pub fn forward_all(
        &self,
        x: Tensor<B, 3>,
        attention_mask: Tensor<B, 2, Int>,
    ) -> Vec<Tensor<B, 3>> {
        let [batch, seq, hidden] = x.dims();
        let mask = AttentionMask::new(attention_mask);
        let mut h = x.reshape([batch * seq, hidden]);
        let mut outs = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            h = layer.forward(h, batch, seq, &mask);
            outs.push(h.clone().reshape([batch, seq, hidden]));
        }
        outs
    }

    /// Like [`forward_all`](Self::forward_all) but returns only the last layer `[batch, seq, H]`.
    pub fn forward(&self, x: Tensor<B, 3>, attention_mask: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [batch, seq, hidden] = x.dims();
        let mask = AttentionMask::new(attention_mask);
        let mut h = x.reshape([batch * seq, hidden]);
        for layer in &self.layers {
            h = layer.forward(h, batch, seq, &mask);
        }
        h.reshape([batch, seq, hidden])
    }
}

/// The padding mask in the form the attention path needs.
enum AttentionMask<B: Backend> {
    /// `[batch, 1, 1, seq]`, true = padding: burn's attention op (no autodiff).
    Padding(Tensor<B, 4, Bool>),
    /// `[batch, 1, 1, seq]` additive bias `(1 - mask) * -10000`: the decomposed form (training).
    Bias(Tensor<B, 4>),
}

impl<B: Backend> AttentionMask<B> {
    /// From a `[batch, seq]` 1/0 mask.
    fn new(mask: Tensor<B, 2, Int>) -> Self {
        let [batch, seq] = mask.dims();
        if B::ad_enabled(&mask.device()) {
            let m = mask.float();
            Self::Bias(
                (m.neg() + 1.0)
                    .mul_scalar(MASK_BIAS)
                    .reshape([batch, 1, 1, seq]),
            )
        } else {
            Self::Padding(mask.equal_elem(0).reshape([batch, 1, 1, seq]))
        }
    }
}

/// `softmax(scores + bias)` over the last dimension, computed in f32 whatever the scores' float
/// type (in bf16 the `-10000` bias and the exponentials' sum would be rounded coarsely), returned
/// in the scores' type.
fn masked_softmax_f32<B: Backend>(scores: Tensor<B, 4>, bias: Tensor<B, 4>) -> Tensor<B, 4> {
    let dtype = scores.dtype();
    let bias = bias.cast(FloatDType::F32);
    if dtype == DType::F32 {
        softmax(scores + bias, 3)
    } else {
        softmax(scores.cast(FloatDType::F32) + bias, 3).cast(FloatDType::from(dtype))
    }
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
