//! The statistics the report needs, without a statistics crate: Welch's t interval for a
//! difference of two means, and the Student t quantile it uses (through the regularized
//! incomplete beta function). Floating point is fine here: these are estimates, rounded
//! to cents only when shown; money itself is summed exactly in `Money`.

/// Mean and sample variance (n − 1) of a sample; None below two values.
fn mean_var(xs: &[f64]) -> Option<(f64, f64)> {
    if xs.len() < 2 {
        return None;
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let ss: f64 = xs.iter().map(|x| (x - mean) * (x - mean)).sum();
    Some((mean, ss / (n - 1.0)))
}

/// Welch's 95 % interval for mean(a) − mean(b), with Welch–Satterthwaite degrees of
/// freedom. None when a side has fewer than two values (no variance to estimate); a
/// zero-width interval when both sides have no spread at all.
pub(crate) fn welch_ci95(a: &[f64], b: &[f64]) -> Option<(f64, f64)> {
    let (ma, va) = mean_var(a)?;
    let (mb, vb) = mean_var(b)?;
    let (qa, qb) = (va / a.len() as f64, vb / b.len() as f64);
    let diff = ma - mb;
    let se2 = qa + qb;
    if se2 == 0.0 {
        return Some((diff, diff));
    }
    let df = se2 * se2 / (qa * qa / (a.len() as f64 - 1.0) + qb * qb / (b.len() as f64 - 1.0));
    let half = t_quantile(0.975, df) * se2.sqrt();
    Some((diff - half, diff + half))
}

/// The `p` quantile (0.5 < p < 1) of Student's t with `df` > 0 degrees of freedom
/// (fractional allowed), to about 1e-10: bisection on the distribution function.
pub(crate) fn t_quantile(p: f64, df: f64) -> f64 {
    let (mut lo, mut hi) = (0.0_f64, 1.0_f64);
    while t_cdf(hi, df) < p && hi < 1e12 {
        lo = hi;
        hi *= 2.0;
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if t_cdf(mid, df) < p {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo <= 1e-12 * hi.max(1.0) {
            break;
        }
    }
    0.5 * (lo + hi)
}

/// P(T ≤ t) for Student's t with `df` degrees of freedom.
pub(crate) fn t_cdf(t: f64, df: f64) -> f64 {
    let tail = 0.5 * inc_beta(df / 2.0, 0.5, df / (df + t * t));
    if t >= 0.0 { 1.0 - tail } else { tail }
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, nine coefficients: ~15 significant digits).
fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x)Γ(1−x) = π / sin(πx).
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = G[0];
    let t = x + 7.5;
    for (i, g) in G.iter().enumerate().skip(1) {
        a += g / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// The regularized incomplete beta function I_x(a, b), by its continued fraction
/// (Lentz's method), using the symmetry I_x(a, b) = 1 − I_{1−x}(b, a) where it
/// converges faster.
fn inc_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    if x < (a + 1.0) / (a + b + 2.0) {
        ln_front.exp() * beta_cf(a, b, x) / a
    } else {
        1.0 - ln_front.exp() * beta_cf(b, a, 1.0 - x) / b
    }
}

fn beta_cf(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..500 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        d = if d.abs() < TINY { TINY } else { d };
        c = 1.0 + aa / c;
        c = if c.abs() < TINY { TINY } else { c };
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        d = if d.abs() < TINY { TINY } else { d };
        c = 1.0 + aa / c;
        c = if c.abs() < TINY { TINY } else { c };
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(got: f64, want: f64, tol: f64) {
        assert!((got - want).abs() <= tol, "got {got}, want {want}");
    }

    #[test]
    fn t_quantiles_match_the_closed_forms_and_the_printed_tables() {
        let p = 0.975;
        // df = 1 is Cauchy: tan(π(p − ½)); df = 2: (2p − 1) / √(2p(1 − p)).
        close(
            t_quantile(p, 1.0),
            (std::f64::consts::PI * (p - 0.5)).tan(),
            1e-8,
        );
        close(
            t_quantile(p, 2.0),
            (2.0 * p - 1.0) / (2.0 * p * (1.0 - p)).sqrt(),
            1e-9,
        );
        // Two-sided 95 % critical values as printed in every t table.
        for (df, want) in [
            (3.0, 3.182_446),
            (4.0, 2.776_445),
            (5.0, 2.570_582),
            (10.0, 2.228_139),
            (30.0, 2.042_272),
            (120.0, 1.979_930),
        ] {
            close(t_quantile(p, df), want, 1e-6);
        }
        // Very many degrees of freedom: the normal quantile.
        close(t_quantile(p, 1e7), 1.959_964, 1e-5);
    }

    #[test]
    fn fractional_degrees_of_freedom_agree_with_integrating_the_density() {
        // Independent of the incomplete beta: Simpson's rule on the t density from 0 to
        // the quantile must give p − ½.
        for df in [1.5, 2.5, 4.7, 13.3] {
            let q = t_quantile(0.975, df);
            let ln_c = ln_gamma((df + 1.0) / 2.0)
                - ln_gamma(df / 2.0)
                - 0.5 * (df * std::f64::consts::PI).ln();
            let f = |t: f64| (ln_c - (df + 1.0) / 2.0 * (1.0 + t * t / df).ln()).exp();
            let n = 20_000;
            let h = q / n as f64;
            let mut s = f(0.0) + f(q);
            for i in 1..n {
                s += f(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
            }
            close(s * h / 3.0, 0.475, 1e-9);
            let (lo, hi) = (t_quantile(0.975, df.floor()), t_quantile(0.975, df.ceil()));
            assert!(q < lo && q > hi, "{df}: {q} between {hi} and {lo}");
        }
    }

    #[test]
    fn ln_gamma_matches_factorials_and_the_half_integer() {
        close(ln_gamma(1.0), 0.0, 1e-13);
        close(ln_gamma(5.0), 24f64.ln(), 1e-12);
        close(ln_gamma(0.5), std::f64::consts::PI.sqrt().ln(), 1e-12);
        close(ln_gamma(0.25), 3.625_609_908_221_908f64.ln(), 1e-12);
    }

    #[test]
    fn welch_interval_by_hand() {
        // a = 10, 20, 30: mean 20, variance ((−10)² + 0 + 10²) / 2 = 100.
        // b = 5, 15, 25: mean 15, variance 100. se² = 100/3 + 100/3 = 66.67, se = 8.164966;
        // df = (200/3)² / (2 · (100/3)² / 2) = 4, t(0.975, 4) = 2.776445;
        // half-width = 2.776445 × 8.164966 = 22.669579 → 5 ± 22.669579.
        let (lo, hi) = welch_ci95(&[10.0, 20.0, 30.0], &[5.0, 15.0, 25.0]).unwrap();
        close(lo, 5.0 - 22.669_579, 1e-5);
        close(hi, 5.0 + 22.669_579, 1e-5);
        // Unequal spread and size: a = 1, 3 (mean 2, var 2), b = 10, 10, 13 (mean 11, var 3).
        // qa = 2/2 = 1, qb = 3/3 = 1, se² = 2; df = 4 / (1/1 + 1/2) = 8/3 = 2.6667.
        let (lo, hi) = welch_ci95(&[1.0, 3.0], &[10.0, 10.0, 13.0]).unwrap();
        let half = t_quantile(0.975, 8.0 / 3.0) * 2f64.sqrt();
        close(lo, -9.0 - half, 1e-9);
        close(hi, -9.0 + half, 1e-9);
        assert!(half > 2.776_445 * 2f64.sqrt() && half < 4.302_653 * 2f64.sqrt());
        // Too little data for a variance: no interval; no spread: zero width.
        assert!(welch_ci95(&[1.0], &[1.0, 2.0]).is_none());
        assert!(welch_ci95(&[], &[]).is_none());
        assert_eq!(welch_ci95(&[4.0, 4.0], &[1.0, 1.0]), Some((3.0, 3.0)));
    }
}
