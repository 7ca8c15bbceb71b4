//! The pre-training model `BiEncoderForPretraining` from and to files (spec §3.4, §6).
//!
//! * `.pt` in the LightningDot.pt layout: the `bert.*` bi-encoder and every head, strictly; the
//!   tied aliases (`cls.predictions.decoder.weight`, `feat_regress.weight`) must be present with
//!   the tower tensor's shape and are not loaded twice.
//! * `.pt` in another bi-encoder layout (a fine-tuned checkpoint) or a converted directory: the
//!   bi-encoder, with fresh heads (PyTorch-default init, as the reference builds them).
//! * A pre-training directory: a model directory (so `train`, `eval` and `index` read it as a
//!   bi-encoder) plus `heads.mpk`, the heads' record.

use std::collections::BTreeMap;
use std::path::Path;

use burn::prelude::*;

use super::checkpoint::{Checkpoint, CheckpointTensor, Layout};
use super::error::ConvertError;
use super::keymap::{TIED_PRETRAIN_KEYS, pretrain_key_to_burn};
use super::load::{LoadOptions, LoadReport, apply_plan, load_biencoder, model_params, plan};
use super::model_dir::{
    ModelDir, ModelSource, RecordPrecision, fill_model_dir, load_record, save_record,
    write_dir_atomically,
};
use crate::model::{BiEncoderConfig, BiEncoderForPretraining, PretrainHeads};

/// The heads' record inside a pre-training directory.
pub const HEADS_RECORD: &str = "heads";

/// Where the heads of a loaded pre-training model came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadsSource {
    /// Read from the file / directory.
    Loaded,
    /// Freshly initialised (the source held a bi-encoder only).
    Initialised,
}

/// Builds a [`BiEncoderForPretraining`] of `cfg` from a checkpoint of the pre-training layout
/// (strict), or from any other bi-encoder layout with fresh heads.
pub fn load_pretraining<B: Backend>(
    ckpt: &Checkpoint,
    cfg: &BiEncoderConfig,
    device: &B::Device,
    opts: LoadOptions,
) -> Result<(BiEncoderForPretraining<B>, LoadReport, HeadsSource), ConvertError> {
    if ckpt.layout != Layout::Pretraining {
        let (bert, report) = load_biencoder::<B>(ckpt, cfg, device, opts)?;
        let model = BiEncoderForPretraining::with_biencoder(bert, cfg, device);
        return Ok((model.zero_mask_row(), report, HeadsSource::Initialised));
    }
    let model = BiEncoderForPretraining::<B>::new(cfg, device);
    let params = model_params(&model);
    let mut tensors: BTreeMap<String, &CheckpointTensor> = BTreeMap::new();
    for (k, t) in &ckpt.tensors {
        if let Some((_, tower_key)) = TIED_PRETRAIN_KEYS.iter().find(|(h, _)| h == k) {
            check_tied(ckpt, k, tower_key)?;
            continue;
        }
        tensors.insert(k.clone(), t);
    }
    let entries = tensors.iter().map(|(k, t)| (k.clone(), t.shape()));
    let plan = plan(&params, entries, pretrain_key_to_burn, |_| false, opts)?;
    let (model, applied) = apply_plan(model, &ckpt.path, &plan, &tensors)?;
    let report = LoadReport {
        applied,
        ignored: TIED_PRETRAIN_KEYS
            .iter()
            .map(|(h, _)| h.to_string())
            .collect(),
        unexpected: plan.unexpected,
        missing: plan.missing,
    };
    Ok((model.zero_mask_row(), report, HeadsSource::Loaded))
}

/// A tied alias must be there (the reference saves both names) with the tower tensor's shape.
fn check_tied(ckpt: &Checkpoint, head_key: &str, tower_key: &str) -> Result<(), ConvertError> {
    let head = ckpt.tensors.get(head_key).map(|t| t.shape());
    let tower = ckpt.tensors.get(tower_key).map(|t| t.shape());
    match (head, tower) {
        (Some(h), Some(t)) if h == t => Ok(()),
        (Some(h), Some(t)) => Err(ConvertError::ShapeMismatch {
            key: head_key.to_string(),
            found: h,
            expected: t,
        }),
        // The missing tower key is reported by the strict plan.
        _ => Ok(()),
    }
}

/// Loads a pre-training model from `source.checkpoint`: a `.pt` file (any bi-encoder layout), a
/// pre-training directory, or a plain model directory (fresh heads).
pub fn load_pretraining_source<B: Backend>(
    source: &ModelSource,
    device: &B::Device,
) -> Result<(BiEncoderForPretraining<B>, BiEncoderConfig, HeadsSource), ConvertError> {
    load_pretraining_source_with(source, |c| c, device)
}

/// [`load_pretraining_source`], passing the resolved config through `adjust` before the model
/// is built (e.g. to set the run's dropout).
pub fn load_pretraining_source_with<B: Backend>(
    source: &ModelSource,
    adjust: impl Fn(BiEncoderConfig) -> BiEncoderConfig,
    device: &B::Device,
) -> Result<(BiEncoderForPretraining<B>, BiEncoderConfig, HeadsSource), ConvertError> {
    let path = &source.checkpoint;
    if ModelDir::is_model_dir(path) {
        let mut md = ModelDir::open(path)?;
        md.config = adjust(md.config);
        let bert = md.load::<B>(path, device)?;
        let model = BiEncoderForPretraining::with_biencoder(bert, &md.config, device);
        let heads_file = path.join(format!("{HEADS_RECORD}.mpk"));
        if !heads_file.is_file() {
            return Ok((model.zero_mask_row(), md.config, HeadsSource::Initialised));
        }
        let heads = load_record(model.heads, &path.join(HEADS_RECORD), md.precision, device)
            .map_err(|e| ConvertError::ModelDir {
                path: path.display().to_string(),
                reason: format!("cannot load {HEADS_RECORD}.mpk: {e}"),
            })?;
        let model = BiEncoderForPretraining {
            bert: model.bert,
            heads,
        };
        return Ok((model.zero_mask_row(), md.config, HeadsSource::Loaded));
    }
    if path.is_dir() {
        // The usual one-line error for a directory without config.json.
        source.load::<B>(device)?;
    }
    let ckpt = Checkpoint::open(path)?;
    let cfg = adjust(source.resolve_config(&ckpt)?);
    let (model, _, heads) = load_pretraining(&ckpt, &cfg, device, source.options)?;
    Ok((model, cfg, heads))
}

/// Writes a pre-training directory atomically: the bi-encoder as a model directory plus
/// `heads.mpk`.
pub fn write_pretrain_dir<B: Backend>(
    model: BiEncoderForPretraining<B>,
    config: &BiEncoderConfig,
    precision: RecordPrecision,
    out: &Path,
    overwrite: bool,
    vocab_dir: Option<&Path>,
) -> Result<(), ConvertError> {
    let BiEncoderForPretraining { bert, heads } = model;
    write_dir_atomically(out, overwrite, |tmp| {
        fill_model_dir(tmp, bert, config, precision, None, vocab_dir)?;
        save_heads(heads, tmp, precision)
    })
}

fn save_heads<B: Backend>(
    heads: PretrainHeads<B>,
    dir: &Path,
    precision: RecordPrecision,
) -> Result<(), String> {
    save_record(heads, &dir.join(HEADS_RECORD), precision)
}
