//! Bad input gives an `Err` whose one-line message names the file or key, never a panic.

use std::path::{Path, PathBuf};

use lightningdot::data::writer::{ImgDbEncoding, encode_txt_record, write_img_db, write_lmdb};
use lightningdot::data::{DataError, ImgDb, ImgDbOptions, ItmEvalDataset, TxtDb, TxtRecord};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures")
}

fn fixture_img_db() -> ImgDb {
    ImgDb::open(
        fixtures().join("data/img_db/flickr_tiny"),
        ImgDbOptions::default(),
    )
    .unwrap()
}

const META: &str = r#"{"UNK": 100, "CLS": 101, "SEP": 102, "MASK": 103, "v_range": [104, 128]}"#;

/// A text db in `dir` from raw LMDB entries and the id2len / txt2img / img2txts json texts.
fn write_txt_db(
    dir: &Path,
    entries: &[(&str, Vec<u8>)],
    id2len: &str,
    txt2img: &str,
    img2txts: &str,
) {
    let entries: Vec<(&[u8], &[u8])> = entries
        .iter()
        .map(|(k, v)| (k.as_bytes(), v.as_slice()))
        .collect();
    write_lmdb(dir, &entries).unwrap();
    std::fs::write(dir.join("id2len.json"), id2len).unwrap();
    std::fs::write(dir.join("txt2img.json"), txt2img).unwrap();
    std::fs::write(dir.join("img2txts.json"), img2txts).unwrap();
    std::fs::write(dir.join("meta.json"), META).unwrap();
}

fn caption(id: &str, img: &str) -> Vec<u8> {
    encode_txt_record(&TxtRecord {
        id: id.into(),
        input_ids: vec![104, 108],
        img_fname: img.into(),
        raw: Some("a dog".into()),
    })
    .unwrap()
}

fn message(err: DataError) -> String {
    let msg = err.to_string();
    assert!(!msg.contains('\n'), "multi-line message: {msg}");
    msg
}

#[test]
fn missing_directories() {
    let msg = message(ImgDb::open("/no/such/img_db", ImgDbOptions::default()).unwrap_err());
    assert_eq!(msg, "image db directory not found: /no/such/img_db");
    let msg = message(TxtDb::open("/no/such/txt.db").unwrap_err());
    assert_eq!(msg, "text db directory not found: /no/such/txt.db");

    // The directory exists but not the LMDB these options select.
    let options = ImgDbOptions {
        compressed: true,
        ..ImgDbOptions::default()
    };
    let msg =
        message(ImgDb::open(fixtures().join("data/img_db/flickr_tiny"), options).unwrap_err());
    assert!(msg.starts_with("image feature LMDB not found: "), "{msg}");
    assert!(
        msg.ends_with("flickr_tiny/feat_th0.2_max100_min10_compressed"),
        "{msg}"
    );
    let options = ImgDbOptions {
        conf_th: -1.0,
        ..ImgDbOptions::default()
    };
    let msg =
        message(ImgDb::open(fixtures().join("data/img_db/flickr_tiny"), options).unwrap_err());
    assert!(msg.ends_with("flickr_tiny/feat_numbb36"), "{msg}");

    // Neither nbb json nor any LMDB: the error names the db the options select.
    let tmp = tempfile::tempdir().unwrap();
    let msg = message(ImgDb::open(tmp.path(), ImgDbOptions::default()).unwrap_err());
    assert!(msg.starts_with("image feature LMDB not found: "), "{msg}");
    assert!(msg.ends_with("/feat_th0.2_max100_min10"), "{msg}");

    // A directory that is not an LMDB.
    let msg = message(TxtDb::open(tmp.path()).unwrap_err());
    assert!(msg.starts_with("text db LMDB not found: "), "{msg}");
}

#[test]
fn unknown_image_name() {
    let db = fixture_img_db();
    let msg = message(db.get("flickr30k_999999999999.npz").unwrap_err());
    assert!(
        msg.starts_with("image 'flickr30k_999999999999.npz' not found in "),
        "{msg}"
    );
    assert!(msg.ends_with("feat_th0.2_max100_min10"), "{msg}");
    assert!(db.num_bb("nope.npz").is_err());
    assert!(db.get_soft_labels("nope.npz").is_err());
    assert!(db.get_dump("nope.npz").is_err());
    assert!(!db.contains("nope.npz").unwrap());
}

