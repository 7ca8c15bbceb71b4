//! The reference's pre-training config (config/pretrain-alldata-base.json form, spec §2.8,
//! §6), read as it is, plus command-line overrides, resolved into one [`PretrainSettings`].
//!
//! Where this port differs from pretrain.py on purpose:
//!
//! | field | reference | here |
//! |---|---|---|
//! | `cls_concat` | not in the JSON; argparse default `""` = plain MLM / MRM (issue #8) | default `add` (the paper's VMLM / SMRM); `"cls_concat": ""` or `--cls-concat none` gives the reference's behaviour |
//! | `itm_neg_prob` | > 0 silently trains CMR on mismatched pairs | must be 0 (the config's value) |
//! | `img_checkpoint` | `./data/mode/uniter-base.pt` (typo) fails to load | a missing path whose `/mode/` → `/model/` exists is used, with a warning |
//! | `fp16` | apex O2 | see `--precision` (bf16; burn has no loss-scaled fp16 AMP) |
//! | `teacher_checkpoint`, `itm_ot_lambda` > 0, `mrm-nce` | KD / OT / NCE branches | refused with a clear error |
//! | `/db/…`, `/img/…` paths | docker mounts, remapped by `--txt_db_mapping` etc. | with `--data-root DIR`: `DIR/db/…`, `DIR/img/…` |

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::PretrainError;
use crate::data::pretrain::PretrainTask;
use crate::eval::EvalConfig;
use crate::model::ClsConcat;
use crate::train::config::{DbPair, InitPaths, resolve_init};
use crate::train::{Init, Precision};

/// One `train_datasets` / `val_datasets` entry as written.
#[derive(Debug, Clone, Deserialize)]
struct RawDataset {
    name: Option<String>,
    #[serde(default)]
    db: Vec<String>,
    #[serde(default)]
    img: Vec<String>,
    #[serde(default)]
    tasks: Vec<String>,
    #[serde(default)]
    mix_ratio: Vec<i64>,
}

/// The fields of a pre-training config used here; others are accepted and ignored.
#[derive(Debug, Clone, Default, Deserialize)]
struct RawConfig {
    #[serde(default)]
    img_checkpoint: Option<String>,
    #[serde(default)]
    txt_checkpoint: Option<String>,
    #[serde(default)]
    biencoder_checkpoint: Option<String>,
    #[serde(default)]
    checkpoint: Option<String>,
    #[serde(default)]
    output_dir: Option<String>,
    #[serde(default)]
    mrm_prob: Option<f64>,
    #[serde(default)]
    itm_neg_prob: Option<f64>,
    #[serde(default)]
    itm_ot_lambda: Option<f64>,
    #[serde(default)]
    max_txt_len: Option<i64>,
    #[serde(default)]
    train_batch_size: Option<i64>,
    #[serde(default)]
    val_batch_size: Option<i64>,
    #[serde(default)]
    gradient_accumulation_steps: Option<i64>,
    #[serde(default)]
    learning_rate: Option<f64>,
    #[serde(default)]
    valid_steps: Option<i64>,
    #[serde(default)]
    num_train_steps: Option<i64>,
    #[serde(default)]
    optim: Option<String>,
    #[serde(default)]
    betas: Option<Vec<f64>>,
    #[serde(default)]
    decay: Option<String>,
    #[serde(default)]
    dropout: Option<f64>,
    #[serde(default)]
    weight_decay: Option<f64>,
    #[serde(default)]
    grad_norm: Option<f64>,
    #[serde(default)]
    warmup_steps: Option<i64>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    cls_concat: Option<String>,
    #[serde(default)]
    teacher_checkpoint: Option<String>,
    #[serde(default)]
    train_datasets: Option<Vec<RawDataset>>,
    #[serde(default)]
    val_datasets: Option<Vec<RawDataset>>,
}

