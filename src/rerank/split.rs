//! Re-ranking a whole evaluation split: the bi-encoder's top-K per query, then the cross-encoder
//! on exactly the pairs those lists need (each pair scored once), then recall per K; and the
//! UNITER-only baseline that scores every (caption, image) pair.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use burn::prelude::*;

use super::RerankError;
use super::recall::{SplitIds, full_ranking_recall, rerank_recall};
use super::scorer::CrossEncoder;
use crate::data::{ImgDb, ItmEvalDataset, TxtDb};
use crate::eval::{SplitEmbeddings, SplitRecall};
use crate::progress::bar;
use crate::search::FlatIndex;

/// The captions of a split with their token ids, and its unique images.
#[derive(Debug, Clone)]
pub struct SplitPairs {
    /// Captions in dataset (id2len) order.
    pub txt_ids: Vec<String>,
    /// `[CLS] w… [SEP]` of each caption.
    pub tokens: Vec<Vec<u32>>,
    /// Unique images in first-occurrence order.
    pub img_ids: Vec<String>,
    /// Caption id → image name.
    pub txt2img: HashMap<String, String>,
}

impl SplitPairs {
    /// Reads every caption of `txt_db` (the same item list as [`crate::eval::embed_split`]).
    pub fn new(txt_db: &TxtDb, img_db: &ImgDb) -> Result<Self, RerankError> {
        let ds = ItmEvalDataset::new(txt_db, img_db)?;
        Ok(Self {
            txt_ids: ds.items().iter().map(|it| it.txt_id.clone()).collect(),
            tokens: ds.items().iter().map(|it| it.input_ids.clone()).collect(),
            img_ids: ds.unique_images().to_vec(),
            txt2img: ds
                .items()
                .iter()
                .map(|it| (it.txt_id.clone(), it.img_fname.clone()))
                .collect(),
        })
    }

    pub fn ids(&self) -> SplitIds<'_> {
        SplitIds {
            txt_ids: &self.txt_ids,
            img_ids: &self.img_ids,
            txt2img: &self.txt2img,
        }
    }
}

/// The bi-encoder's ranked candidates, as indices into [`SplitPairs`]' id lists.
#[derive(Debug, Clone, Default)]
pub struct FirstStage {
    /// Per caption: image indices, best first.
    pub text_query: Vec<Vec<usize>>,
    /// Per image: caption indices, best first.
    pub image_query: Vec<Vec<usize>>,
}

/// Exact top-`depth` search both ways over a split's embeddings (rerank.py's faiss step).
pub fn first_stage<B: Backend>(
    emb: &SplitEmbeddings,
    depth: usize,
    device: &B::Device,
) -> FirstStage {
    let idx = |hits: Vec<Vec<crate::search::Hit>>| {
        hits.into_iter()
            .map(|h| h.into_iter().map(|h| h.index).collect())
            .collect()
    };
    let img_index = FlatIndex::<B>::new(&emb.img, emb.dim, device);
    let text_query = idx(img_index.search(&emb.txt, depth));
    drop(img_index);
    let txt_index = FlatIndex::<B>::new(&emb.txt, emb.dim, device);
    let image_query = idx(txt_index.search(&emb.img, depth));
    FirstStage {
        text_query,
        image_query,
    }
}

/// Scores `(caption, image)` pairs grouped by image: each image is read from the db once and
/// scored against its captions in batches. `sink(caption, image, score)` receives every score.
/// Returns the number of pairs scored.
pub fn score_by_image<B: Backend>(
    cross: &CrossEncoder<B>,
    split: &SplitPairs,
    img_db: &ImgDb,
    groups: &BTreeMap<usize, Vec<usize>>,
    mut sink: impl FnMut(usize, usize, f32),
) -> Result<usize, RerankError> {
    let total: usize = groups.values().map(Vec::len).sum();
    let pb = bar(total, "pairs");
    for (&img, txts) in groups {
        let regions = img_db.get(&split.img_ids[img])?;
        let texts: Vec<&[u32]> = txts.iter().map(|&t| split.tokens[t].as_slice()).collect();
        let scores = cross.score_image(&regions, &texts)?;
        for (&t, s) in txts.iter().zip(scores) {
            sink(t, img, s);
        }
        pb.inc(txts.len() as u64);
    }
    pb.finish_and_clear();
    Ok(total)
}

