//! The BUTD detector's row of `bench` (images/s; random weights of the full-size config, the
//! released model's sizes) and the CPU comparison with the reference PyTorch detector.
//!
//! The reference (`lxmert/modeling_frcnn.py` + `utils.py` of
//! huggingface/transformers-research-projects) is not shipped: `--torch-frcnn DIR` names the
//! user's copy, and `scripts/bench_frcnn.py` (embedded) times it on the same input size with the
//! same random-weight rule, with 1 and 2 threads. A ratio is printed only when the machine was
//! quiet (1-minute load average at most [`QUIET_LOAD`] before the runs): on a busy machine both
//! sides lose an unknown share of the cores.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use lightningdot::device::{BackendTask, DeviceSpec, memory_in_use};
use lightningdot::model::detector::{DecodedImage, Detector, DetectorConfig};
use lightningdot::train::data::SplitMix64;
use serde_json::{Value, json};

use super::{Timing, measure};

/// The released detector's config (unc-nlp/frcnn-vg-finetuned, reconstructed; see its header).
pub const FULL_CONFIG: &str = include_str!("../../../configs/frcnn-vg-finetuned.yaml");
/// The PyTorch timing script run on the user's copy of the reference.
const TORCH_SCRIPT: &str = include_str!("../../../scripts/bench_frcnn.py");
/// Largest 1-minute load average at which a PyTorch ratio is reported.
pub const QUIET_LOAD: f64 = 0.3;

/// Input size and RoI count of the detector workload.
#[derive(Debug, Clone, Copy)]
pub struct DetectorSize {
    pub height: usize,
    pub width: usize,
    /// RPN proposals per image (`post_nms_topk_test`), each through res5.
    pub proposals: usize,
    /// 1, not the released 36: random weights need not leave 36 boxes after NMS (the
    /// reference then crashes, this port errors), and the count barely changes the work.
    pub min_detections: usize,
    pub max_detections: usize,
    pub warmup: usize,
    pub timed: usize,
}

impl DetectorSize {
    /// 600 × 1000 (the Caffe BUTD test size) with the config's 300 proposals, or a small input
    /// and 20 proposals for `--quick` (the CPU CI).
    pub fn new(quick: bool) -> Self {
        if quick {
            Self {
                height: 240,
                width: 400,
                proposals: 20,
                min_detections: 1,
                max_detections: 20,
                warmup: 1,
                timed: 1,
            }
        } else {
            Self {
                height: 600,
                width: 1000,
                proposals: 300,
                min_detections: 1,
                max_detections: 36,
                warmup: 1,
                timed: 3,
            }
        }
    }

    /// The full-size config at this size.
    pub fn config(&self) -> Result<DetectorConfig> {
        let mut cfg = DetectorConfig::from_yaml(FULL_CONFIG)?;
        cfg.min_size_test = self.height;
        cfg.max_size_test = self.width;
        cfg.post_nms_topk_test = self.proposals;
        cfg.min_detections = self.min_detections;
        cfg.max_detections = self.max_detections;
        Ok(cfg)
    }

    fn label(&self) -> String {
        format!(
            "{}x{} input, R101-C4 random, {} RoIs, {} boxes",
            self.height, self.width, self.proposals, self.max_detections
        )
    }
}

/// Random pixels of `h × w` (the work does not depend on their values).
fn random_image(h: usize, w: usize) -> DecodedImage {
    let mut rng = SplitMix64::new(3, 0, 0);
    DecodedImage {
        height: h,
        width: w,
        pixels: (0..h * w * 3).map(|_| rng.below(256) as u8).collect(),
    }
}

/// The detector workload on one backend.
pub(super) struct DetectorBench {
    pub size: DetectorSize,
    pub spec: DeviceSpec,
}

impl BackendTask for DetectorBench {
    type Output = Result<Timing>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let s = self.size;
        let det = Detector::<B>::random(s.config()?, 0, &device);
        let img = random_image(s.height, s.width);
        let (warmup_s, samples) =
            measure::<B>("BUTD detector", &device, s.warmup, s.timed, || {
                det.detect(&img)?;
                Ok(())
            })?;
        Ok(Timing {
            key: "detector".into(),
            name: "BUTD detector (decode excluded)".into(),
            size: s.label(),
            samples,
            items: 1,
            unit: "images",
            warmup_s,
            memory: memory_in_use(self.spec),
        })
    }
}

/// The 1-minute load average.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The CPU's SIMD levels that matter to both sides' kernels.
pub fn cpu_flags() -> Vec<&'static str> {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags: Vec<&str> = info
        .lines()
        .find(|l| l.starts_with("flags"))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    [
        "avx2",
        "fma",
        "avx512f",
        "avx512_bf16",
        "avx512_vnni",
        "amx_tile",
        "amx_bf16",
    ]
    .into_iter()
    .filter(|f| flags.contains(f))
    .collect()
}

