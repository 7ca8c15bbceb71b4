//! Dev recall as a burn-train metric computed once per epoch over the whole split.
//!
//! Recall needs every caption and image vector of the split, so the validation "dataloader"
//! yields one item per epoch — the whole dev split — and the model's [`InferenceStep`] encodes
//! it (each unique image once, batches in length order, like `eval`) and searches exactly both
//! ways. The metrics below then see a single update per epoch; burn-train's epoch aggregate,
//! its dashboard plot and the metric logs hold exactly the split's recall. (Feeding per-batch
//! items instead would make every numeric metric plot and log a meaningless value per batch:
//! burn-train 0.21 has no end-of-epoch hook for metrics.)

use std::sync::Arc;

use burn::data::dataloader::{DataLoader, DataLoaderIterator, Progress};
use burn::prelude::*;
use burn::train::metric::{
    Adaptor, Metric, MetricAttributes, MetricMetadata, MetricName, Numeric, NumericAttributes,
    NumericEntry, SerializedEntry,
};
use burn::train::{InferenceStep, ItemLazy};

use super::data::{ErrorSlot, set_error};
use crate::data::{DataError, ImgDb, ItmEvalDataset, TxtDb};
use crate::eval::{SplitEmbeddings, SplitRecall, evaluate};
use crate::model::BiEncoder;

/// An evaluation split, opened once.
pub struct EvalSplit {
    pub name: &'static str,
    dataset: ItmEvalDataset,
    img_db: ImgDb,
    batch_size: usize,
    error: ErrorSlot,
}

impl EvalSplit {
    pub fn open(
        name: &'static str,
        txt_db: &std::path::Path,
        img_db: &std::path::Path,
        options: crate::data::ImgDbOptions,
        batch_size: usize,
        error: ErrorSlot,
    ) -> Result<Self, DataError> {
        let txt = TxtDb::open(txt_db)?;
        let img_db = ImgDb::open(img_db, options)?;
        let dataset = ItmEvalDataset::new(&txt, &img_db)?;
        Ok(Self {
            name,
            dataset,
            img_db,
            batch_size: batch_size.max(1),
            error,
        })
    }

    pub fn num_captions(&self) -> usize {
        self.dataset.len()
    }

    pub fn num_images(&self) -> usize {
        self.dataset.unique_images().len()
    }

    /// Caption token ids (with `[CLS]`/`[SEP]`), for range checks.
    pub fn captions(&self) -> impl Iterator<Item = &[u32]> {
        self.dataset
            .items()
            .iter()
            .map(|it| it.input_ids.as_slice())
    }

    /// Vectors of every caption and unique image (no progress bars: the dashboard may own the
    /// terminal).
    pub fn embed<B: Backend>(
        &self,
        model: &BiEncoder<B>,
        device: &B::Device,
    ) -> Result<SplitEmbeddings, DataError> {
        SplitEmbeddings::encode(
            model,
            &self.dataset,
            &self.img_db,
            self.batch_size,
            false,
            device,
        )
    }

    /// Recall of `model` on this split.
    pub fn recall<B: Backend>(
        &self,
        model: &BiEncoder<B>,
        device: &B::Device,
    ) -> Result<SplitRecall, DataError> {
        let emb = self.embed(model, device)?;
        Ok(evaluate::<B>(&emb, device).0)
    }
}

/// The validation item: the whole dev split.
#[derive(Clone)]
pub struct DevItem(pub Arc<EvalSplit>);

/// What validation reports: the split's recall (`None` when encoding failed; the error is in
/// the split's error slot).
#[derive(Debug, Clone)]
pub struct DevRecall {
    pub recall: Option<SplitRecall>,
}

impl ItemLazy for DevRecall {
    type ItemSync = DevRecall;

    fn sync(self) -> DevRecall {
        self
    }
}

impl<B: Backend> InferenceStep for BiEncoder<B> {
    type Input = DevItem;
    type Output = DevRecall;

    fn step(&self, item: DevItem) -> DevRecall {
        let split = item.0;
        let device = self.devices().into_iter().next().unwrap_or_default();
        match split.recall(self, &device) {
            Ok(r) => DevRecall { recall: Some(r) },
            Err(e) => {
                set_error(&split.error, e.into());
                DevRecall { recall: None }
            }
        }
    }
}