/// Command-line overrides (`None` = the config's value).
#[derive(Debug, Clone, Default)]
pub struct PretrainOverrides {
    pub output_dir: Option<PathBuf>,
    pub cls_concat: Option<ClsConcat>,
    pub num_train_steps: Option<usize>,
    pub valid_steps: Option<usize>,
    pub train_batch_size: Option<usize>,
    pub val_batch_size: Option<usize>,
    pub gradient_accumulation_steps: Option<usize>,
    pub learning_rate: Option<f64>,
    pub warmup_steps: Option<usize>,
    pub seed: Option<u64>,
    /// A bi-encoder or pre-training checkpoint to start from (`.pt` or directory).
    pub checkpoint: Option<PathBuf>,
    pub img_checkpoint: Option<PathBuf>,
    pub txt_checkpoint: Option<PathBuf>,
    pub img_config: Option<String>,
    pub txt_config: Option<String>,
    pub precision: Precision,
    /// Base directory of relative paths instead of the config's directory.
    pub data_root: Option<PathBuf>,
}

/// A training corpus: its db pairs (concatenated) and tasks with their mixture weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainDataset {
    pub name: String,
    pub dbs: Vec<DbPair>,
    /// `(task, mix_ratio)` in config order.
    pub tasks: Vec<(PretrainTask, usize)>,
}

/// A validation corpus (one db pair; every caption kept, as `max_txt_len = -1` upstream).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValDataset {
    pub name: String,
    pub db: DbPair,
    pub tasks: Vec<PretrainTask>,
}

/// Everything a pre-training run depends on (written to `OUTPUT_DIR/run.json`; a rerun must
/// resolve to the same settings to resume).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainSettings {
    pub init: Init,
    pub img_config: Option<String>,
    pub txt_config: Option<String>,
    pub project_dim: Option<usize>,
    pub train: Vec<TrainDataset>,
    pub val: Vec<ValDataset>,
    pub img_db: crate::data::ImgDbOptions,
    /// Tokens (text word pieces + regions, padding included) per micro-batch.
    pub train_batch_size: usize,
    pub val_batch_size: usize,
    pub gradient_accumulation_steps: usize,
    pub learning_rate: f64,
    pub betas: (f64, f64),
    pub weight_decay: f64,
    pub grad_norm: f64,
    pub warmup_steps: usize,
    pub num_train_steps: usize,
    pub valid_steps: usize,
    pub seed: u64,
    /// Word pieces kept per training caption (`None`: all).
    pub max_txt_len: Option<usize>,
    pub mrm_prob: f64,
    pub dropout: f64,
    pub cls_concat: ClsConcat,
    pub precision: Precision,
}

/// A resolved run.
#[derive(Debug, Clone)]
pub struct PretrainPlan {
    pub settings: PretrainSettings,
    pub output_dir: PathBuf,
}

fn positive(
    name: &str,
    ov: Option<usize>,
    v: Option<i64>,
    default: usize,
) -> Result<usize, String> {
    match (ov, v) {
        (Some(0), _) => Err(format!("--{} must be > 0", name.replace('_', "-"))),
        (Some(n), _) => Ok(n),
        (None, None) => Ok(default),
        (None, Some(n)) if n > 0 => Ok(n as usize),
        (None, Some(n)) => Err(format!("{name} must be > 0, got {n}")),
    }
}

