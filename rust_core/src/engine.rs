//! The pack engine: one pack's raw measurements in, estimates, limits, protection actions
//! and balancing commands out, over the cells of one string stored as struct-of-arrays so
//! that the per-cell loop streams through memory.
//!
//! A "cell" here is one series element: `parallel` physical cells in parallel, modelled as
//! the nominal cell carrying `i_a / parallel` (capacity ×P, resistance /P). Current is
//! positive when discharging. Sans-IO: time is the argument `t_s`.
//!
//! The engine is a pipeline of stages, each a struct owning its own state in its own module
//! (in the manner of quinn-proto's connection sub-states); [`Engine::step`] only orchestrates:
//!
//! 1. [`sensing`]: inputs checked; current and temperature sensors judged (with their
//!    protection rules), per-sensor model coefficients; pass 1 over the cells: voltage
//!    plausibility and the per-cell voltage rules;
//! 2. [`rest`] (rest and SOH): rest detection, current steps for R0, charge throughput;
//! 3. [`cells`]: pass 2, the fused per-cell hot loop in blocks (table gathers, then the EKF,
//!    coulomb count, R0 observation and per-cell SOF limits as vectorised arithmetic, then
//!    the pack reductions);
//! 4. [`rest`]: the rest point (OCV correction, capacity observation) when one is due;
//! 5. [`protection`]: pack rules, the step's action;
//! 6. [`limits`]: derated, action-reduced, rate-limited pack limits;
//! 7. [`balancing`]: bleed decisions and the active-balancing plan.
//!
//! State export/import is per stage and versioned ([`state`]).

use serde::Deserialize;

use crate::balancing::{BalancingConfig, Transfer};
use crate::cell_model::CellParams;
use crate::cell_tables::CellTables;
use crate::limits::LimitsConfig;
use crate::protection::{Action, ActiveFault, Rule, SensorConfig, Thresholds};
use crate::soc_ekf::EstimatorConfig;

mod balancing;
mod cells;
mod limits;
mod protection;
mod rest;
mod sensing;
mod state;
mod state_v1;

pub use sensing::MODEL_TEMP_DEADBAND_C;
pub use state::{STATE_FORMAT, STATE_VERSION};

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct PackSection {
    /// Free-form name of the pack.
    #[serde(default)]
    pub name: String,
    /// Cell parameter set (name in hw/cells or path); resolved by the caller, which hands
    /// the parsed [`CellParams`] to [`Engine::new`].
    #[serde(default)]
    pub cell: String,
    /// Series elements (the engine's "cells") and cells in parallel per element.
    pub series: usize,
    pub parallel: usize,
    /// Number of temperature sensors; cell k uses sensor k·n_temps/n_cells.
    pub temp_sensors: usize,
    /// String resistance outside the cells (contactors, fuses, busbars, cabling), Ω; the
    /// plant's string takes the same default ([`R_EXTRA_OHM_DEFAULT`]).
    #[serde(default = "r_extra_ohm_default")]
    pub r_extra_ohm: f64,
}

/// A string's series resistance outside its cells when a file does not state it (the pack
/// file's `r_extra_ohm` and the plant's string alike: one physical quantity, one default), Ω.
/// Estimated for the reference string (96 series elements of 4p cylindrical cells, 400 V):
/// two main contactors ~0.2 mΩ each (contact resistance of EV-class contactors, e.g. TE
/// Kilovac EV200), an HV fuse ~0.3 mΩ (cold resistance, 200-350 A EV fuses), 2 × 2 m of
/// 50 mm² copper cable (IEC 60228 class 5: ≤ 0.386 Ω/km at 20 °C, ~1.5 mΩ) and 96 cell-group
/// and module interconnects of ~0.1 mΩ each (~9.6 mΩ): ~12 mΩ.
pub const R_EXTRA_OHM_DEFAULT: f64 = 0.012;

fn r_extra_ohm_default() -> f64 {
    R_EXTRA_OHM_DEFAULT
}

