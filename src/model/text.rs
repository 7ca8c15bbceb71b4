//! The text tower: HF `BertModel` (bert-base-cased) + `encode_proj` (spec §2.3).

use burn::prelude::*;

use super::config::EncoderConfig;
use super::embeddings::TextEmbeddings;
use super::projection::ProjectionHead;
use super::stages::{TowerStages, first_token};
use super::transformer::{Encoder, Pooler};

/// BERT text encoder; its vector is `encode_proj(sequence_output[:, 0])` — the tanh pooler is
/// computed upstream but discarded, so it is only kept here to hold its checkpoint keys.
#[derive(Module, Debug)]
pub struct TextEncoder<B: Backend> {
    pub embeddings: TextEmbeddings<B>,
    pub encoder: Encoder<B>,
    pub pooler: Pooler<B>,
    pub projection: Option<ProjectionHead<B>>,
}

impl<B: Backend> TextEncoder<B> {
    /// A randomly initialised tower; `project_dim` 0 means no projection head.
    pub fn new(cfg: &EncoderConfig, project_dim: usize, device: &B::Device) -> Self {
        Self {
            embeddings: TextEmbeddings::new(cfg, device),
            encoder: Encoder::new(cfg, device),
            pooler: Pooler::new(cfg.hidden_size, device),
            projection: (project_dim > 0)
                .then(|| ProjectionHead::new(cfg.hidden_size, project_dim, device)),
        }
    }

    /// Last-layer hidden states `[batch, seq, H]` of `input_ids` `[batch, seq]` with
    /// `attention_mask` `[batch, seq]` (1 = token, 0 = padding).
    pub fn sequence_output(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
    ) -> Tensor<B, 3> {
        self.encoder
            .forward(self.embeddings.forward(input_ids), attention_mask)
    }

    /// Caption vectors `[batch, P]` (`P` = project_dim, or H without a head).
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
    ) -> Tensor<B, 2> {
        let seq = self.sequence_output(input_ids, attention_mask);
        self.pool(seq)
    }

    /// `encode_proj(sequence_output[:, 0])`: `[batch, seq, H]` → `[batch, P]`.
    pub fn pool(&self, sequence_output: Tensor<B, 3>) -> Tensor<B, 2> {
        let first = first_token(sequence_output);
        match &self.projection {
            Some(head) => head.forward(first),
            None => first,
        }
    }

    /// Every intermediate stage, for parity checks against a PyTorch dump.
    pub fn forward_stages(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
    ) -> TowerStages<B> {
        let emb = self.embeddings.forward(input_ids);
        let layers = self.encoder.forward_all(emb.clone(), attention_mask);
        TowerStages::new(emb, layers, self.projection.as_ref())
    }
}
