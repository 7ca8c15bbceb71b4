//! `lightningdot bench`: parity and speed on one device, with nothing but the binary.
//!
//! Parity: the tiny model and batch embedded for `demo` — every stage against the reference
//! PyTorch outputs — and one fine-tuning step against the reference's step (losses, gradient
//! norms, the loss after clip + AdamW, which reflects every parameter after the update).
//! Throughput: BERT-base / UNITER-base towers with random weights on synthetic inputs, each
//! workload warmed up first (JIT compilation and autotuning on CUDA), then timed per iteration
//! with a device synchronisation.
//!
//! Tolerances. f32: those of the fixtures README for an fp32 port (stages 1e-4 absolute,
//! losses 1e-5, gradient norms 1e-4 relative). bf16: derived from its rounding (see
//! `bf16_forward_roundings`): with F roundings on the forward path and u = 2^-8, stages within
//! F·u of their scale (largest |reference|), losses within F·u relative, gradient norms and the
//! loss after the update (backward included) within 2F·u relative. The train step's parameters
//! stay f32 masters; only the forward/backward is bf16.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::optim::lr_scheduler::LrScheduler;
use burn::optim::{GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::train::TrainStep;
use clap::Args;
use lightningdot::conversion::{param_ids, pretrain_no_decay};
use lightningdot::device::{
    BackendTask, DeviceSpec, TrainTask, memory_in_use, run_on, run_train_on,
};
use lightningdot::encode::{region_tensors, text_tensors, to_host};
use lightningdot::model::{
    BiEncoder, BiEncoderConfig, BiEncoderForPretraining, ClsConcat, EncoderConfig, PretrainInput,
    PretrainTask,
};
use lightningdot::pretrain::WarmupLinear;
use lightningdot::search::FlatIndex;
use lightningdot::train::data::{HostTrainBatch, SplitMix64, to_device};
use lightningdot::train::step_report::{BF16_UNIT_ROUNDOFF, bf16_forward_roundings};
use lightningdot::train::synthetic::random_pairs;
use lightningdot::train::{HfAdamW, Precision, set_bf16};
use serde_json::{Value, json};

use super::parity;

mod detector;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// f32, or bf16 (bf16 weights and activations; f32 master weights, moments and losses).
    #[arg(long, default_value = "f32", value_parser = super::run_args::parse_precision)]
    pub precision: Precision,
    /// Small batches and few iterations (the CPU CI run): the table names every size used.
    #[arg(long)]
    pub quick: bool,
    /// Also write every number as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Time the reference PyTorch detector too (CPU): the `lxmert` directory of
    /// huggingface/transformers-research-projects (modeling_frcnn.py + utils.py; needs torch,
    /// torchvision, numpy and pyyaml for --python).
    #[arg(long)]
    pub torch_frcnn: Option<PathBuf>,
    /// The Python interpreter for --torch-frcnn.
    #[arg(long, default_value = "python3")]
    pub python: PathBuf,
}

/// Caption length of the fine-tuning workload (the reference's Flickr30k captions are shorter).
const TRAIN_TXT_LEN: usize = 40;
/// Regions per image (the released img_db's fixed 36 boxes).
const BOXES: usize = 36;
/// Caption length of the text-encode workload.
const ENCODE_TXT_LEN: usize = 32;
/// Query length of the search workload.
const QUERY_LEN: usize = 16;
/// Stored vectors of the search workload: MSCOCO's 123,287 images.
const INDEX_ROWS: usize = 123_287;
const TOP_K: usize = 10;
/// Word pieces of a pre-training caption (`[CLS]` + 22 + `[SEP]`, as benches/pretrain.rs).
const PRETRAIN_TXT_LEN: usize = 24;

/// How big and how often: the full run (a GPU; benches/pytorch_bench.py's defaults are the same)
/// or `--quick` (the 2-core CPU CI).
#[derive(Debug, Clone)]
struct Sizes {
    train_pairs: Vec<usize>,
    encode_batch: usize,
    pretrain_pairs: usize,
    warmup: usize,
    timed: usize,
    query_warmup: usize,
    query_timed: usize,
}

