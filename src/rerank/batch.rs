//! Cross-encoder batches on the host, as UNITER's `itm_eval_collate` / `itm_rank_collate` build
//! them (fixtures README, uniter_itm "Model semantics"), and their checks before they reach the
//! model.

use burn::prelude::*;

use crate::encode::{host_floats, host_ints};

use crate::batch::{BatchError, check_shape};
use crate::data::RegionFeatures;
use crate::data::img_db::{IMG_FEAT_DIM, IMG_POS_DIM};
use crate::model::{EncoderConfig, ItmInput};
use crate::tensor_io::{HostTensor, TensorFile};

/// One cross-encoder batch, row-major host arrays under the names of
/// uniter_itm/batch/*.safetensors.
#[derive(Debug, Clone, PartialEq)]
pub struct ItmHostBatch {
    /// `input_ids` `[B, max_tl]`: `[CLS] w… [SEP]`, right-padded with 0.
    pub input_ids: HostTensor<i64>,
    /// `img_feat` `[B, max_nbb, 2048]`, zero rows after each image's `num_bb`.
    pub img_feat: HostTensor<f32>,
    /// `img_pos_feat` `[B, max_nbb, 7]`.
    pub img_pos_feat: HostTensor<f32>,
    /// `attn_masks` `[B, out]`: 1 for the first `tl_i + nbb_i` positions, 0 after.
    pub attn_masks: HostTensor<i64>,
    /// `gather_index` `[B, out]` (UNITER `get_gather_index`).
    pub gather_index: HostTensor<i64>,
}

impl ItmHostBatch {
    /// Pairs `(caption ids with [CLS]/[SEP], regions)` → one batch. Row `i` of the compacted
    /// sequence is its `tl_i` tokens, then its `nbb_i` regions, then filler that is masked out:
    /// `gather_index[i] = arange(out)` with `[tl_i, tl_i + nbb_i)` replaced by
    /// `max_tl .. max_tl + nbb_i`, `out = max_i(tl_i + nbb_i)`.
    pub fn collate(pairs: &[(&[u32], &RegionFeatures)]) -> Result<Self, BatchError> {
        if pairs.is_empty() {
            return Err(BatchError::Invalid("empty cross-encoder batch".into()));
        }
        for (i, (_, img)) in pairs.iter().enumerate() {
            if img.features.len() != img.num_bb * IMG_FEAT_DIM
                || img.boxes.len() != img.num_bb * IMG_POS_DIM
            {
                return Err(BatchError::Invalid(format!(
                    "pair {i}: image has num_bb {} but {} feature and {} box values",
                    img.num_bb,
                    img.features.len(),
                    img.boxes.len()
                )));
            }
        }
        let b = pairs.len();
        let max_tl = pairs.iter().map(|(t, _)| t.len()).max().unwrap_or(0);
        let max_nbb = pairs.iter().map(|(_, r)| r.num_bb).max().unwrap_or(0);
        let out = pairs
            .iter()
            .map(|(t, r)| t.len() + r.num_bb)
            .max()
            .unwrap_or(0);
        let mut input_ids = vec![0i64; b * max_tl];
        let mut img_feat = vec![0f32; b * max_nbb * IMG_FEAT_DIM];
        let mut img_pos_feat = vec![0f32; b * max_nbb * IMG_POS_DIM];
        let mut attn_masks = vec![0i64; b * out];
        let mut gather_index = vec![0i64; b * out];
        for (i, (text, img)) in pairs.iter().enumerate() {
            let tl = text.len();
            for (j, &id) in text.iter().enumerate() {
                input_ids[i * max_tl + j] = i64::from(id);
            }
            let f = i * max_nbb * IMG_FEAT_DIM;
            img_feat[f..f + img.features.len()].copy_from_slice(&img.features);
            let p = i * max_nbb * IMG_POS_DIM;
            img_pos_feat[p..p + img.boxes.len()].copy_from_slice(&img.boxes);
            let row = i * out;
            attn_masks[row..row + tl + img.num_bb].fill(1);
            for j in 0..out {
                gather_index[row + j] = if (tl..tl + img.num_bb).contains(&j) {
                    (max_tl + j - tl) as i64
                } else {
                    j as i64
                };
            }
        }
        Ok(Self {
            input_ids: HostTensor {
                shape: vec![b, max_tl],
                values: input_ids,
            },
            img_feat: HostTensor {
                shape: vec![b, max_nbb, IMG_FEAT_DIM],
                values: img_feat,
            },
            img_pos_feat: HostTensor {
                shape: vec![b, max_nbb, IMG_POS_DIM],
                values: img_pos_feat,
            },
            attn_masks: HostTensor {
                shape: vec![b, out],
                values: attn_masks,
            },
            gather_index: HostTensor {
                shape: vec![b, out],
                values: gather_index,
            },
        })
    }