#[test]
fn corrupt_and_truncated_image_records() {
    let fixture = fixture_img_db();
    let good_name = "flickr30k_000000001076.npz";
    let dump = fixture.get_dump(good_name).unwrap();
    let full =
        lightningdot::data::writer::encode_img_record(&dump, ImgDbEncoding::Msgpack).unwrap();
    let npz =
        lightningdot::data::writer::encode_img_record(&dump, ImgDbEncoding::Compressed).unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let entries: Vec<(&str, Vec<u8>)> = vec![
        (
            "garbage.npz",
            b"\xc1\xff\x00 definitely not msgpack".to_vec(),
        ),
        ("truncated.npz", full[..full.len() / 2].to_vec()),
        ("empty.npz", Vec::new()),
        ("not_a_map.npz", vec![0x93, 1, 2, 3]),
    ];
    let nbb = r#"{"garbage.npz": 10, "truncated.npz": 11, "empty.npz": 10, "not_a_map.npz": 10}"#;
    std::fs::write(tmp.path().join("nbb_th0.2_max100_min10.json"), nbb).unwrap();
    let raw: Vec<(&[u8], &[u8])> = entries
        .iter()
        .map(|(k, v)| (k.as_bytes(), v.as_slice()))
        .collect();
    write_lmdb(&tmp.path().join("feat_th0.2_max100_min10"), &raw).unwrap();
    let db = ImgDb::open(tmp.path(), ImgDbOptions::default()).unwrap();
    assert_eq!(
        db.names().len(),
        4,
        "names from LMDB keys when __keys__ is absent"
    );
    for (name, _) in &entries {
        let msg = message(db.get(name).unwrap_err());
        assert!(
            msg.starts_with(&format!("corrupt record '{name}' in ")),
            "{msg}"
        );
        assert!(db.get_dump(name).is_err());
    }

    // Compressed variant: garbage zip, truncated zip, a zip without the features member.
    let tmp = tempfile::tempdir().unwrap();
    let mut no_features = dump.clone();
    no_features.fields.retain(|(n, _)| n != "features");
    let no_features =
        lightningdot::data::writer::encode_img_record(&no_features, ImgDbEncoding::Compressed)
            .unwrap();
    let entries: Vec<(&str, Vec<u8>)> = vec![
        ("garbage.npz", b"PK\x03\x04 nonsense".to_vec()),
        ("truncated.npz", npz[..npz.len() - 40].to_vec()),
        ("no_features.npz", no_features),
    ];
    let nbb = r#"{"garbage.npz": 10, "truncated.npz": 11, "no_features.npz": 11}"#;
    std::fs::write(tmp.path().join("nbb_th0.2_max100_min10.json"), nbb).unwrap();
    let raw: Vec<(&[u8], &[u8])> = entries
        .iter()
        .map(|(k, v)| (k.as_bytes(), v.as_slice()))
        .collect();
    write_lmdb(&tmp.path().join("feat_th0.2_max100_min10_compressed"), &raw).unwrap();
    let options = ImgDbOptions {
        compressed: true,
        ..ImgDbOptions::default()
    };
    let db = ImgDb::open(tmp.path(), options).unwrap();
    for (name, _) in &entries {
        let msg = message(db.get(name).unwrap_err());
        assert!(
            msg.starts_with(&format!("corrupt record '{name}' in ")),
            "{msg}"
        );
    }
    let msg = message(db.get("no_features.npz").unwrap_err());
    assert!(msg.ends_with("record has no 'features' array"), "{msg}");
}