impl Sizes {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                train_pairs: vec![8],
                encode_batch: 16,
                pretrain_pairs: 4,
                warmup: 1,
                timed: 2,
                query_warmup: 2,
                query_timed: 20,
            }
        } else {
            Self {
                train_pairs: vec![128, 256],
                encode_batch: 256,
                pretrain_pairs: 64,
                warmup: 2,
                timed: 5,
                query_warmup: 10,
                query_timed: 50,
            }
        }
    }
}

/// One parity comparison.
#[derive(Debug, Clone)]
struct Check {
    name: String,
    got: Option<f64>,
    reference: Option<f64>,
    /// |got - reference| (absolute or relative, as `relative` says).
    diff: f64,
    tol: f64,
    relative: bool,
}

impl Check {
    fn ok(&self) -> bool {
        self.diff <= self.tol
    }
}

/// One timed workload.
#[derive(Debug, Clone)]
struct Timing {
    /// Stable name shared with benches/pytorch_bench.py (`finetune_128`, `image_encode`, ...).
    key: String,
    name: String,
    size: String,
    /// Seconds of each timed iteration.
    samples: Vec<f64>,
    /// Items per iteration (pairs, images, captions, queries) and their name.
    items: usize,
    unit: &'static str,
    warmup_s: f64,
    /// Device memory after the workload (see [`memory_in_use`]).
    memory: Option<u64>,
}

impl Timing {
    fn quantile(&self, q: f64) -> f64 {
        let mut s = self.samples.clone();
        s.sort_by(f64::total_cmp);
        if s.is_empty() {
            return f64::NAN;
        }
        // Nearest rank: p99 of 100 samples is the 99th smallest.
        let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
        s[rank - 1]
    }

    fn mean(&self) -> f64 {
        self.samples.iter().sum::<f64>() / self.samples.len().max(1) as f64
    }

    fn json(&self) -> Value {
        json!({
            "key": self.key,
            "workload": self.name,
            "size": self.size,
            "iterations": self.samples.len(),
            "mean_ms": self.mean() * 1e3,
            "p50_ms": self.quantile(0.5) * 1e3,
            "p99_ms": self.quantile(0.99) * 1e3,
            "items_per_iteration": self.items,
            "unit": self.unit,
            "per_s": self.items as f64 / self.mean(),
            "warmup_s": self.warmup_s,
            "memory_bytes": self.memory,
        })
    }
}

pub fn run(args: BenchArgs, device: DeviceSpec) -> Result<()> {
    let started = Instant::now();
    let sizes = Sizes::new(args.quick);
    let precision = args.precision;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    tracing::info!("bench on {device} ({precision:?}), {sizes:?}");
    detector::torch_args(&args.torch_frcnn, device)?;
    let load_before = detector::load_average();

    // Parity first: a wrong device is not worth timing.
    let dir = std::env::temp_dir().join(format!("lightningdot-bench-{}", std::process::id()));
    let checks = parity_checks(&dir, device, precision);
    let _ = std::fs::remove_dir_all(&dir);
    let checks = checks?;

    let mut timings = run_on(
        device,
        Inference {
            sizes: sizes.clone(),
            precision,
            spec: device,
        },
    )??;
    timings.extend(run_train_on(
        device,
        Training {
            sizes: sizes.clone(),
            precision,
            spec: device,
        },
    )??);
    let det_size = detector::DetectorSize::new(args.quick);
    let det_timing = run_on(
        device,
        detector::DetectorBench {
            size: det_size,
            spec: device,
        },
    )??;
    let torch = args
        .torch_frcnn
        .as_ref()
        .map(|dir| detector::time_torch(&args.python, dir, &det_size));
    let load_after = detector::load_average();
    timings.push(det_timing.clone());
    let elapsed = started.elapsed();

    let title = format!(
        "lightningdot bench --device {device} --precision {} {}({} CPU threads), {:.0} s",
        precision_name(precision),
        if args.quick { "--quick " } else { "" },
        threads,
        elapsed.as_secs_f64()
    );
    print_table(&title, &checks, &timings, device);
    let vs_torch = torch
        .map(|t| detector::compare(&det_timing, t, load_before, load_after, threads))
        .unwrap_or(Value::Null);
    if let Some(path) = &args.json {
        let doc = json!({
            "device": device.to_string(),
            "device_name": device_name(device),
            "precision": precision_name(precision),
            "quick": args.quick,
            "cpu_threads": threads,
            "elapsed_s": elapsed.as_secs_f64(),
            "memory_note": memory_note(device),
            "parity": checks.iter().map(|c| json!({
                "check": c.name, "got": c.got, "reference": c.reference, "diff": c.diff,
                "tolerance": c.tol, "relative": c.relative, "ok": c.ok(),
            })).collect::<Vec<_>>(),
            "throughput": timings.iter().map(Timing::json).collect::<Vec<_>>(),
            "detector_vs_pytorch": vs_torch,
        });
        lightningdot::fsio::write_json(path, &doc)?;
    }
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| !c.ok())
        .map(|c| c.name.as_str())
        .collect();
    if !failed.is_empty() {
        bail!(
            "{} of {} parity checks exceed their tolerance: {}",
            failed.len(),
            checks.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

fn precision_name(p: Precision) -> &'static str {
    match p {
        Precision::F32 => "f32",
        Precision::Bf16 => "bf16",
    }
}

/// The CPU model, or the GPU's name as the driver reports it.
fn device_name(device: DeviceSpec) -> String {
    match device {
        DeviceSpec::Cpu => std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "cpu".into()),
        DeviceSpec::Cuda(_) => lightningdot::device::cuda_name(device).unwrap_or_default(),
    }
}

