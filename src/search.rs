//! Exact maximum-inner-product search: one matrix product per block of queries and chunk of
//! candidates on the device (so memory stays bounded for any collection size), top-k selected
//! on the host (burn's `topk_with_indices` is much slower on CPU; burn-notes.md).
//! Equivalent to faiss `IndexFlatIP` (spec §7): results best first, ties broken by lower index.

use burn::prelude::*;

/// One search hit: the candidate's row and its score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub index: usize,
    pub score: f32,
}

/// Rows of a candidate matrix, handed to the search one chunk at a time.
///
/// [`FlatIndex`] keeps its chunks resident on the device; an index too large for device memory
/// can implement this by uploading each chunk from host memory (e.g. a memory-mapped file) when
/// asked, so that a search never holds more than one chunk and one score block.
pub trait VectorChunks<B: Backend> {
    /// Vector size.
    fn dim(&self) -> usize;
    /// Number of chunks.
    fn chunk_count(&self) -> usize;
    /// Most rows any chunk has (sizes the query blocks).
    fn max_chunk_rows(&self) -> usize;
    /// Chunk `i`: the row number of its first vector and its vectors `[rows, dim]` on the device.
    fn chunk(&self, i: usize) -> (usize, Tensor<B, 2>);
}

/// A candidate matrix resident on the device, split into row chunks of at most
/// [`DEFAULT_CHUNK_ROWS`] so that the `[queries, chunk]` score block stays bounded.
pub struct FlatIndex<B: Backend> {
    /// Row chunks `[rows, d]` and the row of each one's first vector.
    chunks: Vec<(usize, Tensor<B, 2>)>,
    max_rows: usize,
    len: usize,
    dim: usize,
}

/// Scores kept per matrix product (`queries x chunk rows`): 64 MiB of f32.
const SCORE_BLOCK: usize = 1 << 24;
/// Rows per resident chunk (131,072 rows: all of full MSCOCO's 123,287 images in one).
pub const DEFAULT_CHUNK_ROWS: usize = 1 << 17;

impl<B: Backend> FlatIndex<B> {
    /// Builds an index over `n` row-major vectors of size `dim`.
    pub fn new(vectors: &[f32], dim: usize, device: &B::Device) -> Self {
        Self::with_chunk_rows(vectors, dim, DEFAULT_CHUNK_ROWS, device)
    }

    /// Like [`FlatIndex::new`] with at most `chunk_rows` vectors per device chunk.
    pub fn with_chunk_rows(
        vectors: &[f32],
        dim: usize,
        chunk_rows: usize,
        device: &B::Device,
    ) -> Self {
        let step = chunk_rows.max(1) * dim.max(1);
        Self::from_chunks(
            dim,
            vectors.chunks(step).map(std::borrow::Cow::Borrowed),
            device,
        )
    }

    /// Builds an index from consecutive row-major chunks (each a whole number of rows), e.g.
    /// converted on the fly from f16 storage; each becomes one device chunk.
    pub fn from_chunks<'a>(
        dim: usize,
        chunks: impl IntoIterator<Item = std::borrow::Cow<'a, [f32]>>,
        device: &B::Device,
    ) -> Self {
        let mut out = Vec::new();
        let (mut len, mut max_rows) = (0, 0);
        for c in chunks {
            let rows = c.len().checked_div(dim).unwrap_or(0);
            if rows == 0 {
                continue;
            }
            let values = c.into_owned();
            let n = values.len();
            let t = Tensor::<B, 1>::from_data(TensorData::new(values, [n]), device)
                .reshape([rows, dim]);
            out.push((len, t));
            len += rows;
            max_rows = max_rows.max(rows);
        }
        Self {
            chunks: out,
            max_rows,
            len,
            dim,
        }
    }

    /// Number of indexed vectors.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Vector size.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The best `k` candidates of each query (`queries` row-major `[q, dim]`).
    pub fn search(&self, queries: &[f32], k: usize) -> Vec<Vec<Hit>> {
        match self.chunks.first() {
            Some((_, t)) => search_chunks(self, queries, k, &t.device()),
            None => vec![Vec::new(); queries.len().checked_div(self.dim).unwrap_or(0)],
        }
    }
}

impl<B: Backend> VectorChunks<B> for FlatIndex<B> {
    fn dim(&self) -> usize {
        self.dim
    }

    fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    fn max_chunk_rows(&self) -> usize {
        self.max_rows
    }

    fn chunk(&self, i: usize) -> (usize, Tensor<B, 2>) {
        let (offset, t) = &self.chunks[i];
        (*offset, t.clone())
    }
}

