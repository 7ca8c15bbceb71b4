//! The model a run starts from (spec §5): a whole bi-encoder (`biencoder_checkpoint`:
//! LightningDot.pt, a fine-tuned `.pt`, or a model directory), or one checkpoint per tower — a
//! UNITER file for the image tower (`img_checkpoint`) and a BERT state_dict for the text tower.
//! Dropout is set to the run's value (0.1, as the reference's `init_encoder` forces).

use std::path::Path;

use burn::module::Param;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::prelude::*;

use super::TrainError;
use super::config::{Init, TrainSettings};
use crate::conversion::{
    Checkpoint, CheckpointTensor, ConvertError, Layout, LoadOptions, ModelDir, ModelSource,
    load_biencoder, load_image_tower,
};
use crate::model::{
    BiEncoder, BiEncoderConfig, EncoderConfig, ImageEncoder, ProjectionHead, TextEncoder,
};

/// `cfg` with both towers' dropout probabilities set to `p`.
pub fn with_dropout(mut cfg: BiEncoderConfig, p: f64) -> BiEncoderConfig {
    for e in [&mut cfg.img, &mut cfg.txt] {
        e.hidden_dropout_prob = p;
        e.attention_probs_dropout_prob = p;
    }
    cfg
}

/// Where a fresh run's vocabulary files come from (copied into every model directory it
/// writes): a bi-encoder directory, else a text-config directory.
pub fn vocab_source(init: &Init, txt_config: Option<&str>) -> Option<std::path::PathBuf> {
    match init {
        Init::Biencoder(p) if p.is_dir() => Some(p.clone()),
        _ => txt_config
            .map(std::path::PathBuf::from)
            .filter(|p| p.is_dir()),
    }
}

/// What the initial bi-encoder is built from (the fields of a fine-tune or pre-training config
/// that name weights and sizes).
#[derive(Debug, Clone)]
pub struct ModelInit<'a> {
    pub init: &'a Init,
    pub img_config: Option<&'a str>,
    pub txt_config: Option<&'a str>,
    pub project_dim: Option<usize>,
    pub dropout: f64,
}

impl<'a> From<&'a TrainSettings> for ModelInit<'a> {
    fn from(s: &'a TrainSettings) -> Self {
        Self {
            init: &s.init,
            img_config: s.img_config.as_deref(),
            txt_config: s.txt_config.as_deref(),
            project_dim: s.project_dim,
            dropout: s.dropout,
        }
    }
}

/// Builds the initial model on `device`; also returns a one-line description of the source.
pub fn initial_model<B: Backend>(
    s: &TrainSettings,
    device: &B::Device,
) -> Result<(BiEncoder<B>, BiEncoderConfig, String), TrainError> {
    initial_model_with(&ModelInit::from(s), device)
}

/// [`initial_model`] from its parts.
pub fn initial_model_with<B: Backend>(
    s: &ModelInit<'_>,
    device: &B::Device,
) -> Result<(BiEncoder<B>, BiEncoderConfig, String), TrainError> {
    match s.init {
        Init::Biencoder(path) => load_biencoder_source(s, path, device),
        Init::Towers { img, txt } => {
            let img_cfg = match s.img_config {
                Some(c) => EncoderConfig::resolve(c).map_err(ConvertError::from)?,
                None => EncoderConfig::uniter_base(),
            };
            let txt_cfg = match s.txt_config {
                Some(c) => EncoderConfig::resolve(c).map_err(ConvertError::from)?,
                None => EncoderConfig::bert_base_cased(),
            };
            let project_dim = s.project_dim.unwrap_or(0);
            let cfg = with_dropout(
                BiEncoderConfig {
                    img: img_cfg,
                    txt: txt_cfg,
                    project_dim,
                },
                s.dropout,
            );
            let mut described = Vec::new();
            let image = match img {
                Some(p) => {
                    let ckpt = Checkpoint::open(p)?;
                    let (mut tower, _) = load_image_tower::<B>(
                        &ckpt,
                        &cfg.img,
                        project_dim,
                        device,
                        LoadOptions::default(),
                    )?;
                    tower.projection = (project_dim > 0)
                        .then(|| bert_projection(cfg.img.hidden_size, project_dim, device));
                    described.push(format!("image tower from {}", p.display()));
                    tower
                }
                None => {
                    described.push("image tower random".into());
                    random_image_tower(&cfg, device)
                }
            };
            let text = match txt {
                Some(p) => {
                    described.push(format!("text tower from {}", p.display()));
                    load_text_tower(p, &cfg, device)?
                }
                None => {
                    described.push("text tower random".into());
                    let mut t = TextEncoder::new(&cfg.txt, project_dim, device);
                    t.projection = (project_dim > 0)
                        .then(|| bert_projection(cfg.txt.hidden_size, project_dim, device));
                    t
                }
            };
            if project_dim > 0 {
                described.push(format!("projection heads ({project_dim}) random"));
            }
            Ok((BiEncoder { image, text }, cfg, described.join(", ")))
        }
    }
}