fn memory_note(device: DeviceSpec) -> &'static str {
    match device {
        DeviceSpec::Cpu => "peak resident memory of the process so far (VmHWM)",
        DeviceSpec::Cuda(_) => {
            "device memory in use after the workload (driver: total - free); burn's pool keeps \
             what it reserved, so this is its peak"
        }
    }
}

/// Stage and train-step comparisons with the embedded reference.
fn parity_checks(
    dir: &std::path::Path,
    device: DeviceSpec,
    precision: Precision,
) -> Result<Vec<Check>> {
    let stages = parity::stages(dir, device, precision)?;
    let (step, reference) = parity::train_step(dir, device, precision)?;
    // The embedded model has 2 layers per tower (tests/tiny/*config.json).
    let fwd = bf16_forward_roundings(2) * BF16_UNIT_ROUNDOFF;
    let want = lightningdot::tensor_io::TensorFile::open(&dir.join("expected_main.safetensors"))?;
    let mut checks = Vec::new();
    for (name, _shape, diff) in stages {
        let scale = want
            .f32(&name)?
            .values
            .iter()
            .fold(0f32, |m, v| m.max(v.abs())) as f64;
        let tol = match precision {
            Precision::F32 => parity::ATOL as f64,
            Precision::Bf16 => fwd * scale,
        };
        checks.push(Check {
            name: format!("stage {name}"),
            got: None,
            reference: None,
            diff: diff as f64,
            tol,
            relative: false,
        });
    }
    let r = &reference.report;
    // f32: absolute for losses, relative for norms (fixtures README). bf16: relative, through
    // the forward only (losses: 1 pass) or forward and backward (norms, the loss after the
    // update: 2 passes).
    let check = |name: &str, got: f64, exp: f64, f32_tol: f64, f32_rel: bool, passes: f64| {
        let relative = precision == Precision::Bf16 || f32_rel;
        let d = (got - exp).abs();
        Check {
            name: name.to_string(),
            got: Some(got),
            reference: Some(exp),
            diff: if relative {
                d / exp.abs().max(f64::MIN_POSITIVE)
            } else {
                d
            },
            tol: match precision {
                Precision::F32 => f32_tol,
                Precision::Bf16 => passes * fwd,
            },
            relative,
        }
    };
    checks.push(check("step loss", step.loss, r.loss, 1e-5, false, 1.0));
    checks.push(check(
        "step loss_nce_txt",
        step.loss_i2t,
        r.loss_i2t,
        1e-5,
        false,
        1.0,
    ));
    checks.push(check(
        "step loss_nce_img",
        step.loss_t2i,
        r.loss_t2i,
        1e-5,
        false,
        1.0,
    ));
    for ((name, got), (_, exp)) in step.grad_norms.iter().zip(&r.grad_norms) {
        checks.push(check(
            &format!("grad norm {name}"),
            *got,
            *exp,
            1e-4,
            true,
            2.0,
        ));
    }
    checks.push(check(
        "total grad norm",
        step.total_grad_norm,
        r.total_grad_norm,
        1e-4,
        true,
        2.0,
    ));
    checks.push(check(
        "loss after clip + AdamW",
        step.loss_after,
        r.loss_after,
        1e-5,
        false,
        2.0,
    ));
    Ok(checks)
}

