//! Tokenized captions (UNITER `TxtTokLmdb`, spec §4.2).
//!
//! ```text
//! <dir>/data.mdb        key = caption id (str(sentid)), value = lz4 frame of a msgpack dict
//! <dir>/id2len.json     {id: len(input_ids)}   key order = dataset order
//! <dir>/txt2img.json    {id: image name}
//! <dir>/img2txts.json   {image name: [ids]}   key order kept
//! <dir>/meta.json       {CLS, SEP, MASK, UNK, v_range, bert | toker | tokenizer, ...}
//! ```
//!
//! A record dict holds `input_ids` (WordPiece ids without [CLS]/[SEP]), `img_fname`, and for ITM
//! dbs the Karpathy sentence fields (`raw`, `tokens`, `sentid`, `imgid`, `image_id`,
//! `toked_caption`); only the first three are decoded.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::DataError;
use super::json::{Ordered, read_json};
use super::lmdb::{self, LmdbReader};

/// Special token ids and provenance from `meta.json`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TxtMeta {
    #[serde(rename = "CLS")]
    pub cls: u32,
    #[serde(rename = "SEP")]
    pub sep: u32,
    #[serde(rename = "MASK")]
    pub mask: u32,
    #[serde(rename = "UNK")]
    pub unk: u32,
    /// `[first id of a real word piece, vocab size)`: the range random MLM replacements draw from.
    pub v_range: (u32, u32),
    /// Tokenizer name of the old UNITER prepro (LightningDOT's pretrain.py asserts on it).
    #[serde(default)]
    pub bert: Option<String>,
    /// Tokenizer name of the newer prepro.
    #[serde(default)]
    pub toker: Option<String>,
    #[serde(default)]
    pub tokenizer: Option<String>,
}

/// One caption record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxtRecord {
    /// The LMDB key.
    pub id: String,
    /// WordPiece ids, without [CLS]/[SEP].
    pub input_ids: Vec<u32>,
    /// Feature file name of the paired image (key of the image db).
    pub img_fname: String,
    /// The original sentence, when the db kept it (ITM dbs do).
    pub raw: Option<String>,
}

#[derive(Deserialize)]
struct StoredRecord {
    input_ids: Vec<u32>,
    img_fname: String,
    #[serde(default)]
    raw: Option<String>,
}

/// A read-only text db. Cheap to share across threads (`Send + Sync`).
pub struct TxtDb {
    dir: PathBuf,
    lmdb: Arc<LmdbReader>,
    ids: Vec<String>,
    id2len: HashMap<String, usize>,
    txt2img: HashMap<String, String>,
    img2txts: Vec<(String, Vec<String>)>,
    img_index: HashMap<String, usize>,
    meta: TxtMeta,
}

impl std::fmt::Debug for TxtDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxtDb")
            .field("dir", &self.dir)
            .field("captions", &self.ids.len())
            .field("images", &self.img2txts.len())
            .finish()
    }
}

impl TxtDb {
    /// Opens the db directory `dir` and reads its four json files.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, DataError> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(DataError::NotFound {
                what: "text db directory",
                path: dir.to_path_buf(),
            });
        }
        let lmdb = lmdb::open(dir, "text db LMDB")?;
        let Ordered(id2len) = read_json::<Ordered<usize>>(&dir.join("id2len.json"))?;
        let Ordered(txt2img) = read_json::<Ordered<String>>(&dir.join("txt2img.json"))?;
        let Ordered(img2txts) = read_json::<Ordered<Vec<String>>>(&dir.join("img2txts.json"))?;
        let meta = read_json::<TxtMeta>(&dir.join("meta.json"))?;

        let ids = id2len.iter().map(|(id, _)| id.clone()).collect();
        let img_index = img2txts
            .iter()
            .enumerate()
            .map(|(i, (img, _))| (img.clone(), i))
            .collect();
        Ok(Self {
            dir: dir.to_path_buf(),
            lmdb,
            ids,
            id2len: id2len.into_iter().collect(),
            txt2img: txt2img.into_iter().collect(),
            img2txts,
            img_index,
            meta,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Caption ids in `id2len.json` order (the dataset order).
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// Number of captions listed in `id2len.json`.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// `len(input_ids)` of caption `id` (without [CLS]/[SEP]).
    pub fn txt_len(&self, id: &str) -> Option<usize> {
        self.id2len.get(id).copied()
    }

    /// Decodes caption `id`.
    pub fn get(&self, id: &str) -> Result<TxtRecord, DataError> {
        let db = self.lmdb.path();
        self.lmdb
            .with_value(id, |bytes| {
                let mut plain = Vec::new();
                lz4_flex::frame::FrameDecoder::new(bytes)
                    .read_to_end(&mut plain)
                    .map_err(|e| DataError::corrupt(db, id, format!("not an lz4 frame: {e}")))?;
                let stored: StoredRecord = rmp_serde::from_slice(&plain).map_err(|e| {
                    DataError::corrupt(db, id, format!("not a caption msgpack dict: {e}"))
                })?;
                Ok(TxtRecord {
                    id: id.to_string(),
                    input_ids: stored.input_ids,
                    img_fname: stored.img_fname,
                    raw: stored.raw,
                })
            })?
            .ok_or_else(|| DataError::MissingKey {
                what: "caption",
                key: id.to_string(),
                db: db.to_path_buf(),
            })
    }

    /// `txt2img.json`: caption id -> image name.
    pub fn txt2img(&self) -> &HashMap<String, String> {
        &self.txt2img
    }

    /// `img2txts.json` in file order: (image name, its caption ids).
    pub fn img2txts(&self) -> &[(String, Vec<String>)] {
        &self.img2txts
    }

    /// Ground-truth captions of image `img` (from `img2txts.json`).
    pub fn txts_of_img(&self, img: &str) -> Option<&[String]> {
        self.img_index
            .get(img)
            .map(|&i| self.img2txts[i].1.as_slice())
    }

    pub fn meta(&self) -> &TxtMeta {
        &self.meta
    }
}
