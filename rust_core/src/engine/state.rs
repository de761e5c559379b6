//! Engine state export/import.
//!
//! Format 1 (magic `MBMSENG1`): a small little-endian binary record, per cell 18 f64 in fixed
//! slots, then the pack values and the latched faults.

use crate::protection::Rule;
use crate::soc_ekf::Cov2;
use crate::soh::{CAPACITY_RATIO_RANGE, R0_RATIO_RANGE};

use super::{Engine, EngineStateError, SOC_STATE_RANGE};

impl Engine {
    const MAGIC: &'static [u8; 8] = b"MBMSENG1";

    pub fn export_state(&self) -> Vec<u8> {
        let mut w = Vec::with_capacity(16 + self.n * 16 * 8);
        w.extend_from_slice(Self::MAGIC);
        w.extend_from_slice(&(self.n as u64).to_le_bytes());
        w.extend_from_slice(&(self.n_t as u64).to_le_bytes());
        w.push(self.cells.initialized as u8);
        let put = |w: &mut Vec<u8>, x: f64| w.extend_from_slice(&x.to_le_bytes());
        for k in 0..self.n {
            for x in [
                self.cells.z[k],
                self.cells.v1[k],
                self.cells.v2[k],
                self.cells.h[k],
                self.cells.cov[k].p00,
                self.cells.cov[k].p01,
                self.cells.cov[k].p11,
                self.out.soc_cc[k],
                self.soh.cap_ah[k],
                self.soh.r0_ratio[k],
                self.soh.z_rest[k],
                self.soh.z_rest_var[k],
            ] {
                put(&mut w, x);
            }
            for c in self.soh.awtls[k].c {
                put(&mut w, c);
            }
        }
        for x in [
            self.soh.q_since_rest_ah,
            self.soh.dt2_since_rest,
            self.soh.time_since_rest_s,
            self.limits.dcl.value,
            self.limits.ccl.value,
            self.limits.dcl_peak.value,
            self.limits.ccl_peak.value,
        ] {
            put(&mut w, x);
        }
        // latched faults survive a restart (safety: a latched fault needs an explicit reset)
        let latched: Vec<(u8, u32)> =
            self.protection.latched().into_iter().map(|(r, k)| (r as u8, k as u32)).collect();
        w.extend_from_slice(&(latched.len() as u32).to_le_bytes());
        for (r, k) in latched {
            w.push(r);
            w.extend_from_slice(&k.to_le_bytes());
        }
        w
    }

