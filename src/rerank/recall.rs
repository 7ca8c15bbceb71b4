//! Recall after re-ranking (LightningDOT rerank.py, spec §8) and of UNITER-only ranking, with
//! the hit rules of [`crate::eval::recall`].
//!
//! rerank.py, for each K: take a query's first-stage top-K, sort them by the cross-encoder score
//! alone (no interpolation with the dot product), keep the best 10, count hits@1/5/10.
//! Two deliberate differences:
//!
//! * K larger than the collection: faiss pads the candidate list with -1, which rerank.py maps
//!   to the last indexed image, so the same image can fill several of the 10 slots. Here the
//!   list simply stops at the collection size (every image once).
//! * UNITER-only recall: `itm_eval` counts the *row* indices of its `nonzero()` hits too and
//!   inflates image-retrieval recall (fixtures README, "Score matrix"); here a caption's rank
//!   is the position of its image, so recall is what it says.

use std::collections::HashMap;

use crate::eval::recall::{self, SplitRecall};
use crate::search::{Hit, top_k};

/// Results kept per query after re-ranking (rerank.py's `topk(10)`).
pub const KEEP: usize = 10;

/// Ids and ground truth of one split (orders as in [`crate::eval::SplitEmbeddings`]).
#[derive(Debug, Clone, Copy)]
pub struct SplitIds<'a> {
    /// Captions in dataset (id2len) order.
    pub txt_ids: &'a [String],
    /// Unique images in first-occurrence order.
    pub img_ids: &'a [String],
    /// Caption id → image name.
    pub txt2img: &'a HashMap<String, String>,
}

/// `candidates` (best first) re-sorted by `score` (best first; equal scores keep their
/// first-stage order), truncated to `keep`.
pub fn rerank_hits(candidates: &[usize], score: impl Fn(usize) -> f32, keep: usize) -> Vec<Hit> {
    let mut hits: Vec<Hit> = candidates
        .iter()
        .map(|&index| Hit {
            index,
            score: score(index),
        })
        .collect();
    // A stable sort: ties keep the first-stage order.
    hits.sort_by(|a, b| b.score.total_cmp(&a.score));
    hits.truncate(keep);
    hits
}

/// Recall@1/5/10 after re-ranking the first `k` candidates of every query.
/// `text_query[t]`: image indices for caption `t`, best first; `image_query[i]`: caption indices
/// for image `i`; `score(t, i)`: the cross-encoder score of caption `t` with image `i`.
pub fn rerank_recall(
    ids: SplitIds<'_>,
    text_query: &[Vec<usize>],
    image_query: &[Vec<usize>],
    score: impl Fn(usize, usize) -> f32,
    k: usize,
) -> SplitRecall {
    let txt_hits: Vec<Vec<Hit>> = text_query
        .iter()
        .enumerate()
        .map(|(t, c)| rerank_hits(&c[..k.min(c.len())], |i| score(t, i), KEEP))
        .collect();
    let img_hits: Vec<Vec<Hit>> = image_query
        .iter()
        .enumerate()
        .map(|(i, c)| rerank_hits(&c[..k.min(c.len())], |t| score(t, i), KEEP))
        .collect();
    recall::compute(ids.txt_ids, ids.img_ids, ids.txt2img, &txt_hits, &img_hits).0
}

/// Recall of ranking the whole split by the cross-encoder: `scores` is `[n_txt, n_img]`
/// row-major. Ties go to the lower index.
pub fn full_ranking_recall(ids: SplitIds<'_>, scores: &[f32]) -> SplitRecall {
    let (nt, ni) = (ids.txt_ids.len(), ids.img_ids.len());
    let txt_hits: Vec<Vec<Hit>> = (0..nt)
        .map(|t| top_k(&scores[t * ni..(t + 1) * ni], KEEP))
        .collect();
    let img_hits: Vec<Vec<Hit>> = (0..ni)
        .map(|i| {
            let column: Vec<f32> = (0..nt).map(|t| scores[t * ni + i]).collect();
            top_k(&column, KEEP)
        })
        .collect();
    recall::compute(ids.txt_ids, ids.img_ids, ids.txt2img, &txt_hits, &img_hits).0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rerank_sorts_by_score_alone_and_keeps_ties_in_order() {
        let s = [0.0, 5.0, 1.0, 5.0];
        let hits = rerank_hits(&[3, 2, 1, 0], |i| s[i], 3);
        let idx: Vec<usize> = hits.iter().map(|h| h.index).collect();
        assert_eq!(idx, vec![3, 1, 2]);
    }
}
