//! The parity self-check on the tiny model and batch embedded in the binary — open and inspect
//! the `.pt`, convert it, run both towers from the converted directory, and compare every stage
//! with the reference PyTorch outputs; and one fine-tuning step on the same model and batch
//! against the reference's step (`train_step.json`). A step of `demo`; `bench` reuses both on
//! any device and precision.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use lightningdot::conversion::{
    Checkpoint, ModelSource, RecordPrecision, load_biencoder, write_model_dir,
};
use lightningdot::device::{BackendTask, DeviceSpec, TrainTask, run_on, run_train_on};
use lightningdot::forward::{HostBatch, forward_stages, region_batch};
use lightningdot::tensor_io::{HostTensor, TensorFile};
use lightningdot::train::init::with_dropout;
use lightningdot::train::step_report::{StepReport, step_report};
use lightningdot::train::{Precision, TrainBatch, set_bf16};

const FILES: [(&str, &[u8]); 7] = [
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
    (
        "train_step.json",
        include_bytes!("../../tests/tiny/train_step.json"),
    ),
];

/// Tolerance of the fixtures README for an fp32 port.
pub const ATOL: f32 = 1e-4;

/// One compared stage: name, shape, max |got - reference|.
pub type StageDiff = (String, Vec<usize>, f32);

struct Parity {
    dir: PathBuf,
    /// Print each step (demo); `bench` prints its own table.
    verbose: bool,
    precision: Precision,
}

/// The embedded model's source (checkpoint and both configs) under `dir`.
fn tiny_source(dir: &Path) -> ModelSource {
    ModelSource {
        checkpoint: dir.join("biencoder.best.pt"),
        img_config: Some(dir.join("img_model_config.json").display().to_string()),
        txt_config: Some(dir.join("txt_model_config").display().to_string()),
        ..Default::default()
    }
}

/// Switches `device` to bf16 before the task's first tensor when asked.
fn set_precision<B: Backend>(device: &B::Device, precision: Precision) -> Result<()> {
    if precision == Precision::Bf16 {
        set_bf16::<B>(device)?;
    }
    Ok(())
}

