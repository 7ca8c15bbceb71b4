//! The reference's fine-tune config (config/flickr30k_ft_config.json form, spec §2.8), read as
//! it is, plus the command-line overrides, resolved into one [`TrainSettings`].
//!
//! Fields the reference reads but ignores do here what their names say (spec §5, §12):
//!
//! | field | reference | here |
//! |---|---|---|
//! | `warmup_steps` | ignored: warmup = 10% of the updates | used when present; absent = 10% |
//! | `val_batch_size` | ignored (`valid_batch_size`, default 80, is read) | dev/test encoding batch size when `valid_batch_size` is absent |
//! | `hard_negatives_sampling` | ignored: always a random sample of the top candidates | `random`, `top`, `top-random`, `10-20`, `20-30` as named |
//! | `num_hard_negatives` > 0 | needs `--sample_init_hard_negatives`, else crashes | mined before the first epoch and after every epoch |
//! | `valid_steps` | unused (validation per epoch) | unused: validation is per epoch (a burn-train epoch metric) |
//! | `fp16` | apex O2 | see `--precision` (burn has no loss-scaled AMP) |
//! | `inf_minibatch_size`, `n_workers`, `pin_mem`, `project_name`, `itm_global_file` | logging / caption branch (weight 0) | accepted, not needed |

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::TrainError;
use crate::data::ImgDbOptions;
use crate::eval::{EvalConfig, SplitPaths};

/// One db path or a list of them (the reference's configs use lists).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// The training fields of a fine-tune config; others are accepted and ignored (the dev/test
/// splits and box selection are read through [`EvalConfig`] from the same file).
#[derive(Debug, Clone, Default, Deserialize)]
struct FtConfig {
    #[serde(default)]
    txt_checkpoint: Option<String>,
    #[serde(default)]
    img_checkpoint: Option<String>,
    #[serde(default)]
    biencoder_checkpoint: Option<String>,
    #[serde(default)]
    train_txt_dbs: Option<OneOrMany>,
    #[serde(default)]
    train_img_dbs: Option<OneOrMany>,
    #[serde(default)]
    train_batch_size: Option<i64>,
    #[serde(default)]
    valid_batch_size: Option<i64>,
    #[serde(default)]
    val_batch_size: Option<i64>,
    #[serde(default)]
    gradient_accumulation_steps: Option<i64>,
    #[serde(default)]
    learning_rate: Option<f64>,
    #[serde(default)]
    max_grad_norm: Option<f64>,
    #[serde(default)]
    warmup_steps: Option<i64>,
    #[serde(default)]
    num_train_epochs: Option<i64>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    output_dir: Option<String>,
    #[serde(default)]
    max_txt_len: Option<i64>,
    #[serde(default)]
    dropout: Option<f64>,
    #[serde(default)]
    num_hard_negatives: Option<i64>,
    #[serde(default)]
    hard_negatives_sampling: Option<String>,
    #[serde(default)]
    caption_score_weight: Option<f64>,
    #[serde(default)]
    teacher_checkpoint: Option<String>,
    #[serde(default)]
    fix_txt_encoder: Option<bool>,
    #[serde(default)]
    fix_img_encoder: Option<bool>,
    #[serde(default)]
    retrieval_mode: Option<String>,
    #[serde(default)]
    save_all_epochs: Option<bool>,
}

/// How hard negatives are drawn from each query's top candidates (spec §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sampling {
    /// No hard negatives (`num_hard_negatives` must be 0).
    None,
    /// `k` uniformly from the top `min(max(2k+10, 50), 1000)` non-positive candidates (what the
    /// reference does whatever the field says).
    Random,
    /// The `k` best-scoring non-positive candidates.
    Top,
    /// The best `ceil(k/2)` plus `floor(k/2)` uniformly from the rest of the top candidates.
    TopRandom,
    /// `k` uniformly from the non-positive candidates ranked 10..20 (0-based, `k` <= 10).
    #[serde(rename = "10-20")]
    Rank10To20,
    /// `k` uniformly from the non-positive candidates ranked 20..30 (0-based, `k` <= 10).
    #[serde(rename = "20-30")]
    Rank20To30,
}

