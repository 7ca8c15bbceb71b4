//! Converted model directories: a burn record plus the resolved configs, written atomically,
//! so that later commands need only `--checkpoint DIR`.
//!
//! ```text
//! DIR/config.json       {"format": "lightningdot-burn", "img": {...}, "txt": {...}, "project_dim": 768, "precision": "f32", ...}
//! DIR/img_config.json   image tower config (UniterConfig JSON form)
//! DIR/txt_config.json   text tower config (HF BertConfig JSON form)
//! DIR/model.mpk         burn NamedMpk record (f32, or f16 with `--half`)
//! DIR/vocab.txt         the text tower's WordPiece vocabulary (and/or tokenizer.json), copied
//!                       when `--txt-config` was a directory holding one (queries need it)
//! ```

use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::record::{FullPrecisionSettings, HalfPrecisionSettings, NamedMpkFileRecorder};
use serde::{Deserialize, Serialize};

use super::checkpoint::Checkpoint;
use super::error::ConvertError;
use super::load::{LoadOptions, LoadReport, load_biencoder};
use crate::model::{BiEncoder, BiEncoderConfig, EncoderConfig};

const FORMAT: &str = "lightningdot-burn";
const RECORD: &str = "model";

/// Element type of the stored record (compute is always f32 after loading).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordPrecision {
    F32,
    F16,
}

/// `DIR/config.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelDir {
    pub format: String,
    #[serde(flatten)]
    pub config: BiEncoderConfig,
    pub precision: RecordPrecision,
    /// The `.pt` file it was converted from.
    #[serde(default)]
    pub source: Option<String>,
    /// Its detected layout.
    #[serde(default)]
    pub source_layout: Option<String>,
}

impl ModelDir {
    /// True when `path` looks like a converted directory.
    pub fn is_model_dir(path: &Path) -> bool {
        path.is_dir() && path.join("config.json").is_file()
    }

