//! Current sharing between parallel strings (product brief §4) and the N−1 rule.
//!
//! For the closed set S, string i with OCV_i, total resistance R_i and own limit D_i ≥ 0:
//!   G = Σ_j 1/R_j,  V(I) = (Σ_j OCV_j/R_j − I)/G,  I_i(I) = (OCV_i − V(I))/R_i
//!   DCL = min_i [ G·R_i·D_i + Σ_j (OCV_j − OCV_i)/R_j ]   (≥ 0)
//!   CCL = min_i [ G·R_i·C_i − Σ_j (OCV_j − OCV_i)/R_j ]   (≥ 0)
//! (I_i(I) ≤ D_i ⇔ I ≤ G·R_i·D_i + Σ_j (OCV_j − OCV_i)/R_j, since ∂I_i/∂I = 1/(G·R_i).)
//! N−1: the minimum of the same over S with each one string removed, using the short-term
//! peak ratings (the inverter needs a moment to react to a string dropping out).

/// One string's state as the formula needs it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StringState {
    pub ocv_v: f64,
    pub r_ohm: f64,
    pub dcl_a: f64,
    pub ccl_a: f64,
    pub dcl_peak_a: f64,
    pub ccl_peak_a: f64,
}

/// How far each string's reported state may be from the truth (brief §4: "limits account for
/// their own uncertainty"). The per-string bound is evaluated at the worst case inside these
/// bounds, so the current a string really carries stays within its own limit whenever the
/// truth is inside them:
///
/// * `ocv_v`: the error of a string's OCV estimate *relative to the other strings* (V). The
///   strings share one OCV curve and one estimator, so the common-mode error cancels in
///   OCV_j − OCV_i; what is left is the SOC estimate's spread times dOCV/dSOC (+ the 10 mV
///   wire quantisation). Each difference is moved by 2·`ocv_v` against the string.
/// * `r_rel`: relative error of a string's resistance estimate (the estimator's R0 +
///   contactor/cabling from the pack file; the wire floors it to 100 µΩ). G·R_i is taken at
///   R_i low and every other R_j high, and the circulating term at its worst end.
/// * `i_rel`: gain error of the inverter's own current control/measurement: the total it
///   really draws may be this much above what it is allowed.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Uncertainty {
    pub ocv_v: f64,
    pub r_rel: f64,
    pub i_rel: f64,
}

/// A resistance at or below this is treated as this (guards 1/R against a zero field).
const R_MIN_OHM: f64 = 1e-5;

fn r_of(s: &StringState) -> f64 {
    if s.r_ohm.is_finite() {
        s.r_ohm.max(R_MIN_OHM)
    } else {
        R_MIN_OHM
    }
}

/// System (DCL, CCL) of a closed set with the given per-string limits (`peak` selects the
/// short-term ratings). Empty set → (0, 0). Any non-finite input → (0, 0) (fail low).
pub fn set_limits(set: &[StringState], peak: bool) -> (f64, f64) {
    set_limits_with(set, peak, &Uncertainty::default())
}

/// [`set_limits`] with the states' uncertainty accounted for (see [`Uncertainty`]).
pub fn set_limits_with(set: &[StringState], peak: bool, u: &Uncertainty) -> (f64, f64) {
    if set.is_empty() || set.iter().any(|s| !s.ocv_v.is_finite()) {
        return (0.0, 0.0);
    }
    if *u != Uncertainty::default() {
        let all: Vec<&StringState> = set.iter().collect();
        return robust_limits(&all, peak, u);
    }
    let g: f64 = set.iter().map(|s| 1.0 / r_of(s)).sum();
    let sum_ocv_g: f64 = set.iter().map(|s| s.ocv_v / r_of(s)).sum();
    limits_from_sums(set.iter(), g, sum_ocv_g, peak)
}

