//! Second-stage re-ranking with a UNITER cross-encoder (spec §8).
//!
//! LightningDOT's best accuracy comes from re-scoring its top-K with UNITER; the reference only
//! reads scores precomputed elsewhere (rerank.py). Here the cross-encoder runs online:
//!
//! | module | job |
//! |---|---|
//! | [`batch`] | (caption, image) pairs → the compacted single-stream batch (`gather_index`) |
//! | [`CrossEncoder`] | a loaded [`UniterItm`](crate::model::UniterItm) scoring pairs in mini-batches |
//! | [`recall`] | recall after re-sorting each query's top-K by the cross-encoder score alone |
//! | [`split`] | a whole eval split: first stage, the pairs it needs, recall per K; UNITER-only |
//! | [`UniterReranker`] | the query pipeline's second stage (`search`, `serve`) |
//! | [`attach`] | loading one from paths into a pipeline ([`RerankerSpec`]) |

pub mod attach;
pub mod batch;
pub mod recall;
mod reranker;
mod scorer;
pub mod split;

pub use crate::batch::BatchError;
pub use attach::RerankerSpec;
pub use batch::ItmHostBatch;
pub use recall::{KEEP, SplitIds, full_ranking_recall, rerank_hits, rerank_recall};
pub use reranker::UniterReranker;
pub use scorer::{CrossEncoder, DEFAULT_BATCH};
pub use split::{
    FirstStage, RerankOutcome, SplitPairs, UniterOnly, first_stage, rerank_split, score_by_image,
    uniter_only,
};

use crate::data::DataError;

/// Why re-ranking could not run.
#[derive(Debug, thiserror::Error)]
pub enum RerankError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("cross-encoder batch: {0}")]
    Batch(#[from] BatchError),
    #[error("{0}")]
    Input(String),
}

/// Parses `--rerank-k` (`10,20,50,100`): positive, deduplicated, increasing.
pub fn parse_ks(s: &str) -> Result<Vec<usize>, String> {
    let mut ks = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.parse::<usize>() {
            Ok(k) if k > 0 => ks.push(k),
            _ => return Err(format!("{part:?} is not a positive integer K")),
        }
    }
    if ks.is_empty() {
        return Err("expected at least one K (e.g. 10,20,50,100)".into());
    }
    ks.sort_unstable();
    ks.dedup();
    Ok(ks)
}
