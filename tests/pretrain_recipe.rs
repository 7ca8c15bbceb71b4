//! The pre-training data recipe against the reference (fixtures `pretrain/recipe_examples.json`
//! and `pretrain/batch/*`, produced by `gen_pretrain_fixtures.py` with the reference code):
//! CPython `random` emulation, token buckets, the task mixture, and the four task batches
//! rebuilt from the LMDBs with the recorded seeds, compared exactly.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use common::fixtures;
use lightningdot::data::pretrain::{
    PretrainBatch, PretrainDataOptions, PretrainDataset, PretrainTask, PyRandom, TaskMixture,
    TaskSchedule, TokenBucketSampler, collate_pretrain, img_mask, random_word,
};
use lightningdot::data::writer::{encode_txt_record, write_lmdb};
use lightningdot::data::{DataError, ImgDb, ImgDbOptions, TxtDb, TxtRecord};
use lightningdot::tensor_io::TensorFile;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

const TXT_DB: &str = "data/txt_db/itm_flickr_tiny_test_tiny-cased.db";
const IMG_DB: &str = "data/img_db/flickr_tiny";

fn json(rel: &str) -> Value {
    serde_json::from_str(&text(rel)).unwrap()
}

fn text(rel: &str) -> String {
    std::fs::read_to_string(fixtures().join(rel)).unwrap()
}

