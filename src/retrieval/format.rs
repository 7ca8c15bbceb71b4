//! The index directory: vectors in safetensors (memory-mapped when read), ids and captions in
//! JSON, written atomically (a sibling temp directory renamed into place when complete).
//!
//! ```text
//! INDEX_DIR/index.json            IndexMeta: format, version, dim, dtype, model, sources, ids,
//!                                 captions of each image (when a txt_db was indexed), ANN settings
//! INDEX_DIR/vectors.safetensors   "image" [n_images, dim] and, with captions, "text" [n_texts, dim];
//!                                 F32 or F16, row i is the vector of ids[i]
//! INDEX_DIR/images.usearch        optional HNSW graph over the image rows (usearch, inner
//!                                 product, key = row), built by `index --ann`
//! ```
//!
//! Scores are plain dot products of the stored vectors with the query vector (spec §2.5):
//! vectors are not normalised, as in the reference's faiss `IndexFlatIP`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use half::f16;
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};

use super::RetrievalError;
use crate::data::ImgDbOptions;

/// `format` field of index.json.
pub const FORMAT: &str = "lightningdot-index";
/// Current layout version.
pub const VERSION: u32 = 1;
pub const META_FILE: &str = "index.json";
pub const VECTORS_FILE: &str = "vectors.safetensors";
pub const ANN_FILE: &str = "images.usearch";
/// Tensor names in [`VECTORS_FILE`].
pub const IMAGE_TENSOR: &str = "image";
pub const TEXT_TENSOR: &str = "text";

/// Element type of the stored vectors (search always computes in f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum VectorDtype {
    #[default]
    F32,
    F16,
}

impl VectorDtype {
    fn safetensors(self) -> Dtype {
        match self {
            Self::F32 => Dtype::F32,
            Self::F16 => Dtype::F16,
        }
    }

    fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 => 2,
        }
    }
}

impl std::str::FromStr for VectorDtype {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(Self::F32),
            "f16" | "float16" | "half" => Ok(Self::F16),
            _ => Err(format!("unknown dtype {s:?}: expected f32 or f16")),
        }
    }
}

/// The model the vectors came from (queries must be encoded by the same one).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ModelInfo {
    /// `--checkpoint` as given when indexing.
    pub checkpoint: String,
    pub project_dim: usize,
    pub text_layers: usize,
    pub image_layers: usize,
}

/// The indexed images.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ImageSection {
    /// Image db names (e.g. `flickr30k_000000036013.npz`), one per row of the `image` tensor.
    pub ids: Vec<String>,
    /// The img_db directory they were read from.
    pub img_db: String,
    /// How its boxes were selected; a re-ranker must read the same regions. Absent in indexes
    /// written before it was recorded (the defaults 0.2 / 100 / 10 / 36 apply then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection: Option<ImgDbOptions>,
    /// Ground-truth caption ids of each image (parallel to `ids`), when a txt_db was indexed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub captions: Option<Vec<Vec<String>>>,
}

/// The indexed captions.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct TextSection {
    /// Caption ids (txt_db keys), one per row of the `text` tensor, in the txt_db's order.
    pub ids: Vec<String>,
    /// The caption text (`raw` of the record), when the db kept it.
    pub raw: Vec<Option<String>>,
    /// Each caption's image name.
    pub image: Vec<String>,
    /// The txt_db directory.
    pub txt_db: String,
}

/// Settings of the optional HNSW graph.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct AnnInfo {
    /// Graph degree (usearch `connectivity`, HNSW `M`).
    pub connectivity: usize,
    /// Candidate list size while building (`efConstruction`).
    pub expansion_add: usize,
    /// Default candidate list size while searching (`efSearch`).
    pub expansion_search: usize,
    /// CRC-32 of the graph file, written with it and checked before usearch reads it: its C++
    /// reader trusts the neighbour lists, so a damaged file would crash the process.
    /// Absent in indexes written before it existed (not checked then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc32: Option<u32>,
}

impl Default for AnnInfo {
    fn default() -> Self {
        Self {
            connectivity: 16,
            expansion_add: 128,
            expansion_search: 128,
            crc32: None,
        }
    }
}

/// `INDEX_DIR/index.json`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct IndexMeta {
    pub format: String,
    pub version: u32,
    /// Vector size.
    pub dim: usize,
    pub dtype: VectorDtype,
    pub model: ModelInfo,
    pub images: ImageSection,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub texts: Option<TextSection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ann: Option<AnnInfo>,
    /// `lightningdot x.y.z` that wrote it.
    #[serde(default)]
    pub written_by: String,
}

/// CRC-32 of a whole file, read in 1 MiB blocks.
pub(crate) fn file_crc32(path: &Path) -> Result<u32, RetrievalError> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| RetrievalError::io(path, e))?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| RetrievalError::io(path, e))?;
        if n == 0 {
            return Ok(hasher.finalize());
        }
        hasher.update(&buf[..n]);
    }
}