/// Exact search over any [`VectorChunks`]: for each chunk (fetched once), one matrix product
/// per block of queries, top-k of each score row on the host, merged into each query's running
/// top-k. Memory beyond the chunk: one `[query block, chunk rows]` score block of at most
/// 2^24 floats, and `k` hits per query.
pub fn search_chunks<B: Backend, S: VectorChunks<B> + ?Sized>(
    source: &S,
    queries: &[f32],
    k: usize,
    device: &B::Device,
) -> Vec<Vec<Hit>> {
    let dim = source.dim();
    let nq = queries.len().checked_div(dim).unwrap_or(0);
    let mut out: Vec<Vec<Hit>> = vec![Vec::new(); nq];
    if nq == 0 || k == 0 {
        return out;
    }
    let block = (SCORE_BLOCK / source.max_chunk_rows().max(1)).clamp(1, 4096);
    let q_tensors: Vec<(usize, Tensor<B, 2>)> = (0..nq)
        .step_by(block)
        .map(|start| {
            let end = (start + block).min(nq);
            let q = &queries[start * dim..end * dim];
            let t = Tensor::<B, 1>::from_data(TensorData::new(q.to_vec(), [q.len()]), device)
                .reshape([end - start, dim]);
            (start, t)
        })
        .collect();
    for c in 0..source.chunk_count() {
        let (offset, rows) = source.chunk(c);
        let n = rows.dims()[0];
        let rows_t = rows.transpose();
        for (start, qt) in &q_tensors {
            let scores: Vec<f32> = qt
                .clone()
                .matmul(rows_t.clone())
                .into_data()
                .convert::<f32>()
                .into_vec()
                .unwrap_or_default();
            for (i, row) in scores.chunks(n.max(1)).enumerate() {
                let mut hits = top_k(row, k);
                for h in &mut hits {
                    h.index += offset;
                }
                let acc = &mut out[start + i];
                if acc.is_empty() {
                    *acc = hits;
                } else {
                    acc.extend(hits);
                    acc.sort_by(better);
                    acc.truncate(k);
                }
            }
        }
    }
    out
}

/// Best first; equal scores keep the lower index first.
fn better(a: &Hit, b: &Hit) -> std::cmp::Ordering {
    b.score.total_cmp(&a.score).then(a.index.cmp(&b.index))
}

/// The `k` largest scores of one row, best first; equal scores keep the lower index first.
pub fn top_k(scores: &[f32], k: usize) -> Vec<Hit> {
    let k = k.min(scores.len());
    if k == 0 {
        return Vec::new();
    }
    let mut hits: Vec<Hit> = scores
        .iter()
        .enumerate()
        .map(|(index, &score)| Hit { index, score })
        .collect();
    if k < hits.len() {
        hits.select_nth_unstable_by(k - 1, better);
        hits.truncate(k);
    }
    hits.sort_by(better);
    hits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_and_breaks_ties_by_index() {
        let hits = top_k(&[0.5, 2.0, 2.0, -1.0, 3.0], 3);
        let idx: Vec<usize> = hits.iter().map(|h| h.index).collect();
        assert_eq!(idx, vec![4, 1, 2]);
        assert_eq!(top_k(&[1.0], 5).len(), 1);
        assert!(top_k(&[], 5).is_empty());
    }

    #[test]
    fn flat_index_matches_brute_force() {
        type B = crate::device::CpuBackend;
        let dim = 3;
        let db: Vec<f32> = (0..30).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
        let q: Vec<f32> = vec![1.0, 0.5, -1.0, 0.0, 1.0, 2.0];
        let index = FlatIndex::<B>::new(&db, dim, &Default::default());
        let res = index.search(&q, 4);
        for (qi, hits) in res.iter().enumerate() {
            let scores: Vec<f32> = db
                .chunks(dim)
                .map(|v| {
                    v.iter()
                        .zip(&q[qi * dim..(qi + 1) * dim])
                        .map(|(a, b)| a * b)
                        .sum()
                })
                .collect();
            assert_eq!(hits, &top_k(&scores, 4));
        }
    }

    #[test]
    fn chunked_index_equals_one_chunk() {
        type B = crate::device::CpuBackend;
        let dim = 4;
        // Repeated rows make ties, which must still come out lowest index first.
        let db: Vec<f32> = (0..400).map(|i| ((i * 13) % 17) as f32 - 8.0).collect();
        let q: Vec<f32> = (0..12).map(|i| ((i * 5) % 7) as f32 - 3.0).collect();
        let device = Default::default();
        let whole = FlatIndex::<B>::new(&db, dim, &device).search(&q, 7);
        for rows in [1, 3, 10, 33, 100] {
            let chunked = FlatIndex::<B>::with_chunk_rows(&db, dim, rows, &device);
            assert_eq!(chunked.len(), 100);
            assert_eq!(chunked.search(&q, 7), whole, "chunk rows {rows}");
        }
        assert_eq!(whole.len(), 3);
        assert!(FlatIndex::<B>::new(&[], dim, &device).search(&q, 3)[0].is_empty());
    }
}