impl PretrainPlan {
    /// Reads `config` and applies `ov`. Checks every value and that every db, checkpoint and
    /// model config exists before anything is loaded; each error is one line naming the field.
    pub fn resolve(config: &Path, ov: &PretrainOverrides) -> Result<Self, PretrainError> {
        let (raw, ev) = parse(config, ov)?;
        let err = |msg: String| PretrainError::Config(format!("{}: {msg}", config.display()));
        let h = Hyper::validate(&raw, ov).map_err(err)?;
        let (train, val) = check_datasets(&raw, ov, &ev).map_err(err)?;

        // Initial weights.
        let (img_cfg, txt_cfg) = ev.model_configs();
        let img_config = ov.img_config.clone().or(img_cfg);
        let txt_config = ov.txt_config.clone().or(txt_cfg);
        let existing = |field: &str, p: PathBuf| -> Result<PathBuf, PretrainError> {
            if p.exists() {
                return Ok(p);
            }
            // The shipped config's `./data/mode/uniter-base.pt` (spec §12).
            let fixed = PathBuf::from(p.to_string_lossy().replace("/mode/", "/model/"));
            if fixed != p && fixed.exists() {
                tracing::warn!(
                    "{field} {} not found; using {} (the reference config's typo)",
                    p.display(),
                    fixed.display()
                );
                return Ok(fixed);
            }
            Err(err(format!("{field} not found: {}", p.display())))
        };
        let whole = ov.checkpoint.clone().or_else(|| {
            raw.checkpoint
                .as_deref()
                .or(raw.biencoder_checkpoint.as_deref())
                .map(|p| ev.resolve(p))
        });
        let init = resolve_init(
            InitPaths {
                whole,
                img: ov
                    .img_checkpoint
                    .clone()
                    .or_else(|| raw.img_checkpoint.as_deref().map(|p| ev.resolve(p))),
                txt: ov
                    .txt_checkpoint
                    .clone()
                    .or_else(|| raw.txt_checkpoint.as_deref().map(|p| ev.resolve(p))),
                txt_config: txt_config.as_deref(),
                whole_field: "checkpoint",
                whole_hint: "--checkpoint (e.g. LightningDot.pt to continue pre-training)",
            },
            &existing,
            err,
        )?;
        let output_dir = match (&ov.output_dir, &raw.output_dir) {
            (Some(p), _) => p.clone(),
            (None, Some(p)) => PathBuf::from(p),
            (None, None) => {
                return Err(err(
                    "output_dir is missing (give it in the config or with --output-dir)".into(),
                ));
            }
        };
        Ok(Self {
            settings: PretrainSettings {
                init,
                img_config,
                txt_config,
                project_dim: ev.project_dim,
                train,
                val,
                img_db: crate::data::ImgDbOptions {
                    conf_th: ev.conf_th,
                    max_bb: ev.max_bb,
                    min_bb: ev.min_bb,
                    num_bb: ev.num_bb,
                    compressed: ev.compressed_db,
                },
                train_batch_size: h.train_batch_size,
                val_batch_size: h.val_batch_size,
                gradient_accumulation_steps: h.gradient_accumulation_steps,
                learning_rate: h.learning_rate,
                betas: h.betas,
                weight_decay: h.weight_decay,
                grad_norm: h.grad_norm,
                warmup_steps: h.warmup_steps,
                num_train_steps: h.num_train_steps,
                valid_steps: h.valid_steps,
                seed: ov.seed.or(raw.seed).unwrap_or(42),
                max_txt_len: h.max_txt_len,
                mrm_prob: h.mrm_prob,
                dropout: h.dropout,
                cls_concat: h.cls_concat,
                precision: ov.precision,
            },
            output_dir,
        })
    }
}

/// The run's numbers, checked (the `resolve` step after parsing, before any path is read).
struct Hyper {
    train_batch_size: usize,
    val_batch_size: usize,
    gradient_accumulation_steps: usize,
    num_train_steps: usize,
    valid_steps: usize,
    warmup_steps: usize,
    learning_rate: f64,
    betas: (f64, f64),
    weight_decay: f64,
    grad_norm: f64,
    dropout: f64,
    mrm_prob: f64,
    max_txt_len: Option<usize>,
    cls_concat: ClsConcat,
}

/// Reads the pre-training JSON and, through [`EvalConfig`], its paths and box selection.
fn parse(config: &Path, ov: &PretrainOverrides) -> Result<(RawConfig, EvalConfig), PretrainError> {
    let text = std::fs::read_to_string(config)
        .map_err(|e| PretrainError::Config(format!("cannot read {}: {e}", config.display())))?;
    let raw: RawConfig = serde_json::from_str(&text)
        .map_err(|e| PretrainError::Config(format!("{}: {e}", config.display())))?;
    let ev = EvalConfig::from_file(config, ov.data_root.as_deref())
        .map_err(|e| PretrainError::Config(e.to_string()))?;
    Ok((raw, ev))
}

