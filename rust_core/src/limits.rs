//! State of function (SOF): the current the pack can take over a horizon without any cell
//! leaving its voltage window, derated by temperature and SOC, bounded by configured maxima
//! and rate-limited on recovery.
//!
//! Per cell, with the equivalent-circuit model (Plett, "Battery Management Systems Vol. II",
//! 2016, §7.3 "power-limit estimation by the bisection-free ECM method"), for a constant
//! current I (discharge positive) held over Δt from the present state:
//!
//! ```text
//! v(Δt) = OCV(z) + h − v1·e^{−Δt/τ1} − I·(R0 + R1(1 − e^{−Δt/τ1}) + dOCV/dz·Δt/(3600·Q))
//! I_dis = (OCV + h − v1·d − v_min) / Rh,   I_chg = (v_max − OCV − h + v1·d) / Rh,
//! Rh    = R0 + R1·(1 − d) + dOCV/dz·Δt/(3600·Q),   d = e^{−Δt/τ1}
//! ```
//!
//! the string limit is P × the minimum over cells. A limit falls at once and recovers at a
//! bounded rate (A/s) so that the inverter is never given a step up.

use serde::Deserialize;

use crate::cell_model::interp_sorted;

/// A derating curve: factor (0..=1) over a breakpoint axis, linear between, clamped at the ends.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Derating {
    pub x: Vec<f64>,
    pub factor: Vec<f64>,
}

impl Derating {
    pub fn validate(&self) -> Result<(), String> {
        if self.x.is_empty() || self.x.len() != self.factor.len() {
            return Err(format!(
                "x and factor must have the same non-zero length, got {} and {}",
                self.x.len(),
                self.factor.len()
            ));
        }
        if self.x.windows(2).any(|w| !(w[1] > w[0])) {
            return Err("x breakpoints must be strictly increasing".into());
        }
        if self.factor.iter().any(|f| !(0.0..=1.0).contains(f)) {
            return Err("factors must be within 0..=1".into());
        }
        // unimodal: non-decreasing, then non-increasing (a window), so that the minimum
        // over several inputs is taken at the smallest or the largest of them
        let mut falling = false;
        for w in self.factor.windows(2) {
            if w[1] < w[0] {
                falling = true;
            } else if falling && w[1] > w[0] {
                return Err("factor must rise then fall (one window), not rise again".into());
            }
        }
        Ok(())
    }

    #[inline]
    pub fn eval(&self, x: f64) -> f64 {
        if x.is_nan() {
            return 0.0; // unknown input: fail safe
        }
        interp_sorted(&self.x, &self.factor, x)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Configured maxima of the string current (A): continuous and short-term peak.
    pub max_discharge_a: f64,
    pub max_charge_a: f64,
    pub max_discharge_peak_a: f64,
    pub max_charge_peak_a: f64,
    /// Prediction horizons (s) of the continuous and the peak limits.
    pub continuous_horizon_s: f64,
    pub peak_horizon_s: f64,
    /// Voltage margin (V) kept from the cell's v_min/v_max in the prediction.
    pub voltage_margin_v: f64,
    /// Recovery rate of a limit (A/s); falls are immediate.
    pub recover_a_per_s: f64,
    /// Factor applied to all limits while a warning is active (action Derate).
    pub warning_factor: f64,
    /// Rate (A/s) at which the limits are ramped to zero while an alarm is active.
    pub alarm_ramp_a_per_s: f64,
    /// Derating over the cell temperature (°C): the minimum over sensors is used.
    pub discharge_temp_derating: Derating,
    pub charge_temp_derating: Derating,
    /// Derating over SOC: discharge at the lowest cell SOC, charge at the highest.
    pub discharge_soc_derating: Derating,
    pub charge_soc_derating: Derating,
}

impl LimitsConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        let nonneg = |name: &str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err((name.to_string(), format!("expected a finite number >= 0, got {v}")))
            }
        };
        nonneg("max_discharge_a", self.max_discharge_a)?;
        nonneg("max_charge_a", self.max_charge_a)?;
        nonneg("max_discharge_peak_a", self.max_discharge_peak_a)?;
        nonneg("max_charge_peak_a", self.max_charge_peak_a)?;
        nonneg("voltage_margin_v", self.voltage_margin_v)?;
        nonneg("alarm_ramp_a_per_s", self.alarm_ramp_a_per_s)?;
        if self.max_discharge_peak_a < self.max_discharge_a {
            return Err(("max_discharge_peak_a".into(), "expected >= max_discharge_a".into()));
        }
        if self.max_charge_peak_a < self.max_charge_a {
            return Err(("max_charge_peak_a".into(), "expected >= max_charge_a".into()));
        }
        for (n, v) in [
            ("continuous_horizon_s", self.continuous_horizon_s),
            ("peak_horizon_s", self.peak_horizon_s),
            ("recover_a_per_s", self.recover_a_per_s),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err((n.into(), format!("expected a positive number, got {v}")));
            }
        }
        if self.peak_horizon_s > self.continuous_horizon_s {
            return Err(("peak_horizon_s".into(), "expected <= continuous_horizon_s".into()));
        }
        if !(0.0..=1.0).contains(&self.warning_factor) {
            return Err(("warning_factor".into(), "expected a value in 0..=1".into()));
        }
        for (n, d) in [
            ("discharge_temp_derating", &self.discharge_temp_derating),
            ("charge_temp_derating", &self.charge_temp_derating),
            ("discharge_soc_derating", &self.discharge_soc_derating),
            ("charge_soc_derating", &self.charge_soc_derating),
        ] {
            d.validate().map_err(|m| (n.to_string(), m))?;
        }
        Ok(())
    }
}