#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ProtectionConfig {
    pub cell_overvoltage_v: Thresholds,
    pub cell_undervoltage_v: Thresholds,
    pub overtemp_charge_c: Thresholds,
    pub undertemp_charge_c: Thresholds,
    pub overtemp_discharge_c: Thresholds,
    pub undertemp_discharge_c: Thresholds,
    pub overcurrent_charge_a: Thresholds,
    pub overcurrent_discharge_a: Thresholds,
    pub voltage_spread_v: Thresholds,
    pub temp_spread_c: Thresholds,
    pub sensors: SensorConfig,
}

#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    pub pack: PackSection,
    #[serde(default)]
    pub estimator: EstimatorConfig,
    pub protection: ProtectionConfig,
    pub limits: LimitsConfig,
    #[serde(default)]
    pub balancing: BalancingConfig,
}

/// A configuration error: the dotted field and what was expected.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfigError {
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for EngineConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}
impl std::error::Error for EngineConfigError {}

/// A step input error: which argument and what was expected.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineInputError {
    pub argument: String,
    pub message: String,
}

impl std::fmt::Display for EngineInputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.argument, self.message)
    }
}
impl std::error::Error for EngineInputError {}

/// Range of the filter's SOC state: the update clamps to it (a little outside 0..1 so that the
/// filter can correct an overshoot near empty/full; the reported SOC is clamped to 0..1). A
/// restored SOC outside it is implausible.
pub const SOC_STATE_RANGE: (f64, f64) = (-0.1, 1.1);

#[derive(Debug, Clone, PartialEq)]
pub struct EngineStateError {
    pub message: String,
}

impl std::fmt::Display for EngineStateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "engine state: {}", self.message)
    }
}
impl std::error::Error for EngineStateError {}

fn cfg_err(field: impl Into<String>, message: impl Into<String>) -> EngineConfigError {
    EngineConfigError { field: field.into(), message: message.into() }
}

/// Largest accepted `pack.series`. One engine is one string; 100 000 series elements would be
/// several hundred kV of cells, far beyond any DC bus, and bound the per-cell state to ~100 MB.
/// (The core benchmark runs 10 000.)
pub const MAX_SERIES: usize = 100_000;
/// Largest accepted `pack.parallel` (cells per series element; only scales capacity and R).
pub const MAX_PARALLEL: usize = 10_000;

