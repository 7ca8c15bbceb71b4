//! Pre-training batches as `mlm_collate`, `mrfr_collate`, `mrc_collate` and `itm_collate`
//! build them (`dvl/data/{mlm,mrm,itm_pre}.py`; spec §4.5; fixtures README "Batches").
//!
//! Texts and images are padded by the eval collate ([`collate_texts`], [`collate_images`]), so
//! the two-stream layout is the one of spec §4.4; the task tensors are added on top. The
//! `teacher.*` tensors (KD only, off by default) are not built.

use super::masking::IGNORE_LABEL;
use super::task::PretrainTask;
use crate::data::DataError;
use crate::data::collate::{ImageBatch, TextBatch, collate_images, collate_texts};
use crate::data::img_db::{IMG_FEAT_DIM, NdArray, RegionFeatures};

/// One caption-image example after the task's masking, before padding.
#[derive(Debug, Clone, PartialEq)]
pub struct PretrainItem {
    pub txt_id: String,
    pub img_fname: String,
    /// `[CLS] ids… [SEP]`; for MLM the masked ids.
    pub input_ids: Vec<u32>,
    /// MLM only: `[len(input_ids)]`, original id at selected positions, -1 elsewhere (and at
    /// [CLS]/[SEP]).
    pub txt_labels: Option<Vec<i64>>,
    /// Unmasked region features and positions of the image.
    pub regions: RegionFeatures,
    /// MRFR / MRC: `[num_bb]`, true = region masked.
    pub img_mask: Option<Vec<bool>>,
    /// MRC / MRC-KL: detector class distributions, `[num_bb, 1601]`.
    pub soft_labels: Option<NdArray>,
    /// ITM: the pair label (always 1: `itm_neg_prob` 0 is the only supported setting).
    pub itm_target: Option<i64>,
}

/// The image tower's single text token, hard-coded as 101 in every pre-training dataset
/// (not read from meta.json).
pub const IMG_INPUT_ID: i64 = 101;

/// One collated pre-training micro-batch, host side. `B` = rows, `Lt` = longest caption incl.
/// [CLS]/[SEP], `N` = largest `num_bb`, `S` = masked regions of the batch.
///
/// Tensor names of the reference batch dict: `txts.input_ids` / `txts.attention_mask` =
/// [`PretrainBatch::txts`]; `imgs.img_feat` / `imgs.img_pos_feat` / `imgs.attention_mask` =
/// [`PretrainBatch::imgs`]; the implicit ones come from the methods below.
#[derive(Debug, Clone, PartialEq)]
pub struct PretrainBatch {
    pub task: PretrainTask,
    /// Caption id per row.
    pub txt_ids: Vec<String>,
    /// Image name per row.
    pub img_fnames: Vec<String>,
    /// `[B, Lt]` ids (MLM: after masking), pad 0, and the attention mask.
    pub txts: TextBatch,
    /// `[B, N, 2048]` / `[B, N, 7]` / `[B, 1 + N]`; for MRFR / MRC the masked regions' feature
    /// rows are zero (positions are kept).
    pub imgs: ImageBatch,
    /// MRFR / MRC: `imgs.img_masks` `[B, N]`, true = masked, pad false.
    pub img_masks: Option<Vec<bool>>,
    /// MRFR / MRC: `[B, 1 + N]` = `[false, img_masks[b], false…]`, where the image tower's
    /// output is read (slot 0 is the image [CLS]).
    pub img_mask_tgt: Option<Vec<bool>>,
    /// MLM: `[B, Lt]` original id at selected positions, -1 elsewhere (pad -1).
    pub txt_labels: Option<Vec<i64>>,
    /// MRFR: `[S, 2048]` unmasked features of the masked regions, in (row, region) order.
    pub feat_targets: Option<Vec<f32>>,
    /// MRC / MRC-KL: `[S, label_dim]` soft labels of the masked regions, same order.
    pub label_targets: Option<Vec<f32>>,
    /// Width of `label_targets` (1601 for the BUTD detector; 0 for other tasks).
    pub label_dim: usize,
    /// ITM: `[B]` pair labels (all 1); unused by the BiEncoder loss.
    pub targets: Option<Vec<i64>>,
    /// MLM: flat indices `b * Lt + t` of the positions with a label, row-major (the rows the
    /// MLM head sees, spec §6.2). Empty for other tasks.
    pub masked_text_positions: Vec<i64>,
    /// MLM: the labels at `masked_text_positions`. Empty for other tasks.
    pub mlm_targets: Vec<i64>,
    /// MRFR / MRC: flat indices `b * (1 + N) + j` where `img_mask_tgt` is true, row-major
    /// (spec §6.3). Empty for other tasks.
    pub masked_region_positions: Vec<i64>,
}

