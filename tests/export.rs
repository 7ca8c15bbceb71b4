//! Export back to PyTorch (spec §3.2–3.4): files written by `export_*_pt` / `lightningdot export`
//! read back through the crate's own reader with the original's layout, keys, key order and
//! values; the tied pre-training aliases share one storage; loading the export gives the same
//! outputs; the CLI refuses to overwrite and reports bad sources in one line. (That torch itself
//! loads these files was checked by hand; CI has no Python.)

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Output};

use common::*;
use half::f16;
use lightningdot::conversion::{
    Checkpoint, Layout, LoadOptions, RecordPrecision, TIED_PRETRAIN_KEYS, biencoder_export_keys,
    export_biencoder_pt, export_pretraining_pt, load_biencoder, load_pretraining,
    pretraining_export_keys, write_pretrain_dir,
};
use lightningdot::device::CpuBackend;
use lightningdot::model::{
    BiEncoderConfig, BiEncoderForPretraining, ClsConcat, EncoderConfig, PretrainTask,
};
use lightningdot::pretrain::{PretrainHostBatch, task_outputs};
use lightningdot::tensor_io::TensorFile;

const PRETRAIN: &str = "pretrain/checkpoint/model_step_0.pt";
const BIENCODER: &str = "checkpoints/biencoder.best.pt";
const BIENCODER_FP16: &str = "checkpoints/biencoder.best.fp16.pt";
/// `load_pretraining` zeroes row 0 of this table (the reference does so in place at its first
/// masked forward), so a step-0 file comes back with that row 0 and every other value intact.
const MASK_EMBEDDING: &str = "bert.img_model.bert.img_embeddings.mask_embedding.weight";

fn load_pretrain_model(path: &Path) -> BiEncoderForPretraining<CpuBackend> {
    let source = tiny_source(PRETRAIN);
    let ckpt = Checkpoint::open(path).unwrap();
    assert_eq!(ckpt.layout, Layout::Pretraining);
    let cfg = source.resolve_config(&ckpt).unwrap();
    let (model, report, _) =
        load_pretraining::<CpuBackend>(&ckpt, &cfg, &Default::default(), LoadOptions::default())
            .unwrap();
    assert_eq!(report.applied, 119);
    model
}

/// Values of `key` widened to f32.
fn values(ckpt: &Checkpoint, key: &str) -> Vec<f32> {
    ckpt.tensors[key]
        .to_f32(&ckpt.path, key)
        .unwrap()
        .into_vec::<f32>()
        .unwrap()
}

/// The file's keys in pickle order: each key's BINUNICODE opcode (`X`, u32 length, bytes) is
/// searched in data.pkl. Keys of a nested dict are found without their `prefix`.
fn key_order(path: &Path, prefix: &str) -> Vec<String> {
    let ckpt = Checkpoint::open(path).unwrap();
    let mut zip = zip::ZipArchive::new(std::fs::File::open(path).unwrap()).unwrap();
    let name = zip
        .file_names()
        .find(|n| n.ends_with("/data.pkl"))
        .unwrap()
        .to_string();
    let mut pkl = Vec::new();
    zip.by_name(&name).unwrap().read_to_end(&mut pkl).unwrap();
    let mut keyed: Vec<(usize, String)> = ckpt
        .tensors
        .keys()
        .map(|k| {
            let inner = k.strip_prefix(prefix).unwrap();
            let mut pat = vec![b'X'];
            pat.extend((inner.len() as u32).to_le_bytes());
            pat.extend(inner.as_bytes());
            let pos = pkl
                .windows(pat.len())
                .position(|w| w == pat.as_slice())
                .unwrap_or_else(|| panic!("{k} not in data.pkl"));
            (pos, k.clone())
        })
        .collect();
    keyed.sort();
    keyed.into_iter().map(|(_, k)| k).collect()
}

/// Zip members under `data/` (one per storage), each starting 64-byte aligned.
fn storage_records(path: &Path) -> usize {
    let mut zip = zip::ZipArchive::new(std::fs::File::open(path).unwrap()).unwrap();
    let mut n = 0;
    for i in 0..zip.len() {
        let f = zip.by_index(i).unwrap();
        assert_eq!(f.data_start().unwrap() % 64, 0, "{} not aligned", f.name());
        if f.name().contains("/data/") {
            n += 1;
        }
    }
    n
}

fn assert_bits_eq(key: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{key}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.to_bits(), w.to_bits(), "{key}[{i}]: {g} vs {w}");
    }
}

