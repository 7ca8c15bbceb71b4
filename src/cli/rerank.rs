//! `--rerank-checkpoint UNITER.pt|DIR --rerank-k K` for `search` and `serve`: a UNITER
//! cross-encoder re-scores the first stage's top-K of every query (spec §8).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use burn::prelude::Backend;
use clap::Args;
use lightningdot::conversion::{LoadOptions, UniterSource};
use lightningdot::data::{ImgDb, TxtDb};
use lightningdot::rerank::{CrossEncoder, DEFAULT_BATCH, UniterReranker};
use lightningdot::retrieval::Pipeline;
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
    /// Loads the cross-encoder and plugs it into `pipeline` (unchanged without
    /// `--rerank-checkpoint`).
    pub fn attach<B: Backend>(
        &self,
        pipeline: Pipeline<B>,
        device: &B::Device,
    ) -> Result<Pipeline<B>>
    where
        UniterReranker<B>: lightningdot::retrieval::Reranker + 'static,
    {
        let Some(path) = &self.rerank_checkpoint else {
            return Ok(pipeline);
        };
        if self.rerank_k == 0 {
            bail!("--rerank-k must be at least 1");
        }
        let meta = pipeline.meta();
        let img_db = self
            .img_db
            .clone()
            .unwrap_or_else(|| PathBuf::from(&meta.images.img_db));
        let txt_db = self
            .txt_db
            .clone()
            .or_else(|| meta.texts.as_ref().map(|t| PathBuf::from(&t.txt_db)));
        // The regions the index was built from (older indexes: the defaults).
        let options = meta.images.selection.unwrap_or_default();
        let img_db = ImgDb::open(&img_db, options)
            .with_context(|| "re-ranker region features (--img-db)")?;
        let txt_db = txt_db
            .map(TxtDb::open)
            .transpose()
            .with_context(|| "re-ranker caption ids (--txt-db)")?;
        let source = UniterSource {
            checkpoint: path.clone(),
            config: self.rerank_config.clone(),
            options: LoadOptions::default(),
        };
        let (model, cfg, _) = source
            .load::<B>(device)
            .with_context(|| format!("loading re-ranker {}", path.display()))?;
        tracing::info!(
            "re-ranking the top {} with UNITER (hidden {}, {} layers)",
            self.rerank_k,
            cfg.hidden_size,
            cfg.num_hidden_layers
        );
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| path.display().to_string());
        let cross = CrossEncoder::new(model, cfg, device.clone(), self.rerank_batch_size);
        let reranker = UniterReranker::new(cross, img_db, txt_db, format!("uniter:{name}"));
        Ok(pipeline.with_reranker(Arc::new(reranker)))
    }
}
