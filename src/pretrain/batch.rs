//! A pre-training batch on the host in the reference collate form (fixtures
//! pretrain/batch/*.safetensors: `txts.*`, `imgs.*`, `txt_labels`, `img_mask_tgt`,
//! `feat_targets`, `label_targets`), validated against a model, and moved to the device.

use burn::prelude::*;

use crate::batch::{BatchError, check_shape};
use crate::encode::{floats, ints};
use crate::model::{
    BiEncoderConfig, IMG_FEAT_DIM, IMG_POS_DIM, PretrainInput, PretrainTask, REGION_CLASSES,
    RegionBatch,
};
use crate::tensor_io::{HostTensor, TensorFile};

/// One task's batch; `S` = predictions (masked tokens or regions).
#[derive(Debug, Clone)]
pub struct PretrainHostBatch {
    pub task: PretrainTask,
    /// `txts.input_ids` `[B, L]` (masked for MLM).
    pub input_ids: HostTensor<i64>,
    /// `txts.attention_mask` `[B, L]`.
    pub attention_mask: HostTensor<i64>,
    /// `imgs.img_feat` `[B, N, 2048]` (masked rows zeroed for MRM).
    pub img_feat: HostTensor<f32>,
    /// `imgs.img_pos_feat` `[B, N, 7]`.
    pub img_pos_feat: HostTensor<f32>,
    /// `imgs.attention_mask` `[B, 1 + N]`.
    pub img_attention_mask: HostTensor<i64>,
    /// `imgs.img_masks` `[B, N]` 0/1 (MRM tasks).
    pub img_masks: Option<HostTensor<i64>>,
    /// `[S]` flat prediction positions: `b·L + t` where `txt_labels != -1` (MLM) or
    /// `b·(1+N) + j` where `img_mask_tgt` (MRM), in row-major order.
    pub masked_positions: Vec<i64>,
    /// MLM `[S]`: the original ids at those positions.
    pub mlm_targets: Vec<i64>,
    /// MRFR `feat_targets` `[S, 2048]`.
    pub feat_targets: Option<HostTensor<f32>>,
    /// MRC / MRC-KL `label_targets` `[S, 1601]`.
    pub label_targets: Option<HostTensor<f32>>,
}

/// Flat positions of the non-zero / non-`skip` entries of a row-major tensor.
fn positions(values: &[i64], selected: impl Fn(i64) -> bool) -> Vec<i64> {
    values
        .iter()
        .enumerate()
        .filter(|(_, v)| selected(**v))
        .map(|(i, _)| i as i64)
        .collect()
}

impl PretrainHostBatch {
    /// Reads `task`'s batch from a safetensors file in the fixture form.
    pub fn from_file(file: &TensorFile, task: PretrainTask) -> Result<Self, BatchError> {
        let mut batch = Self {
            task,
            input_ids: file.i64("txts.input_ids")?,
            attention_mask: file.i64("txts.attention_mask")?,
            img_feat: file.f32("imgs.img_feat")?,
            img_pos_feat: file.f32("imgs.img_pos_feat")?,
            img_attention_mask: file.i64("imgs.attention_mask")?,
            img_masks: None,
            masked_positions: Vec::new(),
            mlm_targets: Vec::new(),
            feat_targets: None,
            label_targets: None,
        };
        match task {
            PretrainTask::Mlm => {
                let labels = file.i64("txt_labels")?;
                check_shape(
                    "txt_labels",
                    &labels.shape,
                    labels.shape == batch.input_ids.shape,
                    || format!("{:?} like txts.input_ids", batch.input_ids.shape),
                )?;
                batch.masked_positions = positions(&labels.values, |v| v != -1);
                batch.mlm_targets = labels.values.into_iter().filter(|&v| v != -1).collect();
            }
            PretrainTask::Mrfr | PretrainTask::Mrckl | PretrainTask::Mrc => {
                batch.img_masks = Some(file.i64("imgs.img_masks")?);
                let tgt = file.i64("img_mask_tgt")?;
                check_shape(
                    "img_mask_tgt",
                    &tgt.shape,
                    tgt.shape == batch.img_attention_mask.shape,
                    || {
                        format!(
                            "{:?} like imgs.attention_mask",
                            batch.img_attention_mask.shape
                        )
                    },
                )?;
                batch.masked_positions = positions(&tgt.values, |v| v != 0);
                if task == PretrainTask::Mrfr {
                    batch.feat_targets = Some(file.f32("feat_targets")?);
                } else {
                    batch.label_targets = Some(file.f32("label_targets")?);
                }
            }
            PretrainTask::Itm => {}
        }
        Ok(batch)
    }

