//! One string: S series elements of P cells (struct of arrays), its thermal model, its
//! contactors and its sensors.

use mbms_core::cell_model::{CellParams, CellScale, CellState, StepCoeffs};

use super::config::{StringConfig, ThermalConfig};
use super::contactor::{Contactor, Contactors};
use crate::rng::Rng;
use super::sensors::SensorBank;

const KELVIN: f64 = 273.15;
/// The step coefficients (R1, R2, R0, dOCV/dT, time constants) of an element are refreshed
/// when its SOC has moved by this much since the last refresh (the tables are on a 0.005
/// grid, so the error is below one table interval) ...
const REFRESH_SOC: f64 = 0.002;
/// ... or its temperature by this much (K).
const REFRESH_TEMP: f64 = 0.1;
/// The thermal network is advanced every this many seconds (or every step if steps are
/// longer) with the heat accumulated over the steps in between: cell thermal time constants
/// are minutes (m·cp/g ≈ 75 J/K / 0.3 W/K ≈ 250 s for a 21700 cell), so a 1 s update is
/// exact for all practical purposes and keeps the per-step work electrical only.
const THERMAL_PERIOD_S: f64 = 1.0;

pub struct StringSim {
    pub cell: CellParams,
    pub series: usize,
    pub parallel: f64,
    pub r_extra_ohm: f64,
    pub r_precharge_ohm: f64,
    pub r_balance_ohm: f64,
    pub close_time_s: f64,
    pub open_time_s: f64,
    pub dcdc_max_a: Option<f64>,
    pub dcdc_efficiency: f64,
    pub dcdc_setpoint_a: Option<f64>,

    // state of the series elements (per cell of the element)
    pub soc: Vec<f64>,
    pub v1: Vec<f64>,
    pub v2: Vec<f64>,
    pub h: Vec<f64>,
    pub temp_c: Vec<f64>,
    temp_prev: Vec<f64>,
    pub scale: Vec<CellScale>,
    /// Self-discharge current per cell (A), from the variation.
    pub i_self_a: Vec<f64>,
    /// Internal-short conductance per cell (S), 0 without a short.
    pub g_short: Vec<f64>,
    pub balance: Vec<bool>,
    /// Conductance per cell that the internal current sees at the OCV: short + bleed (S).
    g_int: Vec<f64>,

    // cached per element
    coef: Vec<StepCoeffs>,
    r0s: Vec<f64>,
    dudt: Vec<f64>,
    coef_soc: Vec<f64>,
    coef_t: Vec<f64>,
    pub ocv_v: Vec<f64>,

    // thermal, per cell
    g_cool: f64,
    g_amb: f64,
    g_n: f64,
    t_cool: f64,
    t_amb: f64,
    heat_cap: f64,
    th_f: Vec<f64>,
    /// Heat accumulated per cell since the last thermal update (J) and over how long (s).
    q_acc: Vec<f64>,
    q_time: f64,
    /// The step the cached coefficients are for (0 before the first step).
    dt_step: f64,
    th_every: u32,
    th_count: u32,
    th_dt: f64,
    /// The cell has a non-zero entropic coefficient somewhere.
    has_entropic: bool,
    /// Some element has an internal current (self-discharge, short, balancing).
    has_internal: bool,
    pub cooling_failed: bool,

    // Thevenin equivalent for the next step: E = Σ(ocv + h − a1·v1 − a2·v2 − rz·i_int),
    // R_cells = Σ rz / P
    pub e_sum: f64,
    pub rz_sum: f64,
    pub ocv_sum: f64,
    /// Everything cached must be recomputed before the next step (dt, fault, balance changed).
    pub dirty: bool,

    pub contactors: [Contactor; 3],
    pub sensors: SensorBank,

    // results of the last step
    pub i_a: f64,
    pub i_peak_a: f64,
    pub e_step_v: f64,
    pub r_step_ohm: f64,
}

fn clipped_normal(rng: &mut Rng, sigma: f64) -> f64 {
    (sigma * rng.normal()).clamp(-3.0 * sigma, 3.0 * sigma)
}

