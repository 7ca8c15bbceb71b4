//! Flags `train` and `pretrain` share: the initial weights and how a run is shown.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use lightningdot::train::{Dashboard, Precision};

/// Initial weights and tower sizes, replacing the config's.
#[derive(Args, Debug, Clone)]
pub struct InitArgs {
    /// Initial bi-encoder, replacing the config's: LightningDot.pt (also a pre-training
    /// checkpoint), a fine-tuned .pt, or a model / pre-training directory.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// UNITER checkpoint for the image tower (config: img_checkpoint; used without a bi-encoder).
    #[arg(long)]
    pub img_checkpoint: Option<PathBuf>,
    /// BERT state_dict for the text tower (config: txt_checkpoint; default: pytorch_model.bin
    /// in the txt_model_config directory).
    #[arg(long)]
    pub txt_checkpoint: Option<PathBuf>,
    /// Image tower config, replacing the config's img_model_config.
    #[arg(long)]
    pub img_config: Option<String>,
    /// Text tower config, replacing the config's txt_model_config.
    #[arg(long)]
    pub txt_config: Option<String>,
}

/// Where a run reads from, its precision, and how it shows progress.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
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
}

impl RunArgs {
    pub fn progress_interval(&self) -> Result<Duration> {
        if !(self.progress_interval.is_finite() && self.progress_interval >= 0.0) {
            anyhow::bail!("--progress-interval must be a non-negative number of seconds");
        }
        Ok(Duration::from_secs_f64(self.progress_interval))
    }
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