impl EngineConfig {
    /// The engine's tables of a pack file are `pack`, `estimator`, `protection`, `limits`
    /// and `balancing`; other top-level tables (`node`, `hardware`, ...) belong to the node
    /// runtime and are ignored here. Within the engine's tables unknown keys are errors.
    pub const TABLES: [&'static str; 5] = ["pack", "estimator", "protection", "limits", "balancing"];

    /// The engine tables of a pack file's text (through [`crate::config`], the one reader).
    pub fn from_toml_str(text: &str) -> Result<Self, EngineConfigError> {
        let layer = crate::config::Layer {
            source: String::new(),
            table: crate::config::parse_toml(text).map_err(|e| cfg_err(e.field, e.message))?,
        };
        crate::config::engine_from_layers(&[layer]).map_err(|e| cfg_err(e.field, e.message))
    }

    pub fn validate(&self) -> Result<(), EngineConfigError> {
        let p = &self.pack;
        // Ranges first: every per-cell array is sized from these, so a nonsense value must be
        // refused here, before anything is allocated (series = 1e8 would abort the process).
        if !(1..=MAX_SERIES).contains(&p.series) {
            return Err(cfg_err("pack.series", format!("expected 1..={MAX_SERIES} series elements, got {}", p.series)));
        }
        if !(1..=MAX_PARALLEL).contains(&p.parallel) {
            return Err(cfg_err("pack.parallel", format!("expected 1..={MAX_PARALLEL} cells in parallel, got {}", p.parallel)));
        }
        if p.temp_sensors == 0 || p.temp_sensors > p.series {
            return Err(cfg_err("pack.temp_sensors", format!("expected 1..={} (one per cell at most)", p.series)));
        }
        if !(p.r_extra_ohm.is_finite() && (0.0..=10.0).contains(&p.r_extra_ohm)) {
            return Err(cfg_err("pack.r_extra_ohm", format!("expected a resistance in [0, 10] ohm, got {}", p.r_extra_ohm)));
        }
        self.estimator.validate().map_err(|(f, m)| cfg_err(format!("estimator.{f}"), m))?;
        let pr = &self.protection;
        for (name, t, upper) in [
            ("cell_overvoltage_v", &pr.cell_overvoltage_v, true),
            ("cell_undervoltage_v", &pr.cell_undervoltage_v, false),
            ("overtemp_charge_c", &pr.overtemp_charge_c, true),
            ("undertemp_charge_c", &pr.undertemp_charge_c, false),
            ("overtemp_discharge_c", &pr.overtemp_discharge_c, true),
            ("undertemp_discharge_c", &pr.undertemp_discharge_c, false),
            ("overcurrent_charge_a", &pr.overcurrent_charge_a, true),
            ("overcurrent_discharge_a", &pr.overcurrent_discharge_a, true),
            ("voltage_spread_v", &pr.voltage_spread_v, true),
            ("temp_spread_c", &pr.temp_spread_c, true),
        ] {
            t.validate_field(upper).map_err(|(f, m)| cfg_err(format!("protection.{name}.{f}"), m))?;
        }
        let s = &pr.sensors;
        if !(s.cell_v_min_v < s.cell_v_max_v) {
            return Err(cfg_err("protection.sensors.cell_v_min_v", "expected cell_v_min_v < cell_v_max_v"));
        }
        if !(s.open_wire_v >= 0.0 && s.open_wire_v <= s.cell_v_min_v) {
            return Err(cfg_err("protection.sensors.open_wire_v", "expected 0 <= open_wire_v <= cell_v_min_v"));
        }
        if !(s.temp_min_c < s.temp_max_c) {
            return Err(cfg_err("protection.sensors.temp_min_c", "expected temp_min_c < temp_max_c"));
        }
        if !(s.current_max_abs_a > 0.0) {
            return Err(cfg_err("protection.sensors.current_max_abs_a", "expected > 0"));
        }
        if !(s.fault_delay_s >= 0.0 && s.fault_delay_s.is_finite()) {
            return Err(cfg_err("protection.sensors.fault_delay_s", "expected a finite number >= 0"));
        }
        self.limits.validate().map_err(|(f, m)| cfg_err(format!("limits.{f}"), m))?;
        self.balancing.validate().map_err(|(f, m)| cfg_err(format!("balancing.{f}"), m))?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Default)]
pub struct EngineOutput {
    pub action: Action,
    pub faults: Vec<ActiveFault>,
    pub soc: Vec<f64>,
    pub soc_sigma: Vec<f64>,
    pub soc_cc: Vec<f64>,
    pub soc_min: f64,
    pub soc_max: f64,
    pub soc_mean: f64,
    pub soe_wh: f64,
    pub ocv_string_v: f64,
    pub r_string_ohm: f64,
    pub dcl_a: f64,
    pub ccl_a: f64,
    pub dcl_peak_a: f64,
    pub ccl_peak_a: f64,
    pub balance: Vec<bool>,
    pub soh_capacity: f64,
    pub soh_resistance: f64,
    /// Per element: estimated capacity (Ah, all parallel cells).
    pub capacity_ah: Vec<f64>,
    /// Active-balancing plan (empty unless `balancing.active_plan`).
    pub transfers: Vec<Transfer>,
}

pub struct Engine {
    cfg: EngineConfig,
    cell: CellParams,
    tab: CellTables,
    n: usize,
    n_t: usize,
    par: f64,
    /// temperature sensor of each cell: k·n_temps/n_cells
    sensor_of: Vec<u32>,
    sensing: sensing::Sensing,
    cells: cells::Cells,
    soh: rest::RestSoh,
    protection: protection::Protection,
    limits: limits::Limits,
    balancer: balancing::Balancer,
    /// the last step's outputs (`soc_cc` doubles as the coulomb counter's state)
    out: EngineOutput,
}

impl Engine {
    pub fn new(cfg: EngineConfig, cell: CellParams) -> Result<Engine, EngineConfigError> {
        cfg.validate()?;
        let n = cfg.pack.series;
        let n_t = cfg.pack.temp_sensors;
        let par = cfg.pack.parallel as f64;
        // the capacity the cells start with: the cell file's, or the pack's measured one
        let (q0, q0_sigma) = (cfg.estimator.capacity_prior_ratio, cfg.estimator.capacity_prior_sigma);
        let cap = cell.capacity_ah * q0;
        let out = EngineOutput {
            soc: vec![0.0; n],
            soc_sigma: vec![0.0; n],
            soc_cc: vec![0.0; n],
            balance: vec![false; n],
            capacity_ah: vec![cap * par; n],
            soh_capacity: q0,
            soh_resistance: 1.0,
            ..Default::default()
        };
        Ok(Engine {
            n,
            n_t,
            par,
            sensor_of: (0..n).map(|k| (k * n_t / n) as u32).collect(),
            sensing: sensing::Sensing::new(n, n_t, cell.t_ref_c),
            cells: cells::Cells::new(n),
            soh: rest::RestSoh::new(n, cap, q0, q0_sigma),
            protection: protection::Protection::new(&cfg.protection, n, n_t),
            limits: limits::Limits::default(),
            balancer: balancing::Balancer::new(),
            out,
            tab: CellTables::new(&cell),
            cell,
            cfg,
        })
    }