fn full_size() -> BiEncoderConfig {
    BiEncoderConfig {
        img: EncoderConfig::uniter_base(),
        txt: EncoderConfig::bert_base_cased(),
        project_dim: 768,
    }
}

fn sync<B: Backend>(device: &B::Device) -> Result<()> {
    B::sync(device).map_err(|e| anyhow::anyhow!("device synchronisation failed: {e:?}"))
}

/// Runs `f` `warmup` times untimed, then `timed` times, each followed by a device sync. Logs
/// the result at once, so that a run cut short still shows what it measured.
fn measure<B: Backend>(
    what: &str,
    device: &B::Device,
    warmup: usize,
    timed: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<(f64, Vec<f64>)> {
    let t = Instant::now();
    for _ in 0..warmup {
        f()?;
        sync::<B>(device)?;
    }
    let warmup_s = t.elapsed().as_secs_f64();
    let mut samples = Vec::with_capacity(timed);
    for _ in 0..timed {
        let t = Instant::now();
        f()?;
        sync::<B>(device)?;
        samples.push(t.elapsed().as_secs_f64());
    }
    let mean = samples.iter().sum::<f64>() / timed.max(1) as f64;
    tracing::info!("{what}: warm-up {warmup_s:.1} s, {mean:.4} s per iteration over {timed}");
    Ok((warmup_s, samples))
}

fn set_precision<B: Backend>(device: &B::Device, precision: Precision) -> Result<()> {
    if precision == Precision::Bf16 {
        set_bf16::<B>(device)?;
    }
    Ok(())
}

/// Image encode, text encode, one query + exact top-10 (inference backend).
struct Inference {
    sizes: Sizes,
    precision: Precision,
    spec: DeviceSpec,
}

impl BackendTask for Inference {
    type Output = Result<Vec<Timing>>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        set_precision::<B>(&device, self.precision)?;
        B::seed(&device, 0);
        let s = &self.sizes;
        // Fused query/key/value, as every loaded model is on an inference backend.
        let model = BiEncoder::<B>::new(&full_size(), &device).fuse_qkv();
        let mut out = Vec::new();

        let n = s.encode_batch;
        let hb = random_pairs(n, ENCODE_TXT_LEN, BOXES, 1)?;
        let regions = region_tensors::<B>(&hb.images, &device);
        let (warmup_s, samples) = measure::<B>("image encode", &device, s.warmup, s.timed, || {
            let _ = model.encode_image(&regions);
            Ok(())
        })?;
        out.push(Timing {
            key: "image_encode".into(),
            name: "image encode".into(),
            size: format!("{n} x {BOXES} regions"),
            samples,
            items: n,
            unit: "images",
            warmup_s,
            memory: memory_in_use(self.spec),
        });
        let (ids, mask) = text_tensors::<B>(&hb.text, &device);
        let (warmup_s, samples) = measure::<B>("text encode", &device, s.warmup, s.timed, || {
            let _ = model.encode_text(ids.clone(), mask.clone());
            Ok(())
        })?;
        out.push(Timing {
            key: "text_encode".into(),
            name: "text encode".into(),
            size: format!("{n} x {ENCODE_TXT_LEN} tokens"),
            samples,
            items: n,
            unit: "captions",
            warmup_s,
            memory: memory_in_use(self.spec),
        });
        drop((regions, ids, mask, hb));

        // Random stored vectors: the cost of an exact search does not depend on their values.
        let dim = full_size().project_dim;
        let mut rng = SplitMix64::new(2, 0, 0);
        let vectors: Vec<f32> = (0..INDEX_ROWS * dim)
            .map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
            .collect();
        let index = FlatIndex::<B>::new(&vectors, dim, &device);
        drop(vectors);
        let query = random_pairs(1, QUERY_LEN, 1, 3)?.text;
        let mut hits = 0;
        let (warmup_s, samples) = measure::<B>(
            "query + top-10",
            &device,
            s.query_warmup,
            s.query_timed,
            || {
                // The whole request path: ids to the device, encode, vector to the host, search.
                let (ids, mask) = text_tensors::<B>(&query, &device);
                let q = to_host(model.encode_text(ids, mask));
                hits += index.search(&q, TOP_K).first().map_or(0, Vec::len);
                Ok(())
            },
        )?;
        if hits == 0 {
            bail!("the search workload returned no hits");
        }
        out.push(Timing {
            key: "query_top10".into(),
            name: format!("query encode + exact top-{TOP_K}"),
            size: format!("1 x {QUERY_LEN} tokens, {INDEX_ROWS} x {dim} stored"),
            samples,
            items: 1,
            unit: "queries",
            warmup_s,
            memory: memory_in_use(self.spec),
        });
        Ok(out)
    }
}

