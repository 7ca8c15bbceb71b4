//! The query path as three stages — encode → candidates → optional re-rank — each timed:
//!
//! 1. **encode**: a text query is tokenized exactly as the db captions were ([`Tokenizer::encode`]:
//!    `[CLS] … [SEP]`) and run through the text tower; an image query reads the image's stored
//!    vector (no model pass).
//! 2. **candidates**: exact inner-product search (one matrix product per chunk, top-k on the
//!    host, [`crate::search`]) or the HNSW graph (`--ann`, candidates rescored exactly).
//! 3. **re-rank** (when a [`Reranker`] is plugged in): the first-stage top-K (`rerank_depth`)
//!    re-sorted by the re-rank score alone, as the reference's rerank.py does (spec §8), then
//!    cut to k.

use std::sync::Arc;
use std::time::Instant;

use burn::prelude::*;
use serde::Serialize;

use super::RetrievalError;
use super::ann::AnnIndex;
use super::format::StoredIndex;
use crate::data::{Tokenizer, collate_texts};
use crate::encode::encode_texts;
use crate::model::{BiEncoder, BiEncoderConfig};
use crate::search::{DEFAULT_CHUNK_ROWS, FlatIndex, Hit, VectorChunks, search_chunks};

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

/// Candidate search over the stored image rows, uploading each chunk from the mapping.
struct MappedChunks<'a, B: Backend> {
    index: &'a StoredIndex,
    chunk_rows: usize,
    device: B::Device,
}

impl<B: Backend> VectorChunks<B> for MappedChunks<'_, B> {
    fn dim(&self) -> usize {
        self.index.dim()
    }

    fn chunk_count(&self) -> usize {
        self.index.image_ids().len().div_ceil(self.chunk_rows)
    }

    fn max_chunk_rows(&self) -> usize {
        self.chunk_rows.min(self.index.image_ids().len())
    }

    fn chunk(&self, i: usize) -> (usize, Tensor<B, 2>) {
        let start = i * self.chunk_rows;
        let end = (start + self.chunk_rows).min(self.index.image_ids().len());
        let v = self.index.image_vectors(start..end).into_owned();
        let n = v.len();
        let t = Tensor::<B, 1>::from_data(TensorData::new(v, [n]), &self.device)
            .reshape([end - start, self.index.dim()]);
        (start, t)
    }
}

enum ImageSearch<B: Backend> {
    Resident(FlatIndex<B>),
    Streamed,
    Ann(AnnIndex),
}

/// Encoder, index and optional re-ranker: answers [`Query`]s.
pub struct Pipeline<B: Backend> {
    encoder: QueryEncoder<B>,
    index: StoredIndex,
    images: ImageSearch<B>,
    texts: Option<FlatIndex<B>>,
    reranker: Option<Arc<dyn Reranker>>,
    options: PipelineOptions,
    device: B::Device,
}

