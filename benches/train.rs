//! Fine-tuning step throughput at BERT-base size on CPU: pairs/s of one training step (both
//! towers forward + backward, the symmetric in-batch loss, global-norm clipping and the
//! transformers-2.3.0 AdamW update) for 128 pairs of 40-token captions and 36-region images,
//! against the same step in PyTorch (benches/pytorch_train_step.py) in the same run.
//!
//! `cargo bench --bench train` (Python: `LIGHTNINGDOT_PYTHON` or `.venv/bin/python`).
//! `LIGHTNINGDOT_BENCH_PAIRS` (default 128) and `LIGHTNINGDOT_BENCH_STEPS` (timed steps after
//! one warm-up step, default 2) size the run.

use std::process::Command;
use std::time::Instant;

use burn::backend::Autodiff;
use burn::optim::Optimizer;
use burn::train::TrainStep;
use lightningdot::device::CpuBackend;
use lightningdot::model::{BiEncoder, BiEncoderConfig, EncoderConfig};
use lightningdot::train::HfAdamW;
use lightningdot::train::data::to_device;
use lightningdot::train::synthetic::random_pairs;

type TB = Autodiff<CpuBackend>;

const TXT_LEN: usize = 40;
const BOXES: usize = 36;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn main() {
    let pairs = env_usize("LIGHTNINGDOT_BENCH_PAIRS", 128);
    let steps = env_usize("LIGHTNINGDOT_BENCH_STEPS", 2).max(1);
    let device = Default::default();
    let cfg = BiEncoderConfig {
        img: EncoderConfig::uniter_base(),
        txt: EncoderConfig::bert_base_cased(),
        project_dim: 768,
    };
    let mut model = BiEncoder::<TB>::new(&cfg, &device);
    let hb = random_pairs(pairs, TXT_LEN, BOXES, 0).expect("uniform synthetic regions");
    let b = to_device::<TB>(&hb, 1.0, &device);
    let mut optim = HfAdamW::<TB>::new(2.0);
    let mut step = |model: BiEncoder<TB>| -> BiEncoder<TB> {
        let out = model.step(b.clone());
        let model = optim.step(2e-5, model, out.grads);
        // Wait for the update (the backend may still be computing lazily).
        let _ = out.item.losses.loss.into_scalar();
        model
    };
    let t = Instant::now();
    model = step(model);
    let first = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for _ in 0..steps {
        model = step(model);
    }
    let ours = t.elapsed().as_secs_f64() / steps as f64;
    let rss = peak_rss_mb();
    drop(model);

    let python = std::env::var("LIGHTNINGDOT_PYTHON")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python").to_string());
    let out = std::env::temp_dir().join(format!(
        "lightningdot-trainbench-{}.json",
        std::process::id()
    ));
    let ok = Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/benches/pytorch_train_step.py"
        ))
        .args(["--out", &out.display().to_string()])
        .args(["--pairs", &pairs.to_string(), "--steps", &steps.to_string()])
        .args([
            "--txt-len",
            &TXT_LEN.to_string(),
            "--boxes",
            &BOXES.to_string(),
        ])
        .status()
        .is_ok_and(|s| s.success());
    let py: Option<serde_json::Value> = ok
        .then(|| std::fs::read_to_string(&out).ok())
        .flatten()
        .and_then(|t| serde_json::from_str(&t).ok());
    let _ = std::fs::remove_file(&out);

    println!();
    println!(
        "fine-tuning step, BERT-base towers, CPU ({} threads), {pairs} pairs x ({TXT_LEN} tokens, {BOXES} regions), {steps} timed step(s) after 1 warm-up",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!(
        "| {:<24} | {:>12} | {:>12} | {:>7} |",
        "", "lightningdot", "PyTorch", "ratio"
    );
    println!("|{:-<26}|{:-<14}|{:-<14}|{:-<9}|", "", "", "", "");
    let f = |k: &str| py.as_ref().and_then(|v| v[k].as_f64());
    match (f("s_per_step"), f("first_step_s"), f("peak_rss_mb")) {
        (Some(ps), Some(pf), Some(pr)) => {
            println!(
                "| {:<24} | {:>11.1}s | {:>11.1}s | {:>6.2}x |",
                "time per step",
                ours,
                ps,
                ours / ps
            );
            println!(
                "| {:<24} | {:>12.2} | {:>12.2} | {:>6.2}x |",
                "pairs/s",
                pairs as f64 / ours,
                pairs as f64 / ps,
                ps / ours
            );
            println!(
                "| {:<24} | {:>11.1}s | {:>11.1}s | {:>7} |",
                "first step (warm-up)", first, pf, ""
            );
            println!(
                "| {:<24} | {:>9.0} MB | {:>9.0} MB | {:>7} |",
                "peak RSS", rss, pr, ""
            );
            println!(
                "ratio: time = lightningdot / PyTorch (below 1.0 = faster); pairs/s = lightningdot / PyTorch"
            );
        }
        _ => println!(
            "PyTorch baseline unavailable; lightningdot: {ours:.1}s per step ({:.2} pairs/s), peak RSS {rss:.0} MB",
            pairs as f64 / ours
        ),
    }
}
