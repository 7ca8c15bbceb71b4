//! Where the candidate vectors live: the first stage of the query pipeline asks a
//! [`VectorStore`] for the best rows of a query vector; encoding and re-ranking stay in
//! [`super::Pipeline`] whatever the store.
//!
//! | store | when |
//! |---|---|
//! | [`DirStore`] | an index directory on this machine (exact, exact-streamed or HNSW) |
//! | `MilvusStore` (feature `milvus`) | a Milvus collection: sharded, replicated, filtered, many machines |
//!
//! [`MilvusUrl`] and [`MilvusIndex`] are parsed here, without the feature, so that the CLI can
//! say the build lacks Milvus instead of rejecting the address.

pub mod dir;
#[cfg(feature = "milvus")]
pub mod milvus;

use std::collections::HashMap;

use serde::Serialize;

use super::RetrievalError;
use super::format::IndexMeta;
use super::pipeline::{Query, ResultHit};

pub use dir::DirStore;
#[cfg(feature = "milvus")]
pub use milvus::{
    ConnectOptions, ImageRow, MilvusStore, StoredCaption, TextRow, UploadOptions, UploadReport,
    Uploader, key_counts, upload_index,
};

/// What the pipeline needs from a store of image (and caption) vectors.
pub trait VectorStore: Send + Sync {
    /// Index facts the re-ranker and the summaries read (model, source dbs, box selection).
    /// A remote store fills the id lists only when it holds them locally (Milvus: empty).
    fn meta(&self) -> &IndexMeta;
    /// Images, captions, vector size and whether the search is approximate.
    fn counts(&self) -> StoreCounts;
    /// Whether caption vectors are stored (image → text queries).
    fn has_texts(&self) -> bool;
    /// The `search` label of a response to `query` (`exact`, `exact-streamed`, `ann`, `milvus`).
    fn method(&self, query: &Query) -> &'static str;
    /// The stored vector of image `id` ([`RetrievalError::UnknownImage`] when absent).
    fn image_vector(&self, id: &str) -> Result<Vec<f32>, RetrievalError>;
    /// Whether `id` names a stored image.
    fn has_image(&self, id: &str) -> bool;
    /// The `k` images with the largest dot product with `vector`, best first, each with its
    /// ground-truth captions when stored. `filter` is a boolean expression over the stored
    /// fields (only stores that hold fields accept one).
    fn search_images(
        &self,
        vector: &[f32],
        k: usize,
        filter: Option<&str>,
    ) -> Result<Vec<ResultHit>, RetrievalError>;
    /// The `k` captions with the largest dot product with `vector`, best first.
    fn search_texts(
        &self,
        vector: &[f32],
        k: usize,
        filter: Option<&str>,
    ) -> Result<Vec<ResultHit>, RetrievalError>;
    /// Whether the store answers now (for `/healthz`).
    fn health(&self) -> StoreHealth;
    /// The index directory, when the store is one.
    fn local_index(&self) -> Option<&super::StoredIndex> {
        None
    }
}

/// Sizes of a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreCounts {
    pub images: usize,
    pub texts: usize,
    pub dim: usize,
    /// Candidates come from an approximate index.
    pub ann: bool,
}

/// A store's state, as `/healthz` reports it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct StoreHealth {
    /// `directory` or the `milvus://HOST:PORT/COLLECTION` address.
    pub store: String,
    /// `ok` or `unavailable`.
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl StoreHealth {
    pub fn ok(store: impl Into<String>) -> Self {
        Self {
            store: store.into(),
            state: "ok",
            error: None,
        }
    }

    pub fn unavailable(store: impl Into<String>, error: impl std::fmt::Display) -> Self {
        Self {
            store: store.into(),
            state: "unavailable",
            error: Some(error.to_string()),
        }
    }

    pub fn is_ok(&self) -> bool {
        self.error.is_none()
    }
}

