//! The image tower: UNITER run on one `[CLS]` text token plus the image regions (spec §2.2).

use burn::prelude::*;

use super::config::{EncoderConfig, IMAGE_CLS_TOKEN_ID};
use super::embeddings::{ImageEmbeddings, TextEmbeddings};
use super::projection::ProjectionHead;
use super::stages::TowerStages;
use super::stages::first_token;
use super::transformer::{Encoder, Pooler};

/// A batch of regions as the reference collate builds it (zero-padded to the longest image).
#[derive(Debug, Clone)]
pub struct RegionBatch<B: Backend> {
    /// `[batch, n, 2048]` region features, zero rows after each image's `num_bb`.
    pub img_feat: Tensor<B, 3>,
    /// `[batch, n, 7]` boxes `[x1, y1, x2, y2, w, h, w*h]`, zero rows after `num_bb`.
    pub img_pos_feat: Tensor<B, 3>,
    /// `[batch, 1 + n]`: 1 for the `[CLS]` slot and real regions, 0 for padding.
    pub attention_mask: Tensor<B, 2, Int>,
    /// `[batch, n]` 1 = masked region (pre-training MRM only; `None` for retrieval).
    pub img_masks: Option<Tensor<B, 2, Int>>,
}

/// UNITER image encoder. The image vector is `encode_proj(sequence_output[:, 0])`, where slot 0
/// holds the UNITER *text* embedding of `[CLS]` (id 101, position 0, type 0).
#[derive(Module, Debug)]
pub struct ImageEncoder<B: Backend> {
    /// UNITER text embeddings; retrieval only reads row 101, VMLM's tied decoder reads all rows.
    pub embeddings: TextEmbeddings<B>,
    pub img_embeddings: ImageEmbeddings<B>,
    pub encoder: Encoder<B>,
    pub pooler: Pooler<B>,
    pub projection: Option<ProjectionHead<B>>,
}

impl<B: Backend> ImageEncoder<B> {
    /// A randomly initialised tower; `project_dim` 0 means no projection head.
    pub fn new(cfg: &EncoderConfig, project_dim: usize, device: &B::Device) -> Self {
        Self {
            embeddings: TextEmbeddings::new(cfg, device),
            img_embeddings: ImageEmbeddings::new(cfg, device),
            encoder: Encoder::new(cfg, device),
            pooler: Pooler::new(cfg.hidden_size, device),
            projection: (project_dim > 0)
                .then(|| ProjectionHead::new(cfg.hidden_size, project_dim, device)),
        }
    }

    /// `[batch, 1, H]` embedding of the image-side `[CLS]` and `[batch, n, H]` region embeddings.
    pub fn embed(&self, regions: &RegionBatch<B>) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let [batch, _, _] = regions.img_feat.dims();
        let device = regions.img_feat.device();
        let cls_ids = Tensor::<B, 2, Int>::full([batch, 1], IMAGE_CLS_TOKEN_ID, &device);
        let cls = self.embeddings.forward(cls_ids);
        let type_row = self
            .embeddings
            .token_type_embeddings
            .weight
            .val()
            .narrow(0, 1, 1);
        let boxes = self.img_embeddings.forward(
            regions.img_feat.clone(),
            regions.img_pos_feat.clone(),
            type_row,
            regions.img_masks.clone(),
        );
        (cls, boxes)
    }

    /// Last-layer hidden states `[batch, 1 + n, H]`. The reference's `gather_index` is the
    /// identity for this layout (spec §2.2 step 3), so the two parts are simply concatenated.
    pub fn sequence_output(&self, regions: &RegionBatch<B>) -> Tensor<B, 3> {
        let (cls, boxes) = self.embed(regions);
        let x = Tensor::cat(vec![cls, boxes], 1);
        self.encoder.forward(x, regions.attention_mask.clone())
    }

    /// Image vectors `[batch, P]`.
    pub fn forward(&self, regions: &RegionBatch<B>) -> Tensor<B, 2> {
        self.pool(self.sequence_output(regions))
    }

    /// `encode_proj(sequence_output[:, 0])`: `[batch, 1 + n, H]` → `[batch, P]`.
    pub fn pool(&self, sequence_output: Tensor<B, 3>) -> Tensor<B, 2> {
        let first = first_token(sequence_output);
        match &self.projection {
            Some(head) => head.forward(first),
            None => first,
        }
    }

    /// Every intermediate stage, for parity checks; also returns the `[CLS]` (`[batch, 1, H]`)
    /// and region (`[batch, n, H]`) embeddings.
    pub fn forward_stages(
        &self,
        regions: &RegionBatch<B>,
    ) -> (TowerStages<B>, Tensor<B, 3>, Tensor<B, 3>) {
        let (cls, boxes) = self.embed(regions);
        let emb = Tensor::cat(vec![cls.clone(), boxes.clone()], 1);
        let layers = self
            .encoder
            .forward_all(emb.clone(), regions.attention_mask.clone());
        (
            TowerStages::new(emb, layers, self.projection.as_ref()),
            cls,
            boxes,
        )
    }
}
