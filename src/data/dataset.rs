//! The retrieval evaluation item list (`ItmFastDataset` with `max_txt_len = -1`, spec §4.4, §7).
//!
//! One item per caption in `id2len.json` order, paired with the image its record names. The
//! reference encodes an image once per caption (≈5× each) and keeps the last vector; the
//! encoders are deterministic, so encoding each entry of [`ItmEvalDataset::unique_images`] once
//! gives the same index.

use std::collections::HashSet;
use std::ops::Range;

use super::DataError;
use super::collate::{ImageBatch, TextBatch, collate_images, collate_texts};
use super::img_db::ImgDb;
use super::txt_db::TxtDb;

/// One caption of the split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalItem {
    /// Caption id (txt_db key).
    pub txt_id: String,
    /// `[CLS] input_ids… [SEP]` with the ids from the txt_db's meta.json.
    pub input_ids: Vec<u32>,
    /// Image name (img_db key).
    pub img_fname: String,
}

/// All captions of a text db with their images, checked against the image db.
#[derive(Debug, Clone)]
pub struct ItmEvalDataset {
    items: Vec<EvalItem>,
    unique_images: Vec<String>,
}

impl ItmEvalDataset {
    /// Reads every caption of `txt_db`. Fails on an empty split, an unreadable record, or a
    /// caption whose image `img_db` does not hold (the reference would crash mid-evaluation).
    pub fn new(txt_db: &TxtDb, img_db: &ImgDb) -> Result<Self, DataError> {
        if txt_db.is_empty() {
            return Err(DataError::EmptySplit {
                path: txt_db.dir().to_path_buf(),
            });
        }
        let (cls, sep) = (txt_db.meta().cls, txt_db.meta().sep);
        let mut items = Vec::with_capacity(txt_db.len());
        let mut seen = HashSet::new();
        let mut unique_images = Vec::new();
        for id in txt_db.ids() {
            let record = txt_db.get(id)?;
            if seen.insert(record.img_fname.clone()) {
                if !img_db.contains(&record.img_fname)? {
                    return Err(DataError::MissingImage {
                        txt_id: id.clone(),
                        img: record.img_fname,
                        img_db: img_db.lmdb_dir().to_path_buf(),
                    });
                }
                unique_images.push(record.img_fname.clone());
            }
            let mut input_ids = Vec::with_capacity(record.input_ids.len() + 2);
            input_ids.push(cls);
            input_ids.extend_from_slice(&record.input_ids);
            input_ids.push(sep);
            items.push(EvalItem {
                txt_id: id.clone(),
                input_ids,
                img_fname: record.img_fname,
            });
        }
        Ok(Self {
            items,
            unique_images,
        })
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Items in dataset (id2len) order.
    pub fn items(&self) -> &[EvalItem] {
        &self.items
    }

    /// Image names in order of first occurrence over the items: the order the reference's
    /// image index receives them.
    pub fn unique_images(&self) -> &[String] {
        &self.unique_images
    }

    /// Collated text ids of `items[range]`.
    pub fn text_batch(&self, range: Range<usize>) -> Result<TextBatch, DataError> {
        let items = self.items.get(range.clone()).ok_or_else(|| {
            DataError::Batch(format!(
                "item range {range:?} is outside the dataset of {} items",
                self.items.len()
            ))
        })?;
        let texts: Vec<&[u32]> = items.iter().map(|it| it.input_ids.as_slice()).collect();
        Ok(collate_texts(&texts))
    }
}

/// Reads the named images from `img_db` and collates them (rows in the order given).
pub fn image_batch<S: AsRef<str>>(img_db: &ImgDb, names: &[S]) -> Result<ImageBatch, DataError> {
    let regions = names
        .iter()
        .map(|n| img_db.get(n.as_ref()))
        .collect::<Result<Vec<_>, _>>()?;
    let refs: Vec<_> = regions.iter().collect();
    collate_images(&refs)
}
