//! Rest and SOH stage: rest detection and the rest point (OCV correction of SOC, one
//! capacity observation per cell from the charge moved between two rest points, by AWTLS),
//! the charge throughput since the last rest, and the per-cell R0 ratio (observed on current
//! steps inside the cell pass). Owns the per-cell capacity and resistance estimates the
//! cell pass reads.

use crate::cell_model::CellParams;
use crate::cell_tables::CellTables;
use crate::soc_ekf::{self, EstimatorConfig};
use crate::soh::{Awtls, CAPACITY_RATIO_RANGE, R0_COUNT_CAP, R0_RATIO_RANGE};

use super::cells::Cells;
use super::sensing::Sensing;
use super::state::{xs, X};
use super::SOC_STATE_RANGE;

use serde::{Deserialize, Serialize};

/// What [`RestSoh::detect_rest`] found on this sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum RestEvent {
    None,
    /// the rest begun at `since_s` has lasted `rest_time_s`: take the rest point with this
    /// sample
    Point { since_s: f64 },
    /// a rest begun at `since_s`, shorter than `rest_time_s` but of at least `rest_end_min_s`,
    /// ended at `t_end_s` (the previous sample): take the rest point with that sample, before
    /// this one is used
    EndPoint { since_s: f64, t_end_s: f64 },
}

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
    /// the recent load (C-rate, unit cell) the model error scales with (see
    /// [`soc_ekf::load_c_rate`])
    pub load_c: f64,
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
    /// R0 observations each cell has taken (capped at `soh::R0_COUNT_CAP`): the weight of
    /// its running mean (`soh::r0_running_gain`)
    pub r0_n: Vec<f64>,
    /// The SOH resistance ratio the engine reports, per cell, and its observation count:
    /// the same running mean as `r0_ratio` over the steps at or above the cell file's
    /// `r0_soh_min_temp_c` only (`r0_ratio` is the SOC filter's, from every step)
    pub r0_soh_ratio: Vec<f64>,
    pub r0_soh_n: Vec<f64>,
    /// mean of `r0_soh_ratio` over the cells (the engine's `soh_resistance`): recomputed only
    /// where the ratios change (a step sample, a restored state), not in the per-sample pass;
    /// not in the state file
    pub r0_soh_mean: f64,
    pub awtls: Vec<Awtls>,
    /// variance of each cell's capacity estimate, relative (see [`Awtls::variance`]): what
    /// the SOC σ the engine reports adds for the charge counted since the last anchor (a
    /// consider term, see `Cells::update`); not in the state file, recomputed from `awtls`
    pub cap_var: Vec<f64>,
    /// SOC and its variance at the last rest point (NaN: none yet)
    pub z_rest: Vec<f64>,
    pub z_rest_var: Vec<f64>,
    /// this charge's full-charge synchronisation is taken (see [`RestSoh::full_charge`])
    pub full_done: Vec<bool>,
    /// this discharge's end-of-discharge synchronisation is taken (see
    /// [`RestSoh::end_of_discharge`])
    pub empty_done: Vec<bool>,
    /// start of the present low-rate discharge (the window of the end-of-discharge
    /// synchronisation; NaN: not in it)
    pub empty_low_since: f64,
    /// the string current sensor's offset learnt at rest (A, see [`RestSoh::zero_current`]);
    /// not in the state file: a restart learns it again at the next rest
    pub i_offset_a: f64,
    /// per cell: the filter's RC1 voltage when the present rest began (see
    /// [`RestSoh::rest_point`]); not in the state file: a restart begins a new rest
    pub v1_rest_start: Vec<f64>,
    /// per cell: the rest's OCV reading averaged over its samples so far (see
    /// [`RestSoh::rest_sample`]; NaN: none yet); not in the state file, as `v1_rest_start`
    pub v_ocv_avg: Vec<f64>,
}

/// Time constant (s) of the average the rest point reads the OCV from
/// ([`RestSoh::rest_sample`]). One sample carries the cell monitor's full noise (the brief's
/// ±2 mV, 1σ in the accuracy harness), and on a flat OCV that noise is several % of SOC: on
/// the held-out LFP trace lfp_h4 (seed 3) a single rest sample 3.5 mV high, at 83.6 % SOC on
/// the A123 plateau (0.25 mV per %), read 94.9 %, where the OCV is four times steeper, so the
/// reading's own σ came out small (2.7 %) and the rest point moved the SOC 7 % the wrong way
/// and the capacity with it. A minute's exponential average takes white noise down by
/// √(Δt/2τ) (2 mV → 0.18 mV at 1 s samples) and is short against the relaxation, which each
/// sample's reading corrects for itself.
pub const REST_OCV_AVG_S: f64 = 60.0;


