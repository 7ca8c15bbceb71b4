//! `prepare captions` against the fixture txt_db (`../shared/fixtures/data/txt_db`, written by
//! the reference's `uniter_model/prepro.py --task itm` from `data/annotations`): every record,
//! the three json maps byte for byte, and meta's token ids.

mod common;

use std::path::Path;

use heed::types::Bytes;
use heed::{CommitOrAbort, Database, EnvFlags, EnvOpenOptions};
use std::io::Read;

/// Every `(key, decoded msgpack record)` of a txt_db LMDB.
fn records(dir: &Path) -> Vec<(String, rmpv::Value)> {
    let mut options = EnvOpenOptions::new().read_txn_without_tls();
    // SAFETY: read-only, no lock file (the fixture directory is read-only).
    unsafe { options.flags(EnvFlags::READ_ONLY | EnvFlags::NO_LOCK) };
    let env = unsafe { options.open(dir) }.unwrap();
    let rtxn = env.read_txn().unwrap();
    let db: Database<Bytes, Bytes> = env
        .open_databases_and_commit(rtxn, |opener, rtxn| {
            opener
                .open_database::<Bytes, Bytes>(rtxn, None)
                .map(CommitOrAbort::<_, ()>::Commit)
        })
        .unwrap()
        .unwrap_commit()
        .unwrap();
    let rtxn = env.read_txn().unwrap();
    db.iter(&rtxn)
        .unwrap()
        .map(|e| {
            let (k, v) = e.unwrap();
            let mut bytes = Vec::new();
            lz4_flex::frame::FrameDecoder::new(v)
                .read_to_end(&mut bytes)
                .unwrap();
            let value = rmpv::decode::read_value(&mut bytes.as_slice()).unwrap();
            (String::from_utf8_lossy(k).into_owned(), sorted(value))
        })
        .collect()
}

/// Map keys sorted (Python keeps insertion order, the comparison is about content).
fn sorted(v: rmpv::Value) -> rmpv::Value {
    match v {
        rmpv::Value::Map(mut m) => {
            m.sort_by_key(|(k, _)| k.to_string());
            rmpv::Value::Map(m.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        other => other,
    }
}

#[test]
fn prepare_captions_reproduces_the_fixture_txt_db() {
    let f = common::fixtures();
    let want = f.join("data/txt_db/itm_flickr_tiny_test_tiny-cased.db");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("itm_flickr_tiny_test.db");
    let prepare = || {
        common::run_cli(&[
            &"prepare",
            &"captions",
            &"--annotations",
            &f.join("data/annotations/flickr_tiny_test.json"),
            &"--vocab",
            &f.join("config/txt_model_config"),
            &"--out",
            &out,
        ])
    };
    let o = prepare();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (got, expected) = (records(&out), records(&want));
    assert_eq!(got.len(), 100);
    assert_eq!(got, expected);
    for name in ["id2len.json", "txt2img.json", "img2txts.json"] {
        assert_eq!(
            std::fs::read_to_string(out.join(name)).unwrap(),
            std::fs::read_to_string(want.join(name)).unwrap(),
            "{name}"
        );
    }
    let meta = |d: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(d.join("meta.json")).unwrap()).unwrap()
    };
    let (m, w) = (meta(&out), meta(&want));
    for k in ["UNK", "CLS", "SEP", "MASK", "v_range", "task"] {
        assert_eq!(m[k], w[k], "meta {k}");
    }
    // The readers take it as the fixture.
    let db = lightningdot::data::TxtDb::open(&out).unwrap();
    assert_eq!(db.len(), 100);
    // An existing output is refused, a bad file is one error line.
    common::assert_clean_error(&prepare(), "already exists");
}

#[test]
fn prepare_captions_reads_json_lines_with_extract_names() {
    let f = common::fixtures();
    let dir = tempfile::tempdir().unwrap();
    let ann = dir.path().join("captions.jsonl");
    std::fs::write(
        &ann,
        "{\"image\": \"photos/cat.jpg\", \"caption\": \"A cat sits .\"}\n\n{\"image\": \"photos/dog.png\", \"caption\": \"The dog plays !\", \"id\": 7}\n",
    )
    .unwrap();
    let out = dir.path().join("txt_db");
    let o = common::run_cli(&[
        &"prepare",
        &"captions",
        &"--annotations",
        &ann,
        &"--vocab",
        &f.join("config/txt_model_config"),
        &"--out",
        &out,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        std::fs::read_to_string(out.join("txt2img.json")).unwrap(),
        "{\"0\": \"cat.npz\", \"7\": \"dog.npz\"}"
    );
    let db = lightningdot::data::TxtDb::open(&out).unwrap();
    assert_eq!(db.get("7").unwrap().img_fname, "dog.npz");
}

#[test]
fn prepare_features_converts_npz_files_like_convert_imgdir() {
    use lightningdot::data::img_db::{ImgDb, ImgDbOptions, ImgDump};
    let butd = common::fixtures().join("butd/uniter");
    let dir = tempfile::tempdir().unwrap();
    let npz = dir.path().join("npz");
    std::fs::create_dir(&npz).unwrap();
    let names = ["landscape_320x240", "wide_400x100"];
    for n in names {
        std::fs::copy(butd.join(format!("{n}.npz")), npz.join(format!("{n}.npz"))).unwrap();
    }
    std::fs::write(npz.join("broken.npz"), b"PK\x03\x04 not a zip").unwrap();
    let out = dir.path().join("img_db");
    let args = |extra: &[&str]| {
        let mut v: Vec<&dyn AsRef<std::ffi::OsStr>> =
            vec![&"prepare", &"features", &"--npz", &npz, &"--out", &out];
        for e in extra {
            v.push(e);
        }
        common::run_cli(&v)
    };
    let o = args(&["--min-bb", "12"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let options = ImgDbOptions {
        min_bb: 12,
        ..Default::default()
    };
    let db = ImgDb::open(&out, options).unwrap();
    assert_eq!(db.names().len(), 2);
    for n in names {
        let want =
            ImgDump::from_npz(&std::fs::read(butd.join(format!("{n}.npz"))).unwrap()).unwrap();
        let got = db.get_dump(&format!("{n}.npz")).unwrap();
        let conf = &want.get("conf").unwrap().data;
        // Every fixture conf is above 0.2, so the count is clamped by the record size.
        let nbb = conf.iter().filter(|&&c| c > 0.2).count().clamp(12, 100);
        assert_eq!(db.num_bb(&format!("{n}.npz")).unwrap(), nbb);
        for (field, array) in &want.fields {
            let g = got.get(field).unwrap();
            let rows = array.shape[0].min(nbb);
            let row = array.data.len() / array.shape[0];
            assert_eq!(g.shape[0], rows, "{n} {field}");
            assert_eq!(g.data, array.data[..rows * row].to_vec(), "{n} {field}");
        }
    }
    let skipped = std::fs::read_to_string(out.join("skipped.json")).unwrap();
    assert!(skipped.contains("broken.npz"), "{skipped}");
}
