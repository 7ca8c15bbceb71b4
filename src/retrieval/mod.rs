//! Real-time retrieval (spec §9): image (and caption) vectors computed once into an index
//! directory, then each query costs one text-tower pass and a dot product against the whole
//! collection.
//!
//! | module | job |
//! |---|---|
//! | [`format`] | the index directory: safetensors vectors (memory-mapped) + JSON metadata, atomic writes |
//! | [`build`] | encoding an img_db (and txt_db) into an index |
//! | [`ann`] | the optional HNSW graph (usearch) for `--ann` |
//! | [`pipeline`] | encode → candidates → optional re-rank, with per-stage timings |
//! | [`load`] | a pipeline from paths (model, tokenizer, store): what search and serve run |
//! | [`photo`] | search by photo: detector → image tower → captions and similar images |
//! | [`store`] | where the candidates come from: the index directory, or Milvus (feature `milvus`) |
//!
//! ```no_run
//! use lightningdot::retrieval::{Pipeline, PipelineOptions, Query, QueryEncoder, StoredIndex};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let (model, config, tokenizer): (lightningdot::model::BiEncoder<lightningdot::device::CpuBackend>, lightningdot::model::BiEncoderConfig, lightningdot::data::Tokenizer) = todo!();
//! let index = StoredIndex::open("coco-index")?;
//! let encoder = QueryEncoder::new(model, &config, tokenizer, Default::default());
//! let pipeline = Pipeline::new(encoder, index, PipelineOptions::default(), Default::default())?;
//! let answer = pipeline.search(&Query::Text("a man riding a wave".into()), 10)?;
//! println!("{}", serde_json::to_string(&answer)?);
//! # Ok(()) }
//! ```

pub mod ann;
pub mod build;
mod error;
pub mod format;
pub mod load;
pub mod photo;
pub mod pipeline;
pub mod store;

use std::path::{Path, PathBuf};

pub use ann::AnnIndex;
pub use build::{BuildOptions, BuildReport, build_index, model_info};
pub use error::{ErrorClass, RetrievalError};
pub use format::{AnnInfo, IndexMeta, StoredIndex, VectorDtype};
pub use load::{QuerySource, open_index_store};
pub use photo::{PhotoError, PhotoPipeline, PhotoResponse, PhotoService};
pub use pipeline::{
    CandidateMode, Caption, IndexSummary, MAX_K, MAX_QUERY_CHARS, Pipeline, PipelineOptions, Query,
    QueryEncoder, Reranker, ResultHit, SearchResponse, SearchService, StageTimings, check_k,
};
pub use store::{
    DirStore, MilvusIndex, MilvusIndexKind, MilvusSearchParams, MilvusUrl, StoreCounts,
    StoreHealth, VectorStore,
};

use crate::conversion::{ModelDir, VOCAB_FILES};
use crate::data::{DataError, Tokenizer, TxtDb};

fn has_vocab(dir: &Path) -> bool {
    dir.is_dir() && VOCAB_FILES.iter().any(|f| dir.join(f).is_file())
}

/// Where the query tokenizer comes from: `--vocab` when given, else the copy in a converted
/// model directory, else a `--txt-config` directory holding vocab.txt / tokenizer.json.
pub fn resolve_vocab(
    explicit: Option<&Path>,
    checkpoint: &Path,
    txt_config: Option<&str>,
) -> Result<PathBuf, RetrievalError> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if ModelDir::is_model_dir(checkpoint) && has_vocab(checkpoint) {
        return Ok(checkpoint.to_path_buf());
    }
    if let Some(dir) = txt_config.map(Path::new)
        && has_vocab(dir)
    {
        return Ok(dir.to_path_buf());
    }
    Err(RetrievalError::NoVocab)
}

/// Checks that `tokenizer` turns the first `limit` captions' raw text into the ids the txt_db
/// stores (so that free-text queries are tokenized as the indexed captions were). Returns
/// (captions checked, ids of those that differ).
pub fn check_tokenizer(
    tokenizer: &Tokenizer,
    txt_db: &TxtDb,
    limit: usize,
) -> Result<(usize, Vec<String>), DataError> {
    let mut checked = 0;
    let mut differ = Vec::new();
    for id in txt_db.ids().iter().take(limit) {
        let rec = txt_db.get(id)?;
        let Some(raw) = rec.raw.as_deref() else {
            continue;
        };
        checked += 1;
        if tokenizer.encode_words(raw)? != rec.input_ids {
            differ.push(id.clone());
        }
    }
    Ok((checked, differ))
}
