//! Conversion: converted directories reproduce the `.pt` outputs bit for bit, and full-size
//! models account for every key of the released layouts (fixtures/checkpoint-manifests).

mod common;

use common::*;
use lightningdot::conversion::{
    Checkpoint, Layout, ModelSource, RecordPrecision, biencoder_key_to_burn, load_biencoder,
    manifest_coverage, uniter_key_to_image_tower, write_model_dir,
};
use lightningdot::device::CpuBackend;
use lightningdot::forward::{HostBatch, forward_stages};
use lightningdot::model::{BiEncoder, BiEncoderConfig, EncoderConfig, ImageEncoder};
use lightningdot::tensor_io::TensorFile;

fn batch() -> HostBatch {
    HostBatch::from_file(&TensorFile::open(&fixtures().join("batch/inputs.safetensors")).unwrap())
        .unwrap()
}

fn roundtrip(checkpoint: &str, precision: RecordPrecision) {
    let device = Default::default();
    let source = tiny_source(checkpoint);
    let ckpt = Checkpoint::open(&source.checkpoint).unwrap();
    let cfg = source.resolve_config(&ckpt).unwrap();
    let (model, _) = load_biencoder::<CpuBackend>(&ckpt, &cfg, &device, source.options).unwrap();
    let direct = forward_stages(&model, &batch(), &device);

    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("converted");
    write_model_dir(
        model,
        &cfg,
        precision,
        Some((&source.checkpoint, "test")),
        &out,
        false,
    )
    .unwrap();
    // Nothing but the final directory is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert_eq!(leftovers.len(), 1);

    let from_dir = ModelSource {
        checkpoint: out.clone(),
        ..Default::default()
    };
    let (model2, cfg2, report) = from_dir.load::<CpuBackend>(&device).unwrap();
    assert!(report.is_none());
    assert_eq!(cfg2, cfg);
    let again = forward_stages(&model2, &batch(), &device);
    assert_eq!(direct.len(), again.len());
    for ((n1, a), (n2, b)) in direct.iter().zip(&again) {
        assert_eq!(n1, n2);
        assert_eq!(a.shape, b.shape, "{n1}");
        assert!(
            a.values
                .iter()
                .zip(&b.values)
                .all(|(x, y)| x.to_bits() == y.to_bits()),
            "{checkpoint}: {n1} differs after conversion"
        );
    }
    // Refuses to clobber without --force.
    let again = write_model_dir(model2, &cfg, precision, None, &out, false);
    assert!(again.unwrap_err().to_string().contains("already exists"));
}

#[test]
fn converted_dir_is_bit_identical_f32() {
    roundtrip("checkpoints/biencoder.best.pt", RecordPrecision::F32);
}

#[test]
fn converted_fp16_checkpoint_kept_half_is_bit_identical() {
    // fp16 weights are exactly representable in an f16 record.
    roundtrip("checkpoints/biencoder.best.fp16.pt", RecordPrecision::F16);
}

#[test]
fn layouts_are_detected() {
    let f = fixtures();
    let cases = [
        ("checkpoints/biencoder.best.pt", Layout::FineTuneWrapper),
        (
            "checkpoints/biencoder.best.legacy.pt",
            Layout::FineTuneWrapper,
        ),
        ("checkpoints/pretrain/model_step_1.pt", Layout::Pretraining),
        ("uniter_itm/checkpoint/model.pt", Layout::Uniter),
    ];
    for (file, layout) in cases {
        assert_eq!(
            Checkpoint::open(f.join(file)).unwrap().layout,
            layout,
            "{file}"
        );
    }
}

fn manifest(name: &str) -> Vec<(String, Vec<usize>)> {
    common::manifest_entries(&fixtures().join("checkpoint-manifests").join(name))
}

/// One test builds the full-size model once (≈0.9 GB f32) and checks both bi-encoder layouts.
#[test]
fn full_size_manifests_are_fully_covered() {
    let device = Default::default();
    let cfg = BiEncoderConfig {
        img: EncoderConfig::resolve(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/configs/img_base.json"
        ))
        .unwrap(),
        txt: EncoderConfig::bert_base_cased(),
        project_dim: 768,
    };
    let model = BiEncoder::<CpuBackend>::new(&cfg, &device);

    let finetuned = manifest("biencoder_finetuned.json");
    assert_eq!(finetuned.len(), 421);
    let n = manifest_coverage(&model, finetuned, biencoder_key_to_burn).unwrap();
    assert_eq!(n, 421);

    let pre = manifest("biencoder_pretraining.json");
    let (bi, heads): (Vec<_>, Vec<_>) = pre.into_iter().partition(|(k, _)| k.starts_with("bert."));
    let bi: Vec<_> = bi
        .into_iter()
        .map(|(k, s)| (k["bert.".len()..].to_string(), s))
        .collect();
    assert_eq!(
        manifest_coverage(&model, bi, biencoder_key_to_burn).unwrap(),
        421
    );
    // What the bi-encoder loader drops from LightningDot.pt: the pre-training heads only.
    assert!(heads.iter().all(|(k, _)| {
        ["cls.", "feat_regress.", "region_classifier.", "itm_output."]
            .iter()
            .any(|p| k.starts_with(p))
    }));
    assert_eq!(heads.len(), 20);
    drop(model);

    // uniter-base.pt initialises the image tower: every backbone key maps, heads are ignored.
    let tower = ImageEncoder::<CpuBackend>::new(&cfg.img, 0, &device);
    let uniter: Vec<_> = manifest("uniter_pretraining.json")
        .into_iter()
        .filter(|(k, _)| uniter_key_to_image_tower(k).is_some())
        .collect();
    assert_eq!(
        manifest_coverage(&tower, uniter, uniter_key_to_image_tower).unwrap(),
        216 - 6
    );
}

#[test]
fn shape_mismatch_names_key_and_both_shapes() {
    let device = Default::default();
    let mut source = tiny_source("checkpoints/biencoder.best.pt");
    source.img_config = Some("uniter-base".into());
    let err = source.load::<CpuBackend>(&device).unwrap_err().to_string();
    assert!(err.contains("shape mismatch for img_model."), "{err}");
    assert!(
        err.contains("checkpoint has [") && err.contains("model expects ["),
        "{err}"
    );
}

#[test]
fn missing_and_unexpected_keys_are_errors_unless_partial() {
    let device = Default::default();
    // A proj0 file into a model with a projection head: the head's keys are missing.
    let mut source = tiny_source("checkpoints/biencoder.proj0.best.pt");
    source.project_dim = Some(32);
    let err = source.load::<CpuBackend>(&device).unwrap_err().to_string();
    assert!(
        err.contains("missing from the checkpoint") && err.contains("projection"),
        "{err}"
    );
    source.options.allow_partial = true;
    let (_, _, report) = source.load::<CpuBackend>(&device).unwrap();
    assert_eq!(report.unwrap().missing.len(), 12);

    // A projection file into a model without a head: its keys are unexpected.
    let mut source = tiny_source("checkpoints/biencoder.best.pt");
    source.project_dim = Some(0);
    let err = source.load::<CpuBackend>(&device).unwrap_err().to_string();
    assert!(
        err.contains("have no parameter") && err.contains("encode_proj"),
        "{err}"
    );
}
