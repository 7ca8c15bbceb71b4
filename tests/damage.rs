//! Damaged input never kills the process: every kind of file the program reads is truncated
//! at several offsets and bit-flipped at seeded random positions, and the command that reads
//! it is run on the damaged copy. Each run must end with exit status 0 or 1 — never a signal,
//! never a panic — and a failure must be exactly one `error:` line naming the damaged file
//! (or its directory), with no output and no temporary file left behind. Truncating a binary
//! container must always be detected (exit 1). A flip inside a number's bytes may go
//! unnoticed (exit 0): no format here has a checksum over tensor payloads, except the index's
//! HNSW graph, which index.json records a CRC of because its C++ reader trusts it.
//!
//! The totals are printed (`cargo test --release --test damage -- --nocapture`) and quoted in
//! the README.

mod common;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::fixtures;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_lightningdot");

/// One kind of file, a pristine copy of it inside a work directory, and the command reading it.
struct Case {
    kind: &'static str,
    /// The file to damage.
    target: PathBuf,
    args: Vec<OsString>,
    /// Paths the command would create: absent after a failure (no half-written output).
    outputs: Vec<PathBuf>,
    /// Whether a truncated copy must be refused (binary containers with a known length).
    truncation_detected: bool,
}

/// How a copy is damaged.
#[derive(Debug, Clone, Copy)]
enum Damage {
    TruncateAt(u64),
    FlipBit { offset: u64, bit: u8 },
}

/// Seeded positions (SplitMix64), so a failure names a damage that can be replayed.
fn damages(len: u64, flips: usize, seed: u64) -> Vec<Damage> {
    let mut cuts = vec![0, len / 3, 2 * len / 3, len.saturating_sub(1)];
    cuts.dedup();
    let mut out: Vec<Damage> = cuts
        .into_iter()
        .filter(|&c| c < len)
        .map(Damage::TruncateAt)
        .collect();
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    for _ in 0..flips {
        if len > 0 {
            let r = next();
            out.push(Damage::FlipBit {
                offset: r % len,
                bit: (r >> 58) as u8 % 8,
            });
        }
    }
    out
}

fn apply(path: &Path, damage: Damage) {
    let mut bytes = std::fs::read(path).unwrap();
    match damage {
        Damage::TruncateAt(n) => bytes.truncate(n as usize),
        Damage::FlipBit { offset, bit } => bytes[offset as usize] ^= 1 << bit,
    }
    std::fs::write(path, bytes).unwrap();
}

/// Copies `from` (file or directory) to `to`, writable (the fixtures are read-only).
fn copy(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            copy(&e.path(), &to.join(e.file_name()));
        }
    } else {
        if let Some(p) = to.parent() {
            std::fs::create_dir_all(p).unwrap();
        }
        std::fs::copy(from, to).unwrap();
        let mut perm = std::fs::metadata(to).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perm.set_readonly(false);
        std::fs::set_permissions(to, perm).unwrap();
    }
}

/// Every regular file below `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn os(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<OsString> {
    args.iter().map(|a| a.as_ref().to_os_string()).collect()
}

/// Counts of one file kind.
#[derive(Default)]
struct Tally {
    runs: usize,
    refused: usize,
}

/// Builds the case in a fresh directory for every damage, runs it and checks the outcome.
fn check(make: impl Fn(&Path) -> Case, flips: usize, seed: u64) -> Tally {
    let probe_dir = tempfile::tempdir().unwrap();
    let probe = make(probe_dir.path());
    let len = std::fs::metadata(&probe.target).unwrap().len();
    let mut tally = Tally::default();
    for damage in damages(len, flips, seed) {
        let dir = tempfile::tempdir().unwrap();
        let case = make(dir.path());
        apply(&case.target, damage);
        let out = Command::new(BIN)
            .args(&case.args)
            .env("RUST_LOG", "error")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let what = format!("{} ({}) with {damage:?}", case.kind, case.target.display());
        let code = out
            .status
            .code()
            .unwrap_or_else(|| panic!("{what}: killed by a signal ({:?}): {stderr}", out.status));
        assert!(!stderr.contains("panicked"), "{what}: panic: {stderr}");
        assert!(
            code == 0 || code == 1,
            "{what}: exit status {code}: {stderr}"
        );
        tally.runs += 1;
        if code == 0 {
            assert!(
                !(case.truncation_detected && matches!(damage, Damage::TruncateAt(_))),
                "{what}: a truncated file was accepted"
            );
            continue;
        }
        tally.refused += 1;
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{what}: want one error line: {stderr}");
        assert!(
            names_target(errors[0], &case.target),
            "{what}: the error does not name the file: {}",
            errors[0]
        );
        for o in &case.outputs {
            assert!(!o.exists(), "{what}: {} was left behind", o.display());
            let parent = o.parent().unwrap();
            if let Ok(entries) = std::fs::read_dir(parent) {
                for e in entries {
                    let name = e.unwrap().file_name().to_string_lossy().into_owned();
                    assert!(
                        !(name.contains(".tmp") || name.contains(".old-")),
                        "{what}: temporary {name} left in {}",
                        parent.display()
                    );
                }
            }
        }
    }
    println!(
        "{:<34} {:>3} damaged copies: {:>3} refused with one error line, {:>3} read without \
         noticing (flips inside numbers), 0 signals, 0 panics",
        probe.kind,
        tally.runs,
        tally.refused,
        tally.runs - tally.refused
    );
    tally
}

