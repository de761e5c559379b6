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
    if set.is_empty() || set.iter().any(|s| !s.ocv_v.is_finite()) {
        return (0.0, 0.0);
    }
    let g: f64 = set.iter().map(|s| 1.0 / r_of(s)).sum();
    let sum_ocv_g: f64 = set.iter().map(|s| s.ocv_v / r_of(s)).sum();
    limits_from_sums(set.iter(), g, sum_ocv_g, peak)
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
    fn bad_numbers_fail_low() {
        assert_eq!(set_limits(&[], false), (0.0, 0.0));
        let set = vec![s(f64::NAN, 0.05, 100.0), s(400.0, 0.05, 100.0)];
        let (d, c) = set_limits(&set, false);
        assert_eq!((d, c), (0.0, 0.0));
    }
}
