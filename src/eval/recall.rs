//! Recall@K both directions with the reference's semantics (spec §7, fixtures README
//! "Evaluation"):
//!
//! * image retrieval = text query → images: a hit when the caption's own image is in the top K;
//!   normalised by the number of captions;
//! * text retrieval = image query → texts (one query per unique image): a hit when ANY of the
//!   image's ground-truth captions is in the top K; normalised by the number of images.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::search::Hit;

/// Cut-offs reported everywhere.
pub const KS: [usize; 3] = [1, 5, 10];

/// Recall@1/5/10 of one direction.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Recall {
    pub r1: f64,
    pub r5: f64,
    pub r10: f64,
}

impl Recall {
    /// Mean of the three cut-offs.
    pub fn mean(&self) -> f64 {
        (self.r1 + self.r5 + self.r10) / 3.0
    }

    fn from_hits(hits: [usize; 3], total: usize) -> Self {
        let f = |h: usize| {
            if total == 0 {
                0.0
            } else {
                h as f64 / total as f64
            }
        };
        Self {
            r1: f(hits[0]),
            r5: f(hits[1]),
            r10: f(hits[2]),
        }
    }
}

/// Both directions on one split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitRecall {
    /// Text query → images.
    pub image_retrieval: Recall,
    /// Image query → texts.
    pub text_retrieval: Recall,
    pub n_texts: usize,
    pub n_images: usize,
}

impl SplitRecall {
    /// `(IR + TR) / 2` averaged over K — the model-selection metric of fine-tuning.
    pub fn mean(&self) -> f64 {
        (self.image_retrieval.mean() + self.text_retrieval.mean()) / 2.0
    }
}

/// Ranked results of a split, by id.
#[derive(Debug, Clone, Default)]
pub struct Rankings {
    /// Per caption id (dataset order): the ranked image ids.
    pub text_query: Vec<(String, Vec<String>)>,
    /// Per image id (first-occurrence order): the ranked caption ids.
    pub image_query: Vec<(String, Vec<String>)>,
}

/// Computes recall from search hits. `txt_hits[i]` ranks images for caption `txt_ids[i]`;
/// `img_hits[j]` ranks captions for image `img_ids[j]`; `txt2img` gives each caption's image.
pub fn compute(
    txt_ids: &[String],
    img_ids: &[String],
    txt2img: &HashMap<String, String>,
    txt_hits: &[Vec<Hit>],
    img_hits: &[Vec<Hit>],
) -> (SplitRecall, Rankings) {
    let mut img2txts: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (t, id) in txt_ids.iter().enumerate() {
        if let Some(img) = txt2img.get(id) {
            img2txts.entry(img.as_str()).or_default().push(t);
        }
    }
    let img_pos: HashMap<&str, usize> = img_ids
        .iter()
        .enumerate()
        .map(|(i, s)| (s.as_str(), i))
        .collect();

    let mut ir = [0usize; 3];
    let mut rankings = Rankings::default();
    for (t, hits) in txt_hits.iter().enumerate() {
        let gt = txt2img
            .get(&txt_ids[t])
            .and_then(|img| img_pos.get(img.as_str()).copied());
        let rank = gt.and_then(|g| hits.iter().position(|h| h.index == g));
        for (slot, k) in KS.iter().enumerate() {
            if rank.is_some_and(|r| r < *k) {
                ir[slot] += 1;
            }
        }
        rankings.text_query.push((
            txt_ids[t].clone(),
            hits.iter().map(|h| img_ids[h.index].clone()).collect(),
        ));
    }

    let mut tr = [0usize; 3];
    for (i, hits) in img_hits.iter().enumerate() {
        let gts = img2txts
            .get(img_ids[i].as_str())
            .cloned()
            .unwrap_or_default();
        let best = hits.iter().position(|h| gts.contains(&h.index));
        for (slot, k) in KS.iter().enumerate() {
            if best.is_some_and(|r| r < *k) {
                tr[slot] += 1;
            }
        }
        rankings.image_query.push((
            img_ids[i].clone(),
            hits.iter().map(|h| txt_ids[h.index].clone()).collect(),
        ));
    }
    (
        SplitRecall {
            image_retrieval: Recall::from_hits(ir, txt_hits.len()),
            text_retrieval: Recall::from_hits(tr, img_hits.len()),
            n_texts: txt_hits.len(),
            n_images: img_hits.len(),
        },
        rankings,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hits(idx: &[usize]) -> Vec<Hit> {
        idx.iter().map(|&index| Hit { index, score: 0.0 }).collect()
    }

    #[test]
    fn recall_uses_reference_normalisation() {
        let txt: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let img: Vec<String> = ["x", "y"].map(String::from).to_vec();
        let t2i: HashMap<String, String> = [("a", "x"), ("b", "x"), ("c", "y")]
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .into();
        // Captions: a finds x first, b finds x second, c finds y second.
        let th = vec![hits(&[0, 1]), hits(&[1, 0]), hits(&[0, 1])];
        // Image x: its captions a/b at ranks 2,3; image y: caption c first.
        let ih = vec![hits(&[2, 0, 1]), hits(&[2, 0, 1])];
        let (r, _) = compute(&txt, &img, &t2i, &th, &ih);
        assert_eq!(r.image_retrieval.r1, 1.0 / 3.0);
        assert_eq!(r.image_retrieval.r5, 1.0);
        assert_eq!(r.text_retrieval.r1, 0.5);
        assert_eq!(r.text_retrieval.r5, 1.0);
        assert_eq!((r.n_texts, r.n_images), (3, 2));
    }
}
