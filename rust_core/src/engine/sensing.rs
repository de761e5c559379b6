//! Sensing stage: the step's inputs checked (lengths, time), the current, temperature and
//! cell-voltage sensors judged plausible or not (NaN, range, open wire, stuck), and per
//! temperature sensor the model coefficients that depend on temperature and Δt only.
//!
//! The sensor rules of protection (and the per-cell voltage and temperature rules, which need
//! the plausible reading) are evaluated inside these loops, so each reading is touched once.

use crate::cell_model::CellParams;
use crate::cell_tables::{CellTables, TempSel};
use crate::limits::LimitsConfig;
use crate::protection::{Rule, SensorConfig};

use super::protection::Protection;
use super::EngineInputError;

/// Deadband (°C) of the model temperature against the sensor reading. The cell files' R and
/// τ tables are identified at 10..15 °C spacing (hw/cells/*.toml); the steepest of them (A123
/// LFP τ1: 190 → 139 s over 10 → 25 °C, R0 −28 %) changes by < 1 % within ±0.25 °C, well
/// inside the fit's own error, while typical NTC/AFE noise is ±0.1..0.2 °C.
pub const MODEL_TEMP_DEADBAND_C: f64 = 0.25;

/// Per temperature sensor: everything that depends on the model temperature (and Δt) only.
#[derive(Debug, Clone, Copy)]
pub(super) struct SensorStep {
    /// model temperature (°C) the fields below are for; NaN before the first step
    t_model: f64,
    /// τ1, τ2 and Δt the exponentials below were computed for (recomputed only on change)
    tau1: f64,
    tau2: f64,
    dt: f64,
    pub dtemp: f64,
    pub sel: TempSel,
    pub a1: f64,
    pub a2: f64,
    /// ∂a/∂ε = a·Δt/τ: how a1, a2 move when the time constants are (1 + ε) times the model's
    /// (the consider term of `CellEstimator::rc_time_constant_rel_error`)
    pub da1: f64,
    pub da2: f64,
    pub d_cont: f64,
    pub d_peak: f64,
    /// the step-resistance model's coefficients at this temperature (`soh::ChordCoeffs`)
    pub chord: crate::soh::ChordCoeffs,
    /// a1, a2 at the previous distinct Δt (same τ1, τ2)
    alt: DtCoeffs,
}

/// The Δt-dependent coefficients of a sensor at one Δt.
#[derive(Debug, Clone, Copy)]
struct DtCoeffs {
    /// NaN: none
    dt: f64,
    a1: f64,
    a2: f64,
}

impl DtCoeffs {
    const UNSET: DtCoeffs = DtCoeffs { dt: f64::NAN, a1: 1.0, a2: 1.0 };
}

impl SensorStep {
    /// The slowest RC time constant at this sensor's model temperature (s); NaN before the
    /// first step.
    pub fn slowest_tau_s(&self) -> f64 {
        self.tau1.max(self.tau2)
    }

    /// τ1 at this sensor's model temperature (s); NaN before the first step.
    pub fn tau1_s(&self) -> f64 {
        self.tau1
    }

    const UNSET: SensorStep = SensorStep {
        t_model: f64::NAN,
        tau1: f64::NAN,
        tau2: f64::NAN,
        dt: f64::NAN,
        dtemp: 0.0,
        sel: TempSel { lo: 0, hi: 0, f: 0.0 },
        a1: 1.0,
        a2: 1.0,
        da1: 0.0,
        da2: 0.0,
        d_cont: 1.0,
        d_peak: 1.0,
        chord: crate::soh::ChordCoeffs::UNSET,
        alt: DtCoeffs::UNSET,
    };
}

/// The string current as this step uses it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Current {
    /// plausible reading, else 0 (A, discharge positive)
    pub i: f64,
    pub valid: bool,
    /// charging beyond the rest band: the charge temperature windows apply
    pub charging: bool,
}

/// Extremes of the plausible temperature readings (∞/−∞ when there is none).
#[derive(Debug, Clone, Copy)]
pub(super) struct Temps {
    pub min_c: f64,
    pub max_c: f64,
    pub any_valid: bool,
}

