//! Counter-based random numbers: a value is a pure function of (seed, index), so any element
//! can be drawn alone, in parallel, on the host or recomputed on a device, and a resumed run
//! draws what an uninterrupted one did.
//!
//! Used for dropout masks and training seeds (the trainer and [`super::llama`]), the fused
//! dropout ops ([`super::ops`]), and random weights ([`super::llama::Model::random_with_std`],
//! the `random-model` node).

/// SplitMix64: the hash behind every seed and mask; `splitmix(seed ^ splitmix(i))` is element
/// `i` of the stream `seed`.
pub fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Element `i` of a normal(0, `std`) sequence seeded by `seed`: Box-Muller from two uniforms of
/// one 64-bit hash.
pub fn normal(seed: u64, i: u64, std: f64) -> f32 {
    let r = splitmix(seed ^ splitmix(i));
    let u1 = ((r >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let u2 = ((r & 0x7ff) as f64 + 0.5) / 2048.0;
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * std) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_draws_have_the_asked_moments_and_depend_only_on_seed_and_index() {
        let v: Vec<f64> = (0..20000).map(|i| f64::from(normal(7, i, 0.5))).collect();
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
        assert!(mean.abs() < 0.02 && (sd - 0.5).abs() < 0.02, "mean {mean}, sd {sd}");
        assert_eq!(normal(7, 123, 0.5), v[123] as f32);
        assert_ne!(normal(8, 123, 0.5), normal(7, 123, 0.5));
        // SplitMix64's published first output for seed 0.
        assert_eq!(splitmix(0), 0xE220_A839_7B1D_CDAF);
    }
}