/// The error line names the file, or the directory (db, model or index) that holds it.
fn names_target(line: &str, target: &Path) -> bool {
    let mut p = Some(target);
    for _ in 0..3 {
        let Some(path) = p else { break };
        if let Some(name) = path.file_name()
            && line.contains(&*name.to_string_lossy())
        {
            return true;
        }
        p = path.parent();
    }
    false
}

fn tiny_configs() -> [OsString; 4] {
    let f = fixtures();
    [
        "--img-config".into(),
        f.join("config/img_model_config.json").into(),
        "--txt-config".into(),
        f.join("config/txt_model_config").into(),
    ]
}

// ---- checkpoints and model directories -------------------------------------------------------

fn convert_case(kind: &'static str, file: &str) -> impl Fn(&Path) -> Case {
    move |dir: &Path| {
        let target = dir.join("model.pt");
        copy(&fixtures().join(file), &target);
        let out = dir.join("converted");
        let mut args = os(&[&"convert", &target, &"--out", &out]);
        args.extend(tiny_configs());
        Case {
            kind,
            target,
            args,
            outputs: vec![out],
            truncation_detected: true,
        }
    }
}

#[test]
fn torch_zip_checkpoint() {
    check(
        convert_case(".pt (torch zip)", "checkpoints/biencoder.best.pt"),
        12,
        1,
    );
}

#[test]
fn torch_legacy_checkpoint() {
    check(
        convert_case(".pt (torch legacy)", "checkpoints/biencoder.best.legacy.pt"),
        12,
        2,
    );
}

/// A converted model directory, made once per test process.
fn model_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("damage-model");
        let mut args = os(&[
            &"convert",
            &fixtures().join("checkpoints/biencoder.best.pt"),
            &"--force",
            &"--out",
            &out,
        ]);
        args.extend(tiny_configs());
        assert!(Command::new(BIN).args(args).status().unwrap().success());
        out
    })
}

fn forward_case(kind: &'static str, file: &'static str, binary: bool) -> impl Fn(&Path) -> Case {
    move |dir: &Path| {
        let model = dir.join("model");
        copy(model_dir(), &model);
        let out = dir.join("out.safetensors");
        Case {
            kind,
            target: model.join(file),
            args: os(&[
                &"forward",
                &"--checkpoint",
                &model,
                &"--inputs",
                &fixtures().join("batch/inputs.safetensors"),
                &"--out",
                &out,
            ]),
            outputs: vec![out],
            truncation_detected: binary,
        }
    }
}

#[test]
fn model_directory() {
    check(
        forward_case("model dir config.json", "config.json", false),
        10,
        3,
    );
    check(
        forward_case("model dir model.mpk", "model.mpk", true),
        12,
        4,
    );
    check(
        forward_case("model dir img_config.json", "img_config.json", false),
        6,
        5,
    );
    check(
        forward_case("model dir txt_config.json", "txt_config.json", false),
        6,
        6,
    );
}

#[test]
fn forward_inputs_and_tower_configs() {
    let inputs = |dir: &Path| {
        let target = dir.join("inputs.safetensors");
        copy(&fixtures().join("batch/inputs.safetensors"), &target);
        let out = dir.join("out.safetensors");
        Case {
            kind: "forward inputs (safetensors)",
            target: target.clone(),
            args: os(&[
                &"forward",
                &"--checkpoint",
                &model_dir(),
                &"--inputs",
                &target,
                &"--out",
                &out,
            ]),
            outputs: vec![out],
            truncation_detected: true,
        }
    };
    check(inputs, 12, 7);
    let tower = |dir: &Path| {
        let target = dir.join("img_model_config.json");
        copy(&fixtures().join("config/img_model_config.json"), &target);
        let out = dir.join("converted");
        let args = os(&[
            &"convert",
            &fixtures().join("checkpoints/biencoder.best.pt"),
            &"--out",
            &out,
            &"--img-config",
            &target,
            &"--txt-config",
            &fixtures().join("config/txt_model_config"),
        ]);
        Case {
            kind: "tower config (UniterConfig JSON)",
            target,
            args,
            outputs: vec![out],
            truncation_detected: false,
        }
    };
    check(tower, 8, 8);
}

