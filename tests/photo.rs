//! From a folder of images to search by photo (issue 15, items 5 and "done when"): `extract`
//! writes an img_db that `index` and `eval` read; an uploaded copy of an indexed image is
//! encoded to its stored vector; `POST /search/image` (raw and multipart) and `search --photo`
//! rank captions and images by the dot product with it; 413 / 415 / 400 / 404 are one-line
//! JSON errors; /metrics has the detector stage.

mod common;
mod http;
mod photo_setup;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use lightningdot::data::{ImgDb, ImgDbOptions};
use lightningdot::model::detector::load_image;
use lightningdot::retrieval::photo::PhotoService;
use lightningdot::retrieval::{SearchService, StoredIndex};
use lightningdot::serve::{self, PhotoHandle, RunningServer, ServeOptions};
use photo_setup::*;
use serde_json::Value;

fn content_type(file: &Path) -> &'static str {
    if file.extension().is_some_and(|e| e == "jpg") {
        "image/jpeg"
    } else {
        "image/png"
    }
}

fn image_files() -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(images_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    assert_eq!(v.len(), 5);
    v
}

fn record_name(file: &Path) -> String {
    format!("{}.npz", file.file_stem().unwrap().to_string_lossy())
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `(id, score)` of every row of `vectors` (`[n, dim]`) against `q`, best first.
fn ranked(ids: &[String], vectors: &[f32], q: &[f32]) -> Vec<(String, f32)> {
    let mut v: Vec<(String, f32)> = ids
        .iter()
        .zip(vectors.chunks_exact(q.len()))
        .map(|(id, row)| (id.clone(), dot(row, q)))
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v
}

fn hits(v: &Value) -> Vec<(String, f32)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                r["score"].as_f64().unwrap() as f32,
            )
        })
        .collect()
}

fn assert_same_ranking(got: &[(String, f32)], want: &[(String, f32)], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.0, w.0, "{what}: {got:?} vs {want:?}");
        assert!(
            (g.1 - w.1).abs() <= 1e-4 * w.1.abs().max(1.0),
            "{what}: {got:?} vs {want:?}"
        );
    }
}

