//! The statistics of canary analysis, pure and unit-tested: confidence intervals for a proportion (Wilson), a
//! difference of proportions (Agresti-Caffo), a difference of means (Welch, normal approximation), sample
//! quantiles, and the alpha spent at each look.
//!
//! Continuous monitoring: the analysis looks at the data every few seconds for as long as a rollout runs. Each
//! look k (1, 2, 3, ...) uses level alpha_k = alpha * 6 / (pi^2 k^2); these sum to alpha over infinitely many
//! looks, so by the union bound the chance that any look of an A/A rollout crosses a threshold stays below alpha
//! however often it looks (conservative, and valid without a fixed horizon).

/// The level of look `k` (1-based) when `alpha` is spent over all looks.
pub fn alpha_at(alpha: f64, k: u64) -> f64 {
    let k = k.max(1) as f64;
    alpha * 6.0 / (std::f64::consts::PI.powi(2) * k * k)
}

/// The standard normal quantile (Acklam's rational approximation, relative error below 1.2e-9).
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.38357751867269e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    const B: [f64; 5] =
        [-5.447609879822406e1, 1.615858368580409e2, -1.556989798598866e2, 6.680131188771972e1, -1.328068155288572e1];
    const C: [f64; 6] = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    ];
    const D: [f64; 4] = [7.784695709041462e-3, 3.224671290700398e-1, 2.445134137142996, 3.754408661907416];
    let p = p.clamp(1e-300, 1.0 - 1e-16);
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// The z of a two-sided interval at level `alpha` (each side alpha/2).
pub fn z_two_sided(alpha: f64) -> f64 {
    normal_quantile(1.0 - alpha / 2.0)
}

/// A confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Interval {
    pub lo: f64,
    pub hi: f64,
}

/// Wilson score interval for `k` successes in `n` trials.
pub fn wilson(k: u64, n: u64, z: f64) -> Interval {
    if n == 0 {
        return Interval { lo: 0.0, hi: 1.0 };
    }
    let (k, n) = (k as f64, n as f64);
    let p = k / n;
    let z2 = z * z;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = z * ((p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt()) / (1.0 + z2 / n);
    Interval { lo: (centre - half).max(0.0), hi: (centre + half).min(1.0) }
}

/// Agresti-Caffo interval for p_a - p_b (one success and one failure added to each arm).
pub fn diff_of_proportions(ka: u64, na: u64, kb: u64, nb: u64, z: f64) -> Interval {
    let (pa, pb) = ((ka as f64 + 1.0) / (na as f64 + 2.0), (kb as f64 + 1.0) / (nb as f64 + 2.0));
    let se = (pa * (1.0 - pa) / (na as f64 + 2.0) + pb * (1.0 - pb) / (nb as f64 + 2.0)).sqrt();
    let d = pa - pb;
    Interval { lo: d - z * se, hi: d + z * se }
}

/// Mean and sample variance.
pub fn mean_var(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    if xs.is_empty() {
        return (0.0, 0.0);
    }
    let m = xs.iter().sum::<f64>() / n;
    let v = if xs.len() > 1 { xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (m, v)
}

/// Welch interval for mean(a) - mean(b) (normal approximation: the analysis asks for dozens of samples).
pub fn diff_of_means(a: &[f64], b: &[f64], z: f64) -> Interval {
    let ((ma, va), (mb, vb)) = (mean_var(a), mean_var(b));
    let se = (va / a.len().max(1) as f64 + vb / b.len().max(1) as f64).sqrt();
    Interval { lo: ma - mb - z * se, hi: ma - mb + z * se }
}

/// The `q` quantile of `xs` (nearest rank on a sorted copy); None when empty.
pub fn quantile(xs: &[f64], q: f64) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    let rank = ((q.clamp(0.0, 1.0) * v.len() as f64).ceil() as usize).clamp(1, v.len().max(1));
    v.get(rank - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_quantiles_match_tables() {
        for (p, z) in [(0.5, 0.0), (0.975, 1.959964), (0.995, 2.575829), (0.05, -1.644854), (1e-6, -4.753424)] {
            assert!((normal_quantile(p) - z).abs() < 1e-5, "p {p}: {}", normal_quantile(p));
        }
    }

    #[test]
    fn alpha_spent_over_all_looks_stays_below_alpha() {
        let total: f64 = (1..100_000).map(|k| alpha_at(0.05, k)).sum();
        assert!(total < 0.05 && total > 0.0499, "{total}");
        assert!(alpha_at(0.05, 10) < alpha_at(0.05, 1));
    }

    #[test]
    fn wilson_covers_and_shrinks() {
        let i = wilson(0, 0, 1.96);
        assert_eq!((i.lo, i.hi), (0.0, 1.0));
        let a = wilson(5, 10, 1.96);
        let b = wilson(500, 1000, 1.96);
        assert!(a.lo < 0.5 && a.hi > 0.5 && b.lo > a.lo && b.hi < a.hi);
        assert!(wilson(0, 300, 1.96).hi < 0.02);
    }

    #[test]
    fn differences_see_a_real_gap_and_not_noise() {
        let z = 1.96;
        assert!(diff_of_proportions(30, 100, 0, 100, z).lo > 0.1, "30% vs 0% errors");
        let same = diff_of_proportions(3, 100, 3, 100, z);
        assert!(same.lo < 0.0 && same.hi > 0.0);
        let slow: Vec<f64> = (0..50).map(|i| 2.0 + (i % 5) as f64 * 0.01).collect();
        let fast: Vec<f64> = (0..50).map(|i| 1.0 + (i % 5) as f64 * 0.01).collect();
        assert!(diff_of_means(&slow, &fast, z).lo > 0.9);
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        let xs: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&xs, 0.5), Some(50.0));
        assert_eq!(quantile(&xs, 0.99), Some(99.0));
        assert_eq!(quantile(&xs, 1.0), Some(100.0));
        assert_eq!(quantile(&[], 0.5), None);
    }
}