impl StringSim {
    pub fn new(cfg: &StringConfig, cell: CellParams, thermal: &ThermalConfig, seed: u64, k: usize) -> Self {
        let s = cfg.series;
        let v = &cfg.variation;
        let mut rng = Rng::new(seed, 2 * k as u64 + 1);
        let mut soc = Vec::with_capacity(s);
        let mut scale = Vec::with_capacity(s);
        let mut i_self_a = Vec::with_capacity(s);
        for _ in 0..s {
            soc.push((cfg.initial_soc + clipped_normal(&mut rng, v.soc_sigma)).clamp(0.0, 1.0));
            scale.push(CellScale {
                capacity: v.capacity_scale * (1.0 + clipped_normal(&mut rng, v.capacity_sigma)),
                resistance: v.resistance_scale * (1.0 + clipped_normal(&mut rng, v.resistance_sigma)),
            });
            i_self_a.push((v.self_discharge_a + v.self_discharge_sigma_a * rng.normal()).max(0.0));
        }
        let t0 = cfg.initial_temp_c.unwrap_or(thermal.coolant_c);
        let sensors = SensorBank::new(&cfg.sensors, s, Rng::new(seed, 2 * k as u64 + 2));
        let heat_cap = cell.mass_kg * cell.cp_j_per_kg_k;
        let mut st = Self {
            series: s,
            parallel: cfg.parallel as f64,
            r_extra_ohm: cfg.r_extra_ohm,
            r_precharge_ohm: cfg.contactors.r_precharge_ohm,
            r_balance_ohm: cfg.balancing.r_bleed_ohm,
            close_time_s: cfg.contactors.close_time_s,
            open_time_s: cfg.contactors.open_time_s,
            dcdc_max_a: cfg.dcdc.as_ref().map(|d| d.max_a),
            dcdc_efficiency: cfg.dcdc.as_ref().map_or(1.0, |d| d.efficiency),
            dcdc_setpoint_a: None,
            soc,
            v1: vec![0.0; s],
            v2: vec![0.0; s],
            h: vec![0.0; s],
            temp_c: vec![t0; s],
            temp_prev: vec![t0; s],
            scale,
            i_self_a,
            g_short: vec![0.0; s],
            balance: vec![false; s],
            g_int: vec![0.0; s],
            coef: vec![StepCoeffs::default(); s],
            r0s: vec![0.0; s],
            dudt: vec![0.0; s],
            coef_soc: vec![f64::NAN; s],
            coef_t: vec![f64::NAN; s],
            ocv_v: vec![0.0; s],
            g_cool: thermal.g_cool_w_per_k,
            g_amb: thermal.g_ambient_w_per_k,
            g_n: thermal.g_neighbour_w_per_k,
            t_cool: thermal.coolant_c,
            t_amb: thermal.ambient_c,
            heat_cap,
            th_f: vec![0.0; s],
            q_acc: vec![0.0; s],
            q_time: 0.0,
            dt_step: 0.0,
            th_every: 1,
            th_count: 0,
            th_dt: f64::NAN,
            has_entropic: cell.docv_dt.values().iter().any(|v| *v != 0.0),
            has_internal: true,
            cooling_failed: false,
            e_sum: 0.0,
            rz_sum: 0.0,
            ocv_sum: 0.0,
            dirty: true,
            contactors: Default::default(),
            sensors,
            i_a: 0.0,
            i_peak_a: 0.0,
            e_step_v: 0.0,
            r_step_ohm: 0.0,
            cell,
        };
        st.sensors.m.feedback = st.feedback();
        // Fill the per-element caches (OCV, R0) now, so that a measurement taken before the
        // first step reads the cells at rest rather than zeros. The first step rebuilds anyway.
        st.rebuild(1.0);
        st.dirty = true;
        st
    }

    pub fn state(&self) -> Contactors {
        Contactors { neg: self.contactors[0].closed, pos: self.contactors[1].closed, pre: self.contactors[2].closed }
    }

    pub fn feedback(&self) -> Contactors {
        Contactors {
            neg: self.contactors[0].feedback(),
            pos: self.contactors[1].feedback(),
            pre: self.contactors[2].feedback(),
        }
    }

