//! The query path as three stages — encode → candidates → optional re-rank — each timed:
//!
//! 1. **encode**: a text query is tokenized exactly as the db captions were ([`Tokenizer::encode`]:
//!    `[CLS] … [SEP]`) and run through the text tower; an image query reads the image's stored
//!    vector (no model pass).
//! 2. **candidates**: the [`VectorStore`]'s top-k: an index directory's exact inner-product
//!    search (one matrix product per chunk, top-k on the host, [`crate::search`]) or HNSW graph
//!    (`--ann`, candidates rescored exactly), or a Milvus collection.
//! 3. **re-rank** (when a [`Reranker`] is plugged in): the first-stage top-K (`rerank_depth`)
//!    re-sorted by the re-rank score alone, as the reference's rerank.py does (spec §8), then
//!    cut to k.

use std::sync::Arc;
use std::time::Instant;

use burn::prelude::*;
use serde::Serialize;

use super::RetrievalError;
use super::format::{IndexMeta, StoredIndex};
use super::store::{DirStore, StoreHealth, VectorStore};
use crate::data::{Tokenizer, collate_texts};
use crate::encode::encode_texts;
use crate::model::{BiEncoder, BiEncoderConfig};
use crate::search::DEFAULT_CHUNK_ROWS;

/// Longest accepted text query, in characters.
pub const MAX_QUERY_CHARS: usize = 1000;
/// Largest accepted `k`.
pub const MAX_K: usize = 10_000;
/// First-stage candidates handed to a re-ranker by default (rerank.py's largest K).
pub const DEFAULT_RERANK_DEPTH: usize = 100;

/// A second-stage scorer (e.g. a UNITER cross-encoder). It sees only ids: the query text and
/// its token ids, and the candidate ids (image db names or caption ids), so it can read its own
/// features. It returns one score per candidate, higher is better.
pub trait Reranker: Send + Sync {
    fn name(&self) -> &str;
    /// Scores the image candidates of a text query.
    fn rerank_images(
        &self,
        query_text: &str,
        query_ids: &[u32],
        candidates: &[String],
    ) -> Result<Vec<f32>, RetrievalError>;
    /// Scores the caption candidates of an image query.
    fn rerank_texts(
        &self,
        image_id: &str,
        candidates: &[String],
    ) -> Result<Vec<f32>, RetrievalError>;
}

/// What to search for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// Free text → images.
    Text(String),
    /// An indexed image (by id) → captions.
    Image(String),
}

/// A ground-truth caption of an image result.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Caption {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// One result, best first.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ResultHit {
    /// Image db name (text query) or caption id (image query).
    pub id: String,
    /// The score it was ranked by: the dot product, or the re-rank score when re-ranked.
    pub score: f32,
    /// The dot product, when `score` is a re-rank score.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_stage_score: Option<f32>,
    /// Caption results: the caption text (when indexed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Caption results: the caption's image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Image results: the image's ground-truth captions (when a txt_db was indexed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub captions: Option<Vec<Caption>>,
}

impl ResultHit {
    /// A first-stage image result (a text query's), with its captions when stored.
    pub fn image(id: String, score: f32, captions: Option<Vec<Caption>>) -> Self {
        Self {
            id,
            score,
            first_stage_score: None,
            text: None,
            image: None,
            captions,
        }
    }

    /// A first-stage caption result (an image query's): its text and image when stored.
    pub fn caption(id: String, score: f32, text: Option<String>, image: Option<String>) -> Self {
        Self {
            id,
            score,
            first_stage_score: None,
            text,
            image,
            captions: None,
        }
    }
}

/// Milliseconds spent in each stage.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Default)]
pub struct StageTimings {
    pub encode: f64,
    pub candidates: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rerank: Option<f64>,
    pub total: f64,
}

