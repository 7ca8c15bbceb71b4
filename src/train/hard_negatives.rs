//! Hard-negative mining (spec §5, the reference's `dvl/hn.py::sampled_hard_negatives`).
//!
//! With the current weights, every caption and every unique image of each train db pair is
//! encoded, and an exact inner-product search finds each caption's top images and each image's
//! top captions (`min(max(2k + 10, 50), 1000)` candidates, within the same db pair as the
//! reference). Positives are removed — the caption's own image, the image's ground-truth
//! captions — and `k` negatives are drawn from what remains according to
//! [`Sampling`]. Draws come from a generator seeded by `(seed, epoch)`, so a resumed run mines
//! the same negatives as an uninterrupted one.

use std::collections::{HashMap, HashSet};

use burn::prelude::*;

use super::TrainError;
use super::config::Sampling;
use super::data::{HardNegatives, STREAM_NEGATIVES, SplitMix64, TrainSet};
use crate::encode::{Progress, encode_images_by_size, encode_texts_by_length};
use crate::model::BiEncoder;
use crate::search::FlatIndex;

/// How many top candidates are searched for `k` negatives (the reference's formula).
pub fn candidates_for(k: usize) -> usize {
    (2 * k + 10).clamp(50, 1000)
}

/// Picks `k` of the ranked `candidates` (best first, positives already removed).
pub fn pick<T: Copy>(
    candidates: &[T],
    k: usize,
    sampling: Sampling,
    rng: &mut SplitMix64,
) -> Result<Vec<T>, String> {
    let sample = |pool: &[T], n: usize, rng: &mut SplitMix64| -> Result<Vec<T>, String> {
        if pool.len() < n {
            return Err(format!(
                "{n} negative(s) wanted but only {} candidate(s) left",
                pool.len()
            ));
        }
        let mut idx: Vec<usize> = (0..pool.len()).collect();
        // Partial Fisher–Yates: the first n slots are a uniform sample without replacement.
        for i in 0..n {
            let j = i + rng.below(pool.len() - i);
            idx.swap(i, j);
        }
        Ok(idx[..n].iter().map(|&i| pool[i]).collect())
    };
    match sampling {
        Sampling::None => Ok(Vec::new()),
        Sampling::Random => sample(candidates, k, rng),
        Sampling::Top => {
            if candidates.len() < k {
                return Err(format!(
                    "{k} negative(s) wanted but only {} candidate(s) left",
                    candidates.len()
                ));
            }
            Ok(candidates[..k].to_vec())
        }
        Sampling::TopRandom => {
            let top = k.div_ceil(2);
            if candidates.len() < k {
                return Err(format!(
                    "{k} negative(s) wanted but only {} candidate(s) left",
                    candidates.len()
                ));
            }
            let mut out = candidates[..top].to_vec();
            out.extend(sample(&candidates[top..], k - top, rng)?);
            Ok(out)
        }
        Sampling::Rank10To20 | Sampling::Rank20To30 => {
            let start = if sampling == Sampling::Rank10To20 {
                10
            } else {
                20
            };
            let end = (start + 10).min(candidates.len());
            if end <= start {
                return Err(format!(
                    "sampling {sampling} needs at least {} candidates, only {} left",
                    start + 1,
                    candidates.len()
                ));
            }
            sample(&candidates[start..end], k, rng)
        }
    }
}

/// What to mine.
#[derive(Debug, Clone, Copy)]
pub struct MiningSettings {
    /// Negatives per caption and per image.
    pub k: usize,
    pub sampling: Sampling,
    pub seed: u64,
    /// The epoch that will train with these negatives (1-based).
    pub epoch: usize,
    /// Encoding batch size.
    pub batch_size: usize,
}

