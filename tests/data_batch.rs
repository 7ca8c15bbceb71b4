//! Dataset order and collate parity with `batch/inputs.safetensors` (fixtures README "Tensors").

use std::path::{Path, PathBuf};

use lightningdot::data::dataset::image_batch;
use lightningdot::data::{
    ImgDb, ImgDbOptions, ItmEvalDataset, RegionFeatures, TxtDb, collate_images, collate_texts,
};
use safetensors::{Dtype, SafeTensors};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures")
}

fn open_dbs() -> (TxtDb, ImgDb) {
    let data = fixtures().join("data");
    let txt = TxtDb::open(data.join("txt_db/itm_flickr_tiny_test_tiny-cased.db")).unwrap();
    let img = ImgDb::open(data.join("img_db/flickr_tiny"), ImgDbOptions::default()).unwrap();
    (txt, img)
}

fn i64s(st: &SafeTensors, name: &str) -> (Vec<usize>, Vec<i64>) {
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), Dtype::I64, "{name}");
    let v = t
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (t.shape().to_vec(), v)
}

fn f32s(st: &SafeTensors, name: &str) -> (Vec<usize>, Vec<f32>) {
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), Dtype::F32, "{name}");
    let v = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (t.shape().to_vec(), v)
}

fn str_list(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn collate_reproduces_fixture_batch() {
    let batch_json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("batch/batch.json")).unwrap(),
    )
    .unwrap();
    let txt_ids = str_list(&batch_json["txt_ids"]);
    let img_fnames = str_list(&batch_json["img_fnames"]);
    let bytes = std::fs::read(fixtures().join("batch/inputs.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();

    let (txt_db, img_db) = open_dbs();
    let dataset = ItmEvalDataset::new(&txt_db, &img_db).unwrap();
    // The batch is dataset items at `dataset_indices`.
    for (k, idx) in batch_json["dataset_indices"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let item = &dataset.items()[idx.as_u64().unwrap() as usize];
        assert_eq!(item.txt_id, txt_ids[k]);
        assert_eq!(item.img_fname, img_fnames[k]);
    }

    let texts: Vec<Vec<u32>> = txt_ids
        .iter()
        .map(|id| {
            let it = dataset.items().iter().find(|it| &it.txt_id == id).unwrap();
            it.input_ids.clone()
        })
        .collect();
    let txt = collate_texts(&texts);
    let (shape, ids) = i64s(&st, "txt.input_ids");
    assert_eq!(shape, [txt.batch, txt.len]);
    assert_eq!(txt.input_ids, ids);
    let (shape, mask) = i64s(&st, "txt.attention_mask");
    assert_eq!(shape, [txt.batch, txt.len]);
    assert_eq!(txt.attention_mask, mask);
    // Implicit tensors: position ids are one arange row.
    let (shape, pos) = i64s(&st, "txt.position_ids");
    assert_eq!(shape, [1, txt.len]);
    assert_eq!(pos, (0..txt.len as i64).collect::<Vec<_>>());

    let regions: Vec<RegionFeatures> = img_fnames.iter().map(|n| img_db.get(n).unwrap()).collect();
    let refs: Vec<&RegionFeatures> = regions.iter().collect();
    let img = collate_images(&refs).unwrap();
    let expected_nbbs: Vec<usize> = batch_json["num_bbs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(img.num_bbs, expected_nbbs);
    let (b, n) = (img.batch, img.max_regions);
    assert_eq!((b, n), (6, 36));
    let (shape, feat) = f32s(&st, "img.img_feat");
    assert_eq!(shape, [b, n, 2048]);
    assert!(img.img_feat == feat, "img.img_feat differs");
    let (shape, pos) = f32s(&st, "img.img_pos_feat");
    assert_eq!(shape, [b, n, 7]);
    assert!(img.img_pos_feat == pos, "img.img_pos_feat differs");
    let (shape, mask) = i64s(&st, "img.attention_mask");
    assert_eq!(shape, [b, 1 + n]);
    assert_eq!(img.attention_mask, mask);
    // Implicit tensors: [CLS]=101 per row, position [[0]], identity gather.
    assert_eq!(i64s(&st, "img.input_ids").1, vec![101; b]);
    assert_eq!(i64s(&st, "img.position_ids"), (vec![1, 1], vec![0]));
    let (shape, gather) = i64s(&st, "img.gather_index");
    assert_eq!(shape, [b, 1 + n]);
    for row in gather.chunks_exact(1 + n) {
        assert_eq!(row, (0..=n as i64).collect::<Vec<_>>());
    }

    // The convenience loader gives the same batch.
    assert_eq!(image_batch(&img_db, &img_fnames).unwrap(), img);
}

#[test]
fn eval_dataset_order_and_unique_images() {
    let (txt_db, img_db) = open_dbs();
    let dataset = ItmEvalDataset::new(&txt_db, &img_db).unwrap();
    assert_eq!(dataset.len(), 100);
    let ids: Vec<&str> = dataset
        .items()
        .iter()
        .map(|it| it.txt_id.as_str())
        .collect();
    assert_eq!(ids, txt_db.ids());
    for item in dataset.items() {
        let rec = txt_db.get(&item.txt_id).unwrap();
        assert_eq!(item.input_ids[0], 101);
        assert_eq!(
            item.input_ids[1..item.input_ids.len() - 1],
            rec.input_ids[..]
        );
        assert_eq!(*item.input_ids.last().unwrap(), 102);
        assert_eq!(item.img_fname, rec.img_fname);
    }
    // First-occurrence order over captions; here the same as img2txts.json.
    let mut expected: Vec<String> = Vec::new();
    for item in dataset.items() {
        if !expected.contains(&item.img_fname) {
            expected.push(item.img_fname.clone());
        }
    }
    assert_eq!(dataset.unique_images(), expected);
    assert_eq!(dataset.unique_images().len(), 20);
    let img2txts: Vec<&String> = txt_db.img2txts().iter().map(|(img, _)| img).collect();
    assert_eq!(dataset.unique_images().iter().collect::<Vec<_>>(), img2txts);

    let batch = dataset.text_batch(0..80).unwrap();
    assert_eq!(batch.batch, 80);
    assert_eq!(
        batch.len,
        2 + txt_db.ids()[..80]
            .iter()
            .map(|id| txt_db.txt_len(id).unwrap())
            .max()
            .unwrap()
    );
    let msg = dataset.text_batch(90..120).unwrap_err().to_string();
    assert!(
        msg.contains("90..120") && msg.contains("100 items"),
        "{msg}"
    );
}

#[test]
fn collate_edge_cases() {
    let empty = collate_texts::<Vec<u32>>(&[]);
    assert_eq!((empty.batch, empty.len), (0, 0));
    assert!(empty.input_ids.is_empty());
    let ragged = collate_texts(&[vec![101, 5, 102], vec![101, 102]]);
    assert_eq!(ragged.input_ids, [101, 5, 102, 101, 102, 0]);
    assert_eq!(ragged.attention_mask, [1, 1, 1, 1, 1, 0]);

    let none = collate_images(&[]).unwrap();
    assert_eq!((none.batch, none.max_regions), (0, 0));
    let bad = RegionFeatures {
        features: vec![0.0; 2048],
        boxes: vec![0.0; 7],
        num_bb: 2,
    };
    let msg = collate_images(&[&bad]).unwrap_err().to_string();
    assert!(msg.contains("num_bb 2"), "{msg}");
}