/// The answer to one query: `{"results": [{"id", "score", ...}, ...], "timings_ms": {...}}`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SearchResponse {
    pub results: Vec<ResultHit>,
    pub timings_ms: StageTimings,
    /// `exact`, `exact-streamed` or `ann`.
    pub search: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reranker: Option<String>,
}

/// What a service knows about its index (for /healthz and the page).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct IndexSummary {
    pub images: usize,
    pub texts: usize,
    pub dim: usize,
    pub ann: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reranker: Option<String>,
}

/// A query service with its types erased (what the HTTP server holds).
pub trait SearchService: Send + Sync {
    fn search(&self, query: &Query, k: usize) -> Result<SearchResponse, RetrievalError>;
    fn summary(&self) -> IndexSummary;
    /// Whether `id` names an indexed image.
    fn has_image(&self, id: &str) -> bool;
    /// Like [`SearchService::search`], keeping only results that match `filter` (a boolean
    /// expression over the store's fields). Services without fields reject filters.
    fn search_filtered(
        &self,
        query: &Query,
        k: usize,
        filter: Option<&str>,
    ) -> Result<SearchResponse, RetrievalError> {
        match filter {
            None => self.search(query, k),
            Some(_) => Err(RetrievalError::BadRequest(
                "this service cannot filter results".into(),
            )),
        }
    }
    /// Whether the vector store answers (for `/healthz`).
    fn health(&self) -> StoreHealth {
        StoreHealth::ok("directory")
    }
}

/// How the candidate stage searches images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CandidateMode {
    /// Vectors resident on the device, exact.
    #[default]
    Exact,
    /// Exact, uploading chunks from the memory-mapped file on every query: bounded device
    /// memory for collections larger than it, at the price of a copy per query.
    ExactStreamed,
    /// The HNSW graph (`index --ann`), candidates rescored exactly.
    Ann,
}

/// Pipeline settings.
#[derive(Debug, Clone, Copy)]
pub struct PipelineOptions {
    pub mode: CandidateMode,
    /// `efSearch` for [`CandidateMode::Ann`] (default: the value stored in the index).
    pub ann_expansion: Option<usize>,
    /// First-stage candidates given to the re-ranker.
    pub rerank_depth: usize,
    /// Rows per device chunk.
    pub chunk_rows: usize,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            mode: CandidateMode::Exact,
            ann_expansion: None,
            rerank_depth: DEFAULT_RERANK_DEPTH,
            chunk_rows: DEFAULT_CHUNK_ROWS,
        }
    }
}

/// The text tower and its tokenizer.
pub struct QueryEncoder<B: Backend> {
    model: BiEncoder<B>,
    tokenizer: Tokenizer,
    max_tokens: usize,
    dim: usize,
    device: B::Device,
}

impl<B: Backend> QueryEncoder<B> {
    pub fn new(
        model: BiEncoder<B>,
        config: &BiEncoderConfig,
        tokenizer: Tokenizer,
        device: B::Device,
    ) -> Self {
        let dim = if config.project_dim > 0 {
            config.project_dim
        } else {
            config.txt.hidden_size
        };
        Self {
            model,
            tokenizer,
            max_tokens: config.txt.max_position_embeddings,
            dim,
            device,
        }
    }

    /// Size of the vectors it produces.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Checks `text` and returns its `[CLS] … [SEP]` ids.
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>, RetrievalError> {
        if text.trim().is_empty() {
            return Err(RetrievalError::EmptyQuery);
        }
        let chars = text.chars().count();
        if chars > MAX_QUERY_CHARS {
            return Err(RetrievalError::QueryTooLong {
                chars,
                max: MAX_QUERY_CHARS,
            });
        }
        let ids = self.tokenizer.encode(text)?;
        if ids.len() > self.max_tokens {
            return Err(RetrievalError::TooManyTokens {
                tokens: ids.len(),
                max: self.max_tokens,
            });
        }
        Ok(ids)
    }

