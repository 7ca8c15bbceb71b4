//! `--rerank-checkpoint UNITER.pt|DIR --rerank-k K` for `search` and `serve`: a UNITER
//! cross-encoder re-scores the first stage's top-K of every query (spec §8).

use std::path::PathBuf;

use clap::Args;
use lightningdot::conversion::{LoadOptions, UniterSource};
use lightningdot::rerank::{DEFAULT_BATCH, RerankerSpec};
use lightningdot::retrieval::pipeline::DEFAULT_RERANK_DEPTH;

/// Cross-encoder flags shared by `search` and `serve`.
#[derive(Args, Debug, Clone)]
pub struct RerankArgs {
    /// UNITER cross-encoder that re-scores each query's top-K: a `.pt` file (`uniter.` or
    /// `bert.` prefix), a directory written by `convert`, or a directory holding model.pt + config.json.
    #[arg(long)]
    pub rerank_checkpoint: Option<PathBuf>,
    /// The cross-encoder's UniterConfig JSON, or `uniter-base` / `uniter-large` (default: the
    /// config.json beside the checkpoint, else sizes read from its tensors).
    #[arg(long, requires = "rerank_checkpoint")]
    pub rerank_config: Option<String>,
    /// First-stage candidates re-scored per query (the results are the best k of them).
    #[arg(long, requires = "rerank_checkpoint", default_value_t = DEFAULT_RERANK_DEPTH)]
    pub rerank_k: usize,
    /// Image db with the region features the cross-encoder reads (default: the one the index
    /// was built from; boxes selected with the default conf_th 0.2 / max_bb 100 / min_bb 10).
    #[arg(long, requires = "rerank_checkpoint")]
    pub img_db: Option<PathBuf>,
    /// Text db with the caption token ids (image queries; default: the one the index was built from).
    #[arg(long, requires = "rerank_checkpoint")]
    pub txt_db: Option<PathBuf>,
    /// Pairs per cross-encoder forward pass.
    #[arg(long, requires = "rerank_checkpoint", default_value_t = DEFAULT_BATCH)]
    pub rerank_batch_size: usize,
}

impl RerankArgs {
    /// The cross-encoder to plug into the pipeline (`None` without `--rerank-checkpoint`).
    pub fn spec(&self) -> Option<RerankerSpec> {
        let path = self.rerank_checkpoint.as_ref()?;
        Some(RerankerSpec {
            source: UniterSource {
                checkpoint: path.clone(),
                config: self.rerank_config.clone(),
                options: LoadOptions::default(),
            },
            depth: self.rerank_k,
            img_db: self.img_db.clone(),
            txt_db: self.txt_db.clone(),
            batch_size: self.rerank_batch_size,
        })
    }
}
