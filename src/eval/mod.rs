//! Evaluation like the reference's eval_itm.py (spec §7): encode every caption and every unique
//! image of a split once, exact inner-product search both ways, recall@1/5/10.

pub mod config;
pub mod recall;

use std::collections::HashMap;

use burn::prelude::*;

use crate::data::{DataError, ImgDb, ItmEvalDataset, TxtDb};
use crate::encode::{Progress, encode_images_by_size, encode_texts_by_length};
use crate::model::BiEncoder;
use crate::search::FlatIndex;
pub use config::{EvalConfig, SplitPaths};
pub use recall::{KS, Rankings, Recall, SplitRecall};

/// Why an evaluation could not run.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("eval config: {0}")]
    Config(String),
    #[error(transparent)]
    Data(#[from] DataError),
}

/// The reference searches the top 100 (faiss k=100); recall only needs 10, rankings keep 10.
pub const TOP_K: usize = 10;

/// Vectors of one split: captions in dataset (id2len) order, unique images in first-occurrence
/// order, each row-major `[n, dim]`.
#[derive(Debug, Clone)]
pub struct SplitEmbeddings {
    pub txt_ids: Vec<String>,
    pub img_ids: Vec<String>,
    pub txt: Vec<f32>,
    pub img: Vec<f32>,
    pub dim: usize,
    /// Caption id → image file name.
    pub txt2img: HashMap<String, String>,
}

/// Opens a split's databases; a caption whose image is missing is an error naming both.
pub fn open_split(paths: &SplitPaths, cfg: &EvalConfig) -> Result<(TxtDb, ImgDb), EvalError> {
    let txt = TxtDb::open(&paths.txt_db)?;
    let img = ImgDb::open(&paths.img_db, cfg.img_db_options())?;
    Ok((txt, img))
}

/// Encodes every caption and every unique image of a split (with progress bars).
pub fn embed_split<B: Backend>(
    model: &BiEncoder<B>,
    txt_db: &TxtDb,
    img_db: &ImgDb,
    batch_size: usize,
    device: &B::Device,
) -> Result<SplitEmbeddings, EvalError> {
    let ds = ItmEvalDataset::new(txt_db, img_db)?;
    Ok(SplitEmbeddings::encode(
        model, &ds, img_db, batch_size, true, device,
    )?)
}

impl SplitEmbeddings {
    /// Vectors of every caption and unique image of `ds` (whose images are in `img_db`);
    /// batches are formed by size ([`crate::encode`]), rows return to dataset order.
    pub fn encode<B: Backend>(
        model: &BiEncoder<B>,
        ds: &ItmEvalDataset,
        img_db: &ImgDb,
        batch_size: usize,
        progress: bool,
        device: &B::Device,
    ) -> Result<Self, DataError> {
        let show = |what| match progress {
            true => Progress::Bar(what),
            false => Progress::Hidden,
        };
        let items = ds.items();
        let texts: Vec<&[u32]> = items.iter().map(|it| it.input_ids.as_slice()).collect();
        let (txt, dim) =
            encode_texts_by_length(model, &texts, batch_size, show("captions"), device);
        let images = ds.unique_images();
        let (img, _) =
            encode_images_by_size(model, img_db, images, batch_size, show("images"), device)?;
        Ok(SplitEmbeddings {
            txt_ids: items.iter().map(|it| it.txt_id.clone()).collect(),
            img_ids: images.to_vec(),
            txt,
            img,
            dim,
            txt2img: items
                .iter()
                .map(|it| (it.txt_id.clone(), it.img_fname.clone()))
                .collect(),
        })
    }
}

/// Exact search both ways and recall; also returns every query's top 10.
pub fn evaluate<B: Backend>(emb: &SplitEmbeddings, device: &B::Device) -> (SplitRecall, Rankings) {
    let img_index = FlatIndex::<B>::new(&emb.img, emb.dim, device);
    let txt_hits = img_index.search(&emb.txt, TOP_K);
    let txt_index = FlatIndex::<B>::new(&emb.txt, emb.dim, device);
    let img_hits = txt_index.search(&emb.img, TOP_K);
    recall::compute(
        &emb.txt_ids,
        &emb.img_ids,
        &emb.txt2img,
        &txt_hits,
        &img_hits,
    )
}

/// A printable table of one split's recall (percent, like the seed README).
pub fn format_table(split: &str, r: &SplitRecall) -> String {
    let p = |x: f64| format!("{:6.2}", 100.0 * x);
    format!(
        "{split}: {} captions, {} images\n  {:<34} R@1 {}  R@5 {}  R@10 {}\n  {:<34} R@1 {}  R@5 {}  R@10 {}",
        r.n_texts,
        r.n_images,
        "image retrieval (text -> image)",
        p(r.image_retrieval.r1),
        p(r.image_retrieval.r5),
        p(r.image_retrieval.r10),
        "text retrieval (image -> text)",
        p(r.text_retrieval.r1),
        p(r.text_retrieval.r5),
        p(r.text_retrieval.r10),
    )
}

/// Writes the embeddings (and their score matrix) as safetensors, names and metadata as in
/// fixtures/expected/eval_embeddings.safetensors (`txt_emb`, `img_emb`, `scores_txt_x_img`;
/// id order in the `txt_ids` / `img_ids` metadata). `prefix` separates splits (`dev.`).
pub fn embeddings_tensors(
    emb: &SplitEmbeddings,
    prefix: &str,
) -> Vec<(String, crate::tensor_io::HostTensor<f32>)> {
    use crate::tensor_io::HostTensor;
    let (nt, ni, d) = (emb.txt_ids.len(), emb.img_ids.len(), emb.dim);
    let mut scores = vec![0f32; nt * ni];
    for t in 0..nt {
        let q = &emb.txt[t * d..(t + 1) * d];
        for i in 0..ni {
            scores[t * ni + i] = q
                .iter()
                .zip(&emb.img[i * d..(i + 1) * d])
                .map(|(a, b)| a * b)
                .sum();
        }
    }
    vec![
        (
            format!("{prefix}txt_emb"),
            HostTensor {
                shape: vec![nt, d],
                values: emb.txt.clone(),
            },
        ),
        (
            format!("{prefix}img_emb"),
            HostTensor {
                shape: vec![ni, d],
                values: emb.img.clone(),
            },
        ),
        (
            format!("{prefix}scores_txt_x_img"),
            HostTensor {
                shape: vec![nt, ni],
                values: scores,
            },
        ),
    ]
}

/// Metadata for [`embeddings_tensors`].
pub fn embeddings_metadata(emb: &SplitEmbeddings, prefix: &str) -> Vec<(String, String)> {
    vec![
        (
            format!("{prefix}txt_ids"),
            serde_json::to_string(&emb.txt_ids).unwrap_or_default(),
        ),
        (
            format!("{prefix}img_ids"),
            serde_json::to_string(&emb.img_ids).unwrap_or_default(),
        ),
    ]
}