    /// The text tower's vector of one tokenized query.
    pub fn encode_ids(&self, ids: &[u32]) -> Vec<f32> {
        encode_texts(&self.model, &collate_texts(&[ids]), &self.device)
    }

    /// The image tower's vectors of a batch of region features (a search by photo),
    /// row-major `[batch, dim]`.
    pub fn encode_regions(&self, batch: &crate::data::ImageBatch) -> Vec<f32> {
        crate::encode::encode_images(&self.model, batch, &self.device)
    }
}

/// Encoder, vector store and optional re-ranker: answers [`Query`]s.
pub struct Pipeline<B: Backend> {
    encoder: QueryEncoder<B>,
    store: Box<dyn VectorStore>,
    reranker: Option<Arc<dyn Reranker>>,
    options: PipelineOptions,
}

impl<B: Backend> Pipeline<B> {
    /// Loads the index vectors for searching (onto the device unless streamed) and checks
    /// that the encoder produces vectors of the index's size.
    pub fn new(
        encoder: QueryEncoder<B>,
        index: StoredIndex,
        options: PipelineOptions,
        device: B::Device,
    ) -> Result<Self, RetrievalError> {
        check_dim(&encoder, index.dim(), &index.dir().display().to_string())?;
        let store = DirStore::<B>::open(index, &options, device)?;
        Self::with_store(encoder, Box::new(store), options)
    }

    /// A pipeline over any store (e.g. a Milvus collection); checks the vector sizes agree.
    pub fn with_store(
        encoder: QueryEncoder<B>,
        store: Box<dyn VectorStore>,
        options: PipelineOptions,
    ) -> Result<Self, RetrievalError> {
        check_dim(&encoder, store.counts().dim, &store.health().store)?;
        Ok(Self {
            encoder,
            store,
            reranker: None,
            options,
        })
    }

    /// Plugs in a second stage that re-sorts the first `options.rerank_depth` candidates.
    pub fn with_reranker(mut self, reranker: Arc<dyn Reranker>) -> Self {
        self.reranker = Some(reranker);
        self
    }

    /// The index directory, when the store is one.
    pub fn index(&self) -> Option<&StoredIndex> {
        self.store.local_index()
    }

    /// The store's index facts (model, source dbs, box selection).
    pub fn meta(&self) -> &IndexMeta {
        self.store.meta()
    }

    pub fn store(&self) -> &dyn VectorStore {
        self.store.as_ref()
    }

    pub fn encoder(&self) -> &QueryEncoder<B> {
        &self.encoder
    }

    /// Answers `query` with its best `k` results.
    pub fn search(&self, query: &Query, k: usize) -> Result<SearchResponse, RetrievalError> {
        self.search_filtered(query, k, None)
    }

