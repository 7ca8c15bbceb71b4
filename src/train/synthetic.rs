//! A small synthetic retrieval task in the UNITER formats, for tests and benchmarks: every
//! image has a random "signature" that all its region features carry (plus noise), and every
//! caption of an image contains that image's two content words (in random order, among
//! filler tokens). Captions are thus predictable from the regions, and a model that learns the
//! task reaches text→image recall@1 near 1, against `1/images` by chance.
//!
//! Written with [`crate::data::writer`]: one image db shared by the splits, a txt_db per split
//! (train, dev, test: fresh captions of the same images), a tiny model config for each tower
//! and a fine-tune config in the reference's form.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::data::{HostTrainBatch, SplitMix64};
use crate::data::writer::{ImgDbEncoding, encode_txt_record, write_img_db, write_lmdb};
use crate::data::{
    DataError, FloatDtype, IMG_FEAT_DIM, IMG_POS_DIM, ImgDump, NdArray, RegionFeatures, TxtRecord,
    collate_images, collate_texts,
};

/// Size of the synthetic task.
#[derive(Debug, Clone)]
pub struct SyntheticSpec {
    pub images: usize,
    /// Regions per image.
    pub boxes: usize,
    pub train_captions_per_image: usize,
    pub eval_captions_per_image: usize,
    /// Std of the per-region noise around the image signature (signature entries are N(0, 1)).
    pub noise: f32,
    pub seed: u64,
}

impl Default for SyntheticSpec {
    fn default() -> Self {
        Self {
            images: 32,
            boxes: 10,
            train_captions_per_image: 8,
            eval_captions_per_image: 4,
            noise: 0.5,
            seed: 7,
        }
    }
}

/// First content-word id (ids 104..128 are the tiny vocabulary's words, as in the fixtures).
const WORD0: u32 = 104;
const WORDS: u32 = 24;
/// Filler ids come from the `[unusedN]` range.
const FILLER0: u32 = 1;
const FILLERS: u32 = 99;

