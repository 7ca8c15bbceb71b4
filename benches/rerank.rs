//! Re-ranking cost on CPU at UNITER-base size, against PyTorch in the same run
//! (benches/pytorch_rerank.py, Python from `LIGHTNINGDOT_PYTHON`, default `.venv/bin/python`).
//!
//! `cargo bench --bench rerank` prints a table: cross-encoder pairs/s (batches of 32 pairs of a
//! 16-token caption and 36 regions), the latency of re-ranking one text query's top-K (K = 10,
//! 20, 50, 100), the first stage on a 5,000-image collection (query encoding + exact search), and
//! the speed-up of the two-stage pipeline over ranking all 5,000 images with the cross-encoder
//! (extrapolated from the measured pairs/s: 5,000 pairs per query take minutes here).

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use burn::prelude::*;
use burn::tensor::Distribution;
use lightningdot::data::RegionFeatures;
use lightningdot::device::CpuBackend;
use lightningdot::model::{EncoderConfig, IMG_FEAT_DIM, IMG_POS_DIM, TextEncoder, UniterItm};
use lightningdot::rerank::{CrossEncoder, DEFAULT_BATCH};
use lightningdot::search::FlatIndex;

type B = CpuBackend;
const TOKENS: usize = 16;
const REGIONS: usize = 36;
const IMAGES: usize = 5_000;
const DIM: usize = 768;

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

fn random_vec(n: usize, device: &Device<B>) -> Vec<f32> {
    Tensor::<B, 1>::random([n], Distribution::Default, device)
        .into_data()
        .into_vec()
        .unwrap()
}