#[derive(Debug, Clone)]
pub(super) struct Sensing {
    /// time of the last step (None: the next step starts a new time base)
    pub t_last: Option<f64>,
    // --- per cell ---
    pub v_prev: Vec<f64>,
    pub v_stuck: Vec<u32>,
    pub v_valid: Vec<bool>,
    /// ΔV of the last sample (only filled on an R0 current step)
    pub r0_dv: Vec<f64>,
    // --- per temperature sensor ---
    pub t_prev: Vec<f64>,
    pub t_stuck: Vec<u32>,
    pub t_valid: Vec<bool>,
    /// last plausible reading (the cell file's reference temperature before the first)
    pub t_used: Vec<f64>,
    pub ss: Vec<SensorStep>,
    /// the step-resistance factor of this sample's current step at each sensor's model
    /// temperature (only filled on an R0 current step), `soh::r0_step_factor`
    pub r0_step_factor: Vec<f64>,
    /// per sensor: this sample's current step counts toward the SOH resistance ratio (the
    /// model temperature at or above `CellEstimator::r0_soh_min_temp_c`; only filled on an R0
    /// current step, with `r0_step_factor`)
    pub r0_soh_step: Vec<bool>,
    /// the model's R0 over the table's at this step's load, per sensor (`r0_load_factors`)
    pub r0_load_factor: Vec<f64>,
    /// the load `r0_load_factor` is for (NaN: none yet); a sensor whose model temperature
    /// moves has its own recomputed at that load in `temperatures`
    r0_load_i_c: f64,
}

impl Sensing {
    pub fn new(n: usize, n_t: usize, t_ref_c: f64) -> Self {
        Sensing {
            t_last: None,
            v_prev: vec![f64::NAN; n],
            v_stuck: vec![0; n],
            v_valid: vec![false; n],
            r0_dv: vec![f64::NAN; n],
            t_prev: vec![f64::NAN; n_t],
            t_stuck: vec![0; n_t],
            t_valid: vec![false; n_t],
            t_used: vec![t_ref_c; n_t],
            ss: vec![SensorStep::UNSET; n_t],
            r0_step_factor: vec![1.0; n_t],
            r0_soh_step: vec![true; n_t],
            r0_load_factor: vec![1.0; n_t],
            r0_load_i_c: f64::NAN,
        }
    }

    /// Lengths and time of a step's inputs; on success the step's Δt (0 on the first step of
    /// a time base) and the time is taken.
    pub fn check_inputs(&mut self, t_s: f64, v_cell_v: &[f64], t_cell_c: &[f64]) -> Result<f64, EngineInputError> {
        let (n, n_t) = (self.v_prev.len(), self.t_prev.len());
        if v_cell_v.len() != n {
            return Err(EngineInputError {
                argument: "v_cell_v".into(),
                message: format!("expected {} cell voltages, got {}", n, v_cell_v.len()),
            });
        }
        if t_cell_c.len() != n_t {
            return Err(EngineInputError {
                argument: "t_cell_c".into(),
                message: format!("expected {} temperatures, got {}", n_t, t_cell_c.len()),
            });
        }
        if !t_s.is_finite() {
            return Err(EngineInputError { argument: "t_s".into(), message: format!("expected a finite time, got {t_s}") });
        }
        if let Some(tl) = self.t_last {
            if !(t_s > tl) {
                return Err(EngineInputError {
                    argument: "t_s".into(),
                    message: format!("time must increase: got {t_s} after {tl}"),
                });
            }
        }
        let dt = self.t_last.map_or(0.0, |tl| t_s - tl);
        self.t_last = Some(t_s);
        Ok(dt)
    }

    /// The current sensor, and the over-current rules on its plausible reading.
    pub fn current(&self, t_s: f64, i_a: f64, sens: &SensorConfig, rest_current_a: f64, prot: &mut Protection) -> Current {
        let i_valid = i_a.is_finite() && i_a.abs() <= sens.current_max_abs_a;
        let i = if i_valid { i_a } else { 0.0 };
        let charging = i < -rest_current_a;
        prot.bank(Rule::CurrentSensor).eval(0, t_s, if i_valid { 0.0 } else { 1.0 });
        let i_prot = if i_valid { i } else { f64::NAN };
        prot.bank(Rule::OvercurrentDischarge).eval(0, t_s, i_prot);
        prot.bank(Rule::OvercurrentCharge).eval(0, t_s, -i_prot);
        Current { i, valid: i_valid, charging }
    }