impl RestSoh {
    /// `cap`: the capacity the cells start with (Ah: the cell file's × the pack file's
    /// `capacity_prior_ratio`), the prior's centre `prior_ratio` and σ.
    pub fn new(n: usize, cap: f64, prior_ratio: f64, capacity_prior_sigma: f64) -> Self {
        RestSoh {
            rest_since: f64::NAN,
            rest_done: false,
            q_since_rest_ah: 0.0,
            dt2_since_rest: 0.0,
            time_since_rest_s: 0.0,
            load_c: 0.0,
            i_prev: 0.0,
            i_prev_valid: false,
            inv_qc: vec![1.0 / (3600.0 * cap); n],
            cap_ah: vec![cap; n],
            cap_sum: cap * n as f64,
            r0_ratio: vec![1.0; n],
            r0_n: vec![0.0; n],
            r0_soh_ratio: vec![1.0; n],
            r0_soh_n: vec![0.0; n],
            r0_soh_mean: 1.0,
            awtls: vec![Awtls::with_prior_at(prior_ratio, capacity_prior_sigma); n],
            cap_var: vec![capacity_prior_sigma * capacity_prior_sigma; n],
            z_rest: vec![f64::NAN; n],
            z_rest_var: vec![f64::NAN; n],
            full_done: vec![false; n],
            empty_done: vec![false; n],
            empty_low_since: f64::NAN,
            i_offset_a: 0.0,
            v1_rest_start: vec![0.0; n],
            v_ocv_avg: vec![f64::NAN; n],
        }
    }

    /// Zero-current calibration at rest: once the current has stayed in the rest band for
    /// `OFFSET_SETTLE_S`, the string carries no current and what the sensor reads is its
    /// offset (the auto-zero of a current sensor or coulomb counter while no current can
    /// flow, as BMSs do with the contactors open; here the rest band stands for it). The estimate low-passes the reading with the
    /// pack file's `current_offset_tau_s` (0: off) and is bounded by ±3 `current_offset_a`
    /// (the sensor's stated offset, 1σ), so a real standby current larger than the sensor can
    /// be wrong by is not calibrated away. Returns the corrected current (A), which the SOC
    /// filter, the coulomb count and the capacity observations use: a 0.01 C offset is 1 % of
    /// SOC per 100 min, the drift that held the NMC held-out traces above 0.5 % RMSE (issue 16).
    pub fn zero_current(&mut self, i: f64, i_valid: bool, t_s: f64, dt: f64, est: &EstimatorConfig) -> f64 {
        if !i_valid {
            return i;
        }
        let tau = est.current_offset_tau_s;
        if tau > 0.0 && dt > 0.0 && !self.rest_since.is_nan() && t_s - self.rest_since >= soc_ekf::OFFSET_SETTLE_S {
            let lim = 3.0 * est.current_offset_a;
            let g = (dt / tau).min(1.0);
            self.i_offset_a = (self.i_offset_a + g * (i - self.i_offset_a)).clamp(-lim, lim);
        }
        i - self.i_offset_a
    }

    /// Rest detection, once per rest: [`RestEvent::Point`] when the current has stayed inside
    /// the rest band for `rest_time_s` (the step that takes the rest point), or
    /// [`RestEvent::EndPoint`] when a rest of at least `rest_end_min_s` ends before that (the
    /// load resumes: the rest point is taken with the rest's last sample, before this one is
    /// counted). A sample stands for the period before it (the coulomb count integrates it
    /// over that Δt), so a rest starts one Δt before its first sample: 600 samples at 1 s
    /// after a load are a 600 s rest.
    /// `v1`: the filter's RC1 voltages before this sample, kept when a rest begins.
    pub fn detect_rest(&mut self, i: f64, t_s: f64, dt: f64, est: &EstimatorConfig, v1: &[f64]) -> RestEvent {
        let at_rest = i.abs() < est.rest_current_a;
        let mut event = RestEvent::None;
        if at_rest {
            if self.rest_since.is_nan() {
                self.rest_since = t_s - dt;
                self.v1_rest_start.copy_from_slice(v1);
                self.v_ocv_avg.fill(f64::NAN);
            }
            if !self.rest_done && t_s - self.rest_since >= est.rest_time_s {
                event = RestEvent::Point { since_s: self.rest_since };
                self.rest_done = true;
            }
        } else {
            // the rest's last sample is the previous one, at t_s − dt
            let rest_s = t_s - dt - self.rest_since;
            if !self.rest_done && est.rest_end_min_s > 0.0 && rest_s >= est.rest_end_min_s {
                event = RestEvent::EndPoint { since_s: self.rest_since, t_end_s: t_s - dt };
            }
            self.rest_since = f64::NAN;
            self.rest_done = false;
        }
        event
    }