impl Hyper {
    /// Every number of `raw` with the flags applied; unsupported reference branches fail
    /// loudly rather than being silently dropped.
    fn validate(raw: &RawConfig, ov: &PretrainOverrides) -> Result<Self, String> {
        if raw.teacher_checkpoint.is_some() {
            return Err("teacher_checkpoint (knowledge distillation) is not supported".into());
        }
        if raw.itm_ot_lambda.is_some_and(|l| l != 0.0) {
            return Err("itm_ot_lambda > 0 (the optimal-transport loss) is not supported".into());
        }
        if raw.itm_neg_prob.is_some_and(|p| p != 0.0) {
            return Err(
                "itm_neg_prob must be 0: the CMR loss takes every row's image as its caption's \
                 positive, so mismatched pairs would be trained as matches"
                    .into(),
            );
        }
        if let Some(o) = raw.optim.as_deref().filter(|o| *o != "adamw") {
            return Err(format!("optim {o:?} is not supported (adamw)"));
        }
        if let Some(d) = raw.decay.as_deref().filter(|d| *d != "linear") {
            return Err(format!("decay {d:?} is not supported (linear)"));
        }

        let train_batch_size = positive(
            "train_batch_size",
            ov.train_batch_size,
            raw.train_batch_size,
            10240,
        )?;
        let val_batch_size = positive(
            "val_batch_size",
            ov.val_batch_size,
            raw.val_batch_size,
            train_batch_size,
        )?;
        let gradient_accumulation_steps = positive(
            "gradient_accumulation_steps",
            ov.gradient_accumulation_steps,
            raw.gradient_accumulation_steps,
            1,
        )?;
        let num_train_steps = positive(
            "num_train_steps",
            ov.num_train_steps,
            raw.num_train_steps,
            100_000,
        )?;
        let valid_steps = positive("valid_steps", ov.valid_steps, raw.valid_steps, 10_000)?;
        let warmup_steps = match (ov.warmup_steps, raw.warmup_steps) {
            (Some(n), _) => n,
            (None, Some(n)) if n >= 0 => n as usize,
            (None, Some(n)) => return Err(format!("warmup_steps must be >= 0, got {n}")),
            (None, None) => 10_000,
        };
        let learning_rate = ov.learning_rate.or(raw.learning_rate).unwrap_or(3e-5);
        if !(learning_rate.is_finite() && learning_rate > 0.0) {
            return Err(format!(
                "learning_rate must be a positive number, got {learning_rate}"
            ));
        }
        let betas = match raw.betas.as_deref() {
            None => (0.9, 0.98),
            Some([b1, b2]) if (0.0..1.0).contains(b1) && (0.0..1.0).contains(b2) => (*b1, *b2),
            Some(b) => {
                return Err(format!("betas must be two numbers in [0, 1), got {b:?}"));
            }
        };
        let weight_decay = raw.weight_decay.unwrap_or(0.01);
        let grad_norm = raw.grad_norm.unwrap_or(2.0);
        let dropout = raw.dropout.unwrap_or(0.1);
        if !(0.0..1.0).contains(&dropout) {
            return Err(format!("dropout must be in [0, 1), got {dropout}"));
        }
        let mrm_prob = raw.mrm_prob.unwrap_or(0.15);
        if !(mrm_prob > 0.0 && mrm_prob <= 1.0) {
            return Err(format!("mrm_prob must be in (0, 1], got {mrm_prob}"));
        }
        let max_txt_len = match raw.max_txt_len.unwrap_or(60) {
            -1 => None,
            n if n > 0 => Some(n as usize),
            n => return Err(format!("max_txt_len must be > 0 or -1, got {n}")),
        };
        let cls_concat = match (ov.cls_concat, raw.cls_concat.as_deref()) {
            (Some(c), _) => c,
            (None, Some(s)) => s.parse()?,
            (None, None) => ClsConcat::Add,
        };

        Ok(Self {
            train_batch_size,
            val_batch_size,
            gradient_accumulation_steps,
            num_train_steps,
            valid_steps,
            warmup_steps,
            learning_rate,
            betas,
            weight_decay,
            grad_norm,
            dropout,
            mrm_prob,
            max_txt_len,
            cls_concat,
        })
    }
}

