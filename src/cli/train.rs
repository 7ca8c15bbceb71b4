//! `lightningdot train --config FT.json`: fine-tuning like the reference's train_itm.py
//! (`bash/train_flickr.sh`), with burn-train's dashboard; rerunning the same command resumes.

use std::path::PathBuf;

use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use lightningdot::device::{DeviceSpec, TrainTask, run_train_on};
use lightningdot::eval::format_table;
use lightningdot::train::{
    RunOptions, Sampling, TrainError, TrainOverrides, TrainPlan, TrainSummary,
};

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Fine-tune config in the reference's form (config/flickr30k_ft_config.json).
    #[arg(long)]
    pub config: PathBuf,
    /// Where best/, last/, state/ and metrics.json go (default: the config's output_dir).
    /// Rerunning with the same directory and settings resumes after the last finished epoch.
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
    /// Peak learning rate (config: learning_rate).
    #[arg(long)]
    pub learning_rate: Option<f64>,
    /// Pairs per step (config: train_batch_size).
    #[arg(long)]
    pub train_batch_size: Option<usize>,
    /// Epochs (config: num_train_epochs).
    #[arg(long)]
    pub num_train_epochs: Option<usize>,
    /// Micro-batches per optimizer update (config: gradient_accumulation_steps).
    #[arg(long)]
    pub gradient_accumulation_steps: Option<usize>,
    /// Warmup updates (default: the config's warmup_steps, else 10% of all updates).
    #[arg(long, conflicts_with = "warmup_proportion")]
    pub warmup_steps: Option<usize>,
    /// Warmup as a fraction of all updates (0.1 = the reference's train_itm.py).
    #[arg(long)]
    pub warmup_proportion: Option<f64>,
    /// Seed of shuffling, dropout and negative sampling (config: seed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Hard negatives per caption and per image (config: num_hard_negatives).
    #[arg(long)]
    pub num_hard_negatives: Option<usize>,
    /// random, top, top-random, 10-20 or 20-30 (config: hard_negatives_sampling).
    #[arg(long, value_parser = parse_sampling)]
    pub hard_negatives_sampling: Option<String>,
    /// Batch size of dev/test encoding (config: valid_batch_size, else val_batch_size, else 80).
    #[arg(long)]
    pub valid_batch_size: Option<usize>,
    #[command(flatten)]
    pub init: super::run_args::InitArgs,
    #[command(flatten)]
    pub run: super::run_args::RunArgs,
    /// Stop after committing this epoch (rerun to continue).
    #[arg(long)]
    pub stop_after_epoch: Option<usize>,
    /// Skip the final test evaluation of best/.
    #[arg(long)]
    pub no_test: bool,
}

fn parse_sampling(s: &str) -> Result<String, String> {
    s.parse::<Sampling>().map(|_| s.to_string())
}

struct Task<'a> {
    plan: &'a TrainPlan,
    opts: RunOptions,
}

impl TrainTask for Task<'_> {
    type Output = Result<TrainSummary, TrainError>;

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        lightningdot::train::run::<B>(self.plan, &self.opts, device)
    }
}

pub fn run(a: TrainArgs, device: DeviceSpec) -> Result<()> {
    let progress_interval = a.run.progress_interval()?;
    let overrides = TrainOverrides {
        output_dir: a.output_dir.clone(),
        learning_rate: a.learning_rate,
        train_batch_size: a.train_batch_size,
        num_train_epochs: a.num_train_epochs,
        gradient_accumulation_steps: a.gradient_accumulation_steps,
        warmup_steps: a.warmup_steps,
        warmup_proportion: a.warmup_proportion,
        seed: a.seed,
        num_hard_negatives: a.num_hard_negatives,
        hard_negatives_sampling: a.hard_negatives_sampling.clone(),
        valid_batch_size: a.valid_batch_size,
        checkpoint: a.init.checkpoint.clone(),
        img_checkpoint: a.init.img_checkpoint.clone(),
        txt_checkpoint: a.init.txt_checkpoint.clone(),
        img_config: a.init.img_config.clone(),
        txt_config: a.init.txt_config.clone(),
        precision: a.run.precision,
        data_root: a.run.data_root.clone(),
    };
    let plan = TrainPlan::resolve(&a.config, &overrides)?;
    let opts = RunOptions {
        dashboard: a.run.dashboard,
        progress_interval,
        stop_after_epoch: a.stop_after_epoch,
        test: !a.no_test,
    };
    let summary = run_train_on(device, Task { plan: &plan, opts })??;
    print_summary(&summary);
    Ok(())
}

fn print_summary(s: &TrainSummary) {
    println!(
        "{} epoch(s) of {} done in {}{}",
        s.epochs_done,
        s.num_epochs,
        s.output_dir.display(),
        match s.resumed_after {
            Some(e) => format!(" (resumed after epoch {e})"),
            None => String::new(),
        }
    );
    for e in &s.epochs {
        println!(
            "  epoch {:>3}  train loss {:.4}  dev mean recall {:6.2}{}",
            e.epoch,
            e.train_loss,
            100.0 * e.dev_mean,
            if Some(e.epoch) == s.best_epoch {
                "  <- best"
            } else {
                ""
            }
        );
    }
    if let Some(b) = s
        .best_epoch
        .and_then(|b| s.epochs.iter().find(|e| e.epoch == b))
    {
        println!("{}", format_table("dev (best epoch)", &b.dev));
    }
    if let Some(t) = &s.test {
        println!("{}", format_table("test (best/)", t));
    }
    if !s.complete() {
        println!("rerun the same command to continue");
    }
}