    /// The temperature sensors: plausibility, the temperature rules (charge windows while
    /// charging, discharge windows otherwise, foxBMS style), and the model coefficients.
    #[allow(clippy::too_many_arguments)]
    pub fn temperatures(
        &mut self,
        t_s: f64,
        t_cell_c: &[f64],
        dt: f64,
        charging: bool,
        sens: &SensorConfig,
        p: &CellParams,
        tab: &CellTables,
        lc: &LimitsConfig,
        prot: &mut Protection,
    ) -> Temps {
        let (mut tmin, mut tmax) = (f64::INFINITY, f64::NEG_INFINITY);
        let dc = lc.continuous_horizon_s;
        let dp = lc.peak_horizon_s;
        let mut any_t_valid = false;
        let mut n_bad = 0usize;
        let n_t = self.t_prev.len();
        for s in 0..n_t {
            let x = t_cell_c[s];
            if x == self.t_prev[s] {
                self.t_stuck[s] = self.t_stuck[s].saturating_add(1);
            } else {
                self.t_stuck[s] = 0;
            }
            self.t_prev[s] = x;
            let stuck = sens.stuck_samples > 0 && self.t_stuck[s] >= sens.stuck_samples;
            let valid = x.is_finite() && x >= sens.temp_min_c && x <= sens.temp_max_c && !stuck;
            self.t_valid[s] = valid;
            n_bad += usize::from(!valid);
            if valid {
                self.t_used[s] = x;
                tmin = tmin.min(x);
                tmax = tmax.max(x);
                any_t_valid = true;
            }
            let t_meas = self.t_used[s];
            let prev = self.ss[s];
            // The cell model (τ, R tables, entropic OCV) is evaluated at a "model temperature"
            // that follows the sensor with a deadband of MODEL_TEMP_DEADBAND_C: sensor noise
            // (±0.1..0.2 °C) would otherwise recompute two interpolations, a table selection
            // and up to four exp() per sensor every step for no physical change.
            if (t_meas - prev.t_model).abs() <= MODEL_TEMP_DEADBAND_C && prev.dt == dt {
                continue; // same model temperature, same Δt: every coefficient is unchanged
            }
            let same_t = (t_meas - prev.t_model).abs() <= MODEL_TEMP_DEADBAND_C;
            let t = if same_t { prev.t_model } else { t_meas };
            // only Δt changed (a float time base jitters by an ulp from step to step): τ, the
            // row selection and dtemp are functions of t alone and are kept; the Δt terms below
            // are recomputed
            let tau1 = if same_t { prev.tau1 } else { p.tau1(t) };
            // the exponentials depend on τ(T) and Δt only: a constant-τ cell (or a steady
            // temperature) at a fixed sample period costs no exp at all
            let (d_cont, d_peak) = if prev.tau1 == tau1 {
                (prev.d_cont, prev.d_peak)
            } else {
                ((-dc / tau1).exp(), (-dp / tau1).exp())
            };
            let tau2 = if same_t { prev.tau2 } else if p.has_rc2() { p.tau2(t) } else { 0.0 };
            // a1 = exp(−Δt/τ1), a2 = exp(−Δt/τ2) (0 without a second RC pair). A float time
            // base t = k·Δt alternates between two neighbouring Δt values (an ulp apart) from
            // step to step, so the coefficients of the previous distinct Δt are kept beside
            // the current ones: same τ, same Δt, same value, without the exp.
            let exps = |dt: f64| ((-dt / tau1).exp(), if p.has_rc2() { (-dt / tau2).exp() } else { 0.0 });
            let same_tau = prev.tau1 == tau1 && prev.tau2 == tau2;
            let ((a1, a2), alt) = if same_tau && prev.dt == dt {
                ((prev.a1, prev.a2), prev.alt)
            } else if same_tau && prev.alt.dt == dt {
                ((prev.alt.a1, prev.alt.a2), DtCoeffs { dt: prev.dt, a1: prev.a1, a2: prev.a2 })
            } else if same_tau {
                (exps(dt), DtCoeffs { dt: prev.dt, a1: prev.a1, a2: prev.a2 })
            } else {
                (exps(dt), DtCoeffs::UNSET)
            };
            self.ss[s] = SensorStep {
                t_model: t,
                tau1,
                tau2,
                dt,
                dtemp: t - p.t_ref_c,
                sel: if same_t { prev.sel } else { tab.temp_sel(t) },
                a1,
                a2,
                da1: a1 * dt / tau1,
                da2: if p.has_rc2() { a2 * dt / tau2 } else { 0.0 },
                d_cont,
                d_peak,
                chord: if same_t { prev.chord } else { crate::soh::ChordCoeffs::at(&p.estimator, t, p.t_ref_c) },
                alt,
            };
            if !same_t && self.r0_load_i_c.is_finite() {
                // this sensor's load factor, at the load the others are for (the NTCs' noise
                // moves a few sensors' model temperature in a step, not all of them)
                self.r0_load_factor[s] = crate::soh::r0_chord_factor(&p.estimator, &self.ss[s].chord, 0.0, self.r0_load_i_c);
            }
        }
        // The temperature rules, bank by bank (the banks are independent). As for the cell
        // voltages, a bank is walked only where an index can leave its idle fast path: a busy
        // index, an implausible reading (sensor rule), or an applicable window whose extreme
        // is past the bank's lowest threshold.
        let b = prot.bank(Rule::TempSensor);
        if b.n_busy > 0 || n_bad > 0 {
            for s in 0..n_t {
                b.eval(s, t_s, if self.t_valid[s] { 0.0 } else { 1.0 });
            }
        }
        // charge windows apply while charging, discharge windows otherwise (foxBMS style); a
        // window that does not apply sees -inf (over) / +inf (under): "not applicable now"
        for (rule, applies, over) in [
            (Rule::OvertempCharge, charging, true),
            (Rule::UndertempCharge, charging, false),
            (Rule::OvertempDischarge, !charging, true),
            (Rule::UndertempDischarge, !charging, false),
        ] {
            let b = prot.bank(rule);
            let (extreme, off) = if over { (tmax, f64::NEG_INFINITY) } else { (tmin, f64::INFINITY) };
            if b.n_busy > 0 || (applies && b.compiled.sign * extreme > b.compiled.idle_below) {
                for s in 0..n_t {
                    let tx = if self.t_valid[s] { t_cell_c[s] } else { f64::NAN };
                    b.eval(s, t_s, if applies { tx } else { off });
                }
            }
        }
        Temps { min_c: tmin, max_c: tmax, any_valid: any_t_valid }
    }

