//! Image feature db against the fixture LMDB (fixtures README "Data formats"): nbb values, the
//! compressed (npz) encoding, the fixed-num_bb and recount-from-conf paths.

use std::path::{Path, PathBuf};

use lightningdot::data::writer::{ImgDbEncoding, write_img_db};
use lightningdot::data::{IMG_FEAT_DIM, IMG_POS_DIM, ImgDb, ImgDbOptions, ImgDump};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures")
}

fn img_dir() -> PathBuf {
    fixtures().join("data/img_db/flickr_tiny")
}

const NBB_JSON: &str = "nbb_th0.2_max100_min10.json";
/// The README's sorted list of num_bb over the 20 images.
const README_NBBS: [usize; 20] = [
    10, 10, 10, 10, 11, 13, 13, 18, 18, 21, 22, 27, 27, 28, 28, 32, 32, 35, 36, 36,
];

fn nbb_table() -> Vec<(String, usize)> {
    let text = std::fs::read_to_string(img_dir().join(NBB_JSON)).unwrap();
    let map: std::collections::BTreeMap<String, usize> = serde_json::from_str(&text).unwrap();
    map.into_iter().collect()
}

fn fixture_dumps(db: &ImgDb) -> Vec<(String, ImgDump)> {
    db.names()
        .iter()
        .map(|n| (n.clone(), db.get_dump(n).unwrap()))
        .collect()
}

#[test]
fn nbb_values_match_json_and_readme() {
    let db = ImgDb::open(img_dir(), ImgDbOptions::default()).unwrap();
    let table = nbb_table();
    assert_eq!(db.names().len(), 20);
    let mut names = db.names().to_vec();
    names.sort();
    assert_eq!(
        names,
        table.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>()
    );

    let mut nbbs = Vec::new();
    for (name, nbb) in &table {
        assert_eq!(db.num_bb(name).unwrap(), *nbb, "{name}");
        let region = db.get(name).unwrap();
        assert_eq!(region.num_bb, *nbb, "{name}");
        assert_eq!(region.features.len(), nbb * IMG_FEAT_DIM);
        assert_eq!(region.boxes.len(), nbb * IMG_POS_DIM);
        for b in region.boxes.chunks_exact(IMG_POS_DIM) {
            assert_eq!(b[6], b[4] * b[5], "area column of {name}");
        }
        nbbs.push(*nbb);
    }
    nbbs.sort();
    assert_eq!(nbbs, README_NBBS);
}

#[test]
fn dump_holds_all_four_float16_arrays() {
    let db = ImgDb::open(img_dir(), ImgDbOptions::default()).unwrap();
    let name = "flickr30k_000000001076.npz";
    let dump = db.get_dump(name).unwrap();
    let nbb = db.num_bb(name).unwrap();
    for (field, cols) in [
        ("features", Some(IMG_FEAT_DIM)),
        ("norm_bb", Some(6)),
        ("soft_labels", Some(1601)),
        ("conf", None),
    ] {
        let a = dump.get(field).unwrap_or_else(|| panic!("no {field}"));
        assert_eq!(a.dtype, lightningdot::data::FloatDtype::F16, "{field}");
        assert_eq!(a.shape[0], nbb, "{field}");
        assert_eq!(a.shape.get(1).copied(), cols, "{field}");
    }
    let region = db.get(name).unwrap();
    assert_eq!(region.features, dump.get("features").unwrap().data);

    let labels = db.get_soft_labels(name).unwrap();
    assert_eq!(labels.shape, vec![nbb, 1601]);
    assert_eq!(labels.data, dump.get("soft_labels").unwrap().data);
}

