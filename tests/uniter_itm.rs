//! The UNITER cross-encoder against the reference (uniter_itm/expected/outputs.safetensors,
//! written by the fixture generator `gen_uniter_itm_fixtures.py` from LightningDOT's vendored
//! `UniterForImageTextRetrieval` and the upstream ChenRocks/UNITER class): every stage of both
//! batches for both checkpoint prefixes, the rank loss, conversion to a directory, the full-size
//! key manifest, and clear errors for files and batches that do not fit.

mod common;

use common::*;
use lightningdot::conversion::{
    Checkpoint, LoadOptions, RecordPrecision, UniterSource, infer_uniter_config, load_uniter_itm,
    manifest_coverage, uniter_itm_key_to_burn, write_uniter_dir,
};
use lightningdot::device::CpuBackend;
use lightningdot::model::{EncoderConfig, RANK_MARGIN, UniterItm, rank_loss};
use lightningdot::rerank::ItmHostBatch;
use lightningdot::tensor_io::{HostTensor, TensorFile};

type B = CpuBackend;

/// fp32 port vs fp32 reference (observed fp32 vs fp64 ≤ 1e-6 in expected/results.json).
const ATOL: f32 = 1e-5;

fn itm(path: &str) -> std::path::PathBuf {
    fixtures().join("uniter_itm").join(path)
}

fn tiny_config() -> EncoderConfig {
    EncoderConfig::from_json_file(&itm("checkpoint/config.json")).unwrap()
}

fn load(file: &str) -> UniterItm<B> {
    let ckpt = Checkpoint::open(itm(file)).unwrap();
    let (model, report) = load_uniter_itm::<B>(
        &ckpt,
        &tiny_config(),
        &Default::default(),
        LoadOptions::default(),
    )
    .unwrap();
    assert!(report.load.missing.is_empty() && report.load.unexpected.is_empty());
    assert!(!report.rank_from_itm);
    assert_eq!(report.load.applied, 54);
    model
}

fn batch(name: &str) -> ItmHostBatch {
    ItmHostBatch::from_file(&TensorFile::open(&itm(&format!("batch/{name}.safetensors"))).unwrap())
        .unwrap()
}

/// Every stage of `batch` named `{batch}.{stage}`, plus the rank loss of the pairs batch.
fn stages(model: &UniterItm<B>, name: &str) -> Vec<(String, HostTensor<f32>)> {
    let b = batch(name);
    b.validate(&tiny_config()).unwrap();
    let s = model.forward_stages(&b.to_device::<B>(&Default::default()));
    let mut out: Vec<(String, HostTensor<f32>)> = s
        .named()
        .into_iter()
        .map(|(n, t)| {
            let (shape, values) = t.to_host();
            (format!("{name}.{n}"), HostTensor { shape, values })
        })
        .collect();
    if name == "pairs" {
        let loss = rank_loss(s.rank_scores, 3, RANK_MARGIN);
        out.push((
            "pairs.rank_loss".into(),
            HostTensor {
                shape: loss.dims().to_vec(),
                values: loss.into_data().into_vec().unwrap(),
            },
        ));
    }
    out
}

fn check_all_stages(file: &str) {
    let model = load(file);
    let mut got = stages(&model, "eval");
    got.extend(stages(&model, "pairs"));
    let want = TensorFile::open(&itm("expected/outputs.safetensors")).unwrap();
    let n = assert_stages_close(&got, &want, ATOL, file);
    assert_eq!(n, 15, "{file}: every expected stage compared");
}

#[test]
fn vendored_bert_prefix_matches_every_stage() {
    check_all_stages("checkpoint/model.pt");
}

#[test]
fn upstream_uniter_prefix_matches_every_stage() {
    check_all_stages("checkpoint/model_step_0.pt");
}