/// Compares every tensor of `got` with `want` after `round` (identity or f16 rounding), except
/// the zeroed mask row.
fn assert_pretrain_values(got: &Checkpoint, want: &Checkpoint, round: fn(f32) -> f32) {
    for key in want.tensors.keys() {
        let mut w: Vec<f32> = values(want, key).into_iter().map(round).collect();
        if key == MASK_EMBEDDING {
            let dim = want.tensors[key].shape()[1];
            w[..dim].fill(0.0);
        }
        assert_bits_eq(key, &values(got, key), &w);
    }
}

fn f16_round(v: f32) -> f32 {
    f16::from_f32(v).to_f32()
}

#[test]
fn pretraining_export_round_trips() {
    let original = fixtures().join(PRETRAIN);
    let model = load_pretrain_model(&original);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("model_step_0.pt");
    assert_eq!(export_pretraining_pt(&model, &out, false).unwrap(), 121);

    let want = Checkpoint::open(&original).unwrap();
    let got = Checkpoint::open(&out).unwrap();
    assert_eq!(got.layout, Layout::Pretraining);
    assert_eq!(key_order(&out, ""), key_order(&original, ""));
    assert_pretrain_values(&got, &want, |v| v);
    for key in got.tensors.keys() {
        assert_eq!(got.tensors[key].dtype(), burn::tensor::DType::F32, "{key}");
    }
    // The aliases are second names of the tower storages, not copies.
    for (alias, tower) in TIED_PRETRAIN_KEYS {
        assert_eq!(got.tensors[alias].shape(), got.tensors[tower].shape());
        assert_bits_eq(alias, &values(&got, alias), &values(&got, tower));
    }
    assert_eq!(storage_records(&out), 119);

    // Same model, same bytes: nothing time- or process-dependent goes into the file.
    let again = tmp.path().join("again/model_step_0.pt");
    std::fs::create_dir_all(again.parent().unwrap()).unwrap();
    export_pretraining_pt(&model, &again, false).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&again).unwrap());
    // Only the written files: no temp file left behind.
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 2);

    // Loading the export gives the same model: every task's outputs are identical.
    let reloaded = load_pretrain_model(&out);
    let device = Default::default();
    for task in PretrainTask::ALL {
        let file = match task {
            PretrainTask::Mrckl => "mrc",
            t => t.name(),
        };
        let path = fixtures().join(format!("pretrain/batch/{file}.safetensors"));
        let batch = PretrainHostBatch::from_file(&TensorFile::open(&path).unwrap(), task).unwrap();
        let a = task_outputs(&model, &batch, &ClsConcat::ALL, &device);
        let b = task_outputs(&reloaded, &batch, &ClsConcat::ALL, &device);
        assert_eq!(a.len(), b.len());
        for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
            assert_eq!(na, nb);
            assert_bits_eq(na, &tb.values, &ta.values);
        }
    }
}

#[test]
fn pretraining_export_in_half_precision() {
    let original = fixtures().join(PRETRAIN);
    let model = load_pretrain_model(&original);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("LightningDot.pt");
    assert_eq!(export_pretraining_pt(&model, &out, true).unwrap(), 121);
    let got = Checkpoint::open(&out).unwrap();
    assert_eq!(got.layout, Layout::Pretraining);
    assert_eq!(got.tensors.len(), 121);
    for key in got.tensors.keys() {
        assert_eq!(got.tensors[key].dtype(), burn::tensor::DType::F16, "{key}");
    }
    assert_pretrain_values(&got, &Checkpoint::open(&original).unwrap(), f16_round);
    assert_eq!(storage_records(&out), 119);
    // The strict pre-training load accepts it.
    load_pretrain_model(&out);
}

