//! Exact maximum-inner-product search: one matrix product per chunk of queries on the device,
//! top-k selected on the host (burn's `topk_with_indices` is much slower on CPU; burn-notes.md).
//! Equivalent to faiss `IndexFlatIP` (spec §7): results best first, ties broken by lower index.

use burn::prelude::*;

/// One search hit: the candidate's row and its score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub index: usize,
    pub score: f32,
}

/// A candidate matrix resident on the device.
pub struct FlatIndex<B: Backend> {
    /// `[n, d]`.
    vectors: Tensor<B, 2>,
    len: usize,
    dim: usize,
}

/// Queries per matrix product; bounds the `[chunk, n]` score block kept in memory.
const SCORE_BLOCK: usize = 1 << 24;

impl<B: Backend> FlatIndex<B> {
    /// Builds an index over `n` row-major vectors of size `dim`.
    pub fn new(vectors: &[f32], dim: usize, device: &B::Device) -> Self {
        let len = vectors.len().checked_div(dim).unwrap_or(0);
        let t =
            Tensor::<B, 1>::from_data(TensorData::new(vectors.to_vec(), [vectors.len()]), device)
                .reshape([len, dim]);
        Self {
            vectors: t,
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

    /// The best `k` candidates of each query (`queries` row-major `[q, dim]`).
    pub fn search(&self, queries: &[f32], k: usize) -> Vec<Vec<Hit>> {
        let nq = queries.len().checked_div(self.dim).unwrap_or(0);
        let device = self.vectors.device();
        let chunk = (SCORE_BLOCK / self.len.max(1)).clamp(1, 4096);
        let mut out = Vec::with_capacity(nq);
        for start in (0..nq).step_by(chunk) {
            let end = (start + chunk).min(nq);
            let q = &queries[start * self.dim..end * self.dim];
            let qt = Tensor::<B, 1>::from_data(TensorData::new(q.to_vec(), [q.len()]), &device)
                .reshape([end - start, self.dim]);
            let scores: Vec<f32> = qt
                .matmul(self.vectors.clone().transpose())
                .into_data()
                .convert::<f32>()
                .into_vec()
                .unwrap_or_default();
            for row in scores.chunks(self.len.max(1)).take(end - start) {
                out.push(top_k(row, k));
            }
        }
        out
    }
}

/// The `k` largest scores of one row, best first; equal scores keep the lower index first.
pub fn top_k(scores: &[f32], k: usize) -> Vec<Hit> {
    let k = k.min(scores.len());
    if k == 0 {
        return Vec::new();
    }
    let better = |a: &Hit, b: &Hit| b.score.total_cmp(&a.score).then(a.index.cmp(&b.index));
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
}