/// Recall per K after re-ranking, and what it cost.
#[derive(Debug, Clone)]
pub struct RerankOutcome {
    /// `(K, recall)` in increasing K.
    pub per_k: Vec<(usize, SplitRecall)>,
    /// Distinct pairs the cross-encoder scored.
    pub pairs: usize,
    /// Wall time of the cross-encoder part.
    pub seconds: f64,
}

/// Re-ranks the first stage of `emb` for every K of `ks` (rerank.py, spec §8). The pairs of the
/// largest K cover every smaller one, so each pair is scored once.
pub fn rerank_split<B: Backend>(
    cross: &CrossEncoder<B>,
    emb: &SplitEmbeddings,
    split: &SplitPairs,
    img_db: &ImgDb,
    ks: &[usize],
    device: &B::Device,
) -> Result<RerankOutcome, RerankError> {
    if emb.txt_ids != split.txt_ids || emb.img_ids != split.img_ids {
        return Err(RerankError::Input(
            "embeddings and caption list come from different splits".into(),
        ));
    }
    let ks: BTreeSet<usize> = ks.iter().copied().collect();
    let Some(&depth) = ks.last() else {
        return Ok(RerankOutcome {
            per_k: Vec::new(),
            pairs: 0,
            seconds: 0.0,
        });
    };
    let stage = first_stage::<B>(emb, depth, device);
    let mut groups: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
    for (t, imgs) in stage.text_query.iter().enumerate() {
        for &i in imgs {
            groups.entry(i).or_default().insert(t);
        }
    }
    for (i, txts) in stage.image_query.iter().enumerate() {
        groups.entry(i).or_default().extend(txts.iter().copied());
    }
    let groups: BTreeMap<usize, Vec<usize>> = groups
        .into_iter()
        .map(|(i, t)| (i, t.into_iter().collect()))
        .collect();
    let started = Instant::now();
    let mut scores: HashMap<(usize, usize), f32> = HashMap::new();
    let pairs = score_by_image(cross, split, img_db, &groups, |t, i, s| {
        scores.insert((t, i), s);
    })?;
    let seconds = started.elapsed().as_secs_f64();
    // Every pair a list needs was scored above; NaN would only mark a bug.
    let score = |t: usize, i: usize| scores.get(&(t, i)).copied().unwrap_or(f32::NAN);
    let per_k = ks
        .iter()
        .map(|&k| {
            (
                k,
                rerank_recall(split.ids(), &stage.text_query, &stage.image_query, score, k),
            )
        })
        .collect();
    Ok(RerankOutcome {
        per_k,
        pairs,
        seconds,
    })
}

/// The cross-encoder's score of every pair of a split and the recall of ranking by it alone.
#[derive(Debug, Clone)]
pub struct UniterOnly {
    /// `[n_txt, n_img]` row-major, rows/columns in [`SplitPairs`] order.
    pub scores: Vec<f32>,
    pub recall: SplitRecall,
    pub seconds: f64,
}

/// Scores every (caption, image) pair of the split (UNITER's `inf_itm.py`) and ranks by it.
pub fn uniter_only<B: Backend>(
    cross: &CrossEncoder<B>,
    split: &SplitPairs,
    img_db: &ImgDb,
) -> Result<UniterOnly, RerankError> {
    let (nt, ni) = (split.txt_ids.len(), split.img_ids.len());
    let groups: BTreeMap<usize, Vec<usize>> = (0..ni).map(|i| (i, (0..nt).collect())).collect();
    let started = Instant::now();
    let mut scores = vec![0f32; nt * ni];
    score_by_image(cross, split, img_db, &groups, |t, i, s| {
        scores[t * ni + i] = s;
    })?;
    let seconds = started.elapsed().as_secs_f64();
    let recall = full_ranking_recall(split.ids(), &scores);
    Ok(UniterOnly {
        scores,
        recall,
        seconds,
    })
}
