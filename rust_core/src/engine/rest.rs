//! Rest and SOH stage: rest detection and the rest point (OCV correction of SOC, one
//! capacity observation per cell from the charge moved between two rest points, by AWTLS),
//! the charge throughput since the last rest, and the per-cell R0 ratio (observed on current
//! steps inside the cell pass). Owns the per-cell capacity and resistance estimates the
//! cell pass reads.

use crate::cell_model::CellParams;
use crate::cell_tables::CellTables;
use crate::soc_ekf::{self, EstimatorConfig};
use crate::soh::{Awtls, CAPACITY_RATIO_RANGE};

use super::cells::Cells;
use super::sensing::Sensing;

#[derive(Debug, Clone)]
pub(super) struct RestSoh {
    // --- rest detection and throughput since the last rest point ---
    /// start of the current rest (NaN: not at rest)
    pub rest_since: f64,
    /// this rest's rest point is taken
    pub rest_done: bool,
    pub q_since_rest_ah: f64,
    pub dt2_since_rest: f64,
    pub time_since_rest_s: f64,
    // --- current step detection (R0) ---
    pub i_prev: f64,
    pub i_prev_valid: bool,
    // --- per cell ---
    /// 1 / (3600 · Q_cell_ah): SOC per coulomb of one (unit) cell
    pub inv_qc: Vec<f64>,
    pub cap_ah: Vec<f64>,
    /// Σ cap_ah (updated when a capacity estimate changes)
    pub cap_sum: f64,
    pub r0_ratio: Vec<f64>,
    pub awtls: Vec<Awtls>,
    /// SOC and its variance at the last rest point (NaN: none yet)
    pub z_rest: Vec<f64>,
    pub z_rest_var: Vec<f64>,
}

impl RestSoh {
    pub fn new(n: usize, cap: f64, capacity_prior_sigma: f64) -> Self {
        RestSoh {
            rest_since: f64::NAN,
            rest_done: false,
            q_since_rest_ah: 0.0,
            dt2_since_rest: 0.0,
            time_since_rest_s: 0.0,
            i_prev: 0.0,
            i_prev_valid: false,
            inv_qc: vec![1.0 / (3600.0 * cap); n],
            cap_ah: vec![cap; n],
            cap_sum: cap * n as f64,
            r0_ratio: vec![1.0; n],
            awtls: vec![Awtls::with_prior(capacity_prior_sigma); n],
            z_rest: vec![f64::NAN; n],
            z_rest_var: vec![f64::NAN; n],
        }
    }

    /// Rest detection: true once per rest, when the current has stayed inside the rest band
    /// for `rest_time_s` (the step that takes the rest point).
    pub fn detect_rest(&mut self, i: f64, t_s: f64, est: &EstimatorConfig) -> bool {
        let at_rest = i.abs() < est.rest_current_a;
        let mut rest_point = false;
        if at_rest {
            if self.rest_since.is_nan() {
                self.rest_since = t_s;
            }
            if !self.rest_done && t_s - self.rest_since >= est.rest_time_s {
                rest_point = true;
                self.rest_done = true;
            }
        } else {
            self.rest_since = f64::NAN;
            self.rest_done = false;
        }
        rest_point
    }

    /// The current step of this sample (A) and whether it is an R0 observation: both samples
    /// plausible, a step of at least `r0_step_min_a`, within one second.
    pub fn current_step(&mut self, i: f64, i_valid: bool, dt: f64, est: &EstimatorConfig) -> (f64, bool) {
        let di = i - self.i_prev;
        let r0_step = i_valid && self.i_prev_valid && di.abs() >= est.r0_step_min_a && dt > 0.0 && dt <= 1.0;
        self.i_prev = i;
        self.i_prev_valid = i_valid;
        (di, r0_step)
    }

    /// Charge throughput of this step (unit cell, efficiency applied) since the last rest.
    pub fn integrate(&mut self, eta: f64, i_cell: f64, dt: f64) {
        self.q_since_rest_ah += eta * i_cell * dt / 3600.0;
        self.dt2_since_rest += dt * dt;
        self.time_since_rest_s += dt;
    }

    /// Rest point: OCV correction of SOC, and a capacity observation since the last one.
    #[allow(clippy::too_many_arguments)]
    pub fn rest_point(&mut self, cells: &mut Cells, sensing: &Sensing, sensor_of: &[u32], tab: &CellTables, cell: &CellParams, est: &EstimatorConfig, par: f64) {
        let cap_nom = cell.capacity_ah;
        let var_y = {
            let s_i = est.current_noise_a / par;
            let s_off = est.current_offset_a / par;
            let v = s_i * s_i * self.dt2_since_rest / (3600.0 * 3600.0)
                + (s_off * self.time_since_rest_s / 3600.0).powi(2);
            (v / (cap_nom * cap_nom)).max(1e-10)
        };
        let y = self.q_since_rest_ah / cap_nom;
        for k in 0..cells.z.len() {
            if !sensing.v_valid[k] {
                continue;
            }
            let ss = &sensing.ss[sensor_of[k] as usize];
            // at rest v = OCV + h − v1 − v2: add back what is left of the RC polarisation
            // (after a 600 s rest the LG M50's τ2 ≈ 310 s pair still holds e^(−600/310) ≈ 14 %
            // of its load voltage, ~13 mV after 1C, ~1.5 % SOC on the OCV slope)
            let v_ocv = sensing.v_prev[k] - cells.h[k] + cells.v1[k] + cells.v2[k];
            let z_ocv = tab.soc_from_ocv(v_ocv, ss.dtemp);
            let slope = tab.slope(tab.locate(z_ocv)).max(1e-3);
            let var = (est.rest_ocv_sigma_v / slope).powi(2);
            soc_ekf::update_soc(&mut cells.z[k], &mut cells.v1[k], &mut cells.cov[k], z_ocv, var);
            let zp = self.z_rest[k];
            if zp.is_finite() {
                let x = zp - z_ocv;
                if x.abs() >= est.capacity_min_dsoc {
                    let var_x = self.z_rest_var[k] + var;
                    self.awtls[k].add(x, y, var_x, var_y, est.capacity_forgetting);
                    let q = self.awtls[k].estimate(CAPACITY_RATIO_RANGE.0, CAPACITY_RATIO_RANGE.1);
                    self.cap_ah[k] = q * cap_nom;
                    self.inv_qc[k] = 1.0 / (3600.0 * self.cap_ah[k]);
                }
            }
            self.z_rest[k] = z_ocv;
            self.z_rest_var[k] = var;
        }
        self.cap_sum = self.cap_ah.iter().sum();
        self.q_since_rest_ah = 0.0;
        self.dt2_since_rest = 0.0;
        self.time_since_rest_s = 0.0;
    }

    /// A restored state starts a new time base: rest and current step detection start over.
    pub fn restart_time_base(&mut self) {
        self.i_prev_valid = false;
        self.rest_since = f64::NAN;
        self.rest_done = false;
    }
}