pub(crate) fn gaussian(rng: &mut SplitMix64) -> f32 {
    // Box–Muller.
    let u1 = ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let u2 = ((rng.next_u64() >> 11) as f64) / (1u64 << 53) as f64;
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

fn uniform(rng: &mut SplitMix64) -> f32 {
    ((rng.next_u64() >> 40) as f32) / (1u64 << 24) as f32
}

/// The two content words of every image (distinct unordered pairs).
fn content_words(images: usize, rng: &mut SplitMix64) -> Vec<(u32, u32)> {
    let mut pairs: Vec<(u32, u32)> = (0..WORDS)
        .flat_map(|a| (a + 1..WORDS).map(move |b| (WORD0 + a, WORD0 + b)))
        .collect();
    rng.shuffle(&mut pairs);
    pairs.into_iter().cycle().take(images).collect()
}

pub(crate) fn image_name(i: usize) -> String {
    format!("synthetic_{i:012}.npz")
}

fn write_images(dir: &Path, spec: &SyntheticSpec, rng: &mut SplitMix64) -> Result<(), DataError> {
    let mut records = Vec::with_capacity(spec.images);
    for i in 0..spec.images {
        let signature: Vec<f32> = (0..IMG_FEAT_DIM).map(|_| gaussian(rng)).collect();
        let mut features = Vec::with_capacity(spec.boxes * IMG_FEAT_DIM);
        let mut boxes = Vec::with_capacity(spec.boxes * 6);
        for _ in 0..spec.boxes {
            features.extend(signature.iter().map(|s| s + spec.noise * gaussian(rng)));
            boxes.extend(random_box(rng));
        }
        records.push((
            image_name(i),
            image_dump(features, boxes, soft_labels(i, spec.boxes)),
        ));
    }
    write_image_db(dir, &records)
}

/// An image db directory as UNITER lays it out: the `conf_th 0.2 / max 100 / min 10` feature
/// LMDB and its `nbb_*.json` (boxes per image).
pub(crate) fn write_image_db(dir: &Path, records: &[(String, ImgDump)]) -> Result<(), DataError> {
    write_img_db(
        &dir.join("feat_th0.2_max100_min10"),
        records,
        ImgDbEncoding::Msgpack,
    )?;
    let nbb: serde_json::Map<String, Value> = records
        .iter()
        .map(|(name, dump)| {
            let boxes = dump
                .fields
                .iter()
                .find(|(f, _)| f == "norm_bb")
                .map_or(0, |(_, a)| a.shape[0]);
            (name.clone(), json!(boxes))
        })
        .collect();
    write_file(
        &dir.join("nbb_th0.2_max100_min10.json"),
        &Value::Object(nbb).to_string(),
    )
}

/// One image's region fields as the synthetic dbs store them (f16, `conf` 0.9): `features`
/// `[boxes, IMG_FEAT_DIM]`, `norm_bb` `[boxes, 6]`, `soft_labels` `[boxes, CLASSES]`.
pub(crate) fn image_dump(features: Vec<f32>, boxes: Vec<f32>, soft_labels: Vec<f32>) -> ImgDump {
    let n = boxes.len() / 6;
    let arr = |shape: Vec<usize>, data: Vec<f32>| NdArray {
        shape,
        data,
        dtype: FloatDtype::F16,
    };
    ImgDump {
        fields: vec![
            ("norm_bb".into(), arr(vec![n, 6], boxes)),
            ("features".into(), arr(vec![n, IMG_FEAT_DIM], features)),
            ("conf".into(), arr(vec![n], vec![0.9; n])),
            ("soft_labels".into(), arr(vec![n, CLASSES], soft_labels)),
        ],
    }
}

/// A random box inside the unit square, as UNITER's `norm_bb`: `x1 y1 x2 y2 w h`.
pub(crate) fn random_box(rng: &mut SplitMix64) -> [f32; 6] {
    let (x1, y1) = (0.5 * uniform(rng), 0.5 * uniform(rng));
    let (x2, y2) = (x1 + 0.5 * uniform(rng), y1 + 0.5 * uniform(rng));
    [x1, y1, x2, y2, x2 - x1, y2 - y1]
}

/// Detector classes of the soft labels (background + 1600, as BUTD).
const CLASSES: usize = 1601;

/// Soft labels of image `i`'s regions, learnable from the signature: 0.2 background, 0.6 on
/// the image's class, 0.2 on the next one (no random draws: the other fields' streams stay
/// as they were before soft labels existed).
pub(crate) fn soft_labels(i: usize, boxes: usize) -> Vec<f32> {
    let class = 1 + (i * 37) % (CLASSES - 2);
    let mut row = vec![0f32; CLASSES];
    row[0] = 0.2;
    row[class] = 0.6;
    row[class + 1] = 0.2;
    row.repeat(boxes)
}

pub(crate) fn write_file(path: &Path, text: &str) -> Result<(), DataError> {
    std::fs::write(path, text).map_err(|e| DataError::Io {
        path: path.to_path_buf(),
        source: e,
    })
}

fn write_captions(
    dir: &Path,
    words: &[(u32, u32)],
    per_image: usize,
    first_id: usize,
    rng: &mut SplitMix64,
) -> Result<(), DataError> {
    let mut captions = Vec::new();
    for (i, &(a, b)) in words.iter().enumerate() {
        for _ in 0..per_image {
            let fillers = 1 + rng.below(3);
            let mut tokens: Vec<u32> = vec![a, b];
            tokens.extend((0..fillers).map(|_| FILLER0 + rng.below(FILLERS as usize) as u32));
            rng.shuffle(&mut tokens);
            captions.push(Caption {
                image: image_name(i),
                input_ids: tokens,
                raw: None,
            });
        }
    }
    write_txt_db(dir, &captions, first_id)
}

/// One caption of a synthetic txt_db.
pub(crate) struct Caption {
    pub image: String,
    /// WordPiece ids without [CLS]/[SEP].
    pub input_ids: Vec<u32>,
    pub raw: Option<String>,
}

/// A txt_db as UNITER's `prepro.py` lays it out (records keyed by caption id, numbered from
/// `first_id`, plus `id2len.json`, `txt2img.json`, `img2txts.json`, `meta.json`), in the
/// tiny vocabulary's id ranges.
pub(crate) fn write_txt_db(
    dir: &Path,
    captions: &[Caption],
    first_id: usize,
) -> Result<(), DataError> {
    let mut records = Vec::new();
    let (mut id2len, mut txt2img, mut img2txts) = (
        serde_json::Map::new(),
        serde_json::Map::new(),
        serde_json::Map::new(),
    );
    for (n, c) in captions.iter().enumerate() {
        let id = (first_id + n).to_string();
        id2len.insert(id.clone(), json!(c.input_ids.len()));
        txt2img.insert(id.clone(), json!(c.image));
        if let Value::Array(ids) = img2txts
            .entry(c.image.clone())
            .or_insert_with(|| Value::Array(Vec::new()))
        {
            ids.push(json!(id));
        }
        let rec = TxtRecord {
            id: id.clone(),
            input_ids: c.input_ids.clone(),
            img_fname: c.image.clone(),
            raw: c.raw.clone(),
        };
        records.push((id, encode_txt_record(&rec)?));
    }
    write_lmdb(dir, &records)?;
    for (f, v) in [
        ("id2len.json", id2len),
        ("txt2img.json", txt2img),
        ("img2txts.json", img2txts),
    ] {
        write_file(&dir.join(f), &Value::Object(v).to_string())?;
    }
    write_file(
        &dir.join("meta.json"),
        r#"{"UNK": 100, "CLS": 101, "SEP": 102, "MASK": 103, "v_range": [104, 128], "bert": "synthetic"}"#,
    )
}

/// The tiny encoder config both towers use (the fixtures' sizes: H 64, 2 layers, 4 heads).
pub fn tiny_encoder_config() -> Value {
    json!({
        "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
        "hidden_size": 64, "initializer_range": 0.02, "intermediate_size": 256,
        "layer_norm_eps": 1e-12, "max_position_embeddings": 64, "num_attention_heads": 4,
        "num_hidden_layers": 2, "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": 128
    })
}

/// Writes the task into `dir` and returns the fine-tune config's path (a pre-training config
/// over the same dbs: `crate::pretrain::synthetic`). `overrides` (a JSON
/// object) replaces fields of the written config.
pub fn write_synthetic(
    dir: &Path,
    spec: &SyntheticSpec,
    overrides: &Value,
) -> Result<PathBuf, DataError> {
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    let mut rng = SplitMix64::new(spec.seed, 11, 0);
    write_images(&dir.join("img"), spec, &mut rng)?;
    let words = content_words(spec.images, &mut rng);
    let n = spec.images;
    write_captions(
        &dir.join("txt_train.db"),
        &words,
        spec.train_captions_per_image,
        0,
        &mut rng,
    )?;
    let dev0 = n * spec.train_captions_per_image;
    write_captions(
        &dir.join("txt_dev.db"),
        &words,
        spec.eval_captions_per_image,
        dev0,
        &mut rng,
    )?;
    let test0 = dev0 + n * spec.eval_captions_per_image;
    write_captions(
        &dir.join("txt_test.db"),
        &words,
        spec.eval_captions_per_image,
        test0,
        &mut rng,
    )?;
    write_fine_tune_config(dir, overrides)
}

/// The tiny towers' configs and a fine-tune config in the reference's form over the dbs
/// `img`, `txt_train.db`, `txt_dev.db` and `txt_test.db` of `dir`; `overrides` (a JSON object)
/// replaces fields. Returns the config's path.
pub(crate) fn write_fine_tune_config(dir: &Path, overrides: &Value) -> Result<PathBuf, DataError> {
    let cfg = tiny_encoder_config().to_string();
    write_file(&dir.join("img_config.json"), &cfg)?;
    write_file(&dir.join("txt_config.json"), &cfg)?;
    let mut config = json!({
        "txt_model_type": "bert-base", "txt_model_config": "txt_config.json",
        "img_model_type": "uniter-base", "img_model_config": "img_config.json",
        "train_txt_dbs": ["txt_train.db"], "train_img_dbs": ["img"],
        "val_txt_db": "txt_dev.db", "val_img_db": "img",
        "test_txt_db": "txt_test.db", "test_img_db": "img",
        "project_dim": 32, "train_batch_size": 16, "valid_batch_size": 64,
        "gradient_accumulation_steps": 1, "learning_rate": 1e-3, "num_train_epochs": 25,
        "seed": 42, "output_dir": dir.join("out"), "max_txt_len": 60,
        "conf_th": 0.2, "max_bb": 100, "min_bb": 10, "num_bb": 36,
        "num_hard_negatives": 0, "hard_negatives_sampling": "none", "fp16": false
    });
    apply_overrides(&mut config, overrides);
    let path = dir.join("ft_config.json");
    write_file(
        &path,
        &serde_json::to_string_pretty(&config).unwrap_or_default(),
    )?;
    Ok(path)
}

/// Replaces the fields of the JSON object `config` named in `overrides` (null removes one).
pub fn apply_overrides(config: &mut Value, overrides: &Value) {
    if let (Some(c), Some(o)) = (config.as_object_mut(), overrides.as_object()) {
        for (k, v) in o {
            if v.is_null() {
                c.remove(k);
            } else {
                c.insert(k.clone(), v.clone());
            }
        }
    }
}

/// A fine-tuning batch of `pairs` random pairs at a fixed size, for throughput measurements
/// (benchmarks, `lightningdot bench`): captions of `txt_len` word-piece ids in
/// `1000..28000` (inside BERT-base-cased's vocabulary, clear of its special tokens) and images
/// of `boxes` regions with features and boxes uniform in `[0, 1)`. No content relation: only
/// the shapes matter for timing.
pub fn random_pairs(
    pairs: usize,
    txt_len: usize,
    boxes: usize,
    seed: u64,
) -> Result<HostTrainBatch, DataError> {
    let mut rng = SplitMix64::new(seed, 0, 0);
    let texts: Vec<Vec<u32>> = (0..pairs)
        .map(|_| {
            (0..txt_len)
                .map(|_| 1000 + rng.below(27000) as u32)
                .collect()
        })
        .collect();
    let regions: Vec<RegionFeatures> = (0..pairs)
        .map(|_| RegionFeatures {
            features: (0..boxes * IMG_FEAT_DIM)
                .map(|_| uniform(&mut rng))
                .collect(),
            boxes: (0..boxes * IMG_POS_DIM)
                .map(|_| uniform(&mut rng))
                .collect(),
            num_bb: boxes,
        })
        .collect();
    let refs: Vec<&RegionFeatures> = regions.iter().collect();
    Ok(HostTrainBatch {
        text: collate_texts(&texts),
        images: collate_images(&refs)?,
        queries: pairs,
    })
}