/// Per-cell limit (A per cell) for one direction: `headroom_v / r_h`, never negative.
/// `headroom_v` is the voltage the cell may still move; `inv_r_h` = 1 / the horizon
/// resistance (one division per horizon serves both directions).
#[inline(always)]
pub fn cell_limit(headroom_v: f64, inv_r_h: f64) -> f64 {
    let x = headroom_v * inv_r_h;
    // NaN (unknown cell) allows nothing
    if x > 0.0 {
        x
    } else {
        0.0
    }
}

/// A limit that falls at once and rises at a bounded rate.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RateLimited {
    pub value: f64,
}

impl RateLimited {
    /// Move towards `target` (>= 0): at once if lower, by at most `rate·dt` if higher.
    #[inline]
    pub fn update(&mut self, target: f64, rate_a_per_s: f64, dt_s: f64) -> f64 {
        let target = if target.is_nan() { 0.0 } else { target.max(0.0) };
        self.value = if target <= self.value {
            target
        } else {
            (self.value + rate_a_per_s * dt_s.max(0.0)).min(target)
        };
        self.value
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn rate_limit_falls_at_once_and_rises_bounded(
            targets in proptest::collection::vec(-10.0f64..500.0, 1..60),
            dt in 0.01f64..2.0, rate in 0.1f64..50.0
        ) {
            let mut r = RateLimited::default();
            for &t in &targets {
                let before = r.value;
                let v = r.update(t, rate, dt);
                prop_assert!(v >= 0.0);
                prop_assert!(v <= t.max(0.0) + 1e-12);
                prop_assert!(v - before <= rate * dt + 1e-9);
                if t.max(0.0) <= before { prop_assert_eq!(v, t.max(0.0)); }
            }
        }

        #[test]
        fn cell_limit_never_negative(h in -5.0f64..5.0, r in 1e-5f64..1.0) {
            prop_assert!(cell_limit(h, 1.0 / r) >= 0.0);
            prop_assert!(cell_limit(f64::NAN, 1.0 / r) == 0.0);
        }
    }

    #[test]
    fn derating_clamps_and_fails_safe() {
        let d = Derating { x: vec![-20.0, 0.0, 45.0, 60.0], factor: vec![0.0, 0.5, 1.0, 0.0] };
        assert!(d.validate().is_ok());
        assert_eq!(d.eval(-30.0), 0.0);
        assert_eq!(d.eval(22.5), 0.75);
        assert_eq!(d.eval(f64::NAN), 0.0);
        let bad = Derating { x: vec![0.0, 1.0, 2.0], factor: vec![1.0, 0.5, 1.0] };
        assert!(bad.validate().unwrap_err().contains("rise then fall"));
    }
}