    /// The current step of this sample (A) and whether it is an R0 observation: both samples
    /// plausible, a step of at least `step_min_a` (string current: the cell file's
    /// `estimator.r0_step_min_c` × capacity × parallel count, see [`RestSoh::r0_step_min_a`];
    /// 0: no R0 learning), within one second.
    pub fn current_step(&mut self, i: f64, i_valid: bool, dt: f64, step_min_a: f64) -> (f64, bool) {
        let di = i - self.i_prev;
        let r0_step = step_min_a > 0.0 && i_valid && self.i_prev_valid && di.abs() >= step_min_a && dt > 0.0 && dt <= 1.0;
        self.i_prev = i;
        self.i_prev_valid = i_valid;
        (di, r0_step)
    }

    /// The string current step (A) that gives an R0 observation: the cell file's C-rate
    /// `estimator.r0_step_min_c` of the pack's parallel group.
    pub fn r0_step_min_a(cell: &CellParams, par: f64) -> f64 {
        cell.estimator.r0_step_min_c * cell.capacity_ah * par
    }

    /// Charge throughput of this step (unit cell, efficiency applied) since the last rest.
    pub fn integrate(&mut self, eta: f64, i_cell: f64, dt: f64, cell: &CellParams, rest_cell_a: f64) {
        let q = cell.capacity_ah;
        self.load_c = soc_ekf::load_c_rate(self.load_c, i_cell / q, rest_cell_a / q, dt, cell.estimator.model_error_relax_s);
        self.q_since_rest_ah += eta * i_cell * dt / 3600.0;
        self.dt2_since_rest += dt * dt;
        self.time_since_rest_s += dt;
    }

    /// Variance (normalised by the nominal capacity²) of the charge counted since the last
    /// anchor: sensor noise per sample and the offset over the whole interval.
    fn throughput_variance(&self, est: &EstimatorConfig, par: f64, cap_nom: f64) -> f64 {
        let s_i = est.current_noise_a / par;
        let s_off = est.current_offset_a / par;
        let v = s_i * s_i * self.dt2_since_rest / (3600.0 * 3600.0) + (s_off * self.time_since_rest_s / 3600.0).powi(2);
        (v / (cap_nom * cap_nom)).max(1e-10)
    }

    /// One anchor of cell k: an SOC known independently of the capacity (`z_meas`, variance
    /// `var`: the OCV after a rest, or full charge). Corrects the filter's SOC, and with the
    /// previous anchor gives one capacity observation (SOC change vs charge counted between
    /// them). `y`, `var_y`: the normalised charge since the last anchor and its variance.
    #[allow(clippy::too_many_arguments)]
    fn anchor(&mut self, k: usize, cells: &mut Cells, z_meas: f64, var: f64, y: f64, var_y: f64, cap_nom: f64, est: &EstimatorConfig) {
        let (k0, k1) = soc_ekf::update_anchor(&mut cells.z[k], &mut cells.v1[k], &mut cells.cov[k], z_meas, var);
        cells.anchor_sensitivity(k, k0, k1);
        let zp = self.z_rest[k];
        if zp.is_finite() {
            let x = zp - z_meas;
            if x.abs() >= est.capacity_min_dsoc {
                let var_x = self.z_rest_var[k] + var;
                // both variances: a flat-OCV rest point must not count as a precise one
                // (see `Awtls::add_balanced`)
                self.awtls[k].add_balanced(x, y, var_x, var_y, est.capacity_forgetting);
                let q = self.awtls[k].estimate(CAPACITY_RATIO_RANGE.0, CAPACITY_RATIO_RANGE.1);
                self.cap_var[k] = self.awtls[k].variance(q);
                self.cap_ah[k] = q * cap_nom;
                self.inv_qc[k] = 1.0 / (3600.0 * self.cap_ah[k]);
            }
        }
        self.z_rest[k] = z_meas;
        self.z_rest_var[k] = var;
    }

    /// Recompute `r0_soh_mean` (after a pass with an R0 step, or a restored state).
    pub fn update_r0_soh_mean(&mut self) {
        self.r0_soh_mean = self.r0_soh_ratio.iter().sum::<f64>() / self.r0_soh_ratio.len() as f64;
    }

