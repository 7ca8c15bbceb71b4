//! Pre-training like the reference's pretrain.py (spec §6) on burn-train.
//!
//! | module | job |
//! |---|---|
//! | [`batch`] | a task's batch in the reference collate form, validated, on the device |
//! | [`outputs`] | every forward output under the fixture names (`forward --task mlm…`) |
//! | [`schedule`] | the warmup-linear LR with its 1e-8 floor |
//!
//! The stochastic recipe (masking, token buckets, task mixture) lives in
//! [`crate::data::pretrain`]; the heads and losses in [`crate::model`].

pub mod batch;
pub mod outputs;
pub mod schedule;

pub use batch::{PretrainBatchError, PretrainHostBatch};
pub use outputs::{NamedOutputs, task_outputs};
pub use schedule::WarmupLinear;