    pub fn n_cells(&self) -> usize {
        self.n
    }

    pub fn n_temps(&self) -> usize {
        self.n_t
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    pub fn cell(&self) -> &CellParams {
        &self.cell
    }

    /// The packed cell tables the engine evaluates (for reference implementations).
    pub fn tables(&self) -> &CellTables {
        &self.tab
    }

    pub fn output(&self) -> &EngineOutput {
        &self.out
    }

    /// Every cell voltage of the last step passed the plausibility checks (range, open wire,
    /// stuck): their sum is a measurement of the string's cell voltage.
    pub fn cell_voltages_valid(&self) -> bool {
        self.sensing.v_valid.iter().all(|&v| v)
    }

    /// Clear every latched fault whose condition is gone (faults still present stay).
    pub fn reset_faults(&mut self, _t_s: f64) {
        self.protection.reset();
        self.out.action = self.protection.collect(&mut self.out.faults);
    }

    /// One engine step at time `t_s` (s, strictly increasing) with the cell voltages (V, one
    /// per series element), the sensor temperatures (°C) and the string current (A, discharge
    /// positive). NaN readings are allowed: they are failed sensors, tripped by protection.
    pub fn step(&mut self, t_s: f64, v_cell_v: &[f64], t_cell_c: &[f64], i_a: f64) -> Result<(), EngineInputError> {
        let dt = self.sensing.check_inputs(t_s, v_cell_v, t_cell_c)?;
        let (est, sens, lc) = (&self.cfg.estimator, &self.cfg.protection.sensors, &self.cfg.limits);
        let prot = &mut self.protection;
        let cur = self.sensing.current(t_s, i_a, sens, est.rest_current_a, prot);
        let temps = self.sensing.temperatures(t_s, t_cell_c, dt, cur.charging, sens, &self.cell, &self.tab, lc, prot);
        let derating = limits::temp_factors(lc, &temps);
        let t_spread = if temps.max_c >= temps.min_c { temps.max_c - temps.min_c } else { f64::NAN };
        prot.bank(Rule::TempSpread).eval(0, t_s, t_spread);
        // On the start-up step the SOC is the OCV inversion of these very voltages: that is
        // this sample's measurement update. Updating the filter with the same sample again
        // would count it twice and shrink P_zz to the voltage noise over the OCV slope, so a
        // wrong first sample (relaxation, glitch) would then be trusted and unlearnt slowly.
        let start_up = !self.cells.initialized;
        if start_up {
            let rest_i_cell = est.rest_current_a / self.par;
            self.cells.initialize(v_cell_v, cur.i / self.par, rest_i_cell, sens, est, &self.tab, &self.sensing, &self.sensor_of, &mut self.out.soc_cc);
        }
        let rest_event = self.soh.detect_rest(cur.i, t_s, dt, est, &self.cells.v1);
        if let rest::RestEvent::EndPoint { since_s, t_end_s } = rest_event {
            // before this sample's charge is counted and before the filter moves: the state
            // and `sensing.v_prev` are still those of the rest's last sample
            self.soh.rest_point(&mut self.cells, &self.sensing, &self.sensor_of, &self.tab, &self.cell, est, self.par, t_end_s, since_s);
        }
        let (di, r0_step) = self.soh.current_step(cur.i, cur.valid, dt, rest::RestSoh::r0_step_min_a(&self.cell, self.par));
        // the estimator's current: the sensor's offset learnt at rest taken out
        let i_est = self.soh.zero_current(cur.i, cur.valid, t_s, dt, est);
        let i_cell = i_est / self.par;
        let eta = if i_est < 0.0 { self.cell.coulombic_efficiency } else { 1.0 };
        self.soh.integrate(eta, i_cell, dt, &self.cell, est.rest_current_a / self.par);
        let (v_lo, v_hi) = self.sensing.cell_voltages(t_s, v_cell_v, sens, r0_step, prot);
        if r0_step {
            let c_a = self.cell.capacity_ah * self.par; // the string current of 1 C
            self.sensing.r0_step_factors((cur.i - di) / c_a, cur.i / c_a, &self.cell);
        }
        self.sensing.r0_load_factors(i_cell / self.cell.capacity_ah, &self.cell);
        let st = cells::CellStep { dt, par: self.par, i: i_est, i_cell, di_cell: di / self.par, eta, r0_step, start_up, load_c: self.soh.load_c };
        let o = &mut self.out;
        let sums = self.cells.update(&st, v_cell_v, &self.sensing, &mut self.soh, &self.sensor_of, &self.tab, &self.cell, est, lc, &mut o.soc, &mut o.soc_sigma, &mut o.soc_cc);
        if r0_step {
            self.soh.update_r0_soh_mean(); // the only samples its ratios move on
        }
        prot.bank(Rule::VoltageSpread).eval(0, t_s, if v_hi >= v_lo { v_hi - v_lo } else { f64::NAN });
        let cap_sum = self.soh.cap_sum; // the capacity the pass used
        self.soh.rest_sample(&self.cells, &self.sensing, &self.sensor_of, v_cell_v, t_s, dt);
        if let rest::RestEvent::Point { since_s } = rest_event {
            self.soh.rest_point(&mut self.cells, &self.sensing, &self.sensor_of, &self.tab, &self.cell, est, self.par, t_s, since_s);
        }
        if cur.valid && !start_up {
            self.soh.full_charge(&mut self.cells, &self.sensing, &self.sensor_of, v_cell_v, i_est, &self.tab, &self.cell, est, self.par);
            self.soh.end_of_discharge(&mut self.cells, &self.sensing, &self.sensor_of, v_cell_v, i_est, t_s, &self.tab, &self.cell, est, self.par);
        }
        let nf = self.n as f64;
        o.soc_min = sums.soc_min;
        o.soc_max = sums.soc_max;
        o.soc_mean = sums.soc_sum / nf;
        o.soe_wh = sums.soe * self.par;
        o.ocv_string_v = sums.ocv_sum;
        o.r_string_ohm = sums.r_sum * (1.0 / self.par) + self.cfg.pack.r_extra_ohm;
        o.soh_resistance = self.soh.r0_soh_mean;
        o.soh_capacity = cap_sum / (nf * self.cell.capacity_ah);
        let action = prot.collect(&mut o.faults);
        o.action = action;
        self.limits.update(lc, &sums, self.par, derating, action, cur.valid, dt, o);
        let bc = &self.cfg.balancing;
        self.balancer.step(bc, t_s, v_cell_v, cur.i, cur.valid, action, &self.sensing, &self.sensor_of, &self.soh.cap_ah, self.par, o);
        Ok(())
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
