//! The cross-encoder as the query pipeline's second stage ([`Reranker`], `search` / `serve`).

use burn::prelude::*;

use super::scorer::CrossEncoder;
use crate::data::{ImgDb, TxtDb};
use crate::retrieval::{Reranker, RetrievalError};

/// Re-scores a query's candidates with UNITER. Region features come from the image db the
/// index was built from; caption token ids (image queries) from its text db.
pub struct UniterReranker<B: Backend> {
    cross: CrossEncoder<B>,
    img_db: ImgDb,
    txt_db: Option<TxtDb>,
    name: String,
}

impl<B: Backend> UniterReranker<B> {
    /// `name` is what responses and /healthz report (e.g. the checkpoint file name).
    pub fn new(cross: CrossEncoder<B>, img_db: ImgDb, txt_db: Option<TxtDb>, name: String) -> Self {
        Self {
            cross,
            img_db,
            txt_db,
            name,
        }
    }

    fn err(&self, reason: impl std::fmt::Display) -> RetrievalError {
        RetrievalError::Rerank {
            name: self.name.clone(),
            reason: reason.to_string(),
        }
    }
}

impl<B: Backend> Reranker for UniterReranker<B>
where
    CrossEncoder<B>: Send + Sync,
{
    fn name(&self) -> &str {
        &self.name
    }

    fn rerank_images(
        &self,
        _query_text: &str,
        query_ids: &[u32],
        candidates: &[String],
    ) -> Result<Vec<f32>, RetrievalError> {
        let max = self.cross.config().max_position_embeddings;
        if query_ids.len() > max {
            return Err(RetrievalError::TooManyTokens {
                tokens: query_ids.len(),
                max,
            });
        }
        let regions = candidates
            .iter()
            .map(|name| self.img_db.get(name))
            .collect::<Result<Vec<_>, _>>()?;
        let refs: Vec<_> = regions.iter().collect();
        self.cross
            .score_text(query_ids, &refs)
            .map_err(|e| self.err(e))
    }

    fn rerank_texts(
        &self,
        image_id: &str,
        candidates: &[String],
    ) -> Result<Vec<f32>, RetrievalError> {
        // A limit of this deployment, not a server fault: the client gets a 400.
        let txt_db = self.txt_db.as_ref().ok_or_else(|| {
            RetrievalError::BadRequest(format!(
                "re-ranker {}: image queries need the caption token ids: pass --txt-db with the \
                 re-ranker",
                self.name
            ))
        })?;
        let (cls, sep) = (txt_db.meta().cls, txt_db.meta().sep);
        let texts = candidates
            .iter()
            .map(|id| {
                let rec = txt_db.get(id)?;
                let mut ids = Vec::with_capacity(rec.input_ids.len() + 2);
                ids.push(cls);
                ids.extend_from_slice(&rec.input_ids);
                ids.push(sep);
                Ok(ids)
            })
            .collect::<Result<Vec<_>, RetrievalError>>()?;
        let regions = self.img_db.get(image_id)?;
        self.cross
            .score_image(&regions, &texts)
            .map_err(|e| self.err(e))
    }
}