fn flat_from_rows<B: Backend>(
    index: &StoredIndex,
    n: usize,
    chunk_rows: usize,
    rows: impl Fn(std::ops::Range<usize>) -> Vec<f32>,
    device: &B::Device,
) -> FlatIndex<B> {
    let chunk_rows = chunk_rows.max(1);
    FlatIndex::from_chunks(
        index.dim(),
        (0..n)
            .step_by(chunk_rows)
            .map(|s| std::borrow::Cow::Owned(rows(s..(s + chunk_rows).min(n)))),
        device,
    )
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
        if encoder.dim() != index.dim() {
            return Err(RetrievalError::format(
                index.dir(),
                format!(
                    "vectors are {}-d but the model produces {}-d vectors: use the checkpoint \
                     the index was built with",
                    index.dim(),
                    encoder.dim()
                ),
            ));
        }
        let chunk_rows = options.chunk_rows.max(1);
        let images = match options.mode {
            CandidateMode::Exact => ImageSearch::Resident(flat_from_rows(
                &index,
                index.image_ids().len(),
                chunk_rows,
                |r| index.image_vectors(r).into_owned(),
                &device,
            )),
            CandidateMode::ExactStreamed => ImageSearch::Streamed,
            CandidateMode::Ann => {
                let path = index.ann_path().ok_or(RetrievalError::NoAnn)?;
                ImageSearch::Ann(AnnIndex::open(
                    &path,
                    index.dim(),
                    options.ann_expansion,
                    index.meta().ann.and_then(|a| a.crc32),
                )?)
            }
        };
        let texts = index.has_texts().then(|| {
            flat_from_rows(
                &index,
                index.text_ids().len(),
                chunk_rows,
                |r| {
                    index
                        .text_vectors(r)
                        .map(|c| c.into_owned())
                        .unwrap_or_default()
                },
                &device,
            )
        });
        Ok(Self {
            encoder,
            index,
            images,
            texts,
            reranker: None,
            options,
            device,
        })
    }

    /// Plugs in a second stage that re-sorts the first `options.rerank_depth` candidates.
    pub fn with_reranker(mut self, reranker: Arc<dyn Reranker>) -> Self {
        self.reranker = Some(reranker);
        self
    }

    pub fn index(&self) -> &StoredIndex {
        &self.index
    }

    pub fn encoder(&self) -> &QueryEncoder<B> {
        &self.encoder
    }

    /// Answers `query` with its best `k` results.
    pub fn search(&self, query: &Query, k: usize) -> Result<SearchResponse, RetrievalError> {
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
                if !self.index.has_texts() {
                    return Err(RetrievalError::NoTexts);
                }
                let row = self
                    .index
                    .image_row(id)
                    .ok_or_else(|| RetrievalError::UnknownImage(id.clone()))?;
                (
                    self.index.image_vectors(row..row + 1).into_owned(),
                    Vec::new(),
                )
            }
        };
        let encoded = Instant::now();
        let hits = match query {
            Query::Text(_) => self.image_candidates(&vector, depth)?,
            Query::Image(_) => match &self.texts {
                Some(t) => t.search(&vector, depth).pop().unwrap_or_default(),
                None => return Err(RetrievalError::NoTexts),
            },
        };
        let searched = Instant::now();
        let ids: Vec<String> = hits
            .iter()
            .map(|h| match query {
                Query::Text(_) => self.index.image_ids()[h.index].clone(),
                Query::Image(_) => self.index.text_ids()[h.index].clone(),
            })
            .collect();
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
            .map(|(i, rerank)| self.decorate(query, &ids[i], hits[i], rerank))
            .collect();
        Ok(SearchResponse {
            results,
            timings_ms: StageTimings {
                encode: ms(encoded - started),
                candidates: ms(searched - encoded),
                rerank: rerank_ms,
                total: ms(started.elapsed()),
            },
            search: match (&self.images, query) {
                (_, Query::Image(_)) | (ImageSearch::Resident(_), _) => "exact",
                (ImageSearch::Streamed, _) => "exact-streamed",
                (ImageSearch::Ann(_), _) => "ann",
            },
            reranker: self.reranker.as_ref().map(|r| r.name().to_string()),
        })
    }

    /// The best `k` captions and the `k` most similar indexed images for an image vector made
    /// outside the index (a search by photo): both by dot product, captions decorated as an
    /// image query's results, images as a text query's (with their captions).
    pub fn nearest_to_image(
        &self,
        vector: &[f32],
        k: usize,
    ) -> Result<(Vec<ResultHit>, Vec<ResultHit>), RetrievalError> {
        check_k(k as i64)?;
        let texts = match &self.texts {
            Some(t) => t.search(vector, k).pop().unwrap_or_default(),
            None => Vec::new(),
        };
        let as_image = Query::Image(String::new());
        let captions = texts
            .iter()
            .map(|h| self.decorate(&as_image, &self.index.text_ids()[h.index], *h, None))
            .collect();
        let as_text = Query::Text(String::new());
        let images = self
            .image_candidates(vector, k)?
            .into_iter()
            .map(|h| self.decorate(&as_text, &self.index.image_ids()[h.index], h, None))
            .collect();
        Ok((captions, images))
    }

    /// The first `depth` image rows for a query vector.
    fn image_candidates(&self, vector: &[f32], depth: usize) -> Result<Vec<Hit>, RetrievalError> {
        Ok(match &self.images {
            ImageSearch::Resident(flat) => flat.search(vector, depth).pop().unwrap_or_default(),
            ImageSearch::Streamed => {
                let src = MappedChunks::<B> {
                    index: &self.index,
                    chunk_rows: self.options.chunk_rows.max(1),
                    device: self.device.clone(),
                };
                search_chunks(&src, vector, depth, &self.device)
                    .pop()
                    .unwrap_or_default()
            }
            ImageSearch::Ann(ann) => {
                // Exact scores for the proposed rows; order and ties as the exact search.
                let mut hits: Vec<Hit> = ann
                    .search(vector, depth)?
                    .into_iter()
                    .map(|h| {
                        let v = self.index.image_vectors(h.index..h.index + 1);
                        Hit {
                            index: h.index,
                            score: v.iter().zip(vector).map(|(a, b)| a * b).sum(),
                        }
                    })
                    .collect();
                hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.index.cmp(&b.index)));
                hits
            }
        })
    }

    fn decorate(&self, query: &Query, id: &str, hit: Hit, rerank: Option<f32>) -> ResultHit {
        let mut r = ResultHit {
            id: id.to_string(),
            score: rerank.unwrap_or(hit.score),
            first_stage_score: rerank.map(|_| hit.score),
            text: None,
            image: None,
            captions: None,
        };
        match query {
            Query::Text(_) => {
                if self.index.has_texts() {
                    r.captions = Some(
                        self.index
                            .image_captions(hit.index)
                            .iter()
                            .map(|c| Caption {
                                id: c.clone(),
                                text: self
                                    .index
                                    .text_row(c)
                                    .and_then(|row| self.index.text_raw(row))
                                    .map(str::to_string),
                            })
                            .collect(),
                    );
                }
            }
            Query::Image(_) => {
                r.text = self.index.text_raw(hit.index).map(str::to_string);
                r.image = self.index.text_image(hit.index).map(str::to_string);
            }
        }
        r
    }
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

    fn summary(&self) -> IndexSummary {
        IndexSummary {
            images: self.index.image_ids().len(),
            texts: self.index.text_ids().len(),
            dim: self.index.dim(),
            ann: matches!(self.images, ImageSearch::Ann(_)),
            reranker: self.reranker.as_ref().map(|r| r.name().to_string()),
        }
    }

    fn has_image(&self, id: &str) -> bool {
        self.index.image_row(id).is_some()
    }
}
