//! UNITER retrieval checkpoints (`UniterForImageTextRetrieval`) → [`UniterItm`] (spec §3.5, §8).
//!
//! | PyTorch                                   | burn (`UniterItm`)                     |
//! |-------------------------------------------|----------------------------------------|
//! | `uniter.…` (ChenRocks/UNITER) or `bert.…` (LightningDOT's vendored copy) | backbone, mapped as in keymap.rs |
//! | `rank_output.{weight,bias}` `[1, H]`      | `rank_output` (transposed)             |
//! | `itm_output.{weight,bias}` `[2, H]`       | `itm_output` (optional)                |
//! | `cls.*`, `feat_regress.*`, …              | ignored (pre-training heads)           |
//!
//! Both reference loaders only *log* missing keys, so a file with the other prefix silently runs
//! with a random encoder (fixtures README, uniter_itm "Checkpoint"). Here either prefix is
//! accepted and a missing encoder key is an error. A file without `rank_output` (a model
//! fine-tuned only on ITM) gets `rank_output ← itm_output[1]` as UNITER's `inf_itm.py` does.
//!
//! A converted directory holds the same model as a burn record:
//!
//! ```text
//! DIR/config.json          {"format": "lightningdot-uniter-itm", "uniter": {...}, "itm_head": true, "precision": "f32", ...}
//! DIR/uniter_config.json   the UniterConfig JSON
//! DIR/model.mpk            burn NamedMpk record
//! ```

use std::path::{Path, PathBuf};

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::checkpoint::{Checkpoint, CheckpointTensor, Layout};
use super::error::ConvertError;
use super::keymap::uniter_itm_key_to_burn;
use super::load::{
    LoadOptions, LoadReport, apply_plan, model_params, plan, select_tensors, summarize,
};
use super::model_dir::{
    RecordPrecision, load_record, save_record, write_dir_atomically, write_json,
};
use crate::model::{EncoderConfig, UniterItm};

const FORMAT: &str = "lightningdot-uniter-itm";
const RECORD: &str = "model";
/// Head size of every released UNITER (base 768/12, large 1024/16); used only when a bare `.pt`
/// comes without a config.
const HEAD_DIM: usize = 64;

/// What loading a UNITER checkpoint did.
#[derive(Debug, Clone, Default)]
pub struct UniterLoadReport {
    /// Keys applied, ignored, unexpected and missing (as for the bi-encoder).
    pub load: LoadReport,
    /// The backbone prefix found in the file (`uniter.` or `bert.`).
    pub prefix: String,
    /// `rank_output` was absent and was initialised from `itm_output` row 1.
    pub rank_from_itm: bool,
}

/// The backbone prefix of a UNITER file: `uniter.` (upstream) or `bert.` (vendored).
pub fn uniter_prefix(ckpt: &Checkpoint) -> Result<&'static str, ConvertError> {
    let err = |reason: String| ConvertError::NotUniter {
        path: ckpt.path.display().to_string(),
        reason,
    };
    if ckpt.layout != Layout::Uniter {
        return Err(err(format!(
            "it holds a {}",
            ckpt.layout.describe().split(',').next().unwrap_or("")
        )));
    }
    let has = |p: &str| ckpt.tensors.keys().any(|k| k.starts_with(p));
    match (has("uniter.embeddings."), has("bert.embeddings.")) {
        (true, false) => Ok("uniter."),
        (false, true) => Ok("bert."),
        (true, true) => Err(err(
            "it has both `uniter.embeddings.*` and `bert.embeddings.*` keys; cannot tell which is the encoder".into(),
        )),
        (false, false) => Err(err(format!(
            "no `uniter.embeddings.*` or `bert.embeddings.*` key; first keys: {}",
            first_keys(ckpt)
        ))),
    }
}

fn first_keys(ckpt: &Checkpoint) -> String {
    ckpt.tensors
        .keys()
        .take(3)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ")
}

/// Sizes read off the tensor shapes, for a bare `.pt` without a config. The head count cannot
/// be read from shapes; it is `hidden / 64` as in UNITER-base and -large.
pub fn infer_uniter_config(ckpt: &Checkpoint) -> Result<EncoderConfig, ConvertError> {
    let prefix = uniter_prefix(ckpt)?;
    let err = |reason: String| ConvertError::NotUniter {
        path: ckpt.path.display().to_string(),
        reason: format!("{reason}; pass a UniterConfig JSON (--rerank-config)"),
    };
    let shape = |k: &str| {
        ckpt.tensors
            .get(&format!("{prefix}{k}"))
            .map(CheckpointTensor::shape)
            .filter(|s| s.len() == 2)
            .ok_or_else(|| err(format!("cannot infer the config: no 2-D {prefix}{k}")))
    };
    let word = shape("embeddings.word_embeddings.weight")?;
    let pos = shape("embeddings.position_embeddings.weight")?;
    let types = shape("embeddings.token_type_embeddings.weight")?;
    let ffn = shape("encoder.layer.0.intermediate.dense.weight")?;
    let layer_prefix = format!("{prefix}encoder.layer.");
    let layers = ckpt
        .tensors
        .keys()
        .filter_map(|k| k.strip_prefix(&layer_prefix))
        .filter_map(|r| r.split('.').next()?.parse::<usize>().ok())
        .max()
        .map_or(0, |m| m + 1);
    let hidden = word[1];
    if !hidden.is_multiple_of(HEAD_DIM) {
        return Err(err(format!(
            "hidden size {hidden} is not a multiple of {HEAD_DIM}, so the head count is unknown"
        )));
    }
    let cfg = EncoderConfig {
        vocab_size: word[0],
        hidden_size: hidden,
        num_hidden_layers: layers,
        num_attention_heads: hidden / HEAD_DIM,
        intermediate_size: ffn[0],
        max_position_embeddings: pos[0],
        type_vocab_size: types[0],
        ..EncoderConfig::uniter_base()
    };
    cfg.validate().map_err(err)?;
    Ok(cfg)
}