#[test]
fn wrong_shapes_and_bad_keys_list() {
    let fixture = fixture_img_db();
    let mut dump = fixture.get_dump("flickr30k_000000001076.npz").unwrap();
    for (name, a) in dump.fields.iter_mut() {
        if name == "features" {
            // Same bytes, claimed 1024 wide.
            a.shape = vec![a.shape[0] * 2, 1024];
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    write_img_db(
        &tmp.path().join("feat_numbb36"),
        &[("x.npz".into(), dump)],
        ImgDbEncoding::Msgpack,
    )
    .unwrap();
    let options = ImgDbOptions {
        conf_th: -1.0,
        ..ImgDbOptions::default()
    };
    let db = ImgDb::open(tmp.path(), options).unwrap();
    let msg = message(db.get("x.npz").unwrap_err());
    assert!(
        msg.contains("'features' has shape [22, 1024], expected [N, 2048]"),
        "{msg}"
    );

    let tmp = tempfile::tempdir().unwrap();
    let raw: Vec<(&[u8], &[u8])> = vec![(b"__keys__", b"[1, 2")];
    write_lmdb(&tmp.path().join("feat_numbb36"), &raw).unwrap();
    let msg = message(ImgDb::open(tmp.path(), options).unwrap_err());
    assert!(msg.starts_with("corrupt record '__keys__' in "), "{msg}");
}

#[test]
fn corrupt_and_truncated_caption_records() {
    let tmp = tempfile::tempdir().unwrap();
    let good = caption("1", "flickr30k_000000001076.npz");
    let not_msgpack = {
        let mut enc = lz4_frame(b"\xc1 not msgpack");
        enc.shrink_to_fit();
        enc
    };
    let entries = vec![
        ("1", good.clone()),
        ("2", good[..good.len() - 5].to_vec()),
        ("3", b"garbage".to_vec()),
        ("4", not_msgpack),
    ];
    write_txt_db(
        tmp.path(),
        &entries,
        r#"{"1": 2, "2": 2, "3": 2, "4": 2, "5": 2}"#,
        "{}",
        "{}",
    );
    let db = TxtDb::open(tmp.path()).unwrap();
    assert_eq!(db.get("1").unwrap().input_ids, [104, 108]);
    for id in ["2", "3", "4"] {
        let msg = message(db.get(id).unwrap_err());
        assert!(
            msg.starts_with(&format!("corrupt record '{id}' in ")),
            "{msg}"
        );
    }
    let msg = message(db.get("5").unwrap_err());
    assert!(msg.starts_with("caption '5' not found in "), "{msg}");
    // The dataset surfaces the first bad record instead of panicking.
    let msg = message(ItmEvalDataset::new(&db, &fixture_img_db()).unwrap_err());
    assert!(msg.starts_with("corrupt record '2'"), "{msg}");
}

fn lz4_frame(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = lz4_flex::frame::FrameEncoder::new(Vec::new());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

#[test]
fn caption_whose_image_is_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let entries = vec![
        ("1", caption("1", "flickr30k_000000001076.npz")),
        ("2", caption("2", "flickr30k_000000424242.npz")),
    ];
    write_txt_db(tmp.path(), &entries, r#"{"1": 2, "2": 2}"#, "{}", "{}");
    let db = TxtDb::open(tmp.path()).unwrap();
    let msg = message(ItmEvalDataset::new(&db, &fixture_img_db()).unwrap_err());
    assert!(
        msg.starts_with("image 'flickr30k_000000424242.npz' of caption '2' is not in image db "),
        "{msg}"
    );
}

#[test]
fn empty_split() {
    let tmp = tempfile::tempdir().unwrap();
    write_txt_db(tmp.path(), &[], "{}", "{}", "{}");
    let db = TxtDb::open(tmp.path()).unwrap();
    assert!(db.is_empty());
    let msg = message(ItmEvalDataset::new(&db, &fixture_img_db()).unwrap_err());
    assert!(msg.starts_with("empty split: text db "), "{msg}");
    assert!(msg.contains("id2len.json is empty"), "{msg}");
}

#[test]
fn bad_side_files() {
    let tmp = tempfile::tempdir().unwrap();
    write_txt_db(tmp.path(), &[], "{\"1\": 2,", "{}", "{}");
    let msg = message(TxtDb::open(tmp.path()).unwrap_err());
    assert!(
        msg.starts_with("invalid JSON in ") && msg.contains("id2len.json"),
        "{msg}"
    );

    write_txt_db(tmp.path(), &[], "{}", "{}", "{}");
    std::fs::write(tmp.path().join("meta.json"), r#"{"UNK": 100, "SEP": 102}"#).unwrap();
    let msg = message(TxtDb::open(tmp.path()).unwrap_err());
    assert!(msg.contains("meta.json") && msg.contains("CLS"), "{msg}");

    std::fs::remove_file(tmp.path().join("txt2img.json")).unwrap();
    let msg = message(TxtDb::open(tmp.path()).unwrap_err());
    assert!(
        msg.starts_with("JSON file not found: ") && msg.ends_with("txt2img.json"),
        "{msg}"
    );

    // nbb json that does not parse.
    let img = tempfile::tempdir().unwrap();
    std::fs::write(img.path().join("nbb_th0.2_max100_min10.json"), "[").unwrap();
    let msg = message(ImgDb::open(img.path(), ImgDbOptions::default()).unwrap_err());
    assert!(msg.contains("nbb_th0.2_max100_min10.json"), "{msg}");
}