/// The training and validation corpora, every db checked to exist.
fn check_datasets(
    raw: &RawConfig,
    ov: &PretrainOverrides,
    ev: &EvalConfig,
) -> Result<(Vec<TrainDataset>, Vec<ValDataset>), String> {
    let datasets =
        |field: &str, list: Option<Vec<RawDataset>>| -> Result<Vec<RawDataset>, String> {
            let list = list.unwrap_or_default();
            if list.is_empty() {
                return Err(format!("{field} is missing or empty"));
            }
            Ok(list)
        };
    // The reference's docker layout mounts the dbs at /db and /img (its txt_db_mapping /
    // img_db_mapping options); with --data-root those absolute paths are re-rooted there.
    let resolve = |given: &str| -> PathBuf {
        if let Some(root) = ov.data_root.as_deref() {
            for prefix in ["/db/", "/img/", "/pretrain/"] {
                if let Some(rest) = given.strip_prefix(prefix) {
                    return root.join(&prefix[1..]).join(rest);
                }
            }
        }
        ev.resolve(given)
    };
    let check_db = |field: String, given: &str| -> Result<PathBuf, String> {
        let p = resolve(given);
        if p.is_dir() {
            Ok(p)
        } else {
            Err(format!(
                "{field} {given:?} not found (resolved to {})",
                p.display()
            ))
        }
    };
    let parse_task = |field: &str, t: &str| -> Result<PretrainTask, String> {
        t.parse::<PretrainTask>().map_err(|_| {
            format!(
                "{field}: unknown task {t:?} (expected itm, mlm, mrfr, mrckl or mrc; \
                     mrm-nce is not implemented upstream either)"
            )
        })
    };
    let mut train = Vec::new();
    for (i, d) in datasets("train_datasets", raw.train_datasets.clone())?
        .into_iter()
        .enumerate()
    {
        let name = d.name.clone().unwrap_or_else(|| format!("train{i}"));
        let field = format!("train_datasets[{i}] ({name})");
        if d.db.is_empty() || d.db.len() != d.img.len() {
            return Err(format!(
                "{field}: db has {} entries and img {} (they pair 1:1, at least one)",
                d.db.len(),
                d.img.len()
            ));
        }
        if d.tasks.is_empty() || d.tasks.len() != d.mix_ratio.len() {
            return Err(format!(
                "{field}: tasks has {} entries and mix_ratio {} (one ratio per task, at least one)",
                d.tasks.len(),
                d.mix_ratio.len()
            ));
        }
        let mut dbs = Vec::new();
        for (j, (t, im)) in d.db.iter().zip(&d.img).enumerate() {
            dbs.push(DbPair {
                txt_db: check_db(format!("{field}.db[{j}]"), t)?,
                img_db: check_db(format!("{field}.img[{j}]"), im)?,
            });
        }
        let mut tasks = Vec::new();
        for (t, &r) in d.tasks.iter().zip(&d.mix_ratio) {
            if r < 0 {
                return Err(format!("{field}: mix_ratio of {t} must be >= 0, got {r}"));
            }
            tasks.push((parse_task(&field, t)?, r as usize));
        }
        train.push(TrainDataset { name, dbs, tasks });
    }
    if train.iter().flat_map(|d| &d.tasks).all(|(_, r)| *r == 0) {
        return Err("every mix_ratio is 0: no task would ever be trained".into());
    }
    let mut val = Vec::new();
    for (i, d) in raw
        .val_datasets
        .clone()
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let name = d.name.clone().unwrap_or_else(|| format!("val{i}"));
        let field = format!("val_datasets[{i}] ({name})");
        if d.db.len() != 1 || d.img.len() != 1 {
            return Err(format!("{field}: needs exactly one db and one img"));
        }
        let tasks = d
            .tasks
            .iter()
            .map(|t| parse_task(&field, t))
            .collect::<Result<Vec<_>, _>>()?;
        val.push(ValDataset {
            db: DbPair {
                txt_db: check_db(format!("{field}.db[0]"), &d.db[0])?,
                img_db: check_db(format!("{field}.img[0]"), &d.img[0])?,
            },
            name,
            tasks,
        });
    }

    Ok((train, val))
}

impl PretrainSettings {
    /// `{task}_{dataset}` names and mixture weights in config order (MetaLoader's pool order).
    pub fn task_streams(&self) -> Vec<(String, usize, PretrainTask, usize)> {
        let mut out = Vec::new();
        for (d, ds) in self.train.iter().enumerate() {
            for &(task, ratio) in &ds.tasks {
                out.push((format!("{}_{}", task.name(), ds.name), d, task, ratio));
            }
        }
        out
    }
}