impl std::str::FromStr for Sampling {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "none" => Sampling::None,
            "random" => Sampling::Random,
            "top" => Sampling::Top,
            "top-random" => Sampling::TopRandom,
            "10-20" => Sampling::Rank10To20,
            "20-30" => Sampling::Rank20To30,
            other => {
                return Err(format!(
                    "unknown hard_negatives_sampling {other:?}: expected none, random, top, \
                     top-random, 10-20 or 20-30"
                ));
            }
        })
    }
}

impl std::fmt::Display for Sampling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Sampling::None => "none",
            Sampling::Random => "random",
            Sampling::Top => "top",
            Sampling::TopRandom => "top-random",
            Sampling::Rank10To20 => "10-20",
            Sampling::Rank20To30 => "20-30",
        })
    }
}

/// Element type of the training computation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32 (what the parity tests check).
    #[default]
    F32,
    /// Activations and weights in bf16, with f32 master weights and moments in the optimizer
    /// (the apex O2 arrangement of the reference, with bf16 instead of loss-scaled fp16).
    Bf16,
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" | "fp32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(format!("unknown precision {other:?}: expected f32 or bf16")),
        }
    }
}

/// Where the initial weights come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Init {
    /// A bi-encoder: `LightningDot.pt`, a fine-tuned `.pt`, or a model directory
    /// (`biencoder_checkpoint`; overwrites both towers, as in the reference).
    Biencoder(PathBuf),
    /// Per tower: a UNITER checkpoint for the image tower (`img_checkpoint`), a BERT state_dict
    /// for the text tower (`txt_checkpoint`, or `pytorch_model.bin` in the `txt_model_config`
    /// directory); missing towers and both projection heads start from random weights.
    Towers {
        img: Option<PathBuf>,
        txt: Option<PathBuf>,
    },
}

/// Command-line overrides of the config (`None` = the config's value).
#[derive(Debug, Clone, Default)]
pub struct TrainOverrides {
    pub output_dir: Option<PathBuf>,
    pub learning_rate: Option<f64>,
    pub train_batch_size: Option<usize>,
    pub num_train_epochs: Option<usize>,
    pub gradient_accumulation_steps: Option<usize>,
    pub warmup_steps: Option<usize>,
    pub warmup_proportion: Option<f64>,
    pub seed: Option<u64>,
    pub num_hard_negatives: Option<usize>,
    pub hard_negatives_sampling: Option<String>,
    pub valid_batch_size: Option<usize>,
    /// Replaces `biencoder_checkpoint`.
    pub checkpoint: Option<PathBuf>,
    pub img_checkpoint: Option<PathBuf>,
    pub txt_checkpoint: Option<PathBuf>,
    pub img_config: Option<String>,
    pub txt_config: Option<String>,
    pub precision: Precision,
    /// Base directory for the config's relative paths (like `eval --data-root`).
    pub data_root: Option<PathBuf>,
}

/// A train split: one txt_db and its img_db.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DbPair {
    pub txt_db: PathBuf,
    pub img_db: PathBuf,
}

/// Warmup length: a number of updates, or a fraction of all updates.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Warmup {
    Steps(usize),
    Proportion(f64),
}

impl Warmup {
    /// Warmup updates for `total` updates (`int(0.1 * total)` as the reference for 10%).
    pub fn steps(&self, total: usize) -> usize {
        match *self {
            Warmup::Steps(n) => n.min(total),
            Warmup::Proportion(p) => ((p * total as f64).floor() as usize).min(total),
        }
    }
}

/// Everything a run depends on, resolved and validated. Written to `OUTPUT_DIR/run.json`; a
/// rerun resumes only when it resolves to the same settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSettings {
    pub init: Init,
    /// Image tower config string (JSON path or `uniter-base`) for `.pt` initialisations.
    pub img_config: Option<String>,
    /// Text tower config string (JSON path, directory or `bert-base-cased`).
    pub txt_config: Option<String>,
    /// `project_dim` of the config (`None`: inferred from the checkpoint).
    pub project_dim: Option<usize>,
    pub train: Vec<DbPair>,
    pub dev: DbPair,
    pub test: Option<DbPair>,
    pub img_db: ImgDbOptions,
    pub train_batch_size: usize,
    pub valid_batch_size: usize,
    pub gradient_accumulation_steps: usize,
    pub learning_rate: f64,
    pub max_grad_norm: f64,
    pub warmup: Warmup,
    pub num_train_epochs: usize,
    pub seed: u64,
    /// Captions with more word pieces are dropped from training (-1 keeps all).
    pub max_txt_len: i64,
    pub dropout: f64,
    pub num_hard_negatives: usize,
    pub hard_negatives_sampling: Sampling,
    pub save_all_epochs: bool,
    pub precision: Precision,
}

