//! The Milvus store against a real server (`.ci/run` starts Milvus 2.3.5 standalone and sets
//! MILVUS_ADDR=HOST:PORT and MILVUS_PID). Built only with `--features milvus`; the tests are
//! ignored unless asked for (`-- --include-ignored`), and then need MILVUS_ADDR.
//!
//! `server_stopped_gives_clean_errors` stops the server (SIGINT to MILVUS_PID): run it alone,
//! after the others (`.ci/run` does).
#![cfg(feature = "milvus")]

mod common;
mod fixture_index;
mod http;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{assert_clean_error, fixtures, run_cli, tiny_source};
use fixture_index::*;
use lightningdot::data::Tokenizer;
use lightningdot::device::CpuBackend;
use lightningdot::retrieval::format::{FORMAT, ImageSection, IndexMeta, VERSION, write_index};
use lightningdot::retrieval::store::{
    ConnectOptions, MilvusStore, UploadOptions, key_counts, upload_index,
};
use lightningdot::retrieval::{
    MilvusIndex, MilvusIndexKind, MilvusSearchParams, MilvusUrl, Pipeline, PipelineOptions, Query,
    QueryEncoder, RetrievalError, SearchService, StoredIndex, VectorStore,
};
use lightningdot::search::FlatIndex;
use serde_json::json;

const WHY: &str = "needs a Milvus server: MILVUS_ADDR=HOST:PORT (.ci/run starts one)";

/// `milvus://MILVUS_ADDR/{name}_{pid}`: a collection of this run's own.
fn url(name: &str) -> MilvusUrl {
    let addr = std::env::var("MILVUS_ADDR")
        .unwrap_or_else(|_| panic!("MILVUS_ADDR is unset: these tests {WHY}"));
    format!("milvus://{addr}/{name}_{}", std::process::id())
        .parse()
        .unwrap()
}

fn connect() -> ConnectOptions {
    ConnectOptions {
        connect_timeout: Duration::from_secs(10),
        timeout: Duration::from_secs(30),
        ..Default::default()
    }
}

fn upload(dir: &Path, url: &MilvusUrl, index: MilvusIndex) {
    let index_dir = StoredIndex::open(dir).unwrap();
    let options = UploadOptions {
        index,
        batch_rows: 1000,
        ..Default::default()
    };
    let report = upload_index(&index_dir, url, options, &connect(), &|_, _, _| {}).unwrap();
    assert_eq!(report.images_sent, index_dir.image_ids().len());
    assert_eq!(report.texts_sent, index_dir.text_ids().len());
}

/// The fixture index uploaded to a FLAT collection, once per process.
fn flat_fixture() -> MilvusUrl {
    static URL: std::sync::OnceLock<MilvusUrl> = std::sync::OnceLock::new();
    URL.get_or_init(|| {
        let u = url("fixture_flat");
        upload(&index_dir(), &u, MilvusIndex::default());
        u
    })
    .clone()
}

fn milvus_pipeline(url: &MilvusUrl) -> Pipeline<CpuBackend> {
    let device = Default::default();
    let (model, cfg, _) = tiny_source(CHECKPOINT).load::<CpuBackend>(&device).unwrap();
    let encoder = QueryEncoder::new(
        model,
        &cfg,
        Tokenizer::from_path(vocab_dir()).unwrap(),
        device,
    );
    let store = MilvusStore::open(url, MilvusSearchParams::default(), &connect()).unwrap();
    Pipeline::with_store(encoder, Box::new(store), PipelineOptions::default()).unwrap()
}

fn result_ids(r: &lightningdot::retrieval::SearchResponse) -> Vec<String> {
    r.results.iter().map(|h| h.id.clone()).collect()
}

