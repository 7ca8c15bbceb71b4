//! Shared helpers for the integration tests: fixture paths and tensor comparison.
#![allow(dead_code)]

use std::path::PathBuf;

use lightningdot::conversion::ModelSource;
use lightningdot::tensor_io::{HostTensor, TensorFile};

/// `../shared/fixtures` next to the repository (present in CI).
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures")
}

/// The tiny model's configs.
pub fn tiny_source(checkpoint: &str) -> ModelSource {
    let f = fixtures();
    ModelSource {
        checkpoint: f.join(checkpoint),
        img_config: Some(f.join("config/img_model_config.json").display().to_string()),
        txt_config: Some(f.join("config/txt_model_config").display().to_string()),
        ..Default::default()
    }
}

/// Max absolute difference; panics on a shape mismatch.
pub fn max_abs_diff(name: &str, got: &HostTensor<f32>, want: &HostTensor<f32>) -> f32 {
    assert_eq!(got.shape, want.shape, "{name}: shape");
    got.values
        .iter()
        .zip(&want.values)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

/// Compares every tensor of `expected` that `got` names, returning how many were compared.
pub fn assert_stages_close(
    got: &[(String, HostTensor<f32>)],
    expected: &TensorFile,
    atol: f32,
    label: &str,
) -> usize {
    let mut compared = 0;
    for name in expected.names() {
        let want = expected.f32(&name).unwrap();
        let Some((_, g)) = got.iter().find(|(n, _)| *n == name) else {
            panic!("{label}: stage {name} not produced");
        };
        let d = max_abs_diff(&name, g, &want);
        assert!(d <= atol, "{label}: {name} max abs diff {d:e} > {atol:e}");
        compared += 1;
    }
    compared
}

/// A CLI run that failed cleanly: non-zero exit, no panic, exactly one `error:` line, which
/// contains `needle`.
pub fn assert_clean_error(out: &std::process::Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "want one error line: {stderr}");
    assert!(
        errors[0].contains(needle),
        "{needle:?} not in {:?}",
        errors[0]
    );
}

/// `(key, shape)` of every tensor of a key manifest (`{"tensors": [{"key", "shape"}, ...]}`).
pub fn manifest_entries(path: &std::path::Path) -> Vec<(String, Vec<usize>)> {
    let text = std::fs::read_to_string(path).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let shape = t["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            (t["key"].as_str().unwrap().to_string(), shape)
        })
        .collect()
}

/// Runs the `lightningdot` binary with `args` (strings and paths alike).
pub fn run_cli(args: &[&dyn AsRef<std::ffi::OsStr>]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_lightningdot"))
        .args(args.iter().map(|a| a.as_ref()))
        .output()
        .unwrap()
}
