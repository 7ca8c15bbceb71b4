//! Forward parity of every fixture checkpoint against the reference PyTorch outputs
//! (fixtures/expected/*.safetensors, produced by the reference code; tolerance 1e-4 as the
//! fixtures README suggests for an fp32 port).

mod common;

use common::*;
use lightningdot::device::CpuBackend;
use lightningdot::forward::{HostBatch, forward_stages};
use lightningdot::tensor_io::TensorFile;

const ATOL: f32 = 1e-4;

fn check(checkpoint: &str, expected: &str, min_stages: usize) {
    let f = fixtures();
    let device = Default::default();
    let (model, cfg, report) = tiny_source(checkpoint).load::<CpuBackend>(&device).unwrap();
    let report = report.expect("loaded from a .pt");
    assert!(report.unexpected.is_empty() && report.missing.is_empty());
    let batch =
        HostBatch::from_file(&TensorFile::open(&f.join("batch/inputs.safetensors")).unwrap())
            .unwrap();
    batch.validate(&cfg).unwrap();
    let got = forward_stages(&model, &batch, &device);
    let want = TensorFile::open(&f.join(expected)).unwrap();
    let n = assert_stages_close(&got, &want, ATOL, checkpoint);
    assert!(n >= min_stages, "{checkpoint}: only {n} stages compared");
}

#[test]
fn zip_fp32_matches_every_stage() {
    check(
        "checkpoints/biencoder.best.pt",
        "expected/main.safetensors",
        19,
    );
}

#[test]
fn legacy_fp32_matches_every_stage() {
    check(
        "checkpoints/biencoder.best.legacy.pt",
        "expected/main.safetensors",
        19,
    );
}

#[test]
fn zip_fp16_matches_fp16_weight_outputs() {
    check(
        "checkpoints/biencoder.best.fp16.pt",
        "expected/main_fp16_weights.safetensors",
        5,
    );
}

#[test]
fn legacy_fp16_matches_fp16_weight_outputs() {
    check(
        "checkpoints/biencoder.best.fp16.legacy.pt",
        "expected/main_fp16_weights.safetensors",
        5,
    );
}

#[test]
fn pretraining_layout_matches() {
    check(
        "checkpoints/pretrain/model_step_1.pt",
        "expected/main_fp16_weights.safetensors",
        5,
    );
}

#[test]
fn pretraining_legacy_layout_matches() {
    check(
        "checkpoints/pretrain/model_step_1.legacy.pt",
        "expected/main_fp16_weights.safetensors",
        5,
    );
}

#[test]
fn no_projection_head_matches() {
    check(
        "checkpoints/biencoder.proj0.best.pt",
        "expected/proj0.safetensors",
        13,
    );
}

#[test]
fn project_dim_is_inferred() {
    let device = Default::default();
    let (_, cfg, _) = tiny_source("checkpoints/biencoder.best.pt")
        .load::<CpuBackend>(&device)
        .unwrap();
    assert_eq!(cfg.project_dim, 32);
    let (_, cfg, _) = tiny_source("checkpoints/biencoder.proj0.best.pt")
        .load::<CpuBackend>(&device)
        .unwrap();
    assert_eq!(cfg.project_dim, 0);
}