/// The validation loader: one [`DevItem`] per epoch.
pub struct DevLoader {
    pub split: Arc<EvalSplit>,
}

struct OnceIter {
    item: Option<DevItem>,
}

impl Iterator for OnceIter {
    type Item = DevItem;

    fn next(&mut self) -> Option<DevItem> {
        self.item.take()
    }
}

impl DataLoaderIterator<DevItem> for OnceIter {
    fn progress(&self) -> Progress {
        Progress::new(usize::from(self.item.is_none()), 1)
    }
}

impl<B: Backend> DataLoader<B, DevItem> for DevLoader {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<DevItem> + 'a> {
        Box::new(OnceIter {
            item: Some(DevItem(self.split.clone())),
        })
    }

    fn num_items(&self) -> usize {
        1
    }

    fn to_device(&self, _device: &B::Device) -> Arc<dyn DataLoader<B, DevItem>> {
        Arc::new(DevLoader {
            split: self.split.clone(),
        })
    }

    fn slice(&self, _start: usize, _end: usize) -> Arc<dyn DataLoader<B, DevItem>> {
        Arc::new(DevLoader {
            split: self.split.clone(),
        })
    }
}

/// Which recall number a [`DevRecallMetric`] shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecallValue {
    /// Image retrieval (text query) R@k.
    TextToImage(usize),
    /// Text retrieval (image query) R@k.
    ImageToText(usize),
    /// Mean over k ∈ {1, 5, 10} of `(IR@k + TR@k) / 2`: the model-selection metric.
    Mean,
}

impl RecallValue {
    /// Every value the dashboard shows.
    pub const ALL: [RecallValue; 7] = [
        RecallValue::TextToImage(1),
        RecallValue::TextToImage(5),
        RecallValue::TextToImage(10),
        RecallValue::ImageToText(1),
        RecallValue::ImageToText(5),
        RecallValue::ImageToText(10),
        RecallValue::Mean,
    ];

    pub fn name(&self) -> String {
        match self {
            RecallValue::TextToImage(k) => format!("R@{k} text-to-image"),
            RecallValue::ImageToText(k) => format!("R@{k} image-to-text"),
            RecallValue::Mean => "R mean".to_string(),
        }
    }

    pub fn of(&self, r: &SplitRecall) -> f64 {
        let pick = |x: &crate::eval::Recall, k: usize| match k {
            1 => x.r1,
            5 => x.r5,
            _ => x.r10,
        };
        match *self {
            RecallValue::TextToImage(k) => pick(&r.image_retrieval, k),
            RecallValue::ImageToText(k) => pick(&r.text_retrieval, k),
            RecallValue::Mean => r.mean(),
        }
    }
}

/// Whole-split dev recall as a numeric burn-train metric (one update per epoch).
#[derive(Clone)]
pub struct DevRecallMetric {
    which: RecallValue,
    name: MetricName,
    value: Option<f64>,
}

impl DevRecallMetric {
    pub fn new(which: RecallValue) -> Self {
        Self {
            which,
            name: Arc::new(which.name()),
            value: None,
        }
    }
}

/// [`DevRecallMetric`]'s input.
#[derive(Debug, Clone)]
pub struct DevRecallInput(pub Option<SplitRecall>);

impl Adaptor<DevRecallInput> for DevRecall {
    fn adapt(&self) -> DevRecallInput {
        DevRecallInput(self.recall.clone())
    }
}

impl Metric for DevRecallMetric {
    type Input = DevRecallInput;

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn update(&mut self, item: &DevRecallInput, _metadata: &MetricMetadata) -> SerializedEntry {
        let v = item
            .0
            .as_ref()
            .map(|r| self.which.of(r))
            .unwrap_or(f64::NAN);
        self.value = Some(v);
        SerializedEntry::new(format!("{}: {:.2}", self.name, 100.0 * v), v.to_string())
    }

    fn clear(&mut self) {
        self.value = None;
    }

    fn attributes(&self) -> MetricAttributes {
        NumericAttributes {
            unit: None,
            higher_is_better: true,
        }
        .into()
    }
}

impl Numeric for DevRecallMetric {
    fn value(&self) -> NumericEntry {
        NumericEntry::Value(self.value.unwrap_or(f64::NAN))
    }

    fn running_value(&self) -> NumericEntry {
        self.value()
    }
}