/// Fine-tuning steps and a pre-training micro-step (autodiff backend).
struct Training {
    sizes: Sizes,
    precision: Precision,
    spec: DeviceSpec,
}

impl TrainTask for Training {
    type Output = Result<Vec<Timing>>;

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        set_precision::<B>(&device, self.precision)?;
        B::seed(&device, 0);
        let s = &self.sizes;
        let cfg = full_size();
        let mut out = Vec::new();
        for &pairs in &s.train_pairs {
            let hb = random_pairs(pairs, TRAIN_TXT_LEN, BOXES, 4)?;
            let batch = to_device::<B>(&hb, 1.0, &device);
            let mut model = Some(BiEncoder::<B>::new(&cfg, &device));
            let mut optim = HfAdamW::<B>::new(2.0);
            let (warmup_s, samples) = measure::<B>(
                &format!("fine-tune step, {pairs} pairs"),
                &device,
                s.warmup,
                s.timed,
                || {
                    let m = model.take().context("model")?;
                    let step = m.step(batch.clone());
                    model = Some(optim.step(2e-5, m, step.grads));
                    Ok(())
                },
            )?;
            out.push(Timing {
                key: format!("finetune_{pairs}"),
                name: "fine-tune step".into(),
                size: format!(
                    "{pairs} pairs ({TRAIN_TXT_LEN} tokens, {BOXES} regions), fwd+bwd+clip+AdamW"
                ),
                samples,
                items: pairs,
                unit: "pairs",
                warmup_s,
                memory: memory_in_use(self.spec),
            });
        }

        let pairs = s.pretrain_pairs;
        let input = mlm_input::<B>(random_pairs(pairs, PRETRAIN_TXT_LEN, BOXES, 5)?, &device);
        let mut model = Some(BiEncoderForPretraining::<B>::new(&cfg, &device).zero_mask_row());
        let no_decay = param_ids(model.as_ref().context("model")?)
            .into_iter()
            .filter(|(path, _)| pretrain_no_decay(path))
            .map(|(_, id)| id)
            .collect();
        // pretrain.py's optimizer and schedule (the values do not change the cost of a step).
        let mut optim = HfAdamW::<B>::uniter(5.0, (0.9, 0.98), 0.01, no_decay);
        let mut sched = WarmupLinear::new(5e-5, 10_000, 300_000);
        let (warmup_s, samples) = measure::<B>(
            "pre-training micro-step",
            &device,
            s.warmup,
            s.timed,
            || {
                let m = model.take().context("model")?;
                let loss = m.task_loss(&input, PretrainTask::Mlm, ClsConcat::Add).loss;
                let grads = GradientsParams::from_grads(loss.backward(), &m);
                model = Some(optim.step(sched.step(), m, grads));
                Ok(())
            },
        )?;
        out.push(Timing {
            key: "pretrain_mlm".into(),
            name: "pre-training micro-step (MLM)".into(),
            size: format!(
                "{pairs} pairs ({PRETRAIN_TXT_LEN} tokens, {BOXES} regions), fwd+bwd+clip+AdamW"
            ),
            samples,
            items: pairs,
            unit: "pairs",
            warmup_s,
            memory: memory_in_use(self.spec),
        });
        drop(model);
        Ok(out)
    }
}

