//! Text db against the fixture LMDB and json files (fixtures README "Data formats").

use std::path::{Path, PathBuf};

use lightningdot::data::TxtDb;

fn txt_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fixtures/data/txt_db/itm_flickr_tiny_test_tiny-cased.db")
}

/// Object keys of a flat JSON object in file order, read without a JSON parser so the check
/// does not share the reader's ordering logic.
fn keys_in_file_order(file: &str) -> Vec<String> {
    let text = std::fs::read_to_string(txt_dir().join(file)).unwrap();
    regex::Regex::new(r#""([^"]+)"\s*:"#)
        .unwrap()
        .captures_iter(&text)
        .map(|c| c[1].to_string())
        .collect()
}

#[test]
fn ids_follow_id2len_order() {
    let db = TxtDb::open(txt_dir()).unwrap();
    assert_eq!(db.len(), 100);
    assert_eq!(db.ids(), keys_in_file_order("id2len.json"));
    let imgs: Vec<String> = db.img2txts().iter().map(|(img, _)| img.clone()).collect();
    assert_eq!(imgs, keys_in_file_order("img2txts.json"));
    assert_eq!(imgs.len(), 20);
}

#[test]
fn records_agree_with_side_files() {
    let db = TxtDb::open(txt_dir()).unwrap();
    for id in db.ids() {
        let rec = db.get(id).unwrap();
        assert_eq!(&rec.id, id);
        assert_eq!(Some(rec.input_ids.len()), db.txt_len(id), "{id}");
        assert!((4..=14).contains(&rec.input_ids.len()), "{id}");
        assert_eq!(db.txt2img().get(id), Some(&rec.img_fname), "{id}");
        assert!(db.txts_of_img(&rec.img_fname).unwrap().contains(id));
        assert!(rec.raw.as_deref().is_some_and(|r| !r.is_empty()));
        assert!(rec.input_ids.iter().all(|&t| t < 128));
    }
    let first = db.get("5000").unwrap();
    assert_eq!(first.img_fname, "flickr30k_000000001002.npz");
    assert_eq!(first.raw.as_deref(), Some("The cat sits !"));
    assert_eq!(
        db.txts_of_img("flickr30k_000000001002.npz").unwrap(),
        ["5000", "5001", "5002", "5003", "5004"]
    );
}

#[test]
fn meta_has_special_ids() {
    let db = TxtDb::open(txt_dir()).unwrap();
    let meta = db.meta();
    assert_eq!(
        (meta.unk, meta.cls, meta.sep, meta.mask),
        (100, 101, 102, 103)
    );
    assert_eq!(meta.v_range, (104, 128));
    assert_eq!(meta.bert.as_deref(), Some("config/txt_model_config"));
    assert_eq!(meta.toker, None);
}
