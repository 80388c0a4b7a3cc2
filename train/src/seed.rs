//! Seeding. Every random stream of a run is a pure function of the run seed
//! and a position (epoch, step, micro-batch), so a checkpoint's seed and step
//! are the whole RNG state and a resumed run draws exactly what the
//! uninterrupted one would have drawn.

use burn::tensor::backend::Backend;

/// Streams derived from the run seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Stream {
    /// Order of the training data in an epoch.
    DataOrder = 1,
    /// Initial LoRA A matrices.
    AdapterInit = 2,
    /// Dropout masks of one micro-batch.
    Dropout = 3,
    /// Token sampling of one rollout completion (online RL).
    Sampling = 4,
    /// Mini-batch order of one PPO epoch over a rollout.
    MiniBatchOrder = 5,
    /// Sampling of the held-out evaluations of an RL run (the same seeds at
    /// every evaluation: common random numbers across checkpoints).
    Evaluation = 6,
}

/// SplitMix64's finaliser (Steele et al. 2014): a bijective 64-bit mix.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The seed of `stream` at position (`a`, `b`).
pub fn derive_seed(seed: u64, stream: Stream, a: u64, b: u64) -> u64 {
    let mut h = mix(seed ^ 0x9E37_79B9_7F4A_7C15);
    for x in [stream as u64, a, b] {
        h = mix(h ^ x.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    }
    h
}

/// Seed the backend's generator (dropout) for micro-batch `micro` of update
/// `step`. The backend generator is process-global: concurrent users in one
/// process (parallel tests) interleave their draws.
pub fn seed_backend<B: Backend>(device: &B::Device, seed: u64, step: usize, micro: usize) {
    B::seed(
        device,
        derive_seed(seed, Stream::Dropout, step as u64, micro as u64),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_and_positions_differ() {
        let a = derive_seed(42, Stream::Dropout, 1, 0);
        assert_ne!(a, derive_seed(42, Stream::Dropout, 0, 1));
        assert_ne!(a, derive_seed(42, Stream::DataOrder, 1, 0));
        assert_ne!(a, derive_seed(43, Stream::Dropout, 1, 0));
        assert_eq!(a, derive_seed(42, Stream::Dropout, 1, 0));
    }
}
