//! State of health: ohmic resistance R0 from voltage/current steps, and total capacity by
//! approximate weighted total least squares (AWTLS, G. Plett, "Recursive approximate weighted
//! total least squares estimation of battery cell total capacity", J. Power Sources 196 (2011)
//! 2319–2331).
//!
//! Capacity: between two rest points k−1, k the SOC change x = z_k−1 − z_k (from the OCV at
//! rest, independent of any capacity estimate) and the accumulated charge y = ∫η·i dt / 3600
//! (Ah) satisfy y = Q·x with noise on *both* x (OCV inversion) and y (current sensor). Ordinary
//! least squares on such data is biased; AWTLS minimises
//!
//! ```text
//! J(Q̂) = Σ (y − Q̂x)² (Q̂²/σx² + 1/σy²) / (Q̂² + 1)²
//! ```
//!
//! which equals the exact weighted TLS cost when σx = σy and stays close otherwise. We work in
//! units normalised by the nominal capacity (y' = y/Q_nom, so Q̂' ≈ 1), which keeps the
//! approximation well conditioned; the sums are kept recursively with a forgetting factor.
//! The six running sums are Plett's c1..c6.

/// Running AWTLS sums of one cell (Plett 2011, eq. 21–26), normalised units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Awtls {
    pub c: [f64; 6],
}

impl Awtls {
    /// Prior: one virtual observation x = 1, y = 1 (the nominal capacity) with σ = `sigma`.
    pub fn with_prior(sigma: f64) -> Self {
        Self::with_prior_at(1.0, sigma)
    }

    /// Prior centred on the capacity ratio `q0` (x = 1, y = q0) with σ = `sigma` (relative to
    /// the nominal capacity). The observation's cost is (q0 − Q)² / (v (Q² + 1)), whose
    /// curvature at q0 is 2 / (v (q0² + 1)): v = 2σ² / (q0² + 1) gives it the variance σ²
    /// ([`Awtls::variance`]), which at q0 = 1 is σ² itself.
    pub fn with_prior_at(q0: f64, sigma: f64) -> Self {
        let mut a = Awtls { c: [0.0; 6] };
        let v = 2.0 * sigma * sigma / (q0 * q0 + 1.0);
        a.add(1.0, q0, v, v, 1.0);
        a
    }

    /// Add an observation (x, y normalised) with variances, after forgetting by `gamma`.
    pub fn add(&mut self, x: f64, y: f64, var_x: f64, var_y: f64, gamma: f64) {
        let c = &mut self.c;
        for v in c.iter_mut() {
            *v *= gamma;
        }
        c[0] += x * x / var_y;
        c[1] += x * y / var_y;
        c[2] += y * y / var_y;
        c[3] += x * x / var_x;
        c[4] += x * y / var_x;
        c[5] += y * y / var_x;
    }

    /// Add one observation with its own variances on x and y, balanced first. The exact
    /// weighted-TLS cost of an observation is (y − Qx)² / (σy² + Q²σx²); the AWTLS form
    /// (y − Qx)²·(Q²/σx² + 1/σy²)/(Q²+1)² equals it only where σx = σy, and otherwise weights
    /// the observation by its *smaller* variance: a rest point on a flat OCV (σx several % of
    /// SOC) with a well-counted charge (σy ~1 %) counts as a precise one (issue 16, lfp_h4: one
    /// LFP plateau reading moved the capacity by 15 %). With both variances (σx² + σy²)/2 the
    /// AWTLS cost of the observation equals the exact one at Q = 1 (the normalised nominal
    /// capacity) and stays within a factor (1+Q²)/2 of it over the estimator's band.
    pub fn add_balanced(&mut self, x: f64, y: f64, var_x: f64, var_y: f64, gamma: f64) {
        let v = 0.5 * (var_x + var_y);
        self.add(x, y, v, v, gamma);
    }

    /// The AWTLS cost at q (normalised capacity).
    pub fn cost(&self, q: f64) -> f64 {
        let [c1, c2, c3, c4, c5, c6] = self.c;
        let q2 = q * q;
        (q2 * q2 * c4 - 2.0 * c5 * q2 * q + (c1 + c6) * q2 - 2.0 * c2 * q + c3) / ((q2 + 1.0) * (q2 + 1.0))
    }

