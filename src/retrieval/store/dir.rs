//! The index directory as a store: exact search with the vectors resident on the device or
//! streamed from the memory-mapped file, or the HNSW graph with exact rescoring.

use burn::prelude::*;

use super::{StoreCounts, StoreHealth, VectorStore};
use crate::retrieval::RetrievalError;
use crate::retrieval::ann::AnnIndex;
use crate::retrieval::format::{IndexMeta, StoredIndex};
use crate::retrieval::pipeline::{CandidateMode, Caption, PipelineOptions, Query, ResultHit};
use crate::search::{FlatIndex, Hit, VectorChunks, search_chunks};

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

/// An index directory opened for search on device `B`.
pub struct DirStore<B: Backend> {
    index: StoredIndex,
    images: ImageSearch<B>,
    texts: Option<FlatIndex<B>>,
    chunk_rows: usize,
    device: B::Device,
}

impl<B: Backend> DirStore<B> {
    /// Loads the vectors for searching (onto the device unless streamed; the HNSW graph for
    /// [`CandidateMode::Ann`]).
    pub fn open(
        index: StoredIndex,
        options: &PipelineOptions,
        device: B::Device,
    ) -> Result<Self, RetrievalError> {
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
            index,
            images,
            texts,
            chunk_rows,
            device,
        })
    }

    /// The first `depth` image rows for a query vector.
    fn image_candidates(&self, vector: &[f32], depth: usize) -> Result<Vec<Hit>, RetrievalError> {
        Ok(match &self.images {
            ImageSearch::Resident(flat) => flat.search(vector, depth).pop().unwrap_or_default(),
            ImageSearch::Streamed => {
                let src = MappedChunks::<B> {
                    index: &self.index,
                    chunk_rows: self.chunk_rows,
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
}

/// Filters need stored fields to test; a directory keeps none.
fn no_filter(filter: Option<&str>) -> Result<(), RetrievalError> {
    match filter {
        Some(_) => Err(RetrievalError::BadRequest(
            "filters need a Milvus store (--store milvus://…); an index directory has no fields to filter on"
                .into(),
        )),
        None => Ok(()),
    }
}

impl<B: Backend> VectorStore for DirStore<B> {
    fn meta(&self) -> &IndexMeta {
        self.index.meta()
    }

    fn counts(&self) -> StoreCounts {
        StoreCounts {
            images: self.index.image_ids().len(),
            texts: self.index.text_ids().len(),
            dim: self.index.dim(),
            ann: matches!(self.images, ImageSearch::Ann(_)),
        }
    }

    fn has_texts(&self) -> bool {
        self.index.has_texts()
    }

    fn method(&self, query: &Query) -> &'static str {
        match (&self.images, query) {
            (_, Query::Image(_)) | (ImageSearch::Resident(_), _) => "exact",
            (ImageSearch::Streamed, _) => "exact-streamed",
            (ImageSearch::Ann(_), _) => "ann",
        }
    }

    fn image_vector(&self, id: &str) -> Result<Vec<f32>, RetrievalError> {
        let row = self
            .index
            .image_row(id)
            .ok_or_else(|| RetrievalError::UnknownImage(id.to_string()))?;
        Ok(self.index.image_vectors(row..row + 1).into_owned())
    }

    fn has_image(&self, id: &str) -> bool {
        self.index.image_row(id).is_some()
    }

    fn search_images(
        &self,
        vector: &[f32],
        k: usize,
        filter: Option<&str>,
    ) -> Result<Vec<ResultHit>, RetrievalError> {
        no_filter(filter)?;
        let index = &self.index;
        Ok(self
            .image_candidates(vector, k)?
            .into_iter()
            .map(|hit| {
                let captions = index.has_texts().then(|| {
                    index
                        .image_captions(hit.index)
                        .iter()
                        .map(|c| Caption {
                            id: c.clone(),
                            text: index
                                .text_row(c)
                                .and_then(|row| index.text_raw(row))
                                .map(str::to_string),
                        })
                        .collect()
                });
                ResultHit::image(index.image_ids()[hit.index].clone(), hit.score, captions)
            })
            .collect())
    }

    fn search_texts(
        &self,
        vector: &[f32],
        k: usize,
        filter: Option<&str>,
    ) -> Result<Vec<ResultHit>, RetrievalError> {
        no_filter(filter)?;
        let texts = self.texts.as_ref().ok_or(RetrievalError::NoTexts)?;
        let index = &self.index;
        Ok(texts
            .search(vector, k)
            .pop()
            .unwrap_or_default()
            .into_iter()
            .map(|hit| {
                ResultHit::caption(
                    index.text_ids()[hit.index].clone(),
                    hit.score,
                    index.text_raw(hit.index).map(str::to_string),
                    index.text_image(hit.index).map(str::to_string),
                )
            })
            .collect())
    }

    fn health(&self) -> StoreHealth {
        StoreHealth::ok("directory")
    }

    fn local_index(&self) -> Option<&StoredIndex> {
        Some(&self.index)
    }
}