    /// Answers `query` with its best `k` results among those matching `filter` (a boolean
    /// expression over the store's fields; stores without fields reject it).
    pub fn search_filtered(
        &self,
        query: &Query,
        k: usize,
        filter: Option<&str>,
    ) -> Result<SearchResponse, RetrievalError> {
        check_k(k as i64)?;
        let started = Instant::now();
        let depth = match &self.reranker {
            Some(_) => k.max(self.options.rerank_depth),
            None => k,
        };
        let (vector, query_ids) = match query {
            Query::Text(text) => {
                let ids = self.encoder.tokenize(text)?;
                (self.encoder.encode_ids(&ids), ids)
            }
            Query::Image(id) => {
                if !self.store.has_texts() {
                    return Err(RetrievalError::NoTexts);
                }
                (self.store.image_vector(id)?, Vec::new())
            }
        };
        let encoded = Instant::now();
        let hits = match query {
            Query::Text(_) => self.store.search_images(&vector, depth, filter)?,
            Query::Image(_) => self.store.search_texts(&vector, depth, filter)?,
        };
        let searched = Instant::now();
        let ids: Vec<String> = hits.iter().map(|h| h.id.clone()).collect();
        let (order, rerank_ms) = match &self.reranker {
            Some(r) => {
                let scores = match query {
                    Query::Text(text) => r.rerank_images(text, &query_ids, &ids)?,
                    Query::Image(id) => r.rerank_texts(id, &ids)?,
                };
                if scores.len() != ids.len() {
                    return Err(RetrievalError::Rerank {
                        name: r.name().to_string(),
                        reason: format!(
                            "returned {} scores for {} candidates",
                            scores.len(),
                            ids.len()
                        ),
                    });
                }
                let mut order: Vec<(usize, Option<f32>)> =
                    scores.into_iter().map(Some).enumerate().collect();
                // Stable: equal re-rank scores keep the first-stage order.
                order.sort_by(|a, b| b.1.unwrap_or(0.0).total_cmp(&a.1.unwrap_or(0.0)));
                (order, Some(ms(searched.elapsed())))
            }
            None => ((0..hits.len()).map(|i| (i, None)).collect(), None),
        };
        let results = order
            .into_iter()
            .take(k)
            .map(|(i, rerank)| {
                let mut hit = hits[i].clone();
                if let Some(score) = rerank {
                    hit.first_stage_score = Some(hit.score);
                    hit.score = score;
                }
                hit
            })
            .collect();
        Ok(SearchResponse {
            results,
            timings_ms: StageTimings {
                encode: ms(encoded - started),
                candidates: ms(searched - encoded),
                rerank: rerank_ms,
                total: ms(started.elapsed()),
            },
            search: self.store.method(query),
            reranker: self.reranker.as_ref().map(|r| r.name().to_string()),
        })
    }

    /// The best `k` captions and the `k` most similar stored images for an image vector made
    /// outside the store (a search by photo): both by dot product, captions decorated as an
    /// image query's results, images as a text query's (with their captions).
    pub fn nearest_to_image(
        &self,
        vector: &[f32],
        k: usize,
    ) -> Result<(Vec<ResultHit>, Vec<ResultHit>), RetrievalError> {
        check_k(k as i64)?;
        let captions = match self.store.has_texts() {
            true => self.store.search_texts(vector, k, None)?,
            false => Vec::new(),
        };
        let images = self.store.search_images(vector, k, None)?;
        Ok((captions, images))
    }
}

/// The encoder must produce vectors of the stored size.
fn check_dim<B: Backend>(
    encoder: &QueryEncoder<B>,
    dim: usize,
    store: &str,
) -> Result<(), RetrievalError> {
    if encoder.dim() != dim {
        return Err(RetrievalError::format(
            store,
            format!(
                "vectors are {dim}-d but the model produces {}-d vectors: use the checkpoint \
                 the index was built with",
                encoder.dim()
            ),
        ));
    }
    Ok(())
}
fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Checks a requested `k` (1 ..= [`MAX_K`]).
pub fn check_k(k: i64) -> Result<usize, RetrievalError> {
    if k < 1 || k > MAX_K as i64 {
        return Err(RetrievalError::BadK { k, max: MAX_K });
    }
    Ok(k as usize)
}

impl<B: Backend> SearchService for Pipeline<B> {
    fn search(&self, query: &Query, k: usize) -> Result<SearchResponse, RetrievalError> {
        Pipeline::search(self, query, k)
    }

    fn search_filtered(
        &self,
        query: &Query,
        k: usize,
        filter: Option<&str>,
    ) -> Result<SearchResponse, RetrievalError> {
        Pipeline::search_filtered(self, query, k, filter)
    }

    fn summary(&self) -> IndexSummary {
        let counts = self.store.counts();
        IndexSummary {
            images: counts.images,
            texts: counts.texts,
            dim: counts.dim,
            ann: counts.ann,
            reranker: self.reranker.as_ref().map(|r| r.name().to_string()),
        }
    }

    fn has_image(&self, id: &str) -> bool {
        self.store.has_image(id)
    }

    fn health(&self) -> StoreHealth {
        self.store.health()
    }
}