#[test]
#[ignore = "needs a Milvus server: MILVUS_ADDR=HOST:PORT (.ci/run starts one)"]
fn flat_collection_gives_the_exact_top10() {
    let milvus = milvus_pipeline(&flat_fixture());
    let local = pipeline();
    let counts = milvus.store().counts();
    assert_eq!((counts.images, counts.texts, counts.dim), (20, 100, 32));
    // Every fixture caption as a text query: same ids in the same order, same scores.
    for (_, raw) in caption_queries() {
        let q = Query::Text(raw.clone());
        let (m, l) = (
            milvus.search(&q, 10).unwrap(),
            local.search(&q, 10).unwrap(),
        );
        assert_eq!(result_ids(&m), result_ids(&l), "{raw}");
        for (a, b) in m.results.iter().zip(&l.results) {
            assert!((a.score - b.score).abs() < 1e-4, "{raw}: {a:?} vs {b:?}");
            assert_eq!(a.captions, b.captions, "{raw}");
        }
        assert_eq!(m.search, "milvus");
    }
    // Image -> text: captions with their text and image, as the directory gives them.
    for id in local.index().unwrap().image_ids().iter().take(5) {
        let q = Query::Image(id.clone());
        let (m, l) = (
            milvus.search(&q, 10).unwrap(),
            local.search(&q, 10).unwrap(),
        );
        assert_eq!(result_ids(&m), result_ids(&l), "{id}");
        for (a, b) in m.results.iter().zip(&l.results) {
            assert_eq!((&a.text, &a.image), (&b.text, &b.image));
        }
    }
    // The reference evaluation's top-10 of every caption, through Milvus.
    let want = expected();
    for (sentid, raw) in caption_queries() {
        let got = result_ids(&milvus.search(&Query::Text(raw.clone()), 10).unwrap());
        assert_eq!(
            got,
            ids(&want["text_query_top10_images"][&sentid]),
            "{sentid}"
        );
    }
    for img in ids(&want["img_ids_order"]) {
        let got = result_ids(&milvus.search(&Query::Image(img.clone()), 10).unwrap());
        assert_eq!(got, ids(&want["image_query_top10_texts"][&img]), "{img}");
    }
    assert!(matches!(
        milvus.search(&Query::Image("no-such.npz".into()), 3),
        Err(RetrievalError::UnknownImage(_))
    ));
}

#[test]
#[ignore = "needs a Milvus server: MILVUS_ADDR=HOST:PORT (.ci/run starts one)"]
fn filtered_search_returns_only_matching_items() {
    let u = flat_fixture();
    let milvus = milvus_pipeline(&u);
    let local = pipeline();
    let q = Query::Text(caption_queries()[3].1.clone());
    let all = local.search(&q, 20).unwrap();
    // Rows 0..20 are the index order; keep the even ones.
    let keep: Vec<usize> = (0..20).step_by(2).collect();
    let filter = format!("row in {keep:?}");
    let r = milvus.search_filtered(&q, 5, Some(&filter)).unwrap();
    let image_ids = local.index().unwrap().image_ids();
    let allowed: HashSet<&str> = keep.iter().map(|&i| image_ids[i].as_str()).collect();
    assert_eq!(r.results.len(), 5);
    assert!(
        r.results.iter().all(|h| allowed.contains(h.id.as_str())),
        "{r:?}"
    );
    // ... and they are the best 5 of the allowed ones, in order.
    let want: Vec<String> = all
        .results
        .iter()
        .filter(|h| allowed.contains(h.id.as_str()))
        .take(5)
        .map(|h| h.id.clone())
        .collect();
    assert_eq!(result_ids(&r), want);
    // A prefix filter on the id field.
    let prefix = &image_ids[0][..image_ids[0].len() - 6];
    let r = milvus
        .search_filtered(&q, 10, Some(&format!("image_id like \"{prefix}%\"")))
        .unwrap();
    assert!(!r.results.is_empty());
    assert!(r.results.iter().all(|h| h.id.starts_with(prefix)));
    // A malformed filter is the request's fault.
    let bad = milvus.search_filtered(&q, 5, Some("row <<< 3"));
    assert!(matches!(bad, Err(RetrievalError::BadRequest(_))), "{bad:?}");
    // A directory store has nothing to filter on.
    assert!(matches!(
        local.search_filtered(&q, 5, Some("row < 3")),
        Err(RetrievalError::BadRequest(_))
    ));

    // Over HTTP: "filter" in the body.
    let service: Arc<dyn SearchService> = Arc::new(milvus);
    let server =
        lightningdot::serve::spawn(service, Default::default(), "127.0.0.1:0".parse().unwrap())
            .unwrap();
    let reply = http::search(
        server.addr,
        &json!({"query": caption_queries()[3].1, "k": 5, "filter": filter}),
    )
    .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let body = reply.json();
    let got: Vec<&str> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, want);
    let reply = http::search(
        server.addr,
        &json!({"query": "a dog", "filter": "row <<< 3"}),
    )
    .unwrap();
    assert_eq!(reply.status, 400, "{}", reply.text());
    let health = http::get(server.addr, "/healthz").unwrap();
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["store"]["state"], "ok");
    assert_eq!(health.json()["store"]["store"], u.to_string());
}

