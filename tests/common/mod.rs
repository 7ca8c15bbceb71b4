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

/// The autodiff CPU backend the training tests run on.
pub type TrainBackend = burn::backend::Autodiff<lightningdot::device::CpuBackend>;

/// The training-step fixture on `device`: `biencoder.best.pt` with dropout off (the reference
/// ran `model.eval()` with gradients) and `batch/inputs.safetensors` as a training batch.
pub fn train_step_setup(
    device: &burn::tensor::Device<TrainBackend>,
) -> (
    lightningdot::model::BiEncoder<TrainBackend>,
    lightningdot::train::TrainBatch<TrainBackend>,
) {
    use burn::tensor::{Int, Tensor, TensorData};
    use lightningdot::conversion::{Checkpoint, LoadOptions, load_biencoder};
    use lightningdot::forward::{HostBatch, region_batch};

    let source = tiny_source("checkpoints/biencoder.best.pt");
    let ckpt = Checkpoint::open(&source.checkpoint).unwrap();
    let cfg = lightningdot::train::init::with_dropout(source.resolve_config(&ckpt).unwrap(), 0.0);
    let (model, _) =
        load_biencoder::<TrainBackend>(&ckpt, &cfg, device, LoadOptions::default()).unwrap();
    let hb = HostBatch::from_file(
        &TensorFile::open(&fixtures().join("batch/inputs.safetensors")).unwrap(),
    )
    .unwrap();
    let ints = |t: &HostTensor<i64>| {
        Tensor::<TrainBackend, 1, Int>::from_data(
            TensorData::new(t.values.clone(), [t.values.len()]),
            device,
        )
        .reshape([t.shape[0], t.shape[1]])
    };
    let batch = lightningdot::train::TrainBatch {
        input_ids: ints(&hb.txt_input_ids),
        attention_mask: ints(&hb.txt_attention_mask),
        regions: region_batch::<TrainBackend>(&hb, device),
        queries: hb.txt_input_ids.shape[0],
        loss_scale: 1.0,
    };
    (model, batch)
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
