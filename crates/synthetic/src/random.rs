//! Sampling helpers that `rand` itself does not provide.

use rand::Rng;

/// Draws from the standard normal distribution by the Box–Muller transform.
pub(crate) fn standard_normal(rng: &mut impl Rng) -> f64 {
    // 1 - u lies in (0, 1], so its logarithm is finite.
    let radius = (-2.0 * (1.0 - rng.random::<f64>()).ln()).sqrt();
    let angle = std::f64::consts::TAU * rng.random::<f64>();
    radius * angle.cos()
}

/// Turns a standard normal draw into a log-normal multiplier with mean 1, whose spread grows
/// with `sigma`. Most values fall below 1, with a long tail above.
pub(crate) fn lognormal_multiplier(normal: f64, sigma: f64) -> f64 {
    (sigma * normal - sigma * sigma / 2.0).exp()
}

/// Returns `true` with probability `probability`, clamped to [0, 1].
pub(crate) fn chance(rng: &mut impl Rng, probability: f64) -> bool {
    rng.random::<f64>() < probability.clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;

    #[test]
    fn lognormal_multiplier_has_mean_one() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let draws = 200_000;
        let sum: f64 = (0..draws)
            .map(|_| lognormal_multiplier(standard_normal(&mut rng), 0.9))
            .sum();
        let mean = sum / f64::from(draws);
        assert!((mean - 1.0).abs() < 0.02, "mean {mean}");
    }
}
