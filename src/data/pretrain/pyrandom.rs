//! CPython's `random` module, bit for bit (MT19937 plus the `random.py` wrappers the reference
//! calls), so that masks, bucket shuffles and task draws can be replayed against the reference
//! (fixtures README "Task mixture and batching", `python_random_check`).
//!
//! Mirrors `Modules/_randommodule.c` (`init_genrand`, `init_by_array`, `genrand_uint32`,
//! `random_random`, `random_getrandbits`) and `Lib/random.py` (`_randbelow_with_getrandbits`,
//! `shuffle`, `choice`) of CPython 3.6 – 3.12.

use serde::{Deserialize, Serialize};

use crate::data::DataError;

const N: usize = 624;
const M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

/// The generator state, as `random.getstate()[1]` holds it: the 624 MT words followed by the
/// position of the next word to temper (624 = twist before the next draw).
///
/// Serialise it with a training checkpoint and [`PyRandom::from_state`] resumes the exact stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PyRandomState {
    /// `mt[0..624]`.
    pub key: Vec<u32>,
    /// Index of the next word, `0..=624`.
    pub pos: usize,
}

/// `random.Random` restricted to what the pre-training recipe draws.
#[derive(Clone)]
pub struct PyRandom {
    mt: [u32; N],
    pos: usize,
}

impl std::fmt::Debug for PyRandom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PyRandom").field("pos", &self.pos).finish()
    }
}

impl PyRandom {
    /// `random.seed(seed)` for a non-negative int: `init_by_array` over the 32-bit words of the
    /// integer, least significant first (one word, `[0]`, for 0).
    pub fn seed(seed: u64) -> Self {
        let lo = seed as u32;
        let hi = (seed >> 32) as u32;
        if hi == 0 {
            Self::from_key(&[lo])
        } else {
            Self::from_key(&[lo, hi])
        }
    }

