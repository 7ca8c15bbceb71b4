//! Approximate search for collections too large for an exact scan per query: an HNSW graph
//! from usearch (inner-product metric, key = index row), built once by `index --ann` and
//! memory-mapped when searched.
//!
//! The graph only proposes candidates: the pipeline rescores them with the stored vectors, so
//! the scores it reports are exact dot products and only recall is approximate
//! (`cargo bench --bench retrieval` measures recall@10 against exact search).

use std::path::Path;

use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

use super::RetrievalError;
use super::format::{AnnInfo, VectorDtype};
use crate::search::Hit;

/// An HNSW graph over index rows.
pub struct AnnIndex {
    inner: Index,
}

impl std::fmt::Debug for AnnIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnnIndex")
            .field("size", &self.inner.size())
            .field("dim", &self.inner.dimensions())
            .finish()
    }
}

fn ann_err(e: impl std::fmt::Display) -> RetrievalError {
    RetrievalError::Ann(e.to_string())
}

impl AnnIndex {
    /// Builds the graph over row-major `vectors` `[n, dim]` with `threads` threads;
    /// `progress` is called with the number of rows added so far.
    pub fn build(
        vectors: &[f32],
        dim: usize,
        dtype: VectorDtype,
        params: AnnInfo,
        threads: usize,
        progress: &(dyn Fn(usize) + Sync),
    ) -> Result<Self, RetrievalError> {
        let n = vectors.len().checked_div(dim).unwrap_or(0);
        let options = IndexOptions {
            dimensions: dim,
            metric: MetricKind::IP,
            quantization: match dtype {
                VectorDtype::F32 => ScalarKind::F32,
                VectorDtype::F16 => ScalarKind::F16,
            },
            connectivity: params.connectivity,
            expansion_add: params.expansion_add,
            expansion_search: params.expansion_search,
            multi: false,
        };
        let inner = Index::new(&options).map_err(ann_err)?;
        let threads = threads.clamp(1, 64);
        inner
            .reserve_capacity_and_threads(n, threads)
            .map_err(ann_err)?;
        let done = std::sync::atomic::AtomicUsize::new(0);
        let per = n.div_ceil(threads).max(1);
        std::thread::scope(|s| -> Result<(), RetrievalError> {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let (inner, done) = (&inner, &done);
                    s.spawn(move || -> Result<(), RetrievalError> {
                        let rows = (t * per).min(n)..((t + 1) * per).min(n);
                        for (i, row) in rows.clone().enumerate() {
                            inner
                                .add(row as u64, &vectors[row * dim..(row + 1) * dim])
                                .map_err(ann_err)?;
                            if i % 256 == 255 || row + 1 == rows.end {
                                let added = (i % 256) + 1;
                                let total = done
                                    .fetch_add(added, std::sync::atomic::Ordering::Relaxed)
                                    + added;
                                progress(total);
                            }
                        }
                        Ok(())
                    })
                })
                .collect();
            for h in handles {
                h.join()
                    .map_err(|_| RetrievalError::Ann("a build thread panicked".into()))??;
            }
            Ok(())
        })?;
        Ok(Self { inner })
    }

    /// Writes the graph (with its vectors) to `path`.
    pub fn save(&self, path: &Path) -> Result<(), RetrievalError> {
        self.inner
            .save(&path.to_string_lossy())
            .map_err(|e| RetrievalError::io(path, e))
    }

    /// Memory-maps a graph written by [`AnnIndex::save`]; `expansion_search` overrides the
    /// stored search width when given. With `crc32` (index.json's record of the file) the
    /// file is checked first: usearch trusts its neighbour lists, so damage would crash it.
    pub fn open(
        path: &Path,
        dim: usize,
        expansion_search: Option<usize>,
        crc32: Option<u32>,
    ) -> Result<Self, RetrievalError> {
        if !path.is_file() {
            return Err(RetrievalError::io(path, "HNSW graph file is missing"));
        }
        if let Some(want) = crc32 {
            let got = super::format::file_crc32(path)?;
            if got != want {
                return Err(RetrievalError::io(
                    path,
                    format!(
                        "HNSW graph is damaged (CRC-32 {got:08x}, index.json records \
                         {want:08x}); rebuild it with `lightningdot index --ann`"
                    ),
                ));
            }
        }
        let inner = Index::restore_view(&path.to_string_lossy())
            .map_err(|e| RetrievalError::io(path, e))?;
        if inner.dimensions() != dim {
            return Err(RetrievalError::io(
                path,
                format!(
                    "HNSW graph has {} dimensions, the index {dim}",
                    inner.dimensions()
                ),
            ));
        }
        if let Some(ef) = expansion_search {
            inner.change_expansion_search(ef.max(1));
        }
        Ok(Self { inner })
    }

    /// Number of vectors in the graph.
    pub fn len(&self) -> usize {
        self.inner.size()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Current search width (`efSearch`).
    pub fn expansion_search(&self) -> usize {
        self.inner.expansion_search()
    }

    /// Sets the search width (`efSearch`); larger is slower and closer to exact.
    pub fn set_expansion_search(&self, ef: usize) {
        self.inner.change_expansion_search(ef.max(1));
    }

    /// About `k` best rows for `query`, best first; scores are the graph's inner products.
    pub fn search(&self, query: &[f32], k: usize) -> Result<Vec<Hit>, RetrievalError> {
        let m = self.inner.search(query, k).map_err(ann_err)?;
        Ok(m.keys
            .iter()
            .zip(&m.distances)
            .map(|(&key, &d)| Hit {
                index: key as usize,
                score: 1.0 - d,
            })
            .collect())
    }
}