impl BackendTask for Parity {
    type Output = Result<Vec<StageDiff>>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        set_precision::<B>(&device, self.precision)?;
        let d = &self.dir;
        let say = |line: String| {
            if self.verbose {
                println!("{line}");
            }
        };
        let source = tiny_source(d);
        let ckpt = Checkpoint::open(&source.checkpoint)?;
        say(format!(
            "1. inspect   {} tensors, layout: {}",
            ckpt.tensors.len(),
            ckpt.layout.describe()
        ));
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
        say(format!(
            "2. convert   {} tensors applied, {} ignored -> {}",
            report.applied,
            report.ignored.len(),
            out.display()
        ));
        let (model, _, _) = ModelSource {
            checkpoint: out,
            ..Default::default()
        }
        .load::<B>(&device)?;
        let batch = HostBatch::from_file(&TensorFile::open(&d.join("batch.safetensors"))?)?;
        batch.validate(&cfg)?;
        let got = forward_stages(&model, &batch, &device);
        say(format!(
            "3. forward   {} captions x {} images on {}",
            batch.txt_input_ids.shape[0],
            batch.img_feat.shape[0],
            std::any::type_name::<B>()
                .rsplit("::")
                .next()
                .unwrap_or("?")
        ));
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
            verbose: true,
            precision: Precision::F32,
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

/// The per-stage differences of the embedded check on `device` in `precision`, printing
/// nothing (the caller judges them: bf16 needs its own tolerance).
pub fn stages(dir: &Path, device: DeviceSpec, precision: Precision) -> Result<Vec<StageDiff>> {
    write_assets(dir)?;
    run_on(
        device,
        Parity {
            dir: dir.to_path_buf(),
            verbose: false,
            precision,
        },
    )?
}

/// The reference's fine-tuning step (`train_step.json`, train_itm.py on the embedded batch).
#[derive(Debug, Clone, Default)]
pub struct ReferenceStep {
    pub report: StepReport,
    pub lr: f64,
    pub max_grad_norm: f64,
}

impl ReferenceStep {
    fn parse(text: &str) -> Result<Self> {
        let v: serde_json::Value = serde_json::from_str(text).context("train_step.json")?;
        let num = |key: &str| -> Result<f64> {
            // The loss keys carry an explanation after the name ("loss_nce_txt (image ...)").
            v.as_object()
                .and_then(|o| {
                    o.iter()
                        .find(|(k, _)| *k == key || k.starts_with(&format!("{key} ")))
                })
                .and_then(|(_, x)| x.as_f64())
                .with_context(|| format!("train_step.json has no number {key}"))
        };
        let grad_norms = v["grad_l2_norm"]
            .as_object()
            .context("train_step.json has no grad_l2_norm")?
            .iter()
            .map(|(k, x)| Ok((k.clone(), x.as_f64().context("grad_l2_norm value")?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            report: StepReport {
                loss: num("loss")?,
                loss_i2t: num("loss_nce_txt")?,
                loss_t2i: num("loss_nce_img")?,
                grad_norms,
                total_grad_norm: num("total_grad_norm_before_clip")?,
                loss_after: num("loss_after_one_step")?,
            },
            lr: num("lr_at_step")?,
            max_grad_norm: num("max_grad_norm")?,
        })
    }
}

struct Step {
    dir: PathBuf,
    reference: ReferenceStep,
    precision: Precision,
}

impl TrainTask for Step {
    type Output = Result<StepReport>;

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        set_precision::<B>(&device, self.precision)?;
        let source = tiny_source(&self.dir);
        let ckpt = Checkpoint::open(&source.checkpoint)?;
        // The reference ran the step under model.eval(): no dropout.
        let cfg = with_dropout(source.resolve_config(&ckpt)?, 0.0);
        let (model, _) = load_biencoder::<B>(&ckpt, &cfg, &device, source.options)?;
        let hb = HostBatch::from_file(&TensorFile::open(&self.dir.join("batch.safetensors"))?)?;
        hb.validate(&cfg)?;
        let batch = train_batch::<B>(&hb, &device);
        let names: Vec<String> = self
            .reference
            .report
            .grad_norms
            .iter()
            .map(|(n, _)| n.clone())
            .collect();
        Ok(step_report(
            model,
            batch,
            &names,
            self.reference.lr,
            self.reference.max_grad_norm,
        )?)
    }
}

/// The reference collate batch as a training batch on `device`: every caption and image is a
/// positive pair.
fn train_batch<B: Backend>(hb: &HostBatch, device: &B::Device) -> TrainBatch<B> {
    let ints = |t: &HostTensor<i64>| {
        Tensor::<B, 1, Int>::from_data(TensorData::new(t.values.clone(), [t.values.len()]), device)
            .reshape([t.shape[0], t.shape[1]])
    };
    TrainBatch {
        input_ids: ints(&hb.txt_input_ids),
        attention_mask: ints(&hb.txt_attention_mask),
        regions: region_batch::<B>(hb, device),
        queries: hb.txt_input_ids.shape[0],
        loss_scale: 1.0,
    }
}

/// One fine-tuning step of the embedded model on the embedded batch on `device` in
/// `precision`, and the reference's numbers for it.
pub fn train_step(
    dir: &Path,
    device: DeviceSpec,
    precision: Precision,
) -> Result<(StepReport, ReferenceStep)> {
    write_assets(dir)?;
    let reference = ReferenceStep::parse(&std::fs::read_to_string(dir.join("train_step.json"))?)?;
    let got = run_train_on(
        device,
        Step {
            dir: dir.to_path_buf(),
            reference: reference.clone(),
            precision,
        },
    )??;
    Ok((got, reference))
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
