//! Fine-tuning like the reference's train_itm.py (spec §5) on burn-train.
//!
//! | module | job |
//! |---|---|
//! | [`config`] | the fine-tune JSON + command-line overrides → [`TrainSettings`] |
//! | [`init`] | initial weights: a bi-encoder file/dir, or UNITER + BERT towers |
//! | [`data`] | the training pairs (one per caption), seeded per-epoch shuffling, collate with hard negatives |
//! | [`loss`] | the symmetric in-batch NLL and burn-train's `TrainStep` |
//! | [`optim`] | global-norm clipping + transformers-2.3.0 AdamW as a burn `Optimizer` |
//! | [`schedule`] | linear warmup then linear decay, per update |
//! | [`metric`] | whole-dev-split recall as a burn-train epoch metric (`InferenceStep`) |
//! | [`hard_negatives`] | exact-search mining over the training set and the sampling modes |
//! | [`checkpoint`] | crash-safe epoch commits: `best/`, `last/`, `state/`, `metrics.json` |
//! | [`renderer`] | plain progress lines when stdout is not a terminal |
//! | [`learner`] | the burn-train wiring: learner, custom epoch loop, resume |
//! | [`synthetic`] | a small learnable task in the UNITER formats (tests, benchmarks) |
//! | [`scenes`] | the demo's collection: learnable scenes captioned in words |
//!
//! Entry point: [`run`] (or `lightningdot train`).

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod hard_negatives;
pub mod init;
pub mod learner;
pub mod loss;
pub mod metric;
pub mod optim;
pub mod renderer;
pub mod scenes;
pub mod schedule;
pub mod step_report;
pub mod synthetic;

pub use config::{Init, Precision, Sampling, TrainOverrides, TrainPlan, TrainSettings, Warmup};
pub use learner::{Dashboard, RunOptions, TrainSummary, run, set_bf16};
pub use loss::{ContrastiveLosses, TrainBatch, contrastive_loss};
pub use optim::{HfAdamW, global_grad_norm};
pub use schedule::LinearWarmupDecay;

/// Why a training run could not start or continue. `Display` is one line naming the cause.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("train config: {0}")]
    Config(String),
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    #[error(transparent)]
    Convert(#[from] crate::conversion::ConvertError),
    #[error("model: {0}")]
    Model(String),
    #[error("{0}")]
    Eval(#[from] crate::eval::EvalError),
    #[error("output directory {path}: {reason}")]
    Output { path: String, reason: String },
    #[error("cannot resume from {path}: {reason}")]
    Resume { path: String, reason: String },
    #[error("hard negatives: {0}")]
    HardNegatives(String),
    #[error("device: {0}")]
    Device(String),
}

impl TrainError {
    pub(crate) fn output(path: &std::path::Path, reason: impl std::fmt::Display) -> Self {
        TrainError::Output {
            path: path.display().to_string(),
            reason: reason.to_string(),
        }
    }
}
