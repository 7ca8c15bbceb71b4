//! The `lightningdot` binary end to end: inspect, convert, forward, demo, and one clear error
//! line (non-zero exit, no panic) for each kind of bad input.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;
use lightningdot::tensor_io::TensorFile;

fn bin(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lightningdot"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run lightningdot")
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn tiny_model_args(f: &Path) -> Vec<String> {
    vec![
        "--img-config".into(),
        s(&f.join("config/img_model_config.json")),
        "--txt-config".into(),
        s(&f.join("config/txt_model_config")),
    ]
}

#[test]
fn inspect_reports_layout_and_plan() {
    let f = fixtures();
    let out = bin(&[
        "inspect",
        &s(&f.join("checkpoints/biencoder.best.fp16.legacy.pt")),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("legacy torch pickle stream"), "{text}");
    assert!(text.contains("fine-tuned bi-encoder wrapper"), "{text}");
    assert!(text.contains("widen F16 weights to f32"), "{text}");
    assert!(
        text.contains("img_model.bert.img_embeddings.img_linear.weight"),
        "{text}"
    );
    assert!(text.contains("project_dim = 32"), "{text}");

    let out = bin(&[
        "inspect",
        "--summary",
        &s(&f.join("checkpoints/pretrain/model_step_1.pt")),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("strip the `bert.` prefix") && text.contains("cls.* x6"),
        "{text}"
    );
}

#[test]
fn convert_then_forward_matches_reference() {
    let f = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny");
    let mut args = vec![
        "convert".to_string(),
        s(&f.join("checkpoints/biencoder.best.pt")),
    ];
    args.extend(tiny_model_args(&f));
    args.extend(["--out".into(), s(&dir)]);
    let out = bin(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.join("config.json").is_file() && dir.join("model.mpk").is_file());

    let result = tmp.path().join("out.safetensors");
    let out = bin(&[
        "forward",
        "--checkpoint",
        &s(&dir),
        "--inputs",
        &s(&f.join("batch/inputs.safetensors")),
        "--out",
        &s(&result),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = TensorFile::open(&result).unwrap();
    let want = TensorFile::open(&f.join("expected/main.safetensors")).unwrap();
    for name in [
        "txt.pooled",
        "img.pooled",
        "scores.txt_x_img",
        "txt.sequence_output",
        "img.sequence_output",
    ] {
        let d = max_abs_diff(name, &got.f32(name).unwrap(), &want.f32(name).unwrap());
        assert!(d <= 1e-4, "{name}: {d}");
    }
}

#[test]
fn demo_runs_on_embedded_model() {
    let out = bin(&["demo"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("OK: 19 stages match"), "{text}");
    // The retrieval job: learned (the demo itself fails below R@1 0.9), indexed, queried.
    assert!(
        text.contains("3 of 3 queries answered with the scene asked for"),
        "{text}"
    );
    let after = text
        .lines()
        .find(|l| l.trim_start().starts_with("after "))
        .unwrap_or_else(|| panic!("no recall line: {text}"));
    let r1: f64 = after.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(r1 >= 0.9, "{after}");
}

#[test]
fn demo_parity_only() {
    let out = bin(&["demo", "--parity"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("OK: 19 stages match"), "{text}");
    assert!(!text.contains("== retrieval"), "{text}");
}

#[test]
fn truncated_checkpoint_is_a_clear_error() {
    let f = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    for name in ["biencoder.best.pt", "biencoder.best.legacy.pt"] {
        let bytes = std::fs::read(f.join("checkpoints").join(name)).unwrap();
        let cut = tmp.path().join(name);
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let mut args = vec!["convert".to_string(), s(&cut)];
        args.extend(tiny_model_args(&f));
        args.extend(["--out".into(), s(&tmp.path().join("out"))]);
        let out = bin(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_clean_error(&out, name);
        assert!(!tmp.path().join("out").exists());
    }
}

#[test]
fn non_torch_file_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let junk = tmp.path().join("weights.pt");
    std::fs::write(&junk, b"this is not a checkpoint").unwrap();
    assert_clean_error(
        &bin(&["inspect", &s(&junk)]),
        "not a readable PyTorch checkpoint",
    );
    assert_clean_error(
        &bin(&["inspect", &s(&tmp.path().join("absent.pt"))]),
        "absent.pt",
    );
}

#[test]
fn config_size_mismatch_is_a_clear_error() {
    let f = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    // Default (full-size) configs against the tiny checkpoint.
    let out = bin(&[
        "convert",
        &s(&f.join("checkpoints/biencoder.best.pt")),
        "--out",
        &s(&tmp.path().join("x")),
    ]);
    assert_clean_error(
        &out,
        "shape mismatch for img_model.bert.embeddings.LayerNorm.bias: checkpoint has [64], model expects [768]",
    );
    let bad = tmp.path().join("bad.json");
    std::fs::write(&bad, r#"{"hidden_size": 64, "num_attention_heads": 5}"#).unwrap();
    let out = bin(&[
        "convert",
        &s(&f.join("checkpoints/biencoder.best.pt")),
        "--img-config",
        &s(&bad),
        "--out",
        &s(&tmp.path().join("x")),
    ]);
    assert_clean_error(&out, "bad.json");
}

#[test]
fn missing_keys_are_a_clear_error() {
    let f = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let mut args = vec![
        "convert".to_string(),
        s(&f.join("checkpoints/biencoder.proj0.best.pt")),
    ];
    args.extend(tiny_model_args(&f));
    args.extend([
        "--project-dim".into(),
        "32".into(),
        "--out".into(),
        s(&tmp.path().join("x")),
    ]);
    let out = bin(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_clean_error(&out, "missing from the checkpoint");
}

#[test]
fn bad_inputs_and_devices_are_clear_errors() {
    let f = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let mut args = vec![
        "forward".to_string(),
        "--checkpoint".into(),
        s(&f.join("checkpoints/biencoder.best.pt")),
    ];
    args.extend(tiny_model_args(&f));
    // Inputs that are not a batch: the expected outputs file lacks txt.input_ids.
    let mut a = args.clone();
    a.extend([
        "--inputs".into(),
        s(&f.join("expected/main.safetensors")),
        "--out".into(),
        s(&tmp.path().join("o")),
    ]);
    assert_clean_error(
        &bin(&a.iter().map(String::as_str).collect::<Vec<_>>()),
        "txt.input_ids",
    );
    if !cfg!(feature = "cuda") {
        let mut a = args.clone();
        a.extend([
            "--inputs".into(),
            s(&f.join("batch/inputs.safetensors")),
            "--out".into(),
            s(&tmp.path().join("o")),
            "--device".into(),
            "cuda".into(),
        ]);
        assert_clean_error(
            &bin(&a.iter().map(String::as_str).collect::<Vec<_>>()),
            "no CUDA support",
        );
    }
    assert!(
        !bin(&["inspect", "x.pt", "--device", "tpu"])
            .status
            .success()
    );
}