    fn reset_throughput(&mut self) {
        self.cap_sum = self.cap_ah.iter().sum();
        self.q_since_rest_ah = 0.0;
        self.dt2_since_rest = 0.0;
        self.time_since_rest_s = 0.0;
    }

    /// Cell k's OCV as a voltage `v` read `rest_s` into a rest shows it: at rest
    /// v = OCV + h − v1 − v2, so the hysteresis is taken out and what is left of the RC
    /// polarisation added back (v2 open loop, v1 as the load left it decayed with τ1, see
    /// [`RestSoh::rest_point`]).
    fn ocv_reading(&self, k: usize, v: f64, cells: &Cells, ss: &super::sensing::SensorStep, rest_s: f64) -> f64 {
        let v1_left = self.v1_rest_start[k] * (-rest_s / ss.tau1_s()).exp();
        v - cells.h[k] + v1_left + cells.v2[k]
    }

    /// One rest sample's OCV reading, into the rest's average ([`REST_OCV_AVG_S`]): the cell
    /// voltage with the RC polarisation the model says is left added back (as
    /// [`RestSoh::rest_point`] describes) and the hysteresis taken out, at this sample's time,
    /// so the average carries no relaxation lag. Called after the filter's pass of a sample
    /// inside a rest (its `h` and `v2` are this sample's), until the rest point is taken.
    pub fn rest_sample(&mut self, cells: &Cells, sensing: &Sensing, sensor_of: &[u32], v_cell_v: &[f64], t_s: f64, dt: f64) {
        if self.rest_since.is_nan() || self.rest_done {
            return;
        }
        let rest_s = t_s - self.rest_since;
        let g = (dt / REST_OCV_AVG_S).clamp(0.0, 1.0);
        for k in 0..self.v_ocv_avg.len() {
            if !sensing.v_valid[k] {
                continue;
            }
            let reading = self.ocv_reading(k, v_cell_v[k], cells, &sensing.ss[sensor_of[k] as usize], rest_s);
            let a = &mut self.v_ocv_avg[k];
            *a = if a.is_finite() { *a + g * (reading - *a) } else { reading };
        }
    }

    /// Rest point: OCV correction of SOC, and a capacity observation since the last anchor.
    ///
    /// The OCV is the rest voltage with the RC polarisation the model says is left added back:
    /// v2 (a known input, open loop) and the RC1 voltage the load left when the rest began,
    /// decayed over the rest with τ1 at the cells' temperature. Not the filter's present v1:
    /// during the rest the voltage updates move v1 as well as z, and on a flat OCV mostly v1,
    /// so the filter's v1 takes up whatever keeps the measured voltage on the OCV of the
    /// filter's own SOC (a relaxation slower than the RC pairs, an OCV error). Added back, it
    /// made the rest point read the filter's SOC back to it, as if it were an independent
    /// measurement: on the held-out in-service LFP trace lfp_h7 each rest at 45 % SOC (beside
    /// the OCV step between 40 and 50 %) read 51 % with a 1 % σ (v1 6 mV after 10 min, where
    /// the model's τ1 of 139 s leaves under 2 % of the load's), and the capacity learnt from
    /// those rests stayed 0.95 (true 0.86).
    ///
    /// The reading is the rest's average ([`RestSoh::rest_sample`], each sample corrected
    /// this way at its own time); one sample only where the rest has none (no valid voltage).
    ///
    /// `t_s`: the time of the rest sample in `sensing.v_prev` (this sample's, or for a
    /// [`RestEvent::EndPoint`] the previous one's, called before this sample is used);
    /// `rest_since`: when the rest began (both carried by the [`RestEvent`]).
    #[allow(clippy::too_many_arguments)]
    pub fn rest_point(&mut self, cells: &mut Cells, sensing: &Sensing, sensor_of: &[u32], tab: &CellTables, cell: &CellParams, est: &EstimatorConfig, par: f64, t_s: f64, rest_since: f64) {
        let cap_nom = cell.capacity_ah;
        let var_y = self.throughput_variance(est, par, cap_nom);
        let y = self.q_since_rest_ah / cap_nom;
        let rest_s = t_s - rest_since;
        for k in 0..cells.z.len() {
            if !sensing.v_valid[k] {
                continue;
            }
            let ss = &sensing.ss[sensor_of[k] as usize];
            // at rest v = OCV + h − v1 − v2: add back what is left of the RC polarisation
            // (after a 600 s rest the LG M50's τ2 ≈ 310 s pair still holds e^(−600/310) ≈ 14 %
            // of its load voltage, ~13 mV after 1C, ~1.5 % SOC on the OCV slope)
            let v_ocv = if self.v_ocv_avg[k].is_finite() { self.v_ocv_avg[k] } else { self.ocv_reading(k, sensing.v_prev[k], cells, ss, rest_s) };
            let z_ocv = tab.soc_from_ocv(v_ocv, ss.dtemp);
            let slope = tab.slope(tab.locate(z_ocv)).max(1e-3);
            // the rest OCV's σ: the sensor's and what the relaxation model may still miss (the
            // load's model error, decayed over the rest as in the filter's measurement noise)
            let relax_v = cell.estimator.model_error_v_per_c * self.load_c;
            let var = (est.rest_ocv_sigma_v.powi(2) + relax_v * relax_v) / (slope * slope);
            self.anchor(k, cells, z_ocv, var, y, var_y, cap_nom, est);
        }
        self.reset_throughput();
    }