#[test]
fn compressed_variant_reads_back_identical() {
    let fixture = ImgDb::open(img_dir(), ImgDbOptions::default()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(img_dir().join(NBB_JSON), tmp.path().join(NBB_JSON)).unwrap();
    let records = fixture_dumps(&fixture);
    write_img_db(
        &tmp.path().join("feat_th0.2_max100_min10_compressed"),
        &records,
        ImgDbEncoding::Compressed,
    )
    .unwrap();

    let options = ImgDbOptions {
        compressed: true,
        ..ImgDbOptions::default()
    };
    let compressed = ImgDb::open(tmp.path(), options).unwrap();
    assert_eq!(compressed.names(), fixture.names());
    for (name, dump) in &records {
        assert_eq!(&compressed.get_dump(name).unwrap(), dump, "{name}");
        assert_eq!(
            compressed.get(name).unwrap(),
            fixture.get(name).unwrap(),
            "{name}"
        );
        assert_eq!(
            compressed.get_soft_labels(name).unwrap(),
            fixture.get_soft_labels(name).unwrap()
        );
    }
}

#[test]
fn msgpack_writer_round_trips() {
    let fixture = ImgDb::open(img_dir(), ImgDbOptions::default()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(img_dir().join(NBB_JSON), tmp.path().join(NBB_JSON)).unwrap();
    let records = fixture_dumps(&fixture);
    write_img_db(
        &tmp.path().join("feat_th0.2_max100_min10"),
        &records,
        ImgDbEncoding::Msgpack,
    )
    .unwrap();
    let copy = ImgDb::open(tmp.path(), ImgDbOptions::default()).unwrap();
    for (name, dump) in &records {
        assert_eq!(&copy.get_dump(name).unwrap(), dump);
        assert_eq!(copy.get(name).unwrap(), fixture.get(name).unwrap());
    }
}

#[test]
fn fixed_num_bb_takes_a_prefix() {
    let fixture = ImgDb::open(img_dir(), ImgDbOptions::default()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    write_img_db(
        &tmp.path().join("feat_numbb12"),
        &fixture_dumps(&fixture),
        ImgDbEncoding::Msgpack,
    )
    .unwrap();
    let options = ImgDbOptions {
        conf_th: -1.0,
        num_bb: 12,
        ..ImgDbOptions::default()
    };
    let fixed = ImgDb::open(tmp.path(), options).unwrap();
    assert!(fixed.lmdb_dir().ends_with("feat_numbb12"));
    for name in fixture.names() {
        let full = fixture.get(name).unwrap();
        let n = full.num_bb.min(12);
        assert_eq!(fixed.num_bb(name).unwrap(), 12);
        let got = fixed.get(name).unwrap();
        assert_eq!(got.num_bb, n, "{name}");
        assert_eq!(got.features, full.features[..n * IMG_FEAT_DIM]);
        assert_eq!(got.boxes, full.boxes[..n * IMG_POS_DIM]);
    }
}

#[test]
fn nbb_recomputed_from_conf_without_json() {
    let fixture = ImgDb::open(img_dir(), ImgDbOptions::default()).unwrap();
    let records = fixture_dumps(&fixture);
    // Thresholded LMDB present, json absent.
    let tmp = tempfile::tempdir().unwrap();
    write_img_db(
        &tmp.path().join("feat_th0.2_max100_min10"),
        &records,
        ImgDbEncoding::Msgpack,
    )
    .unwrap();
    // Only the reference's fallback LMDB `all_compressed`.
    let tmp_all = tempfile::tempdir().unwrap();
    write_img_db(
        &tmp_all.path().join("all_compressed"),
        &records,
        ImgDbEncoding::Compressed,
    )
    .unwrap();
    let recount = ImgDb::open(tmp.path(), ImgDbOptions::default()).unwrap();
    let options = ImgDbOptions {
        compressed: true,
        ..ImgDbOptions::default()
    };
    let fallback = ImgDb::open(tmp_all.path(), options).unwrap();
    assert!(fallback.lmdb_dir().ends_with("all_compressed"));
    for (name, nbb) in nbb_table() {
        assert_eq!(recount.num_bb(&name).unwrap(), nbb, "{name}");
        assert_eq!(fallback.num_bb(&name).unwrap(), nbb, "{name}");
        assert_eq!(recount.get(&name).unwrap(), fixture.get(&name).unwrap());
        assert_eq!(fallback.get(&name).unwrap(), fixture.get(&name).unwrap());
    }
}

#[test]
fn stricter_options_clamp_the_recount() {
    let fixture = ImgDb::open(img_dir(), ImgDbOptions::default()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    write_img_db(
        &tmp.path().join("feat_th0.5_max20_min12"),
        &fixture_dumps(&fixture),
        ImgDbEncoding::Msgpack,
    )
    .unwrap();
    let options = ImgDbOptions {
        conf_th: 0.5,
        max_bb: 20,
        min_bb: 12,
        ..ImgDbOptions::default()
    };
    let db = ImgDb::open(tmp.path(), options).unwrap();
    for name in fixture.names() {
        let conf = fixture
            .get_dump(name)
            .unwrap()
            .get("conf")
            .unwrap()
            .data
            .clone();
        let above = conf.iter().filter(|&&c| c > 0.5).count();
        let expected = above.clamp(12, 20);
        assert_eq!(db.num_bb(name).unwrap(), expected, "{name}");
        assert_eq!(
            db.get(name).unwrap().num_bb,
            expected.min(conf.len()),
            "{name}"
        );
    }
}

#[test]
fn open_db_is_shared_across_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<ImgDb>();
    send_sync::<lightningdot::data::TxtDb>();

    let handles: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(|| {
                let db = ImgDb::open(img_dir(), ImgDbOptions::default()).unwrap();
                db.get("flickr30k_000000001002.npz").unwrap().num_bb
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), 36);
    }
}
