//! The pack engine: one pack's raw measurements in, estimates, limits, protection actions
//! and balancing commands out. Ties together [`crate::soc_ekf`], [`crate::soh`],
//! [`crate::limits`], [`crate::protection`] and [`crate::balancing`] over the cells of one
//! string, stored as struct-of-arrays so that the per-cell loop streams through memory.
//!
//! A "cell" here is one series element: `parallel` physical cells in parallel, modelled as
//! the nominal cell carrying `i_a / parallel` (capacity ×P, resistance /P). Current is
//! positive when discharging. Sans-IO: time is the argument `t_s`.
//!
//! One step: (1) current and temperature sensors (plausibility, temperature rules with
//! charge/discharge windows chosen by the current sign, per-sensor exponentials);
//! (2) pass 1 over the cells: voltage plausibility and the per-cell voltage rules;
//! (3) pass 2 in blocks of [`BLOCK`] cells: table lookups (gathers), then the EKF, coulomb
//! count and per-cell limits as branch-free arithmetic that the compiler vectorises (an
//! AVX2 build of the same code is used when the CPU has it; results are bit-identical),
//! then the pack reductions; (4) rest point (OCV correction, capacity), pack rules, action,
//! limits with derating and rate limits, balancing.

use serde::Deserialize;

use crate::balancing::{self, BalanceMode, BalancingConfig, Transfer};
use crate::cell_model::CellParams;
use crate::cell_tables::{CellTables, TempSel};
use crate::limits::{cell_limit, LimitsConfig, RateLimited};
use crate::protection::{
    Action, ActiveFault, CompiledRule, Rule, RuleBank, SensorConfig, Thresholds,
};
use crate::soc_ekf::{self, Cov2, EstimatorConfig, Predict};
use crate::soh::{r0_observation, Awtls, CAPACITY_RATIO_RANGE, R0_RATIO_RANGE};

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
    /// String resistance outside the cells (contactors, fuses, busbars, cabling), Ω.
    #[serde(default)]
    pub r_extra_ohm: f64,
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

// ---------------------------------------------------------------------------------------------
// Engine
// ---------------------------------------------------------------------------------------------

/// Cells per block of the vectorised pass (scratch stays in L1: 20 arrays × 8 B × BLOCK).
const BLOCK: usize = 128;

/// IEKF gate: an update that would move SOC by more than this (approximated with the
/// previous P_zz) spans more than two intervals of the 101-point OCV grid, over which the
/// piecewise-linear OCV's slope changes, so the linearisation at the predicted SOC is poor...
const IEKF_GATE_DZ: f64 = 0.02;
/// ...triggers this many Gauss-Newton relinearisations before the block's update (which is
/// one more). Bell & Cathey, "The iterated Kalman filter update as a Gauss-Newton method",
/// IEEE TAC 38 (1993) 294-297.
const IEKF_ITERS: usize = 3;

/// Per-block scratch of the cell pass.
struct Scratch {
    zp: [f64; BLOCK],
    r1: [f64; BLOCK],
    r0: [f64; BLOCK],
    r0r: [f64; BLOCK],
    slope: [f64; BLOCK],
    ocv: [f64; BLOCK],
    h: [f64; BLOCK],
    e: [f64; BLOCK],
    v2: [f64; BLOCK],
    a1: [f64; BLOCK],
    dc: [f64; BLOCK],
    dp: [f64; BLOCK],
    ocv_out: [f64; BLOCK],
    soe: [f64; BLOCK],
    ldc: [f64; BLOCK],
    lcc: [f64; BLOCK],
    ldp: [f64; BLOCK],
    lcp: [f64; BLOCK],
}

impl Scratch {
    fn new() -> Box<Self> {
        Box::new(Scratch {
            zp: [0.0; BLOCK],
            r1: [0.0; BLOCK],
            r0: [0.0; BLOCK],
            r0r: [0.0; BLOCK],
            slope: [0.0; BLOCK],
            ocv: [0.0; BLOCK],
            h: [0.0; BLOCK],
            e: [0.0; BLOCK],
            v2: [0.0; BLOCK],
            a1: [0.0; BLOCK],
            dc: [0.0; BLOCK],
            dp: [0.0; BLOCK],
            ocv_out: [0.0; BLOCK],
            soe: [0.0; BLOCK],
            ldc: [0.0; BLOCK],
            lcc: [0.0; BLOCK],
            ldp: [0.0; BLOCK],
            lcp: [0.0; BLOCK],
        })
    }
}

/// One block of the cell pass's arithmetic: predict, Joseph update, outputs, per-cell limits.
struct BlockMath<'a> {
    z: &'a mut [f64],
    v1: &'a mut [f64],
    cov: &'a mut [Cov2],
    inv_qc: &'a [f64],
    cap: &'a [f64],
    v: &'a [f64],
    ok: &'a [bool],
    soc: &'a mut [f64],
    sig: &'a mut [f64],
    cc: &'a mut [f64],
    sc: &'a mut Scratch,
    base_pr: Predict,
    g_eta_i: f64,
    i_cell: f64,
    r_meas: f64,
    hc_c: f64,
    hc_p: f64,
    vmin: f64,
    vmax: f64,
    /// false on the start-up step (see `Engine::step`): predict only
    update: bool,
}

fn avx2_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn block_math(b: &mut BlockMath<'_>, avx2: bool) {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: only called when the CPU reports AVX2 (checked at construction).
        unsafe { block_math_avx2(b) };
        return;
    }
    let _ = avx2;
    block_math_impl(b);
}

/// The same code compiled for AVX2 (4 lanes): Rust never contracts a·b+c into an FMA on
/// its own, so both paths give bit-identical results.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn block_math_avx2(b: &mut BlockMath<'_>) {
    block_math_impl(b);
}

