//! Limits stage: the pack's charge and discharge current limits (continuous and peak) from
//! the cell pass's per-cell SOF minima, capped by the configured maxima with temperature and
//! SOC derating, reduced by the protection action, and rate-limited upwards
//! ([`RateLimited`]: a limit drops at once and recovers at `recover_a_per_s`).

use crate::limits::{LimitsConfig, RateLimited};
use crate::protection::Action;

use super::cells::PackSums;
use super::sensing::Temps;
use super::state::X;
use super::EngineOutput;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default)]
pub(super) struct Limits {
    pub dcl: RateLimited,
    pub ccl: RateLimited,
    pub dcl_peak: RateLimited,
    pub ccl_peak: RateLimited,
}

/// Temperature derating factors (discharge, charge). The derating curves are unimodal
/// (validated), so the minimum over the sensors is at the coldest or the hottest one; with
/// no plausible temperature there is no current.
pub(super) fn temp_factors(lc: &LimitsConfig, t: &Temps) -> (f64, f64) {
    if t.any_valid {
        (
            lc.discharge_temp_derating.eval(t.min_c).min(lc.discharge_temp_derating.eval(t.max_c)).min(1.0),
            lc.charge_temp_derating.eval(t.min_c).min(lc.charge_temp_derating.eval(t.max_c)).min(1.0),
        )
    } else {
        (0.0, 0.0)
    }
}

impl Limits {
    /// This step's limits into `o` (`o.soc_min`/`o.soc_max` must be this step's).
    #[allow(clippy::too_many_arguments)]
    pub fn update(&mut self, lc: &LimitsConfig, sums: &PackSums, par: f64, (fd, fc): (f64, f64), action: Action, i_valid: bool, dt: f64, o: &mut EngineOutput) {
        let fsd = lc.discharge_soc_derating.eval(o.soc_min);
        let fsc = lc.charge_soc_derating.eval(o.soc_max);
        let mut td_c = (par * sums.ld_c).min(lc.max_discharge_a * fd * fsd);
        let mut tc_c = (par * sums.lc_c).min(lc.max_charge_a * fc * fsc);
        let mut td_p = (par * sums.ld_p).min(lc.max_discharge_peak_a * fd * fsd);
        let mut tc_p = (par * sums.lc_p).min(lc.max_charge_peak_a * fc * fsc);
        let factor = match action {
            Action::None => 1.0,
            Action::Derate => lc.warning_factor,
            Action::RampDown | Action::Open => 1.0,
        };
        td_c *= factor;
        tc_c *= factor;
        td_p *= factor;
        tc_p *= factor;
        if action == Action::RampDown {
            let down = lc.alarm_ramp_a_per_s * dt;
            td_c = td_c.min((self.dcl.value - down).max(0.0));
            tc_c = tc_c.min((self.ccl.value - down).max(0.0));
            td_p = td_p.min((self.dcl_peak.value - down).max(0.0));
            tc_p = tc_p.min((self.ccl_peak.value - down).max(0.0));
        }
        if action == Action::Open || !i_valid {
            td_c = 0.0;
            tc_c = 0.0;
            td_p = 0.0;
            tc_p = 0.0;
        }
        let rate = lc.recover_a_per_s;
        o.dcl_a = self.dcl.update(td_c, rate, dt);
        o.ccl_a = self.ccl.update(tc_c, rate, dt);
        o.dcl_peak_a = self.dcl_peak.update(td_p, rate, dt);
        o.ccl_peak_a = self.ccl_peak.update(tc_p, rate, dt);
    }
}

/// State of the limits stage in the state file, version 1 (see [`super::state`]): the
/// rate-limited values (A), from which the limits recover after a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LimitsStateV1 {
    pub version: u32,
    pub dcl_a: X,
    pub ccl_a: X,
    pub dcl_peak_a: X,
    pub ccl_peak_a: X,
}

impl Limits {
    pub fn export(&self) -> LimitsStateV1 {
        LimitsStateV1 {
            version: 1,
            dcl_a: X(self.dcl.value),
            ccl_a: X(self.ccl.value),
            dcl_peak_a: X(self.dcl_peak.value),
            ccl_peak_a: X(self.ccl_peak.value),
        }
    }

    /// The restored values, an implausible one (outside 0..the configured maximum) replaced
    /// by 0 and listed in `dropped`: it ramps up from there (S4).
    pub fn plausible(&self, s: &LimitsStateV1, lim: &LimitsConfig, dropped: &mut Vec<String>) -> [f64; 4] {
        let dis_max = lim.max_discharge_a.max(lim.max_discharge_peak_a);
        let chg_max = lim.max_charge_a.max(lim.max_charge_peak_a);
        let mut limits = [s.dcl_a.0, s.ccl_a.0, s.dcl_peak_a.0, s.ccl_peak_a.0];
        for (x, (name, hi)) in
            limits.iter_mut().zip([("dcl_a", dis_max), ("ccl_a", chg_max), ("dcl_peak_a", dis_max), ("ccl_peak_a", chg_max)])
        {
            if !(x.is_finite() && *x >= 0.0 && *x <= hi) {
                dropped.push(format!("limit {name} = {x} A (expected 0..{hi}): restarts from 0"));
                *x = 0.0;
            }
        }
        limits
    }

    pub fn import(&mut self, [dcl, ccl, dcl_peak, ccl_peak]: [f64; 4]) {
        self.dcl.value = dcl;
        self.ccl.value = ccl;
        self.dcl_peak.value = dcl_peak;
        self.ccl_peak.value = ccl_peak;
    }
}