    /// Variance (relative, normalised capacity²) of the estimate `q`: the inverse curvature
    /// of the cost there, 1/J''(q), in closed form from J = N/D, N the quartic in the sums,
    /// D = (q²+1)². The cost is scaled so that the prior alone (x = y = 1, σ) gives
    /// J = (q−1)²/((q²+1)σ²) and J''(1) = 1/σ²: the prior's own variance. Where the cost is
    /// not convex at `q` (no information) the answer is 1 (100 %).
    pub fn variance(&self, q: f64) -> f64 {
        let [c1, c2, c3, c4, c5, c6] = self.c;
        let q2 = q * q;
        let n = q2 * q2 * c4 - 2.0 * c5 * q2 * q + (c1 + c6) * q2 - 2.0 * c2 * q + c3;
        let n1 = 4.0 * c4 * q2 * q - 6.0 * c5 * q2 + 2.0 * (c1 + c6) * q - 2.0 * c2;
        let n2 = 12.0 * c4 * q2 - 12.0 * c5 * q + 2.0 * (c1 + c6);
        let d = (q2 + 1.0) * (q2 + 1.0);
        let d1 = 4.0 * q * (q2 + 1.0);
        let d2 = 12.0 * q2 + 4.0;
        // (N/D)'' = N''/D − 2N'D'/D² − N D''/D² + 2N D'²/D³
        let j2 = n2 / d - 2.0 * n1 * d1 / (d * d) - n * d2 / (d * d) + 2.0 * n * d1 * d1 / (d * d * d);
        if j2.is_finite() && j2 > 1.0 {
            1.0 / j2
        } else {
            1.0
        }
    }

    /// The minimiser of the cost over a plausible range of normalised capacity. The cost's
    /// stationary points are the real roots of Plett's quartic
    /// c5 q⁴ + (−c1 + 2c4 − c6) q³ + (3c2 − 3c5) q² + (c1 − 2c3 + c6) q − c2 = 0;
    /// we find the global minimum by a coarse scan and golden-section refinement, which is
    /// robust and has no complex arithmetic.
    pub fn estimate(&self, lo: f64, hi: f64) -> f64 {
        let n = 64;
        let mut best = lo;
        let mut best_j = f64::INFINITY;
        for k in 0..=n {
            let q = lo + (hi - lo) * k as f64 / n as f64;
            let j = self.cost(q);
            if j < best_j {
                best_j = j;
                best = q;
            }
        }
        let h = (hi - lo) / n as f64;
        let (mut a, mut b) = ((best - h).max(lo), (best + h).min(hi));
        let gr = 0.618_033_988_749_895;
        for _ in 0..40 {
            let c = b - gr * (b - a);
            let d = a + gr * (b - a);
            if self.cost(c) < self.cost(d) {
                b = d;
            } else {
                a = c;
            }
        }
        0.5 * (a + b)
    }
}

/// Band of a cell's capacity estimate as a ratio to the cell file's nominal capacity: the
/// interval the AWTLS estimate is searched in (below 30 % a cell is long past end of life,
/// 150 % is no cell of that type). A restored state outside it is implausible.
pub const CAPACITY_RATIO_RANGE: (f64, f64) = (0.3, 1.5);
/// Band of an R0 observation as a ratio to the cell file's R0 table: outside 0.2..5 × nominal
/// is a sensor glitch or an OCV/RC effect, not R0. The low-passed ratio stays inside it, so a
/// restored ratio outside it is implausible.
pub const R0_RATIO_RANGE: (f64, f64) = (0.2, 5.0);

/// Weight of the R0 table as the prior of a cell's resistance ratio, in observations: the
/// table counts as one step. One step's ratio scatters by about ±10 % (σ_R ≈ √2·σ_v/ΔI and
/// the step's own SOC/temperature; the fresh tuning traces' steps 0.9..1.1 over p10..p90,
/// scripts/fit_step_resistance.py), an aged cell's ratio is 1..2: the table is no better a
/// guess than one step.
pub const R0_PRIOR_WEIGHT: f64 = 1.0;
/// The observation count kept per cell stops here (the gain has long reached its floor).
pub const R0_COUNT_CAP: f64 = 1e9;

