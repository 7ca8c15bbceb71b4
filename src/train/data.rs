//! The training pairs and their loader (spec §4.4: `ItmFastDataset` + `itm_fast_collate`).
//!
//! One item per caption of every train txt_db (in `id2len.json` order, dbs concatenated),
//! captions longer than `max_txt_len` word pieces dropped as the reference does (no
//! truncation), each paired with its own image. Every epoch visits all items in a permutation
//! drawn from `(seed, epoch)` alone, so a resumed run sees exactly the batches an uninterrupted
//! run would. A batch is collated as the reference does: the `B` captions and their `B` images
//! (duplicates allowed), then, with hard negatives, each item's negative texts and images.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};
use std::sync::{Arc, Mutex, RwLock};

use burn::data::dataloader::{DataLoader, DataLoaderIterator, Progress};
use burn::prelude::*;

use super::TrainError;
use super::config::DbPair;
use super::loss::TrainBatch;
use crate::data::{
    DataError, ImageBatch, ImgDb, ImgDbOptions, TextBatch, TxtDb, collate_images, collate_texts,
};
use crate::encode::{region_tensors, text_tensors};

/// The first error of a background worker, reported when the epoch ends.
pub type ErrorSlot = Arc<Mutex<Option<TrainError>>>;

pub(crate) fn set_error(slot: &ErrorSlot, e: TrainError) {
    if let Ok(mut g) = slot.lock()
        && g.is_none()
    {
        *g = Some(e);
    }
}

/// One training caption.
#[derive(Debug, Clone)]
pub struct TrainItem {
    /// Caption id (txt_db key).
    pub txt_id: String,
    /// `[CLS] input_ids… [SEP]`.
    pub input_ids: Vec<u32>,
    /// Image name (img_db key).
    pub img: String,
    /// Index of its train db pair.
    pub db: usize,
}

/// Every training caption of every train db pair, with the image dbs.
pub struct TrainSet {
    items: Vec<TrainItem>,
    img_dbs: Vec<ImgDb>,
    /// Per db: its items' index range (dbs are concatenated).
    ranges: Vec<std::ops::Range<usize>>,
    /// Captions dropped for being longer than `max_txt_len`.
    pub dropped_long: usize,
}

impl std::fmt::Debug for TrainSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainSet")
            .field("items", &self.items.len())
            .field("dbs", &self.img_dbs.len())
            .finish()
    }
}