impl PretrainBatch {
    /// `B`.
    pub fn batch_size(&self) -> usize {
        self.txts.batch
    }

    /// `Lt`.
    pub fn txt_len(&self) -> usize {
        self.txts.len
    }

    /// `N`.
    pub fn max_regions(&self) -> usize {
        self.imgs.max_regions
    }

    /// `txts.position_ids`: `arange(Lt)` as one row, `[1, Lt]`.
    pub fn txt_position_ids(&self) -> Vec<i64> {
        (0..self.txt_len() as i64).collect()
    }

    /// `imgs.input_ids`: `[B, 1]`, all [`IMG_INPUT_ID`].
    pub fn img_input_ids(&self) -> Vec<i64> {
        vec![IMG_INPUT_ID; self.batch_size()]
    }

    /// `imgs.position_ids`: `[[0]]`, `[1, 1]`.
    pub fn img_position_ids(&self) -> Vec<i64> {
        vec![0]
    }

    /// `imgs.gather_index`: `arange(1 + N)` in every row, `[B, 1 + N]` (LightningDOT's
    /// identity `get_gather_index`).
    pub fn gather_index(&self) -> Vec<i64> {
        let width = 1 + self.max_regions() as i64;
        (0..self.batch_size()).flat_map(|_| 0..width).collect()
    }
}

/// Items `indices` in order (the reference's `[dataset[i] for i in batch]`), each made by
/// `item` (which draws its masks), collated.
pub fn collate_indices(
    task: PretrainTask,
    indices: &[usize],
    mut item: impl FnMut(usize) -> Result<PretrainItem, DataError>,
) -> Result<PretrainBatch, DataError> {
    let items = indices
        .iter()
        .map(|&i| item(i))
        .collect::<Result<Vec<_>, _>>()?;
    collate_pretrain(task, &items)
}

/// Pads `items` (built by [`PretrainDataset::item`](super::PretrainDataset::item) for `task`)
/// into a batch. Fails on an empty list or items lacking what the task needs (labels, masks,
/// soft labels) or whose sizes disagree.
pub fn collate_pretrain(
    task: PretrainTask,
    items: &[PretrainItem],
) -> Result<PretrainBatch, DataError> {
    if items.is_empty() {
        return Err(DataError::Batch(format!("no items for a {task} batch")));
    }
    let texts: Vec<&[u32]> = items.iter().map(|it| it.input_ids.as_slice()).collect();
    let txts = collate_texts(&texts);
    let regions: Vec<_> = items.iter().map(|it| &it.regions).collect();
    let imgs = collate_images(&regions)?;
    let mut batch = PretrainBatch {
        task,
        txt_ids: items.iter().map(|it| it.txt_id.clone()).collect(),
        img_fnames: items.iter().map(|it| it.img_fname.clone()).collect(),
        txts,
        imgs,
        img_masks: None,
        img_mask_tgt: None,
        txt_labels: None,
        feat_targets: None,
        label_targets: None,
        label_dim: 0,
        targets: None,
        masked_text_positions: Vec::new(),
        mlm_targets: Vec::new(),
        masked_region_positions: Vec::new(),
    };
    match task {
        PretrainTask::Mlm => add_mlm(&mut batch, items)?,
        PretrainTask::Mrfr | PretrainTask::Mrc | PretrainTask::Mrckl => add_mrm(&mut batch, items)?,
        PretrainTask::Itm => {
            let targets = items
                .iter()
                .enumerate()
                .map(|(i, it)| {
                    it.itm_target
                        .ok_or_else(|| missing(task, i, "an ITM target"))
                })
                .collect::<Result<_, _>>()?;
            batch.targets = Some(targets);
        }
    }
    Ok(batch)
}

