//! The fixture index (tiny model, every image and caption of ../shared/fixtures/data), the
//! expected top-10s of the reference evaluation, and the raw caption queries.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use lightningdot::data::{ImgDb, ImgDbOptions, Tokenizer, TxtDb};
use lightningdot::device::CpuBackend;
use lightningdot::retrieval::{
    BuildOptions, Pipeline, PipelineOptions, QueryEncoder, StoredIndex, build_index, model_info,
};
use serde_json::Value;

use crate::common::{fixtures, tiny_source};

pub const CHECKPOINT: &str = "checkpoints/biencoder.best.pt";

pub fn img_db_dir() -> PathBuf {
    fixtures().join("data/img_db/flickr_tiny")
}

pub fn txt_db_dir() -> PathBuf {
    fixtures().join("data/txt_db/itm_flickr_tiny_test_tiny-cased.db")
}

pub fn vocab_dir() -> PathBuf {
    fixtures().join("config/txt_model_config")
}

/// Builds `CARGO_TARGET_TMPDIR/<name>` once per test process with `options`.
pub fn build(name: &str, options: BuildOptions) -> PathBuf {
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let device = Default::default();
    let (model, cfg, _) = tiny_source(CHECKPOINT).load::<CpuBackend>(&device).unwrap();
    let img_db = ImgDb::open(img_db_dir(), ImgDbOptions::default()).unwrap();
    let txt_db = TxtDb::open(txt_db_dir()).unwrap();
    let options = BuildOptions {
        overwrite: true,
        ..options
    };
    let report = build_index(
        &model,
        model_info(&fixtures().join(CHECKPOINT), &cfg),
        &img_db,
        Some(&txt_db),
        &out,
        &options,
        &device,
    )
    .unwrap();
    assert_eq!((report.images, report.texts, report.dim), (20, 100, 32));
    out
}

/// The f32 fixture index with captions, built once per process.
pub fn index_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| build("fixture-index-f32", BuildOptions::default()))
        .clone()
}

/// A pipeline over `dir` with the fixture model and vocabulary.
pub fn pipeline_with(dir: &PathBuf, options: PipelineOptions) -> Pipeline<CpuBackend> {
    let device: burn::prelude::Device<CpuBackend> = Default::default();
    let (model, cfg, _) = tiny_source(CHECKPOINT).load::<CpuBackend>(&device).unwrap();
    let tok = Tokenizer::from_path(vocab_dir()).unwrap();
    let encoder = QueryEncoder::new(model, &cfg, tok, device);
    Pipeline::new(encoder, StoredIndex::open(dir).unwrap(), options, device).unwrap()
}

pub fn pipeline() -> Pipeline<CpuBackend> {
    pipeline_with(&index_dir(), PipelineOptions::default())
}

/// expected/eval_ranks_top10.json.
pub fn expected() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("expected/eval_ranks_top10.json")).unwrap(),
    )
    .unwrap()
}

pub fn ids(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// (caption id, raw sentence) of every caption in data/annotations.
pub fn caption_queries() -> Vec<(String, String)> {
    let text =
        std::fs::read_to_string(fixtures().join("data/annotations/flickr_tiny_test.json")).unwrap();
    let images: Value = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    for image in images.as_array().unwrap() {
        for s in image["sentences"].as_array().unwrap() {
            out.push((
                s["sentid"].as_u64().unwrap().to_string(),
                s["raw"].as_str().unwrap().to_string(),
            ));
        }
    }
    assert_eq!(out.len(), 100);
    out
}