/// A resolved run: its settings and where it writes.
#[derive(Debug, Clone)]
pub struct TrainPlan {
    pub settings: TrainSettings,
    pub output_dir: PathBuf,
}

fn positive(name: &str, v: Option<i64>, default: usize) -> Result<usize, String> {
    match v {
        None => Ok(default),
        Some(n) if n > 0 => Ok(n as usize),
        Some(n) => Err(format!("{name} must be > 0, got {n}")),
    }
}

fn non_negative(name: &str, v: Option<i64>, default: usize) -> Result<usize, String> {
    match v {
        None => Ok(default),
        Some(n) if n >= 0 => Ok(n as usize),
        Some(n) => Err(format!("{name} must be >= 0, got {n}")),
    }
}

impl TrainPlan {
    /// Reads `config` (the reference's fine-tune JSON) and applies `ov`. Checks every value and
    /// that every db, checkpoint and model config exists, so a bad config fails before any
    /// weight is loaded; each error is one line naming the field.
    pub fn resolve(config: &Path, ov: &TrainOverrides) -> Result<Self, TrainError> {
        let (ft, ev) = parse(config, ov)?;
        let cfg_err = |msg: String| TrainError::Config(format!("{}: {msg}", config.display()));
        let h = Hyper::validate(&ft, ov).map_err(cfg_err)?;
        let (train, dev, test) = check_dbs(&ft, &ev).map_err(cfg_err)?;

        // Model configs and initial weights.
        let (img_cfg, txt_cfg) = ev.model_configs();
        let img_config = ov.img_config.clone().or(img_cfg);
        let txt_config = ov.txt_config.clone().or(txt_cfg);
        let existing = |field: &str, p: PathBuf| -> Result<PathBuf, TrainError> {
            if p.exists() {
                Ok(p)
            } else {
                Err(cfg_err(format!("{field} not found: {}", p.display())))
            }
        };
        let init = resolve_init(
            InitPaths {
                whole: ov
                    .checkpoint
                    .clone()
                    .or_else(|| ft.biencoder_checkpoint.as_deref().map(|p| ev.resolve(p))),
                img: ov
                    .img_checkpoint
                    .clone()
                    .or_else(|| ft.img_checkpoint.as_deref().map(|p| ev.resolve(p))),
                txt: ov
                    .txt_checkpoint
                    .clone()
                    .or_else(|| ft.txt_checkpoint.as_deref().map(|p| ev.resolve(p))),
                txt_config: txt_config.as_deref(),
                whole_field: "biencoder_checkpoint",
                whole_hint: "biencoder_checkpoint (--checkpoint LightningDot.pt, as \
                             bash/train_flickr.sh does)",
            },
            &existing,
            cfg_err,
        )?;
        let project_dim = ev.project_dim;

        let output_dir = match (&ov.output_dir, &ft.output_dir) {
            (Some(p), _) => p.clone(),
            (None, Some(p)) => PathBuf::from(p),
            (None, None) => {
                return Err(cfg_err(
                    "output_dir is missing (give it in the config or with --output-dir)".into(),
                ));
            }
        };
        let img_db = ImgDbOptions {
            conf_th: ev.conf_th,
            max_bb: ev.max_bb,
            min_bb: ev.min_bb,
            num_bb: ev.num_bb,
            compressed: ev.compressed_db,
        };
        Ok(Self {
            settings: TrainSettings {
                init,
                img_config,
                txt_config,
                project_dim,
                train,
                dev,
                test,
                img_db,
                train_batch_size: h.train_batch_size,
                valid_batch_size: h.valid_batch_size,
                gradient_accumulation_steps: h.gradient_accumulation_steps,
                learning_rate: h.learning_rate,
                max_grad_norm: h.max_grad_norm,
                warmup: h.warmup,
                num_train_epochs: h.num_train_epochs,
                seed: ov.seed.or(ft.seed).unwrap_or(42),
                max_txt_len: h.max_txt_len,
                dropout: h.dropout,
                num_hard_negatives: h.num_hard_negatives,
                hard_negatives_sampling: h.sampling,
                save_all_epochs: ft.save_all_epochs.unwrap_or(false),
                precision: ov.precision,
            },
            output_dir,
        })
    }
}