/// Every number written after `"key": ` (a scalar, or each element of an array), in document
/// order, parsed with Rust's correctly rounded `f64` parser: serde_json without its
/// `float_roundtrip` feature can be one ulp off, and the draws must compare bit for bit.
fn exact_floats(json_text: &str, key: &str) -> Vec<f64> {
    let pattern = format!(r#""{}":\s*(\[[^\]]*\]|[-0-9.eE+]+)"#, regex::escape(key));
    regex::Regex::new(&pattern)
        .unwrap()
        .captures_iter(json_text)
        .flat_map(|c| {
            c[1].trim_matches(|ch| ch == '[' || ch == ']')
                .split(',')
                .map(|x| x.trim().parse::<f64>().unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn u64s(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

fn usizes(v: &Value) -> Vec<usize> {
    u64s(v).into_iter().map(|x| x as usize).collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn fixture_dbs() -> (Arc<TxtDb>, Arc<ImgDb>) {
    let f = fixtures();
    let txt = TxtDb::open(f.join(TXT_DB)).unwrap();
    let img = ImgDb::open(f.join(IMG_DB), ImgDbOptions::default()).unwrap();
    (Arc::new(txt), Arc::new(img))
}

fn fixture_dataset() -> PretrainDataset {
    let (txt, img) = fixture_dbs();
    PretrainDataset::new(txt, img, PretrainDataOptions::default()).unwrap()
}

// ---------------------------------------------------------------------------------------------
// (a) CPython random

#[test]
fn python_random_check_values() {
    let check = &json("pretrain/recipe_examples.json")["python_random_check"];
    let seed = check["seed"].as_u64().unwrap();

    let mut rng = PyRandom::seed(seed);
    let want = exact_floats(
        &text("pretrain/recipe_examples.json"),
        "random.random() x5 after random.seed(seed)",
    );
    assert_eq!(want.len(), 5);
    for want in want {
        assert_eq!(rng.random().to_bits(), want.to_bits());
    }

    let mut rng = PyRandom::seed(seed);
    let bits: Vec<u64> = (0..5).map(|_| rng.getrandbits(32).unwrap()).collect();
    assert_eq!(
        bits,
        u64s(&check["random.getrandbits(32) x5 after random.seed(seed)"])
    );

    let mut rng = PyRandom::seed(seed);
    let mut list: Vec<usize> = (0..10).collect();
    rng.shuffle(&mut list);
    assert_eq!(
        list,
        usizes(&check["random.shuffle(list(range(10))) after random.seed(seed)"])
    );

    let mut rng = PyRandom::seed(seed);
    let vocab: Vec<u64> = (104..128).collect();
    let picks: Vec<u64> = (0..5).map(|_| *rng.choice(&vocab).unwrap()).collect();
    assert_eq!(
        picks,
        u64s(&check["random.choice(list(range(104, 128))) x5 after random.seed(seed)"])
    );
}

// ---------------------------------------------------------------------------------------------
// (b) TokenBucketSampler

#[test]
fn token_bucket_sampler_matches_reference() {
    let ex = &json("pretrain/recipe_examples.json")["token_bucket_sampler"];
    let lens = usizes(&ex["lens"]);
    let seed = ex["seed"].as_u64().unwrap();
    let bucket_size = ex["bucket_size"].as_u64().unwrap() as usize;
    let batch_size = ex["batch_size (max tokens incl. padding)"]
        .as_u64()
        .unwrap() as usize;
    let size_multiple = ex["size_multiple"].as_u64().unwrap() as usize;

    // The lens are those of the fixture txt/img db pair (lens_rule: id2len + num_bb).
    assert_eq!(fixture_dataset().lens(), lens.as_slice());

    for droplast in [true, false] {
        let want = &ex[format!("droplast={}", if droplast { "True" } else { "False" })];
        let sampler = TokenBucketSampler::new(
            lens.clone(),
            bucket_size,
            batch_size,
            size_multiple,
            droplast,
        )
        .unwrap();

        let mut ids: Vec<usize> = (0..lens.len()).collect();
        PyRandom::seed(seed).shuffle(&mut ids);
        assert_eq!(ids, usizes(&want["ids_after_first_shuffle"]), "{droplast}");

        let buckets = sampler.buckets(&mut PyRandom::seed(seed));
        let want_buckets: Vec<Vec<usize>> = want["buckets_sorted"]
            .as_array()
            .unwrap()
            .iter()
            .map(usizes)
            .collect();
        assert_eq!(buckets, want_buckets, "droplast={droplast}");

        let batches = sampler.batches(&mut PyRandom::seed(seed));
        let want_batches: Vec<Vec<usize>> = want["final_batches"]
            .as_array()
            .unwrap()
            .iter()
            .map(usizes)
            .collect();
        assert_eq!(batches, want_batches, "droplast={droplast}");
    }
}

// ---------------------------------------------------------------------------------------------
// (c) MetaLoader task sequence

#[test]
fn meta_loader_task_sequence() {
    let ex = &json("pretrain/recipe_examples.json")["meta_loader"];
    let counts = ex["sampling_pool_counts"].as_object().unwrap();
    // config/pretrain-alldata-base.json order: datasets, then tasks within a dataset (a JSON
    // object read into serde_json's map loses that order, so it is spelled out and checked
    // against the counts).
    let mut ratios = Vec::new();
    for dataset in ["coco_cap", "vg_cap", "cc", "sbu"] {
        for task in ["itm", "mlm", "mrfr", "mrckl"] {
            let name = format!("{task}_{dataset}");
            let ratio = counts[&name].as_u64().unwrap() as usize;
            ratios.push((name, ratio));
        }
    }
    assert_eq!(ratios.len(), counts.len());
    let mixture = TaskMixture::new(&ratios).unwrap();
    assert_eq!(
        mixture.pool().len() as u64,
        ex["sampling_pool_len"].as_u64().unwrap()
    );

    let want = strings(&ex["task_per_micro_step"]);
    let accum = ex["accum_steps"].as_u64().unwrap() as usize;
    let seed = ex["seed"].as_u64().unwrap();
    let got = mixture
        .tasks_for_micro_steps(&mut PyRandom::seed(seed), accum, want.len())
        .unwrap();
    assert_eq!(got, want);

    // A schedule interrupted and restored (with the RNG state) continues the same sequence.
    let mut rng = PyRandom::seed(seed);
    let mut schedule = TaskSchedule::new(accum).unwrap();
    let mut resumed: Vec<String> = (0..13)
        .map(|_| schedule.next(&mixture, &mut rng).to_string())
        .collect();
    let saved = (
        serde_json::to_string(&schedule).unwrap(),
        serde_json::to_string(&rng.state()).unwrap(),
    );
    let mut schedule: TaskSchedule = serde_json::from_str(&saved.0).unwrap();
    let mut rng = PyRandom::from_state(&serde_json::from_str(&saved.1).unwrap()).unwrap();
    resumed.extend((13..want.len()).map(|_| schedule.next(&mixture, &mut rng).to_string()));
    assert_eq!(resumed, want);

    for name in &want {
        PretrainTask::from_pool_name(name).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// (d) the four task batches, rebuilt from the LMDBs

/// Replays the recorded draws on a fresh generator and returns it, so its state can be
/// compared with the one the dataset left behind. `uniforms` = the `random` draws of the file
/// in order, parsed exactly.
fn replay_draws(seed: u64, draws: Option<&Value>, uniforms: &[f64]) -> PyRandom {
    let mut rng = PyRandom::seed(seed);
    let mut uniforms = uniforms.iter();
    for (row, draws) in draws
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        for draw in draws.as_array().unwrap() {
            if draw.get("random").is_some() {
                let u = uniforms.next().expect("as many parsed draws as recorded");
                assert_eq!(rng.random().to_bits(), u.to_bits(), "row {row}: {draw}");
            } else {
                let n = draw["choice_len"].as_u64().unwrap();
                let first = draw["choice_first"].as_u64().unwrap();
                let value = draw["value"].as_u64().unwrap();
                assert_eq!(first + rng.randbelow(n), value, "row {row}: {draw}");
            }
        }
    }
    assert!(uniforms.next().is_none(), "more parsed draws than recorded");
    rng
}

fn dtype_and_shape(bytes: &[u8], name: &str) -> (Dtype, Vec<usize>) {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let t = st.tensor(name).unwrap();
    (t.dtype(), t.shape().to_vec())
}

fn bools(v: &[bool]) -> Vec<i64> {
    v.iter().map(|&b| i64::from(b)).collect()
}

/// Our value of a reference tensor: (shape, ints or floats, expected dtype).
enum Got {
    Int(Vec<usize>, Vec<i64>, Dtype),
    Float(Vec<usize>, Vec<f32>),
}

fn ours(batch: &PretrainBatch, name: &str) -> Option<Got> {
    let (b, lt, n) = (batch.batch_size(), batch.txt_len(), batch.max_regions());
    let int = |shape: Vec<usize>, v: Vec<i64>| Some(Got::Int(shape, v, Dtype::I64));
    let boolean = |shape: Vec<usize>, v: &Option<Vec<bool>>| {
        v.as_ref().map(|v| Got::Int(shape, bools(v), Dtype::BOOL))
    };
    match name {
        "txts.input_ids" => int(vec![b, lt], batch.txts.input_ids.clone()),
        "txts.attention_mask" => int(vec![b, lt], batch.txts.attention_mask.clone()),
        "txts.position_ids" => int(vec![1, lt], batch.txt_position_ids()),
        "imgs.input_ids" => int(vec![b, 1], batch.img_input_ids()),
        "imgs.position_ids" => int(vec![1, 1], batch.img_position_ids()),
        "imgs.attention_mask" => int(vec![b, 1 + n], batch.imgs.attention_mask.clone()),
        "imgs.gather_index" => int(vec![b, 1 + n], batch.gather_index()),
        "imgs.img_feat" => Some(Got::Float(vec![b, n, 2048], batch.imgs.img_feat.clone())),
        "imgs.img_pos_feat" => Some(Got::Float(vec![b, n, 7], batch.imgs.img_pos_feat.clone())),
        "imgs.img_masks" => boolean(vec![b, n], &batch.img_masks),
        "img_mask_tgt" => boolean(vec![b, 1 + n], &batch.img_mask_tgt),
        "txt_labels" => batch.txt_labels.clone().and_then(|v| int(vec![b, lt], v)),
        "targets" => batch.targets.clone().and_then(|v| int(vec![b], v)),
        "feat_targets" => batch
            .feat_targets
            .clone()
            .map(|v| Got::Float(vec![v.len() / 2048, 2048], v)),
        "label_targets" => batch
            .label_targets
            .clone()
            .map(|v| Got::Float(vec![v.len() / batch.label_dim.max(1), batch.label_dim], v)),
        _ => None,
    }
}

/// The optional tensors our batch holds, under their reference names.
fn produced(batch: &PretrainBatch) -> BTreeSet<&'static str> {
    let mut names = BTreeSet::new();
    let optional: [(&str, bool); 6] = [
        ("imgs.img_masks", batch.img_masks.is_some()),
        ("img_mask_tgt", batch.img_mask_tgt.is_some()),
        ("txt_labels", batch.txt_labels.is_some()),
        ("targets", batch.targets.is_some()),
        ("feat_targets", batch.feat_targets.is_some()),
        ("label_targets", batch.label_targets.is_some()),
    ];
    for (name, present) in optional {
        if present {
            names.insert(name);
        }
    }
    names
}

/// Rebuilds the `file` batch for `task` and compares every non-teacher tensor
/// (`n_tensors` of them) exactly.
fn check_task_batch(task: PretrainTask, file: &str, n_tensors: usize) {
    let f = fixtures();
    let pairs = json("pretrain/batch/pairs.json");
    let meta = json(&format!("pretrain/batch/{file}.json"));
    let indices = usizes(&pairs["dataset_indices"]);

    let dataset = fixture_dataset();
    let txt_lens = usizes(&pairs["txt_lens_without_cls_sep"]);
    let num_bbs = usizes(&pairs["num_bbs"]);
    for (k, &i) in indices.iter().enumerate() {
        assert_eq!(dataset.ids()[i], strings(&pairs["txt_ids"])[k]);
        assert_eq!(dataset.lens()[i], txt_lens[k] + num_bbs[k]);
    }

    let seed = meta["python_random_seed"].as_u64().unwrap();
    let mut rng = PyRandom::seed(seed);
    let batch = dataset.batch(task, &indices, &mut rng).unwrap();
    assert_eq!(batch.img_fnames, strings(&pairs["img_fnames"]));
    assert_eq!(batch.imgs.num_bbs, num_bbs);

    // Same draws, same number of draws: the replayed stream ends where ours did.
    let uniforms = exact_floats(&text(&format!("pretrain/batch/{file}.json")), "random");
    let replayed = replay_draws(seed, meta.get("draws"), &uniforms);
    assert_eq!(
        replayed.state(),
        rng.state(),
        "{task}: RNG position after the batch"
    );

    let path = f.join(format!("pretrain/batch/{file}.safetensors"));
    let bytes = std::fs::read(&path).unwrap();
    let want = TensorFile::open(&path).unwrap();
    let mut compared = BTreeSet::new();
    for name in want.names() {
        if name.starts_with("teacher.") {
            continue;
        }
        let (dtype, shape) = dtype_and_shape(&bytes, &name);
        match ours(&batch, &name) {
            Some(Got::Int(got_shape, got, got_dtype)) => {
                assert_eq!(dtype, got_dtype, "{task}: {name} dtype");
                assert_eq!(got_shape, shape, "{task}: {name} shape");
                assert_eq!(got, want.i64(&name).unwrap().values, "{task}: {name}");
            }
            Some(Got::Float(got_shape, got)) => {
                assert_eq!(dtype, Dtype::F32, "{task}: {name} dtype");
                assert_eq!(got_shape, shape, "{task}: {name} shape");
                let want = want.f32(&name).unwrap().values;
                assert_eq!(got.len(), want.len(), "{task}: {name} length");
                let first_diff = got
                    .iter()
                    .zip(&want)
                    .position(|(a, b)| a.to_bits() != b.to_bits());
                assert_eq!(first_diff, None, "{task}: {name} differs");
            }
            None => panic!("{task}: reference tensor {name} not produced"),
        }
        compared.insert(name);
    }
    assert_eq!(compared.len(), n_tensors, "{task}: compared {compared:?}");
    for name in produced(&batch) {
        assert!(
            compared.contains(name),
            "{task}: we produce {name}, the reference does not"
        );
    }

    // The convenience index lists agree with the tensors they index.
    let (lt, n1) = (batch.txt_len(), 1 + batch.max_regions());
    if let Some(labels) = &batch.txt_labels {
        let pos: Vec<i64> = (0..labels.len() as i64)
            .filter(|&p| labels[p as usize] != -1)
            .collect();
        assert_eq!(batch.masked_text_positions, pos);
        let targets: Vec<i64> = pos.iter().map(|&p| labels[p as usize]).collect();
        assert_eq!(batch.mlm_targets, targets);
        assert!(pos.iter().all(|&p| !(p as usize).is_multiple_of(lt)));
    } else {
        assert!(batch.masked_text_positions.is_empty() && batch.mlm_targets.is_empty());
    }
    if let Some(tgt) = &batch.img_mask_tgt {
        let pos: Vec<i64> = (0..tgt.len() as i64).filter(|&p| tgt[p as usize]).collect();
        assert_eq!(batch.masked_region_positions, pos);
        assert!(pos.iter().all(|&p| !(p as usize).is_multiple_of(n1)));
        let s = pos.len();
        if let Some(t) = &batch.feat_targets {
            assert_eq!(t.len(), s * 2048);
        }
        if let Some(t) = &batch.label_targets {
            assert_eq!(t.len(), s * batch.label_dim);
        }
    } else {
        assert!(batch.masked_region_positions.is_empty());
    }
}

#[test]
fn mlm_batch_matches_reference() {
    check_task_batch(PretrainTask::Mlm, "mlm", 10);
    // README: the mlm batch has 5 predictions.
    let batch = fixture_dataset()
        .batch(
            PretrainTask::Mlm,
            &usizes(&json("pretrain/batch/pairs.json")["dataset_indices"]),
            &mut PyRandom::seed(
                json("pretrain/batch/mlm.json")["python_random_seed"]
                    .as_u64()
                    .unwrap(),
            ),
        )
        .unwrap();
    assert_eq!(batch.mlm_targets.len(), 5);
}

#[test]
fn mrfr_batch_matches_reference() {
    check_task_batch(PretrainTask::Mrfr, "mrfr", 12);
}

#[test]
fn mrc_batch_matches_reference() {
    check_task_batch(PretrainTask::Mrc, "mrc", 12);
    // `mrckl` builds the same batch (task.startswith('mrc')).
    check_task_batch(PretrainTask::Mrckl, "mrc", 12);
}

#[test]
fn itm_batch_matches_reference() {
    check_task_batch(PretrainTask::Itm, "itm", 10);
}

// ---------------------------------------------------------------------------------------------
// (e) masking rates

/// |observed - p * n| within `k` binomial standard deviations.
fn within_sigma(count: usize, n: usize, p: f64, k: f64) -> bool {
    let mean = p * n as f64;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    ((count as f64) - mean).abs() <= k * sd
}

#[test]
fn mlm_masking_rates() {
    // Ids outside v_range so that every replacement is visible; 100-token captions make the
    // force rule negligible (0.85^100 ≈ 1e-7).
    let caption = vec![7u32; 100];
    let mut rng = PyRandom::seed(2024);
    let (mut tokens, mut selected, mut masked, mut replaced, mut kept) = (0, 0, 0, 0, 0);
    for _ in 0..3000 {
        let (ids, labels) = random_word(&caption, &mut rng, (104, 128), 103);
        for (&id, &label) in ids.iter().zip(&labels) {
            tokens += 1;
            if label == -1 {
                assert_eq!(id, 7);
                continue;
            }
            assert_eq!(label, 7);
            selected += 1;
            match id {
                103 => masked += 1,
                7 => kept += 1,
                104..=127 => replaced += 1,
                other => panic!("token {other} outside v_range"),
            }
        }
    }
    assert!(
        within_sigma(selected, tokens, 0.15, 5.0),
        "{selected}/{tokens}"
    );
    assert!(
        within_sigma(masked, selected, 0.8, 5.0),
        "{masked}/{selected}"
    );
    assert!(
        within_sigma(replaced, selected, 0.1, 5.0),
        "{replaced}/{selected}"
    );
    assert!(within_sigma(kept, selected, 0.1, 5.0), "{kept}/{selected}");

    // Short captions: never without a label; the forced token is always MASK.
    let mut rng = PyRandom::seed(7);
    for len in 1..12 {
        for _ in 0..200 {
            let (ids, labels) = random_word(&vec![7u32; len], &mut rng, (104, 128), 103);
            assert!(labels.iter().any(|&l| l != -1));
            assert_eq!(ids.len(), len);
        }
    }
}

#[test]
fn mrm_masking_rates() {
    let mut rng = PyRandom::seed(99);
    let (mut boxes, mut masked) = (0, 0);
    for _ in 0..3000 {
        let mask = img_mask(100, 0.15, &mut rng);
        boxes += mask.len();
        masked += mask.iter().filter(|&&m| m).count();
    }
    assert!(within_sigma(masked, boxes, 0.15, 5.0), "{masked}/{boxes}");

    // Few boxes: the force rule raises the rate but never leaves an image unmasked.
    for num_bb in [1, 2, 10] {
        for _ in 0..500 {
            let mask = img_mask(num_bb, 0.15, &mut rng);
            assert_eq!(mask.len(), num_bb);
            assert!(mask.iter().any(|&m| m));
        }
    }
    let mask = img_mask(10, 1.0, &mut rng);
    assert!(mask.iter().all(|&m| m));
}

// ---------------------------------------------------------------------------------------------
// (f) errors: one line, naming the file or key

fn message(err: DataError) -> String {
    let msg = err.to_string();
    assert!(!msg.contains('\n'), "multi-line message: {msg}");
    msg
}

const META: &str = r#"{"UNK": 100, "CLS": 101, "SEP": 102, "MASK": 103, "v_range": [104, 128]}"#;

/// A text db with `captions` (id, input ids, image) whose txt2img.json lists `txt2img`.
fn write_txt_db(
    dir: &Path,
    captions: &[(&str, Vec<u32>, &str)],
    txt2img: &[(&str, &str)],
    meta: &str,
) {
    let entries: Vec<(Vec<u8>, Vec<u8>)> = captions
        .iter()
        .map(|(id, ids, img)| {
            let record = TxtRecord {
                id: id.to_string(),
                input_ids: ids.clone(),
                img_fname: img.to_string(),
                raw: None,
            };
            (id.as_bytes().to_vec(), encode_txt_record(&record).unwrap())
        })
        .collect();
    write_lmdb(dir, &entries).unwrap();
    let id2len: serde_json::Map<String, Value> = captions
        .iter()
        .map(|(id, ids, _)| (id.to_string(), Value::from(ids.len())))
        .collect();
    let t2i: serde_json::Map<String, Value> = txt2img
        .iter()
        .map(|(t, i)| (t.to_string(), Value::from(*i)))
        .collect();
    std::fs::write(dir.join("id2len.json"), Value::Object(id2len).to_string()).unwrap();
    std::fs::write(dir.join("txt2img.json"), Value::Object(t2i).to_string()).unwrap();
    std::fs::write(dir.join("img2txts.json"), "{}").unwrap();
    std::fs::write(dir.join("meta.json"), meta).unwrap();
}

/// A dataset over a temporary text db and the fixture image db; the directory lives as long
/// as the returned guard.
fn temp_dataset(
    captions: &[(&str, Vec<u32>, &str)],
    txt2img: &[(&str, &str)],
    meta: &str,
    options: PretrainDataOptions,
) -> (tempfile::TempDir, Result<PretrainDataset, DataError>) {
    let tmp = tempfile::tempdir().unwrap();
    write_txt_db(tmp.path(), captions, txt2img, meta);
    let txt = Arc::new(TxtDb::open(tmp.path()).unwrap());
    let (_, img) = fixture_dbs();
    let dataset = PretrainDataset::new(txt, img, options);
    (tmp, dataset)
}

const KNOWN: &str = "flickr30k_000000001076.npz";
const UNKNOWN: &str = "flickr30k_000000424242.npz";

#[test]
fn mixture_errors() {
    let msg = message(TaskMixture::new::<&str>(&[]).unwrap_err());
    assert_eq!(
        msg,
        "invalid pre-training setting: empty task mixture: 0 task(s) with a total mix ratio of 0"
    );
    let msg = message(TaskMixture::new(&[("itm_cc", 0), ("mlm_cc", 0)]).unwrap_err());
    assert!(
        msg.contains("2 task(s) with a total mix ratio of 0"),
        "{msg}"
    );
    let msg = message(TaskMixture::new(&[("itm_cc", 1), ("itm_cc", 2)]).unwrap_err());
    assert!(msg.contains("'itm_cc' appears twice"), "{msg}");
    let msg = message(TaskSchedule::new(0).unwrap_err());
    assert!(msg.contains("gradient_accumulation_steps"), "{msg}");
    let msg = message(PretrainTask::from_pool_name("vqa_coco").unwrap_err());
    assert!(msg.contains("unknown pre-training task 'vqa'"), "{msg}");
}

#[test]
fn sampler_and_rng_errors() {
    let msg = message(TokenBucketSampler::new(vec![30, 2000], 8192, 10240, 8, true).unwrap_err());
    assert!(msg.contains("an item of length 2000"), "{msg}");
    let mut state = PyRandom::seed(1).state();
    state.key.truncate(10);
    let msg = message(PyRandom::from_state(&state).unwrap_err());
    assert!(msg.contains("10 words, expected 624"), "{msg}");
}

#[test]
fn unknown_image_in_a_pair() {
    let captions = [("1", vec![104, 105], KNOWN), ("2", vec![106, 107], UNKNOWN)];
    let (_tmp, dataset) = temp_dataset(
        &captions,
        &[("1", KNOWN), ("2", UNKNOWN)],
        META,
        PretrainDataOptions::default(),
    );
    let err = dataset.unwrap_err();
    let msg = message(err);
    assert!(
        msg.starts_with(&format!(
            "image '{UNKNOWN}' of caption '2' is not in image db "
        )),
        "{msg}"
    );
}

#[test]
fn caption_missing_from_txt2img() {
    let (_tmp, dataset) = temp_dataset(
        &[("1", vec![104], KNOWN)],
        &[],
        META,
        PretrainDataOptions::default(),
    );
    let err = dataset.unwrap_err();
    let msg = message(err);
    assert!(
        msg.starts_with("caption '1' not found in ") && msg.ends_with("txt2img.json"),
        "{msg}"
    );
}

#[test]
fn bad_meta_and_length_filter() {
    let captions = [("1", vec![104, 105, 106], KNOWN)];
    let pairs = [("1", KNOWN)];
    let bad_meta = r#"{"UNK": 100, "CLS": 101, "SEP": 102, "MASK": 103, "v_range": [128, 104]}"#;
    let (_tmp, dataset) = temp_dataset(&captions, &pairs, bad_meta, Default::default());
    let msg = message(dataset.unwrap_err());
    assert!(
        msg.contains("meta.json") && msg.contains("v_range [128, 104) is empty"),
        "{msg}"
    );

    let options = PretrainDataOptions {
        max_txt_len: Some(2),
        ..Default::default()
    };
    let (_tmp2, dataset) = temp_dataset(&captions, &pairs, META, options);
    let msg = message(dataset.unwrap_err());
    assert!(
        msg.contains("id2len.json") && msg.contains("at most 2 word pieces"),
        "{msg}"
    );

    let (_tmp3, dataset) = temp_dataset(&[], &[], META, Default::default());
    let msg = message(dataset.unwrap_err());
    assert!(msg.starts_with("empty split: text db "), "{msg}");
}

#[test]
fn unusable_records_and_bad_batches() {
    let captions = [("1", vec![], KNOWN), ("2", vec![104, 105], KNOWN)];
    let pairs = [("1", KNOWN), ("2", KNOWN)];
    let (_tmp, dataset) = temp_dataset(&captions, &pairs, META, Default::default());
    let dataset = dataset.unwrap();
    let mut rng = PyRandom::seed(0);

    let msg = message(dataset.item(PretrainTask::Mlm, 0, &mut rng).unwrap_err());
    assert!(
        msg.starts_with("mlm: caption '1' in ") && msg.ends_with("no word pieces to mask"),
        "{msg}"
    );
    // The other tasks can use an empty caption ([CLS] [SEP]).
    let item = dataset.item(PretrainTask::Itm, 0, &mut rng).unwrap();
    assert_eq!(item.input_ids, [101, 102]);

    let msg = message(dataset.item(PretrainTask::Mrfr, 5, &mut rng).unwrap_err());
    assert!(
        msg.contains("item 5 is outside the dataset of 2 items"),
        "{msg}"
    );

    let msg = message(collate_pretrain(PretrainTask::Mlm, &[]).unwrap_err());
    assert_eq!(msg, "cannot collate batch: no items for a mlm batch");
    let msg =
        message(collate_pretrain(PretrainTask::Mlm, std::slice::from_ref(&item)).unwrap_err());
    assert_eq!(msg, "cannot collate batch: mlm item 0 has no MLM labels");
    let msg = message(collate_pretrain(PretrainTask::Mrc, &[item]).unwrap_err());
    assert_eq!(msg, "cannot collate batch: mrc item 0 has no region mask");
}

#[test]
fn max_txt_len_filters_in_id2len_order() {
    let (txt, img) = fixture_dbs();
    let all = PretrainDataset::new(
        txt.clone(),
        img.clone(),
        PretrainDataOptions {
            max_txt_len: None,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(all.ids(), txt.ids());
    let short = PretrainDataset::new(
        txt.clone(),
        img,
        PretrainDataOptions {
            max_txt_len: Some(5),
            ..Default::default()
        },
    )
    .unwrap();
    let want: Vec<&String> = txt
        .ids()
        .iter()
        .filter(|id| txt.txt_len(id).unwrap() <= 5)
        .collect();
    assert!(!want.is_empty() && want.len() < txt.len());
    assert_eq!(short.ids().iter().collect::<Vec<_>>(), want);
}