    /// Resistance of the path between the string terminals and the bus: None if open.
    pub fn path_ohm(&self) -> Option<f64> {
        let c = self.state();
        if !c.neg {
            return None;
        }
        if c.pos {
            Some(0.0) // the main contact shorts the precharge resistor
        } else if c.pre {
            Some(self.r_precharge_ohm)
        } else {
            None
        }
    }

    /// Internal current per cell of element j at OCV `ocv` (self-discharge, short, bleed).
    #[inline(always)]
    fn i_int(&self, j: usize, ocv: f64) -> f64 {
        self.i_self_a[j] + ocv * self.g_int[j]
    }

    /// The part of the internal current that is solved every step: short and bleed (per cell).
    /// Self-discharge (µA..mA) is drained from the SOC at each slow update instead; its ohmic
    /// drop (< 1 µV) is left out of the Thevenin source.
    #[inline(always)]
    fn i_fast(&self, j: usize, ocv: f64) -> f64 {
        ocv * self.g_int[j]
    }

    fn refresh(&mut self, j: usize, dt_s: f64) {
        let (z, t) = (self.soc[j], self.temp_c[j]);
        self.coef[j] = self.cell.step_coeffs(z, t, dt_s, &self.scale[j]);
        self.r0s[j] = self.scale[j].resistance * self.cell.r0(z, t);
        self.dudt[j] = self.cell.docv_dt.eval(z);
        self.coef_soc[j] = z;
        self.coef_t[j] = t;
    }

    pub(crate) fn thermal_factors(&mut self, dt_s: f64) {
        self.th_dt = dt_s;
        let s = self.series;
        let g_cool = if self.cooling_failed { 0.0 } else { self.g_cool };
        for j in 0..s {
            let neighbours = (j > 0) as u32 + (j + 1 < s) as u32;
            let g = g_cool + self.g_amb + self.g_n * neighbours as f64;
            // exact relaxation of the element towards its surroundings over dt (neighbours held):
            // T += flux · (1 − e^{−g·dt/C}) / g, unconditionally stable
            self.th_f[j] = if g > 0.0 { -(-g * dt_s / self.heat_cap).exp_m1() / g } else { dt_s / self.heat_cap };
        }
    }

    /// Recompute every cached quantity for steps of `dt_s`.
    /// Returns the chemical energy of the self-discharge flushed from the previous steps (J).
    pub fn rebuild(&mut self, dt_s: f64) -> f64 {
        let e_flush = if self.q_time > 0.0 { self.slow_update() } else { 0.0 };
        self.dt_step = dt_s;
        self.th_every = ((THERMAL_PERIOD_S / dt_s).round() as u32).max(1);
        self.th_count = 0;
        self.thermal_factors(self.th_every as f64 * dt_s);
        for j in 0..self.series {
            self.refresh(j, dt_s);
            self.ocv_v[j] = self.cell.ocv.eval(self.soc[j]) + self.dudt[j] * (self.temp_c[j] - self.cell.t_ref_c);
        }
        self.resum();
        e_flush
    }

    /// Recompute the internal-current conductances and the Thevenin sums from the cached
    /// per-element values (after a command, a fault or a coefficient refresh).
    pub fn resum(&mut self) {
        let g_bal = 1.0 / (self.r_balance_ohm * self.parallel);
        for j in 0..self.series {
            self.g_int[j] = self.g_short[j] + if self.balance[j] { g_bal } else { 0.0 };
        }
        self.has_internal = self.g_int.iter().any(|&x| x != 0.0);
        let (mut e, mut rz, mut ocv_sum) = (0.0, 0.0, 0.0);
        for j in 0..self.series {
            let ocv = self.ocv_v[j];
            let c = &self.coef[j];
            let r = self.r0s[j] + c.b1 + c.b2;
            e += ocv + self.h[j] - c.a1 * self.v1[j] - c.a2 * self.v2[j] - r * self.i_fast(j, ocv);
            rz += r;
            ocv_sum += ocv;
        }
        self.e_sum = e;
        self.rz_sum = rz;
        self.ocv_sum = ocv_sum;
        self.dirty = false;
    }

    /// Capacity fade of element j: its coefficients change now.
    pub fn fade(&mut self, j: usize, factor: f64) {
        self.scale[j].capacity *= factor;
        if self.dt_step > 0.0 {
            self.refresh(j, self.dt_step);
        }
        self.dirty = true;
    }

