//! The reference's evaluation config, read as it is (config/flickr30k_eval_config.json form,
//! spec §2.8). Relative paths resolve against the config file's directory, or against
//! `--data-root` when given.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::EvalError;
use crate::data::ImgDbOptions;

/// Fields of an eval (or fine-tune) config that evaluation uses; others are accepted and ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct EvalConfig {
    /// HF name (`bert-base-cased`) or a config path for the text tower.
    #[serde(default)]
    pub txt_model_config: Option<String>,
    /// UniterConfig JSON for the image tower.
    #[serde(default)]
    pub img_model_config: Option<String>,
    #[serde(default)]
    pub project_dim: Option<usize>,
    #[serde(default = "default_conf_th")]
    pub conf_th: f32,
    #[serde(default = "default_max_bb")]
    pub max_bb: usize,
    #[serde(default = "default_min_bb")]
    pub min_bb: usize,
    #[serde(default = "default_num_bb")]
    pub num_bb: usize,
    #[serde(default)]
    pub compressed_db: bool,
    #[serde(default)]
    pub val_txt_db: Option<String>,
    #[serde(default)]
    pub val_img_db: Option<String>,
    #[serde(default)]
    pub test_txt_db: Option<String>,
    #[serde(default)]
    pub test_img_db: Option<String>,
    /// The reference reads `valid_batch_size` (default 80); `val_batch_size` is ignored upstream.
    #[serde(default)]
    pub valid_batch_size: Option<usize>,
    /// Generated-caption meta file: only feeds the caption branch, whose weight is 0 in every
    /// release, so it is not needed (spec §2.6).
    #[serde(default)]
    pub itm_global_file: Option<String>,
    /// Where the config file lives (for relative paths).
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// `base_dir` came from `--data-root` (no parent fallback then).
    #[serde(skip)]
    pub from_data_root: bool,
}

fn default_conf_th() -> f32 {
    0.2
}
fn default_max_bb() -> usize {
    100
}
fn default_min_bb() -> usize {
    10
}
fn default_num_bb() -> usize {
    36
}

/// One split's databases.
#[derive(Debug, Clone)]
pub struct SplitPaths {
    pub name: &'static str,
    pub txt_db: PathBuf,
    pub img_db: PathBuf,
}

impl EvalConfig {
    /// Reads a config file; `data_root` replaces the config's directory as the base of relative paths.
    pub fn from_file(path: &Path, data_root: Option<&Path>) -> Result<Self, EvalError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| EvalError::Config(format!("cannot read {}: {e}", path.display())))?;
        let mut cfg: EvalConfig = serde_json::from_str(&text)
            .map_err(|e| EvalError::Config(format!("{}: {e}", path.display())))?;
        cfg.from_data_root = data_root.is_some();
        cfg.base_dir = match data_root {
            Some(r) => r.to_path_buf(),
            None => path.parent().map(Path::to_path_buf).unwrap_or_default(),
        };
        if cfg.valid_batch_size == Some(0) {
            return Err(EvalError::Config(format!(
                "{}: valid_batch_size must be > 0",
                path.display()
            )));
        }
        Ok(cfg)
    }

    /// A config path resolved against the base directory. The reference's configs live in
    /// `<repo>/config/` but name paths from the repository root (`./data/...`), so when a
    /// relative path does not exist under the base directory its parent is tried too.
    pub fn resolve(&self, p: &str) -> PathBuf {
        let path = Path::new(p);
        if path.is_absolute() {
            return path.to_path_buf();
        }
        let direct = self.base_dir.join(path);
        if direct.exists() || self.from_data_root {
            return direct;
        }
        match self.base_dir.parent() {
            Some(parent) if parent.join(path).exists() => parent.join(path),
            _ => direct,
        }
    }

    /// Image DB selection rules.
    pub fn img_db_options(&self) -> ImgDbOptions {
        ImgDbOptions {
            conf_th: self.conf_th,
            max_bb: self.max_bb,
            min_bb: self.min_bb,
            num_bb: self.num_bb,
            compressed: self.compressed_db,
        }
    }

    /// The splits named by `which` (`dev`, `test` or `all` = every split the config has).
    pub fn splits(&self, which: &str) -> Result<Vec<SplitPaths>, EvalError> {
        let mut out = Vec::new();
        let pair = |name: &'static str, t: &Option<String>, i: &Option<String>| match (t, i) {
            (Some(t), Some(i)) => Ok(Some(SplitPaths {
                name,
                txt_db: self.resolve(t),
                img_db: self.resolve(i),
            })),
            (None, None) => Ok(None),
            _ => Err(EvalError::Config(format!(
                "the {name} split needs both {0}_txt_db and {0}_img_db",
                if name == "dev" { "val" } else { "test" }
            ))),
        };
        let dev = pair("dev", &self.val_txt_db, &self.val_img_db)?;
        let test = pair("test", &self.test_txt_db, &self.test_img_db)?;
        match which {
            "dev" => {
                out.push(dev.ok_or_else(|| {
                    EvalError::Config("config has no val_txt_db/val_img_db".into())
                })?)
            }
            "test" => out.push(test.ok_or_else(|| {
                EvalError::Config("config has no test_txt_db/test_img_db".into())
            })?),
            "all" => out.extend(dev.into_iter().chain(test)),
            other => {
                return Err(EvalError::Config(format!(
                    "unknown split {other:?}: expected dev, test or all"
                )));
            }
        }
        if out.is_empty() {
            return Err(EvalError::Config(
                "config names no split (val_* / test_* dbs)".into(),
            ));
        }
        Ok(out)
    }

    /// Model config strings for a `.pt` checkpoint: the image config path is resolved; the seed's
    /// `./config/img_base.json` falls back to the bundled copy when absent.
    pub fn model_configs(&self) -> (Option<String>, Option<String>) {
        let img = self.img_model_config.as_ref().map(|p| {
            let r = self.resolve(p);
            if !r.exists()
                && Path::new(p)
                    .file_name()
                    .is_some_and(|n| n == "img_base.json")
            {
                "uniter-base".to_string()
            } else {
                r.display().to_string()
            }
        });
        let txt = self.txt_model_config.as_ref().map(|p| {
            if matches!(p.as_str(), "bert-base-cased" | "bert-base") {
                p.clone()
            } else {
                self.resolve(p).display().to_string()
            }
        });
        (img, txt)
    }
}