    /// Reads `DIR/config.json`.
    pub fn open(dir: &Path) -> Result<Self, ConvertError> {
        let err = |reason: String| ConvertError::ModelDir {
            path: dir.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(dir.join("config.json"))
            .map_err(|e| err(format!("cannot read config.json: {e}")))?;
        let md: ModelDir =
            serde_json::from_str(&text).map_err(|e| err(format!("bad config.json: {e}")))?;
        if md.format != FORMAT {
            return Err(err(format!(
                "config.json format is {:?}, expected {FORMAT:?}",
                md.format
            )));
        }
        Ok(md)
    }

    /// Loads the model record onto `device` (query/key/value fused on inference backends).
    pub fn load<B: Backend>(
        &self,
        dir: &Path,
        device: &B::Device,
    ) -> Result<BiEncoder<B>, ConvertError> {
        let model = BiEncoder::<B>::new(&self.config, device);
        load_record(model, &dir.join(RECORD), self.precision, device)
            .map(BiEncoder::fuse_qkv)
            .map_err(|e| ConvertError::ModelDir {
                path: dir.display().to_string(),
                reason: format!("cannot load model.mpk: {e}"),
            })
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_string()
}

/// Tokenizer files a text config directory may hold; `convert` copies them into the model dir.
pub const VOCAB_FILES: [&str; 2] = ["vocab.txt", "tokenizer.json"];

/// Writes `model` and its configs into `out` atomically: everything goes to a sibling temp
/// directory first, which is renamed into place only when complete.
pub fn write_model_dir<B: Backend>(
    model: BiEncoder<B>,
    config: &BiEncoderConfig,
    precision: RecordPrecision,
    source: Option<(&Path, &str)>,
    out: &Path,
    overwrite: bool,
) -> Result<(), ConvertError> {
    write_model_dir_with_vocab(model, config, precision, source, out, overwrite, None)
}

/// [`write_model_dir`], also copying the [`VOCAB_FILES`] found in `vocab_dir` (a text config
/// directory) into the model directory, so that later commands can tokenize queries.
pub fn write_model_dir_with_vocab<B: Backend>(
    model: BiEncoder<B>,
    config: &BiEncoderConfig,
    precision: RecordPrecision,
    source: Option<(&Path, &str)>,
    out: &Path,
    overwrite: bool,
    vocab_dir: Option<&Path>,
) -> Result<(), ConvertError> {
    write_dir_atomically(out, overwrite, |tmp| {
        fill_model_dir(tmp, model, config, precision, source, vocab_dir)
    })
}

/// Writes config.json, the tower configs, the record and the vocabulary files into `dir`.
pub(super) fn fill_model_dir<B: Backend>(
    dir: &Path,
    model: BiEncoder<B>,
    config: &BiEncoderConfig,
    precision: RecordPrecision,
    source: Option<(&Path, &str)>,
    vocab_dir: Option<&Path>,
) -> Result<(), String> {
    let md = ModelDir {
        format: FORMAT.into(),
        config: config.clone(),
        precision,
        source: source.map(|(p, _)| p.display().to_string()),
        source_layout: source.map(|(_, l)| l.to_string()),
    };
    write_json(&dir.join("config.json"), &md)?;
    write_json(&dir.join("img_config.json"), &config.img)?;
    write_json(&dir.join("txt_config.json"), &config.txt)?;
    save_record(model, &dir.join(RECORD), precision)?;
    for name in VOCAB_FILES {
        if let Some(src) = vocab_dir.map(|d| d.join(name)).filter(|p| p.is_file()) {
            std::fs::copy(&src, dir.join(name))
                .map_err(|e| format!("cannot copy {}: {e}", src.display()))?;
        }
    }
    Ok(())
}

/// Saves any module as a NamedMpk record at `file` (`.mpk` is appended by burn).
pub(super) fn save_record<B: Backend, M: Module<B>>(
    module: M,
    file: &Path,
    precision: RecordPrecision,
) -> Result<(), String> {
    let res = match precision {
        RecordPrecision::F32 => module.save_file(
            file.to_path_buf(),
            &NamedMpkFileRecorder::<FullPrecisionSettings>::new(),
        ),
        RecordPrecision::F16 => module.save_file(
            file.to_path_buf(),
            &NamedMpkFileRecorder::<HalfPrecisionSettings>::new(),
        ),
    };
    res.map_err(|e| format!("cannot write record {}: {e}", file.display()))
}

/// Loads any module's NamedMpk record from `file`.
pub(super) fn load_record<B: Backend, M: Module<B>>(
    module: M,
    file: &Path,
    precision: RecordPrecision,
    device: &B::Device,
) -> Result<M, String> {
    let res = match precision {
        RecordPrecision::F32 => module.load_file(
            file.to_path_buf(),
            &NamedMpkFileRecorder::<FullPrecisionSettings>::new(),
            device,
        ),
        RecordPrecision::F16 => module.load_file(
            file.to_path_buf(),
            &NamedMpkFileRecorder::<HalfPrecisionSettings>::new(),
            device,
        ),
    };
    res.map_err(|e| first_line(&e.to_string()))
}

/// Creates model directory `out` atomically ([`crate::fsio::write_dir_atomically`]), every
/// failure reported as a [`ConvertError::ModelDir`] naming `out`.
pub fn write_dir_atomically(
    out: &Path,
    overwrite: bool,
    fill: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<(), ConvertError> {
    crate::fsio::write_dir_atomically(out, overwrite, fill).map_err(|e| ConvertError::ModelDir {
        path: out.display().to_string(),
        reason: e.unwrap_or_else(|fs| fs.reason()),
    })
}

/// Pretty JSON with a trailing newline.
pub(super) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), String> {
    crate::fsio::write_json(path, value).map_err(|e| e.to_string())
}

/// Where the model comes from and how to size it (`--checkpoint`, `--img-config`, …).
#[derive(Debug, Clone, Default)]
pub struct ModelSource {
    /// A `.pt` file or a converted directory.
    pub checkpoint: PathBuf,
    /// Image tower config (JSON file, or `uniter-base`); default: config/img_base.json sizes.
    pub img_config: Option<String>,
    /// Text tower config (JSON file, directory with config.json, or `bert-base-cased`).
    pub txt_config: Option<String>,
    /// `encode_proj` size; inferred from the checkpoint when `None`.
    pub project_dim: Option<usize>,
    pub options: LoadOptions,
}

impl ModelSource {
    /// Resolves the configs for a `.pt` file (defaults = the released base sizes).
    pub fn resolve_config(&self, ckpt: &Checkpoint) -> Result<BiEncoderConfig, ConvertError> {
        let img = match &self.img_config {
            Some(s) => EncoderConfig::resolve(s)?,
            None => EncoderConfig::uniter_base(),
        };
        let txt = match &self.txt_config {
            Some(s) => EncoderConfig::resolve(s)?,
            None => EncoderConfig::bert_base_cased(),
        };
        let project_dim = self.project_dim.unwrap_or_else(|| infer_project_dim(ckpt));
        Ok(BiEncoderConfig {
            img,
            txt,
            project_dim,
        })
    }

    /// Loads the model from a `.pt` file or a converted directory (query/key/value fused on
    /// inference backends: [`BiEncoder::fuse_qkv`]).
    pub fn load<B: Backend>(
        &self,
        device: &B::Device,
    ) -> Result<(BiEncoder<B>, BiEncoderConfig, Option<LoadReport>), ConvertError> {
        if ModelDir::is_model_dir(&self.checkpoint) {
            let md = ModelDir::open(&self.checkpoint)?;
            let model = md.load(&self.checkpoint, device)?;
            return Ok((model, md.config, None));
        }
        if self.checkpoint.is_dir() {
            return Err(ConvertError::ModelDir {
                path: self.checkpoint.display().to_string(),
                reason: "directory has no config.json (not made by `lightningdot convert`)".into(),
            });
        }
        let ckpt = Checkpoint::open(&self.checkpoint)?;
        let cfg = self.resolve_config(&ckpt)?;
        let (model, report) = load_biencoder(&ckpt, &cfg, device, self.options)?;
        Ok((model.fuse_qkv(), cfg, Some(report)))
    }
}

/// `encode_proj.3.weight` is `[project_dim, 2H]`; no head means project_dim 0.
pub fn infer_project_dim(ckpt: &Checkpoint) -> usize {
    let (tensors, _) = ckpt.biencoder_tensors();
    tensors
        .get("txt_model.encode_proj.3.weight")
        .or_else(|| tensors.get("img_model.encode_proj.3.weight"))
        .map(|t| t.shape()[0])
        .unwrap_or(0)
}
