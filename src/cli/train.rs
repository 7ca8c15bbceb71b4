//! `lightningdot train --config FT.json`: fine-tuning like the reference's train_itm.py
//! (`bash/train_flickr.sh`), with burn-train's dashboard; rerunning the same command resumes.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use lightningdot::device::{DeviceSpec, TrainTask, run_train_on};
use lightningdot::eval::format_table;
use lightningdot::train::{
    Dashboard, Precision, RunOptions, Sampling, TrainError, TrainOverrides, TrainPlan, TrainSummary,
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
    /// Initial bi-encoder, replacing the config's biencoder_checkpoint: LightningDot.pt, a
    /// fine-tuned .pt or a model directory.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// UNITER checkpoint for the image tower (config: img_checkpoint; used without a bi-encoder).
    #[arg(long)]
    pub img_checkpoint: Option<PathBuf>,
    /// BERT state_dict for the text tower (default: pytorch_model.bin in the txt_model_config directory).
    #[arg(long)]
    pub txt_checkpoint: Option<PathBuf>,
    /// Image tower config, replacing the config's img_model_config.
    #[arg(long)]
    pub img_config: Option<String>,
    /// Text tower config, replacing the config's txt_model_config.
    #[arg(long)]
    pub txt_config: Option<String>,
    /// Base directory for the config's relative paths (default: the config file's directory).
    #[arg(long)]
    pub data_root: Option<PathBuf>,
    /// f32, or bf16 (bf16 weights and activations, f32 master weights in the optimizer).
    #[arg(long, default_value = "f32", value_parser = parse_precision)]
    pub precision: Precision,
    /// auto (burn-train's terminal dashboard when stdout is a terminal), tui or plain.
    #[arg(long, default_value = "auto", value_parser = parse_dashboard)]
    pub dashboard: Dashboard,
    /// Seconds between plain progress lines.
    #[arg(long, default_value_t = 10.0)]
    pub progress_interval: f64,
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

pub(crate) fn parse_precision(s: &str) -> Result<Precision, String> {
    s.parse()
}

pub(crate) fn parse_dashboard(s: &str) -> Result<Dashboard, String> {
    match s {
        "auto" => Ok(Dashboard::Auto),
        "tui" => Ok(Dashboard::Tui),
        "plain" => Ok(Dashboard::Plain),
        other => Err(format!(
            "unknown dashboard {other:?}: expected auto, tui or plain"
        )),
    }
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
    if !(a.progress_interval.is_finite() && a.progress_interval >= 0.0) {
        anyhow::bail!("--progress-interval must be a non-negative number of seconds");
    }
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
        checkpoint: a.checkpoint.clone(),
        img_checkpoint: a.img_checkpoint.clone(),
        txt_checkpoint: a.txt_checkpoint.clone(),
        img_config: a.img_config.clone(),
        txt_config: a.txt_config.clone(),
        precision: a.precision,
        data_root: a.data_root.clone(),
    };
    let plan = TrainPlan::resolve(&a.config, &overrides)?;
    let opts = RunOptions {
        dashboard: a.dashboard,
        progress_interval: Duration::from_secs_f64(a.progress_interval),
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