impl TrainSet {
    /// Reads every caption of the pairs. Fails on an unreadable record, an empty set, or a
    /// caption whose image the paired image db lacks (the reference would crash mid-epoch).
    pub fn open(
        pairs: &[DbPair],
        options: ImgDbOptions,
        max_txt_len: i64,
    ) -> Result<Self, TrainError> {
        let mut items = Vec::new();
        let mut img_dbs = Vec::with_capacity(pairs.len());
        let mut ranges = Vec::with_capacity(pairs.len());
        let mut dropped_long = 0;
        for (db, pair) in pairs.iter().enumerate() {
            let txt = TxtDb::open(&pair.txt_db)?;
            let img = ImgDb::open(&pair.img_db, options)?;
            let (cls, sep) = (txt.meta().cls, txt.meta().sep);
            let start = items.len();
            let mut checked: HashSet<String> = HashSet::new();
            for id in txt.ids() {
                let len = txt.txt_len(id).unwrap_or(0);
                if max_txt_len >= 0 && len as i64 > max_txt_len {
                    dropped_long += 1;
                    continue;
                }
                let record = txt.get(id)?;
                if !checked.contains(&record.img_fname) {
                    if !img.contains(&record.img_fname)? {
                        return Err(DataError::MissingImage {
                            txt_id: id.clone(),
                            img: record.img_fname,
                            img_db: img.lmdb_dir().to_path_buf(),
                        }
                        .into());
                    }
                    checked.insert(record.img_fname.clone());
                }
                let mut input_ids = Vec::with_capacity(record.input_ids.len() + 2);
                input_ids.push(cls);
                input_ids.extend_from_slice(&record.input_ids);
                input_ids.push(sep);
                items.push(TrainItem {
                    txt_id: id.clone(),
                    input_ids,
                    img: record.img_fname,
                    db,
                });
            }
            ranges.push(start..items.len());
            img_dbs.push(img);
        }
        if items.is_empty() {
            return Err(TrainError::Config(format!(
                "the train dbs hold no caption of at most max_txt_len = {max_txt_len} word pieces"
            )));
        }
        Ok(Self {
            items,
            img_dbs,
            ranges,
            dropped_long,
        })
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn items(&self) -> &[TrainItem] {
        &self.items
    }

    /// Number of train db pairs.
    pub fn num_dbs(&self) -> usize {
        self.img_dbs.len()
    }

    /// Image db of pair `db`.
    pub fn img_db(&self, db: usize) -> &ImgDb {
        &self.img_dbs[db]
    }

    /// Item indices of pair `db`.
    pub fn range(&self, db: usize) -> std::ops::Range<usize> {
        self.ranges[db].clone()
    }

    /// Unique images of pair `db` in first-occurrence order, and each image's item indices.
    pub fn images_of(&self, db: usize) -> (Vec<String>, HashMap<String, Vec<usize>>) {
        let mut order = Vec::new();
        let mut captions: HashMap<String, Vec<usize>> = HashMap::new();
        for i in self.range(db) {
            let img = &self.items[i].img;
            let entry = captions.entry(img.clone()).or_default();
            if entry.is_empty() {
                order.push(img.clone());
            }
            entry.push(i);
        }
        (order, captions)
    }
}

/// Hard negatives of one epoch (spec §5): for each caption, images; for each image, captions.
#[derive(Debug, Clone, Default)]
pub struct HardNegatives {
    /// Per item: negative image names (from the item's own db).
    pub images: Vec<Vec<String>>,
    /// Per db: image name → negative caption item indices.
    pub texts: Vec<HashMap<String, Vec<usize>>>,
}

/// A collated batch on the host.
#[derive(Debug, Clone)]
pub struct HostTrainBatch {
    /// `[B + B·k, len]` caption ids.
    pub text: TextBatch,
    /// `[B + B·k, …]` regions.
    pub images: ImageBatch,
    /// `B`: the leading rows that are positive pairs.
    pub queries: usize,
}

/// Collates items `indices` (positives first, then each item's hard negatives, as
/// `itm_fast_collate` orders them).
pub fn collate(
    set: &TrainSet,
    negatives: Option<&HardNegatives>,
    indices: &[usize],
) -> Result<HostTrainBatch, DataError> {
    let items = set.items();
    let mut texts: Vec<&[u32]> = indices
        .iter()
        .map(|&i| items[i].input_ids.as_slice())
        .collect();
    let mut regions = indices
        .iter()
        .map(|&i| set.img_db(items[i].db).get(&items[i].img))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(n) = negatives {
        for &i in indices {
            for img in &n.images[i] {
                regions.push(set.img_db(items[i].db).get(img)?);
            }
        }
        for &i in indices {
            let it = &items[i];
            if let Some(neg) = n.texts[it.db].get(&it.img) {
                texts.extend(neg.iter().map(|&t| items[t].input_ids.as_slice()));
            }
        }
    }
    let refs: Vec<_> = regions.iter().collect();
    Ok(HostTrainBatch {
        text: collate_texts(&texts),
        images: collate_images(&refs)?,
        queries: indices.len(),
    })
}

pub use crate::rng::SplitMix64;

/// Random stream ids (one generator per purpose).
pub(crate) const STREAM_SHUFFLE: u64 = 1;
pub(crate) const STREAM_NEGATIVES: u64 = 2;

/// The item order of `epoch` (1-based).
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    SplitMix64::new(seed, STREAM_SHUFFLE, epoch as u64).shuffle(&mut order);
    order
}