#[test]
fn rank_loss_mean_matches_reference() {
    let model = load("checkpoint/model.pt");
    let b = batch("pairs");
    let s = model.forward(&b.to_device::<B>(&Default::default()));
    let mean: f32 = rank_loss(s, 3, RANK_MARGIN).mean().into_scalar();
    // expected/results.json "rank_loss_mean (upstream train_itm.py: loss.mean())".
    assert!((mean - 0.193_595_26).abs() < 1e-6, "{mean}");
}

#[test]
fn host_collate_reproduces_reference_batches() {
    // The pairs batch has real gather_index compaction (caption lengths 16..6).
    let want = batch("pairs");
    let f = fixtures();
    let cfg = lightningdot::eval::EvalConfig::from_file(&f.join("config/eval_config.json"), None)
        .unwrap();
    let split = &cfg.splits("test").unwrap()[0];
    let (txt_db, img_db) = lightningdot::eval::open_split(split, &cfg).unwrap();
    let rows = [
        ("5041", "flickr30k_000000001059.npz"),
        ("5041", "flickr30k_000000001008.npz"),
        ("5033", "flickr30k_000000001059.npz"),
        ("5050", "flickr30k_000000001076.npz"),
        ("5050", "flickr30k_000000001008.npz"),
        ("5028", "flickr30k_000000001076.npz"),
    ];
    let meta = txt_db.meta().clone();
    let texts: Vec<Vec<u32>> = rows
        .iter()
        .map(|(t, _)| {
            let mut ids = vec![meta.cls];
            ids.extend(txt_db.get(t).unwrap().input_ids);
            ids.push(meta.sep);
            ids
        })
        .collect();
    let regions: Vec<_> = rows.iter().map(|(_, i)| img_db.get(i).unwrap()).collect();
    let pairs: Vec<(&[u32], _)> = texts
        .iter()
        .zip(&regions)
        .map(|(t, r)| (t.as_slice(), r))
        .collect();
    let got = ItmHostBatch::collate(&pairs).unwrap();
    assert_eq!(got.input_ids, want.input_ids);
    assert_eq!(got.attn_masks, want.attn_masks);
    assert_eq!(got.gather_index, want.gather_index);
    assert_eq!(got.img_pos_feat, want.img_pos_feat);
    assert_eq!(got.img_feat, want.img_feat);
}

#[test]
fn converted_directory_is_bit_identical() {
    let model = load("checkpoint/model_step_0.pt");
    let direct = stages(&model, "pairs");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("reranker");
    write_uniter_dir(
        model,
        &tiny_config(),
        RecordPrecision::F32,
        Some((&itm("checkpoint/model_step_0.pt"), "uniter.")),
        &out,
        false,
    )
    .unwrap();
    let source = UniterSource {
        checkpoint: out.clone(),
        ..Default::default()
    };
    let (again, cfg, report) = source.load::<B>(&Default::default()).unwrap();
    assert!(report.is_none());
    assert_eq!(cfg, tiny_config());
    for ((n, a), (_, b)) in direct.iter().zip(&stages(&again, "pairs")) {
        assert!(
            a.values
                .iter()
                .zip(&b.values)
                .all(|(x, y)| x.to_bits() == y.to_bits()),
            "{n} differs after conversion"
        );
    }
    let err = write_uniter_dir(again, &cfg, RecordPrecision::F32, None, &out, false);
    assert!(err.unwrap_err().to_string().contains("already exists"));
}

#[test]
fn config_comes_from_beside_the_file_or_the_shapes() {
    let ckpt = Checkpoint::open(itm("checkpoint/model.pt")).unwrap();
    let source = UniterSource {
        checkpoint: itm("checkpoint/model.pt"),
        ..Default::default()
    };
    let (cfg, from) = source.resolve_config(&ckpt).unwrap();
    assert_eq!(cfg, tiny_config());
    assert!(from.ends_with("config.json"), "{from}");
    // Without a config every size but the head count is read off the shapes; heads assume the
    // 64-wide heads of UNITER-base/large.
    let inferred = infer_uniter_config(&ckpt).unwrap();
    assert_eq!(
        EncoderConfig {
            num_attention_heads: 4,
            ..inferred.clone()
        },
        tiny_config()
    );
    assert_eq!(inferred.num_attention_heads, 1);
    // A directory holding model.pt + config.json (LightningDOT's KD teacher layout).
    let (_, cfg, report) = UniterSource {
        checkpoint: itm("checkpoint"),
        ..Default::default()
    }
    .load::<B>(&Default::default())
    .unwrap();
    assert_eq!(cfg, tiny_config());
    assert_eq!(report.unwrap().prefix, "bert.");
}