#[inline(always)]
fn block_math_impl(b: &mut BlockMath<'_>) {
    let len = b.z.len();
    let (z_s, v1_s, cov_s) = (&mut b.z[..len], &mut b.v1[..len], &mut b.cov[..len]);
    let (qb, capb, vb, okb) = (&b.inv_qc[..len], &b.cap[..len], &b.v[..len], &b.ok[..len]);
    let (socb, sigb, ccb) = (&mut b.soc[..len], &mut b.sig[..len], &mut b.cc[..len]);
    let sc = &mut *b.sc;
    let (s_zp, s_r1, s_r0, s_slope) = (&sc.zp[..len], &sc.r1[..len], &sc.r0[..len], &sc.slope[..len]);
    let (s_ocv, s_h, s_e, s_v2) = (&sc.ocv[..len], &sc.h[..len], &sc.e[..len], &sc.v2[..len]);
    let (s_a1, s_dc, s_dp) = (&sc.a1[..len], &sc.dc[..len], &sc.dp[..len]);
    let (s_ocv_out, s_soe) = (&mut sc.ocv_out[..len], &mut sc.soe[..len]);
    let (s_ldc, s_lcc) = (&mut sc.ldc[..len], &mut sc.lcc[..len]);
    let (s_ldp, s_lcp) = (&mut sc.ldp[..len], &mut sc.lcp[..len]);
    let (g_eta_i, i_cell, r_meas) = (b.g_eta_i, b.i_cell, b.r_meas);
    let (hc_c, hc_p, vmin, vmax) = (b.hc_c, b.hc_p, b.vmin, b.vmax);
    for j in 0..len {
        let inv_qc = qb[j];
        let mut z = z_s[j];
        let mut v1 = v1_s[j];
        let mut cov = cov_s[j];
        let pr = Predict { a1: s_a1[j], ..b.base_pr };
        let r1 = s_r1[j];
        soc_ekf::predict(&mut z, &mut v1, &mut cov, r1, inv_qc, &pr);
        let (z_p, v1_p, cov_p) = (z, v1, cov);
        let r0 = s_r0[j];
        let slope = s_slope[j];
        let ocv_pred = s_ocv[j];
        let v2 = s_v2[j];
        // computed for every cell, kept only where the voltage is trusted
        let innov = vb[j] - (ocv_pred - r0 * i_cell - v1 - v2);
        soc_ekf::update(&mut z, &mut v1, &mut cov, slope, innov, r_meas);
        let ok = okb[j] & b.update;
        let z = if ok { z.clamp(SOC_STATE_RANGE.0, SOC_STATE_RANGE.1) } else { z_p };
        let v1 = if ok { v1 } else { v1_p };
        let cov = if ok { cov } else { cov_p };
        z_s[j] = z;
        v1_s[j] = v1;
        cov_s[j] = cov;
        ccb[j] -= g_eta_i * inv_qc;
        let zo = z.clamp(0.0, 1.0);
        socb[j] = zo;
        sigb[j] = cov.p00.sqrt();
        // pack quantities at the corrected state
        let dz = zo - s_zp[j].clamp(0.0, 1.0);
        let ocv = ocv_pred + slope * dz;
        s_ocv_out[j] = ocv;
        s_soe[j] = (s_e[j] + (ocv - s_h[j]) * dz) * capb[j];
        // SOF: horizon resistance and headroom per direction and horizon
        let vd = ocv - v2;
        let (dc, dp) = (s_dc[j], s_dp[j]);
        let inv_rh_c = 1.0 / (r0 + r1 * (1.0 - dc) + slope * hc_c * inv_qc);
        let inv_rh_p = 1.0 / (r0 + r1 * (1.0 - dp) + slope * hc_p * inv_qc);
        let vc = v1 * dc;
        let vpk = v1 * dp;
        s_ldc[j] = cell_limit(vd - vc - vmin, inv_rh_c);
        s_lcc[j] = cell_limit(vmax - vd + vc, inv_rh_c);
        s_ldp[j] = cell_limit(vd - vpk - vmin, inv_rh_p);
        s_lcp[j] = cell_limit(vmax - vd + vpk, inv_rh_p);
    }
}

/// Deadband (°C) of the model temperature against the sensor reading. The cell files' R and
/// τ tables are identified at 10..15 °C spacing (hw/cells/*.toml); the steepest of them (A123
/// LFP τ1: 190 → 139 s over 10 → 25 °C, R0 −28 %) changes by < 1 % within ±0.25 °C, well
/// inside the fit's own error, while typical NTC/AFE noise is ±0.1..0.2 °C.
pub const MODEL_TEMP_DEADBAND_C: f64 = 0.25;

/// Per temperature sensor: everything that depends on the model temperature (and Δt) only.
#[derive(Debug, Clone, Copy)]
struct SensorStep {
    /// model temperature (°C) the fields below are for; NaN before the first step
    t_model: f64,
    /// τ1, τ2 and Δt the exponentials below were computed for (recomputed only on change)
    tau1: f64,
    tau2: f64,
    dt: f64,
    dtemp: f64,
    sel: TempSel,
    a1: f64,
    a2: f64,
    d_cont: f64,
    d_peak: f64,
}


impl SensorStep {
    const UNSET: SensorStep = SensorStep {
        t_model: f64::NAN,
        tau1: f64::NAN,
        tau2: f64::NAN,
        dt: f64::NAN,
        dtemp: 0.0,
        sel: TempSel { lo: 0, hi: 0, f: 0.0 },
        a1: 1.0,
        a2: 1.0,
        d_cont: 1.0,
        d_peak: 1.0,
    };
}