/// State shared by the loader and the epoch loop.
pub struct LoaderShared {
    pub set: Arc<TrainSet>,
    /// Negatives for the coming epoch (`None` without hard negatives).
    pub negatives: RwLock<Option<Arc<HardNegatives>>>,
    /// The epoch the next `iter()` serves (1-based).
    pub epoch: AtomicUsize,
    pub batch_size: usize,
    pub seed: u64,
    /// `1 / gradient_accumulation_steps`.
    pub loss_scale: f32,
    pub error: ErrorSlot,
}

impl LoaderShared {
    /// Batches per epoch (the last one may be smaller, `drop_last=False` as the reference).
    pub fn batches_per_epoch(&self) -> usize {
        self.set.len().div_ceil(self.batch_size)
    }
}

/// The training split as a burn [`DataLoader`]: batches are collated by a background thread two
/// ahead of the training step.
pub struct TrainLoader<B: Backend> {
    shared: Arc<LoaderShared>,
    device: B::Device,
}

impl<B: Backend> TrainLoader<B> {
    pub fn new(shared: Arc<LoaderShared>, device: B::Device) -> Self {
        Self { shared, device }
    }
}

struct TrainIter<B: Backend> {
    rx: Receiver<Result<HostTrainBatch, DataError>>,
    device: B::Device,
    shared: Arc<LoaderShared>,
    processed: usize,
    total: usize,
}

impl<B: Backend> Iterator for TrainIter<B> {
    type Item = TrainBatch<B>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.rx.recv() {
            Ok(Ok(hb)) => {
                self.processed += hb.queries;
                Some(to_device(&hb, self.shared.loss_scale, &self.device))
            }
            Ok(Err(e)) => {
                set_error(&self.shared.error, e.into());
                None
            }
            Err(_) => None,
        }
    }
}

impl<B: Backend> DataLoaderIterator<TrainBatch<B>> for TrainIter<B> {
    fn progress(&self) -> Progress {
        Progress::new(self.processed, self.total)
    }
}

/// Device tensors of a host batch.
pub fn to_device<B: Backend>(
    hb: &HostTrainBatch,
    loss_scale: f32,
    device: &B::Device,
) -> TrainBatch<B> {
    let (input_ids, attention_mask) = text_tensors::<B>(&hb.text, device);
    TrainBatch {
        input_ids,
        attention_mask,
        regions: region_tensors::<B>(&hb.images, device),
        queries: hb.queries,
        loss_scale,
    }
}

impl<B: Backend> DataLoader<B, TrainBatch<B>> for TrainLoader<B> {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<TrainBatch<B>> + 'a> {
        let shared = self.shared.clone();
        let epoch = shared.epoch.load(Ordering::SeqCst);
        let order = epoch_order(shared.set.len(), shared.seed, epoch);
        let negatives = shared.negatives.read().ok().and_then(|g| g.clone());
        let (tx, rx) = sync_channel(2);
        let set = shared.set.clone();
        let bs = shared.batch_size;
        // Dropping the iterator closes the channel, which ends the thread at its next send.
        std::thread::spawn(move || {
            for chunk in order.chunks(bs) {
                if tx.send(collate(&set, negatives.as_deref(), chunk)).is_err() {
                    break;
                }
            }
        });
        Box::new(TrainIter::<B> {
            rx,
            device: self.device.clone(),
            total: shared.set.len(),
            shared,
            processed: 0,
        })
    }

    fn num_items(&self) -> usize {
        self.shared.set.len()
    }

    fn to_device(&self, device: &B::Device) -> Arc<dyn DataLoader<B, TrainBatch<B>>> {
        Arc::new(Self::new(self.shared.clone(), device.clone()))
    }

    fn slice(&self, _start: usize, _end: usize) -> Arc<dyn DataLoader<B, TrainBatch<B>>> {
        // Only multi-device strategies slice loaders; training here runs on one device.
        Arc::new(Self::new(self.shared.clone(), self.device.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_orders_are_permutations_that_differ_by_epoch() {
        let a = epoch_order(100, 42, 1);
        let b = epoch_order(100, 42, 2);
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
        assert_ne!(a, b);
        assert_eq!(a, epoch_order(100, 42, 1));
    }
}