/// `milvus://HOST:PORT/COLLECTION`: a Milvus proxy and the image collection (captions go to
/// `COLLECTION_texts`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MilvusUrl {
    pub host: String,
    pub port: u16,
    pub collection: String,
}

/// Milvus' default proxy port.
pub const MILVUS_DEFAULT_PORT: u16 = 19530;

impl MilvusUrl {
    /// The caption collection that goes with the image collection.
    pub fn texts_collection(&self) -> String {
        format!("{}_texts", self.collection)
    }

    /// The gRPC endpoint (`http://HOST:PORT`).
    pub fn endpoint(&self) -> String {
        format!("http://{}:{}", self.host, self.port)
    }
}

impl std::fmt::Display for MilvusUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "milvus://{}:{}/{}",
            self.host, self.port, self.collection
        )
    }
}

impl std::str::FromStr for MilvusUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("{s:?}: {why} (expected milvus://HOST:PORT/COLLECTION)");
        let rest = s
            .strip_prefix("milvus://")
            .ok_or_else(|| bad("not a milvus:// address"))?;
        let (authority, collection) = rest.split_once('/').ok_or_else(|| bad("no collection"))?;
        // Milvus collection names: a letter or underscore, then letters, digits, underscores.
        let valid_name = collection
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && collection
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
            && collection.len() <= 200;
        if !valid_name {
            return Err(bad(
                "the collection name must be letters, digits and underscores, not starting with a digit",
            ));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .map_err(|_| bad(&format!("bad port {p:?}")))?,
            ),
            None => (authority, MILVUS_DEFAULT_PORT),
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(Self {
            host: host.to_string(),
            port,
            collection: collection.to_string(),
        })
    }
}

/// Milvus index types offered by `index --milvus-index` (all with the inner-product metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MilvusIndexKind {
    /// Brute force: exact, the same top-k as the directory's exact search.
    #[default]
    Flat,
    /// Inverted lists of raw vectors (`nlist`; search `nprobe`).
    IvfFlat,
    /// Inverted lists of product-quantised vectors (`nlist`, `m`, `nbits`): 10M+ vectors in memory.
    IvfPq,
    /// Graph (`M`, `efConstruction`; search `ef`).
    Hnsw,
    /// Vamana graph on disk (search `search_list`): collections larger than memory.
    DiskAnn,
}

impl std::str::FromStr for MilvusIndexKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "flat" => Ok(Self::Flat),
            "ivf_flat" => Ok(Self::IvfFlat),
            "ivf_pq" => Ok(Self::IvfPq),
            "hnsw" => Ok(Self::Hnsw),
            "diskann" => Ok(Self::DiskAnn),
            _ => Err(format!(
                "unknown Milvus index {s:?}: expected flat, ivf_flat, ivf_pq, hnsw or diskann"
            )),
        }
    }
}

impl MilvusIndexKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Flat => "FLAT",
            Self::IvfFlat => "IVF_FLAT",
            Self::IvfPq => "IVF_PQ",
            Self::Hnsw => "HNSW",
            Self::DiskAnn => "DISKANN",
        }
    }
}

/// The index built over a collection's vectors, with its build parameters.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MilvusIndex {
    pub kind: MilvusIndexKind,
    /// IVF: inverted lists (default 1024).
    pub nlist: Option<usize>,
    /// IVF_PQ: sub-quantisers (must divide the dimension; default: dim / 4, at least 1).
    pub pq_m: Option<usize>,
    /// IVF_PQ: bits per code (default 8).
    pub pq_nbits: Option<usize>,
    /// HNSW: graph degree (default 16).
    pub hnsw_m: Option<usize>,
    /// HNSW: candidate list while building (default 200).
    pub ef_construction: Option<usize>,
}