/// Mines the negatives of `m.epoch` with `model` (inference backend, no dropout).
pub fn mine<B: Backend>(
    model: &BiEncoder<B>,
    set: &TrainSet,
    m: &MiningSettings,
    device: &B::Device,
) -> Result<HardNegatives, TrainError> {
    let (k, sampling, batch_size) = (m.k, m.sampling, m.batch_size);
    let items = set.items();
    let mut out = HardNegatives {
        images: vec![Vec::new(); items.len()],
        texts: Vec::with_capacity(set.num_dbs()),
    };
    let n_cand = candidates_for(k);
    let mut rng = SplitMix64::new(m.seed, STREAM_NEGATIVES, m.epoch as u64);
    for db in 0..set.num_dbs() {
        let range = set.range(db);
        let (images, captions) = set.images_of(db);
        let texts: Vec<&[u32]> = range
            .clone()
            .map(|i| items[i].input_ids.as_slice())
            .collect();
        let (txt_vecs, dim) =
            encode_texts_by_length(model, &texts, batch_size, Progress::Hidden, device);
        let (img_vecs, _) = encode_images_by_size(
            model,
            set.img_db(db),
            &images,
            batch_size,
            Progress::Hidden,
            device,
        )?;
        let img_pos: HashMap<&str, usize> = images
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i))
            .collect();

        // Caption queries → images.
        let img_index = FlatIndex::<B>::new(&img_vecs, dim, device);
        let hits = img_index.search(&txt_vecs, (n_cand + 1).min(images.len()));
        for (row, item) in range.clone().enumerate() {
            let own = img_pos[items[item].img.as_str()];
            let ranked: Vec<usize> = hits[row]
                .iter()
                .map(|h| h.index)
                .filter(|&i| i != own)
                .take(n_cand)
                .collect();
            let chosen = pick(&ranked, k, sampling, &mut rng).map_err(|e| {
                TrainError::HardNegatives(format!(
                    "caption {} of {}: {e} (the db has {} images)",
                    items[item].txt_id,
                    set.img_db(db).dir().display(),
                    images.len()
                ))
            })?;
            out.images[item] = chosen.into_iter().map(|i| images[i].clone()).collect();
        }

        // Image queries → captions.
        let txt_index = FlatIndex::<B>::new(&txt_vecs, dim, device);
        let max_gt = captions.values().map(Vec::len).max().unwrap_or(0);
        let hits = txt_index.search(&img_vecs, (n_cand + max_gt).min(texts.len()));
        let mut by_image = HashMap::with_capacity(images.len());
        for (i, img) in images.iter().enumerate() {
            let gt: HashSet<usize> = captions[img].iter().copied().collect();
            let ranked: Vec<usize> = hits[i]
                .iter()
                .map(|h| range.start + h.index)
                .filter(|t| !gt.contains(t))
                .take(n_cand)
                .collect();
            let chosen = pick(&ranked, k, sampling, &mut rng).map_err(|e| {
                TrainError::HardNegatives(format!(
                    "image {img} of {}: {e} (the db has {} captions)",
                    set.img_db(db).dir().display(),
                    texts.len()
                ))
            })?;
            by_image.insert(img.clone(), chosen);
        }
        out.texts.push(by_image);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_modes_pick_from_their_ranks() {
        let c: Vec<usize> = (0..50).collect();
        let mut rng = SplitMix64::new(1, 2, 3);
        assert_eq!(pick(&c, 3, Sampling::Top, &mut rng).unwrap(), vec![0, 1, 2]);
        let tr = pick(&c, 4, Sampling::TopRandom, &mut rng).unwrap();
        assert_eq!(&tr[..2], &[0, 1]);
        assert!(tr[2..].iter().all(|&x| x >= 2));
        let r = pick(&c, 5, Sampling::Rank10To20, &mut rng).unwrap();
        assert!(r.iter().all(|&x| (10..20).contains(&x)));
        let r = pick(&c, 5, Sampling::Rank20To30, &mut rng).unwrap();
        assert!(r.iter().all(|&x| (20..30).contains(&x)));
        let mut r = pick(&c, 10, Sampling::Random, &mut rng).unwrap();
        r.sort();
        r.dedup();
        assert_eq!(r.len(), 10);
        assert!(pick(&c[..3], 5, Sampling::Random, &mut rng).is_err());
        assert_eq!(candidates_for(1), 50);
        assert_eq!(candidates_for(30), 70);
    }
}