fn main() {
    let tmp = std::env::temp_dir().join(format!("lightningdot-rerank-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
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
            "/benches/pytorch_rerank.py"
        ))
        .args(["--out", &py_json.display().to_string()])
        .args(["--batch", &DEFAULT_BATCH.to_string()])
        .args(["--tokens", &TOKENS.to_string()])
        .args(["--regions", &REGIONS.to_string()])
        .args(["--images", &IMAGES.to_string()])
        .status();
    let py: Option<serde_json::Value> = match status {
        Ok(s) if s.success() => {
            serde_json::from_str(&std::fs::read_to_string(&py_json).unwrap()).ok()
        }
        _ => {
            eprintln!("PyTorch baseline unavailable; reporting burn only");
            None
        }
    };
    let pyf = |k: &str| py.as_ref().and_then(|v| v[k].as_f64());
    eprintln!("running burn ...");

    let device: Device<B> = Default::default();
    let cfg = EncoderConfig::uniter_base();
    let cross = CrossEncoder::new(
        UniterItm::<B>::new(&cfg, true, &device),
        cfg.clone(),
        device,
        DEFAULT_BATCH,
    );
    let images: Vec<RegionFeatures> = (0..100)
        .map(|_| RegionFeatures {
            features: random_vec(REGIONS * IMG_FEAT_DIM, &device),
            boxes: random_vec(REGIONS * IMG_POS_DIM, &device),
            num_bb: REGIONS,
        })
        .collect();
    let query: Vec<u32> = (0..TOKENS as u32).map(|i| 1000 + 37 * i).collect();
    let refs: Vec<&RegionFeatures> = images.iter().collect();

    let batch = &refs[..DEFAULT_BATCH];
    let per_batch = time(1, 2, || {
        cross.score_text(&query, batch).unwrap();
    });
    let pairs_per_s = DEFAULT_BATCH as f64 / per_batch;
    let rerank_10 = time(1, 2, || {
        cross.score_text(&query, &refs[..10]).unwrap();
    });
    let rerank_k: Vec<(usize, f64)> = [20, 50, 100]
        .into_iter()
        .map(|k| {
            let t = time(0, 1, || {
                cross.score_text(&query, &refs[..k]).unwrap();
            });
            (k, t)
        })
        .collect();
    let rerank_100 = rerank_k[2].1;
    drop(cross);

    // First stage: the text tower on the query + exact search over 5,000 image vectors.
    let text = TextEncoder::<B>::new(&EncoderConfig::bert_base_cased(), DIM, &device);
    let index = FlatIndex::<B>::new(&random_vec(IMAGES * DIM, &device), DIM, &device);
    let ids = Tensor::<B, 1, Int>::from_data(
        TensorData::new(query.iter().map(|&i| i as i64).collect(), [TOKENS]),
        &device,
    )
    .reshape([1, TOKENS]);
    let mask = Tensor::<B, 2, Int>::ones([1, TOKENS], &device);
    let first_stage = time(2, 10, || {
        let v: Vec<f32> = text
            .forward(ids.clone(), mask.clone())
            .into_data()
            .into_vec()
            .unwrap();
        index.search(&v, 100);
    });

    let uniter_only = IMAGES as f64 / pairs_per_s;
    let two = |k: f64| first_stage + k;
    let py_two = |k: Option<f64>| pyf("first_stage_s").zip(k).map(|(f, r)| f + r);
    let py_uniter_only = pyf("pairs_per_s").map(|p| IMAGES as f64 / p);

    let mut rows: Vec<(String, f64, Option<f64>, &str, bool)> = vec![
        (
            format!("cross-encoder throughput (batch {DEFAULT_BATCH})"),
            pairs_per_s,
            pyf("pairs_per_s"),
            "pairs/s",
            true,
        ),
        (
            "re-rank top-10 of one query".into(),
            rerank_10,
            pyf("rerank_10_s"),
            "s",
            false,
        ),
        (
            "re-rank top-100 of one query".into(),
            rerank_100,
            pyf("rerank_100_s"),
            "s",
            false,
        ),
        (
            format!("first stage: encode + search {IMAGES} images"),
            first_stage,
            pyf("first_stage_s"),
            "s",
            false,
        ),
        (
            "two-stage query, K = 10".into(),
            two(rerank_10),
            py_two(pyf("rerank_10_s")),
            "s",
            false,
        ),
        (
            "two-stage query, K = 100".into(),
            two(rerank_100),
            py_two(pyf("rerank_100_s")),
            "s",
            false,
        ),
        (
            format!("UNITER-only query over {IMAGES} images (*)"),
            uniter_only,
            py_uniter_only,
            "s",
            false,
        ),
    ];
    let speedups = [
        (
            "first stage only (LightningDOT)",
            first_stage,
            pyf("first_stage_s"),
        ),
        (
            "two-stage, K = 10",
            two(rerank_10),
            py_two(pyf("rerank_10_s")),
        ),
        (
            "two-stage, K = 100",
            two(rerank_100),
            py_two(pyf("rerank_100_s")),
        ),
    ];
    for (name, ours, theirs) in speedups {
        rows.push((
            format!("speed-up over UNITER-only: {name}"),
            uniter_only / ours,
            py_uniter_only.zip(theirs).map(|(u, t)| u / t),
            "x",
            true,
        ));
    }

    println!();
    println!(
        "UNITER-base cross-encoder re-ranking, CPU, burn (flex) vs PyTorch {} ({} threads); \
         pairs = {TOKENS}-token caption + {REGIONS} regions",
        py.as_ref()
            .and_then(|v| v["torch"].as_str())
            .unwrap_or("n/a"),
        py.as_ref().and_then(|v| v["threads"].as_u64()).unwrap_or(0)
    );
    println!(
        "| {:<52} | {:>10} | {:>10} | {:>8} | {:<7} |",
        "workload", "burn", "PyTorch", "ratio", "unit"
    );
    println!(
        "|{:-<54}|{:-<12}|{:-<12}|{:-<10}|{:-<9}|",
        "", "", "", "", ""
    );
    for (name, ours, theirs, unit, higher_better) in &rows {
        let ratio = theirs
            .filter(|_| *unit != "x")
            .map(|t| {
                // Always "burn time / PyTorch time": below 1.0 = burn faster.
                let r = if *higher_better { t / ours } else { ours / t };
                format!("{r:.2}x")
            })
            .unwrap_or_else(|| "-".into());
        let fmt = |v: f64| {
            if v >= 100.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.3}")
            }
        };
        let theirs = theirs.map(fmt).unwrap_or_else(|| "-".into());
        println!(
            "| {name:<52} | {:>10} | {theirs:>10} | {ratio:>8} | {unit:<7} |",
            fmt(*ours)
        );
    }
    println!();
    println!(
        "(*) {IMAGES} pairs / measured pairs/s (not run: minutes per query on this CPU).\n\
         ratio = burn time / PyTorch time (below 1.0 = burn faster)."
    );
    println!();
    println!(
        "re-rank depth K vs one text query's latency over {IMAGES} images (burn / PyTorch, s):"
    );
    println!(
        "| {:>4} | {:>12} | {:>12} | {:>22} |",
        "K", "burn", "PyTorch", "speed-up vs UNITER-only"
    );
    println!("|{:-<6}|{:-<14}|{:-<14}|{:-<24}|", "", "", "", "");
    let all_k = std::iter::once((10, rerank_10)).chain(rerank_k.iter().copied());
    for (k, t) in std::iter::once((0, 0.0)).chain(all_k) {
        let theirs = if k == 0 {
            pyf("first_stage_s")
        } else {
            py_two(pyf(&format!("rerank_{k}_s")))
        };
        println!(
            "| {k:>4} | {:>12.3} | {:>12} | {:>22.0}x |",
            two(t),
            theirs
                .map(|v| format!("{v:.3}"))
                .unwrap_or_else(|| "-".into()),
            uniter_only / two(t)
        );
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