    /// Reads a batch in the reference form. `position_ids`, when present, must be
    /// `arange(max_tl)` (the only form UNITER's collates produce).
    pub fn from_file(file: &TensorFile) -> Result<Self, BatchError> {
        let batch = Self {
            input_ids: file.i64("input_ids")?,
            img_feat: file.f32("img_feat")?,
            img_pos_feat: file.f32("img_pos_feat")?,
            attn_masks: file.i64("attn_masks")?,
            gather_index: file.i64("gather_index")?,
        };
        if file.contains("position_ids") {
            let pos = file.i64("position_ids")?;
            let tl = batch.input_ids.shape.get(1).copied().unwrap_or(0);
            let is_arange = |row: &[i64]| row.iter().enumerate().all(|(j, &v)| v == j as i64);
            if pos.shape.len() != 2
                || pos.shape[1] != tl
                || !pos.values.chunks(tl.max(1)).all(is_arange)
            {
                return Err(BatchError::Invalid(format!(
                    "position_ids {:?} must be arange({tl}) per row (the only form UNITER's collates produce)",
                    pos.shape
                )));
            }
        }
        Ok(batch)
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.input_ids.shape.first().copied().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks shapes and index ranges so that nothing out of bounds reaches the model.
    pub fn validate(&self, cfg: &EncoderConfig) -> Result<(), BatchError> {
        let shape = |name, found: &[usize], ok: bool, expected: String| {
            check_shape(name, found, ok, || expected)
        };
        let ids = &self.input_ids.shape;
        shape(
            "input_ids",
            ids,
            ids.len() == 2 && ids[0] > 0,
            "[batch > 0, max_tl]".into(),
        )?;
        let (b, tl) = (ids[0], ids[1]);
        if tl > cfg.max_position_embeddings {
            return Err(BatchError::Range {
                name: "text length",
                value: tl as i64,
                limit: cfg.max_position_embeddings + 1,
            });
        }
        if let Some(&bad) = self
            .input_ids
            .values
            .iter()
            .find(|&&v| v < 0 || v as usize >= cfg.vocab_size)
        {
            return Err(BatchError::Range {
                name: "input_ids",
                value: bad,
                limit: cfg.vocab_size,
            });
        }
        let f = &self.img_feat.shape;
        shape(
            "img_feat",
            f,
            f.len() == 3 && f[0] == b && f[2] == IMG_FEAT_DIM,
            format!("[{b}, max_nbb, {IMG_FEAT_DIM}]"),
        )?;
        let nbb = f[1];
        let p = &self.img_pos_feat.shape;
        shape(
            "img_pos_feat",
            p,
            p == &vec![b, nbb, IMG_POS_DIM],
            format!("[{b}, {nbb}, {IMG_POS_DIM}]"),
        )?;
        let m = &self.attn_masks.shape;
        shape(
            "attn_masks",
            m,
            m.len() == 2 && m[0] == b && m[1] > 0,
            format!("[{b}, out]"),
        )?;
        let out = m[1];
        let g = &self.gather_index.shape;
        shape("gather_index", g, g == m, format!("[{b}, {out}]"))?;
        if let Some(&bad) = self
            .gather_index
            .values
            .iter()
            .find(|&&v| v < 0 || v as usize >= tl + nbb)
        {
            return Err(BatchError::Range {
                name: "gather_index",
                value: bad,
                limit: tl + nbb,
            });
        }
        Ok(())
    }

    /// Device tensors (call [`validate`](Self::validate) first).
    pub fn to_device<B: Backend>(&self, device: &B::Device) -> ItmInput<B> {
        ItmInput {
            input_ids: host_ints(&self.input_ids, device),
            img_feat: host_floats(&self.img_feat, device),
            img_pos_feat: host_floats(&self.img_pos_feat, device),
            attention_mask: host_ints(&self.attn_masks, device),
            gather_index: host_ints(&self.gather_index, device),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regions(n: usize) -> RegionFeatures {
        RegionFeatures {
            features: vec![0.5; n * IMG_FEAT_DIM],
            boxes: vec![0.1; n * IMG_POS_DIM],
            num_bb: n,
        }
    }

    #[test]
    fn gather_index_compacts_rows_like_uniter() {
        let (a, b) = (regions(3), regions(2));
        let batch =
            ItmHostBatch::collate(&[(&[101, 5, 102][..], &a), (&[101, 102][..], &b)]).unwrap();
        assert_eq!(batch.attn_masks.shape, vec![2, 6]);
        // Row 1: 2 tokens, then its 2 boxes (at max_tl = 3 ..), then filler keeping index j.
        assert_eq!(&batch.gather_index.values[6..], &[0, 1, 3, 4, 4, 5]);
        assert_eq!(&batch.gather_index.values[..6], &[0, 1, 2, 3, 4, 5]);
        assert_eq!(&batch.attn_masks.values[6..], &[1, 1, 1, 1, 0, 0]);
        assert_eq!(&batch.input_ids.values, &[101, 5, 102, 101, 102, 0]);
    }
}