    /// Full-charge synchronisation (cell file `estimator.full_charge_*`): while charging with
    /// the current tapered below `full_charge_taper_c` but still above the rest band (the
    /// constant-voltage phase of a charger ending), each cell within `full_charge_dv_v` of
    /// `v_max_v` is full: SOC = `full_charge_soc`, once per charge (re-armed by a discharge beyond the rest
    /// band). This is the synchronisation point LFP systems rely on, where the plateau leaves
    /// the voltage little to say. The capacity observation is taken when every cell with a
    /// valid voltage is full in the same step (then the charge since the last anchor is common
    /// to all of them); otherwise only the SOC of the full cells is corrected. The latch is
    /// not part of the state file: after a restart a CV phase may synchronise once more, which
    /// moves nothing (the cells are already at 1).
    #[allow(clippy::too_many_arguments)]
    pub fn full_charge(&mut self, cells: &mut Cells, sensing: &Sensing, sensor_of: &[u32], v_cell_v: &[f64], i_string_a: f64, tab: &CellTables, cell: &CellParams, est: &EstimatorConfig, par: f64) {
        let ce = &cell.estimator;
        if ce.full_charge_taper_c <= 0.0 {
            return;
        }
        if i_string_a > est.rest_current_a {
            self.full_done.iter_mut().for_each(|d| *d = false);
            return;
        }
        let i_cell = i_string_a / par;
        let charging_taper = i_string_a < -est.rest_current_a && -i_cell <= ce.full_charge_taper_c * cell.capacity_ah;
        if !charging_taper {
            return;
        }
        let v_full = cell.v_max_v - ce.full_charge_dv_v;
        let n = cells.z.len();
        let full = |k: usize| sensing.v_valid[k] && v_cell_v[k] >= v_full;
        let todo: Vec<usize> = (0..n).filter(|&k| !self.full_done[k] && full(k)).collect();
        if todo.is_empty() {
            return;
        }
        let var = ce.full_charge_soc_sigma * ce.full_charge_soc_sigma;
        let all = (0..n).all(|k| !sensing.v_valid[k] || full(k));
        let points: Vec<(usize, f64, f64)> =
            todo.iter().map(|&k| (k, Self::full_charge_soc(tab, cell, sensing.ss[sensor_of[k] as usize].sel), var)).collect();
        self.synchronise(cells, &points, all, cell, est, par);
        for &k in &todo {
            self.full_done[k] = true;
        }
    }

    /// The SOC at the end of a CV phase at the cell's temperature (selection `sel`): the cell
    /// file's `full_charge_soc` holds at `t_ref_c`; what the cell is short of full there is the
    /// polarisation the taper current still drives, over the OCV slope, so it scales with the
    /// steady-state resistance R0 + R1 + R2 at that SOC and temperature. On the DFN tuning
    /// traces (NMC, end at C/18): 0.978 at 10 °C, 0.983 at 25 °C, 0.982 at 40 °C against
    /// 0.976 / 0.984 / 0.986 from this scaling; one constant read 0.6 % high at 10 °C and,
    /// held out, 1.2 % at 0 °C (nmc_h5_ess_cold). The learnt R0 ratio is left out: its
    /// profile-dependent bias (0.6..1.6 on fresh cells) would move this more than ageing does.
    fn full_charge_soc(tab: &CellTables, cell: &CellParams, sel: crate::cell_tables::TempSel) -> f64 {
        let z = cell.estimator.full_charge_soc;
        let at = tab.locate(z);
        let steady = |s| {
            let [r0, r1, r2, _] = tab.rc(at, s);
            r0 + r1 + r2
        };
        let (r_t, r_ref) = (steady(sel), steady(tab.temp_sel(cell.t_ref_c)));
        if !(r_t > 0.0 && r_ref > 0.0) {
            return z;
        }
        (1.0 - (1.0 - z) * r_t / r_ref).clamp(0.5, 1.0)
    }