pub struct Engine {
    cfg: EngineConfig,
    cell: CellParams,
    tab: CellTables,
    n: usize,
    n_t: usize,
    par: f64,
    sensor_of: Vec<u32>,
    // --- per cell (struct of arrays) ---
    z: Vec<f64>,
    v1: Vec<f64>,
    v2: Vec<f64>,
    h: Vec<f64>,
    cov: Vec<Cov2>,
    /// 1 / (3600 · Q_cell_ah): SOC per coulomb of one (unit) cell
    inv_qc: Vec<f64>,
    cap_ah: Vec<f64>,
    r0_ratio: Vec<f64>,
    v_prev: Vec<f64>,
    /// Σ cap_ah (updated when a capacity estimate changes)
    cap_sum: f64,
    v_stuck: Vec<u32>,
    /// ΔV of the last sample (only filled on an R0 current step)
    r0_dv: Vec<f64>,
    v_valid: Vec<bool>,
    awtls: Vec<Awtls>,
    z_rest: Vec<f64>,
    z_rest_var: Vec<f64>,
    // --- per temperature sensor ---
    t_prev: Vec<f64>,
    t_stuck: Vec<u32>,
    t_valid: Vec<bool>,
    t_used: Vec<f64>,
    ss: Vec<SensorStep>,
    // --- pack ---
    initialized: bool,
    t_last: Option<f64>,
    i_prev: f64,
    i_prev_valid: bool,
    rest_since: f64,
    rest_done: bool,
    q_since_rest_ah: f64,
    dt2_since_rest: f64,
    time_since_rest_s: f64,
    banks: Vec<RuleBank>,
    dcl: RateLimited,
    ccl: RateLimited,
    dcl_peak: RateLimited,
    ccl_peak: RateLimited,
    out: EngineOutput,
    /// cells bleeding since the last decision, and when it was taken (NaN: none pending)
    bal_on: Vec<u32>,
    bal_decided_t: f64,
    bal_scratch: Vec<(f64, u32)>,
    scratch: Box<Scratch>,
    /// run the block arithmetic with AVX2 (detected once at construction)
    use_avx2: bool,
}