/// Builds a [`UniterItm`] of `cfg` and fills it from a UNITER retrieval checkpoint with either
/// prefix. Strict: every backbone parameter and `rank_output` (or `itm_output` to derive it
/// from) must be present with the right shape, unless `opts.allow_partial`.
pub fn load_uniter_itm<B: Backend>(
    ckpt: &Checkpoint,
    cfg: &EncoderConfig,
    device: &B::Device,
    opts: LoadOptions,
) -> Result<(UniterItm<B>, UniterLoadReport), ConvertError> {
    let prefix = uniter_prefix(ckpt)?;
    let has = |p: &str| ckpt.tensors.keys().any(|k| k.starts_with(p));
    let itm_head = has("itm_output.");
    let rank_from_itm = !has("rank_output.") && itm_head;
    let model = UniterItm::<B>::new(cfg, itm_head, device);
    let params = model_params(&model);
    let map = |k: &str| uniter_itm_key_to_burn(k, prefix);
    let (tensors, ignored) = select_tensors(ckpt, map);
    let entries = tensors.iter().map(|(k, t)| (k.clone(), t.shape()));
    let plan = plan(
        &params,
        entries,
        map,
        |p| rank_from_itm && p.starts_with("rank_output."),
        opts,
    )?;
    let (mut model, applied) = apply_plan(model, &ckpt.path, &plan, &tensors)?;
    if rank_from_itm {
        tracing::info!(
            "{}: no rank_output; initialised from itm_output row 1 (UNITER init_output)",
            ckpt.path.display()
        );
        model = model.init_rank_from_itm();
    }
    if !ignored.is_empty() {
        tracing::info!(
            "{}: ignored {} key(s) that are not part of the retrieval model ({})",
            ckpt.path.display(),
            ignored.len(),
            summarize(&ignored)
        );
    }
    Ok((
        model,
        UniterLoadReport {
            load: LoadReport {
                applied,
                ignored,
                unexpected: plan.unexpected,
                missing: plan.missing,
            },
            prefix: prefix.to_string(),
            rank_from_itm,
        },
    ))
}

/// `DIR/config.json` of a converted cross-encoder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UniterItmDir {
    pub format: String,
    /// Backbone sizes (UniterConfig form).
    pub uniter: EncoderConfig,
    /// The record has an `itm_output` head.
    pub itm_head: bool,
    pub precision: RecordPrecision,
    /// The `.pt` file it was converted from.
    #[serde(default)]
    pub source: Option<String>,
    /// Backbone prefix of that file.
    #[serde(default)]
    pub source_prefix: Option<String>,
}

