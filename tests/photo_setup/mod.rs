//! A consistent search-by-photo setup built from the fixtures, once per test process.
//!
//! The fixture detector makes 512-d region features (reduced width) but the image tower reads
//! 2048-d ones, so the setup uses a random-weight detector of the fixture's config with
//! ResNet widths that give 2048-d features (`res2_out_channels: 256`, narrow bottlenecks). It
//! is written as a reference-layout `pytorch_model.bin` + `config.yaml`, then the real
//! commands run on it: `extract` over `fixtures/butd/images`, `prepare captions` over a JSON
//! lines file naming those images, and `index` with the fixture tiny tower (trained weights).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use burn_store::ModuleSnapshot;
use lightningdot::conversion::{DetectorSource, Storage, TorchDict, TorchFile, TorchTensor};
use lightningdot::device::CpuBackend;
use lightningdot::model::detector::{Detector, DetectorConfig};
use lightningdot::retrieval::{
    PhotoPipeline, Pipeline, PipelineOptions, QueryEncoder, StoredIndex,
};

use crate::common::{fixtures, run_cli, tiny_source};

pub const CHECKPOINT: &str = "checkpoints/biencoder.best.pt";

/// The five fixture images (PNGs and one JPEG).
pub fn images_dir() -> PathBuf {
    fixtures().join("butd/images")
}

/// Captions of the fixture images, two each (JSON lines for `prepare captions`).
pub const CAPTIONS: [(&str, &str); 10] = [
    ("landscape_320x240.png", "A wide field under a blue sky ."),
    ("landscape_320x240.png", "Green grass and a tree ."),
    ("photo_500x333.jpg", "A man rides a horse ."),
    ("photo_500x333.jpg", "The dog plays in the park !"),
    ("portrait_240x400.png", "A woman stands by a door ."),
    ("portrait_240x400.png", "A tall building at night ."),
    ("tiny_97x151.png", "A small red bird ."),
    ("tiny_97x151.png", "The cat sits !"),
    ("wide_400x100.png", "A long train on a bridge ."),
    ("wide_400x100.png", "Boats on a river ."),
];

/// The fixture detector config with 2048-d region features and a lighter RoI head.
pub fn config_yaml() -> String {
    let text = std::fs::read_to_string(fixtures().join("butd/config.yaml")).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        let edited = match line.trim_start() {
            l if l.starts_with("res2_out_channels:") => "  res2_out_channels: 256".to_string(),
            l if l.starts_with("width_per_group:") => "  width_per_group: 4".to_string(),
            l if l.starts_with("min_detections:") => "min_detections: 5".to_string(),
            l if l.starts_with("post_nms_topk_test:") => "  post_nms_topk_test: 24".to_string(),
            _ => line.to_string(),
        };
        out.push_str(&edited);
        out.push('\n');
    }
    out
}

/// burn parameter path → reference state-dict key (the inverse of the loader's map).
fn torch_key(path: &str) -> String {
    let conv_bn = (path.starts_with("backbone.") || path.starts_with("roi_heads.res5."))
        && path.ends_with(".conv.weight");
    if conv_bn {
        format!("{}.weight", path.trim_end_matches(".conv.weight"))
    } else {
        path.to_string()
    }
}

/// Writes `detector` as the reference's `pytorch_model.bin` + `config.yaml` in `dir`.
pub fn write_detector_dir(detector: &Detector<CpuBackend>, yaml: &str, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let mut tensors = Vec::new();
    let mut storages = Vec::new();
    let mut push = |key: String, shape: Vec<usize>, values: Vec<f32>| {
        storages.push(Storage::F32(values));
        tensors.push(TorchTensor {
            key,
            storage: storages.len() - 1,
            shape,
        });
    };
    for snapshot in detector.model.collect(None, None, false) {
        let path = snapshot.full_path();
        let data = snapshot.to_data().unwrap().convert::<f32>();
        let mut shape = data.shape.to_vec();
        let mut values: Vec<f32> = data.into_vec().unwrap();
        // burn's Linear weights are [in, out]; PyTorch's [out, in].
        if path.starts_with("roi_heads.box_predictor.")
            && path.ends_with(".weight")
            && !path.contains("cls_embedding")
        {
            let (r, c) = (shape[0], shape[1]);
            values = (0..r * c).map(|i| values[(i % r) * c + i / r]).collect();
            shape = vec![c, r];
        }
        if let Some(bn) = path.strip_suffix(".running_mean") {
            push(format!("{bn}.num_batches_tracked"), vec![], vec![0.0]);
        }
        push(torch_key(&path), shape, values);
    }
    let file = TorchFile {
        root: TorchDict::state_dict(tensors, true),
        storages,
    };
    file.write(&dir.join("pytorch_model.bin")).unwrap();
    std::fs::write(dir.join("config.yaml"), yaml).unwrap();
}

