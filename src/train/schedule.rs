//! `get_schedule_linear` of the reference (spec §5): the learning rate of update `k` (0-based)
//! is `lr · k/warmup` while `k < warmup`, then `lr · max(0, (total − k)/(total − warmup))`.
//! With `warmup > 0` the very first update therefore uses LR 0 and only fills Adam's moments,
//! exactly as `LambdaLR` does.

use burn::optim::LearningRate;
use burn::optim::lr_scheduler::LrScheduler;
use burn::prelude::Backend;

/// Linear warmup then linear decay to 0, one [`step`](LrScheduler::step) per optimizer update.
#[derive(Debug, Clone)]
pub struct LinearWarmupDecay {
    base_lr: f64,
    warmup: usize,
    total: usize,
    /// Updates already scheduled (the next `step` returns the LR of update `done`).
    done: usize,
}

impl LinearWarmupDecay {
    pub fn new(base_lr: f64, warmup: usize, total: usize) -> Self {
        Self {
            base_lr,
            warmup: warmup.min(total),
            total,
            done: 0,
        }
    }

    /// The LR of update `k` (0-based).
    pub fn lr_at(&self, k: usize) -> f64 {
        let factor = if k < self.warmup {
            k as f64 / self.warmup.max(1) as f64
        } else if self.total > self.warmup {
            ((self.total as f64 - k as f64) / (self.total - self.warmup) as f64).max(0.0)
        } else {
            0.0
        };
        self.base_lr * factor
    }

    /// Updates scheduled so far.
    pub fn updates_done(&self) -> usize {
        self.done
    }
}

impl LrScheduler for LinearWarmupDecay {
    type Record<B: Backend> = usize;

    fn step(&mut self) -> LearningRate {
        let lr = self.lr_at(self.done);
        self.done += 1;
        lr
    }

    fn to_record<B: Backend>(&self) -> Self::Record<B> {
        self.done
    }

    fn load_record<B: Backend>(mut self, record: Self::Record<B>) -> Self {
        self.done = record;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_update_has_zero_lr_with_warmup() {
        let mut s = LinearWarmupDecay::new(1.0, 2, 6);
        let lrs: Vec<f64> = (0..7).map(|_| s.step()).collect();
        assert_eq!(lrs, vec![0.0, 0.5, 1.0, 0.75, 0.5, 0.25, 0.0]);
    }

    #[test]
    fn no_warmup_starts_at_full_lr() {
        let s = LinearWarmupDecay::new(1e-4, 0, 100);
        assert_eq!(s.lr_at(0), 1e-4);
    }
}