// ---- UNITER dbs and the eval config ---------------------------------------------------------

fn index_case(kind: &'static str, db: &'static str, file: &'static str) -> impl Fn(&Path) -> Case {
    move |dir: &Path| {
        let img = dir.join("img_db");
        let txt = dir.join("txt_db");
        copy(&fixtures().join("data/img_db/flickr_tiny"), &img);
        copy(
            &fixtures().join("data/txt_db/itm_flickr_tiny_test_tiny-cased.db"),
            &txt,
        );
        let target = match db {
            "img" => img.join(file),
            _ => txt.join(file),
        };
        let out = dir.join("index");
        Case {
            kind,
            target,
            args: os(&[
                &"index",
                &"--checkpoint",
                &model_dir(),
                &"--img-db",
                &img,
                &"--txt-db",
                &txt,
                &"--out",
                &out,
            ]),
            outputs: vec![out],
            truncation_detected: file.ends_with(".mdb"),
        }
    }
}

#[test]
fn image_db() {
    check(
        index_case("img_db data.mdb", "img", "feat_th0.2_max100_min10/data.mdb"),
        16,
        9,
    );
    check(
        index_case("img_db nbb_*.json", "img", "nbb_th0.2_max100_min10.json"),
        6,
        10,
    );
}

#[test]
fn text_db() {
    check(index_case("txt_db data.mdb", "txt", "data.mdb"), 16, 11);
    for (i, f) in ["id2len.json", "txt2img.json", "img2txts.json", "meta.json"]
        .into_iter()
        .enumerate()
    {
        let kind = match f {
            "id2len.json" => "txt_db id2len.json",
            "txt2img.json" => "txt_db txt2img.json",
            "img2txts.json" => "txt_db img2txts.json",
            _ => "txt_db meta.json",
        };
        check(index_case(kind, "txt", f), 4, 12 + i as u64);
    }
}

#[test]
fn eval_config() {
    let case = |dir: &Path| {
        let target = dir.join("eval_config.json");
        copy(&fixtures().join("config/eval_config.json"), &target);
        Case {
            kind: "eval config (reference JSON)",
            target: target.clone(),
            args: os(&[
                &"eval",
                &"--config",
                &target,
                &"--data-root",
                &fixtures(),
                &"--checkpoint",
                &model_dir(),
            ]),
            outputs: vec![],
            truncation_detected: false,
        }
    };
    check(case, 8, 16);
}

// ---- index directories and tokenizers -------------------------------------------------------

/// An index with captions and an HNSW graph, made once per test process.
fn index_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("damage-index");
        let f = fixtures();
        let ok = Command::new(BIN)
            .args(os(&[
                &"index",
                &"--checkpoint",
                &model_dir(),
                &"--img-db",
                &f.join("data/img_db/flickr_tiny"),
                &"--txt-db",
                &f.join("data/txt_db/itm_flickr_tiny_test_tiny-cased.db"),
                &"--ann",
                &"--force",
                &"--out",
                &out,
            ]))
            .status()
            .unwrap()
            .success();
        assert!(ok);
        out
    })
}

fn search_case(kind: &'static str, file: &'static str, ann: bool) -> impl Fn(&Path) -> Case {
    move |dir: &Path| {
        let index = dir.join("index");
        copy(index_dir(), &index);
        let mut args = os(&[
            &"search",
            &"--checkpoint",
            &model_dir(),
            &"--index",
            &index,
            &"a dog runs on the grass",
        ]);
        if ann {
            args.push("--ann".into());
        }
        Case {
            kind,
            target: index.join(file),
            args,
            outputs: vec![],
            truncation_detected: !file.ends_with(".json"),
        }
    }
}

#[test]
fn index_directory() {
    check(search_case("index index.json", "index.json", false), 10, 17);
    for (i, f) in files(index_dir()).iter().enumerate() {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".safetensors") || name.ends_with(".usearch") {
            let kind: &'static str = Box::leak(format!("index {name}").into_boxed_str());
            let file: &'static str = Box::leak(name.clone().into_boxed_str());
            check(
                search_case(kind, file, name.ends_with(".usearch")),
                12,
                18 + i as u64,
            );
        }
    }
}