/// Writes an index directory atomically. `images` is row-major `[images.ids.len(), dim]`,
/// `texts` likewise for `meta.texts`; `extra` may add files (the ANN graph) to the temp
/// directory before it is renamed to `out`. An existing `out` is replaced only with `overwrite`.
pub fn write_index(
    out: &Path,
    meta: &IndexMeta,
    images: &[f32],
    texts: Option<&[f32]>,
    overwrite: bool,
    extra: impl FnOnce(&Path) -> Result<(), RetrievalError>,
) -> Result<(), RetrievalError> {
    let err = |reason: String| RetrievalError::format(out, reason);
    let dim = meta.dim;
    if dim == 0 || images.len() != meta.images.ids.len() * dim {
        return Err(err(format!(
            "{} image values for {} ids of size {dim}",
            images.len(),
            meta.images.ids.len()
        )));
    }
    match (texts, &meta.texts) {
        (Some(t), Some(s)) if t.len() == s.ids.len() * dim => {}
        (None, None) => {}
        _ => return Err(err("text vectors and text ids disagree".into())),
    }
    crate::fsio::write_dir_atomically(out, overwrite, |tmp| {
        write_vectors(&tmp.join(VECTORS_FILE), meta, images, texts)?;
        extra(tmp)?;
        let mut meta = meta.clone();
        if let Some(ann) = meta.ann.as_mut() {
            ann.crc32 = Some(file_crc32(&tmp.join(ANN_FILE))?);
        }
        let text = serde_json::to_string(&meta).map_err(|e| err(e.to_string()))?;
        let meta_path = tmp.join(META_FILE);
        std::fs::write(&meta_path, text + "\n").map_err(|e| RetrievalError::io(&meta_path, e))
    })
    .map_err(|e| e.unwrap_or_else(|fs| err(fs.reason())))
}