/// An MLM batch from random pairs: every 7th inner word piece (≈ the reference's 15%) is
/// replaced by `[MASK]` and predicted.
fn mlm_input<B: Backend>(mut hb: HostTrainBatch, device: &B::Device) -> PretrainInput<B> {
    const MASK: i64 = 103;
    let (b, l) = (hb.text.batch, hb.text.len);
    let mut positions = Vec::new();
    let mut targets = Vec::new();
    for r in 0..b {
        for t in (1..l - 1).step_by(7) {
            let at = r * l + t;
            positions.push(at as i64);
            targets.push(hb.text.input_ids[at]);
            hb.text.input_ids[at] = MASK;
        }
    }
    let batch = to_device::<B>(&hb, 1.0, device);
    let ints = |v: Vec<i64>| {
        let n = v.len();
        Tensor::<B, 1, Int>::from_data(TensorData::new(v, [n]), device)
    };
    PretrainInput {
        input_ids: batch.input_ids,
        attention_mask: batch.attention_mask,
        regions: batch.regions,
        masked_positions: Some(ints(positions)),
        mlm_targets: Some(ints(targets)),
        feat_targets: None,
        label_targets: None,
    }
}

fn print_table(title: &str, checks: &[Check], timings: &[Timing], device: DeviceSpec) {
    println!("{title}");
    println!("device: {}", device_name(device));
    println!();
    println!(
        "| {:<70} | {:>12} | {:>12} | {:>10} | {:>10} | {:<4} |",
        "parity check (embedded tiny model)", "got", "reference", "diff", "tolerance", "ok"
    );
    println!(
        "|{:-<72}|{:-<14}|{:-<14}|{:-<12}|{:-<12}|{:-<6}|",
        "", "", "", "", "", ""
    );
    let num = |v: Option<f64>| v.map_or_else(String::new, |v| format!("{v:.6}"));
    for c in checks {
        println!(
            "| {:<70} | {:>12} | {:>12} | {:>10.2e} | {:>10.2e} | {:<4} |",
            c.name,
            num(c.got),
            num(c.reference),
            c.diff,
            c.tol,
            if c.ok() { "yes" } else { "NO" }
        );
    }
    println!(
        "(diff: stages max |got - reference|; other rows |got - reference|, divided by \
         |reference| where relative: norms, and every bf16 row)"
    );
    println!();
    println!(
        "| {:<32} | {:<58} | {:>5} | {:>10} | {:>10} | {:>10} | {:>12} | {:>9} | {:>10} |",
        "workload",
        "size",
        "iters",
        "mean ms",
        "p50 ms",
        "p99 ms",
        "per second",
        "warm-up s",
        "memory MB"
    );
    println!(
        "|{:-<34}|{:-<60}|{:-<7}|{:-<12}|{:-<12}|{:-<12}|{:-<14}|{:-<11}|{:-<12}|",
        "", "", "", "", "", "", "", "", ""
    );
    for t in timings {
        println!(
            "| {:<32} | {:<58} | {:>5} | {:>10.1} | {:>10.1} | {:>10.1} | {:>12} | {:>9.1} | {:>10} |",
            t.name,
            t.size,
            t.samples.len(),
            t.mean() * 1e3,
            t.quantile(0.5) * 1e3,
            t.quantile(0.99) * 1e3,
            format!("{:.1} {}", t.items as f64 / t.mean(), t.unit),
            t.warmup_s,
            t.memory.map_or_else(
                || "n/a".into(),
                |b| format!("{:.0}", b as f64 / (1 << 20) as f64)
            ),
        );
    }
    println!("memory: {}", memory_note(device));
}
