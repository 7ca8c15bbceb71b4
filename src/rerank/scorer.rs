//! Scoring (caption, image) pairs with the cross-encoder in mini-batches.

use burn::prelude::*;

use super::RerankError;
use super::batch::ItmHostBatch;
use crate::data::RegionFeatures;
use crate::model::{EncoderConfig, UniterItm};

/// Default pairs per forward pass (UNITER's `inf_itm.py` uses 400 on a GPU; on the CPU a
/// re-ranked top-10 is one batch and a top-100 four).
pub const DEFAULT_BATCH: usize = 32;

/// A loaded cross-encoder on one device.
#[derive(Debug)]
pub struct CrossEncoder<B: Backend> {
    model: UniterItm<B>,
    config: EncoderConfig,
    device: B::Device,
    batch_size: usize,
}

impl<B: Backend> CrossEncoder<B> {
    /// `batch_size` pairs per forward pass (at least 1).
    pub fn new(
        model: UniterItm<B>,
        config: EncoderConfig,
        device: B::Device,
        batch_size: usize,
    ) -> Self {
        Self {
            model,
            config,
            device,
            batch_size: batch_size.max(1),
        }
    }

    pub fn config(&self) -> &EncoderConfig {
        &self.config
    }

    pub fn model(&self) -> &UniterItm<B> {
        &self.model
    }

    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// Scores of one batch `[B]` (validated first, so bad input is an error, not a panic).
    pub fn score_batch(&self, batch: &ItmHostBatch) -> Result<Vec<f32>, RerankError> {
        batch.validate(&self.config)?;
        let scores = self.model.forward(&batch.to_device::<B>(&self.device));
        Ok(scores
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .unwrap_or_default())
    }

    /// One score per `(caption ids with [CLS]/[SEP], regions)` pair, in input order. Pairs are
    /// batched in order of sequence length so that rows of a batch have similar lengths;
    /// padding is masked, so scores do not depend on the batching.
    pub fn score_pairs(
        &self,
        pairs: &[(&[u32], &RegionFeatures)],
    ) -> Result<Vec<f32>, RerankError> {
        let mut order: Vec<usize> = (0..pairs.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(pairs[i].0.len() + pairs[i].1.num_bb));
        let mut scores = vec![0f32; pairs.len()];
        for chunk in order.chunks(self.batch_size) {
            let rows: Vec<(&[u32], &RegionFeatures)> = chunk.iter().map(|&i| pairs[i]).collect();
            let s = self.score_batch(&ItmHostBatch::collate(&rows)?)?;
            for (&i, v) in chunk.iter().zip(s) {
                scores[i] = v;
            }
        }
        Ok(scores)
    }

    /// Scores one caption against several images (a text query's candidates).
    pub fn score_text(
        &self,
        text: &[u32],
        images: &[&RegionFeatures],
    ) -> Result<Vec<f32>, RerankError> {
        let pairs: Vec<_> = images.iter().map(|r| (text, *r)).collect();
        self.score_pairs(&pairs)
    }

    /// Scores one image against several captions (an image query's candidates).
    pub fn score_image<T: AsRef<[u32]>>(
        &self,
        image: &RegionFeatures,
        texts: &[T],
    ) -> Result<Vec<f32>, RerankError> {
        let pairs: Vec<_> = texts.iter().map(|t| (t.as_ref(), image)).collect();
        self.score_pairs(&pairs)
    }
}
