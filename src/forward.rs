//! The parity forward pass (`lightningdot forward`, parity tests): both towers on a batch in the
//! reference collate form (fixtures/batch/inputs.safetensors), every stage named as
//! fixtures/expected/main.safetensors names it.

use burn::prelude::*;

use crate::encode::{host_floats, host_ints};

use crate::batch::{BatchError, check_shape};
use crate::model::{
    BiEncoder, BiEncoderConfig, IMG_FEAT_DIM, IMG_POS_DIM, NamedTensor, RegionBatch, dot_scores,
};
use crate::tensor_io::{HostTensor, TensorFile};

/// A bi-encoder batch on the host, validated against a model config.
#[derive(Debug, Clone)]
pub struct HostBatch {
    /// `txt.input_ids` `[B, Lt]`.
    pub txt_input_ids: HostTensor<i64>,
    /// `txt.attention_mask` `[B, Lt]`.
    pub txt_attention_mask: HostTensor<i64>,
    /// `img.img_feat` `[B, N, 2048]`.
    pub img_feat: HostTensor<f32>,
    /// `img.img_pos_feat` `[B, N, 7]`.
    pub img_pos_feat: HostTensor<f32>,
    /// `img.attention_mask` `[B, 1 + N]`.
    pub img_attention_mask: HostTensor<i64>,
}

impl HostBatch {
    /// Reads the reference collate tensors (`txt.*`, `img.*`) from a safetensors file.
    pub fn from_file(file: &TensorFile) -> Result<Self, BatchError> {
        Ok(Self {
            txt_input_ids: file.i64("txt.input_ids")?,
            txt_attention_mask: file.i64("txt.attention_mask")?,
            img_feat: file.f32("img.img_feat")?,
            img_pos_feat: file.f32("img.img_pos_feat")?,
            img_attention_mask: file.i64("img.attention_mask")?,
        })
    }

    /// Checks shapes and id ranges so that nothing out of bounds reaches the model.
    pub fn validate(&self, cfg: &BiEncoderConfig) -> Result<(), BatchError> {
        let shape = |name, found: &[usize], ok: bool, expected: String| {
            check_shape(name, found, ok, || expected)
        };
        let ids = &self.txt_input_ids.shape;
        shape("txt.input_ids", ids, ids.len() == 2, "[batch, seq]".into())?;
        let (b, l) = (ids[0], ids[1]);
        let m = &self.txt_attention_mask.shape;
        shape(
            "txt.attention_mask",
            m,
            m == &vec![b, l],
            format!("[{b}, {l}]"),
        )?;
        if l > cfg.txt.max_position_embeddings {
            return Err(BatchError::Range {
                name: "txt sequence length",
                value: l as i64,
                limit: cfg.txt.max_position_embeddings + 1,
            });
        }
        if let Some(&bad) = self
            .txt_input_ids
            .values
            .iter()
            .find(|&&v| v < 0 || v as usize >= cfg.txt.vocab_size)
        {
            return Err(BatchError::Range {
                name: "txt.input_ids",
                value: bad,
                limit: cfg.txt.vocab_size,
            });
        }
        let f = &self.img_feat.shape;
        shape(
            "img.img_feat",
            f,
            f.len() == 3 && f[2] == IMG_FEAT_DIM,
            format!("[batch, regions, {IMG_FEAT_DIM}]"),
        )?;
        let (bi, n) = (f[0], f[1]);
        let p = &self.img_pos_feat.shape;
        shape(
            "img.img_pos_feat",
            p,
            p == &vec![bi, n, IMG_POS_DIM],
            format!("[{bi}, {n}, {IMG_POS_DIM}]"),
        )?;
        let am = &self.img_attention_mask.shape;
        shape(
            "img.attention_mask",
            am,
            am == &vec![bi, n + 1],
            format!("[{bi}, {}]", n + 1),
        )?;
        Ok(())
    }
}

/// Moves the image half of a batch to the device.
pub fn region_batch<B: Backend>(batch: &HostBatch, device: &B::Device) -> RegionBatch<B> {
    RegionBatch {
        img_feat: host_floats(&batch.img_feat, device),
        img_pos_feat: host_floats(&batch.img_pos_feat, device),
        attention_mask: host_ints(&batch.img_attention_mask, device),
        img_masks: None,
    }
}

/// Runs both towers in eval mode and returns every stage under its reference name:
/// `txt.{embedding_output,layer_i,sequence_output,proj_*,pooled}`, the same for `img.` plus
/// `img.txt_embeddings` / `img.img_embeddings`, and `scores.txt_x_img`.
pub fn forward_stages<B: Backend>(
    model: &BiEncoder<B>,
    batch: &HostBatch,
    device: &B::Device,
) -> Vec<(String, HostTensor<f32>)> {
    let ids = host_ints(&batch.txt_input_ids, device);
    let mask = host_ints(&batch.txt_attention_mask, device);
    let txt = model.text.forward_stages(ids, mask);
    let regions = region_batch(batch, device);
    let (img, cls, boxes) = model.image.forward_stages(&regions);
    let scores = dot_scores(txt.pooled.clone(), img.pooled.clone());

    let mut named = txt.named("txt");
    named.extend(img.named("img"));
    named.push(("img.txt_embeddings".into(), NamedTensor::D3(cls)));
    named.push(("img.img_embeddings".into(), NamedTensor::D3(boxes)));
    named.push(("scores.txt_x_img".into(), NamedTensor::D2(scores)));
    named
        .into_iter()
        .map(|(n, t)| {
            let (shape, values) = t.to_host();
            (n, HostTensor { shape, values })
        })
        .collect()
}