/// Gain of a cell's next R0 observation after `n_prev` of them: the running mean with the
/// table as a prior of `R0_PRIOR_WEIGHT` observations, 1/(n₀ + n + 1), until it falls to
/// `floor` (the pack's `r0_gain`), from where the ratio is a low-pass that follows ageing.
/// With the low-pass alone from the first step, a storage cell that sees ten 0.3 C steps a
/// day keeps 60 % of the table's value after them (0.95¹⁰), whatever the cell.
#[inline]
pub fn r0_running_gain(n_prev: f64, floor: f64) -> f64 {
    floor.max(1.0 / (R0_PRIOR_WEIGHT + n_prev + 1.0))
}

/// One R0 observation from a current step between consecutive samples: −ΔV/ΔI (the RC
/// branches barely move within one short sample). Returns None if implausible.
#[inline]
pub fn r0_observation(dv: f64, di: f64, r0_nominal: f64) -> Option<f64> {
    let r = -dv / di;
    let (lo, hi) = R0_RATIO_RANGE;
    if r.is_finite() && r > lo * r0_nominal && r < hi * r0_nominal {
        Some(r)
    } else {
        None
    }
}

/// Gas constant (J/(mol·K)), CODATA 2018.
pub const R_GAS: f64 = 8.314_462_618;

/// The resistance a current step from `ia_c` to `ib_c` (C-rates of one cell, discharge
/// positive) reads within one sample, over the cell file's R0 table, at the cells'
/// temperature `t_c` (see `CellEstimator::r0_step_ct_fraction`). Ohmic part plus the chord of
/// the charge-transfer overpotential of symmetric Butler–Volmer kinetics,
/// η = (2RT/F)·asinh(i / 2i₀) (Bard & Faulkner, "Electrochemical methods", 2nd ed., 2001,
/// eq. 3.4.11 with α = 0.5), relative to its chord for the 1 s, 1 C pulse from rest:
///
/// ```text
/// F = s · ((1 − φ) + φ · chord(ia, ib) / chord(0, 1)),  chord(a, b) = (asinh(b/2i₀) − asinh(a/2i₀)) / (b − a)
/// i₀(T) = i₀,ref · exp(−Ea/R · (1/T − 1/T_ref))  (Arrhenius)
/// ```
///
/// The 2RT/F amplitude cancels in the ratio. 1 with φ = 0 and s = 1 (a linear cell).
pub fn r0_step_factor(e: &crate::cell_model::CellEstimator, ia_c: f64, ib_c: f64, t_c: f64, t_ref_c: f64) -> f64 {
    r0_chord_factor(e, &ChordCoeffs::at(e, t_c, t_ref_c), ia_c, ib_c)
}

/// The temperature-dependent part of `r0_step_factor`: w = 1/(2 i₀(T)) with i₀ the exchange
/// current (C-rate, Arrhenius from `t_ref_c`), and 1/asinh(w), the inverse of the 1 C pulse's
/// chord. A sensor keeps them per model temperature, so a load costs one asinh per sensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChordCoeffs {
    pub w: f64,
    pub inv_asinh_w: f64,
}

impl ChordCoeffs {
    pub const UNSET: ChordCoeffs = ChordCoeffs { w: 1.0, inv_asinh_w: 1.0 };

    pub fn at(e: &crate::cell_model::CellEstimator, t_c: f64, t_ref_c: f64) -> Self {
        if e.r0_step_ct_fraction <= 0.0 {
            return ChordCoeffs::UNSET; // unused: the factor is constant
        }
        let inv_k = |t: f64| 1.0 / (t + 273.15);
        let i0 = e.r0_step_i0_c * (-e.r0_step_i0_ea_kj_per_mol * 1e3 / R_GAS * (inv_k(t_c) - inv_k(t_ref_c))).exp();
        let w = 0.5 / i0;
        ChordCoeffs { w, inv_asinh_w: 1.0 / w.asinh() }
    }
}