/// The brief §4 bound of every string of `set` at the worst case inside `u` (O(N²)):
///
///   I ≤ G'·R_i'·D_i + Σ_j (OCV_j' − OCV_i')/R_j'   for every true R', OCV' within `u`,
///
/// G'·R_i' = 1 + Σ_{j≠i} R_i'/R_j' ≥ 1 + Σ_{j≠i} (R_i/R_j)·(1−ε)/(1+ε); each term of the
/// sum is (Δ_j ∓ 2u)/R_j' at the end of R_j' ∈ R_j·[1−ε, 1+ε] that makes it smallest (for
/// charge, largest: it enters with a minus). The allowed total is then divided by 1 + i_rel.
fn robust_limits(set: &[&StringState], peak: bool, u: &Uncertainty) -> (f64, f64) {
    let eps = u.r_rel.clamp(0.0, 0.5);
    let k = (1.0 - eps) / (1.0 + eps);
    let du = 2.0 * u.ocv_v.max(0.0);
    let mut dcl = f64::INFINITY;
    let mut ccl = f64::INFINITY;
    for (i, si) in set.iter().enumerate() {
        let ri = r_of(si);
        let (d, c) = if peak { (si.dcl_peak_a, si.ccl_peak_a) } else { (si.dcl_a, si.ccl_a) };
        let d = if d.is_finite() { d.max(0.0) } else { 0.0 };
        let c = if c.is_finite() { c.max(0.0) } else { 0.0 };
        let mut gr = 1.0;
        let (mut circ_lo, mut circ_hi) = (0.0, 0.0);
        for (j, sj) in set.iter().enumerate() {
            if j == i {
                continue;
            }
            let rj = r_of(sj);
            gr += ri / rj * k;
            let dv = sj.ocv_v - si.ocv_v;
            let (lo, hi) = (dv - du, dv + du);
            circ_lo += (lo / (rj * (1.0 - eps))).min(lo / (rj * (1.0 + eps)));
            circ_hi += (hi / (rj * (1.0 - eps))).max(hi / (rj * (1.0 + eps)));
        }
        dcl = dcl.min(gr * d + circ_lo);
        ccl = ccl.min(gr * c - circ_hi);
    }
    let g = 1.0 + u.i_rel.max(0.0);
    let clean = |x: f64| if x.is_finite() { (x / g).max(0.0) } else { 0.0 };
    (clean(dcl), clean(ccl))
}

/// The min over `strings` of the brief §4 per-string bound, given G = Σ 1/R_j and
/// Σ OCV_j/R_j of the set: Σ_j (OCV_j − OCV_i)/R_j = Σ OCV_j/R_j − OCV_i·G, so each string
/// costs O(1) and a whole set O(N).
fn limits_from_sums<'a>(strings: impl Iterator<Item = &'a StringState>, g: f64, sum_ocv_g: f64, peak: bool) -> (f64, f64) {
    let mut dcl = f64::INFINITY;
    let mut ccl = f64::INFINITY;
    for si in strings {
        let ri = r_of(si);
        let circ = sum_ocv_g - si.ocv_v * g;
        let (d, c) = if peak { (si.dcl_peak_a, si.ccl_peak_a) } else { (si.dcl_a, si.ccl_a) };
        let d = if d.is_finite() { d.max(0.0) } else { 0.0 };
        let c = if c.is_finite() { c.max(0.0) } else { 0.0 };
        dcl = dcl.min(g * ri * d + circ);
        ccl = ccl.min(g * ri * c - circ);
    }
    let clean = |x: f64| if x.is_finite() { x.max(0.0) } else { 0.0 };
    (clean(dcl), clean(ccl))
}

/// The limit a peer may report for closed set S: the continuous-rating limit of S and,
/// when S has ≥ 2 strings, the peak-rating limit of every S minus one string (N−1).
/// O(N²): the sums of S minus string k are the sums of S minus k's terms.
pub fn n1_limits(set: &[StringState]) -> (f64, f64) {
    n1_limits_with(set, &Uncertainty::default())
}

/// [`n1_limits`] with the states' uncertainty accounted for (see [`Uncertainty`]).
pub fn n1_limits_with(set: &[StringState], u: &Uncertainty) -> (f64, f64) {
    if *u != Uncertainty::default() {
        let (mut dcl, mut ccl) = set_limits_with(set, false, u);
        if set.len() >= 2 && (dcl > 0.0 || ccl > 0.0) {
            for k in 0..set.len() {
                let rest: Vec<&StringState> = set.iter().enumerate().filter(|(i, _)| *i != k).map(|(_, s)| s).collect();
                let (d, c) = robust_limits(&rest, true, u);
                dcl = dcl.min(d);
                ccl = ccl.min(c);
            }
        }
        return (dcl, ccl);
    }
    let (mut dcl, mut ccl) = set_limits(set, false);
    if set.len() >= 2 && (dcl > 0.0 || ccl > 0.0) {
        let g: f64 = set.iter().map(|s| 1.0 / r_of(s)).sum();
        let sum_ocv_g: f64 = set.iter().map(|s| s.ocv_v / r_of(s)).sum();
        for (k, sk) in set.iter().enumerate() {
            let rk = r_of(sk);
            let rest = set.iter().enumerate().filter(|(i, _)| *i != k).map(|(_, s)| s);
            let (d, c) = limits_from_sums(rest, g - 1.0 / rk, sum_ocv_g - sk.ocv_v / rk, true);
            dcl = dcl.min(d);
            ccl = ccl.min(c);
        }
    }
    (dcl, ccl)
}