    /// `init_by_array(key)`: the seeding CPython uses for int seeds. `key` must not be empty
    /// (an empty key seeds like `[0]`, which is what CPython passes for 0).
    pub fn from_key(key: &[u32]) -> Self {
        let key: &[u32] = if key.is_empty() { &[0] } else { key };
        let mut rng = Self::init_genrand(19_650_218);
        let mt = &mut rng.mt;
        let (mut i, mut j) = (1usize, 0usize);
        for _ in 0..N.max(key.len()) {
            let prev = mt[i - 1] ^ (mt[i - 1] >> 30);
            mt[i] = (mt[i] ^ prev.wrapping_mul(1_664_525))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= N {
                mt[0] = mt[N - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..N - 1 {
            let prev = mt[i - 1] ^ (mt[i - 1] >> 30);
            mt[i] = (mt[i] ^ prev.wrapping_mul(1_566_083_941)).wrapping_sub(i as u32);
            i += 1;
            if i >= N {
                mt[0] = mt[N - 1];
                i = 1;
            }
        }
        // Assures a non-zero initial state.
        mt[0] = 0x8000_0000;
        rng
    }

    fn init_genrand(s: u32) -> Self {
        let mut mt = [0u32; N];
        mt[0] = s;
        for i in 1..N {
            mt[i] = 1_812_433_253u32
                .wrapping_mul(mt[i - 1] ^ (mt[i - 1] >> 30))
                .wrapping_add(i as u32);
        }
        Self { mt, pos: N }
    }

    /// Snapshot for checkpoints.
    pub fn state(&self) -> PyRandomState {
        PyRandomState {
            key: self.mt.to_vec(),
            pos: self.pos,
        }
    }

    /// Restores a [`PyRandom::state`] snapshot. Fails on a key that is not 624 words or a
    /// position above 624.
    pub fn from_state(state: &PyRandomState) -> Result<Self, DataError> {
        let mt: [u32; N] = state.key.as_slice().try_into().map_err(|_| {
            DataError::PretrainConfig(format!(
                "random state has {} words, expected {N}",
                state.key.len()
            ))
        })?;
        if state.pos > N {
            return Err(DataError::PretrainConfig(format!(
                "random state position {} is above {N}",
                state.pos
            )));
        }
        Ok(Self { mt, pos: state.pos })
    }

    /// One tempered 32-bit output (`genrand_uint32`).
    pub fn next_u32(&mut self) -> u32 {
        if self.pos >= N {
            self.twist();
        }
        let mut y = self.mt[self.pos];
        self.pos += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    fn twist(&mut self) {
        // Updating in index order makes the wrapped reads see the new words, exactly as the
        // reference's three-loop form does.
        for k in 0..N {
            let y = (self.mt[k] & UPPER_MASK) | (self.mt[(k + 1) % N] & LOWER_MASK);
            let mag = if y & 1 == 1 { MATRIX_A } else { 0 };
            self.mt[k] = self.mt[(k + M) % N] ^ (y >> 1) ^ mag;
        }
        self.pos = 0;
    }

    /// `random.random()`: a 53-bit float in `[0, 1)` from two outputs.
    pub fn random(&mut self) -> f64 {
        let a = self.next_u32() >> 5;
        let b = self.next_u32() >> 6;
        (f64::from(a) * 67_108_864.0 + f64::from(b)) * (1.0 / 9_007_199_254_740_992.0)
    }

    /// `random.getrandbits(k)` for `k <= 64` (`None` above): one output per 32 bits, least
    /// significant word first, the last word keeping its high bits. `k = 0` draws nothing.
    pub fn getrandbits(&mut self, k: u32) -> Option<u64> {
        match k {
            0 => Some(0),
            1..=32 => Some(u64::from(self.next_u32() >> (32 - k))),
            33..=64 => {
                let lo = u64::from(self.next_u32());
                let hi = u64::from(self.next_u32() >> (64 - k));
                Some(lo | (hi << 32))
            }
            _ => None,
        }
    }

    /// `Random._randbelow_with_getrandbits(n)`: `getrandbits(n.bit_length())` until below `n`.
    /// `n = 0` returns 0 without drawing (CPython ≤ 3.9 semantics; callers never pass 0).
    pub fn randbelow(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        let k = 64 - n.leading_zeros();
        loop {
            // k is 1..=64, so getrandbits always answers.
            let r = self.getrandbits(k).unwrap_or(0);
            if r < n {
                return r;
            }
        }
    }

    /// `random.shuffle(x)`: Fisher–Yates from the last element down, one `randbelow(i + 1)`
    /// per position `i >= 1`.
    pub fn shuffle<T>(&mut self, x: &mut [T]) {
        for i in (1..x.len()).rev() {
            let j = self.randbelow(i as u64 + 1) as usize;
            x.swap(i, j);
        }
    }

    /// `random.choice(seq)` = `seq[randbelow(len(seq))]`; `None` (and no draw) for an empty
    /// slice, where CPython raises `IndexError`.
    pub fn choice<'a, T>(&mut self, seq: &'a [T]) -> Option<&'a T> {
        if seq.is_empty() {
            return None;
        }
        let i = self.randbelow(seq.len() as u64) as usize;
        seq.get(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_mt19937_output() {
        // The MT19937 reference (init_by_array {0x123, 0x234, 0x345, 0x456}) first outputs.
        let mut rng = PyRandom::from_key(&[0x123, 0x234, 0x345, 0x456]);
        let first: Vec<u32> = (0..5).map(|_| rng.next_u32()).collect();
        assert_eq!(
            first,
            [1067595299, 955945823, 477289528, 4107218783, 4228976476]
        );
    }

    #[test]
    fn state_round_trip_resumes_the_stream() {
        let mut a = PyRandom::seed(7);
        for _ in 0..1000 {
            a.random();
        }
        let snapshot = serde_json::to_string(&a.state()).unwrap();
        let mut b = PyRandom::from_state(&serde_json::from_str(&snapshot).unwrap()).unwrap();
        for _ in 0..1000 {
            assert_eq!(a.random().to_bits(), b.random().to_bits());
        }
    }

    #[test]
    fn bad_state_is_an_error() {
        let mut s = PyRandom::seed(1).state();
        s.pos = 625;
        assert!(PyRandom::from_state(&s).is_err());
        s.pos = 0;
        s.key.pop();
        let msg = PyRandom::from_state(&s).unwrap_err().to_string();
        assert!(msg.contains("623 words"), "{msg}");
    }

    #[test]
    fn two_word_seeds_and_wide_draws() {
        // CPython 3.11: random.seed(2**32 + 5); getrandbits(32), random(), getrandbits(40),
        // getrandbits(64), randrange(10**15).
        let mut a = PyRandom::seed((1 << 32) + 5);
        assert_eq!(a.getrandbits(32), Some(675479763));
        assert_eq!(a.random(), 0.4854959643072383);
        assert_eq!(a.getrandbits(40), Some(665247166058));
        assert_eq!(a.getrandbits(64), Some(267910309641445477));
        assert_eq!(a.randbelow(10u64.pow(15)), 706811407998525);
        assert_eq!(a.getrandbits(65), None);
        // random.seed(0); getrandbits(32)
        assert_eq!(PyRandom::seed(0).getrandbits(32), Some(3626764237));
    }

    #[test]
    fn empty_choice_draws_nothing() {
        let mut a = PyRandom::seed(3);
        let before = a.state();
        assert!(a.choice::<u8>(&[]).is_none());
        assert_eq!(a.state(), before);
    }
}
