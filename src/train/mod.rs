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
//! | [`checkpoint`] | what an epoch commit holds: `best/`, progress, `metrics.json` |
//! | [`renderer`] | plain progress lines when stdout is not a terminal |
//! | [`learner`] | the fine-tuning domain of [`crate::run`]'s engine: commits, mining, resume |
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

pub use crate::run::{Dashboard, set_bf16};
pub use config::{Init, Precision, Sampling, TrainOverrides, TrainPlan, TrainSettings, Warmup};
pub use learner::{RunOptions, TrainSummary, run};
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
    #[error(transparent)]
    Run(#[from] crate::run::RunError),
    #[error("hard negatives: {0}")]
    HardNegatives(String),
}
