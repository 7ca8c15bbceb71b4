//! `lightningdot export --checkpoint FILE.pt|DIR --out OUT.pt [--layout …] [--half] [--force]`:
//! a model back to a PyTorch checkpoint the reference code loads (spec §3.2–3.4).

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};
use lightningdot::conversion::{
    HeadsSource, export_biencoder_pt, export_pretraining_pt, load_pretraining_source,
    source_has_heads,
};
use lightningdot::device::CpuBackend;

use super::ModelArgs;

/// Which of the reference's files to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExportLayout {
    /// LightningDot.pt / pretrain.py `model_step_N.pt`: `bert.`-prefixed bi-encoder + heads.
    Pretraining,
    /// A plain `BiEncoder.state_dict()` (`img_model.*`, `txt_model.*`).
    Biencoder,
    /// coco-ft.pt / train_itm.py form: the state_dict under `model_dict`.
    Finetune,
}

impl ExportLayout {
    fn name(self) -> &'static str {
        match self {
            ExportLayout::Pretraining => "pretraining",
            ExportLayout::Biencoder => "biencoder",
            ExportLayout::Finetune => "finetune",
        }
    }
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The `.pt` file to write (atomically).
    #[arg(long)]
    pub out: PathBuf,
    /// Layout to write (default: pretraining when the source has pre-training heads, else
    /// biencoder).
    #[arg(long, value_enum)]
    pub layout: Option<ExportLayout>,
    /// Store float16, like the released files (default float32).
    #[arg(long)]
    pub half: bool,
    /// Replace `--out` if it exists.
    #[arg(long)]
    pub force: bool,
}

/// Runs on the CPU whatever `--device` says: exporting only moves weights.
pub fn run(args: ExportArgs) -> Result<()> {
    let out = &args.out;
    if out.is_dir() {
        bail!(
            "{}: is a directory; --out names the .pt file to write",
            out.display()
        );
    }
    if out.exists() && !args.force {
        bail!(
            "{}: already exists (pass --force to replace it)",
            out.display()
        );
    }
    let source = args.model.source();
    let layout = match args.layout {
        Some(l) => l,
        None if source_has_heads(&source.checkpoint)? => ExportLayout::Pretraining,
        None => ExportLayout::Biencoder,
    };
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| anyhow::anyhow!("{}: cannot create directory: {e}", parent.display()))?;
    }
    let device = Default::default();
    let written = match layout {
        ExportLayout::Pretraining => {
            let (model, _, heads) = load_pretraining_source::<CpuBackend>(&source, &device)?;
            if heads == HeadsSource::Initialised {
                tracing::warn!(
                    "{} holds no pre-training heads: writing freshly initialised ones",
                    source.checkpoint.display()
                );
            }
            export_pretraining_pt(&model, out, args.half)?
        }
        // The plain bi-encoder load keeps every tensor as stored (the pre-training load zeroes
        // mask_embedding row 0), so a bi-encoder source round-trips bit for bit.
        ExportLayout::Biencoder | ExportLayout::Finetune => {
            let (model, _, _) = source.load::<CpuBackend>(&device)?;
            export_biencoder_pt(&model, out, args.half, layout == ExportLayout::Finetune)?
        }
    };
    println!(
        "exported {} -> {} ({} layout, {} tensors, {})",
        source.checkpoint.display(),
        out.display(),
        layout.name(),
        written,
        if args.half { "float16" } else { "float32" }
    );
    Ok(())
}
