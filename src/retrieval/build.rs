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
use crate::data::{ImgDb, TxtDb, collate_texts, dataset::image_batch};
use crate::encode::{encode_images, encode_texts};
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

/// Receives each encoded batch: its rows and their vectors, row-major.
pub type BatchSink<'a> = dyn FnMut(&[usize], &[f32]) -> Result<(), RetrievalError> + 'a;

/// Encodes the images at positions `rows` of `img_db.names()`, `batch` per forward pass,
/// largest box counts first (padding is masked, so grouping by size only saves work), and hands
/// each batch to `sink`.
pub fn encode_image_rows<B: Backend>(
    model: &BiEncoder<B>,
    img_db: &ImgDb,
    rows: &[usize],
    batch: usize,
    device: &B::Device,
    sink: &mut BatchSink<'_>,
) -> Result<(), RetrievalError> {
    let names = img_db.names();
    let nbb: Vec<usize> = rows
        .iter()
        .map(|&i| img_db.num_bb(&names[i]))
        .collect::<Result<_, _>>()?;
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(nbb[i]));
    let order: Vec<usize> = order.into_iter().map(|i| rows[i]).collect();
    let pb = bar(rows.len(), "images");
    for chunk in order.chunks(batch.max(1)) {
        let batch_names: Vec<&str> = chunk.iter().map(|&i| names[i].as_str()).collect();
        let v = encode_images(model, &image_batch(img_db, &batch_names)?, device);
        sink(chunk, &v)?;
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    Ok(())
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

/// Encodes the captions at positions `rows` of `tokens`, `batch` per pass, longest first, and
/// hands each batch to `sink`.
pub fn encode_text_rows<B: Backend>(
    model: &BiEncoder<B>,
    tokens: &[Vec<u32>],
    rows: &[usize],
    batch: usize,
    device: &B::Device,
    sink: &mut BatchSink<'_>,
) -> Result<(), RetrievalError> {
    let mut order = rows.to_vec();
    order.sort_by_key(|&i| std::cmp::Reverse(tokens[i].len()));
    let pb = bar(rows.len(), "captions");
    for chunk in order.chunks(batch.max(1)) {
        let batch_rows: Vec<&[u32]> = chunk.iter().map(|&i| tokens[i].as_slice()).collect();
        let v = encode_texts(model, &collate_texts(&batch_rows), device);
        sink(chunk, &v)?;
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    Ok(())
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
    let mut dim = 0;
    let mut images: Vec<f32> = Vec::new();
    let all: Vec<usize> = (0..names.len()).collect();
    encode_image_rows(model, img_db, &all, batch, device, &mut |chunk, v| {
        if dim == 0 {
            dim = v.len() / chunk.len();
            images = vec![0f32; names.len() * dim];
        }
        for (row, &i) in v.chunks(dim).zip(chunk) {
            images[i * dim..(i + 1) * dim].copy_from_slice(row);
        }
        Ok(())
    })?;
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
            let mut texts = vec![0f32; tokens.len() * dim];
            let all: Vec<usize> = (0..tokens.len()).collect();
            encode_text_rows(model, &tokens, &all, batch, device, &mut |chunk, v| {
                for (row, &i) in v.chunks(dim).zip(chunk) {
                    texts[i * dim..(i + 1) * dim].copy_from_slice(row);
                }
                Ok(())
            })?;
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
            selection: Some((*img_db.options()).into()),
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
