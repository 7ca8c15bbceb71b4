//! `lightningdot pretrain --config PRETRAIN.json`: pre-training like the reference's
//! pretrain.py (VMLM, SMRM, CMR) with burn-train's dashboard; rerunning the same command
//! resumes after the last checkpoint.

use std::path::PathBuf;

use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;
use clap::{Args, ValueEnum};
use lightningdot::device::{DeviceSpec, TrainTask, run_train_on};
use lightningdot::model::ClsConcat;
use lightningdot::pretrain::{
    PretrainError, PretrainOverrides, PretrainPlan, PretrainRunOptions, PretrainSummary,
};

/// `--cls-concat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CliClsConcat {
    /// No fusion: plain MLM / MRM, what the reference's shipped config trains (issue #8).
    None,
    /// The paper's VMLM / SMRM (the default here).
    Add,
    Multiply,
}

#[derive(Args, Debug)]
pub struct PretrainArgs {
    /// Pre-training config in the reference's form (config/pretrain-alldata-base.json).
    #[arg(long)]
    pub config: PathBuf,
    /// Where last/, ckpt/, state/ and metrics.json go (default: the config's output_dir).
    /// Rerunning with the same directory and settings resumes after the last checkpoint.
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
    /// How VMLM / SMRM fuse the other tower's [CLS] (default: the config's cls_concat, else
    /// add, the paper's objective; `none` reproduces the reference's default).
    #[arg(long, value_enum)]
    pub cls_concat: Option<CliClsConcat>,
    /// Optimizer updates (config: num_train_steps).
    #[arg(long)]
    pub num_train_steps: Option<usize>,
    /// Updates between validation + checkpoint (config: valid_steps).
    #[arg(long)]
    pub valid_steps: Option<usize>,
    /// Tokens (words + regions, padding included) per micro-batch (config: train_batch_size).
    #[arg(long)]
    pub train_batch_size: Option<usize>,
    /// Tokens per validation batch (config: val_batch_size).
    #[arg(long)]
    pub val_batch_size: Option<usize>,
    /// Micro-batches of one task per update (config: gradient_accumulation_steps).
    #[arg(long)]
    pub gradient_accumulation_steps: Option<usize>,
    /// Peak learning rate (config: learning_rate).
    #[arg(long)]
    pub learning_rate: Option<f64>,
    /// Warmup updates (config: warmup_steps).
    #[arg(long)]
    pub warmup_steps: Option<usize>,
    /// Seed of the task mixture, batching, masking and dropout (config: seed).
    #[arg(long)]
    pub seed: Option<u64>,
    #[command(flatten)]
    pub init: super::run_args::InitArgs,
    #[command(flatten)]
    pub run: super::run_args::RunArgs,
    /// Stop after committing this many checkpoints in this process (rerun to continue).
    #[arg(long)]
    pub stop_after: Option<usize>,
}

struct Task<'a> {
    plan: &'a PretrainPlan,
    opts: PretrainRunOptions,
}

impl TrainTask for Task<'_> {
    type Output = Result<PretrainSummary, PretrainError>;

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        lightningdot::pretrain::run::<B>(self.plan, &self.opts, device)
    }
}

pub fn run(a: PretrainArgs, device: DeviceSpec) -> Result<()> {
    let progress_interval = a.run.progress_interval()?;
    let overrides = PretrainOverrides {
        output_dir: a.output_dir.clone(),
        cls_concat: a.cls_concat.map(|c| match c {
            CliClsConcat::None => ClsConcat::None,
            CliClsConcat::Add => ClsConcat::Add,
            CliClsConcat::Multiply => ClsConcat::Multiply,
        }),
        num_train_steps: a.num_train_steps,
        valid_steps: a.valid_steps,
        train_batch_size: a.train_batch_size,
        val_batch_size: a.val_batch_size,
        gradient_accumulation_steps: a.gradient_accumulation_steps,
        learning_rate: a.learning_rate,
        warmup_steps: a.warmup_steps,
        seed: a.seed,
        checkpoint: a.init.checkpoint.clone(),
        img_checkpoint: a.init.img_checkpoint.clone(),
        txt_checkpoint: a.init.txt_checkpoint.clone(),
        img_config: a.init.img_config.clone(),
        txt_config: a.init.txt_config.clone(),
        precision: a.run.precision,
        data_root: a.run.data_root.clone(),
    };
    let plan = PretrainPlan::resolve(&a.config, &overrides)?;
    let opts = PretrainRunOptions {
        dashboard: a.run.dashboard,
        progress_interval,
        stop_after_periods: a.stop_after,
    };
    let summary = run_train_on(device, Task { plan: &plan, opts })??;
    print_summary(&summary);
    Ok(())
}

fn print_summary(s: &PretrainSummary) {
    println!(
        "{} of {} update(s) done in {}{}",
        s.steps_done,
        s.num_train_steps,
        s.output_dir.display(),
        match s.resumed_at {
            Some(e) => format!(" (resumed after update {e})"),
            None => String::new(),
        }
    );
    for c in &s.checkpoints {
        println!("  update {:>7}: {}", c.step, c.summary());
    }
    if !s.complete() {
        println!("rerun the same command to continue");
    }
}
