//! Loading the BUTD detector's `pytorch_model.bin` (the reference's
//! `GeneralizedRCNN.from_pretrained(dir)`, behaviour 16 of the fixture README): strict, every
//! key of the state dict accounted for, `gamma`/`beta` accepted for `weight`/`bias`.
//!
//! | PyTorch (`GeneralizedRCNN.state_dict()`)                       | burn ([`DetectorModel`])                  |
//! |----------------------------------------------------------------|-------------------------------------------|
//! | `backbone.stem.conv1.weight`, `….res{2,3,4}.{i}.{conv1..3,shortcut}.weight`, `roi_heads.res5.…` | `….conv.weight` (a [`ConvBn`](crate::model::detector::ConvBn)) |
//! | `….norm.{weight,bias,running_mean,running_var}`                | the same path                             |
//! | `….norm.num_batches_tracked` (int64 scalars)                   | required, no parameter (eval-mode BN)    |
//! | `proposal_generator.*`, `roi_heads.box_predictor.*`            | the same path (Linear weights transposed) |

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use burn::prelude::*;
use regex::Regex;

use super::checkpoint::{Checkpoint, Layout};
use super::error::ConvertError;
use super::keymap::gamma_beta_to_weight_bias;
use super::load::{LoadOptions, LoadReport, apply_plan, model_params, plan, select_tensors};
use super::model_dir::write_dir_atomically;
use crate::model::detector::{Detector, DetectorConfig, DetectorModel};

/// The reference's file names inside a detector directory.
pub const DETECTOR_WEIGHTS: &str = "pytorch_model.bin";
pub const DETECTOR_CONFIG: &str = "config.yaml";

const NUM_BATCHES_TRACKED: &str = ".num_batches_tracked";

static CONV_BN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^(backbone\.stem\.conv1|backbone\.res\d\.\d+\.(?:conv\d|shortcut)|roi_heads\.res5\.\d+\.(?:conv\d|shortcut))\.weight$",
    )
    .expect("static regex")
});

/// Maps a detector state-dict key to the burn parameter path; `None` for keys that have no
/// parameter (`num_batches_tracked`, checked separately).
pub fn detector_key_to_burn(key: &str) -> Option<String> {
    if key.ends_with(NUM_BATCHES_TRACKED) {
        return None;
    }
    // `from_pretrained` renames old `gamma`/`beta` names before its strict load.
    let key = gamma_beta_to_weight_bias(key);
    Some(CONV_BN.replace(&key, "$1.conv.weight").into_owned())
}

/// The `num_batches_tracked` keys a strict load requires: one per BatchNorm of `model`.
fn required_num_batches_tracked<B: Backend>(model: &DetectorModel<B>) -> BTreeSet<String> {
    model_params(model)
        .keys()
        .filter_map(|p| p.strip_suffix(".running_mean"))
        .map(|p| format!("{p}{NUM_BATCHES_TRACKED}"))
        .collect()
}

/// Checks the `num_batches_tracked` keys of a file against the model's BatchNorms.
fn check_num_batches_tracked<B: Backend>(
    model: &DetectorModel<B>,
    keys: impl IntoIterator<Item = String>,
    opts: LoadOptions,
) -> Result<(Vec<String>, Vec<String>), ConvertError> {
    let required = required_num_batches_tracked(model);
    let present: BTreeSet<String> = keys
        .into_iter()
        .filter(|k| k.ends_with(NUM_BATCHES_TRACKED))
        .collect();
    let missing: Vec<String> = required.difference(&present).cloned().collect();
    let unexpected: Vec<String> = present.difference(&required).cloned().collect();
    if !opts.allow_partial {
        if let Some(first) = unexpected.first() {
            return Err(ConvertError::UnexpectedKeys {
                count: unexpected.len(),
                first: first.clone(),
            });
        }
        if let Some(first) = missing.first() {
            return Err(ConvertError::MissingKeys {
                count: missing.len(),
                first: first.clone(),
            });
        }
    }
    Ok((unexpected, missing))
}