    /// Cooling failure: the coolant conductance is lost from now on.
    pub fn restore_cooling(&mut self) {
        self.cooling_failed = false;
        if self.th_dt > 0.0 {
            self.thermal_factors(self.th_dt);
        }
    }

    pub fn fail_cooling(&mut self) {
        self.cooling_failed = true;
        if self.th_dt > 0.0 {
            self.thermal_factors(self.th_dt);
        }
    }

    /// Resistance of the cells of the string for this step (Ω).
    pub fn r_cells_ohm(&self) -> f64 {
        self.rz_sum / self.parallel
    }

    /// Advance the elements by `dt_s` with string current `i_a` (step average, discharge
    /// positive). Returns the chemical energy released by the internal currents (J).
    pub fn advance(&mut self, i_a: f64, dt_s: f64) -> f64 {
        // monomorphised loops: strings without internal currents or entropic heat skip them
        let e_int = match (self.has_internal, self.has_entropic) {
            (true, true) => self.advance_cells::<true, true>(i_a, dt_s),
            (true, false) => self.advance_cells::<true, false>(i_a, dt_s),
            (false, true) => self.advance_cells::<false, true>(i_a, dt_s),
            (false, false) => self.advance_cells::<false, false>(i_a, dt_s),
        };
        self.q_time += dt_s;
        self.th_count += 1;
        if self.th_count >= self.th_every {
            self.th_count = 0;
            return e_int + self.slow_update();
        }
        e_int
    }

    /// Every `THERMAL_PERIOD_S`: drain the self-discharge from the SOC and advance the thermal
    /// network. Returns the chemical energy the self-discharge released (J).
    fn slow_update(&mut self) -> f64 {
        let dt = self.q_time;
        let mut e = 0.0;
        if dt > 0.0 && self.dt_step > 0.0 {
            for j in 0..self.series {
                let i = self.i_self_a[j];
                if i != 0.0 {
                    self.soc[j] -= i * self.coef[j].dz_per_a * (dt / self.dt_step);
                    e += self.ocv_v[j] * i * self.parallel * dt;
                }
            }
        }
        self.thermal_update(dt);
        e
    }

    fn advance_cells<const INTERNAL: bool, const ENTROPIC: bool>(&mut self, i_a: f64, dt_s: f64) -> f64 {
        let n = self.series;
        let ic0 = i_a / self.parallel;
        let par = self.parallel;
        // Σ R changes only where coefficients are refreshed: carried, not re-summed
        let (mut e, mut rz_delta, mut ocv_sum, mut e_int) = (0.0, 0.0, 0.0, 0.0);
        let cell = &self.cell;
        let t_ref = cell.t_ref_c;
        // equal-length slices: lets the compiler drop the bounds checks in the hot loop
        let soc = &mut self.soc[..n];
        let v1 = &mut self.v1[..n];
        let v2 = &mut self.v2[..n];
        let h = &mut self.h[..n];
        let temp = &self.temp_c[..n];
        let ocv_v = &mut self.ocv_v[..n];
        let g_int = &self.g_int[..n];
        let g_short = &self.g_short[..n];
        let q_acc = &mut self.q_acc[..n];
        let coef = &mut self.coef[..n];
        let r0s = &mut self.r0s[..n];
        let dudt = &mut self.dudt[..n];
        let coef_soc = &mut self.coef_soc[..n];
        let scale = &self.scale[..n];
        for j in 0..n {
            let ocv0 = ocv_v[j];
            let mut i_c = ic0;
            if INTERNAL {
                let i_int = ocv0 * g_int[j];
                e_int += ocv0 * i_int;
                i_c += i_int;
            }
            let mut st = CellState { soc: soc[j], v1: v1[j], v2: v2[j], h: h[j] };
            cell.advance(&mut st, &coef[j], i_c);
            // heat per cell (Bernardi, Pawlikowski & Newman, J. Electrochem. Soc. 132 (1985) 5):
            // irreversible i·(OCV − V) + reversible −i·T·dOCV/dT, plus the short's i²R inside.
            let mut q = i_c * (r0s[j] * i_c + st.v1 + st.v2);
            if ENTROPIC {
                q -= i_c * (temp[j] + KELVIN) * dudt[j];
            }
            if INTERNAL {
                q += ocv0 * ocv0 * g_short[j];
            }
            q_acc[j] += q * dt_s;
            soc[j] = st.soc;
            v1[j] = st.v1;
            v2[j] = st.v2;
            h[j] = st.h;
            if (st.soc - coef_soc[j]).abs() > REFRESH_SOC {
                let t = temp[j];
                let r_old = r0s[j] + coef[j].b1 + coef[j].b2;
                coef[j] = cell.step_coeffs(st.soc, t, dt_s, &scale[j]);
                r0s[j] = scale[j].resistance * cell.r0(st.soc, t);
                rz_delta += r0s[j] + coef[j].b1 + coef[j].b2 - r_old;
                dudt[j] = cell.docv_dt.eval(st.soc);
                coef_soc[j] = st.soc;
            }
            // OCV(z, T) as CellParams::ocv, with dOCV/dT of the last refresh
            let mut ocv = cell.ocv.eval(st.soc);
            if ENTROPIC {
                ocv += dudt[j] * (temp[j] - t_ref);
            }
            ocv_v[j] = ocv;
            let c = &coef[j];
            let mut ej = ocv + st.h - c.a1 * st.v1 - c.a2 * st.v2;
            if INTERNAL {
                ej -= (r0s[j] + c.b1 + c.b2) * ocv * g_int[j];
            }
            e += ej;
            ocv_sum += ocv;
        }
        self.e_sum = e;
        self.rz_sum += rz_delta;
        self.ocv_sum = ocv_sum;
        e_int * par * dt_s
    }

