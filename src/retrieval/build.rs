//! Building an index: every image (and caption) of the dbs through its tower once.

use std::path::Path;
use std::time::Instant;

use burn::prelude::*;

use super::RetrievalError;
use super::ann::AnnIndex;
use super::format::{
    ANN_FILE, AnnInfo, FORMAT, ImageSection, IndexMeta, ModelInfo, TextSection, VERSION,
    VectorDtype, write_index,
};
use crate::data::{ImgDb, TxtDb};
use crate::encode::{Progress, encode_images_by_size, encode_texts_by_length};
use crate::model::{BiEncoder, BiEncoderConfig};
use crate::progress::bar;

/// How to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Images / captions per forward pass.
    pub batch_size: usize,
    pub dtype: VectorDtype,
    /// Also build the HNSW graph with these settings.
    pub ann: Option<AnnInfo>,
    /// Replace an existing output directory.
    pub overwrite: bool,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            batch_size: 64,
            dtype: VectorDtype::F32,
            ann: None,
            overwrite: false,
        }
    }
}

/// What was built and how long each part took.
#[derive(Debug, Clone, Default)]
pub struct BuildReport {
    pub images: usize,
    pub texts: usize,
    pub dim: usize,
    pub image_seconds: f64,
    pub text_seconds: f64,
    pub ann_seconds: f64,
    pub write_seconds: f64,
    /// Captions whose image the img_db does not hold (kept, but never found by a text query).
    pub captions_without_image: usize,
}

/// Model facts recorded in index.json.
pub fn model_info(checkpoint: &Path, cfg: &BiEncoderConfig) -> ModelInfo {
    ModelInfo {
        checkpoint: checkpoint.display().to_string(),
        project_dim: cfg.project_dim,
        text_layers: cfg.txt.num_hidden_layers,
        image_layers: cfg.img.num_hidden_layers,
    }
}

/// A txt_db's captions in its order, tokenized as the text tower reads them.
#[derive(Debug, Clone, Default)]
pub struct CaptionRecords {
    pub ids: Vec<String>,
    pub raw: Vec<Option<String>>,
    /// Each caption's image name.
    pub image: Vec<String>,
    /// `[CLS] … [SEP]` token ids.
    pub tokens: Vec<Vec<u32>>,
    /// Captions whose image `img_db` does not hold.
    pub without_image: usize,
}

/// Reads every caption of `db` (and counts those whose image `img_db` lacks).
pub fn read_captions(db: &TxtDb, img_db: &ImgDb) -> Result<CaptionRecords, RetrievalError> {
    let (cls, sep) = (db.meta().cls, db.meta().sep);
    let mut out = CaptionRecords::default();
    for id in db.ids() {
        let rec = db.get(id)?;
        let mut t = Vec::with_capacity(rec.input_ids.len() + 2);
        t.push(cls);
        t.extend_from_slice(&rec.input_ids);
        t.push(sep);
        out.tokens.push(t);
        out.ids.push(id.clone());
        out.raw.push(rec.raw);
        if !img_db.contains(&rec.img_fname)? {
            out.without_image += 1;
        }
        out.image.push(rec.img_fname);
    }
    Ok(out)
}

/// Encodes every image of `img_db` (and every caption of `txt_db`) and writes the index to
/// `out` atomically. Batches are formed by size (padding is masked, so this only saves work);
/// rows keep the dbs' order: `img_db.names()` and the txt_db's id2len order.
pub fn build_index<B: Backend>(
    model: &BiEncoder<B>,
    info: ModelInfo,
    img_db: &ImgDb,
    txt_db: Option<&TxtDb>,
    out: &Path,
    options: &BuildOptions,
    device: &B::Device,
) -> Result<BuildReport, RetrievalError> {
    let batch = options.batch_size.max(1);
    let mut report = BuildReport::default();
    let names = img_db.names();
    if names.is_empty() {
        return Err(RetrievalError::format(
            img_db.dir(),
            "the image db holds no images",
        ));
    }

    let started = Instant::now();
    let (images, dim) =
        encode_images_by_size(model, img_db, names, batch, Progress::Bar("images"), device)?;
    report.image_seconds = started.elapsed().as_secs_f64();
    report.images = names.len();
    report.dim = dim;

    let (texts, text_section, captions) = match txt_db {
        Some(db) => {
            let started = Instant::now();
            let CaptionRecords {
                ids,
                raw,
                image,
                tokens,
                without_image,
            } = read_captions(db, img_db)?;
            report.captions_without_image = without_image;
            let rows: Vec<&[u32]> = tokens.iter().map(Vec::as_slice).collect();
            let (texts, _) =
                encode_texts_by_length(model, &rows, batch, Progress::Bar("captions"), device);
            report.text_seconds = started.elapsed().as_secs_f64();
            report.texts = ids.len();
            let known: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
            let captions: Vec<Vec<String>> = names
                .iter()
                .map(|n| {
                    db.txts_of_img(n)
                        .unwrap_or_default()
                        .iter()
                        .filter(|c| known.contains(c.as_str()))
                        .cloned()
                        .collect()
                })
                .collect();
            let section = TextSection {
                ids,
                raw,
                image,
                txt_db: db.dir().display().to_string(),
            };
            (Some(texts), Some(section), Some(captions))
        }
        None => (None, None, None),
    };

    let meta = IndexMeta {
        format: FORMAT.into(),
        version: VERSION,
        dim,
        dtype: options.dtype,
        model: info,
        images: ImageSection {
            ids: names.to_vec(),
            img_db: img_db.dir().display().to_string(),
            selection: Some(*img_db.options()),
            captions,
        },
        texts: text_section,
        ann: options.ann,
        written_by: format!("lightningdot {}", env!("CARGO_PKG_VERSION")),
    };
    let mut ann_seconds = 0.0;
    let write_started = Instant::now();
    write_index(
        out,
        &meta,
        &images,
        texts.as_deref(),
        options.overwrite,
        |tmp| {
            let Some(params) = options.ann else {
                return Ok(());
            };
            let started = Instant::now();
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            let pb = bar(names.len(), "HNSW graph");
            let ann = AnnIndex::build(&images, dim, options.dtype, params, threads, &|n| {
                pb.set_position(n as u64)
            })?;
            pb.finish_and_clear();
            ann.save(&tmp.join(ANN_FILE))?;
            ann_seconds = started.elapsed().as_secs_f64();
            Ok(())
        },
    )?;
    report.ann_seconds = ann_seconds;
    report.write_seconds = write_started.elapsed().as_secs_f64() - ann_seconds;
    Ok(report)
}