#[test]
fn full_size_manifest_is_fully_covered() {
    let text = std::fs::read_to_string(
        fixtures().join("checkpoint-manifests/uniter_itm_cross_encoder.json"),
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let entries: Vec<(String, Vec<usize>)> = v["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["key"].as_str().unwrap().to_string(),
                t["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap() as usize)
                    .collect(),
            )
        })
        .collect();
    assert_eq!(entries.len(), 214);
    let model = UniterItm::<B>::new(&EncoderConfig::uniter_base(), true, &Default::default());
    let n = manifest_coverage(&model, entries.clone(), |k| {
        uniter_itm_key_to_burn(k, "bert.")
    })
    .unwrap();
    assert_eq!(n, 214);
    // The same file as the upstream class saves it.
    let upstream: Vec<_> = entries
        .into_iter()
        .map(|(k, s)| (k.replacen("bert.", "uniter.", 1), s))
        .collect();
    let n = manifest_coverage(&model, upstream, |k| uniter_itm_key_to_burn(k, "uniter.")).unwrap();
    assert_eq!(n, 214);
}

fn load_err(ckpt: &Checkpoint, cfg: &EncoderConfig) -> String {
    load_uniter_itm::<B>(ckpt, cfg, &Default::default(), LoadOptions::default())
        .map(|_| ())
        .unwrap_err()
        .to_string()
}

#[test]
fn missing_encoder_key_is_an_error() {
    let mut ckpt = Checkpoint::open(itm("checkpoint/model_step_0.pt")).unwrap();
    ckpt.tensors
        .remove("uniter.encoder.layer.1.output.dense.weight");
    let err = load_err(&ckpt, &tiny_config());
    assert!(
        err.contains("1 model parameter(s) missing")
            && err.contains("encoder.layers.1.output.weight"),
        "{err}"
    );
}

#[test]
fn wrong_prefix_without_a_match_is_an_error() {
    // Keys under a prefix that is neither `uniter.` nor `bert.` (e.g. a DDP `module.` wrapper).
    let mut ckpt = Checkpoint::open(itm("checkpoint/model.pt")).unwrap();
    ckpt.tensors = std::mem::take(&mut ckpt.tensors)
        .into_iter()
        .map(|(k, t)| (format!("module.{k}"), t))
        .collect();
    let err = load_err(&ckpt, &tiny_config());
    assert!(
        err.contains("not a usable UNITER cross-encoder")
            && err.contains("no `uniter.embeddings.*` or `bert.embeddings.*` key"),
        "{err}"
    );
    // A bi-encoder checkpoint is not a cross-encoder.
    let bi = Checkpoint::open(fixtures().join("checkpoints/biencoder.best.pt")).unwrap();
    let err = load_err(&bi, &tiny_config());
    assert!(err.contains("it holds a fine-tuned bi-encoder"), "{err}");
    // Through the source, a file whose keys match no known layout says which prefixes it wants.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("empty");
    std::fs::create_dir(&dir).unwrap();
    let err = UniterSource {
        checkpoint: dir,
        ..Default::default()
    }
    .load::<B>(&Default::default())
    .map(|_| ())
    .unwrap_err()
    .to_string();
    assert!(err.contains("neither a converted cross-encoder"), "{err}");
}

#[test]
fn shape_mismatch_names_key_and_shapes() {
    let ckpt = Checkpoint::open(itm("checkpoint/model.pt")).unwrap();
    let err = load_err(&ckpt, &EncoderConfig::uniter_base());
    assert!(
        err.contains("shape mismatch for bert.") && err.contains("model expects [768"),
        "{err}"
    );
}