/// The run's numbers, checked (the `resolve` step after parsing, before any path is read).
struct Hyper {
    train_batch_size: usize,
    valid_batch_size: usize,
    gradient_accumulation_steps: usize,
    num_train_epochs: usize,
    learning_rate: f64,
    max_grad_norm: f64,
    warmup: Warmup,
    dropout: f64,
    max_txt_len: i64,
    num_hard_negatives: usize,
    sampling: Sampling,
}

/// Reads the fine-tune JSON and, through [`EvalConfig`], its splits and box selection.
fn parse(config: &Path, ov: &TrainOverrides) -> Result<(FtConfig, EvalConfig), TrainError> {
    let text = std::fs::read_to_string(config)
        .map_err(|e| TrainError::Config(format!("cannot read {}: {e}", config.display())))?;
    let ft: FtConfig = serde_json::from_str(&text)
        .map_err(|e| TrainError::Config(format!("{}: {e}", config.display())))?;
    let ev = EvalConfig::from_file(config, ov.data_root.as_deref()).map_err(|e| {
        let msg = e.to_string();
        TrainError::Config(
            msg.strip_prefix("eval config: ")
                .unwrap_or(&msg)
                .to_string(),
        )
    })?;
    Ok((ft, ev))
}

impl Hyper {
    /// Every number of `ft` with the flags applied; unsupported reference branches fail loudly
    /// rather than being silently dropped.
    fn validate(ft: &FtConfig, ov: &TrainOverrides) -> Result<Self, String> {
        // Unsupported branches of the reference fail loudly rather than being silently dropped.
        if ft.caption_score_weight.is_some_and(|w| w != 0.0) {
            return Err(
                "caption_score_weight != 0 (the generated-caption branch) is not supported; \
                 every released model uses 0"
                    .into(),
            );
        }
        if ft.teacher_checkpoint.is_some() {
            return Err("teacher_checkpoint (knowledge distillation) is not supported".into());
        }
        if ft.fix_txt_encoder == Some(true) || ft.fix_img_encoder == Some(true) {
            return Err("fix_txt_encoder / fix_img_encoder are not supported".into());
        }
        if let Some(mode) = ft.retrieval_mode.as_deref().filter(|m| *m != "both") {
            return Err(format!(
                "retrieval_mode {mode:?} is not supported (the reference raises too); use \"both\""
            ));
        }

        let train_batch_size = match ov.train_batch_size {
            Some(0) => return Err("--train-batch-size must be > 0".into()),
            Some(n) => n,
            None => positive("train_batch_size", ft.train_batch_size, 80)?,
        };
        let valid_batch_size = match ov.valid_batch_size {
            Some(0) => return Err("--valid-batch-size must be > 0".into()),
            Some(n) => n,
            None => match ft.valid_batch_size {
                Some(v) => positive("valid_batch_size", Some(v), 80),
                None => positive("val_batch_size", ft.val_batch_size, 80),
            }?,
        };
        let gradient_accumulation_steps = match ov.gradient_accumulation_steps {
            Some(0) => {
                return Err("--gradient-accumulation-steps must be > 0".into());
            }
            Some(n) => n,
            None => positive(
                "gradient_accumulation_steps",
                ft.gradient_accumulation_steps,
                1,
            )?,
        };
        let num_train_epochs = match ov.num_train_epochs {
            Some(0) => return Err("--num-train-epochs must be > 0".into()),
            Some(n) => n,
            None => match ft.num_train_epochs {
                None => {
                    return Err(
                        "num_train_epochs is missing (give it in the config or with \
                         --num-train-epochs)"
                            .into(),
                    );
                }
                v => positive("num_train_epochs", v, 0)?,
            },
        };
        let learning_rate = ov.learning_rate.or(ft.learning_rate).unwrap_or(1e-5);
        if !(learning_rate.is_finite() && learning_rate > 0.0) {
            return Err(format!(
                "learning_rate must be a positive number, got {learning_rate}"
            ));
        }
        let max_grad_norm = ft.max_grad_norm.unwrap_or(2.0);
        if !max_grad_norm.is_finite() {
            return Err(format!("max_grad_norm must be finite, got {max_grad_norm}"));
        }
        let warmup = match (ov.warmup_steps, ov.warmup_proportion) {
            (Some(_), Some(_)) => {
                return Err("give --warmup-steps or --warmup-proportion, not both".into());
            }
            (Some(n), None) => Warmup::Steps(n),
            (None, Some(p)) if (0.0..=1.0).contains(&p) => Warmup::Proportion(p),
            (None, Some(p)) => {
                return Err(format!("--warmup-proportion must be in [0, 1], got {p}"));
            }
            (None, None) => match ft.warmup_steps {
                Some(n) => Warmup::Steps(non_negative("warmup_steps", Some(n), 0)?),
                None => Warmup::Proportion(0.1),
            },
        };
        let dropout = ft.dropout.unwrap_or(0.1);
        if !(0.0..1.0).contains(&dropout) {
            return Err(format!("dropout must be in [0, 1), got {dropout}"));
        }
        let max_txt_len = ft.max_txt_len.unwrap_or(64);
        if max_txt_len == 0 || max_txt_len < -1 {
            return Err(format!(
                "max_txt_len must be > 0 (or -1 to keep every caption), got {max_txt_len}"
            ));
        }
        let num_hard_negatives = match ov.num_hard_negatives {
            Some(n) => n,
            None => non_negative("num_hard_negatives", ft.num_hard_negatives, 0)?,
        };
        let sampling_str = ov
            .hard_negatives_sampling
            .clone()
            .or(ft.hard_negatives_sampling.clone())
            .unwrap_or_else(|| "none".into());
        let mut sampling: Sampling = sampling_str.parse()?;
        if num_hard_negatives == 0 && sampling != Sampling::None {
            tracing::warn!("hard_negatives_sampling {sampling} ignored: num_hard_negatives is 0");
            sampling = Sampling::None;
        }
        if num_hard_negatives > 0 && sampling == Sampling::None {
            return Err(format!(
                "num_hard_negatives is {num_hard_negatives} but hard_negatives_sampling is \
                 \"none\": choose random, top, top-random, 10-20 or 20-30"
            ));
        }
        if matches!(sampling, Sampling::Rank10To20 | Sampling::Rank20To30)
            && num_hard_negatives > 10
        {
            return Err(format!(
                "hard_negatives_sampling {sampling} draws from 10 ranks: num_hard_negatives \
                 must be <= 10, got {num_hard_negatives}"
            ));
        }

        Ok(Self {
            train_batch_size,
            valid_batch_size,
            gradient_accumulation_steps,
            num_train_epochs,
            learning_rate,
            max_grad_norm,
            warmup,
            dropout,
            max_txt_len,
            num_hard_negatives,
            sampling,
        })
    }
}

