//! The retrieval model: two towers scored by dot product (spec §2.1, §2.5).

use burn::prelude::*;

use super::config::BiEncoderConfig;
use super::image::{ImageEncoder, RegionBatch};
use super::text::TextEncoder;

/// LightningDOT bi-encoder (`BiEncoder`): `img_model` (UNITER) and `txt_model` (BERT), no weight
/// sharing; scores are plain dot products (no normalisation, no temperature).
#[derive(Module, Debug)]
pub struct BiEncoder<B: Backend> {
    /// `img_model`.
    pub image: ImageEncoder<B>,
    /// `txt_model`.
    pub text: TextEncoder<B>,
}

impl<B: Backend> BiEncoder<B> {
    /// A randomly initialised model of the given sizes.
    pub fn new(cfg: &BiEncoderConfig, device: &B::Device) -> Self {
        Self {
            image: ImageEncoder::new(&cfg.img, cfg.project_dim, device),
            text: TextEncoder::new(&cfg.txt, cfg.project_dim, device),
        }
    }

    /// Both towers with fused query/key/value projections for inference
    /// ([`Encoder::fuse_qkv`](super::Encoder::fuse_qkv); unchanged on autodiff backends).
    pub fn fuse_qkv(mut self) -> Self {
        self.image.encoder = self.image.encoder.fuse_qkv();
        self.text.encoder = self.text.encoder.fuse_qkv();
        self
    }

    /// Caption vectors `[batch, P]`.
    pub fn encode_text(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
    ) -> Tensor<B, 2> {
        self.text.forward(input_ids, attention_mask)
    }

    /// Image vectors `[batch, P]`.
    pub fn encode_image(&self, regions: &RegionBatch<B>) -> Tensor<B, 2> {
        self.image.forward(regions)
    }
}

/// `q · cᵀ`: `[n1, P] × [n2, P]` → `[n1, n2]` (`dot_product_scores`).
pub fn dot_scores<B: Backend>(queries: Tensor<B, 2>, candidates: Tensor<B, 2>) -> Tensor<B, 2> {
    queries.matmul(candidates.transpose())
}
