//! The pre-training item list over one (txt_db, img_db) pair and the per-task items
//! (`uniter_model/data/data.py::DetectFeatTxtTokDataset` and the `MlmDataset`, `MrfrDataset`,
//! `MrcDataset`, `ItmDataset` of `dvl/data`; spec §4.5, §6.1).
//!
//! Items are the captions of `id2len.json` in file order, keeping those with at most
//! `max_txt_len` word pieces; `lens[i]` = word pieces (no [CLS]/[SEP]) + `num_bb` of the image
//! `txt2img.json` names, which is what [`TokenBucketSampler`](super::TokenBucketSampler) packs.
//! Building an item reads the caption record and its `img_fname` (as the reference's
//! `__getitem__` does) and draws the task's masks from the shared generator.

use std::sync::Arc;

use super::collate::{PretrainBatch, PretrainItem, collate_indices};
use super::masking::{img_mask, random_word};
use super::pyrandom::PyRandom;
use super::task::PretrainTask;
use crate::data::DataError;
use crate::data::img_db::ImgDb;
use crate::data::txt_db::TxtDb;

/// Settings of the pre-training datasets (`pretrain.py` options).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PretrainDataOptions {
    /// Keep captions with at most this many word pieces (`max_txt_len`, 60 in the config);
    /// `None` keeps all (the reference's -1, used for validation dbs).
    pub max_txt_len: Option<usize>,
    /// Per-region masking probability of MRFR / MRC (`mrm_prob`).
    pub mrm_prob: f64,
}

impl Default for PretrainDataOptions {
    fn default() -> Self {
        Self {
            max_txt_len: Some(60),
            mrm_prob: 0.15,
        }
    }
}

/// Pre-training examples of one text db paired with one image db. The dbs are shared
/// (`Arc`) because every task of a dataset reads the same pair.
#[derive(Debug, Clone)]
pub struct PretrainDataset {
    txt_db: Arc<TxtDb>,
    img_db: Arc<ImgDb>,
    options: PretrainDataOptions,
    ids: Vec<String>,
    lens: Vec<usize>,
}

impl PretrainDataset {
    /// Lists the items and their lengths. Fails on an empty split (before or after the
    /// `max_txt_len` filter), a caption missing from `txt2img.json`, an image without a box
    /// count in the image db, or a meta.json `v_range` that is empty.
    pub fn new(
        txt_db: Arc<TxtDb>,
        img_db: Arc<ImgDb>,
        options: PretrainDataOptions,
    ) -> Result<Self, DataError> {
        if txt_db.is_empty() {
            return Err(DataError::EmptySplit {
                path: txt_db.dir().to_path_buf(),
            });
        }
        let (v0, v1) = txt_db.meta().v_range;
        if v1 <= v0 {
            return Err(DataError::invalid(
                &txt_db.dir().join("meta.json"),
                format!("v_range [{v0}, {v1}) is empty"),
            ));
        }
        let mut ids = Vec::new();
        let mut lens = Vec::new();
        for id in txt_db.ids() {
            // `ids()` comes from id2len.json, so the length is always there.
            let txt_len = txt_db.txt_len(id).unwrap_or(0);
            if options.max_txt_len.is_some_and(|max| txt_len > max) {
                continue;
            }
            let img = txt_db
                .txt2img()
                .get(id)
                .ok_or_else(|| DataError::MissingKey {
                    what: "caption",
                    key: id.clone(),
                    db: txt_db.dir().join("txt2img.json"),
                })?;
            let num_bb = img_db.num_bb(img).map_err(|e| match e {
                DataError::MissingKey { key, db, .. } => DataError::MissingImage {
                    txt_id: id.clone(),
                    img: key,
                    img_db: db,
                },
                other => other,
            })?;
            ids.push(id.clone());
            lens.push(txt_len + num_bb);
        }
        if ids.is_empty() {
            return Err(DataError::invalid(
                &txt_db.dir().join("id2len.json"),
                format!(
                    "no caption has at most {} word pieces (max_txt_len)",
                    options.max_txt_len.unwrap_or(0)
                ),
            ));
        }
        Ok(Self {
            txt_db,
            img_db,
            options,
            ids,
            lens,
        })
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Caption ids of the items, in dataset order.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// `lens[i]` = word pieces of item `i` + num_bb of its image (the sampler's lengths).
    pub fn lens(&self) -> &[usize] {
        &self.lens
    }

    pub fn options(&self) -> &PretrainDataOptions {
        &self.options
    }

    /// Builds item `index` for `task`, drawing its masks from `rng` (MLM: one `random()` per
    /// word piece plus the random-token draws; MRFR / MRC: one per box plus the forced-box
    /// draw; ITM: nothing).
    pub fn item(
        &self,
        task: PretrainTask,
        index: usize,
        rng: &mut PyRandom,
    ) -> Result<PretrainItem, DataError> {
        let id = self.ids.get(index).ok_or_else(|| {
            DataError::Batch(format!(
                "item {index} is outside the dataset of {} items ({})",
                self.ids.len(),
                self.txt_db.dir().display()
            ))
        })?;
        let record = self.txt_db.get(id)?;
        let meta = self.txt_db.meta();
        let unusable = |reason: &str| DataError::Unusable {
            task: task.name(),
            key: id.clone(),
            db: self.txt_db.dir().to_path_buf(),
            reason: reason.to_string(),
        };

        let (body, txt_labels) = match task {
            PretrainTask::Mlm => {
                if record.input_ids.is_empty() {
                    return Err(unusable("caption has no word pieces to mask"));
                }
                let (ids, labels) = random_word(&record.input_ids, rng, meta.v_range, meta.mask);
                (ids, Some(labels))
            }
            _ => (record.input_ids, None),
        };
        let mut input_ids = Vec::with_capacity(body.len() + 2);
        input_ids.push(meta.cls);
        input_ids.extend_from_slice(&body);
        input_ids.push(meta.sep);
        let txt_labels = txt_labels.map(|labels| {
            let mut padded = Vec::with_capacity(labels.len() + 2);
            padded.push(-1);
            padded.extend_from_slice(&labels);
            padded.push(-1);
            padded
        });

        let regions = self.img_db.get(&record.img_fname)?;
        let soft_labels = if task.needs_soft_labels() {
            let labels = self.img_db.get_soft_labels(&record.img_fname)?;
            if labels.shape.first() != Some(&regions.num_bb) {
                return Err(DataError::corrupt(
                    self.img_db.lmdb_dir(),
                    &record.img_fname,
                    format!(
                        "'soft_labels' has {:?} rows but the image has {} boxes",
                        labels.shape.first(),
                        regions.num_bb
                    ),
                ));
            }
            Some(labels)
        } else {
            None
        };
        let img_mask = if task.masks_regions() {
            if regions.num_bb == 0 {
                return Err(unusable("image has no boxes to mask"));
            }
            Some(img_mask(regions.num_bb, self.options.mrm_prob, rng))
        } else {
            None
        };
        Ok(PretrainItem {
            txt_id: record.id,
            img_fname: record.img_fname,
            input_ids,
            txt_labels,
            regions,
            img_mask,
            soft_labels,
            itm_target: (task == PretrainTask::Itm).then_some(1),
        })
    }

    /// Items `indices` in order (the reference's `[dataset[i] for i in batch]`), collated.
    pub fn batch(
        &self,
        task: PretrainTask,
        indices: &[usize],
        rng: &mut PyRandom,
    ) -> Result<PretrainBatch, DataError> {
        collate_indices(task, indices, |i| self.item(task, i, rng))
    }
}