/// The train, dev and test db pairs, each checked to exist.
fn check_dbs(
    ft: &FtConfig,
    ev: &EvalConfig,
) -> Result<(Vec<DbPair>, DbPair, Option<DbPair>), String> {
    // Databases.
    let txts = ft
        .train_txt_dbs
        .clone()
        .map(OneOrMany::into_vec)
        .unwrap_or_default();
    let imgs = ft
        .train_img_dbs
        .clone()
        .map(OneOrMany::into_vec)
        .unwrap_or_default();
    if txts.is_empty() {
        return Err("train_txt_dbs is missing or empty".into());
    }
    if txts.len() != imgs.len() {
        return Err(format!(
            "train_txt_dbs has {} entries but train_img_dbs has {} (they pair 1:1)",
            txts.len(),
            imgs.len()
        ));
    }
    let train: Vec<DbPair> = txts
        .iter()
        .zip(&imgs)
        .map(|(t, i)| DbPair {
            txt_db: ev.resolve(t),
            img_db: ev.resolve(i),
        })
        .collect();
    for (i, p) in train.iter().enumerate() {
        check_db("train_txt_dbs", i, &p.txt_db, &txts[i])?;
        check_db("train_img_dbs", i, &p.img_db, &imgs[i])?;
    }
    let pair = |s: &SplitPaths| DbPair {
        txt_db: s.txt_db.clone(),
        img_db: s.img_db.clone(),
    };
    let dev = ev.splits("dev").map_err(|_| {
        "val_txt_db / val_img_db are missing: the dev split picks the best epoch".to_string()
    })?;
    let dev = pair(&dev[0]);
    check_db(
        "val_txt_db",
        0,
        &dev.txt_db,
        &dev.txt_db.display().to_string(),
    )?;
    check_db(
        "val_img_db",
        0,
        &dev.img_db,
        &dev.img_db.display().to_string(),
    )?;
    let test = match ev.splits("test") {
        Ok(s) => {
            let p = pair(&s[0]);
            check_db("test_txt_db", 0, &p.txt_db, &p.txt_db.display().to_string())?;
            check_db("test_img_db", 0, &p.img_db, &p.img_db.display().to_string())?;
            Some(p)
        }
        Err(_) => None,
    };

    Ok((train, dev, test))
}

