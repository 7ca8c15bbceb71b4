//! Plugging a UNITER cross-encoder into a query pipeline (`search` / `serve`
//! `--rerank-checkpoint`): it re-scores each query's first-stage top-K (spec §8).

use std::path::PathBuf;
use std::sync::Arc;

use burn::prelude::Backend;

use super::{CrossEncoder, RerankError, UniterReranker};
use crate::conversion::UniterSource;
use crate::data::{ImgDb, TxtDb};
use crate::retrieval::{Pipeline, Reranker};

/// Where the cross-encoder and the data it reads come from.
#[derive(Debug, Clone)]
pub struct RerankerSpec {
    pub source: UniterSource,
    /// First-stage candidates re-scored per query (as the pipeline's `rerank_depth`).
    pub depth: usize,
    /// Image db with the region features (default: the one the index was built from).
    pub img_db: Option<PathBuf>,
    /// Text db with the caption ids, for image queries (default: the index's).
    pub txt_db: Option<PathBuf>,
    /// Pairs per cross-encoder forward pass.
    pub batch_size: usize,
}

impl RerankerSpec {
    /// Loads the cross-encoder and plugs it into `pipeline`, reading the regions the index was
    /// built from (its recorded box selection; older indexes: the defaults).
    pub fn attach<B: Backend>(
        &self,
        pipeline: Pipeline<B>,
        device: &B::Device,
    ) -> Result<Pipeline<B>, RerankError>
    where
        UniterReranker<B>: Reranker + 'static,
    {
        if self.depth == 0 {
            return Err(RerankError::Input("--rerank-k must be at least 1".into()));
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
        let options = meta.images.selection.unwrap_or_default();
        let img_db = ImgDb::open(&img_db, options).map_err(|e| {
            RerankError::Input(format!("re-ranker region features (--img-db): {e}"))
        })?;
        let txt_db = txt_db
            .map(TxtDb::open)
            .transpose()
            .map_err(|e| RerankError::Input(format!("re-ranker caption ids (--txt-db): {e}")))?;
        let path = &self.source.checkpoint;
        let (model, cfg, _) = self.source.load::<B>(device).map_err(|e| {
            RerankError::Input(format!("loading re-ranker {}: {e}", path.display()))
        })?;
        tracing::info!(
            "re-ranking the top {} with UNITER (hidden {}, {} layers)",
            self.depth,
            cfg.hidden_size,
            cfg.num_hidden_layers
        );
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| path.display().to_string());
        let cross = CrossEncoder::new(model, cfg, device.clone(), self.batch_size);
        let reranker = UniterReranker::new(cross, img_db, txt_db, format!("uniter:{name}"));
        Ok(pipeline.with_reranker(Arc::new(reranker)))
    }
}