#[test]
fn tokenizer_vocab() {
    let case = |dir: &Path| {
        let target = dir.join("vocab.txt");
        copy(
            &fixtures().join("config/txt_model_config/vocab.txt"),
            &target,
        );
        Case {
            kind: "tokenizer vocab.txt",
            target: target.clone(),
            args: os(&[
                &"search",
                &"--checkpoint",
                &model_dir(),
                &"--index",
                &index_dir(),
                &"--vocab",
                &target,
                &"a dog runs on the grass",
            ]),
            outputs: vec![],
            truncation_detected: false,
        }
    };
    check(case, 8, 30);
}

// ---- training output directories being resumed ---------------------------------------------

/// Runs `lightningdot <command> --dashboard plain --config CFG --output-dir OUT extra…` and
/// stops after its first commit, so that OUT is a run to resume.
fn stopped_run(command: &str, cfg: &Path, out: &Path, stop: &[&str]) {
    let _ = std::fs::remove_dir_all(out);
    let res = Command::new(BIN)
        .args([command, "--dashboard", "plain", "--config"])
        .arg(cfg)
        .arg("--output-dir")
        .arg(out)
        .args(stop)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
}

/// Damages every file a resumed run reads, one at a time, and resumes.
fn check_resumed(command: &'static str, cfg: &Path, out: &Path, extra: &[&str], seed: u64) {
    // burn-train's per-metric `.log` files and `train.log` are only appended to, never read.
    let read = files(out)
        .into_iter()
        .filter(|f| f.extension().is_none_or(|e| e != "log"));
    for (i, file) in read.enumerate() {
        let rel = file.strip_prefix(out).unwrap().to_path_buf();
        let kind: &'static str =
            Box::leak(format!("{command} output {}", rel.display()).into_boxed_str());
        let case = |dir: &Path| {
            let run = dir.join("out");
            copy(out, &run);
            let mut args = os(&[
                &command,
                &"--dashboard",
                &"plain",
                &"--config",
                &cfg,
                &"--output-dir",
                &run,
            ]);
            args.extend(extra.iter().map(OsString::from));
            Case {
                kind,
                target: run.join(&rel),
                args,
                outputs: vec![],
                truncation_detected: false,
            }
        };
        check(case, 2, seed + i as u64);
    }
}

/// The synthetic task for a run's output directory, in `CARGO_TARGET_TMPDIR/name`.
fn synthetic_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn fine_tuning_output_resumed() {
    // A fine-tuning run stopped after epoch 1 of 2.
    let dir = synthetic_dir("damage-train");
    let spec = lightningdot::train::synthetic::SyntheticSpec {
        images: 8,
        train_captions_per_image: 2,
        eval_captions_per_image: 1,
        ..Default::default()
    };
    let cfg = lightningdot::train::synthetic::write_synthetic(
        &dir,
        &spec,
        &json!({"num_train_epochs": 2}),
    )
    .unwrap();
    let out = dir.join("out");
    stopped_run(
        "train",
        &cfg,
        &out,
        &["--no-test", "--stop-after-epoch", "1"],
    );
    check_resumed("train", &cfg, &out, &["--no-test"], 40);
}

#[test]
fn pretraining_output_resumed() {
    // A pre-training run stopped after its first checkpoint; the default task size, since the
    // token-bucket sampler needs a few full batches.
    let dir = synthetic_dir("damage-pretrain");
    let cfg = lightningdot::pretrain::synthetic::write_pretrain_synthetic(
        &dir,
        &lightningdot::train::synthetic::SyntheticSpec::default(),
        &json!({"num_train_steps": 4, "valid_steps": 2, "warmup_steps": 1}),
    )
    .unwrap();
    let out = dir.join("out");
    stopped_run("pretrain", &cfg, &out, &["--stop-after", "1"]);
    check_resumed("pretrain", &cfg, &out, &[], 80);
}

/// The common real-world case, spelled out: an img_db or txt_db whose copy stopped halfway.
#[test]
fn truncated_lmdb_names_the_db_and_both_sizes() {
    for (db, file) in [
        ("img", "feat_th0.2_max100_min10/data.mdb"),
        ("txt", "data.mdb"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let case = index_case("half-copied LMDB", db, file);
        let case = case(dir.path());
        let len = std::fs::metadata(&case.target).unwrap().len();
        apply(&case.target, Damage::TruncateAt(len / 2));
        let out = Command::new(BIN).args(&case.args).output().unwrap();
        common::assert_clean_error(&out, "truncated LMDB");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let line = stderr.lines().find(|l| l.starts_with("error:")).unwrap();
        assert!(line.contains(&format!("{} bytes", len / 2)), "{line}");
        assert!(line.contains(&format!("{len} bytes")), "{line}");
        assert!(!case.outputs[0].exists());
    }
}