/// The checkpoint paths a config names (config values already resolved, flags applied).
pub(crate) struct InitPaths<'a> {
    /// A whole bi-encoder / pre-training checkpoint (wins over the towers).
    pub whole: Option<PathBuf>,
    pub img: Option<PathBuf>,
    pub txt: Option<PathBuf>,
    pub txt_config: Option<&'a str>,
    /// The config field of `whole`, for errors.
    pub whole_field: &'static str,
    /// How to give a whole checkpoint, for the missing-text-tower error.
    pub whole_hint: &'static str,
}

/// Where the initial weights come from. `existing` checks a path (field name, path) and may
/// substitute a corrected one; `err` makes the caller's config error. Without a text
/// checkpoint, `pytorch_model.bin` in a `txt_model_config` directory is used (what
/// `from_pretrained` finds); a hub name with no weights is an error rather than a silently
/// random text tower.
pub(crate) fn resolve_init<E>(
    p: InitPaths<'_>,
    existing: &impl Fn(&str, PathBuf) -> Result<PathBuf, E>,
    err: impl Fn(String) -> E,
) -> Result<Init, E> {
    if let Some(w) = p.whole {
        return Ok(Init::Biencoder(existing(p.whole_field, w)?));
    }
    let img = p.img.map(|i| existing("img_checkpoint", i)).transpose()?;
    let txt = match p.txt {
        Some(t) => Some(existing("txt_checkpoint", t)?),
        None => p
            .txt_config
            .map(|c| Path::new(c).join("pytorch_model.bin"))
            .filter(|f| f.is_file()),
    };
    let hub = p
        .txt_config
        .is_none_or(|c| matches!(c, "bert-base-cased" | "bert-base"));
    if txt.is_none() && hub {
        return Err(err(format!(
            "no initial text tower: txt_model_config {:?} names pretrained hub weights, which \
             cannot be downloaded here; give {} or txt_checkpoint (a BERT pytorch_model.bin, \
             --txt-checkpoint)",
            p.txt_config.unwrap_or("bert-base-cased"),
            p.whole_hint
        )));
    }
    Ok(Init::Towers { img, txt })
}

fn check_db(field: &str, index: usize, path: &Path, given: &str) -> Result<(), String> {
    if path.is_dir() {
        return Ok(());
    }
    let which = if field.ends_with("dbs") {
        format!("{field}[{index}]")
    } else {
        field.to_string()
    };
    Err(format!(
        "{which} {given:?} not found (resolved to {})",
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_names_round_trip() {
        for s in ["none", "random", "top", "top-random", "10-20", "20-30"] {
            assert_eq!(s.parse::<Sampling>().unwrap().to_string(), s);
        }
        assert!("best".parse::<Sampling>().is_err());
    }

    #[test]
    fn warmup_proportion_floors_like_the_reference() {
        assert_eq!(Warmup::Proportion(0.1).steps(22665), 2266);
        assert_eq!(Warmup::Steps(100).steps(50), 50);
    }
}