/// String currents at total discharge current `i_total` (for tests and the simulator).
pub fn string_currents(set: &[StringState], i_total: f64) -> Vec<f64> {
    let g: f64 = set.iter().map(|s| 1.0 / r_of(s)).sum();
    let v = (set.iter().map(|s| s.ocv_v / r_of(s)).sum::<f64>() - i_total) / g;
    set.iter().map(|s| (s.ocv_v - v) / r_of(s)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(ocv: f64, r: f64, d: f64) -> StringState {
        StringState { ocv_v: ocv, r_ohm: r, dcl_a: d, ccl_a: d, dcl_peak_a: 2.0 * d, ccl_peak_a: 2.0 * d }
    }

    #[test]
    fn equal_strings_give_n_times_d_and_n1_uses_peak() {
        let set = vec![s(400.0, 0.05, 100.0); 4];
        let (d, c) = set_limits(&set, false);
        assert!((d - 400.0).abs() < 1e-9 && (c - 400.0).abs() < 1e-9);
        // N−1 with peak = 2×: 3 × 200 = 600 > 400, so continuous binds.
        assert!((n1_limits(&set).0 - 400.0).abs() < 1e-9);
        let set2: Vec<_> = set.iter().map(|x| StringState { dcl_peak_a: x.dcl_a, ..*x }).collect();
        assert!((n1_limits(&set2).0 - 300.0).abs() < 1e-9);
    }

    #[test]
    fn at_the_limit_the_binding_string_carries_exactly_its_limit() {
        let set = vec![s(401.0, 0.04, 120.0), s(399.5, 0.06, 80.0), s(400.2, 0.05, 100.0)];
        let (dcl, ccl) = set_limits(&set, false);
        let id = string_currents(&set, dcl);
        let ic = string_currents(&set, -ccl);
        for (k, st) in set.iter().enumerate() {
            assert!(id[k] <= st.dcl_a + 1e-9, "string {k}: {} > {}", id[k], st.dcl_a);
            assert!(-ic[k] <= st.ccl_a + 1e-9);
        }
        assert!(id.iter().zip(&set).any(|(i, st)| (i - st.dcl_a).abs() < 1e-6));
    }

    #[test]
    fn uncertainty_bounds_the_true_currents_and_zero_uncertainty_is_the_formula() {
        let est = vec![s(401.0, 0.04, 120.0), s(399.5, 0.06, 80.0), s(400.2, 0.05, 100.0)];
        assert_eq!(set_limits_with(&est, false, &Uncertainty::default()), set_limits(&est, false));
        let u = Uncertainty { ocv_v: 0.2, r_rel: 0.05, i_rel: 0.01 };
        let (dcl, ccl) = set_limits_with(&est, false, &u);
        let (d0, c0) = set_limits(&est, false);
        assert!(dcl < d0 && ccl < c0 && dcl > 0.0 && ccl > 0.0);
        // every truth at the corners of the bounds: no string above its own limit
        for m in 0u32..(1 << 6) {
            let truth: Vec<StringState> = est
                .iter()
                .enumerate()
                .map(|(k, x)| StringState {
                    ocv_v: x.ocv_v + if m >> (2 * k) & 1 == 1 { 0.2 } else { -0.2 },
                    r_ohm: x.r_ohm * if m >> (2 * k + 1) & 1 == 1 { 1.05 } else { 0.95 },
                    ..*x
                })
                .collect();
            let id = string_currents(&truth, dcl * 1.01);
            let ic = string_currents(&truth, -ccl * 1.01);
            for (k, st) in truth.iter().enumerate() {
                assert!(id[k] <= st.dcl_a + 1e-9, "corner {m} string {k}: {} > {}", id[k], st.dcl_a);
                assert!(-ic[k] <= st.ccl_a + 1e-9, "corner {m} string {k}: {} > {}", -ic[k], st.ccl_a);
            }
        }
    }

    #[test]
    fn bad_numbers_fail_low() {
        assert_eq!(set_limits(&[], false), (0.0, 0.0));
        let set = vec![s(f64::NAN, 0.05, 100.0), s(400.0, 0.05, 100.0)];
        let (d, c) = set_limits(&set, false);
        assert_eq!((d, c), (0.0, 0.0));
    }
}
