//! Tells `tests/browser.rs` whether a Chromium binary is on PATH, so that without one the test
//! is reported as *ignored* in the `cargo test` summary instead of passing without running.

use std::path::PathBuf;

const BROWSERS: [&str; 4] = [
    "chromium",
    "chromium-browser",
    "google-chrome",
    "google-chrome-stable",
];

fn main() {
    println!("cargo::rustc-check-cfg=cfg(has_chromium)");
    println!("cargo::rerun-if-env-changed=PATH");
    println!("cargo::rerun-if-changed=build.rs");
    let dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    // Installing a browser adds a file to one of these directories: re-check then.
    for dir in dirs.iter().filter(|d| d.is_dir()) {
        println!("cargo::rerun-if-changed={}", dir.display());
    }
    let found = dirs
        .iter()
        .flat_map(|d| BROWSERS.iter().map(move |b| d.join(b)))
        .find(|p| p.is_file());
    if let Some(browser) = found {
        println!("cargo::rustc-cfg=has_chromium");
        println!(
            "cargo::rustc-env=LIGHTNINGDOT_CHROMIUM={}",
            browser.display()
        );
    }
}
