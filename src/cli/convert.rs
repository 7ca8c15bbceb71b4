//! `lightningdot convert FILE.pt --out DIR`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::prelude::Backend;
use clap::Args;
use lightningdot::conversion::{
    Checkpoint, DetectorSource, ModelSource, RecordPrecision, VOCAB_FILES, load_biencoder,
    write_detector_dir, write_model_dir_with_vocab,
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
    /// A directory's vocab.txt / tokenizer.json is copied into the output for query tokenization.
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
        if self.ckpt.layout == lightningdot::conversion::Layout::Uniter {
            return convert_uniter::<B>(a, self.ckpt, device);
        }
        if self.ckpt.layout == lightningdot::conversion::Layout::Detector {
            return convert_detector::<B>(a, device);
        }
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
        let vocab_dir = a
            .txt_config
            .as_deref()
            .map(Path::new)
            .filter(|d| d.is_dir());
        write_model_dir_with_vocab(
            model,
            &cfg,
            precision,
            Some((a.file.as_path(), self.ckpt.layout.describe())),
            &a.out,
            a.force,
            vocab_dir,
        )?;
        let copied: Vec<&str> = VOCAB_FILES
            .into_iter()
            .filter(|f| a.out.join(f).is_file())
            .collect();
        if copied.is_empty() {
            tracing::info!(
                "no vocab.txt / tokenizer.json copied (pass --txt-config DIR holding one, or \
                 --vocab to index/search/serve)"
            );
        } else {
            tracing::info!("copied {} into {}", copied.join(", "), a.out.display());
        }
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

/// A detector needs no conversion (it is read as PyTorch wrote it): check it loads strictly
/// with the config.yaml beside it, then copy both into `--out` (the reference's directory).
fn convert_detector<B: Backend>(a: &ConvertArgs, device: B::Device) -> Result<()> {
    let source = DetectorSource {
        path: a.file.clone(),
        config: None,
        options: lightningdot::conversion::LoadOptions {
            allow_partial: a.allow_partial,
        },
    };
    let (_, report) = source.load::<B>(&device)?;
    write_detector_dir(&source, &a.out, a.force)?;
    println!(
        "checked detector {} ({} tensors applied) -> {} (pytorch_model.bin + config.yaml)",
        a.file.display(),
        report.applied,
        a.out.display()
    );
    Ok(())
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

/// A UNITER cross-encoder file (`uniter.` or `bert.` prefix) → a re-ranker directory for
/// `--rerank-checkpoint`; `--img-config` gives its UniterConfig (default: a config.json beside
/// the file, else sizes read from the tensors).
fn convert_uniter<B: Backend>(a: &ConvertArgs, ckpt: &Checkpoint, device: B::Device) -> Result<()> {
    use lightningdot::conversion::{LoadOptions, UniterSource, load_uniter_itm, write_uniter_dir};
    if a.txt_config.is_some() || a.project_dim.is_some() {
        anyhow::bail!(
            "a UNITER cross-encoder has no text tower or projection: drop --txt-config/--project-dim"
        );
    }
    let source = UniterSource {
        checkpoint: a.file.clone(),
        config: a.img_config.clone(),
        options: LoadOptions {
            allow_partial: a.allow_partial,
        },
    };
    let (cfg, from) = source.resolve_config(ckpt)?;
    tracing::info!("UNITER config: {from}");
    let (model, report) = load_uniter_itm::<B>(ckpt, &cfg, &device, source.options)?;
    for k in &report.load.missing {
        tracing::warn!("parameter not in checkpoint (left at init): {k}");
    }
    let precision = if a.half {
        RecordPrecision::F16
    } else {
        RecordPrecision::F32
    };
    write_uniter_dir(
        model,
        &cfg,
        precision,
        Some((a.file.as_path(), report.prefix.as_str())),
        &a.out,
        a.force,
    )?;
    println!(
        "converted UNITER cross-encoder {} ({} tensors applied, `{}` prefix{}) -> {}",
        a.file.display(),
        report.load.applied,
        report.prefix,
        if report.rank_from_itm {
            ", rank_output from itm_output[1]"
        } else {
            ""
        },
        a.out.display()
    );
    Ok(())
}