#[test]
#[ignore = "needs a Milvus server: MILVUS_ADDR=HOST:PORT (.ci/run starts one)"]
fn cli_index_to_milvus_then_search_gives_the_reference_top10() {
    let u = url("cli_encoded");
    let f = fixtures();
    let model: [&dyn AsRef<std::ffi::OsStr>; 6] = [
        &"--checkpoint",
        &f.join(CHECKPOINT),
        &"--img-config",
        &f.join("config/img_model_config.json"),
        &"--txt-config",
        &f.join("config/txt_model_config"),
    ];
    let to = u.to_string();
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"index"];
    args.extend(model);
    let (img_db, txt_db) = (img_db_dir(), txt_db_dir());
    args.extend([
        &"--img-db" as &dyn AsRef<std::ffi::OsStr>,
        &img_db,
        &"--txt-db",
        &txt_db,
        &"--to",
        &to,
        &"--batch-size",
        &"7",
    ]);
    let out = run_cli(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("uploaded 20 images + 100 captions"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // A rerun finds everything stored and sends nothing.
    let out = run_cli(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("uploaded 0 images + 0 captions"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let want = expected();
    let vocab = vocab_dir();
    for (sentid, raw) in caption_queries().into_iter().step_by(10) {
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"search"];
        args.extend(model);
        args.extend([
            &"--vocab" as &dyn AsRef<std::ffi::OsStr>,
            &vocab,
            &"--store",
            &to,
            &"--json",
            &raw,
        ]);
        let out = run_cli(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let got: Vec<String> = body["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            got,
            ids(&want["text_query_top10_images"][&sentid]),
            "{sentid}"
        );
        assert_eq!(body["search"], "milvus");
    }
}

/// A deterministic uniform generator in [-1, 1) (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// `n` random `dim`-d vectors around 100 cluster centres (like embeddings, not uniform noise),
/// written as an index directory under CARGO_TARGET_TMPDIR.
fn synthetic_index(name: &str, n: usize, dim: usize) -> (PathBuf, Vec<f32>) {
    let mut rng = Rng(n as u64 * 31 + dim as u64);
    let centres: Vec<f32> = (0..100 * dim).map(|_| rng.next()).collect();
    let mut vectors = Vec::with_capacity(n * dim);
    for i in 0..n {
        let c = (i * 7919) % 100;
        for d in 0..dim {
            vectors.push(centres[c * dim + d] + 0.5 * rng.next());
        }
    }
    let meta = IndexMeta {
        format: FORMAT.into(),
        version: VERSION,
        dim,
        images: ImageSection {
            ids: (0..n).map(|i| format!("synthetic_{i:07}.npz")).collect(),
            img_db: "synthetic".into(),
            ..Default::default()
        },
        ..Default::default()
    };
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    write_index(&dir, &meta, &vectors, None, true, |_| Ok(())).unwrap();
    (dir, vectors)
}

/// HNSW recall@10 against exact search on 20,000 clustered 64-d vectors.
const HNSW_RECALL_AT_10: f64 = 0.95;

#[test]
#[ignore = "needs a Milvus server: MILVUS_ADDR=HOST:PORT (.ci/run starts one)"]
fn hnsw_recall_on_a_larger_synthetic_set() {
    let (n, dim) = (20_000, 64);
    let (dir, vectors) = synthetic_index("milvus-synthetic-20k", n, dim);
    let u = url("synthetic_hnsw");
    upload(
        &dir,
        &u,
        MilvusIndex {
            kind: MilvusIndexKind::Hnsw,
            hnsw_m: Some(16),
            ef_construction: Some(200),
            ..Default::default()
        },
    );
    let store = MilvusStore::open(
        &u,
        MilvusSearchParams {
            nprobe: None,
            ef: Some(128),
        },
        &connect(),
    )
    .unwrap();
    assert_eq!(store.index_kind(), MilvusIndexKind::Hnsw);
    assert_eq!(store.counts().images, n);
    let exact = FlatIndex::<CpuBackend>::new(&vectors, dim, &Default::default());
    let index = StoredIndex::open(&dir).unwrap();
    let mut rng = Rng(7);
    let queries = 200;
    let mut found = 0;
    for _ in 0..queries {
        // Queries like the data: a random stored vector, moved.
        let row = ((rng.next() + 1.0) * 0.5 * n as f32) as usize % n;
        let q: Vec<f32> = vectors[row * dim..(row + 1) * dim]
            .iter()
            .map(|v| v + 0.5 * rng.next())
            .collect();
        let want: HashSet<String> = exact.search(&q, 10)[0]
            .iter()
            .map(|h| index.image_ids()[h.index].clone())
            .collect();
        let got = store.search_images(&q, 10, None).unwrap();
        assert_eq!(got.len(), 10);
        found += got.iter().filter(|h| want.contains(&h.id)).count();
    }
    let recall = found as f64 / (queries * 10) as f64;
    eprintln!(
        "HNSW (M 16, efConstruction 200, ef 128) recall@10 = {recall:.4} over {queries} queries"
    );
    assert!(
        recall >= HNSW_RECALL_AT_10,
        "recall@10 {recall:.4} < {HNSW_RECALL_AT_10}"
    );
}

#[test]
#[ignore = "needs a Milvus server: MILVUS_ADDR=HOST:PORT (.ci/run starts one)"]
fn killed_upload_resumes_with_every_id_once() {
    let n = 20_000;
    let (dir, _) = synthetic_index("milvus-synthetic-resume", n, 64);
    let u = url("resume");
    let to = u.to_string();
    let args = |batch: &str| -> Vec<String> {
        [
            "index",
            "--from",
            &dir.display().to_string(),
            "--to",
            &to,
            "--upload-batch",
            batch,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_lightningdot"))
        // One row per request, so that the kill lands mid-upload.
        .args(args("1"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once some, not all, rows are stored.
    let started = Instant::now();
    let stored = loop {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "upload never started"
        );
        std::thread::sleep(Duration::from_millis(50));
        if let Ok(c) = key_counts(&u, &u.collection, n, &connect())
            && c.len() >= 100
        {
            break c.len();
        }
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(stored < n, "the upload finished before it was killed");
    let rerun = args("1000");
    let rerun: Vec<&dyn AsRef<std::ffi::OsStr>> = rerun
        .iter()
        .map(|s| s as &dyn AsRef<std::ffi::OsStr>)
        .collect();
    let out = run_cli(&rerun);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The rerun found what the killed run stored and sent only the rest.
    let already: usize = stdout
        .split(" images were already there")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no resume count in {stdout:?}"));
    assert!(already >= stored && already < n, "{stdout}");
    let counts: HashMap<i64, usize> = key_counts(&u, &u.collection, n, &connect()).unwrap();
    assert_eq!(counts.len(), n);
    assert!((0..n as i64).all(|k| counts.get(&k) == Some(&1)));
    // Searchable after the resumed upload (flushed, indexed, loaded).
    let store = MilvusStore::open(&u, MilvusSearchParams::default(), &connect()).unwrap();
    let q = StoredIndex::open(&dir)
        .unwrap()
        .image_vectors(42..43)
        .into_owned();
    let hits = store.search_images(&q, 10, None).unwrap();
    assert_eq!(hits.len(), 10);
    assert!(hits.iter().any(|h| h.id == "synthetic_0000042.npz"));
}

/// Waits until nothing accepts connections on `addr`.
fn wait_closed(addr: &str) {
    let started = Instant::now();
    while std::net::TcpStream::connect(addr).is_ok() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "Milvus did not stop"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
#[ignore = "stops the Milvus server (MILVUS_PID): run alone, after the others"]
fn server_stopped_gives_clean_errors() {
    let u = flat_fixture();
    let milvus = milvus_pipeline(&u);
    let q = Query::Text("a dog runs".into());
    assert_eq!(milvus.search(&q, 5).unwrap().results.len(), 5);
    let service: Arc<dyn SearchService> = Arc::new(milvus);
    let server = lightningdot::serve::spawn(
        service.clone(),
        Default::default(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    assert_eq!(http::get(server.addr, "/healthz").unwrap().status, 200);

    let pid: i32 = std::env::var("MILVUS_PID")
        .expect("MILVUS_PID: the server's pid, to stop it")
        .parse()
        .unwrap();
    let status = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    wait_closed(&format!("{}:{}", u.host, u.port));

    // The library: a typed "unavailable" error, after bounded retries.
    let started = Instant::now();
    let err = service.search(&q, 5).unwrap_err();
    assert!(
        matches!(err, RetrievalError::StoreUnavailable { .. }),
        "{err:?}"
    );
    assert!(!err.to_string().contains('\n'));
    assert!(started.elapsed() < Duration::from_secs(120));
    // The server: 503 with a one-line JSON error; /healthz says the store is down.
    let reply = http::search(server.addr, &json!({"query": "a dog runs", "k": 5})).unwrap();
    assert_eq!(reply.status, 503, "{}", reply.text());
    let msg = reply.json()["error"].as_str().unwrap().to_string();
    assert!(msg.contains(&u.to_string()) && !msg.contains('\n'), "{msg}");
    let health = http::get(server.addr, "/healthz").unwrap();
    assert_eq!(health.status, 503, "{}", health.text());
    assert_eq!(health.json()["store"]["state"], "unavailable");
    // The CLI: one error line, exit 1, before any model is loaded.
    let f = fixtures();
    let out = run_cli(&[
        &"search",
        &"--checkpoint",
        &f.join(CHECKPOINT),
        &"--img-config",
        &f.join("config/img_model_config.json"),
        &"--txt-config",
        &f.join("config/txt_model_config"),
        &"--store",
        &u.to_string(),
        &"--store-timeout",
        &"2",
        &"a dog runs",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_clean_error(&out, "cannot connect to Milvus");
    let out = run_cli(&[&"index", &"--from", &index_dir(), &"--to", &u.to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert_clean_error(&out, "cannot connect to Milvus");
}