impl Engine {
    pub fn new(cfg: EngineConfig, cell: CellParams) -> Result<Engine, EngineConfigError> {
        cfg.validate()?;
        let n = cfg.pack.series;
        let n_t = cfg.pack.temp_sensors;
        let par = cfg.pack.parallel as f64;
        let pr = &cfg.protection;
        let bank = |rule: Rule, t: &Thresholds, upper: bool, len: usize| {
            RuleBank::new(rule, CompiledRule::new(t, upper), len)
        };
        let sensor_rule = |rule: Rule, len: usize| {
            RuleBank::new(rule, CompiledRule::fault_only(pr.sensors.fault_delay_s), len)
        };
        // order = Rule discriminant
        let banks = vec![
            bank(Rule::CellOvervoltage, &pr.cell_overvoltage_v, true, n),
            bank(Rule::CellUndervoltage, &pr.cell_undervoltage_v, false, n),
            bank(Rule::OvertempCharge, &pr.overtemp_charge_c, true, n_t),
            bank(Rule::UndertempCharge, &pr.undertemp_charge_c, false, n_t),
            bank(Rule::OvertempDischarge, &pr.overtemp_discharge_c, true, n_t),
            bank(Rule::UndertempDischarge, &pr.undertemp_discharge_c, false, n_t),
            bank(Rule::OvercurrentCharge, &pr.overcurrent_charge_a, true, 1),
            bank(Rule::OvercurrentDischarge, &pr.overcurrent_discharge_a, true, 1),
            bank(Rule::VoltageSpread, &pr.voltage_spread_v, true, 1),
            bank(Rule::TempSpread, &pr.temp_spread_c, true, 1),
            sensor_rule(Rule::VoltageSensor, n),
            sensor_rule(Rule::TempSensor, n_t),
            sensor_rule(Rule::CurrentSensor, 1),
        ];
        debug_assert!(banks.iter().enumerate().all(|(k, b)| b.rule as usize == k));
        let tab = CellTables::new(&cell);
        let cap = cell.capacity_ah;
        let prior = cfg.estimator.capacity_prior_sigma;
        let sensor_of: Vec<u32> = (0..n).map(|k| (k * n_t / n) as u32).collect();
        let t_ref = cell.t_ref_c;
        let out = EngineOutput {
            soc: vec![0.0; n],
            soc_sigma: vec![0.0; n],
            soc_cc: vec![0.0; n],
            balance: vec![false; n],
            capacity_ah: vec![cap * par; n],
            soh_capacity: 1.0,
            soh_resistance: 1.0,
            ..Default::default()
        };
        Ok(Engine {
            n,
            n_t,
            par,
            sensor_of,
            z: vec![0.5; n],
            v1: vec![0.0; n],
            v2: vec![0.0; n],
            h: vec![0.0; n],
            cov: vec![Cov2 { p00: 0.25, p01: 0.0, p11: 1e-6 }; n],
            inv_qc: vec![1.0 / (3600.0 * cap); n],
            cap_ah: vec![cap; n],
            r0_ratio: vec![1.0; n],
            v_prev: vec![f64::NAN; n],
            cap_sum: cap * n as f64,
            v_stuck: vec![0; n],
            r0_dv: vec![f64::NAN; n],
            v_valid: vec![false; n],
            awtls: vec![Awtls::with_prior(prior); n],
            z_rest: vec![f64::NAN; n],
            z_rest_var: vec![f64::NAN; n],
            t_prev: vec![f64::NAN; n_t],
            t_stuck: vec![0; n_t],
            t_valid: vec![false; n_t],
            t_used: vec![t_ref; n_t],
            ss: vec![SensorStep::UNSET; n_t],
            initialized: false,
            t_last: None,
            i_prev: 0.0,
            i_prev_valid: false,
            rest_since: f64::NAN,
            rest_done: false,
            q_since_rest_ah: 0.0,
            dt2_since_rest: 0.0,
            time_since_rest_s: 0.0,
            banks,
            dcl: RateLimited::default(),
            ccl: RateLimited::default(),
            dcl_peak: RateLimited::default(),
            ccl_peak: RateLimited::default(),
            out,
            bal_on: Vec::new(),
            bal_decided_t: f64::NAN,
            bal_scratch: Vec::new(),
            scratch: Scratch::new(),
            use_avx2: avx2_available(),
            tab,
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

    /// Clear every latched fault whose condition is gone (faults still present stay).
    pub fn reset_faults(&mut self, _t_s: f64) {
        for b in &mut self.banks {
            b.reset();
        }
        self.collect_faults();
    }

    fn collect_faults(&mut self) -> Action {
        self.out.faults.clear();
        let mut action = Action::None;
        for b in &self.banks {
            let pack_level = b.states.len() == 1;
            action = action.max(b.collect(pack_level, &mut self.out.faults));
        }
        self.out.action = action;
        action
    }

    /// One engine step at time `t_s` (s, strictly increasing) with the cell voltages (V, one
    /// per series element), the sensor temperatures (°C) and the string current (A, discharge
    /// positive). NaN readings are allowed: they are failed sensors, tripped by protection.
    pub fn step(&mut self, t_s: f64, v_cell_v: &[f64], t_cell_c: &[f64], i_a: f64) -> Result<(), EngineInputError> {
        if v_cell_v.len() != self.n {
            return Err(EngineInputError {
                argument: "v_cell_v".into(),
                message: format!("expected {} cell voltages, got {}", self.n, v_cell_v.len()),
            });
        }
        if t_cell_c.len() != self.n_t {
            return Err(EngineInputError {
                argument: "t_cell_c".into(),
                message: format!("expected {} temperatures, got {}", self.n_t, t_cell_c.len()),
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
        let est = self.cfg.estimator.clone();
        let sens = self.cfg.protection.sensors;

        // ---- current ----
        let i_valid = i_a.is_finite() && i_a.abs() <= sens.current_max_abs_a;
        let i = if i_valid { i_a } else { 0.0 };
        let charging = i < -est.rest_current_a;
        self.banks[Rule::CurrentSensor as usize].eval(0, t_s, if i_valid { 0.0 } else { 1.0 });
        let i_prot = if i_valid { i } else { f64::NAN };
        self.banks[Rule::OvercurrentDischarge as usize].eval(0, t_s, i_prot);
        self.banks[Rule::OvercurrentCharge as usize].eval(0, t_s, -i_prot);

        // ---- temperature sensors ----
        let (mut tmin, mut tmax) = (f64::INFINITY, f64::NEG_INFINITY);
        let p = &self.cell;
        let lc = &self.cfg.limits;
        let dc = lc.continuous_horizon_s;
        let dp = lc.peak_horizon_s;
        let (fd, fc);
        let mut any_t_valid = false;
        for s in 0..self.n_t {
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
            self.banks[Rule::TempSensor as usize].eval(s, t_s, if valid { 0.0 } else { 1.0 });
            let tx = if valid { x } else { f64::NAN };
            // charge windows apply while charging, discharge windows otherwise (foxBMS style)
            let (oc, uc, od, ud) = if charging {
                (tx, tx, f64::NEG_INFINITY, f64::INFINITY)
            } else {
                (f64::NEG_INFINITY, f64::INFINITY, tx, tx)
            };
            self.banks[Rule::OvertempCharge as usize].eval(s, t_s, oc);
            self.banks[Rule::UndertempCharge as usize].eval(s, t_s, uc);
            self.banks[Rule::OvertempDischarge as usize].eval(s, t_s, od);
            self.banks[Rule::UndertempDischarge as usize].eval(s, t_s, ud);
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
            let t = if (t_meas - prev.t_model).abs() <= MODEL_TEMP_DEADBAND_C { prev.t_model } else { t_meas };
            let tau1 = p.tau1(t);
            // the exponentials depend on τ(T) and Δt only: a constant-τ cell (or a steady
            // temperature) at a fixed sample period costs no exp at all
            let (d_cont, d_peak) = if prev.tau1 == tau1 {
                (prev.d_cont, prev.d_peak)
            } else {
                ((-dc / tau1).exp(), (-dp / tau1).exp())
            };
            let a1 = if prev.tau1 == tau1 && prev.dt == dt { prev.a1 } else { (-dt / tau1).exp() };
            // second RC pair: same caching (its exp is as costly as the first one's)
            let tau2 = if p.has_rc2() { p.tau2(t) } else { 0.0 };
            let a2 = if !p.has_rc2() {
                0.0
            } else if prev.tau2 == tau2 && prev.dt == dt {
                prev.a2
            } else {
                (-dt / tau2).exp()
            };
            self.ss[s] = SensorStep {
                t_model: t,
                tau1,
                tau2,
                dt,
                dtemp: t - p.t_ref_c,
                sel: self.tab.temp_sel(t),
                a1,
                a2,
                d_cont,
                d_peak,
            };
        }
        // derating curves are unimodal (validated), so the minimum over the sensors is at
        // the coldest or the hottest one
        if any_t_valid {
            fd = lc.discharge_temp_derating.eval(tmin).min(lc.discharge_temp_derating.eval(tmax)).min(1.0);
            fc = lc.charge_temp_derating.eval(tmin).min(lc.charge_temp_derating.eval(tmax)).min(1.0);
        } else {
            fd = 0.0;
            fc = 0.0;
        }
        let t_spread = if tmax >= tmin { tmax - tmin } else { f64::NAN };
        self.banks[Rule::TempSpread as usize].eval(0, t_s, t_spread);

        // On the start-up step the SOC is the OCV inversion of these very voltages: that is
        // this sample's measurement update. Updating the filter with the same sample again
        // would count it twice and shrink P_zz to the voltage noise over the OCV slope, so a
        // wrong first sample (relaxation, glitch) would then be trusted and unlearnt slowly.
        let start_up = !self.initialized;
        if start_up {
            self.initialize(v_cell_v, &sens);
        }
        let p = &self.cell;
        let lc = &self.cfg.limits;

        // ---- rest detection, R0 step detection, charge throughput ----
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
        let di = i - self.i_prev;
        let r0_step = i_valid && self.i_prev_valid && di.abs() >= est.r0_step_min_a && dt > 0.0 && dt <= 1.0;
        self.i_prev = i;
        self.i_prev_valid = i_valid;
        let i_cell = i / self.par;
        let eta = if i < 0.0 { p.coulombic_efficiency } else { 1.0 };
        self.q_since_rest_ah += eta * i_cell * dt / 3600.0;
        self.dt2_since_rest += dt * dt;
        self.time_since_rest_s += dt;

        let var_i_cell = (est.current_noise_a / self.par).powi(2);
        let base_pr = Predict {
            a1: 1.0,
            dt_s: dt,
            i_cell,
            eta_i: eta * i_cell,
            q_z_dt: est.soc_process_noise * dt,
            q_v1_dt: est.v1_process_noise * dt,
            var_i_cell,
        };
        let r_meas = est.voltage_noise_v.powi(2) + est.model_error_v.powi(2);
        let vmin = p.v_min_v + lc.voltage_margin_v;
        let vmax = p.v_max_v - lc.voltage_margin_v;
        let hc_c = dc; // horizon for the SOC term
        let hc_p = dp;
        let has_rc2 = p.has_rc2();
        let hyst = p.hysteresis_m_v > 0.0;
        let ah = if hyst {
            (-(p.hysteresis_gamma * eta * i_cell * dt / (3600.0 * p.capacity_ah)).abs()).exp()
        } else {
            1.0
        };
        let hm = p.hysteresis_m_v * i.signum();
        let di_cell = di / self.par;
        let inv_par = 1.0 / self.par;

        // ---- the per-cell hot loop ----
        // One SOC lookup per cell (at the predicted SOC) serves the RC prediction, the
        // measurement, the limits and the pack sums; after the update the OCV is carried
        // to the corrected SOC along the same interval's slope (exact within the interval).
        let n = self.n;
        let (mut zmin, mut zmax, mut zsum) = (f64::INFINITY, f64::NEG_INFINITY, 0.0);
        let (mut vmin_meas, mut vmax_meas) = (f64::INFINITY, f64::NEG_INFINITY);
        let (mut soe, mut ocv_sum, mut r_sum) = (0.0, 0.0, 0.0);
        let (mut ld_c, mut lc_c, mut ld_p, mut lc_p) =
            (f64::INFINITY, f64::INFINITY, f64::INFINITY, f64::INFINITY);
        let mut r0_ratio_sum = 0.0;
        let stuck_n = sens.stuck_samples;
        let (vlo, vhi, vow) = (sens.cell_v_min_v, sens.cell_v_max_v, sens.open_wire_v);
        let tab = &self.tab;
        let ssv = &self.ss[..];
        let v_in = &v_cell_v[..n];
        let zs = &mut self.z[..n];
        let v1s = &mut self.v1[..n];
        let v2s = &mut self.v2[..n];
        let hs = &mut self.h[..n];
        let covs = &mut self.cov[..n];
        let inv_qcs = &self.inv_qc[..n];
        let caps = &self.cap_ah[..n];
        let r0rs = &mut self.r0_ratio[..n];
        let v_prevs = &mut self.v_prev[..n];
        let stucks = &mut self.v_stuck[..n];
        let valids = &mut self.v_valid[..n];
        let o_soc = &mut self.out.soc[..n];
        let o_sig = &mut self.out.soc_sigma[..n];
        let o_cc = &mut self.out.soc_cc[..n];
        let (b_lo, b_hi) = self.banks.split_at_mut(Rule::VoltageSensor as usize);
        let b_vs = &mut b_hi[0];
        let (b_ov, b_rest) = b_lo.split_at_mut(1);
        let b_ov = &mut b_ov[0];
        let b_uv = &mut b_rest[0];
        let g_eta_i = base_pr.eta_i * dt;
        let r0_gain = est.r0_gain;
        // pass 1: sensor plausibility and the per-cell protection rules (branchy, cheap)
        let dvs = &mut self.r0_dv[..n];
        for k in 0..n {
            let v = v_in[k];
            // NaN, range, open wire, stuck
            let v_prev = v_prevs[k];
            let cnt = if v == v_prev { stucks[k].saturating_add(1) } else { 0 };
            stucks[k] = cnt;
            let stuck = stuck_n > 0 && cnt >= stuck_n;
            let valid = v >= vlo && v <= vhi && v > vow && !stuck; // NaN compares false
            if r0_step {
                dvs[k] = if valid && valids[k] { v - v_prev } else { f64::NAN };
            }
            v_prevs[k] = v;
            valids[k] = valid;
            b_vs.eval(k, t_s, if valid { 0.0 } else { 1.0 });
            let vp = if valid { v } else { f64::NAN };
            b_ov.eval(k, t_s, vp);
            b_uv.eval(k, t_s, vp);
            if valid {
                vmin_meas = vmin_meas.min(v);
                vmax_meas = vmax_meas.max(v);
            }
        }
        // pass 2, in blocks of BLOCK cells: (a) the table lookups (gathers, scalar) into small
        // scratch arrays that stay in L1, (b) the filter and limit arithmetic as branch-free
        // straight-line code over the block (auto-vectorised), (c) the reductions, in cell
        // order (the same sums as a sequential loop).
        let sc = &mut *self.scratch;
        let use_avx2 = self.use_avx2;
        let sensor_of = &self.sensor_of[..n];
        let mut start = 0;
        while start < n {
            let end = (start + BLOCK).min(n);
            let len = end - start;
            // (a) gathers
            for j in 0..len {
                let k = start + j;
                let ss = &ssv[sensor_of[k] as usize];
                let z_pred = zs[k] - g_eta_i * inv_qcs[k];
                let at = tab.locate(z_pred);
                let mut r0r = r0rs[k];
                let r1 = tab.r1(at, ss.sel) * r0r;
                let r0_nom = tab.r0(at, ss.sel);
                // R0 from the current step: −ΔV/ΔI of this cell, ratio to the table, low-passed
                if r0_step {
                    if let Some(r) = r0_observation(dvs[k], di_cell, r0_nom) {
                        r0r += r0_gain * (r / r0_nom - r0r);
                        r0rs[k] = r0r;
                    }
                }
                let mut v2 = 0.0;
                if has_rc2 {
                    v2 = ss.a2 * v2s[k] + tab.r2(at, ss.sel) * r0r * (1.0 - ss.a2) * i_cell;
                    v2s[k] = v2;
                }
                let mut hk = 0.0;
                if hyst {
                    hk = ah * hs[k] - (1.0 - ah) * hm;
                    hs[k] = hk;
                }
                let r0 = r0_nom * r0r;
                let mut slope = tab.slope(at);
                let mut ocv_lin = tab.ocv(at, ss.dtemp) + hk;
                // Iterated update (IEKF) where the update is a large SOC step: there the OCV
                // linearised at the predicted SOC is a poor model over the step (start-up 20 %
                // off with a wide P_zz), and a plain EKF overshoots or crawls. Cheap gate with
                // the previous P_zz; the branch is rare and leaves the vector pass untouched:
                // it only moves the point the block linearises the OCV at (`slope`, and the
                // OCV line evaluated at the predicted SOC).
                let v1_pred = ss.a1 * v1s[k] + r1 * (1.0 - ss.a1) * i_cell;
                let innov0 = v_in[k] - (ocv_lin - r0 * i_cell - v1_pred - v2);
                let pz = covs[k].p00;
                if !start_up && valids[k] && (slope * pz * innov0).abs() > IEKF_GATE_DZ * (slope * slope * pz + r_meas) {
                    let (mut zc, mut v1c, mut pc) = (zs[k], v1s[k], covs[k]);
                    soc_ekf::predict(&mut zc, &mut v1c, &mut pc, r1, inv_qcs[k], &Predict { a1: ss.a1, ..base_pr });
                    let y = v_in[k] + r0 * i_cell + v1c + v2; // v = OCV(z) + h − R0·i − v1 − v2
                    let (zl, sl, ol) =
                        soc_ekf::iterate_linearization(zc, &pc, y, r_meas, IEKF_ITERS, |z| {
                            let a = tab.locate(z);
                            (tab.slope(a), tab.ocv(a, ss.dtemp) + hk)
                        });
                    slope = sl;
                    ocv_lin = ol + sl * (zc - zl);
                }
                sc.zp[j] = z_pred;
                sc.r1[j] = r1;
                sc.r0[j] = r0;
                sc.r0r[j] = r0r;
                sc.slope[j] = slope;
                sc.ocv[j] = ocv_lin;
                sc.h[j] = hk;
                sc.e[j] = tab.energy(at);
                sc.v2[j] = v2;
                sc.a1[j] = ss.a1;
                sc.dc[j] = ss.d_cont;
                sc.dp[j] = ss.d_peak;
            }
            // (b) arithmetic (AVX2 code path where the CPU has it; same results)
            {
                let mut bm = BlockMath {
                    z: &mut zs[start..end],
                    v1: &mut v1s[start..end],
                    cov: &mut covs[start..end],
                    inv_qc: &inv_qcs[start..end],
                    cap: &caps[start..end],
                    v: &v_in[start..end],
                    ok: &valids[start..end],
                    soc: &mut o_soc[start..end],
                    sig: &mut o_sig[start..end],
                    cc: &mut o_cc[start..end],
                    sc: &mut *sc,
                    base_pr,
                    g_eta_i,
                    i_cell,
                    r_meas,
                    hc_c,
                    hc_p,
                    vmin,
                    vmax,
                    update: !start_up,
                };
                block_math(&mut bm, use_avx2);
            }
            // (c) reductions in cell order
            for j in 0..len {
                let zo = o_soc[start + j];
                zmin = zmin.min(zo);
                zmax = zmax.max(zo);
                zsum += zo;
                ocv_sum += sc.ocv_out[j];
                r_sum += sc.r0[j];
                soe += sc.soe[j];
                r0_ratio_sum += sc.r0r[j];
                ld_c = ld_c.min(sc.ldc[j]);
                lc_c = lc_c.min(sc.lcc[j]);
                ld_p = ld_p.min(sc.ldp[j]);
                lc_p = lc_p.min(sc.lcp[j]);
            }
            start = end;
        }
        let cap_sum = self.cap_sum;
        let nf = self.n as f64;
        let v_spread = if vmax_meas >= vmin_meas { vmax_meas - vmin_meas } else { f64::NAN };
        self.banks[Rule::VoltageSpread as usize].eval(0, t_s, v_spread);

        if rest_point {
            self.rest_point();
        }
        let p = &self.cell;

        // ---- pack outputs ----
        let o = &mut self.out;
        o.soc_min = zmin;
        o.soc_max = zmax;
        o.soc_mean = zsum / nf;
        o.soe_wh = soe * self.par;
        o.ocv_string_v = ocv_sum;
        o.r_string_ohm = r_sum * inv_par + self.cfg.pack.r_extra_ohm;
        o.soh_resistance = r0_ratio_sum / nf;
        o.soh_capacity = cap_sum / (nf * p.capacity_ah);

        // ---- protection → action ----
        let action = self.collect_faults();

        // ---- limits ----
        let lc = &self.cfg.limits;
        let fsd = lc.discharge_soc_derating.eval(self.out.soc_min);
        let fsc = lc.charge_soc_derating.eval(self.out.soc_max);
        let mut td_c = (self.par * ld_c).min(lc.max_discharge_a * fd * fsd);
        let mut tc_c = (self.par * lc_c).min(lc.max_charge_a * fc * fsc);
        let mut td_p = (self.par * ld_p).min(lc.max_discharge_peak_a * fd * fsd);
        let mut tc_p = (self.par * lc_p).min(lc.max_charge_peak_a * fc * fsc);
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
        self.out.dcl_a = self.dcl.update(td_c, rate, dt);
        self.out.ccl_a = self.ccl.update(tc_c, rate, dt);
        self.out.dcl_peak_a = self.dcl_peak.update(td_p, rate, dt);
        self.out.ccl_peak_a = self.ccl_peak.update(tc_p, rate, dt);

        // ---- balancing ----
        let bc = &self.cfg.balancing;
        let allowed = action < Action::RampDown && i_valid && i.abs() <= bc.max_current_a;
        let x: &[f64] = match bc.mode {
            BalanceMode::Soc => &self.out.soc,
            _ => v_cell_v,
        };
        let t_used = &self.t_used;
        let t_valid = &self.t_valid;
        let sensor_of = &self.sensor_of;
        let temp_of = |k: usize| {
            let s = sensor_of[k] as usize;
            if t_valid[s] {
                t_used[s]
            } else {
                f64::INFINITY
            }
        };
        let active = bc.mode != BalanceMode::Off && allowed;
        let due = !(t_s - self.bal_decided_t < bc.decision_period_s - crate::protection::TIME_EPS_S);
        if !active || due {
            balancing::decide(bc, x, v_cell_v, temp_of, &self.v_valid, allowed, &mut self.out.balance, &mut self.bal_scratch);
            self.bal_on.clear();
            if active {
                self.bal_decided_t = t_s;
                let on = &self.out.balance;
                self.bal_on.extend((0..self.n as u32).filter(|&k| on[k as usize]));
            } else {
                self.bal_decided_t = f64::NAN;
            }
        } else {
            // between decisions: hold, but a cell that may no longer bleed (voltage invalid
            // or below min_cell_v, temperature at the inhibit limit) stops in this step
            let (on, valid) = (&mut self.out.balance, &self.v_valid);
            self.bal_on.retain(|&k| {
                let k = k as usize;
                let keep = valid[k] && v_cell_v[k] >= bc.min_cell_v && temp_of(k) < bc.inhibit_temp_c;
                on[k] = keep;
                keep
            });
        }
        if bc.active_plan && allowed {
            let cap: Vec<f64> = self.cap_ah.iter().map(|c| c * self.par).collect();
            let thr = if bc.mode == BalanceMode::Soc { bc.threshold } else { 0.02 };
            let max_pairs = if bc.max_cells > 0 { bc.max_cells / 2 } else { self.n / 2 };
            balancing::transfer_plan(&self.out.soc, &cap, thr, max_pairs.max(1), &mut self.out.transfers);
        } else {
            self.out.transfers.clear();
        }
        Ok(())
    }

    /// First step: SOC from the OCV of the first voltages (rest assumption).
    ///
    /// The SOC read off the OCV curve is uncertain by σ_y / (dOCV/dz), σ_y the voltage
    /// uncertainty the filter itself uses (sensor noise and model error, e.g. a cell not
    /// fully relaxed). On a flat plateau (LFP: dOCV/dz ≈ 0.05..0.15 V per unit SOC mid-range,
    /// hw/cells/a123_anr26650_lfp.toml) that is far wider than `initial_soc_sigma`; starting
    /// with the narrow σ would make the filter overconfident in a poor start value. So the
    /// start σ is the larger of the two, capped at 0.3 (about a uniform SOC on 0..1).
    fn initialize(&mut self, v: &[f64], sens: &SensorConfig) {
        let est = &self.cfg.estimator;
        let sig = est.initial_soc_sigma;
        let sig_y = (est.voltage_noise_v.powi(2) + est.model_error_v.powi(2)).sqrt();
        for k in 0..self.n {
            let ss = &self.ss[self.sensor_of[k] as usize];
            let ok = v[k] >= sens.cell_v_min_v && v[k] <= sens.cell_v_max_v && v[k] > sens.open_wire_v;
            let (z, p00) = if ok {
                let z = self.tab.soc_from_ocv(v[k], ss.dtemp);
                let s = initial_sigma(sig, sig_y, self.tab.slope(self.tab.locate(z)));
                (z, s * s)
            } else {
                (0.5, 0.25)
            };
            self.z[k] = z;
            self.out.soc_cc[k] = z;
            self.v1[k] = 0.0;
            self.v2[k] = 0.0;
            self.h[k] = 0.0;
            // v1 at rest is ~0; 1 mV uncertainty
            self.cov[k] = Cov2 { p00, p01: 0.0, p11: 1e-6 };
        }
        self.initialized = true;
    }

    /// Rest point: OCV correction of SOC, and a capacity observation since the last one.
    fn rest_point(&mut self) {
        let est = &self.cfg.estimator;
        let cap_nom = self.cell.capacity_ah;
        let var_y = {
            let s_i = est.current_noise_a / self.par;
            let s_off = est.current_offset_a / self.par;
            let v = s_i * s_i * self.dt2_since_rest / (3600.0 * 3600.0)
                + (s_off * self.time_since_rest_s / 3600.0).powi(2);
            (v / (cap_nom * cap_nom)).max(1e-10)
        };
        let y = self.q_since_rest_ah / cap_nom;
        for k in 0..self.n {
            if !self.v_valid[k] {
                continue;
            }
            let ss = &self.ss[self.sensor_of[k] as usize];
            // at rest v = OCV + h − v1 − v2: add back what is left of the RC polarisation
            // (after a 600 s rest the LG M50's τ2 ≈ 310 s pair still holds e^(−600/310) ≈ 14 %
            // of its load voltage, ~13 mV after 1C, ~1.5 % SOC on the OCV slope)
            let v_ocv = self.v_prev[k] - self.h[k] + self.v1[k] + self.v2[k];
            let z_ocv = self.tab.soc_from_ocv(v_ocv, ss.dtemp);
            let slope = self.tab.slope(self.tab.locate(z_ocv)).max(1e-3);
            let var = (est.rest_ocv_sigma_v / slope).powi(2);
            soc_ekf::update_soc(&mut self.z[k], &mut self.v1[k], &mut self.cov[k], z_ocv, var);
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

    // -----------------------------------------------------------------------------------------
    // State export / import: a small versioned little-endian binary format.
    // -----------------------------------------------------------------------------------------

    const MAGIC: &'static [u8; 8] = b"MBMSENG1";

    pub fn export_state(&self) -> Vec<u8> {
        let mut w = Vec::with_capacity(16 + self.n * 16 * 8);
        w.extend_from_slice(Self::MAGIC);
        w.extend_from_slice(&(self.n as u64).to_le_bytes());
        w.extend_from_slice(&(self.n_t as u64).to_le_bytes());
        w.push(self.initialized as u8);
        let put = |w: &mut Vec<u8>, x: f64| w.extend_from_slice(&x.to_le_bytes());
        for k in 0..self.n {
            for x in [
                self.z[k],
                self.v1[k],
                self.v2[k],
                self.h[k],
                self.cov[k].p00,
                self.cov[k].p01,
                self.cov[k].p11,
                self.out.soc_cc[k],
                self.cap_ah[k],
                self.r0_ratio[k],
                self.z_rest[k],
                self.z_rest_var[k],
            ] {
                put(&mut w, x);
            }
            for c in self.awtls[k].c {
                put(&mut w, c);
            }
        }
        for x in [
            self.q_since_rest_ah,
            self.dt2_since_rest,
            self.time_since_rest_s,
            self.dcl.value,
            self.ccl.value,
            self.dcl_peak.value,
            self.ccl_peak.value,
        ] {
            put(&mut w, x);
        }
        // latched faults survive a restart (safety: a latched fault needs an explicit reset)
        let latched: Vec<(u8, u32)> = self
            .banks
            .iter()
            .flat_map(|b| b.latched().map(move |k| (b.rule as u8, k as u32)))
            .collect();
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
            if k >= self.banks[rule as usize].states.len() {
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
                self.z[k] = row[0];
                self.v1[k] = row[1];
                self.v2[k] = row[2];
                self.h[k] = row[3];
                self.cov[k] = Cov2 { p00: row[4], p01: row[5], p11: row[6] };
                self.out.soc_cc[k] = row[7];
                self.cap_ah[k] = row[8];
                self.inv_qc[k] = 1.0 / (3600.0 * row[8]);
                self.r0_ratio[k] = row[9];
                self.z_rest[k] = row[10];
                self.z_rest_var[k] = row[11];
                self.awtls[k].c.copy_from_slice(&row[12..18]);
            }
            self.cap_sum = self.cap_ah.iter().sum();
            self.q_since_rest_ah = pack[0];
            self.dt2_since_rest = pack[1];
            self.time_since_rest_s = pack[2];
            self.initialized = initialized;
        }
        for k in 0..self.n {
            self.v_prev[k] = f64::NAN;
            self.v_valid[k] = false;
            self.v_stuck[k] = 0;
        }
        self.dcl.value = limits[0];
        self.ccl.value = limits[1];
        self.dcl_peak.value = limits[2];
        self.ccl_peak.value = limits[3];
        for (rule, k) in latched {
            self.banks[rule as usize].restore_latched(k);
        }
        // re-anchor time: the next step starts a new time base (no integration over the gap)
        self.t_last = None;
        self.i_prev_valid = false;
        self.rest_since = f64::NAN;
        self.rest_done = false;
        self.bal_decided_t = f64::NAN; // new time base: decide balancing afresh
        self.t_stuck.iter_mut().for_each(|c| *c = 0);
        self.t_prev.iter_mut().for_each(|c| *c = f64::NAN);
        self.collect_faults();
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

/// Start-up SOC σ from the OCV slope (see [`Engine::initialize`]).
#[inline]
fn initial_sigma(sig_cfg: f64, sig_y: f64, slope: f64) -> f64 {
    let from_ocv = if slope > 0.0 { sig_y / slope } else { f64::INFINITY };
    sig_cfg.max(from_ocv).min(0.3)
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

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