    /// Restore an exported state. Structural problems (wrong size, other pack, non-finite
    /// values) are an error and nothing is applied; implausible values are dropped as described
    /// below and listed in the Ok value (empty: everything restored).
    pub fn import_state(&mut self, data: &[u8]) -> Result<Vec<String>, EngineStateError> {
        let e = |m: &str| EngineStateError { message: m.to_string() };
        let mut r = Reader { d: data, pos: 0 };
        if r.take(8).ok_or_else(|| e("truncated header"))? != Self::MAGIC {
            return Err(e("not an mbms engine state (bad magic/version)"));
        }
        let n = r.u64().ok_or_else(|| e("truncated header"))? as usize;
        let n_t = r.u64().ok_or_else(|| e("truncated header"))? as usize;
        if n != self.n || n_t != self.n_t {
            return Err(EngineStateError {
                message: format!(
                    "state is for {n} cells / {n_t} sensors, engine has {} / {}",
                    self.n, self.n_t
                ),
            });
        }
        let initialized = r.take(1).ok_or_else(|| e("truncated"))?[0] != 0;
        let mut per_cell = vec![[0.0f64; 18]; n];
        for row in per_cell.iter_mut() {
            for x in row.iter_mut() {
                *x = r.f64().ok_or_else(|| e("truncated cell data"))?;
            }
        }
        let mut pack = [0.0f64; 7];
        for x in pack.iter_mut() {
            *x = r.f64().ok_or_else(|| e("truncated pack data"))?;
        }
        let nl = r.u32().ok_or_else(|| e("truncated fault list"))? as usize;
        let mut latched = Vec::with_capacity(nl.min(1 << 20));
        for _ in 0..nl {
            let rule = r.take(1).ok_or_else(|| e("truncated fault list"))?[0];
            let k = r.u32().ok_or_else(|| e("truncated fault list"))? as usize;
            let rule = Rule::from_u8(rule).ok_or_else(|| e("unknown rule in fault list"))?;
            if k >= self.protection.len(rule) {
                return Err(e("fault index out of range"));
            }
            latched.push((rule, k));
        }
        if r.pos != data.len() {
            return Err(e("trailing bytes"));
        }
        for (k, row) in per_cell.iter().enumerate() {
            if row[..4].iter().chain(row[4..10].iter()).any(|x| !x.is_finite()) || row[8] <= 0.0 || row[9] <= 0.0 {
                return Err(EngineStateError { message: format!("cell {k}: non-finite or non-positive state") });
            }
        }
        // Plausibility (a file with a valid checksum can still hold nonsense: SOC 150 %, 1e6 Ah).
        // The estimator state is all or nothing: if any of it is implausible none is applied
        // and the engine starts from the first measurement (SOC from OCV, nominal capacity and
        // resistance), as on a first start. Latched faults are kept (they only ever hold the
        // contactors open); implausible limit values restart from 0 (they ramp up, S4).
        let mut dropped = Vec::new();
        let estimator_problem = self.implausible_estimator(&per_cell, &pack);
        if let Some(why) = &estimator_problem {
            dropped.push(format!("estimator state ({why}): starts from measurements"));
        }
        let lim = &self.cfg.limits;
        let dis_max = lim.max_discharge_a.max(lim.max_discharge_peak_a);
        let chg_max = lim.max_charge_a.max(lim.max_charge_peak_a);
        let mut limits = [pack[3], pack[4], pack[5], pack[6]];
        for (x, (name, hi)) in
            limits.iter_mut().zip([("dcl_a", dis_max), ("ccl_a", chg_max), ("dcl_peak_a", dis_max), ("ccl_peak_a", chg_max)])
        {
            if !(x.is_finite() && *x >= 0.0 && *x <= hi) {
                dropped.push(format!("limit {name} = {x} A (expected 0..{hi}): restarts from 0"));
                *x = 0.0;
            }
        }
        // all checked: apply
        if estimator_problem.is_none() {
            for (k, row) in per_cell.iter().enumerate() {
                self.cells.z[k] = row[0];
                self.cells.v1[k] = row[1];
                self.cells.v2[k] = row[2];
                self.cells.h[k] = row[3];
                self.cells.cov[k] = Cov2 { p00: row[4], p01: row[5], p11: row[6] };
                self.out.soc_cc[k] = row[7];
                self.soh.cap_ah[k] = row[8];
                self.soh.inv_qc[k] = 1.0 / (3600.0 * row[8]);
                self.soh.r0_ratio[k] = row[9];
                self.soh.z_rest[k] = row[10];
                self.soh.z_rest_var[k] = row[11];
                self.soh.awtls[k].c.copy_from_slice(&row[12..18]);
            }
            self.soh.cap_sum = self.soh.cap_ah.iter().sum();
            self.soh.q_since_rest_ah = pack[0];
            self.soh.dt2_since_rest = pack[1];
            self.soh.time_since_rest_s = pack[2];
            self.cells.initialized = initialized;
        }
        self.limits.dcl.value = limits[0];
        self.limits.ccl.value = limits[1];
        self.limits.dcl_peak.value = limits[2];
        self.limits.ccl_peak.value = limits[3];
        for (rule, k) in latched {
            self.protection.restore_latched(rule, k);
        }
        // re-anchor time: the next step starts a new time base (no integration over the gap)
        self.sensing.restart_time_base();
        self.soh.restart_time_base();
        self.balancer.decided_t = f64::NAN; // new time base: decide balancing afresh
        self.out.action = self.protection.collect(&mut self.out.faults);
        Ok(dropped)
    }