fn write_vectors(
    path: &Path,
    meta: &IndexMeta,
    images: &[f32],
    texts: Option<&[f32]>,
) -> Result<(), RetrievalError> {
    let encode = |v: &[f32]| -> Vec<u8> {
        match meta.dtype {
            VectorDtype::F32 => bytemuck::cast_slice(v).to_vec(),
            VectorDtype::F16 => {
                let h: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
                bytemuck::cast_slice(&h).to_vec()
            }
        }
    };
    let mut bufs = vec![(IMAGE_TENSOR, meta.images.ids.len(), encode(images))];
    if let (Some(t), Some(s)) = (texts, &meta.texts) {
        bufs.push((TEXT_TENSOR, s.ids.len(), encode(t)));
    }
    let views: Vec<(&str, TensorView<'_>)> = bufs
        .iter()
        .map(|(name, rows, bytes)| {
            TensorView::new(meta.dtype.safetensors(), vec![*rows, meta.dim], bytes)
                .map(|v| (*name, v))
                .map_err(|e| RetrievalError::format(path, format!("tensor {name}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    safetensors::serialize_to_file(views, None, path).map_err(|e| RetrievalError::io(path, e))
}

/// Where one tensor's bytes lie in the mapped file.
#[derive(Debug, Clone, Copy)]
struct Span {
    offset: usize,
    rows: usize,
}

/// An index directory opened for search: metadata parsed, vectors memory-mapped (nothing is
/// copied until a search asks for rows).
pub struct StoredIndex {
    dir: PathBuf,
    meta: IndexMeta,
    mmap: Mmap,
    image: Span,
    text: Option<Span>,
    image_rows: HashMap<String, usize>,
    text_rows: HashMap<String, usize>,
}

impl std::fmt::Debug for StoredIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredIndex")
            .field("dir", &self.dir)
            .field("images", &self.image.rows)
            .field("texts", &self.text.map(|t| t.rows))
            .field("dim", &self.meta.dim)
            .finish()
    }
}

impl StoredIndex {
    /// Opens `dir` and checks that its files agree with each other.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, RetrievalError> {
        let dir = dir.as_ref();
        let err = |reason: String| RetrievalError::format(dir, reason);
        if !dir.is_dir() {
            return Err(err(
                "not found (build one with `lightningdot index ... --out DIR`)".into(),
            ));
        }
        let meta_path = dir.join(META_FILE);
        let text = std::fs::read_to_string(&meta_path)
            .map_err(|e| err(format!("cannot read {META_FILE}: {e}")))?;
        let meta: IndexMeta =
            serde_json::from_str(&text).map_err(|e| err(format!("bad {META_FILE}: {e}")))?;
        if meta.format != FORMAT {
            return Err(err(format!(
                "{META_FILE} format is {:?}, expected {FORMAT:?}",
                meta.format
            )));
        }
        if meta.version != VERSION {
            return Err(err(format!(
                "{META_FILE} version {} is not supported (this build reads {VERSION})",
                meta.version
            )));
        }
        let vec_path = dir.join(VECTORS_FILE);
        let file = std::fs::File::open(&vec_path)
            .map_err(|e| err(format!("cannot open {VECTORS_FILE}: {e}")))?;
        // SAFETY: the file is opened read-only and index files are never modified in place
        // (writers build a new directory and rename it).
        let mmap = unsafe { Mmap::map(&file) }
            .map_err(|e| err(format!("cannot map {VECTORS_FILE}: {e}")))?;
        let (image, text) = {
            let st = SafeTensors::deserialize(&mmap)
                .map_err(|e| err(format!("{VECTORS_FILE} is not a safetensors file ({e})")))?;
            let span = |name: &str, rows: usize| -> Result<Span, RetrievalError> {
                let v = st
                    .tensor(name)
                    .map_err(|_| err(format!("{VECTORS_FILE} has no tensor {name:?}")))?;
                if v.dtype() != meta.dtype.safetensors() {
                    return Err(err(format!(
                        "tensor {name:?} is {:?}, index.json says {:?}",
                        v.dtype(),
                        meta.dtype
                    )));
                }
                if v.shape() != [rows, meta.dim] {
                    return Err(err(format!(
                        "tensor {name:?} has shape {:?}, expected [{rows}, {}]",
                        v.shape(),
                        meta.dim
                    )));
                }
                let offset = v.data().as_ptr() as usize - mmap.as_ptr() as usize;
                Ok(Span { offset, rows })
            };
            let image = span(IMAGE_TENSOR, meta.images.ids.len())?;
            let text = match &meta.texts {
                Some(t) => Some(span(TEXT_TENSOR, t.ids.len())?),
                None => None,
            };
            (image, text)
        };
        if let Some(t) = &meta.texts
            && (t.raw.len() != t.ids.len() || t.image.len() != t.ids.len())
        {
            return Err(err(
                "texts: ids, raw and image lists differ in length".into()
            ));
        }
        if let Some(c) = &meta.images.captions
            && c.len() != meta.images.ids.len()
        {
            return Err(err("images: ids and captions lists differ in length".into()));
        }
        let image_rows = meta
            .images
            .ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), i))
            .collect();
        let text_rows = meta
            .texts
            .iter()
            .flat_map(|t| t.ids.iter().enumerate().map(|(i, id)| (id.clone(), i)))
            .collect();
        Ok(Self {
            dir: dir.to_path_buf(),
            meta,
            mmap,
            image,
            text,
            image_rows,
            text_rows,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn meta(&self) -> &IndexMeta {
        &self.meta
    }

    pub fn dim(&self) -> usize {
        self.meta.dim
    }

    pub fn image_ids(&self) -> &[String] {
        &self.meta.images.ids
    }

    /// Caption ids, empty when no txt_db was indexed.
    pub fn text_ids(&self) -> &[String] {
        self.meta.texts.as_ref().map_or(&[], |t| t.ids.as_slice())
    }

    pub fn has_texts(&self) -> bool {
        self.text.is_some()
    }

    /// Row of image `id`.
    pub fn image_row(&self, id: &str) -> Option<usize> {
        self.image_rows.get(id).copied()
    }

    /// Row of caption `id`.
    pub fn text_row(&self, id: &str) -> Option<usize> {
        self.text_rows.get(id).copied()
    }

    /// Image vectors of `rows`, row-major (borrowed from the mapping when stored as f32).
    pub fn image_vectors(&self, rows: Range<usize>) -> Cow<'_, [f32]> {
        self.rows(self.image, rows)
    }

    /// Caption vectors of `rows`, when captions are indexed.
    pub fn text_vectors(&self, rows: Range<usize>) -> Option<Cow<'_, [f32]>> {
        self.text.map(|s| self.rows(s, rows))
    }

    /// The text of caption row `row`, if the db kept it.
    pub fn text_raw(&self, row: usize) -> Option<&str> {
        self.meta.texts.as_ref()?.raw.get(row)?.as_deref()
    }

    /// The image of caption row `row`.
    pub fn text_image(&self, row: usize) -> Option<&str> {
        self.meta.texts.as_ref()?.image.get(row).map(String::as_str)
    }

    /// Ground-truth caption ids of image row `row`.
    pub fn image_captions(&self, row: usize) -> &[String] {
        self.meta
            .images
            .captions
            .as_ref()
            .and_then(|c| c.get(row))
            .map_or(&[], Vec::as_slice)
    }

    /// The HNSW graph file, when the index has one.
    pub fn ann_path(&self) -> Option<PathBuf> {
        self.meta.ann.map(|_| self.dir.join(ANN_FILE))
    }

    fn rows(&self, span: Span, rows: Range<usize>) -> Cow<'_, [f32]> {
        let end = rows.end.min(span.rows);
        let start = rows.start.min(end);
        let size = self.meta.dtype.size();
        let row_bytes = self.meta.dim * size;
        let bytes = &self.mmap[span.offset + start * row_bytes..span.offset + end * row_bytes];
        match self.meta.dtype {
            VectorDtype::F32 => match bytemuck::try_cast_slice::<u8, f32>(bytes) {
                Ok(v) => Cow::Borrowed(v),
                Err(_) => Cow::Owned(
                    bytes
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                ),
            },
            VectorDtype::F16 => Cow::Owned(
                bytes
                    .chunks_exact(2)
                    .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
            ),
        }
    }
}