#[test]
fn biencoder_and_finetune_exports_round_trip() {
    let device = Default::default();
    let source = tiny_source(BIENCODER);
    let original = Checkpoint::open(&source.checkpoint).unwrap();
    assert_eq!(original.layout, Layout::FineTuneWrapper);
    let (model, cfg, _) = source.load::<CpuBackend>(&device).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (want, _) = original.biencoder_tensors();

    // Plain state_dict.
    let plain = tmp.path().join("biencoder.pt");
    assert_eq!(
        export_biencoder_pt(&model, &plain, false, false).unwrap(),
        101
    );
    let got = Checkpoint::open(&plain).unwrap();
    assert_eq!(got.layout, Layout::BiEncoderStateDict);
    assert_eq!(got.tensors.len(), want.len());
    for (key, t) in &want {
        let w = t
            .to_f32(&original.path, key)
            .unwrap()
            .into_vec::<f32>()
            .unwrap();
        assert_eq!(got.tensors[key].shape(), t.shape(), "{key}");
        assert_bits_eq(key, &values(&got, key), &w);
    }
    let (reloaded, report) =
        load_biencoder::<CpuBackend>(&got, &cfg, &device, LoadOptions::default()).unwrap();
    assert_eq!(report.applied, 101);
    drop(reloaded);

    // Fine-tune wrapper: same keys (under model_dict), same order as the trainer's file.
    let wrapped = tmp.path().join("coco-ft.pt");
    assert_eq!(
        export_biencoder_pt(&model, &wrapped, false, true).unwrap(),
        101
    );
    let got = Checkpoint::open(&wrapped).unwrap();
    assert_eq!(got.layout, Layout::FineTuneWrapper);
    assert_eq!(
        key_order(&wrapped, "model_dict."),
        key_order(&source.checkpoint, "model_dict.")
    );
    for key in original.tensors.keys() {
        assert_bits_eq(key, &values(&got, key), &values(&original, key));
    }
    assert_eq!(storage_records(&wrapped), 101);

    // Half: exactly the fp16 fixture, which the reference saved from the same weights.
    let half = tmp.path().join("coco-ft.fp16.pt");
    export_biencoder_pt(&model, &half, true, true).unwrap();
    let got = Checkpoint::open(&half).unwrap();
    let fp16 = Checkpoint::open(fixtures().join(BIENCODER_FP16)).unwrap();
    assert_eq!(got.layout, Layout::FineTuneWrapper);
    assert_eq!(got.tensors.len(), fp16.tensors.len());
    for key in fp16.tensors.keys() {
        assert_eq!(got.tensors[key].dtype(), burn::tensor::DType::F16, "{key}");
        let w: Vec<f32> = values(&original, key).into_iter().map(f16_round).collect();
        assert_bits_eq(key, &values(&fp16, key), &w);
        assert_bits_eq(key, &values(&got, key), &w);
    }
}

fn manifest(name: &str) -> Vec<(String, Vec<usize>)> {
    manifest_entries(&fixtures().join("checkpoint-manifests").join(name))
}

/// At full size (12 layers, where `layer.10` must follow `layer.9`) the exported keys, shapes
/// and order are those of the released layouts, tied aliases included. No weights are written.
#[test]
fn full_size_exports_match_the_released_manifests() {
    let cfg = BiEncoderConfig {
        img: EncoderConfig::resolve(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/configs/img_base.json"
        ))
        .unwrap(),
        txt: EncoderConfig::bert_base_cased(),
        project_dim: 768,
    };
    let model = BiEncoderForPretraining::<CpuBackend>::new(&cfg, &Default::default());
    let keys = pretraining_export_keys(&model).unwrap();
    assert_eq!(keys.len(), 441);
    assert_eq!(keys, manifest("biencoder_pretraining.json"));
    let keys = biencoder_export_keys(&model.bert).unwrap();
    assert_eq!(keys.len(), 421);
    assert_eq!(keys, manifest("biencoder_finetuned.json"));
}

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

fn tiny_args() -> Vec<String> {
    let f = fixtures();
    vec![
        "--img-config".into(),
        s(&f.join("config/img_model_config.json")),
        "--txt-config".into(),
        s(&f.join("config/txt_model_config")),
    ]
}

