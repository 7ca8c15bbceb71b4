//! Pre-training like the reference's pretrain.py (spec §6) on burn-train.
//!
//! | module | job |
//! |---|---|
//! | [`config`] | the pre-training JSON + command-line overrides → [`PretrainSettings`] |
//! | [`data`] | the `{task}_{dataset}` streams, the task mixture, validation sets; resumable |
//! | [`batch`] | a task's batch in the reference collate form, validated, on the device |
//! | [`outputs`] | every forward output under the fixture names (`forward --task mlm…`) |
//! | [`schedule`] | the warmup-linear LR with its 1e-8 floor |
//! | [`step`] | burn-train's train / validation steps and the dashboard metrics |
//! | [`synthetic`] | a learnable pre-training config over synthetic dbs (tests, benchmarks) |
//! | [`renderer`] | plain progress lines when stdout is not a terminal |
//! | [`run`] | the burn-train wiring: periods of `valid_steps` updates, atomic checkpoints, resume |
//!
//! Entry point: [`run::run`] (or `lightningdot pretrain`).
//!
//! The stochastic recipe (masking, token buckets, task mixture) lives in
//! [`crate::data::pretrain`]; the heads and losses in [`crate::model`].

pub mod batch;
pub mod config;
pub mod data;
pub mod outputs;
pub mod renderer;
pub mod run;
pub mod schedule;
pub mod step;
pub mod synthetic;

pub use batch::PretrainHostBatch;
pub use config::{PretrainOverrides, PretrainPlan, PretrainSettings};
pub use outputs::{NamedOutputs, task_outputs};
pub use run::{PretrainRunOptions, PretrainSummary, run};
pub use schedule::WarmupLinear;

/// Why a pre-training run could not start or continue. `Display` is one line naming the cause.
#[derive(Debug, thiserror::Error)]
pub enum PretrainError {
    #[error("pretrain config: {0}")]
    Config(String),
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    #[error(transparent)]
    Convert(#[from] crate::conversion::ConvertError),
    #[error(transparent)]
    Batch(#[from] crate::batch::BatchError),
    #[error(transparent)]
    Train(#[from] crate::train::TrainError),
    #[error("model: {0}")]
    Model(String),
    #[error(transparent)]
    Run(#[from] crate::run::RunError),
}