/// `r0_step_factor` with the temperature's coefficients given.
#[inline]
pub fn r0_chord_factor(e: &crate::cell_model::CellEstimator, c: &ChordCoeffs, ia_c: f64, ib_c: f64) -> f64 {
    let phi = e.r0_step_ct_fraction;
    if phi <= 0.0 {
        return e.r0_step_pulse_ratio;
    }
    let w = c.w;
    let chord = if (ib_c - ia_c).abs() > 1e-9 {
        ((ib_c * w).asinh() - (ia_c * w).asinh()) / (ib_c - ia_c)
    } else {
        w / (1.0 + (ia_c * w).powi(2)).sqrt() // the derivative: a step too small to have a chord
    };
    e.r0_step_pulse_ratio * ((1.0 - phi) + phi * chord * c.inv_asinh_w)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seeded SplitMix64 → standard normal (Box–Muller); tests only.
    struct Rng(u64);
    impl Rng {
        fn u(&mut self) -> f64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
        }
        fn n(&mut self) -> f64 {
            let (a, b) = (self.u().max(1e-300), self.u());
            (-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos()
        }
    }

    #[test]
    fn awtls_recovers_capacity_with_noise_on_both_axes() {
        // true normalised capacity 0.9 (10 % fade); SOC changes 0.2..0.8 with σx = 0.01
        let mut rng = Rng(7);
        let mut a = Awtls::with_prior(0.2);
        let q_true = 0.9;
        for _ in 0..40 {
            let x_true = 0.2 + 0.6 * rng.u();
            let x = x_true + 0.01 * rng.n();
            let y = q_true * x_true + 0.005 * rng.n();
            a.add(x, y, 1e-4, 2.5e-5, 0.99);
        }
        let q = a.estimate(0.3, 1.5);
        assert!((q - q_true).abs() < 0.02, "q = {q}");
        // cost is minimal there
        assert!(a.cost(q) <= a.cost(q + 0.01) && a.cost(q) <= a.cost(q - 0.01));
    }

    /// Observations with unbalanced variances (a flat-OCV rest point: σx large, σy small):
    /// the balanced AWTLS lands near the minimiser of the exact WTLS cost
    /// Σ (y − Qx)²/(σy² + Q²σx²) + prior, where the unbalanced form follows the noisy x.
    #[test]
    fn balanced_awtls_follows_the_exact_wtls_cost_with_unbalanced_variances() {
        let mut rng = Rng(3);
        let q_true = 0.85;
        let prior = 0.1;
        let (mut bal, mut unbal) = (Awtls::with_prior(prior), Awtls::with_prior(prior));
        let mut obs = Vec::new();
        for k in 0..6 {
            let x_true = 0.15 + 0.05 * k as f64;
            // σx 0.05 (a plateau rest point), σy 0.005 (the counted charge)
            let (sx, sy) = (0.05, 0.005);
            let x = x_true + sx * rng.n();
            let y = q_true * x_true + sy * rng.n();
            bal.add_balanced(x, y, sx * sx, sy * sy, 1.0);
            unbal.add(x, y, sx * sx, sy * sy, 1.0);
            obs.push((x, y, sx * sx, sy * sy));
        }
        let exact = |q: f64| {
            let p = prior * prior;
            (1.0 - q) * (1.0 - q) / (p + q * q * p)
                + obs.iter().map(|(x, y, vx, vy)| (y - q * x).powi(2) / (vy + q * q * vx)).sum::<f64>()
        };
        let q_exact = (0..=12000).map(|i| 0.3 + 1.2 * i as f64 / 12000.0).fold((0.0, f64::INFINITY), |b, q| {
            let j = exact(q);
            if j < b.1 { (q, j) } else { b }
        }).0;
        let (qb, qu) = (bal.estimate(0.3, 1.5), unbal.estimate(0.3, 1.5));
        assert!((qb - q_exact).abs() < 0.02, "balanced {qb} vs exact {q_exact}");
        assert!((qu - q_exact).abs() > 2.0 * (qb - q_exact).abs(), "unbalanced {qu}, balanced {qb}, exact {q_exact}");
    }

    /// A prior away from the nominal capacity: the estimate is its centre, its variance σ², and
    /// observations of another capacity pull it as they pull the nominal prior.
    #[test]
    fn a_prior_centred_off_nominal_is_its_own_estimate_and_variance() {
        let s = 0.02;
        for q0 in [0.7, 0.85, 1.0, 1.2] {
            let a = Awtls::with_prior_at(q0, s);
            let q = a.estimate(0.3, 1.5);
            assert!((q - q0).abs() < 1e-6, "{q} vs {q0}");
            assert!((a.variance(q0) - s * s).abs() < 1e-9 * s * s, "{} vs {}", a.variance(q0), s * s);
        }
        // two precise observations of 0.8 move a loose prior at 0.9 most of the way
        let mut b = Awtls::with_prior_at(0.9, 0.1);
        b.add(0.5, 0.5 * 0.8, 1e-4, 1e-4, 1.0);
        b.add(0.5, 0.5 * 0.8, 1e-4, 1e-4, 1.0);
        let q = b.estimate(0.3, 1.5);
        assert!((q - 0.8).abs() < 0.01, "{q}");
    }

    /// The prior alone gives its own variance; observations of the same capacity shrink it
    /// (two equal ones: about a third of it, three measurements of equal weight), a numerical
    /// second difference of the cost agrees with the closed form.
    #[test]
    fn variance_is_the_inverse_curvature_of_the_cost() {
        let s = 0.075;
        let a = Awtls::with_prior(s);
        assert!((a.variance(1.0) - s * s).abs() < 1e-12 * s * s, "{}", a.variance(1.0));
        let mut b = a;
        b.add(0.8, 0.8 * 0.85, s * s, s * s, 1.0);
        b.add(0.8, 0.8 * 0.85, s * s, s * s, 1.0);
        let q = b.estimate(0.3, 1.5);
        let v = b.variance(q);
        assert!(v < 0.6 * s * s && v > 0.1 * s * s, "{v} vs prior {}", s * s);
        let h = 1e-4;
        let num = (b.cost(q + h) - 2.0 * b.cost(q) + b.cost(q - h)) / (h * h);
        assert!((1.0 / num - v).abs() < 1e-4 * v, "numerical {} vs closed form {v}", 1.0 / num);
        // no information at all: 1
        assert_eq!(Awtls { c: [0.0; 6] }.variance(1.0), 1.0);
    }

    #[test]
    fn r0_step_factor_reads_small_steps_from_rest_high_and_large_steps_low() {
        use crate::cell_model::CellEstimator;
        let lin = CellEstimator::default();
        assert_eq!(r0_step_factor(&lin, 0.0, 0.3, 10.0, 25.0), 1.0, "a linear cell: no correction");
        let e = CellEstimator { r0_step_ct_fraction: 0.8, r0_step_i0_c: 0.3, r0_step_i0_ea_kj_per_mol: 40.0, r0_step_pulse_ratio: 1.1, ..lin };
        // the 1 C pulse from rest at the reference temperature is the pulse ratio itself
        assert!((r0_step_factor(&e, 0.0, 1.0, 25.0, 25.0) - 1.1).abs() < 1e-12);
        let small = r0_step_factor(&e, 0.0, 0.3, 25.0, 25.0);
        let large = r0_step_factor(&e, 0.5, 2.0, 25.0, 25.0);
        assert!(small > 1.1 && large < 1.1, "small {small}, large {large}");
        // the kinetics are symmetric: a charge step reads as the discharge step
        assert!((r0_step_factor(&e, 0.0, -0.3, 25.0, 25.0) - small).abs() < 1e-12);
        // colder: a smaller exchange current, the same 0.3 C step is further up the curve's steep part
        let cold = r0_step_factor(&e, 0.0, 0.3, 0.0, 25.0);
        let cold_1c = r0_step_factor(&e, 0.0, 1.0, 0.0, 25.0);
        assert!(cold / cold_1c > small / 1.1, "cold {cold} / {cold_1c}");
        // the chord of a vanishing step is the slope
        let d = r0_step_factor(&e, 0.4, 0.4 + 1e-12, 25.0, 25.0);
        let near = r0_step_factor(&e, 0.4, 0.4 + 1e-6, 25.0, 25.0);
        assert!((d - near).abs() < 1e-6, "{d} vs {near}");
    }

    #[test]
    fn r0_observation_rejects_glitches() {
        assert_eq!(r0_observation(-0.1, 10.0, 0.01), Some(0.01));
        assert_eq!(r0_observation(0.1, 10.0, 0.01), None);
        assert_eq!(r0_observation(-1.0, 10.0, 0.01), None);
    }
}