    /// Advance the thermal network by `dt_th` with the heat accumulated since the last update;
    /// then refresh the step coefficients of elements whose temperature moved.
    fn thermal_update(&mut self, dt_th: f64) {
        let n = self.series;
        if dt_th != self.th_dt {
            self.thermal_factors(dt_th);
        }
        self.temp_prev.copy_from_slice(&self.temp_c);
        let g_cool = if self.cooling_failed { 0.0 } else { self.g_cool };
        for j in 0..n {
            let tp = self.temp_prev[j];
            let mut flux = self.q_acc[j] / dt_th + g_cool * (self.t_cool - tp) + self.g_amb * (self.t_amb - tp);
            if j > 0 {
                flux += self.g_n * (self.temp_prev[j - 1] - tp);
            }
            if j + 1 < n {
                flux += self.g_n * (self.temp_prev[j + 1] - tp);
            }
            self.temp_c[j] = tp + flux * self.th_f[j];
            self.q_acc[j] = 0.0;
        }
        self.q_time = 0.0;
        let dt = self.dt_step;
        let mut changed = false;
        for j in 0..n {
            if self.has_entropic {
                // the OCV follows the temperature (its entropic part)
                self.ocv_v[j] = self.cell.ocv.eval(self.soc[j]) + self.dudt[j] * (self.temp_c[j] - self.cell.t_ref_c);
                changed = true;
            }
            if (self.temp_c[j] - self.coef_t[j]).abs() > REFRESH_TEMP {
                self.refresh(j, dt);
                changed = true;
            }
        }
        if changed && dt > 0.0 {
            self.resum();
        }
    }

    /// Terminal voltage of element j now (with the current of the last step).
    /// `CellParams::terminal_voltage` with the cached OCV and R0 of the element (R0 and
    /// dOCV/dT as of its last coefficient refresh: SOC within 0.002, temperature within 0.1 K),
    /// so that measuring costs no table lookups.
    #[inline(always)]
    pub fn element_voltage(&self, j: usize) -> f64 {
        let i_c = self.i_a / self.parallel + self.i_int(j, self.ocv_v[j]);
        self.ocv_v[j] + self.h[j] - self.r0s[j] * i_c - self.v1[j] - self.v2[j]
    }

    /// Open-circuit voltage of the string now (Σ OCV of its elements, without hysteresis).
    pub fn ocv_now(&self) -> f64 {
        (0..self.series).map(|j| self.cell.ocv(self.soc[j], self.temp_c[j])).sum()
    }
}