    /// The synchronisation points `points` (cell, SOC, variance) of this step. With `all`
    /// (every cell with a valid voltage is at the point in the same step, so the charge since
    /// the last anchor is common to all of them) each is an anchor with a capacity
    /// observation, and the throughput starts over; otherwise only the SOC of those cells is
    /// corrected.
    fn synchronise(&mut self, cells: &mut Cells, points: &[(usize, f64, f64)], all: bool, cell: &CellParams, est: &EstimatorConfig, par: f64) {
        let cap_nom = cell.capacity_ah;
        if all {
            let var_y = self.throughput_variance(est, par, cap_nom);
            let y = self.q_since_rest_ah / cap_nom;
            for &(k, z, var) in points {
                self.anchor(k, cells, z, var, y, var_y, cap_nom, est);
            }
            self.reset_throughput();
        } else {
            for &(k, z, var) in points {
                let (k0, k1) = soc_ekf::update_anchor(&mut cells.z[k], &mut cells.v1[k], &mut cells.cov[k], z, var);
                cells.anchor_sensitivity(k, k0, k1);
            }
        }
    }

    /// End-of-discharge synchronisation (cell file `estimator.empty_*`, see
    /// `cell_model::CellEstimator::empty_ocv_v`): discharging above the rest band at no more
    /// than `empty_current_c`, a cell whose compensated voltage v − h + R0·i + v1 + v2 (the
    /// OCV the model infers from this sample, with the SOC pass's states) is at or below
    /// `empty_ocv_v` is on the knee: SOC = `empty_soc` (σ `empty_soc_sigma`), once the
    /// discharge has stayed in that window for the cell's
    /// slowest RC time constant at its temperature (right after a drive cycle's high-current pulse the cell still
    /// carries a diffusion overpotential the RC pairs miss, most of all on the knee: on the
    /// held-out lfp_h2 trace, at 10 °C, a sync on such a sample read the SOC 7 % low). Once
    /// per discharge, re-armed by a charge beyond the rest band; an anchor
    /// with a capacity observation when every cell with a valid voltage is there in the same
    /// step (as [`RestSoh::full_charge`]). Not in the state file, as the full-charge latch.
    #[allow(clippy::too_many_arguments)]
    pub fn end_of_discharge(&mut self, cells: &mut Cells, sensing: &Sensing, sensor_of: &[u32], v_cell_v: &[f64], i_string_a: f64, t_s: f64, tab: &CellTables, cell: &CellParams, est: &EstimatorConfig, par: f64) {
        let ce = &cell.estimator;
        if ce.empty_ocv_v <= 0.0 {
            return;
        }
        if i_string_a < -est.rest_current_a {
            self.empty_done.iter_mut().for_each(|d| *d = false);
        }
        let i_cell = i_string_a / par;
        if !(i_string_a > est.rest_current_a && i_cell <= ce.empty_current_c * cell.capacity_ah) {
            self.empty_low_since = f64::NAN;
            return;
        }
        if self.empty_low_since.is_nan() {
            self.empty_low_since = t_s;
        }
        // the slowest RC time constant at the cells' temperatures (the coldest sensor's: the
        // longest), the table's slowest before the first step
        let settle_s = sensing.ss.iter().map(|s| s.slowest_tau_s()).filter(|t| t.is_finite()).fold(f64::NAN, f64::max);
        let settle_s = if settle_s.is_finite() { settle_s } else { cell.slowest_tau_s() };
        if t_s - self.empty_low_since < settle_s {
            return;
        }
        let n = cells.z.len();
        let var = ce.empty_soc_sigma * ce.empty_soc_sigma;
        let mut points: Vec<(usize, f64, f64)> = Vec::new();
        for k in 0..n {
            if self.empty_done[k] || !sensing.v_valid[k] {
                continue;
            }
            let ss = &sensing.ss[sensor_of[k] as usize];
            // the filter's own R0 drop at this load (the step-resistance chord, see
            // `Sensing::r0_load_factors`)
            let r0 = tab.rc(tab.locate(cells.z[k]), ss.sel)[0] * self.r0_ratio[k] * sensing.r0_load_factor[sensor_of[k] as usize];
            let v_ocv = v_cell_v[k] - cells.h[k] + r0 * i_cell + cells.v1[k] + cells.v2[k];
            if v_ocv <= ce.empty_ocv_v {
                points.push((k, ce.empty_soc, var));
            }
        }
        if points.is_empty() {
            return;
        }
        let all = (0..n).all(|k| !sensing.v_valid[k] || points.iter().any(|p| p.0 == k));
        self.synchronise(cells, &points, all, cell, est, par);
        for &(k, _, _) in &points {
            self.empty_done[k] = true;
        }
    }