fn load_biencoder_source<B: Backend>(
    s: &ModelInit<'_>,
    path: &Path,
    device: &B::Device,
) -> Result<(BiEncoder<B>, BiEncoderConfig, String), TrainError> {
    if ModelDir::is_model_dir(path) {
        let mut md = ModelDir::open(path)?;
        md.config = with_dropout(md.config, s.dropout);
        let model = md.load::<B>(path, device)?;
        return Ok((
            model,
            md.config,
            format!("model directory {}", path.display()),
        ));
    }
    let source = ModelSource {
        checkpoint: path.to_path_buf(),
        img_config: s.img_config.map(str::to_string),
        txt_config: s.txt_config.map(str::to_string),
        project_dim: s.project_dim,
        options: LoadOptions::default(),
    };
    if path.is_dir() {
        // Let the loader produce its usual error for a directory without config.json.
        source.load::<B>(device)?;
    }
    let ckpt = Checkpoint::open(path)?;
    let cfg = with_dropout(source.resolve_config(&ckpt)?, s.dropout);
    let (model, report) = load_biencoder::<B>(&ckpt, &cfg, device, LoadOptions::default())?;
    let what = format!(
        "{} ({}; {} tensors{})",
        path.display(),
        ckpt.layout.describe(),
        report.applied,
        if report.ignored.is_empty() {
            String::new()
        } else {
            format!(", {} non-bi-encoder keys ignored", report.ignored.len())
        }
    );
    Ok((model, cfg, what))
}

fn random_image_tower<B: Backend>(cfg: &BiEncoderConfig, device: &B::Device) -> ImageEncoder<B> {
    let mut t = ImageEncoder::new(&cfg.img, cfg.project_dim, device);
    t.projection = (cfg.project_dim > 0)
        .then(|| bert_projection(cfg.img.hidden_size, cfg.project_dim, device));
    t
}

/// A projection head initialised like BERT's `init_weights`: weights N(0, 0.02), biases 0,
/// LayerNorm 1/0 (what the reference's fresh `encode_proj` gets).
pub fn bert_projection<B: Backend>(
    hidden: usize,
    project_dim: usize,
    device: &B::Device,
) -> ProjectionHead<B> {
    let linear = |i: usize, o: usize| -> Linear<B> {
        let mut l = LinearConfig::new(i, o)
            .with_initializer(Initializer::Normal {
                mean: 0.0,
                std: 0.02,
            })
            .init(device);
        l.bias = Some(Param::from_tensor(Tensor::zeros([o], device)));
        l
    };
    let mut head = ProjectionHead::new(hidden, project_dim, device);
    head.dense = linear(hidden, 2 * hidden);
    head.output = linear(2 * hidden, project_dim);
    head
}

/// Loads a BERT state_dict (`BertModel`'s flat keys, or `bert.`-prefixed `BertForPreTraining`
/// keys with heads) into a text tower. The backbone keys are those of a UNITER image tower minus
/// the region embeddings, so the image-tower loader does the mapping and shape checks.
fn load_text_tower<B: Backend>(
    path: &Path,
    cfg: &BiEncoderConfig,
    device: &B::Device,
) -> Result<TextEncoder<B>, TrainError> {
    let ckpt = match Checkpoint::open(path) {
        Ok(c) => c,
        Err(ConvertError::UnknownLayout { .. }) => flat_bert(path)?,
        Err(e) => return Err(e.into()),
    };
    if ckpt.layout != Layout::Uniter {
        return Err(TrainError::Config(format!(
            "txt_checkpoint {}: expected a BERT state_dict, found {}",
            path.display(),
            ckpt.layout.describe()
        )));
    }
    let (tower, report) = load_image_tower::<B>(
        &ckpt,
        &cfg.txt,
        cfg.project_dim,
        device,
        LoadOptions {
            allow_partial: true,
        },
    )?;
    if let Some(k) = report.unexpected.first() {
        return Err(ConvertError::UnexpectedKeys {
            count: report.unexpected.len(),
            first: format!("{k} (in {})", path.display()),
        }
        .into());
    }
    let missing: Vec<&String> = report
        .missing
        .iter()
        .filter(|p| !p.starts_with("img_embeddings.") && !p.starts_with("projection."))
        .collect();
    if let Some(k) = missing.first() {
        return Err(ConvertError::MissingKeys {
            count: missing.len(),
            first: format!("text tower {k} (from {})", path.display()),
        }
        .into());
    }
    Ok(TextEncoder {
        embeddings: tower.embeddings,
        encoder: tower.encoder,
        pooler: tower.pooler,
        projection: (cfg.project_dim > 0)
            .then(|| bert_projection(cfg.txt.hidden_size, cfg.project_dim, device)),
    })
}

/// A `BertModel.state_dict()` (no prefix) viewed as a `bert.`-prefixed backbone. Only called
/// after `Checkpoint::open` has verified the file's storages.
fn flat_bert(path: &Path) -> Result<Checkpoint, TrainError> {
    let shown = path.display().to_string();
    let reader = std::panic::catch_unwind(|| burn_store::pytorch::PytorchReader::new(path))
        .map_err(|_| ConvertError::NotTorch {
            path: shown.clone(),
            reason: "the reader crashed on this file".into(),
        })?
        .map_err(|e| ConvertError::NotTorch {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
    let tensors: std::collections::BTreeMap<String, CheckpointTensor> = reader
        .into_tensors()
        .into_iter()
        .map(|(k, snapshot)| (format!("bert.{k}"), CheckpointTensor { snapshot }))
        .collect();
    if !tensors.contains_key("bert.embeddings.word_embeddings.weight") {
        return Err(ConvertError::UnknownLayout {
            path: shown,
            sample: tensors
                .keys()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
        }
        .into());
    }
    Ok(Checkpoint {
        path: path.to_path_buf(),
        format: crate::conversion::TorchFormat::Other,
        layout: Layout::Uniter,
        tensors,
    })
}
