//! The project's one random generator for data order, negatives, seeds and synthetic data.

/// SplitMix64: a small, portable, seedable generator (shuffles and negative sampling must not
/// depend on a library's stream, or resumed runs would diverge after an upgrade).
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator for `(seed, stream, epoch)`.
    pub fn new(seed: u64, stream: u64, epoch: u64) -> Self {
        let mut s = Self(seed ^ 0x9E37_79B9_7F4A_7C15);
        s.0 ^= s
            .next_u64()
            .wrapping_add(stream.wrapping_mul(0xBF58_476D_1CE4_E5B9));
        s.0 ^= s
            .next_u64()
            .wrapping_add(epoch.wrapping_mul(0x94D0_49BB_1331_11EB));
        s
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        // Rejection keeps the distribution exactly uniform.
        let n64 = n as u64;
        let zone = u64::MAX - u64::MAX % n64;
        loop {
            let x = self.next_u64();
            if x < zone {
                return (x % n64) as usize;
            }
        }
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}