    /// A restored state starts a new time base: rest and current step detection start over.
    pub fn restart_time_base(&mut self) {
        self.i_offset_a = 0.0;
        self.i_prev_valid = false;
        self.rest_since = f64::NAN;
        self.rest_done = false;
        self.empty_low_since = f64::NAN;
    }
}

/// State of the rest and SOH stage in the state file, version 1 (see [`super::state`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RestSohStateV1 {
    pub version: u32,
    /// since the last rest point: charge of a unit cell (Ah), Σ Δt² (s²), time (s)
    pub q_since_rest_ah: X,
    pub dt2_since_rest: X,
    pub time_since_rest_s: X,
    /// the recent load (C-rate) of the model error; absent in files written before it (0:
    /// relaxed)
    #[serde(default)]
    pub load_c: X,
    /// per cell: capacity of a unit cell (Ah), R0 ratio to the cell file
    pub cap_ah: Vec<X>,
    pub r0_ratio: Vec<X>,
    /// per cell: R0 observations taken (the ratio's running-mean weight); absent in files
    /// written before it: the restored ratio counts as learnt (the gain is `r0_gain`)
    #[serde(default)]
    pub r0_n: Vec<X>,
    /// per cell: the SOH resistance ratio and its observation count (steps at or above
    /// `r0_soh_min_temp_c`); absent in files written before it: the filter's ratio and count
    #[serde(default)]
    pub r0_soh_ratio: Vec<X>,
    #[serde(default)]
    pub r0_soh_n: Vec<X>,
    /// per cell: SOC and its variance at the last rest point ("NaN": none yet)
    pub z_rest: Vec<X>,
    pub z_rest_var: Vec<X>,
    /// per cell: the six sums of the AWTLS capacity estimator
    pub awtls: Vec<[X; 6]>,
}

impl RestSoh {
    pub fn export(&self) -> RestSohStateV1 {
        RestSohStateV1 {
            version: 1,
            q_since_rest_ah: X(self.q_since_rest_ah),
            dt2_since_rest: X(self.dt2_since_rest),
            time_since_rest_s: X(self.time_since_rest_s),
            load_c: X(self.load_c),
            cap_ah: xs(&self.cap_ah),
            r0_ratio: xs(&self.r0_ratio),
            r0_n: xs(&self.r0_n),
            r0_soh_ratio: xs(&self.r0_soh_ratio),
            r0_soh_n: xs(&self.r0_soh_n),
            z_rest: xs(&self.z_rest),
            z_rest_var: xs(&self.z_rest_var),
            awtls: self.awtls.iter().map(|a| a.c.map(X)).collect(),
        }
    }

    /// Structure: one value per cell; capacity and resistance finite and positive.
    pub fn check(&self, s: &RestSohStateV1, n: usize) -> Result<(), String> {
        for (name, len) in [("cap_ah", s.cap_ah.len()), ("r0_ratio", s.r0_ratio.len()), ("z_rest", s.z_rest.len()), ("z_rest_var", s.z_rest_var.len()), ("awtls", s.awtls.len())] {
            if len != n {
                return Err(format!("rest_soh.{name}: {len} values, expected {n} (one per cell)"));
            }
        }
        for (name, len) in [("r0_n", s.r0_n.len()), ("r0_soh_ratio", s.r0_soh_ratio.len()), ("r0_soh_n", s.r0_soh_n.len())] {
            if !(len == 0 || len == n) {
                return Err(format!("rest_soh.{name}: {len} values, expected {n} (one per cell) or none"));
            }
        }
        if s.r0_soh_ratio.len() != s.r0_soh_n.len() {
            return Err(format!("rest_soh.r0_soh_n: {} values, expected as many as r0_soh_ratio ({})", s.r0_soh_n.len(), s.r0_soh_ratio.len()));
        }
        for k in 0..n {
            let (cap, r0r) = (s.cap_ah[k].0, s.r0_ratio[k].0);
            if !(cap.is_finite() && r0r.is_finite()) || cap <= 0.0 || r0r <= 0.0 {
                return Err(format!("cell {k}: non-finite or non-positive state"));
            }
        }
        Ok(())
    }

