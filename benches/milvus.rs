//! The Milvus store against the index directory at full-MSCOCO scale, in one run on one machine:
//! 123,287 synthetic 768-d image vectors (low-rank plus noise, like real embeddings) uploaded
//! to a FLAT collection (rows/s inserting, then flush + index + load), and the candidate stage
//! (top-10 of a query vector, no text tower) through Milvus and through the directory's exact
//! search: p50 / p99 over the same queries, and how often their top-10s agree.
//!
//! `MILVUS_ADDR=HOST:PORT cargo bench --features milvus --bench milvus` (`.ci/milvus-server`
//! starts a local server). Prints the CPU and the load average before and after: other work on
//! the machine moves both numbers.

use std::time::{Duration, Instant};

use burn::prelude::*;
use burn::tensor::Distribution;
use lightningdot::device::CpuBackend;
use lightningdot::retrieval::format::{FORMAT, ImageSection, IndexMeta, VERSION, write_index};
use lightningdot::retrieval::store::{ConnectOptions, MilvusStore, UploadOptions, upload_index};
use lightningdot::retrieval::{
    DirStore, MilvusSearchParams, MilvusUrl, PipelineOptions, StoredIndex, VectorStore,
};

type B = CpuBackend;
const N: usize = 123_287;
const DIM: usize = 768;
const RANK: usize = 64;
const QUERIES: usize = 200;
const K: usize = 10;

fn pct(xs: &[f64], p: f64) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    v[((p / 100.0) * (v.len() - 1) as f64).round() as usize]
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn cpu() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("?".to_string(), |s| s.trim().to_string());
    let flags = info.lines().find(|l| l.starts_with("flags")).unwrap_or("");
    let has = |f: &str| flags.split_whitespace().any(|x| x == f);
    format!(
        "{model}, {} threads, avx2 {}, avx512f {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        has("avx2"),
        has("avx512f")
    )
}

/// `n` vectors `z · basis / sqrt(RANK) + noise`, row-major.
fn synthetic(n: usize, basis: &Tensor<B, 2>, device: &Device<B>) -> Vec<f32> {
    let mut out = Vec::with_capacity(n * DIM);
    for start in (0..n).step_by(16_384) {
        let rows = (n - start).min(16_384);
        let z = Tensor::<B, 2>::random([rows, RANK], Distribution::Normal(0.0, 1.0), device);
        let noise = Tensor::<B, 2>::random([rows, DIM], Distribution::Normal(0.0, 0.3), device);
        let v = z.matmul(basis.clone()).div_scalar((RANK as f32).sqrt()) + noise;
        out.extend(v.into_data().to_vec::<f32>().unwrap_or_default());
    }
    out
}

fn main() {
    let Ok(addr) = std::env::var("MILVUS_ADDR") else {
        println!("milvus bench skipped: set MILVUS_ADDR=HOST:PORT (a running Milvus server)");
        return;
    };
    println!("cpu: {}", cpu());
    println!("load average before: {}", loadavg());
    let device = Default::default();
    let basis = Tensor::<B, 2>::random([RANK, DIM], Distribution::Normal(0.0, 1.0), &device);
    let vectors = synthetic(N, &basis, &device);
    let queries = synthetic(QUERIES, &basis, &device);
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("milvus-bench-index");
    let meta = IndexMeta {
        format: FORMAT.into(),
        version: VERSION,
        dim: DIM,
        images: ImageSection {
            ids: (0..N).map(|i| format!("coco_{i:012}.npz")).collect(),
            img_db: "synthetic".into(),
            ..Default::default()
        },
        ..Default::default()
    };
    write_index(&dir, &meta, &vectors, None, true, |_| Ok(())).expect("write the index");
    drop(vectors);
    let index = StoredIndex::open(&dir).expect("open the index");

    let url: MilvusUrl = format!("milvus://{addr}/bench_{}", std::process::id())
        .parse()
        .expect("MILVUS_ADDR must be HOST:PORT");
    let connect = ConnectOptions {
        timeout: Duration::from_secs(120),
        ..Default::default()
    };
    let started = Instant::now();
    let report = upload_index(
        &index,
        &url,
        UploadOptions::default(),
        &connect,
        &|_, _, _| {},
    )
    .expect("upload");
    let total = started.elapsed().as_secs_f64();
    println!(
        "upload {N} x {DIM} f32 (FLAT, 2000 rows/request): inserting {:.1}s = {:.0} rows/s \
         ({:.1} MB/s); flush + index + load {:.1}s; total {:.1}s = {:.0} rows/s",
        report.insert_seconds,
        N as f64 / report.insert_seconds,
        (N * DIM * 4) as f64 / report.insert_seconds / 1e6,
        report.finish_seconds,
        total,
        N as f64 / total
    );

    let milvus =
        MilvusStore::open(&url, MilvusSearchParams::default(), &connect).expect("open Milvus");
    let local =
        DirStore::<B>::open(index, &PipelineOptions::default(), device).expect("load the index");
    let (mut lm, mut ll) = (Vec::new(), Vec::new());
    let mut agree = 0;
    for q in queries.chunks(DIM) {
        let t = Instant::now();
        let m = milvus.search_images(q, K, None).expect("Milvus search");
        lm.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let l = local.search_images(q, K, None).expect("local search");
        ll.push(t.elapsed().as_secs_f64() * 1e3);
        agree += usize::from(
            m.iter().map(|h| &h.id).collect::<Vec<_>>()
                == l.iter().map(|h| &h.id).collect::<Vec<_>>(),
        );
    }
    println!("top-{K} of {QUERIES} query vectors (candidate stage only, ms):");
    println!("| store | p50 | p99 |");
    println!("|---|---|---|");
    println!(
        "| Milvus FLAT (gRPC, loopback) | {:.2} | {:.2} |",
        pct(&lm, 50.0),
        pct(&lm, 99.0)
    );
    println!(
        "| directory, exact (resident) | {:.2} | {:.2} |",
        pct(&ll, 50.0),
        pct(&ll, 99.0)
    );
    println!("identical top-{K}: {agree} of {QUERIES}");
    println!("load average after: {}", loadavg());
}