/// What the PyTorch script measured: seconds per image for each thread count.
#[derive(Debug, Clone)]
pub struct TorchTimes {
    pub torch_version: String,
    /// `(threads, mean seconds per image)`.
    pub per_threads: Vec<(usize, f64)>,
}

/// Runs `scripts/bench_frcnn.py` on the reference in `reference` (the lxmert directory).
pub fn time_torch(python: &Path, reference: &Path, size: &DetectorSize) -> Result<TorchTimes> {
    for f in ["modeling_frcnn.py", "utils.py"] {
        if !reference.join(f).is_file() {
            bail!(
                "--torch-frcnn {}: no {f} there (give the lxmert directory of \
                 huggingface/transformers-research-projects)",
                reference.display()
            );
        }
    }
    let dir = std::env::temp_dir().join(format!("lightningdot-frcnn-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let script = dir.join("bench_frcnn.py");
    let config = dir.join("config.yaml");
    std::fs::write(&script, TORCH_SCRIPT)?;
    std::fs::write(&config, FULL_CONFIG)?;
    let out = std::process::Command::new(python)
        .arg(&script)
        .arg("--reference")
        .arg(reference)
        .arg("--config")
        .arg(&config)
        .args(["--height", &size.height.to_string()])
        .args(["--width", &size.width.to_string()])
        .args(["--proposals", &size.proposals.to_string()])
        .args(["--min-detections", &size.min_detections.to_string()])
        .args(["--max-detections", &size.max_detections.to_string()])
        .args(["--warmup", &size.warmup.to_string()])
        .args(["--timed", &size.timed.to_string()])
        .args(["--threads", "1,2"])
        .output()
        .with_context(|| format!("cannot run {}", python.display()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = out?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or("no output");
        bail!("the PyTorch reference run failed: {last}");
    }
    let v: Value = String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .context("the PyTorch reference run printed no JSON line")?;
    let per_threads = v["threads"]
        .as_array()
        .context("no \"threads\" in the PyTorch result")?
        .iter()
        .filter_map(|t| Some((t["threads"].as_u64()? as usize, t["mean_s"].as_f64()?)))
        .collect();
    Ok(TorchTimes {
        torch_version: v["torch"].as_str().unwrap_or("?").to_string(),
        per_threads,
    })
}

/// The comparison section (printed and put into the JSON report).
pub(super) fn compare(
    ours: &Timing,
    torch: Result<TorchTimes>,
    load_before: Option<f64>,
    load_after: Option<f64>,
    threads: usize,
) -> Value {
    let cpu = super::device_name(DeviceSpec::Cpu);
    let flags = cpu_flags().join(" ");
    let fmt_load = |l: Option<f64>| l.map_or("n/a".to_string(), |l| format!("{l:.2}"));
    println!();
    println!("BUTD detector vs the PyTorch reference, CPU, {}", ours.size);
    println!(
        "cpu: {cpu}; SIMD: {flags}; load average before {}, after {}",
        fmt_load(load_before),
        fmt_load(load_after)
    );
    let ours_s = ours.mean();
    println!("lightningdot (burn-flex, {threads} threads): {ours_s:.3} s/image");
    let torch = match torch {
        Ok(t) => t,
        Err(e) => {
            println!("PyTorch: not measured ({e:#})");
            return json!({"cpu": cpu, "simd": flags, "load_before": load_before,
                "load_after": load_after, "lightningdot_s": ours_s, "pytorch": Value::Null,
                "note": format!("{e:#}")});
        }
    };
    for (t, s) in &torch.per_threads {
        println!(
            "PyTorch {} ({t} thread{}): {s:.3} s/image",
            torch.torch_version,
            if *t == 1 { "" } else { "s" }
        );
    }
    let best = torch
        .per_threads
        .iter()
        .map(|t| t.1)
        .fold(f64::INFINITY, f64::min);
    let quiet = load_before.is_some_and(|l| l <= QUIET_LOAD);
    let ratio = (quiet && best.is_finite()).then(|| ours_s / best);
    match ratio {
        Some(r) => println!("time ratio lightningdot / best PyTorch: {r:.2} (below 1 = faster)"),
        None => println!(
            "machine busy (load {} > {QUIET_LOAD} before the runs), no ratio",
            fmt_load(load_before)
        ),
    }
    json!({
        "cpu": cpu, "simd": flags, "load_before": load_before, "load_after": load_after,
        "lightningdot_s": ours_s, "lightningdot_threads": threads,
        "pytorch": {"version": torch.torch_version,
            "threads": torch.per_threads.iter().map(|(t, s)| json!({"threads": t, "mean_s": s})).collect::<Vec<_>>()},
        "ratio": ratio,
    })
}

/// `--torch-frcnn` and `--python`, checked.
pub fn torch_args(dir: &Option<PathBuf>, device: DeviceSpec) -> Result<()> {
    if dir.is_some() && device != DeviceSpec::Cpu {
        bail!("--torch-frcnn compares on the CPU only: run with --device cpu");
    }
    Ok(())
}