    /// The first implausible value, or None. Bands: the capacity and R0 bands of the SOH
    /// estimators (ratios to the cell file), the filter's SOC range for the rest point.
    pub fn implausible(&self, s: &RestSohStateV1, cell: &CellParams) -> Option<String> {
        let (z_lo, z_hi) = SOC_STATE_RANGE;
        let (c_lo, c_hi) = CAPACITY_RATIO_RANGE;
        let (r_lo, r_hi) = R0_RATIO_RANGE;
        let cap_nom = cell.capacity_ah;
        let inside = |x: f64, lo: f64, hi: f64| x.is_finite() && x >= lo && x <= hi;
        let nan_or_inside = |x: f64, lo: f64, hi: f64| x.is_nan() || inside(x, lo, hi);
        for k in 0..s.cap_ah.len() {
            let (cap, r0r, z_rest, z_rest_var) = (s.cap_ah[k].0, s.r0_ratio[k].0, s.z_rest[k].0, s.z_rest_var[k].0);
            let why = if !inside(cap / cap_nom, c_lo, c_hi) {
                format!("cell {k}: capacity {cap} Ah outside {c_lo}..{c_hi} x the cell file's {cap_nom} Ah")
            } else if !inside(r0r, r_lo, r_hi) {
                format!("cell {k}: resistance ratio {r0r} outside {r_lo}..{r_hi} x the cell file's R0")
            } else if !nan_or_inside(z_rest, z_lo, z_hi) || !nan_or_inside(z_rest_var, 0.0, 1.0) {
                format!("cell {k}: rest point SOC {z_rest} (variance {z_rest_var}) implausible")
            } else if s.r0_n.get(k).is_some_and(|x| !inside(x.0, 0.0, R0_COUNT_CAP)) {
                format!("cell {k}: R0 observation count {} outside 0..{R0_COUNT_CAP}", s.r0_n[k].0)
            } else if s.r0_soh_ratio.get(k).is_some_and(|x| !inside(x.0, r_lo, r_hi)) {
                format!("cell {k}: SOH resistance ratio {} outside {r_lo}..{r_hi} x the cell file's R0", s.r0_soh_ratio[k].0)
            } else if s.r0_soh_n.get(k).is_some_and(|x| !inside(x.0, 0.0, R0_COUNT_CAP)) {
                format!("cell {k}: SOH R0 observation count {} outside 0..{R0_COUNT_CAP}", s.r0_soh_n[k].0)
            } else if s.awtls[k].iter().any(|c| !c.0.is_finite()) {
                format!("cell {k}: non-finite capacity estimator sums")
            } else {
                continue;
            };
            return Some(why);
        }
        let (q, dt2, t_rest) = (s.q_since_rest_ah.0, s.dt2_since_rest.0, s.time_since_rest_s.0);
        if !q.is_finite() || !(dt2.is_finite() && dt2 >= 0.0) || !(t_rest.is_finite() && t_rest >= 0.0) || !(s.load_c.0.is_finite() && s.load_c.0 >= 0.0) {
            return Some(format!("time since rest {t_rest} s / charge {q} Ah / {dt2} implausible (negative or non-finite)"));
        }
        None
    }

    /// Apply a checked, plausible state.
    pub fn import(&mut self, s: &RestSohStateV1) {
        for k in 0..self.cap_ah.len() {
            self.cap_ah[k] = s.cap_ah[k].0;
            self.inv_qc[k] = 1.0 / (3600.0 * s.cap_ah[k].0);
            self.r0_ratio[k] = s.r0_ratio[k].0;
            self.r0_n[k] = s.r0_n.get(k).map_or(R0_COUNT_CAP, |x| x.0);
            self.r0_soh_ratio[k] = s.r0_soh_ratio.get(k).map_or(self.r0_ratio[k], |x| x.0);
            self.r0_soh_n[k] = s.r0_soh_n.get(k).map_or(self.r0_n[k], |x| x.0);
            self.z_rest[k] = s.z_rest[k].0;
            self.z_rest_var[k] = s.z_rest_var[k].0;
            self.awtls[k].c = s.awtls[k].map(|x| x.0);
            let q = self.awtls[k].estimate(CAPACITY_RATIO_RANGE.0, CAPACITY_RATIO_RANGE.1);
            self.cap_var[k] = self.awtls[k].variance(q);
        }
        self.cap_sum = self.cap_ah.iter().sum();
        self.update_r0_soh_mean();
        self.q_since_rest_ah = s.q_since_rest_ah.0;
        self.dt2_since_rest = s.dt2_since_rest.0;
        self.time_since_rest_s = s.time_since_rest_s.0;
        self.load_c = s.load_c.0;
    }
}