    /// Rows of the batch.
    pub fn len(&self) -> usize {
        self.input_ids.shape.first().copied().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Text tokens plus regions, padding included (the token-bucket sampler's measure).
    pub fn tokens(&self) -> usize {
        self.input_ids.values.len() + self.img_attention_mask.values.len()
    }

    /// Checks every shape and index so that nothing out of bounds reaches the model.
    pub fn validate(&self, cfg: &BiEncoderConfig) -> Result<(), BatchError> {
        let ids = &self.input_ids.shape;
        check_shape("txts.input_ids", ids, ids.len() == 2 && ids[0] > 0, || {
            "[batch > 0, len]".into()
        })?;
        let (b, l) = (ids[0], ids[1]);
        let m = &self.attention_mask.shape;
        check_shape("txts.attention_mask", m, m == &vec![b, l], || {
            format!("[{b}, {l}]")
        })?;
        if l > cfg.txt.max_position_embeddings {
            return Err(BatchError::Range {
                name: "caption length",
                value: l as i64,
                limit: cfg.txt.max_position_embeddings + 1,
            });
        }
        // MLM ids are decoded with the image tower's table: both vocabularies must hold them.
        let vocab = cfg.txt.vocab_size.min(cfg.img.vocab_size);
        if let Some(&bad) = self
            .input_ids
            .values
            .iter()
            .chain(&self.mlm_targets)
            .find(|&&v| v < 0 || v as usize >= vocab)
        {
            return Err(BatchError::Range {
                name: "token id",
                value: bad,
                limit: vocab,
            });
        }
        let f = &self.img_feat.shape;
        check_shape(
            "imgs.img_feat",
            f,
            f.len() == 3 && f[0] == b && f[2] == IMG_FEAT_DIM,
            || format!("[{b}, regions, {IMG_FEAT_DIM}]"),
        )?;
        let n = f[1];
        let p = &self.img_pos_feat.shape;
        check_shape(
            "imgs.img_pos_feat",
            p,
            p == &vec![b, n, IMG_POS_DIM],
            || format!("[{b}, {n}, {IMG_POS_DIM}]"),
        )?;
        let am = &self.img_attention_mask.shape;
        check_shape("imgs.attention_mask", am, am == &vec![b, n + 1], || {
            format!("[{b}, {}]", n + 1)
        })?;
        if let Some(masks) = &self.img_masks {
            check_shape(
                "imgs.img_masks",
                &masks.shape,
                masks.shape == vec![b, n],
                || format!("[{b}, {n}]"),
            )?;
        }
        let s = self.masked_positions.len();
        let limit = match self.task {
            PretrainTask::Mlm => b * l,
            PretrainTask::Itm => 0,
            _ => b * (n + 1),
        };
        if self.task != PretrainTask::Itm && s == 0 {
            return Err(BatchError::Invalid(format!(
                "the {} batch has nothing to predict (no masked {})",
                self.task,
                if self.task == PretrainTask::Mlm {
                    "token"
                } else {
                    "region"
                }
            )));
        }
        if let Some(&bad) = self
            .masked_positions
            .iter()
            .find(|&&v| v < 0 || v as usize >= limit)
        {
            return Err(BatchError::Range {
                name: "masked position",
                value: bad,
                limit,
            });
        }
        let targets = |name: &'static str, t: &Option<HostTensor<f32>>, width: usize| match t {
            Some(t) => check_shape(name, &t.shape, t.shape == vec![s, width], || {
                format!("[{s}, {width}] (one row per masked region)")
            }),
            None => Ok(()),
        };
        targets("feat_targets", &self.feat_targets, IMG_FEAT_DIM)?;
        targets("label_targets", &self.label_targets, REGION_CLASSES)?;
        Ok(())
    }

    /// Device tensors of the batch.
    pub fn to_device<B: Backend>(&self, device: &B::Device) -> PretrainInput<B> {
        let [b, l] = [self.input_ids.shape[0], self.input_ids.shape[1]];
        let n = self.img_feat.shape[1];
        let int1 = |v: &[i64]| {
            Tensor::<B, 1, Int>::from_data(TensorData::new(v.to_vec(), [v.len()]), device)
        };
        let float2 = |t: &HostTensor<f32>| {
            Tensor::<B, 1>::from_data(TensorData::new(t.values.clone(), [t.values.len()]), device)
                .reshape([t.shape[0], t.shape[1]])
        };
        let has_positions = self.task != PretrainTask::Itm;
        PretrainInput {
            input_ids: ints(&self.input_ids.values, [b, l], device),
            attention_mask: ints(&self.attention_mask.values, [b, l], device),
            regions: RegionBatch {
                img_feat: floats(&self.img_feat.values, [b, n, IMG_FEAT_DIM], device),
                img_pos_feat: floats(&self.img_pos_feat.values, [b, n, IMG_POS_DIM], device),
                attention_mask: ints(&self.img_attention_mask.values, [b, n + 1], device),
                img_masks: self
                    .img_masks
                    .as_ref()
                    .map(|m| ints(&m.values, [b, n], device)),
            },
            masked_positions: has_positions.then(|| int1(&self.masked_positions)),
            mlm_targets: (self.task == PretrainTask::Mlm).then(|| int1(&self.mlm_targets)),
            feat_targets: self.feat_targets.as_ref().map(float2),
            label_targets: self.label_targets.as_ref().map(float2),
        }
    }
}