impl UniterItmDir {
    /// True when `dir/config.json` names this format.
    pub fn is_uniter_dir(dir: &Path) -> bool {
        std::fs::read_to_string(dir.join("config.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .is_some_and(|v| v["format"] == FORMAT)
    }

    /// Reads `DIR/config.json`.
    pub fn open(dir: &Path) -> Result<Self, ConvertError> {
        let err = |reason: String| ConvertError::ModelDir {
            path: dir.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(dir.join("config.json"))
            .map_err(|e| err(format!("cannot read config.json: {e}")))?;
        let md: Self =
            serde_json::from_str(&text).map_err(|e| err(format!("bad config.json: {e}")))?;
        if md.format != FORMAT {
            return Err(err(format!(
                "config.json format is {:?}, expected {FORMAT:?}",
                md.format
            )));
        }
        md.uniter.validate().map_err(err)?;
        Ok(md)
    }

    /// Loads the record onto `device`.
    pub fn load<B: Backend>(
        &self,
        dir: &Path,
        device: &B::Device,
    ) -> Result<UniterItm<B>, ConvertError> {
        let model = UniterItm::<B>::new(&self.uniter, self.itm_head, device);
        load_record(model, &dir.join(RECORD), self.precision, device).map_err(|e| {
            ConvertError::ModelDir {
                path: dir.display().to_string(),
                reason: format!("cannot load model.mpk: {e}"),
            }
        })
    }
}

/// Writes a converted cross-encoder directory atomically (temp directory, then rename).
pub fn write_uniter_dir<B: Backend>(
    model: UniterItm<B>,
    config: &EncoderConfig,
    precision: RecordPrecision,
    source: Option<(&Path, &str)>,
    out: &Path,
    overwrite: bool,
) -> Result<(), ConvertError> {
    let md = UniterItmDir {
        format: FORMAT.into(),
        uniter: config.clone(),
        itm_head: model.itm_output.is_some(),
        precision,
        source: source.map(|(p, _)| p.display().to_string()),
        source_prefix: source.map(|(_, p)| p.to_string()),
    };
    write_dir_atomically(out, overwrite, |tmp| {
        write_json(&tmp.join("config.json"), &md)?;
        write_json(&tmp.join("uniter_config.json"), config)?;
        save_record(model, &tmp.join(RECORD), precision)
    })
}

/// Where a cross-encoder comes from (`--rerank-checkpoint`, `--rerank-config`).
#[derive(Debug, Clone, Default)]
pub struct UniterSource {
    /// A UNITER `.pt` file (`uniter.` or `bert.` prefix); a directory written by `convert`; or a
    /// directory holding `model.pt` + `config.json` (the layout of LightningDOT's KD teacher).
    pub checkpoint: PathBuf,
    /// UniterConfig JSON, `uniter-base` or `uniter-large`. Default: the directory's config, a
    /// `config.json` next to the `.pt` file, else sizes inferred from the tensor shapes.
    pub config: Option<String>,
    pub options: LoadOptions,
}

impl UniterSource {
    /// The `.pt` file to read, for a file or a `model.pt` directory.
    fn torch_file(&self) -> Result<PathBuf, ConvertError> {
        let p = &self.checkpoint;
        if !p.is_dir() {
            return Ok(p.clone());
        }
        let f = p.join("model.pt");
        if f.is_file() {
            Ok(f)
        } else {
            Err(ConvertError::ModelDir {
                path: p.display().to_string(),
                reason: "neither a converted cross-encoder (config.json with format \"lightningdot-uniter-itm\") nor a directory holding model.pt".into(),
            })
        }
    }

    /// The config for `ckpt`: `--rerank-config`, else a UniterConfig `config.json` beside the
    /// file, else inferred from shapes. Returns it with where it came from.
    pub fn resolve_config(
        &self,
        ckpt: &Checkpoint,
    ) -> Result<(EncoderConfig, String), ConvertError> {
        if let Some(spec) = &self.config {
            return Ok((EncoderConfig::resolve(spec)?, spec.clone()));
        }
        if let Some(side) = ckpt.path.parent().map(|d| d.join("config.json"))
            && side.is_file()
        {
            match EncoderConfig::from_json_file(&side) {
                Ok(cfg) => return Ok((cfg, side.display().to_string())),
                Err(e) => tracing::debug!("{} is not a UniterConfig: {e}", side.display()),
            }
        }
        Ok((
            infer_uniter_config(ckpt)?,
            "inferred from tensor shapes".into(),
        ))
    }

    /// Loads the cross-encoder (query/key/value fused on inference backends); the report is
    /// `None` for a converted directory.
    pub fn load<B: Backend>(
        &self,
        device: &B::Device,
    ) -> Result<(UniterItm<B>, EncoderConfig, Option<UniterLoadReport>), ConvertError> {
        if self.checkpoint.is_dir() && UniterItmDir::is_uniter_dir(&self.checkpoint) {
            let md = UniterItmDir::open(&self.checkpoint)?;
            if let Some(spec) = &self.config {
                let cfg = EncoderConfig::resolve(spec)?;
                if cfg != md.uniter {
                    return Err(ConvertError::ModelDir {
                        path: self.checkpoint.display().to_string(),
                        reason: format!(
                            "was converted with a different config than {spec} (drop the config flag)"
                        ),
                    });
                }
            }
            let model = md.load(&self.checkpoint, device)?;
            return Ok((model.fuse_qkv(), md.uniter, None));
        }
        let file = self.torch_file()?;
        let ckpt = Checkpoint::open(&file).map_err(|e| match e {
            ConvertError::UnknownLayout { path, sample } => ConvertError::NotUniter {
                path,
                reason: format!(
                    "no key starts with `uniter.` or `bert.` (the encoder prefixes); first keys: {sample}"
                ),
            },
            other => other,
        })?;
        let (cfg, from) = self.resolve_config(&ckpt)?;
        tracing::info!(
            "cross-encoder config ({from}): hidden {}, {} layers, {} heads",
            cfg.hidden_size,
            cfg.num_hidden_layers,
            cfg.num_attention_heads
        );
        let (model, report) = load_uniter_itm(&ckpt, &cfg, device, self.options)?;
        Ok((model.fuse_qkv(), cfg, Some(report)))
    }
}