#[test]
fn extracted_db_feeds_index_and_eval() {
    let s = setup();
    let det = detector();
    let db = ImgDb::open(&s.img_db, ImgDbOptions::default()).unwrap();
    assert_eq!(db.names().len(), 5);
    for file in image_files() {
        let name = record_name(&file);
        let d = det
            .detect(&load_image(&file, &det.config).unwrap())
            .unwrap();
        assert_eq!(d.feature_dim, 2048);
        let stored = db.get_dump(&name).unwrap();
        let features = stored.get("features").unwrap();
        assert_eq!(features.shape, vec![d.len(), 2048], "{name}");
        // The stored record is the detector's output in float16.
        let f16 = |v: f32| half::f16::from_f32(v).to_f32();
        let worst = features
            .data
            .iter()
            .zip(&d.features)
            .map(|(a, b)| (a - f16(*b)).abs())
            .fold(0f32, f32::max);
        assert_eq!(worst, 0.0, "{name}: stored features differ from detect()");
    }
    let index = StoredIndex::open(&s.index).unwrap();
    assert_eq!(index.image_ids().len(), 5);
    assert_eq!(index.text_ids().len(), CAPTIONS.len());

    // eval reads the same img_db and txt_db (a config naming them, the fixture towers).
    let f = common::fixtures();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg: serde_json::Map<String, Value> =
        serde_json::from_str(&std::fs::read_to_string(f.join("config/eval_config.json")).unwrap())
            .unwrap();
    for (k, v) in [
        ("txt_model_config", f.join("config/txt_model_config")),
        ("img_model_config", f.join("config/img_model_config.json")),
        ("test_txt_db", s.txt_db.clone()),
        ("test_img_db", s.img_db.clone()),
    ] {
        cfg.insert(k.into(), Value::String(v.display().to_string()));
    }
    let cfg_path = dir.path().join("eval.json");
    std::fs::write(&cfg_path, serde_json::to_string(&cfg).unwrap()).unwrap();
    let json = dir.path().join("recall.json");
    let o = common::run_cli(&[
        &"eval",
        &"--config",
        &cfg_path,
        &"--checkpoint",
        &f.join(CHECKPOINT),
        &"--json",
        &json,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&json).unwrap();
    println!("eval over the extracted db: {text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    let mut recalls = Vec::new();
    collect_numbers(&v, "", &mut recalls);
    assert!(
        recalls
            .iter()
            .any(|(k, _)| k.contains("r1") || k.contains("R@1")),
        "{text}"
    );
    for (k, r) in recalls
        .iter()
        .filter(|(k, _)| k.contains("r1") || k.contains("r5"))
    {
        assert!((0.0..=1.0).contains(r), "{k} = {r}");
    }
}

#[test]
fn the_fixture_detectors_512_d_features_are_refused_by_index_in_one_line() {
    // The fixture model is reduced-width (res5 of 512 channels); its records match the
    // reference's (tests/detector_parity.rs), but the image tower reads 2048-d features.
    let f = common::fixtures();
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("list.txt");
    std::fs::write(
        &list,
        format!("{}\n", images_dir().join("tiny_97x151.png").display()),
    )
    .unwrap();
    let db = dir.path().join("img_db");
    let o = common::run_cli(&[
        &"extract",
        &"--detector",
        &f.join("butd"),
        &"--images",
        &list,
        &"--out",
        &db,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let src = common::tiny_source(CHECKPOINT);
    let o = common::run_cli(&[
        &"index",
        &"--checkpoint",
        &src.checkpoint,
        &"--img-config",
        &src.img_config.clone().unwrap(),
        &"--txt-config",
        &src.txt_config.clone().unwrap(),
        &"--img-db",
        &db,
        &"--out",
        &dir.path().join("index"),
    ]);
    common::assert_clean_error(&o, "expected [N, 2048]");
}

fn collect_numbers(v: &Value, path: &str, out: &mut Vec<(String, f64)>) {
    match v {
        Value::Object(m) => m
            .iter()
            .for_each(|(k, v)| collect_numbers(v, &format!("{path}.{k}"), out)),
        Value::Number(n) => out.push((path.to_string(), n.as_f64().unwrap())),
        _ => {}
    }
}

fn start(max_upload_bytes: usize) -> RunningServer {
    let photo = Arc::new(photo_pipeline());
    let service: Arc<dyn SearchService> = photo.clone();
    serve::spawn(
        service,
        ServeOptions {
            photo: Some(PhotoHandle(photo)),
            max_upload_bytes,
            ..Default::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap()
}

fn post(addr: SocketAddr, path: &str, ct: Option<&str>, body: &[u8]) -> http::Reply {
    http::request(addr, "POST", path, ct, body).unwrap()
}

fn multipart(part_type: &str, filename: &str, bytes: &[u8]) -> (String, Vec<u8>) {
    let b = "lightningdot-test-boundary";
    let mut body = format!(
        "--{b}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n--{b}\r\n\
         Content-Disposition: form-data; name=\"photo\"; filename=\"{filename}\"\r\n\
         Content-Type: {part_type}\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{b}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={b}"), body)
}

fn assert_json_error(r: &http::Reply, status: u16, needle: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    let text = r.text();
    assert_eq!(text.lines().count(), 1, "{text}");
    let msg = r.json()["error"].as_str().unwrap().to_string();
    assert!(msg.contains(needle), "{needle:?} not in {msg:?}");
}

#[test]
fn photo_of_an_indexed_image_is_encoded_to_its_stored_vector_and_ranked_over_http() {
    let s = setup();
    let index = StoredIndex::open(&s.index).unwrap();
    let n = index.image_ids().len();
    let all_images = index.image_vectors(0..n).into_owned();
    let all_texts = index
        .text_vectors(0..index.text_ids().len())
        .unwrap()
        .into_owned();
    let photo = photo_pipeline();
    let server = start(serve::photo::DEFAULT_MAX_UPLOAD);
    for file in image_files() {
        let name = record_name(&file);
        let bytes = std::fs::read(&file).unwrap();
        let row = index.image_row(&name).unwrap();
        let dim = index.dim();
        let stored = &all_images[row * dim..(row + 1) * dim];
        let got = photo.encode_photo(&bytes).unwrap();
        let worst = got
            .vector
            .iter()
            .zip(stored)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-4, "{name}: photo vector differs by {worst}");

        let r = post(
            server.addr,
            "/search/image?k=3",
            Some(content_type(&file)),
            &bytes,
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        let want_images = ranked(index.image_ids(), &all_images, stored);
        let want_texts = ranked(index.text_ids(), &all_texts, stored);
        assert_same_ranking(&hits(&v["images"]), &want_images[..3], &name);
        assert_same_ranking(&hits(&v["captions"]), &want_texts[..3], &name);
        assert!(v["captions"][0]["text"].is_string());
        assert!(v["images"][0]["captions"].is_array());
        assert_eq!(v["regions"].as_u64().unwrap() as usize, got.regions);
        assert!(v["timings_ms"]["detect"].as_f64().unwrap() > 0.0);
    }

    // Multipart (a browser's file input) gives the same answer as the raw body.
    let jpeg = images_dir().join("photo_500x333.jpg");
    let bytes = std::fs::read(&jpeg).unwrap();
    let raw = post(server.addr, "/search/image", Some("image/jpeg"), &bytes).json();
    let (ct, body) = multipart("image/jpeg", "photo.jpg", &bytes);
    let r = post(server.addr, "/search/image", Some(&ct), &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(hits(&r.json()["images"]), hits(&raw["images"]));
    assert_eq!(
        hits(&raw["images"]).len(),
        5,
        "k defaults to 10, capped by the index"
    );

    // 415: other types, in the header or in the form.
    let a = server.addr;
    assert_json_error(
        &post(a, "/search/image", Some("text/plain"), b"hi"),
        415,
        "text/plain",
    );
    assert_json_error(
        &post(a, "/search/image", None, &bytes),
        415,
        "no Content-Type",
    );
    assert_json_error(
        &post(a, "/search/image", Some("image/gif"), b"GIF89a"),
        415,
        "image/gif",
    );
    let (ct, body) = multipart("application/pdf", "x.pdf", b"%PDF");
    assert_json_error(
        &post(a, "/search/image", Some(&ct), &body),
        415,
        "application/pdf",
    );
    // 400: undecodable, truncated, empty, a form without a file, a bad k.
    assert_json_error(
        &post(
            a,
            "/search/image",
            Some("image/png"),
            b"\x89PNG\r\n\x1a\nnot really",
        ),
        400,
        "cannot decode",
    );
    // (A JPEG cut short still decodes, grey below the cut, as OpenCV's does; a PNG does not.)
    let png = std::fs::read(images_dir().join("landscape_320x240.png")).unwrap();
    assert_json_error(
        &post(a, "/search/image", Some("image/png"), &png[..png.len() / 2]),
        400,
        "cannot decode",
    );
    assert_json_error(
        &post(a, "/search/image", Some("image/png"), b""),
        400,
        "empty",
    );
    assert_json_error(
        &post(
            a,
            "/search/image",
            Some("multipart/form-data; boundary=zz"),
            b"--zz\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nb\r\n--zz--\r\n",
        ),
        400,
        "no file part",
    );
    assert_json_error(
        &post(a, "/search/image?k=0", Some("image/jpeg"), &bytes),
        400,
        "k must be",
    );

    // /healthz and /metrics know about photos.
    let h = http::get(a, "/healthz").unwrap().json();
    assert_eq!(h["photo"], Value::Bool(true));
    let m = http::get(a, "/metrics").unwrap().text();
    assert!(
        m.contains("lightningdot_stage_duration_seconds_count{stage=\"detector\"} 7"),
        "{m}"
    );
    assert!(
        m.contains("lightningdot_http_requests_total{route=\"/search/image\",status=\"415\"} 4"),
        "{m}"
    );
    assert!(
        m.contains("lightningdot_photo_search_duration_seconds_count"),
        "{m}"
    );
    server.stop().unwrap();
}

#[test]
fn uploads_over_the_limit_get_413_and_no_detector_gets_404() {
    let server = start(2000);
    let big = std::fs::read(images_dir().join("photo_500x333.jpg")).unwrap();
    assert!(big.len() > 2000);
    assert_json_error(
        &post(server.addr, "/search/image", Some("image/jpeg"), &big),
        413,
        "limit of 2000 bytes",
    );
    let (ct, body) = multipart("image/jpeg", "p.jpg", &big);
    assert_json_error(
        &post(server.addr, "/search/image", Some(&ct), &body),
        413,
        "limit",
    );
    server.stop().unwrap();

    let plain: Arc<dyn SearchService> = Arc::new(pipeline());
    let server = serve::spawn(
        plain,
        ServeOptions::default(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    assert_json_error(
        &post(server.addr, "/search/image", Some("image/jpeg"), &big),
        404,
        "--detector",
    );
    assert_eq!(
        http::get(server.addr, "/healthz").unwrap().json()["photo"],
        Value::Bool(false)
    );
    server.stop().unwrap();
}

#[test]
fn search_photo_cli_matches_the_service() {
    let s = setup();
    let src = common::tiny_source(CHECKPOINT);
    let file = images_dir().join("portrait_240x400.png");
    let run = |photo: &Path, json: bool| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_lightningdot"));
        c.arg("search")
            .arg("--index")
            .arg(&s.index)
            .arg("--checkpoint")
            .arg(&src.checkpoint)
            .args(["--img-config", src.img_config.as_deref().unwrap()])
            .args(["--txt-config", src.txt_config.as_deref().unwrap()])
            .arg("--photo")
            .arg(photo)
            .arg("--detector")
            .arg(&s.detector)
            .args(["-k", "4"]);
        if json {
            c.arg("--json");
        }
        c.output().unwrap()
    };
    let o = run(&file, true);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let want = photo_pipeline()
        .search_photo(&std::fs::read(&file).unwrap(), 4)
        .unwrap();
    let want = serde_json::to_value(&want).unwrap();
    assert_eq!(hits(&v["images"]), hits(&want["images"]));
    assert_eq!(hits(&v["captions"]), hits(&want["captions"]));
    // The table names both lists; a file that is no image is one clean error.
    let o = run(&file, false);
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table.contains("similar images") && table.contains("portrait_240x400.npz"),
        "{table}"
    );
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jpg");
    std::fs::write(&bad, b"\xff\xd8\xff not a jpeg").unwrap();
    common::assert_clean_error(&run(&bad, false), "cannot decode");
    let o = common::run_cli(&[
        &"search",
        &"--index",
        &s.index,
        &"--checkpoint",
        &src.checkpoint,
        &"--detector",
        &s.detector,
        &"a dog",
    ]);
    common::assert_clean_error(&o, "--photo");
}
