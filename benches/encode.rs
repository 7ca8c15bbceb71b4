//! Conversion time and CPU encode throughput at BERT-base size, against PyTorch on the same
//! machine in the same run (benches/pytorch_baseline.py, run with the Python named by
//! `LIGHTNINGDOT_PYTHON`, default `.venv/bin/python`).
//!
//! `cargo bench --bench encode` prints a table; times are per batch of 32 (texts: 32 tokens,
//! images: 36 regions + [CLS]), and one query of 16 tokens.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use burn::prelude::*;
use lightningdot::conversion::{
    Checkpoint, LoadOptions, RecordPrecision, load_biencoder, write_model_dir,
};
use lightningdot::device::CpuBackend;
use lightningdot::model::{BiEncoder, BiEncoderConfig, EncoderConfig, RegionBatch};

type B = CpuBackend;
const BATCH: usize = 32;

fn time<F: FnMut()>(warmup: usize, iters: usize, mut f: F) -> f64 {
    for _ in 0..warmup {
        f();
    }
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    t.elapsed().as_secs_f64() / iters as f64
}

fn main() {
    let tmp = std::env::temp_dir().join(format!("lightningdot-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let ckpt_path = tmp.join("flickr-ft-random.pt");
    let py_json = tmp.join("pytorch.json");
    let python = std::env::var("LIGHTNINGDOT_PYTHON").unwrap_or_else(|_| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join(".venv/bin/python")
            .display()
            .to_string()
    });
    eprintln!("running PyTorch baseline with {python} ...");
    let status = Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/benches/pytorch_baseline.py"
        ))
        .args([
            "--out",
            &py_json.display().to_string(),
            "--checkpoint",
            &ckpt_path.display().to_string(),
        ])
        .args(["--batch", &BATCH.to_string()])
        .status();
    let py: Option<serde_json::Value> = match status {
        Ok(s) if s.success() => {
            serde_json::from_str(&std::fs::read_to_string(&py_json).unwrap()).ok()
        }
        _ => {
            eprintln!(
                "PyTorch baseline unavailable (pip install torch transformers into .venv); reporting burn only"
            );
            None
        }
    };
    let pyf = |k: &str| py.as_ref().and_then(|v| v[k].as_f64());

    let device = Default::default();
    let cfg = BiEncoderConfig {
        img: EncoderConfig::uniter_base(),
        txt: EncoderConfig::bert_base_cased(),
        project_dim: 768,
    };

    // Conversion of the full-size fp16 checkpoint the baseline wrote.
    let mut rows: Vec<(String, f64, Option<f64>, &str)> = Vec::new();
    let model = if ckpt_path.exists() {
        let t = Instant::now();
        let ckpt = Checkpoint::open(&ckpt_path).unwrap();
        let (model, report) =
            load_biencoder::<B>(&ckpt, &cfg, &device, LoadOptions::default()).unwrap();
        let load = t.elapsed().as_secs_f64();
        assert_eq!(report.applied, 421);
        rows.push((
            "load .pt (421 fp16 tensors -> f32 model)".into(),
            load,
            pyf("torch_load_s"),
            "s",
        ));
        let t = Instant::now();
        let model2 = model.clone();
        write_model_dir(
            model2,
            &cfg,
            RecordPrecision::F32,
            None,
            &tmp.join("converted"),
            true,
        )
        .unwrap();
        rows.push((
            "write converted dir (f32 record)".into(),
            t.elapsed().as_secs_f64(),
            None,
            "s",
        ));
        model
    } else {
        BiEncoder::<B>::new(&cfg, &device)
    };

    let ids = Tensor::<B, 2, Int>::random(
        [BATCH, 32],
        burn::tensor::Distribution::Uniform(1000.0, 28000.0),
        &device,
    );
    let tmask = Tensor::<B, 2, Int>::ones([BATCH, 32], &device);
    let regions = RegionBatch {
        img_feat: Tensor::random(
            [BATCH, 36, 2048],
            burn::tensor::Distribution::Default,
            &device,
        ),
        img_pos_feat: Tensor::random([BATCH, 36, 7], burn::tensor::Distribution::Default, &device),
        attention_mask: Tensor::ones([BATCH, 37], &device),
        img_masks: None,
    };
    let text_s = time(1, 3, || {
        let _ = model.encode_text(ids.clone(), tmask.clone()).into_data();
    });
    let image_s = time(1, 3, || {
        let _ = model.encode_image(&regions).into_data();
    });
    let q = Tensor::<B, 2, Int>::random(
        [1, 16],
        burn::tensor::Distribution::Uniform(1000.0, 28000.0),
        &device,
    );
    let qm = Tensor::<B, 2, Int>::ones([1, 16], &device);
    let query_s = time(2, 10, || {
        let _ = model.encode_text(q.clone(), qm.clone()).into_data();
    });
    rows.push((
        format!("encode texts (batch {BATCH} x 32 tokens)"),
        text_s,
        pyf("text_s_per_batch"),
        "s/batch",
    ));
    rows.push((
        format!("encode images (batch {BATCH} x 36 regions)"),
        image_s,
        pyf("image_s_per_batch"),
        "s/batch",
    ));
    rows.push((
        "encode one query (16 tokens)".into(),
        query_s,
        pyf("query_s"),
        "s",
    ));

    println!();
    println!(
        "lightningdot vs PyTorch {} ({} threads), CPU, BERT-base towers",
        py.as_ref()
            .and_then(|v| v["torch"].as_str())
            .unwrap_or("n/a"),
        py.as_ref().and_then(|v| v["threads"].as_u64()).unwrap_or(0)
    );
    println!(
        "| {:<44} | {:>10} | {:>10} | {:>8} |",
        "workload", "burn", "PyTorch", "ratio"
    );
    println!("|{:-<46}|{:-<12}|{:-<12}|{:-<10}|", "", "", "", "");
    for (name, ours, theirs, unit) in &rows {
        let ratio = theirs
            .map(|t| format!("{:.2}x", ours / t))
            .unwrap_or_else(|| "-".into());
        let theirs = theirs
            .map(|t| format!("{t:.3}"))
            .unwrap_or_else(|| "-".into());
        println!("| {name:<44} | {ours:>10.3} | {theirs:>10} | {ratio:>8} | {unit}");
    }
    println!();
    println!(
        "throughput: texts {:.1}/s (PyTorch {}), images {:.1}/s (PyTorch {})",
        BATCH as f64 / text_s,
        pyf("text_s_per_batch")
            .map(|t| format!("{:.1}/s", BATCH as f64 / t))
            .unwrap_or("-".into()),
        BATCH as f64 / image_s,
        pyf("image_s_per_batch")
            .map(|t| format!("{:.1}/s", BATCH as f64 / t))
            .unwrap_or("-".into())
    );
    println!("ratio = burn time / PyTorch time (below 1.0 = faster than PyTorch)");
    let _ = std::fs::remove_dir_all(&tmp);
}
