//! Host-side batches as `dvl.data.itm.itm_fast_collate` builds them (spec §4.4, fixtures
//! README "Tensors").
//!
//! Only the tensors that carry information are materialised; the others are implicit:
//! text `position_ids` = `arange(len)` as one row, image-side `input_ids` = `[[101]]` per row
//! (hard-coded [CLS], not read from meta.json), image `position_ids` = `[[0]]`, and
//! `gather_index` = `arange(1 + max_regions)` in every row (an identity gather).

use super::DataError;
use super::img_db::{IMG_FEAT_DIM, IMG_POS_DIM, RegionFeatures};

/// Right-padded caption ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextBatch {
    /// `[batch, len]` token ids (`[CLS] … [SEP]`), padded with 0 (`[PAD]`).
    pub input_ids: Vec<i64>,
    /// `[batch, len]`: 1 for real tokens, 0 for padding.
    pub attention_mask: Vec<i64>,
    pub batch: usize,
    /// Longest sequence of the batch.
    pub len: usize,
}

/// Zero-padded region features; slot 0 of the attention mask is the image-side [CLS] token.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageBatch {
    /// `[batch, max_regions, IMG_FEAT_DIM]`, zero rows after each image's `num_bb`.
    pub img_feat: Vec<f32>,
    /// `[batch, max_regions, IMG_POS_DIM]`, zero rows after each image's `num_bb`.
    pub img_pos_feat: Vec<f32>,
    /// `[batch, 1 + max_regions]`: 1 for [CLS] and the first `num_bb` regions, 0 after.
    pub attention_mask: Vec<i64>,
    pub batch: usize,
    /// Largest `num_bb` of the batch.
    pub max_regions: usize,
    /// `num_bb` of every row.
    pub num_bbs: Vec<usize>,
}

/// Pads token id sequences (already wrapped in [CLS]/[SEP]) into a [`TextBatch`].
pub fn collate_texts<T: AsRef<[u32]>>(texts: &[T]) -> TextBatch {
    let batch = texts.len();
    let len = texts.iter().map(|t| t.as_ref().len()).max().unwrap_or(0);
    let mut input_ids = vec![0i64; batch * len];
    let mut attention_mask = vec![0i64; batch * len];
    for (i, text) in texts.iter().enumerate() {
        let row = i * len;
        for (j, &id) in text.as_ref().iter().enumerate() {
            input_ids[row + j] = i64::from(id);
            attention_mask[row + j] = 1;
        }
    }
    TextBatch {
        input_ids,
        attention_mask,
        batch,
        len,
    }
}

/// Pads the boxes of several images into an [`ImageBatch`]. Fails when a [`RegionFeatures`]'s
/// vectors do not match its `num_bb`.
pub fn collate_images(images: &[&RegionFeatures]) -> Result<ImageBatch, DataError> {
    for (i, img) in images.iter().enumerate() {
        if img.features.len() != img.num_bb * IMG_FEAT_DIM
            || img.boxes.len() != img.num_bb * IMG_POS_DIM
        {
            return Err(DataError::Batch(format!(
                "image {i} has num_bb {} but {} feature and {} position values \
                 (expected {} and {})",
                img.num_bb,
                img.features.len(),
                img.boxes.len(),
                img.num_bb * IMG_FEAT_DIM,
                img.num_bb * IMG_POS_DIM
            )));
        }
    }
    let batch = images.len();
    let max_regions = images.iter().map(|img| img.num_bb).max().unwrap_or(0);
    let mut img_feat = vec![0f32; batch * max_regions * IMG_FEAT_DIM];
    let mut img_pos_feat = vec![0f32; batch * max_regions * IMG_POS_DIM];
    let mut attention_mask = vec![0i64; batch * (1 + max_regions)];
    for (i, img) in images.iter().enumerate() {
        let feat_row = i * max_regions * IMG_FEAT_DIM;
        img_feat[feat_row..feat_row + img.features.len()].copy_from_slice(&img.features);
        let pos_row = i * max_regions * IMG_POS_DIM;
        img_pos_feat[pos_row..pos_row + img.boxes.len()].copy_from_slice(&img.boxes);
        let mask_row = i * (1 + max_regions);
        attention_mask[mask_row..mask_row + 1 + img.num_bb].fill(1);
    }
    Ok(ImageBatch {
        img_feat,
        img_pos_feat,
        attention_mask,
        batch,
        max_regions,
        num_bbs: images.iter().map(|img| img.num_bb).collect(),
    })
}
