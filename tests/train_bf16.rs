//! `--precision bf16` training checked against f32.
//!
//! burn fixes a device's default float type at its first tensor, so every test here runs in
//! bf16 (set before anything else) and compares with f32 numbers from elsewhere: the
//! reference's step (`fixtures/expected/train_step.json`, which the f32 step matches to 1e-5 in
//! tests/train_step.rs) and an f32 training run in a child process.
//!
//! Tolerances from bf16's rounding (`bf16_forward_roundings`): each rounding is off by at most
//! u = 2^-8 relative, and in the worst case the F roundings of the tiny model's forward path
//! (2 layers: F = 29) add up: the loss within F·u, gradient norms and the loss after the update
//! (the backward passes the same operations again) within 2F·u, all relative. The f32 master
//! weights, moments, loss and softmax add nothing on top.

mod common;

use std::process::Command;

use burn::tensor::DType;
use common::*;
use lightningdot::train::set_bf16;
use lightningdot::train::step_report::{BF16_UNIT_ROUNDOFF, bf16_forward_roundings, step_report};
use lightningdot::train::synthetic::{SyntheticSpec, write_synthetic};
use serde_json::{Value, json};

type TB = TrainBackend;

/// Relative error bound of the tiny model's (2 layers) bf16 forward.
fn forward_tol() -> f64 {
    bf16_forward_roundings(2) * BF16_UNIT_ROUNDOFF
}

fn bf16_device() -> burn::tensor::Device<TB> {
    let device = Default::default();
    set_bf16::<TB>(&device).expect("bf16 before the first tensor");
    device
}

#[test]
fn bf16_step_matches_the_f32_reference_within_bf16_rounding() {
    let device = bf16_device();
    let want: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("expected/train_step.json")).unwrap(),
    )
    .unwrap();
    let (model, batch) = train_step_setup(&device);
    // The weights really are bf16 (the step's optimizer then keeps f32 masters of them).
    let w = model.text.encoder.layers[0].attention.query.weight.val();
    assert_eq!(w.dtype(), DType::BF16);
    let names: Vec<String> = want["grad_l2_norm"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let got = step_report(
        model,
        batch,
        &names,
        want["lr_at_step"].as_f64().unwrap(),
        want["max_grad_norm"].as_f64().unwrap(),
    )
    .unwrap();

    let check = |name: &str, got: f64, exp: f64, tol: f64| {
        let rel = (got - exp).abs() / exp.abs();
        println!("{name}: bf16 {got:.6}, f32 {exp:.6}, relative {rel:.2e} (tolerance {tol:.2e})");
        assert!(rel <= tol, "{name}: {got} vs {exp}");
        rel
    };
    let (fwd, bwd) = (forward_tol(), 2.0 * forward_tol());
    let mut worst = 0f64;
    worst = worst.max(check("loss", got.loss, want["loss"].as_f64().unwrap(), fwd));
    for (name, g) in &got.grad_norms {
        let exp = want["grad_l2_norm"][name].as_f64().unwrap();
        worst = worst.max(check(name, *g, exp, bwd));
    }
    worst = worst.max(check(
        "total grad norm",
        got.total_grad_norm,
        want["total_grad_norm_before_clip"].as_f64().unwrap(),
        bwd,
    ));
    worst = worst.max(check(
        "loss after clip + AdamW",
        got.loss_after,
        want["loss_after_one_step"].as_f64().unwrap(),
        bwd,
    ));
    println!("worst relative difference {worst:.2e}");
    // The step really ran in bf16: an f32 step matches the reference to ~1e-7 relative.
    assert!(
        worst > 1e-5,
        "bf16 step indistinguishable from f32: {worst:e}"
    );
}

/// `metrics.json`'s per-epoch train losses of a `lightningdot train` run.
fn train_losses(config: &std::path::Path, out: &std::path::Path, precision: &str) -> Vec<f64> {
    let run = Command::new(env!("CARGO_BIN_EXE_lightningdot"))
        .args([
            "train",
            "--dashboard",
            "plain",
            "--no-test",
            "--precision",
            precision,
        ])
        .arg("--config")
        .arg(config)
        .arg("--output-dir")
        .arg(out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{precision}: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let metrics: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    metrics["epochs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["train_loss"].as_f64().unwrap())
        .collect()
}

#[test]
fn bf16_learning_curve_tracks_f32() {
    // Both runs in child processes: each fixes its own device precision. Dropout off: with it,
    // each run's epoch losses jitter by ~10% around the trend (different rounding, different
    // trajectory), which would hide what is compared here — the descent itself.
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_synthetic(
        tmp.path(),
        &SyntheticSpec::default(),
        &json!({"num_train_epochs": EPOCHS, "dropout": 0.0}),
    )
    .unwrap();
    let f32_curve = train_losses(&cfg, &tmp.path().join("f32"), "f32");
    let bf16_curve = train_losses(&cfg, &tmp.path().join("bf16"), "bf16");
    assert_eq!(f32_curve.len(), EPOCHS);
    assert_eq!(bf16_curve.len(), EPOCHS);
    for (e, (a, b)) in f32_curve.iter().zip(&bf16_curve).enumerate() {
        println!("epoch {}: f32 {a:.4}, bf16 {b:.4}", e + 1);
    }
    // Two runs whose roundings differ follow different trajectories once the learning rate is
    // high (a single epoch's loss then differs by up to ~30% either way, as two f32 runs with
    // another summation order would), so the curve is compared where it is determined: the
    // first epochs (before the trajectories part), the mean over all epochs (the area under
    // the curve) and the last epoch (learning rate decayed to 0: both converge).
    let rel = |a: f64, b: f64| (a - b).abs() / a;
    let mean = |c: &[f64]| c.iter().sum::<f64>() / c.len() as f64;
    let parts = [
        ("epoch 1", rel(f32_curve[0], bf16_curve[0])),
        ("epoch 2", rel(f32_curve[1], bf16_curve[1])),
        (
            "mean over all epochs",
            rel(mean(&f32_curve), mean(&bf16_curve)),
        ),
        (
            "last epoch",
            rel(f32_curve[EPOCHS - 1], bf16_curve[EPOCHS - 1]),
        ),
    ];
    for (what, r) in parts {
        println!("{what}: relative difference {r:.4} (tolerance {CURVE_TOL})");
        assert!(r <= CURVE_TOL, "bf16 loss curve, {what}: off by {r:.4}");
    }
    assert!(
        bf16_curve[EPOCHS - 1] < 0.2 * bf16_curve[0],
        "bf16 did not learn: {bf16_curve:?}"
    );
}

/// Epochs of the learning-curve comparison (as tests/train_learning.rs: chance to recall > 0.9).
const EPOCHS: usize = 40;
/// "Within a few percent" of the loss (the bound for the curve). One step's loss is
/// within F·u ≈ 11% in the worst case and ~1% in practice; Adam normalises every update, so the
/// runs do not drift apart faster than that.
const CURVE_TOL: f64 = 0.05;