impl MilvusIndex {
    /// Milvus' `params` for this index over `dim`-d vectors.
    pub fn params(&self, dim: usize) -> Result<HashMap<String, String>, RetrievalError> {
        let mut p = HashMap::new();
        let mut put = |k: &str, v: usize| {
            p.insert(k.to_string(), v.to_string());
        };
        match self.kind {
            MilvusIndexKind::Flat | MilvusIndexKind::DiskAnn => {}
            MilvusIndexKind::IvfFlat => put("nlist", self.nlist.unwrap_or(1024)),
            MilvusIndexKind::IvfPq => {
                let m = self.pq_m.unwrap_or((dim / 4).max(1));
                if m == 0 || !dim.is_multiple_of(m) {
                    return Err(RetrievalError::BadRequest(format!(
                        "--pq-m {m} must divide the vector size {dim}"
                    )));
                }
                put("nlist", self.nlist.unwrap_or(1024));
                put("m", m);
                put("nbits", self.pq_nbits.unwrap_or(8));
            }
            MilvusIndexKind::Hnsw => {
                put("M", self.hnsw_m.unwrap_or(16));
                put("efConstruction", self.ef_construction.unwrap_or(200));
            }
        }
        Ok(p)
    }
}

/// Per-query search parameters of a Milvus store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MilvusSearchParams {
    /// IVF lists probed (default 16).
    pub nprobe: Option<usize>,
    /// HNSW candidate list (default max(k, 64)); DiskANN `search_list` likewise.
    pub ef: Option<usize>,
}

impl MilvusSearchParams {
    /// Milvus' search `params` for index `kind` and `k` results (ef and search_list must be
    /// at least k).
    pub fn params(&self, kind: MilvusIndexKind, k: usize) -> HashMap<String, String> {
        let mut p = HashMap::new();
        match kind {
            MilvusIndexKind::Flat => {}
            MilvusIndexKind::IvfFlat | MilvusIndexKind::IvfPq => {
                p.insert("nprobe".into(), self.nprobe.unwrap_or(16).to_string());
            }
            MilvusIndexKind::Hnsw => {
                p.insert("ef".into(), self.ef.unwrap_or(64).max(k).to_string());
            }
            MilvusIndexKind::DiskAnn => {
                p.insert(
                    "search_list".into(),
                    self.ef.unwrap_or(64).max(k).to_string(),
                );
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milvus_urls() {
        let u: MilvusUrl = "milvus://127.0.0.1:19531/coco_images".parse().unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.collection.as_str()),
            ("127.0.0.1", 19531, "coco_images")
        );
        assert_eq!(u.to_string(), "milvus://127.0.0.1:19531/coco_images");
        assert_eq!(u.texts_collection(), "coco_images_texts");
        let d: MilvusUrl = "milvus://db.example/c".parse().unwrap();
        assert_eq!(d.port, MILVUS_DEFAULT_PORT);
        for bad in [
            "http://h:1/c",
            "milvus://h:1",
            "milvus://h:1/",
            "milvus://h:x/c",
            "milvus://:1/c",
            "milvus://h:1/9c",
            "milvus://h:1/a-b",
        ] {
            assert!(bad.parse::<MilvusUrl>().is_err(), "{bad}");
        }
    }

    #[test]
    fn index_params() {
        let pq = MilvusIndex {
            kind: MilvusIndexKind::IvfPq,
            ..Default::default()
        };
        let p = pq.params(768).unwrap();
        assert_eq!(p["m"], "192");
        assert_eq!(p["nlist"], "1024");
        let bad = MilvusIndex {
            pq_m: Some(7),
            ..pq
        };
        assert!(bad.params(768).is_err());
        assert!("IVF_FLAT".parse::<MilvusIndexKind>().is_ok());
        assert!("annoy".parse::<MilvusIndexKind>().is_err());
        let s = MilvusSearchParams {
            nprobe: None,
            ef: Some(10),
        };
        assert_eq!(s.params(MilvusIndexKind::Hnsw, 100)["ef"], "100");
        assert!(s.params(MilvusIndexKind::Flat, 10).is_empty());
    }
}
