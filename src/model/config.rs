//! Encoder configurations read from the original JSON forms (spec §2.8).
//!
//! Both towers are BERT-shaped; the image tower's `UniterConfig` JSON (config/img_base.json) and the
//! text tower's HuggingFace `config.json` carry the same size fields, so one type reads both.

use serde::{Deserialize, Serialize};
use std::path::Path;

/// `[CLS]` id used by the image tower's one-token text part (hard-coded in the reference collate).
pub const IMAGE_CLS_TOKEN_ID: i64 = 101;
pub use crate::region_dims::{IMG_FEAT_DIM, IMG_POS_DIM};
/// LayerNorm epsilon used everywhere (the reference hard-codes it, whatever the JSON says).
pub const LAYER_NORM_EPS: f64 = 1e-12;

/// Sizes of one BERT-shaped encoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncoderConfig {
    /// Word-embedding rows (28996 for bert-base-cased).
    pub vocab_size: usize,
    /// Model width H.
    pub hidden_size: usize,
    /// Number of post-LN Transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads; `hidden_size` must divide evenly.
    pub num_attention_heads: usize,
    /// FFN inner size.
    pub intermediate_size: usize,
    /// Position-embedding rows.
    pub max_position_embeddings: usize,
    /// Token-type rows (0 = text, 1 = image in UNITER).
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    /// Dropout after embeddings and dense outputs (training only).
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities (training only).
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    /// Activation; only the erf GELU of the reference is supported.
    #[serde(default = "default_act")]
    pub hidden_act: String,
}

fn default_type_vocab() -> usize {
    2
}
fn default_dropout() -> f64 {
    0.1
}
fn default_act() -> String {
    "gelu".into()
}

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("config {path} is not a valid encoder config: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("no config.json in directory {0}")]
    NoConfigInDir(String),
    #[error("config {path}: {reason}")]
    Invalid { path: String, reason: String },
}

impl EncoderConfig {
    /// The HF hub `bert-base-cased` sizes (what the reference's `txt_model_config` names).
    pub fn bert_base_cased() -> Self {
        Self {
            vocab_size: 28996,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            hidden_act: "gelu".into(),
        }
    }

    /// UNITER-base as in config/img_base.json (the image tower of every released model).
    pub fn uniter_base() -> Self {
        Self::bert_base_cased()
    }

    /// UNITER-large (hidden 1024, 24 layers, 16 heads, FFN 4096).
    pub fn uniter_large() -> Self {
        Self {
            hidden_size: 1024,
            num_hidden_layers: 24,
            num_attention_heads: 16,
            intermediate_size: 4096,
            ..Self::bert_base_cased()
        }
    }

    /// Reads a config the way the reference names it: a JSON file, a directory holding
    /// `config.json` (HF layout), or one of the hub names `bert-base-cased` / `uniter-base`.
    pub fn resolve(spec: &str) -> Result<Self, ConfigError> {
        match spec {
            "bert-base-cased" | "bert-base" => return Ok(Self::bert_base_cased()),
            "uniter-base" => return Ok(Self::uniter_base()),
            "uniter-large" => return Ok(Self::uniter_large()),
            _ => {}
        }
        let path = Path::new(spec);
        let file = if path.is_dir() {
            let f = path.join("config.json");
            if !f.is_file() {
                return Err(ConfigError::NoConfigInDir(spec.to_string()));
            }
            f
        } else {
            path.to_path_buf()
        };
        Self::from_json_file(&file)
    }

    /// Parses one JSON config file (extra keys such as `architectures` are ignored).
    pub fn from_json_file(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: shown.clone(),
            source,
        })?;
        let cfg: Self = serde_json::from_str(&text).map_err(|source| ConfigError::Parse {
            path: shown.clone(),
            source,
        })?;
        cfg.validate().map_err(|reason| ConfigError::Invalid {
            path: shown,
            reason,
        })?;
        Ok(cfg)
    }

    /// Checks what the model code relies on.
    pub fn validate(&self) -> Result<(), String> {
        if self.hidden_act != "gelu" {
            return Err(format!(
                "hidden_act {:?} is not supported (the reference uses erf \"gelu\")",
                self.hidden_act
            ));
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.hidden_size == 0 || self.num_hidden_layers == 0 || self.vocab_size == 0 {
            return Err("hidden_size, num_hidden_layers and vocab_size must be > 0".into());
        }
        Ok(())
    }

    /// Size of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// Both towers plus the projection size: everything needed to build a [`BiEncoder`](super::BiEncoder).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BiEncoderConfig {
    /// Image tower (UNITER) sizes.
    pub img: EncoderConfig,
    /// Text tower (BERT) sizes.
    pub txt: EncoderConfig,
    /// `encode_proj` output size; 0 = no projection head (spec §2.4).
    pub project_dim: usize,
}

impl BiEncoderConfig {
    /// Size of the vectors the model produces.
    pub fn embedding_dim(&self) -> usize {
        if self.project_dim > 0 {
            self.project_dim
        } else {
            self.txt.hidden_size
        }
    }
}