fn missing(task: PretrainTask, row: usize, what: &str) -> DataError {
    DataError::Batch(format!("{task} item {row} has no {what}"))
}

fn add_mlm(batch: &mut PretrainBatch, items: &[PretrainItem]) -> Result<(), DataError> {
    let len = batch.txt_len();
    let mut txt_labels = vec![IGNORE_LABEL; batch.batch_size() * len];
    for (b, item) in items.iter().enumerate() {
        let labels = item
            .txt_labels
            .as_ref()
            .ok_or_else(|| missing(batch.task, b, "MLM labels"))?;
        if labels.len() != item.input_ids.len() {
            return Err(DataError::Batch(format!(
                "mlm item {b} has {} labels for {} tokens",
                labels.len(),
                item.input_ids.len()
            )));
        }
        txt_labels[b * len..b * len + labels.len()].copy_from_slice(labels);
    }
    for (flat, &label) in txt_labels.iter().enumerate() {
        if label != IGNORE_LABEL {
            batch.masked_text_positions.push(flat as i64);
            batch.mlm_targets.push(label);
        }
    }
    batch.txt_labels = Some(txt_labels);
    Ok(())
}

fn add_mrm(batch: &mut PretrainBatch, items: &[PretrainItem]) -> Result<(), DataError> {
    let task = batch.task;
    let (rows, n) = (batch.batch_size(), batch.max_regions());
    let mut img_masks = vec![false; rows * n];
    let mut img_mask_tgt = vec![false; rows * (1 + n)];
    let with_labels = task.needs_soft_labels();
    let mut label_dim = 0;
    for (b, item) in items.iter().enumerate() {
        let mask = item
            .img_mask
            .as_ref()
            .ok_or_else(|| missing(task, b, "region mask"))?;
        if mask.len() != item.regions.num_bb {
            return Err(DataError::Batch(format!(
                "{task} item {b} has a mask of {} regions for {} boxes",
                mask.len(),
                item.regions.num_bb
            )));
        }
        img_masks[b * n..b * n + mask.len()].copy_from_slice(mask);
        img_mask_tgt[b * (1 + n) + 1..b * (1 + n) + 1 + mask.len()].copy_from_slice(mask);
        if with_labels {
            let labels = item
                .soft_labels
                .as_ref()
                .ok_or_else(|| missing(task, b, "soft labels"))?;
            let dim = labels.shape.get(1).copied().unwrap_or(0);
            let consistent = labels.shape.len() == 2
                && labels.shape[0] == mask.len()
                && labels.data.len() == mask.len() * dim
                && (b == 0 || dim == label_dim);
            if !consistent {
                return Err(DataError::Batch(format!(
                    "{task} item {b} has soft labels of shape {:?} for {} boxes \
                     (other rows: {label_dim} classes)",
                    labels.shape,
                    mask.len()
                )));
            }
            label_dim = dim;
        }
    }

    // Targets are read from the unmasked features, then the masked rows are zeroed
    // (`_get_feat_target` before `_mask_img_feat`).
    let mut feat_targets = Vec::new();
    let mut label_targets = Vec::new();
    for (b, item) in items.iter().enumerate() {
        for (j, _) in img_masks[b * n..(b + 1) * n]
            .iter()
            .enumerate()
            .filter(|(_, m)| **m)
        {
            let row = (b * n + j) * IMG_FEAT_DIM;
            let feat = &mut batch.imgs.img_feat[row..row + IMG_FEAT_DIM];
            if task == PretrainTask::Mrfr {
                feat_targets.extend_from_slice(feat);
            }
            feat.fill(0.0);
            if let Some(labels) = item.soft_labels.as_ref().filter(|_| with_labels) {
                label_targets.extend_from_slice(&labels.data[j * label_dim..(j + 1) * label_dim]);
            }
        }
    }
    batch.masked_region_positions = img_mask_tgt
        .iter()
        .enumerate()
        .filter(|(_, m)| **m)
        .map(|(flat, _)| flat as i64)
        .collect();
    batch.img_masks = Some(img_masks);
    batch.img_mask_tgt = Some(img_mask_tgt);
    if task == PretrainTask::Mrfr {
        batch.feat_targets = Some(feat_targets);
    } else {
        batch.label_targets = Some(label_targets);
        batch.label_dim = label_dim;
    }
    Ok(())
}
