//! The search page in headless Chromium (Debian `chromium`, installed by .ci/run): the page's
//! JavaScript fills the query box from `?q=`, submits the form as a person pressing Enter would,
//! fetches POST /search and renders the results; the dumped DOM must hold the reference top-10
//! in order. Without a Chromium binary on PATH when the tests are built (build.rs), the test is
//! *ignored*, which the `cargo test` summary shows; `apt-get install chromium` and rebuild.

mod common;
mod fixture_index;
mod photo_setup;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fixture_index::*;
use lightningdot::retrieval::SearchService;
use lightningdot::serve::{self, ServeOptions};

/// `chromium --headless --dump-dom URL`, killed after `limit`.
fn dump_dom(browser: &PathBuf, url: &str, limit: Duration) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=15000",
            "--run-all-compositor-stages-before-draw",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `data-id`s of the rendered result items, in page order.
fn rendered_ids(dom: &str) -> Vec<String> {
    dom.split("<li class=\"result\" data-id=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .map(|s| s.replace("&amp;", "&"))
        .collect()
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
#[cfg_attr(
    not(has_chromium),
    ignore = "no chromium on PATH when built: apt-get install chromium (README, Testing)"
)]
fn page_runs_a_query_in_headless_chromium() {
    let browser = PathBuf::from(option_env!("LIGHTNINGDOT_CHROMIUM").unwrap_or("chromium"));
    let service: Arc<dyn SearchService> = Arc::new(pipeline());
    let server = serve::spawn(
        service,
        ServeOptions::default(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let want = expected();
    let (sentid, raw) = caption_queries().remove(7);
    let url = format!("http://{}/?q={}", server.addr, url_encode(&raw));
    let dom = dump_dom(&browser, &url, Duration::from_secs(90));
    assert!(
        dom.contains("data-state=\"done\""),
        "page did not finish: {dom}"
    );
    assert_eq!(
        rendered_ids(&dom),
        ids(&want["text_query_top10_images"][&sentid]),
        "rendered results for {raw:?}"
    );
    // The query box holds what was typed, and ground-truth captions are shown.
    assert!(dom.contains("class=\"captions\""), "{dom}");
    assert!(dom.contains("10 results"), "{dom}");

    // Image -> captions from the page too.
    let img = "flickr30k_000000001027.npz";
    let url = format!("http://{}/?image={img}", server.addr);
    let dom = dump_dom(&browser, &url, Duration::from_secs(90));
    assert_eq!(
        rendered_ids(&dom),
        ids(&want["image_query_top10_texts"][img])
    );

    // A rejected request shows the server's message.
    let url = format!("http://{}/?q=a%20dog&k=20000", server.addr);
    let dom = dump_dom(&browser, &url, Duration::from_secs(90));
    assert!(rendered_ids(&dom).is_empty());
    assert!(dom.contains("data-state=\"error\""), "{dom}");
    assert!(dom.contains("k must be between 1 and 10000"), "{dom}");
    server.stop().unwrap();
}

/// The `data-id`s of rendered `<li class="{class}">` items, in page order.
fn ids_of_class(dom: &str, class: &str) -> Vec<String> {
    dom.split(&format!("<li class=\"{class}\" data-id=\""))
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .map(|s| s.replace("&amp;", "&"))
        .collect()
}

#[test]
#[cfg_attr(
    not(has_chromium),
    ignore = "no chromium on PATH when built: apt-get install chromium (README, Testing)"
)]
fn page_searches_by_photo() {
    use lightningdot::retrieval::photo::PhotoService;
    use lightningdot::serve::PhotoHandle;
    let browser = PathBuf::from(option_env!("LIGHTNINGDOT_CHROMIUM").unwrap_or("chromium"));
    let photo = Arc::new(photo_setup::photo_pipeline());
    let service: Arc<dyn SearchService> = photo.clone();
    let server = serve::spawn(
        service,
        ServeOptions {
            images_dir: Some(photo_setup::images_dir()),
            photo: Some(PhotoHandle(photo.clone())),
            ..Default::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    // The page has the upload control when the server has a detector.
    let dom = dump_dom(
        &browser,
        &format!("http://{}/", server.addr),
        Duration::from_secs(90),
    );
    assert!(dom.contains("id=\"photo-form\" class=\"on\""), "{dom}");

    // ?photo=ID fetches the image file and uploads it through the page's form code.
    let id = "landscape_320x240.npz";
    let bytes = std::fs::read(photo_setup::images_dir().join("landscape_320x240.png")).unwrap();
    let want = photo.search_photo(&bytes, 3).unwrap();
    let url = format!("http://{}/?photo={id}&k=3", server.addr);
    let dom = dump_dom(&browser, &url, Duration::from_secs(120));
    assert!(
        dom.contains("data-state=\"done\""),
        "page did not finish: {dom}"
    );
    let captions: Vec<String> = want.captions.iter().map(|r| r.id.clone()).collect();
    let similar: Vec<String> = want.images.iter().map(|r| r.id.clone()).collect();
    assert_eq!(rendered_ids(&dom), captions);
    assert_eq!(ids_of_class(&dom, "similar"), similar);
    assert!(dom.contains("Similar images"), "{dom}");
    assert!(dom.contains("regions"), "{dom}");
    server.stop().unwrap();
}