    /// The first implausible value of a restored estimator state (per-cell rows as exported,
    /// pack values q_since_rest, dt2_since_rest, time_since_rest), or None if all is plausible.
    /// Bands: the filter's own SOC range, the capacity and R0 bands of the SOH estimators
    /// (ratios to the cell file), the cell file's voltage window for polarisations and its
    /// hysteresis amplitude, a covariance that is one.
    fn implausible_estimator(&self, per_cell: &[[f64; 18]], pack: &[f64; 7]) -> Option<String> {
        let (z_lo, z_hi) = SOC_STATE_RANGE;
        let (c_lo, c_hi) = CAPACITY_RATIO_RANGE;
        let (r_lo, r_hi) = R0_RATIO_RANGE;
        let cap_nom = self.cell.capacity_ah;
        // an RC polarisation larger than the cell's whole voltage window is no polarisation
        let v_window = self.cell.v_max_v - self.cell.v_min_v;
        let h_max = self.cell.hysteresis_m_v.abs() * (1.0 + 1e-9) + 1e-12;
        let inside = |x: f64, lo: f64, hi: f64| x.is_finite() && x >= lo && x <= hi;
        let nan_or_inside = |x: f64, lo: f64, hi: f64| x.is_nan() || inside(x, lo, hi);
        for (k, row) in per_cell.iter().enumerate() {
            let (z, v1, v2, h, p00, p01, p11, cap, r0r, z_rest, z_rest_var) =
                (row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[8], row[9], row[10], row[11]);
            let why = if !inside(z, z_lo, z_hi) {
                format!("cell {k}: SOC {z} outside {z_lo}..{z_hi}")
            } else if !inside(cap / cap_nom, c_lo, c_hi) {
                format!("cell {k}: capacity {cap} Ah outside {c_lo}..{c_hi} x the cell file's {cap_nom} Ah")
            } else if !inside(r0r, r_lo, r_hi) {
                format!("cell {k}: resistance ratio {r0r} outside {r_lo}..{r_hi} x the cell file's R0")
            } else if !inside(v1, -v_window, v_window) || !inside(v2, -v_window, v_window) {
                format!("cell {k}: RC polarisation {v1} / {v2} V beyond the cell's {v_window} V window")
            } else if !inside(h, -h_max, h_max) {
                format!("cell {k}: hysteresis {h} V beyond the cell file's {h_max} V")
            } else if !(inside(p00, 0.0, 1.0) && p11 >= 0.0 && p01.is_finite() && p01 * p01 <= p00 * p11 * (1.0 + 1e-9) + 1e-300) {
                format!("cell {k}: covariance ({p00}, {p01}, {p11}) is not a covariance")
            } else if !nan_or_inside(z_rest, z_lo, z_hi) || !nan_or_inside(z_rest_var, 0.0, 1.0) {
                format!("cell {k}: rest point SOC {z_rest} (variance {z_rest_var}) implausible")
            } else if row[12..18].iter().any(|c| !c.is_finite()) {
                format!("cell {k}: non-finite capacity estimator sums")
            } else {
                continue;
            };
            return Some(why);
        }
        let (q, dt2, t_rest) = (pack[0], pack[1], pack[2]);
        if !q.is_finite() || !(dt2.is_finite() && dt2 >= 0.0) || !(t_rest.is_finite() && t_rest >= 0.0) {
            return Some(format!("time since rest {t_rest} s / charge {q} Ah / {dt2} implausible (negative or non-finite)"));
        }
        None
    }
}

struct Reader<'a> {
    d: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.d.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn f64(&mut self) -> Option<f64> {
        Some(f64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