#[test]
fn rank_output_is_derived_from_itm_output_when_absent() {
    let mut ckpt = Checkpoint::open(itm("checkpoint/model.pt")).unwrap();
    ckpt.tensors.remove("rank_output.weight");
    ckpt.tensors.remove("rank_output.bias");
    let (model, report) = load_uniter_itm::<B>(
        &ckpt,
        &tiny_config(),
        &Default::default(),
        LoadOptions::default(),
    )
    .unwrap();
    assert!(report.rank_from_itm);
    let s = model.forward_stages(&batch("eval").to_device::<B>(&Default::default()));
    let itm: Vec<f32> = s.itm_scores.unwrap().into_data().into_vec().unwrap();
    let rank: Vec<f32> = s.rank_scores.into_data().into_vec().unwrap();
    for (r, pair) in rank.iter().zip(itm.chunks(2)) {
        assert!((r - pair[1]).abs() < 1e-6);
    }
    // Neither head: nothing to score with.
    ckpt.tensors.retain(|k, _| !k.starts_with("itm_output."));
    let err = load_err(&ckpt, &tiny_config());
    assert!(
        err.contains("missing") && err.contains("rank_output"),
        "{err}"
    );
}

#[test]
fn bad_batches_are_errors() {
    let cfg = tiny_config();
    let mut b = batch("eval");
    b.gather_index.values[5] = 999;
    let err = b.validate(&cfg).unwrap_err().to_string();
    assert!(
        err.contains("gather_index holds 999, outside [0, 31)"),
        "{err}"
    );

    let mut b = batch("eval");
    b.input_ids.values[0] = 128;
    let err = b.validate(&cfg).unwrap_err().to_string();
    assert!(err.contains("input_ids holds 128"), "{err}");

    let mut b = batch("eval");
    b.img_pos_feat.shape = vec![4, 18, 6];
    let err = b.validate(&cfg).unwrap_err().to_string();
    assert!(err.contains("img_pos_feat has shape [4, 18, 6]"), "{err}");

    // The bi-encoder batch is not a cross-encoder batch.
    let err = ItmHostBatch::from_file(
        &TensorFile::open(&fixtures().join("batch/inputs.safetensors")).unwrap(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("input_ids"), "{err}");
}

/// Parameters of a UNITER retrieval model with both heads, from its sizes.
fn expected_params(c: &EncoderConfig) -> usize {
    let (h, f, v, p) = (
        c.hidden_size,
        c.intermediate_size,
        c.vocab_size,
        c.max_position_embeddings,
    );
    let layer = 4 * h * h + 2 * h * f + 9 * h + f;
    let text = v * h + p * h + c.type_vocab_size * h + 2 * h;
    let image = 2048 * h + h + 2 * h + 7 * h + h + 2 * h + 2 * 2048 + 2 * h;
    text + image + c.num_hidden_layers * layer + (h * h + h) + (2 * h + 2) + (h + 1)
}

#[test]
fn base_and_large_sizes() {
    use burn::module::Module;
    let base = EncoderConfig::uniter_base();
    // checkpoint-manifests/uniter_itm_cross_encoder.json: num_parameters_unique.
    assert_eq!(expected_params(&base), 109_901_059);
    let model = UniterItm::<B>::new(&base, true, &Default::default());
    assert_eq!(model.num_params(), 109_901_059);
    drop(model);
    let large = EncoderConfig::resolve(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/configs/uniter-large.json"
    ))
    .unwrap();
    assert_eq!(large, EncoderConfig::uniter_large());
    let model = UniterItm::<B>::new(&large, true, &Default::default());
    assert_eq!(model.num_params(), expected_params(&large));
    // BERT-large sized (≈ 335M) plus the region embeddings.
    assert!((330_000_000..340_000_000).contains(&model.num_params()));
}