fn run_ok(args: &[String]) -> String {
    let out = bin(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn export_args(checkpoint: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["export".into(), "--checkpoint".into(), s(checkpoint)];
    args.extend(tiny_args());
    args.extend(["--out".into(), s(out)]);
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

#[test]
fn cli_export_then_forward() {
    let f = fixtures();
    let tmp = tempfile::tempdir().unwrap();

    // A pre-training source defaults to the pre-training layout; forward --task mlm on the
    // export matches forward on the original.
    let out = tmp.path().join("pretrain.pt");
    let stdout = run_ok(&export_args(&f.join(PRETRAIN), &out, &[]));
    assert!(
        stdout.contains("pretraining layout, 121 tensors"),
        "{stdout}"
    );
    assert_eq!(Checkpoint::open(&out).unwrap().layout, Layout::Pretraining);
    let mut results = Vec::new();
    for (i, ckpt) in [f.join(PRETRAIN), out.clone()].iter().enumerate() {
        let result = tmp.path().join(format!("mlm{i}.safetensors"));
        let mut args = vec!["forward".into(), "--task".into(), "mlm".into()];
        args.extend(["--checkpoint".into(), s(ckpt)]);
        args.extend(tiny_args());
        args.extend([
            "--inputs".into(),
            s(&f.join("pretrain/batch/mlm.safetensors")),
        ]);
        args.extend(["--out".into(), s(&result)]);
        run_ok(&args);
        results.push(TensorFile::open(&result).unwrap());
    }
    let names = results[0].names();
    assert!(!names.is_empty());
    for name in names {
        let d = max_abs_diff(
            &name,
            &results[1].f32(&name).unwrap(),
            &results[0].f32(&name).unwrap(),
        );
        assert_eq!(d, 0.0, "{name}");
    }

    // A fine-tuned source defaults to the plain bi-encoder layout; --layout finetune and --half
    // give the wrapper in f16; forward reproduces the reference's outputs.
    let out = tmp.path().join("biencoder.pt");
    let stdout = run_ok(&export_args(&f.join(BIENCODER), &out, &[]));
    assert!(
        stdout.contains("biencoder layout, 101 tensors, float32"),
        "{stdout}"
    );
    assert_eq!(
        Checkpoint::open(&out).unwrap().layout,
        Layout::BiEncoderStateDict
    );
    let wrapped = tmp.path().join("ft.pt");
    run_ok(&export_args(
        &f.join(BIENCODER),
        &wrapped,
        &["--layout", "finetune", "--half"],
    ));
    let ckpt = Checkpoint::open(&wrapped).unwrap();
    assert_eq!(ckpt.layout, Layout::FineTuneWrapper);
    assert_eq!(ckpt.main_dtype(), burn::tensor::DType::F16);

    let result = tmp.path().join("out.safetensors");
    let mut args = vec!["forward".into(), "--checkpoint".into(), s(&out)];
    args.extend(tiny_args());
    args.extend(["--inputs".into(), s(&f.join("batch/inputs.safetensors"))]);
    args.extend(["--out".into(), s(&result)]);
    run_ok(&args);
    let got = TensorFile::open(&result).unwrap();
    let want = TensorFile::open(&f.join("expected/main.safetensors")).unwrap();
    for name in ["txt.pooled", "img.pooled", "scores.txt_x_img"] {
        let d = max_abs_diff(name, &got.f32(name).unwrap(), &want.f32(name).unwrap());
        assert!(d <= 1e-4, "{name}: {d}");
    }
}

/// A pre-training directory (bi-encoder record + heads.mpk) exports to the pre-training layout by
/// default, byte for byte what the library writes for the model it holds.
#[test]
fn cli_exports_a_pretraining_directory() {
    let source = tiny_source(PRETRAIN);
    let ckpt = Checkpoint::open(&source.checkpoint).unwrap();
    let cfg = source.resolve_config(&ckpt).unwrap();
    let model = load_pretrain_model(&source.checkpoint);
    let tmp = tempfile::tempdir().unwrap();
    let direct = tmp.path().join("a/model.pt");
    std::fs::create_dir_all(direct.parent().unwrap()).unwrap();
    export_pretraining_pt(&model, &direct, false).unwrap();
    let dir = tmp.path().join("pretrain-dir");
    write_pretrain_dir(model, &cfg, RecordPrecision::F32, &dir, false, None).unwrap();

    let out = tmp.path().join("b/model.pt");
    let stdout = run_ok(&[
        "export".into(),
        "--checkpoint".into(),
        s(&dir),
        "--out".into(),
        s(&out),
    ]);
    assert!(
        stdout.contains("pretraining layout, 121 tensors"),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(&direct).unwrap()
    );
}

#[test]
fn cli_refuses_to_overwrite_without_force() {
    let f = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.pt");
    std::fs::write(&out, b"keep me").unwrap();
    let args = export_args(&f.join(BIENCODER), &out, &[]);
    let res = bin(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_clean_error(&res, "already exists (pass --force");
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");

    run_ok(&export_args(&f.join(BIENCODER), &out, &["--force"]));
    assert_eq!(
        Checkpoint::open(&out).unwrap().layout,
        Layout::BiEncoderStateDict
    );

    let res = bin(&[
        "export",
        "--checkpoint",
        &s(&f.join(BIENCODER)),
        "--out",
        &s(tmp.path()),
        "--force",
    ]);
    assert_clean_error(&res, "is a directory");
}

#[test]
fn cli_bad_sources_are_one_line_errors() {
    let f = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.pt");

    let junk = tmp.path().join("junk.pt");
    std::fs::write(&junk, b"not a checkpoint").unwrap();
    let res = bin(&export_args(&junk, &out, &[])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    assert_clean_error(&res, "not a readable PyTorch checkpoint");

    let missing = tmp.path().join("missing.pt");
    let res = bin(&export_args(&missing, &out, &[])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    assert_clean_error(&res, "missing.pt");

    // Default sizes (bert-base) do not fit the tiny checkpoint.
    let res = bin(&[
        "export",
        "--checkpoint",
        &s(&f.join(BIENCODER)),
        "--out",
        &s(&out),
    ]);
    assert_clean_error(&res, "shape mismatch");

    let empty_dir = tmp.path().join("empty");
    std::fs::create_dir(&empty_dir).unwrap();
    let res = bin(&export_args(&empty_dir, &out, &[])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    assert_clean_error(&res, "no config.json");
    assert!(!out.exists(), "nothing is written on failure");
}