    /// On an R0 current step from `ia_c` to `ib_c` (C-rates of one cell): the resistance
    /// such a step reads over the R0 table, at each sensor's model temperature, and whether
    /// it counts toward the SOH ratio there.
    pub fn r0_step_factors(&mut self, ia_c: f64, ib_c: f64, p: &CellParams) {
        for ((f, soh), ss) in self.r0_step_factor.iter_mut().zip(self.r0_soh_step.iter_mut()).zip(&self.ss) {
            *f = crate::soh::r0_chord_factor(&p.estimator, &ss.chord, ia_c, ib_c);
            *soh = ss.t_model >= p.estimator.r0_soh_min_temp_c;
        }
    }

    /// The model's R0 at the load `i_c` (C-rate of one cell) over the table's, at each
    /// sensor's model temperature: the chord of the instantaneous (ohmic + charge-transfer)
    /// overpotential from rest to this load, `soh::r0_chord_factor(0, i_c)`, so the drop
    /// R0·i follows the Butler–Volmer curve the step observations are judged on. With the
    /// pulse ratio s in it (the table's R0 read as s × the 1 C pulse resistance): tuning split,
    /// against the table's R0 unscaled at 1 C (F/s), nmc_t2 0.55 -> 0.38 %, lfp_t4 0.61 ->
    /// 0.54 %, nmc_t1 0.30 -> 0.28 % SOC RMSE.
    pub fn r0_load_factors(&mut self, i_c: f64, p: &CellParams) {
        // the same load (a rest, a constant current): as they are
        if i_c == self.r0_load_i_c {
            return;
        }
        self.r0_load_i_c = i_c;
        for (f, ss) in self.r0_load_factor.iter_mut().zip(&self.ss) {
            *f = crate::soh::r0_chord_factor(&p.estimator, &ss.chord, 0.0, i_c);
        }
    }

