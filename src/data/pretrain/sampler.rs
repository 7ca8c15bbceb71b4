//! Token-budget batching (`uniter_model/data/sampler.py::TokenBucketSampler`, spec §4.5;
//! fixtures README "Task mixture and batching").
//!
//! One epoch: shuffle the item ids, cut them into buckets of `bucket_size`, sort each bucket
//! by length descending (stable), then walk it in chunks of `size_multiple`, closing the open
//! batch when `max_len * (len(batch) + size_multiple) > batch_size`, where `max_len` is the
//! running maximum over the bucket (never reset after a batch is closed). With `droplast` the
//! open batch at the end of EVERY bucket is dropped, even a full one. Finally the batches are
//! shuffled. RNG calls: `shuffle(ids)`, then `shuffle(batches)`; nothing else.

use super::pyrandom::PyRandom;
use crate::data::DataError;

/// `BUCKET_SIZE` of `uniter_model/utils/const.py`.
pub const BUCKET_SIZE: usize = 8192;

/// The sampler's default `size_multiple` (tensor-core friendly batch sizes).
pub const SIZE_MULTIPLE: usize = 8;

/// Batches of item indices whose padded size fits a token budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBucketSampler {
    lens: Vec<usize>,
    bucket_size: usize,
    batch_size: usize,
    size_multiple: usize,
    droplast: bool,
}

impl TokenBucketSampler {
    /// `lens[i]` = length of item `i` (caption word pieces without [CLS]/[SEP] + num_bb);
    /// `batch_size` = max tokens per batch including padding.
    ///
    /// Fails where the reference would fail at iteration time: a zero bucket or chunk size, or
    /// an item so long that one chunk of `size_multiple` such items exceeds `batch_size`
    /// (the reference's "max_tokens too small / max_seq_len too long").
    pub fn new(
        lens: Vec<usize>,
        bucket_size: usize,
        batch_size: usize,
        size_multiple: usize,
        droplast: bool,
    ) -> Result<Self, DataError> {
        if bucket_size == 0 || size_multiple == 0 {
            return Err(DataError::PretrainConfig(format!(
                "token bucket sampler needs bucket_size and size_multiple > 0 \
                 (got {bucket_size} and {size_multiple})"
            )));
        }
        // The first chunk of the bucket holding the longest item is tested against an empty
        // batch; that is the only case the reference raises on.
        if let Some(&longest) = lens.iter().max()
            && longest.saturating_mul(size_multiple) > batch_size
        {
            return Err(DataError::PretrainConfig(format!(
                "max tokens per batch {batch_size} is too small: an item of length {longest} \
                 times size_multiple {size_multiple} does not fit"
            )));
        }
        Ok(Self {
            lens,
            bucket_size,
            batch_size,
            size_multiple,
            droplast,
        })
    }

    pub fn lens(&self) -> &[usize] {
        &self.lens
    }

    /// One epoch of batches (item indices), consuming the RNG like the reference's `__iter__`.
    pub fn batches(&self, rng: &mut PyRandom) -> Vec<Vec<usize>> {
        let buckets = self.buckets(rng);
        let mut batches = self.pack(&buckets);
        rng.shuffle(&mut batches);
        batches
    }

    /// First half of [`TokenBucketSampler::batches`]: shuffled ids cut into buckets, each
    /// sorted by length descending (ties keep their shuffled order, as Python's stable
    /// `sorted(reverse=True)` does).
    pub fn buckets(&self, rng: &mut PyRandom) -> Vec<Vec<usize>> {
        let mut ids: Vec<usize> = (0..self.lens.len()).collect();
        rng.shuffle(&mut ids);
        ids.chunks(self.bucket_size)
            .map(|chunk| {
                let mut bucket = chunk.to_vec();
                bucket.sort_by(|&a, &b| self.lens[b].cmp(&self.lens[a]));
                bucket
            })
            .collect()
    }

    /// Second half, without randomness: greedy packing of sorted buckets into batches
    /// (before the final shuffle).
    pub fn pack(&self, buckets: &[Vec<usize>]) -> Vec<Vec<usize>> {
        let mut batches = Vec::new();
        for bucket in buckets {
            let mut max_len = 0;
            let mut batch: Vec<usize> = Vec::new();
            for chunk in bucket.chunks(self.size_multiple) {
                let chunk_max = chunk.iter().map(|&i| self.lens[i]).max().unwrap_or(0);
                max_len = max_len.max(chunk_max);
                let padded = max_len.saturating_mul(batch.len() + self.size_multiple);
                // `new` guarantees the first chunk of a bucket fits, so a closed batch is
                // never empty.
                if padded > self.batch_size && !batch.is_empty() {
                    batches.push(std::mem::replace(&mut batch, chunk.to_vec()));
                } else {
                    batch.extend_from_slice(chunk);
                }
            }
            if !self.droplast && !batch.is_empty() {
                batches.push(batch);
            }
        }
        batches
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_items_longer_than_the_budget() {
        let err = TokenBucketSampler::new(vec![10, 200], 8, 1000, 8, true).unwrap_err();
        assert!(err.to_string().contains("length 200"), "{err}");
        assert!(TokenBucketSampler::new(vec![1], 0, 1000, 8, true).is_err());
        assert!(TokenBucketSampler::new(vec![1], 8, 1000, 0, true).is_err());
    }

    #[test]
    fn every_item_once_without_droplast_and_budget_kept() {
        let lens: Vec<usize> = (0..500).map(|i| 10 + (i * 37) % 50).collect();
        let s = TokenBucketSampler::new(lens.clone(), 64, 1000, 8, false).unwrap();
        let batches = s.batches(&mut PyRandom::seed(5));
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..500).collect::<Vec<_>>());
        for b in &batches {
            let max = b.iter().map(|&i| lens[i]).max().unwrap();
            assert!(max * b.len() <= 1000);
        }
    }

    #[test]
    fn empty_dataset_has_no_batches_and_draws_nothing() {
        let s = TokenBucketSampler::new(vec![], 8, 100, 8, true).unwrap();
        let mut rng = PyRandom::seed(1);
        let before = rng.state();
        assert!(s.batches(&mut rng).is_empty());
        assert_eq!(rng.state(), before);
    }
}
