//! pretrain.py's `get_lr_sched` (decay `linear`, spec §6.5): for optimizer update `step`
//! (1-based, the reference increments `global_step` before asking),
//! `lr·step/warmup` while `step < warmup`, then `lr·max(0, (total − step)/(total − warmup))`;
//! a result `<= 0` becomes 1e-8 (so training past `total` keeps a tiny LR instead of 0).

use burn::optim::LearningRate;
use burn::optim::lr_scheduler::LrScheduler;
use burn::prelude::Backend;

/// The floor `get_lr_sched` substitutes for a non-positive LR.
pub const LR_FLOOR: f64 = 1e-8;

/// UNITER's warmup-linear schedule, one [`step`](LrScheduler::step) per optimizer update.
#[derive(Debug, Clone)]
pub struct WarmupLinear {
    base_lr: f64,
    warmup: usize,
    total: usize,
    /// Updates already scheduled.
    done: usize,
}

impl WarmupLinear {
    pub fn new(base_lr: f64, warmup: usize, total: usize) -> Self {
        Self {
            base_lr,
            warmup,
            total,
            done: 0,
        }
    }

    /// The LR of global step `step` (the reference's `get_lr_sched(step, opts)`).
    pub fn lr_at(&self, step: usize) -> f64 {
        let (step, warmup, total) = (step as f64, self.warmup as f64, self.total as f64);
        let lr = if step < warmup {
            self.base_lr * step / warmup
        } else if total > warmup {
            self.base_lr * ((total - step) / (total - warmup)).max(0.0)
        } else {
            0.0
        };
        if lr <= 0.0 { LR_FLOOR } else { lr }
    }

    /// Updates scheduled so far (= the global step of the last one).
    pub fn updates_done(&self) -> usize {
        self.done
    }
}

impl LrScheduler for WarmupLinear {
    type Record<B: Backend> = usize;

    fn step(&mut self) -> LearningRate {
        self.done += 1;
        self.lr_at(self.done)
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
    fn warmup_then_linear_then_floor() {
        let s = WarmupLinear::new(1e-4, 4, 20);
        assert_eq!(s.lr_at(0), LR_FLOOR);
        assert!((s.lr_at(1) - 2.5e-5).abs() < 1e-18);
        assert!((s.lr_at(4) - 1e-4).abs() < 1e-18);
        assert_eq!(s.lr_at(20), LR_FLOOR);
        assert_eq!(s.lr_at(25), LR_FLOOR);
    }

    #[test]
    fn first_step_uses_global_step_one() {
        let mut s = WarmupLinear::new(1e-4, 4, 20);
        assert!((s.step() - 2.5e-5).abs() < 1e-18);
        assert_eq!(s.updates_done(), 1);
    }
}
