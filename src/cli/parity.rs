//! The parity self-check on the tiny model and batch embedded in the binary — open and inspect
//! the `.pt`, convert it, run both towers from the converted directory, and compare every stage
//! with the reference PyTorch outputs. A step of `demo`; `bench` reuses it on any device.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::prelude::Backend;
use lightningdot::conversion::{
    Checkpoint, ModelSource, RecordPrecision, load_biencoder, write_model_dir,
};
use lightningdot::device::{BackendTask, DeviceSpec, run_on};
use lightningdot::inference::{HostBatch, forward_stages};
use lightningdot::tensor_io::{HostTensor, TensorFile};

const FILES: [(&str, &[u8]); 6] = [
    (
        "biencoder.best.pt",
        include_bytes!("../../tests/tiny/biencoder.best.pt"),
    ),
    (
        "img_model_config.json",
        include_bytes!("../../tests/tiny/img_model_config.json"),
    ),
    (
        "txt_model_config/config.json",
        include_bytes!("../../tests/tiny/txt_model_config/config.json"),
    ),
    (
        "txt_model_config/vocab.txt",
        include_bytes!("../../tests/tiny/txt_model_config/vocab.txt"),
    ),
    (
        "batch.safetensors",
        include_bytes!("../../tests/tiny/batch.safetensors"),
    ),
    (
        "expected_main.safetensors",
        include_bytes!("../../tests/tiny/expected_main.safetensors"),
    ),
];

/// Tolerance of the fixtures README for an fp32 port.
pub const ATOL: f32 = 1e-4;

/// One compared stage: name, shape, max |got - reference|.
pub type StageDiff = (String, Vec<usize>, f32);

struct Parity {
    dir: PathBuf,
}

impl BackendTask for Parity {
    type Output = Result<Vec<StageDiff>>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let d = &self.dir;
        let source = ModelSource {
            checkpoint: d.join("biencoder.best.pt"),
            img_config: Some(d.join("img_model_config.json").display().to_string()),
            txt_config: Some(d.join("txt_model_config").display().to_string()),
            ..Default::default()
        };
        let ckpt = Checkpoint::open(&source.checkpoint)?;
        println!(
            "1. inspect   {} tensors, layout: {}",
            ckpt.tensors.len(),
            ckpt.layout.describe()
        );
        let cfg = source.resolve_config(&ckpt)?;
        let (model, report) = load_biencoder::<B>(&ckpt, &cfg, &device, source.options)?;
        let out = d.join("converted");
        write_model_dir(
            model,
            &cfg,
            RecordPrecision::F32,
            Some((&source.checkpoint, "demo")),
            &out,
            true,
        )?;
        println!(
            "2. convert   {} tensors applied, {} ignored -> {}",
            report.applied,
            report.ignored.len(),
            out.display()
        );
        let (model, _, _) = ModelSource {
            checkpoint: out,
            ..Default::default()
        }
        .load::<B>(&device)?;
        let batch = HostBatch::from_file(&TensorFile::open(&d.join("batch.safetensors"))?)?;
        batch.validate(&cfg)?;
        let got = forward_stages(&model, &batch, &device);
        println!(
            "3. forward   {} captions x {} images on {}",
            batch.txt_input_ids.shape[0],
            batch.img_feat.shape[0],
            std::any::type_name::<B>()
                .rsplit("::")
                .next()
                .unwrap_or("?")
        );
        let want = TensorFile::open(&d.join("expected_main.safetensors"))?;
        let mut rows = Vec::new();
        let mut names = want.names();
        names.sort();
        for name in names {
            let w = want.f32(&name)?;
            let g: &HostTensor<f32> = got
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, t)| t)
                .with_context(|| format!("stage {name} not produced"))?;
            let diff = g
                .values
                .iter()
                .zip(&w.values)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            rows.push((name, w.shape, diff));
        }
        Ok(rows)
    }
}

/// Writes the embedded files into `dir`, runs the check on `device` and prints each step and
/// the per-stage table. Fails when a stage exceeds [`ATOL`].
pub fn run(dir: &Path, device: DeviceSpec) -> Result<Vec<StageDiff>> {
    write_assets(dir)?;
    let rows = run_on(
        device,
        Parity {
            dir: dir.to_path_buf(),
        },
    )??;
    println!("4. compare with the reference PyTorch outputs (atol {ATOL:e}):");
    println!("   {:<28} {:>14} {:>12}", "stage", "shape", "max |diff|");
    let mut worst = 0f32;
    for (name, shape, diff) in &rows {
        println!("   {name:<28} {:>14} {diff:>12.3e}", format!("{shape:?}"));
        worst = worst.max(*diff);
    }
    if worst > ATOL {
        bail!(
            "{} stages compared, worst difference {worst:e} exceeds {ATOL:e}",
            rows.len()
        );
    }
    println!(
        "OK: {} stages match the reference (worst {worst:.2e})",
        rows.len()
    );
    Ok(rows)
}

fn write_assets(dir: &Path) -> Result<()> {
    for (name, bytes) in FILES {
        let p = dir.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&p, bytes).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}