/// Fills a [`DetectorModel`] of `cfg` from a detector state dict.
pub fn load_detector<B: Backend>(
    ckpt: &Checkpoint,
    cfg: &DetectorConfig,
    device: &B::Device,
    opts: LoadOptions,
) -> Result<(DetectorModel<B>, LoadReport), ConvertError> {
    if ckpt.layout != Layout::Detector {
        return Err(ConvertError::UnknownLayout {
            path: ckpt.path.display().to_string(),
            sample: format!(
                "not a detector ({}); expected backbone.*, proposal_generator.*, roi_heads.* keys",
                ckpt.layout.describe()
            ),
        });
    }
    let model = DetectorModel::<B>::new(cfg, device);
    let (mut unexpected, mut missing) =
        check_num_batches_tracked(&model, ckpt.tensors.keys().cloned(), opts)?;
    let params = model_params(&model);
    let (tensors, _) = select_tensors(ckpt, detector_key_to_burn);
    let entries = tensors.iter().map(|(k, t)| (k.clone(), t.shape()));
    let plan = plan(&params, entries, detector_key_to_burn, |_| false, opts)?;
    let (model, applied) = apply_plan(model, &ckpt.path, &plan, &tensors)?;
    unexpected.extend(plan.unexpected.iter().cloned());
    missing.extend(plan.missing.iter().cloned());
    Ok((
        model,
        LoadReport {
            applied,
            ignored: Vec::new(),
            unexpected,
            missing,
        },
    ))
}

/// Checks that the detector of `cfg` accounts for every `(key, shape)` of a state-dict
/// manifest (and nothing else): the full-size coverage test. Returns the matched keys,
/// `num_batches_tracked` included.
pub fn detector_manifest_coverage<B: Backend>(
    cfg: &DetectorConfig,
    entries: Vec<(String, Vec<usize>)>,
    device: &B::Device,
) -> Result<usize, ConvertError> {
    let model = DetectorModel::<B>::new(cfg, device);
    let opts = LoadOptions::default();
    check_num_batches_tracked(&model, entries.iter().map(|e| e.0.clone()), opts)?;
    let counted = entries
        .iter()
        .filter(|e| e.0.ends_with(NUM_BATCHES_TRACKED))
        .count();
    let params = model_params(&model);
    let weights = entries
        .into_iter()
        .filter(|e| !e.0.ends_with(NUM_BATCHES_TRACKED));
    let plan = plan(&params, weights, detector_key_to_burn, |_| false, opts)?;
    Ok(counted + plan.matched_len())
}

/// Where a detector comes from: a directory with `pytorch_model.bin` + `config.yaml` (the
/// layout of unc-nlp/frcnn-vg-finetuned), or the `.bin` file with `config.yaml` beside it.
#[derive(Debug, Clone, Default)]
pub struct DetectorSource {
    pub path: PathBuf,
    /// A config.yaml elsewhere (default: beside the weights).
    pub config: Option<PathBuf>,
    pub options: LoadOptions,
}

impl DetectorSource {
    /// The weights file and the config file.
    pub fn files(&self) -> (PathBuf, PathBuf) {
        let weights = if self.path.is_dir() {
            self.path.join(DETECTOR_WEIGHTS)
        } else {
            self.path.clone()
        };
        let config = self.config.clone().unwrap_or_else(|| {
            weights
                .parent()
                .unwrap_or(Path::new("."))
                .join(DETECTOR_CONFIG)
        });
        (weights, config)
    }

    /// Reads the config.
    pub fn config(&self) -> Result<DetectorConfig, ConvertError> {
        let (_, path) = self.files();
        let err = |reason: String| ConvertError::ModelDir {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| err(format!("cannot read ({e})")))?;
        DetectorConfig::from_yaml(&text).map_err(|e| err(e.to_string()))
    }

    /// Loads config and weights onto `device`.
    pub fn load<B: Backend>(
        &self,
        device: &B::Device,
    ) -> Result<(Detector<B>, LoadReport), ConvertError> {
        let config = self.config()?;
        let (weights, _) = self.files();
        let ckpt = Checkpoint::open(&weights)?;
        let (model, report) = load_detector(&ckpt, &config, device, self.options)?;
        Ok((
            Detector {
                model,
                config,
                device: device.clone(),
            },
            report,
        ))
    }
}

/// Writes a detector directory (`pytorch_model.bin` + `config.yaml`, the reference's layout)
/// atomically from a checked source: what `convert` produces for a detector file.
pub fn write_detector_dir(
    source: &DetectorSource,
    out: &Path,
    overwrite: bool,
) -> Result<(), ConvertError> {
    let (weights, config) = source.files();
    write_dir_atomically(out, overwrite, |tmp| {
        for (from, name) in [(&weights, DETECTOR_WEIGHTS), (&config, DETECTOR_CONFIG)] {
            std::fs::copy(from, tmp.join(name))
                .map_err(|e| format!("cannot copy {}: {e}", from.display()))?;
        }
        Ok(())
    })
}
