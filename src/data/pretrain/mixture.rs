//! The task mixture (`uniter_model/data/loader.py::MetaLoader`, spec §6.1; fixtures README
//! "Task mixture and batching").
//!
//! The pool lists every `{task}_{dataset}` name `mix_ratio` times in config order; at every
//! micro-step with `step % accum_steps == 0` the task is `random.choice(pool)` and the other
//! micro-steps of that accumulation window reuse it.

use serde::{Deserialize, Serialize};

use super::pyrandom::PyRandom;
use crate::data::DataError;

/// The sampling pool of the meta loader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskMixture {
    pool: Vec<String>,
}

impl TaskMixture {
    /// Builds the pool from `(name, mix_ratio)` in config order. Fails on a repeated name or
    /// when every ratio is 0 (nothing to draw; the reference would raise `IndexError` at the
    /// first draw).
    pub fn new<S: AsRef<str>>(ratios: &[(S, usize)]) -> Result<Self, DataError> {
        let mut pool = Vec::new();
        for (i, (name, ratio)) in ratios.iter().enumerate() {
            let name = name.as_ref();
            if ratios[..i].iter().any(|(n, _)| n.as_ref() == name) {
                return Err(DataError::PretrainConfig(format!(
                    "task '{name}' appears twice in the task mixture"
                )));
            }
            pool.extend(std::iter::repeat_n(name.to_string(), *ratio));
        }
        if pool.is_empty() {
            return Err(DataError::PretrainConfig(format!(
                "empty task mixture: {} task(s) with a total mix ratio of 0",
                ratios.len()
            )));
        }
        Ok(Self { pool })
    }

    /// Every entry, `mix_ratio` copies per name, in config order.
    pub fn pool(&self) -> &[String] {
        &self.pool
    }

    /// `random.choice(pool)`: one `randbelow(len(pool))` draw.
    pub fn draw(&self, rng: &mut PyRandom) -> &str {
        let i = rng.randbelow(self.pool.len() as u64) as usize;
        &self.pool[i]
    }

    /// The task of each of the next `n_steps` micro-steps of a fresh schedule (the fixtures'
    /// `meta_loader` sequence).
    pub fn tasks_for_micro_steps(
        &self,
        rng: &mut PyRandom,
        accum_steps: usize,
        n_steps: usize,
    ) -> Result<Vec<&str>, DataError> {
        let mut schedule = TaskSchedule::new(accum_steps)?;
        Ok((0..n_steps).map(|_| schedule.next(self, rng)).collect())
    }
}

/// Where the meta loader stands: micro-step counter and the task of the current accumulation
/// window. Serialisable so a resumed run continues the same sequence (the reference restarts
/// at step 0 with a freshly seeded RNG instead).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSchedule {
    accum_steps: usize,
    step: u64,
    /// Pool index of the current task.
    current: usize,
}

impl TaskSchedule {
    /// Fails for `accum_steps = 0` (`pretrain.py` requires >= 1).
    pub fn new(accum_steps: usize) -> Result<Self, DataError> {
        if accum_steps == 0 {
            return Err(DataError::PretrainConfig(
                "gradient_accumulation_steps must be >= 1, got 0".into(),
            ));
        }
        Ok(Self {
            accum_steps,
            step: 0,
            current: 0,
        })
    }

    /// Micro-steps taken so far.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Task of the next micro-step; draws only at the start of an accumulation window.
    pub fn next<'m>(&mut self, mixture: &'m TaskMixture, rng: &mut PyRandom) -> &'m str {
        if self.step.is_multiple_of(self.accum_steps as u64) {
            self.current = rng.randbelow(mixture.pool.len() as u64) as usize;
        }
        self.step += 1;
        // A schedule restored next to a smaller mixture must not index out of bounds.
        mixture
            .pool
            .get(self.current)
            .unwrap_or(&mixture.pool[0])
            .as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_follows_config_order() {
        let m = TaskMixture::new(&[("itm_a", 2), ("mlm_a", 0), ("mrfr_a", 1)]).unwrap();
        assert_eq!(m.pool(), ["itm_a", "itm_a", "mrfr_a"]);
    }

    #[test]
    fn draws_once_per_window() {
        let m = TaskMixture::new(&[("a", 1), ("b", 1), ("c", 1)]).unwrap();
        let mut rng = PyRandom::seed(9);
        let tasks = m.tasks_for_micro_steps(&mut rng, 3, 9).unwrap();
        for w in tasks.chunks(3) {
            assert!(w.iter().all(|t| *t == w[0]));
        }
        let mut replay = PyRandom::seed(9);
        let firsts: Vec<&str> = (0..3).map(|_| m.draw(&mut replay)).collect();
        assert_eq!(firsts, [tasks[0], tasks[3], tasks[6]]);
    }
}