/// Paths of the built setup.
#[derive(Debug, Clone)]
pub struct PhotoSetup {
    pub detector: PathBuf,
    pub img_db: PathBuf,
    pub txt_db: PathBuf,
    pub index: PathBuf,
}

fn ok(o: std::process::Output, what: &str) {
    assert!(
        o.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Builds the setup under `CARGO_TARGET_TMPDIR/photo-setup` once per process.
pub fn setup() -> PhotoSetup {
    static SETUP: OnceLock<PhotoSetup> = OnceLock::new();
    SETUP
        .get_or_init(|| {
            let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("photo-setup");
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(&root).unwrap();
            let s = PhotoSetup {
                detector: root.join("detector"),
                img_db: root.join("img_db"),
                txt_db: root.join("txt_db"),
                index: root.join("index"),
            };
            let yaml = config_yaml();
            let cfg = DetectorConfig::from_yaml(&yaml).unwrap();
            let random = Detector::<CpuBackend>::random(cfg, 7, &Default::default());
            write_detector_dir(&random, &yaml, &s.detector);
            ok(
                run_cli(&[
                    &"extract",
                    &"--detector",
                    &s.detector,
                    &"--images",
                    &images_dir(),
                    &"--out",
                    &s.img_db,
                ]),
                "extract",
            );
            let ann = root.join("captions.jsonl");
            let lines: Vec<String> = CAPTIONS
                .iter()
                .map(|(i, c)| serde_json::json!({"image": i, "caption": c}).to_string())
                .collect();
            std::fs::write(&ann, lines.join("\n")).unwrap();
            ok(
                run_cli(&[
                    &"prepare",
                    &"captions",
                    &"--annotations",
                    &ann,
                    &"--vocab",
                    &fixtures().join("config/txt_model_config"),
                    &"--out",
                    &s.txt_db,
                ]),
                "prepare captions",
            );
            let src = tiny_source(CHECKPOINT);
            ok(
                run_cli(&[
                    &"index",
                    &"--checkpoint",
                    &src.checkpoint,
                    &"--img-config",
                    &src.img_config.clone().unwrap(),
                    &"--txt-config",
                    &src.txt_config.clone().unwrap(),
                    &"--img-db",
                    &s.img_db,
                    &"--txt-db",
                    &s.txt_db,
                    &"--out",
                    &s.index,
                ]),
                "index",
            );
            s
        })
        .clone()
}

/// The detector written by [`setup`], loaded back.
pub fn detector() -> Detector<CpuBackend> {
    let source = DetectorSource {
        path: setup().detector,
        ..Default::default()
    };
    source.load::<CpuBackend>(&Default::default()).unwrap().0
}

/// A pipeline over the setup's index with the tiny tower.
pub fn pipeline() -> Pipeline<CpuBackend> {
    let device: burn::prelude::Device<CpuBackend> = Default::default();
    let (model, cfg, _) = tiny_source(CHECKPOINT).load::<CpuBackend>(&device).unwrap();
    let tok = lightningdot::data::Tokenizer::from_path(fixtures().join("config/txt_model_config"))
        .unwrap();
    let encoder = QueryEncoder::new(model, &cfg, tok, device);
    let index = StoredIndex::open(setup().index).unwrap();
    Pipeline::new(encoder, index, PipelineOptions::default(), device).unwrap()
}

/// The photo pipeline of the setup.
pub fn photo_pipeline() -> PhotoPipeline<CpuBackend> {
    PhotoPipeline::new(pipeline(), detector()).unwrap()
}
