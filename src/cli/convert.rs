//! `lightningdot convert FILE.pt --out DIR`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::prelude::Backend;
use clap::Args;
use lightningdot::conversion::{
    Checkpoint, ModelSource, RecordPrecision, load_biencoder, write_model_dir,
};
use lightningdot::device::{BackendTask, DeviceSpec, run_on};

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// The PyTorch checkpoint (LightningDot.pt, flickr-ft.pt, coco-ft.pt, or a fine-tune output).
    pub file: PathBuf,
    /// Image tower config (UniterConfig JSON or `uniter-base`; default: config/img_base.json sizes).
    #[arg(long)]
    pub img_config: Option<String>,
    /// Text tower config (HF config.json, a directory holding one, or `bert-base-cased` — the default).
    #[arg(long)]
    pub txt_config: Option<String>,
    /// Projection size; inferred from the checkpoint when omitted.
    #[arg(long)]
    pub project_dim: Option<usize>,
    /// Output model directory (written atomically).
    #[arg(long)]
    pub out: PathBuf,
    /// Store the record in f16 (half the size; computation still runs in f32).
    #[arg(long)]
    pub half: bool,
    /// Replace `--out` if it exists.
    #[arg(long)]
    pub force: bool,
    /// Report missing/unexpected keys instead of failing.
    #[arg(long)]
    pub allow_partial: bool,
}

struct ConvertTask<'a> {
    args: &'a ConvertArgs,
    ckpt: &'a Checkpoint,
}

impl BackendTask for ConvertTask<'_> {
    type Output = Result<()>;

    fn run<B: Backend>(self, device: B::Device) -> Result<()> {
        let a = self.args;
        let source = ModelSource {
            checkpoint: a.file.clone(),
            img_config: a.img_config.clone(),
            txt_config: a.txt_config.clone(),
            project_dim: a.project_dim,
            options: lightningdot::conversion::LoadOptions {
                allow_partial: a.allow_partial,
            },
        };
        let cfg = source.resolve_config(self.ckpt)?;
        let (model, report) = load_biencoder::<B>(self.ckpt, &cfg, &device, source.options)?;
        for k in &report.unexpected {
            tracing::warn!("unused checkpoint key: {k}");
        }
        for k in &report.missing {
            tracing::warn!("parameter not in checkpoint (left at init): {k}");
        }
        let precision = if a.half {
            RecordPrecision::F16
        } else {
            RecordPrecision::F32
        };
        write_model_dir(
            model,
            &cfg,
            precision,
            Some((a.file.as_path(), self.ckpt.layout.describe())),
            &a.out,
            a.force,
        )?;
        println!(
            "converted {} ({} tensors applied, project_dim {}) -> {}",
            a.file.display(),
            report.applied,
            cfg.project_dim,
            a.out.display()
        );
        Ok(())
    }
}

pub fn run(args: ConvertArgs, device: DeviceSpec) -> Result<()> {
    let started = std::time::Instant::now();
    let ckpt = Checkpoint::open(&args.file)?;
    tracing::info!("{}: {}", args.file.display(), ckpt.layout.describe());
    run_on(
        device,
        ConvertTask {
            args: &args,
            ckpt: &ckpt,
        },
    )?
    .with_context(|| format!("converting {}", display(&args.file)))?;
    tracing::info!("done in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

fn display(p: &Path) -> String {
    p.display().to_string()
}