    /// Pass 1 over the cells: voltage plausibility and the per-cell voltage rules. On an R0
    /// current step it also keeps each cell's ΔV. Returns the extremes of the plausible
    /// voltages (∞/−∞ when there is none).
    ///
    /// The plausibility loop is branch-free and also yields the number of implausible
    /// readings and the extremes; a rule bank is then walked cell by cell only where a cell
    /// can leave its idle fast path (a busy index, an implausible reading, or an extreme past
    /// the bank's lowest threshold). Skipping the walk is exact: an idle index at or below
    /// every threshold stays idle, and a NaN (implausible) reading holds an idle state.
    pub fn cell_voltages(&mut self, t_s: f64, v_in: &[f64], sens: &SensorConfig, r0_step: bool, prot: &mut Protection) -> (f64, f64) {
        let n = self.v_prev.len();
        let stuck_n = sens.stuck_samples;
        let lim = Plausible { vlo: sens.cell_v_min_v, vhi: sens.cell_v_max_v, vow: sens.open_wire_v, stuck_n };
        let v_in = &v_in[..n];
        // the R0 step's ΔV needs the previous sample's plausibility: before it is overwritten
        if r0_step {
            for k in 0..n {
                let v = v_in[k];
                let valid = lim.valid(v, if v == self.v_prev[k] { self.v_stuck[k].saturating_add(1) } else { 0 });
                self.r0_dv[k] = if valid && self.v_valid[k] { v - self.v_prev[k] } else { f64::NAN };
            }
        }
        let v_prevs = &mut self.v_prev[..n];
        let stucks = &mut self.v_stuck[..n];
        let valids = &mut self.v_valid[..n];
        // branch-free, four independent accumulators (vectorised); min/max of plausible
        // (non-NaN) readings are exact in any order
        const L: usize = 4;
        let (mut lo, mut hi, mut bad) = ([f64::INFINITY; L], [f64::NEG_INFINITY; L], [0u32; L]);
        let body = |k: usize, lo: &mut f64, hi: &mut f64, bad: &mut u32, v_prevs: &mut [f64], stucks: &mut [u32], valids: &mut [bool]| {
            let v = v_in[k];
            let cnt = if v == v_prevs[k] { stucks[k].saturating_add(1) } else { 0 };
            stucks[k] = cnt;
            let valid = lim.valid(v, cnt);
            v_prevs[k] = v;
            valids[k] = valid;
            *bad += u32::from(!valid);
            *lo = if valid && v < *lo { v } else { *lo };
            *hi = if valid && v > *hi { v } else { *hi };
        };
        let chunks = n / L;
        for c in 0..chunks {
            for l in 0..L {
                body(c * L + l, &mut lo[l], &mut hi[l], &mut bad[l], v_prevs, stucks, valids);
            }
        }
        for k in chunks * L..n {
            body(k, &mut lo[0], &mut hi[0], &mut bad[0], v_prevs, stucks, valids);
        }
        let vmin_meas = lo.iter().fold(f64::INFINITY, |a, &b| a.min(b));
        let vmax_meas = hi.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
        let n_bad: u32 = bad.iter().sum();
        let (b_vs, b_ov, b_uv) = prot.voltage_banks();
        // sensor rule: x = 1 for an implausible reading, 0 (idle) otherwise
        if b_vs.n_busy > 0 || n_bad > 0 {
            for k in 0..n {
                b_vs.eval(k, t_s, if valids[k] { 0.0 } else { 1.0 });
            }
        }
        for (b, extreme) in [(b_ov, vmax_meas), (b_uv, vmin_meas)] {
            if b.n_busy > 0 || b.compiled.sign * extreme > b.compiled.idle_below {
                for k in 0..n {
                    b.eval(k, t_s, if valids[k] { v_in[k] } else { f64::NAN });
                }
            }
        }
        (vmin_meas, vmax_meas)
    }

    /// A restored state starts a new time base: no integration over the gap, no stuck counts
    /// across it, no ΔV against a pre-restart sample.
    pub fn restart_time_base(&mut self) {
        self.t_last = None;
        self.v_prev.iter_mut().for_each(|x| *x = f64::NAN);
        self.v_valid.iter_mut().for_each(|x| *x = false);
        self.v_stuck.iter_mut().for_each(|c| *c = 0);
        self.t_stuck.iter_mut().for_each(|c| *c = 0);
        self.t_prev.iter_mut().for_each(|c| *c = f64::NAN);
    }
}

/// The plausibility test of one cell-voltage reading: range, open wire, stuck.
#[derive(Debug, Clone, Copy)]
struct Plausible {
    vlo: f64,
    vhi: f64,
    vow: f64,
    stuck_n: u32,
}

impl Plausible {
    /// `cnt`: consecutive unchanged samples including this one. NaN compares false.
    #[inline(always)]
    fn valid(&self, v: f64, cnt: u32) -> bool {
        let stuck = self.stuck_n > 0 && cnt >= self.stuck_n;
        (v >= self.vlo) & (v <= self.vhi) & (v > self.vow) & !stuck
    }
}
