//! Equivalent-circuit cell model: OCV(SOC, T) + R0(SOC, T) + up to two RC pairs,
//! entropic temperature dependence of the OCV and an optional one-state hysteresis.
//!
//! Sign convention used throughout mbms: **current is positive when discharging**
//! (out of the cell/pack), as in the brief's current-sharing formula (§4).
//!
//! Model (Plett, "Battery Management Systems Vol. I", 2015, ch. 2, the "enhanced
//! self-correcting" cell model without the instantaneous hysteresis term):
//!
//! ```text
//! v = OCV(z, T) + h - R0(z, T)·i - v1 - v2
//! z[k+1]  = z[k] - η·i·Δt / (3600·Q)
//! vj[k+1] = vj[k]·exp(-Δt/τj) + Rj·(1 - exp(-Δt/τj))·i        (exact for constant i over Δt)
//! h[k+1]  = exp(-|γ·i·Δt/(3600·Q)|)·h[k] - (1 - exp(-|γ·i·Δt/(3600·Q)|))·M·sgn(i)
//! ```
//!
//! Parameter sets are TOML files in `hw/cells/` (see `hw/cells/README.md`). Tables are
//! resampled at load onto a uniform SOC grid so that a lookup is O(1): the engine
//! evaluates them for thousands of cells per step.

use serde::Deserialize;

/// Number of points of the uniform SOC grid tables are resampled onto.
pub const SOC_GRID_POINTS: usize = 201;

/// 0 K in °C (the kelvin's definition, SI Brochure, 9th ed., 2019): the coldest temperature a
/// cell setting can name.
pub const ABSOLUTE_ZERO_C: f64 = -273.15;

/// A table on a uniform SOC grid 0..=1, linearly interpolated, clamped at the ends.
#[derive(Debug, Clone, PartialEq)]
pub struct SocTable {
    y: Vec<f64>,
    /// slope dy/dSOC of each interval
    dy: Vec<f64>,
}

impl SocTable {
    /// Resample the piecewise-linear table (soc[i], y[i]) onto the uniform grid.
    /// `soc` must be strictly increasing; values outside its range are clamped.
    pub fn from_points(soc: &[f64], y: &[f64]) -> Result<Self, String> {
        if soc.len() != y.len() {
            return Err(format!("soc has {} points but values have {}", soc.len(), y.len()));
        }
        if soc.len() < 2 {
            return Err("a table needs at least 2 points".into());
        }
        if soc.windows(2).any(|w| !(w[1] > w[0])) {
            return Err("soc breakpoints must be strictly increasing".into());
        }
        if soc.iter().chain(y.iter()).any(|v| !v.is_finite()) {
            return Err("table values must be finite".into());
        }
        let n = SOC_GRID_POINTS;
        let mut out = Vec::with_capacity(n);
        for k in 0..n {
            let z = k as f64 / (n - 1) as f64;
            out.push(interp_sorted(soc, y, z));
        }
        Ok(Self::from_uniform(out))
    }

    pub fn constant(v: f64) -> Self {
        Self::from_uniform(vec![v; SOC_GRID_POINTS])
    }

    fn from_uniform(y: Vec<f64>) -> Self {
        let step = 1.0 / (y.len() - 1) as f64;
        let dy = y.windows(2).map(|w| (w[1] - w[0]) / step).collect();
        Self { y, dy }
    }

    /// Value at `soc` (clamped to 0..=1).
    #[inline(always)]
    pub fn eval(&self, soc: f64) -> f64 {
        let (k, frac) = self.locate(soc);
        self.y[k] + frac * (self.y[k + 1] - self.y[k])
    }

    /// Slope dy/dSOC at `soc` (of the interval it falls in).
    #[inline(always)]
    pub fn slope(&self, soc: f64) -> f64 {
        let (k, _) = self.locate(soc);
        self.dy[k]
    }

    #[inline(always)]
    fn locate(&self, soc: f64) -> (usize, f64) {
        let last = self.y.len() - 1;
        let x = soc.clamp(0.0, 1.0) * last as f64;
        // `as usize` saturates; NaN maps to 0 (then clamped below)
        let k = (x as usize).min(last - 1);
        (k, x - k as f64)
    }

    pub fn values(&self) -> &[f64] {
        &self.y
    }
}

/// Linear interpolation on sorted breakpoints, clamped at the ends.
pub fn interp_sorted(x: &[f64], y: &[f64], at: f64) -> f64 {
    if at <= x[0] {
        return y[0];
    }
    if at >= x[x.len() - 1] {
        return y[y.len() - 1];
    }
    let k = x.partition_point(|&v| v <= at) - 1;
    let t = (at - x[k]) / (x[k + 1] - x[k]);
    y[k] + t * (y[k + 1] - y[k])
}

/// A quantity over (temperature, SOC): one uniform SOC table per temperature breakpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct TempSocTable {
    temp_c: Vec<f64>,
    rows: Vec<SocTable>,
}

impl TempSocTable {
    pub fn new(temp_c: &[f64], soc: &[f64], rows: &[Vec<f64>]) -> Result<Self, String> {
        if temp_c.is_empty() || temp_c.len() != rows.len() {
            return Err(format!(
                "{} temperature breakpoints but {} rows",
                temp_c.len(),
                rows.len()
            ));
        }
        if temp_c.windows(2).any(|w| !(w[1] > w[0])) {
            return Err("temp_c breakpoints must be strictly increasing".into());
        }
        let rows = rows
            .iter()
            .map(|r| SocTable::from_points(soc, r))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { temp_c: temp_c.to_vec(), rows })
    }

    #[inline(always)]
    pub fn eval(&self, soc: f64, temp_c: f64) -> f64 {
        let n = self.temp_c.len();
        if n == 1 || temp_c <= self.temp_c[0] {
            return self.rows[0].eval(soc);
        }
        if temp_c >= self.temp_c[n - 1] {
            return self.rows[n - 1].eval(soc);
        }
        let mut k = 0;
        while self.temp_c[k + 1] < temp_c {
            k += 1;
        }
        let t = (temp_c - self.temp_c[k]) / (self.temp_c[k + 1] - self.temp_c[k]);
        let a = self.rows[k].eval(soc);
        a + t * (self.rows[k + 1].eval(soc) - a)
    }

    /// Temperature breakpoints (°C).
    pub fn temps(&self) -> &[f64] {
        &self.temp_c
    }

    /// One uniform SOC table per temperature breakpoint.
    pub fn rows(&self) -> &[SocTable] {
        &self.rows
    }

    pub fn max(&self) -> f64 {
        self.rows.iter().flat_map(|r| r.values().iter().copied()).fold(f64::MIN, f64::max)
    }
}

// ---------------------------------------------------------------------------------------------
// Parameter file (TOML) schema. Field names carry units.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CellFile {
    pub name: String,
    pub chemistry: String,
    /// Where the numbers come from (paper, datasheet, identification script).
    pub source: String,
    pub capacity_ah: f64,
    pub v_min_v: f64,
    pub v_max_v: f64,
    /// Temperature at which `ocv.v` is given.
    pub t_ref_c: f64,
    /// Coulombic efficiency on charge (discharge is taken as 1).
    #[serde(default = "one")]
    pub coulombic_efficiency: f64,
    pub ocv: OcvSection,
    pub resistance: ResistanceSection,
    #[serde(default)]
    pub hysteresis: Option<HysteresisSection>,
    pub thermal: ThermalSection,
    /// The datasheet's operating temperature windows for charge and discharge; absent: the
    /// protection's temperature thresholds are not checked against the cell (a warning).
    #[serde(default)]
    pub temperature: Option<TemperatureWindow>,
    /// How far the estimator may trust this cell's model, and the full-charge synchronisation
    /// point of its chemistry; absent: no model-error terms beyond the pack file's, no sync.
    #[serde(default)]
    pub estimator: CellEstimator,
}

/// The `[estimator]` table of a cell file: properties of the cell model and its chemistry that
/// the SOC filter needs, so that every pack built from the cell gets them (the pack file's
/// `[estimator]` holds what belongs to the pack: its sensors, rest detection, SOH gains).
///
/// Measurement variance of the SOC filter (see `rust_core/src/soc_ekf.rs`):
/// `r = σ_v² + σ_pack² + model_error_v² + (model_error_v_per_c·C_load)² · max(1, model_error_corr_s/Δt)`,
/// C_load the recent load's C-rate (see `model_error_relax_s`).
/// The equivalent-circuit model's error under current is not white: it is a slowly varying
/// bias (relaxation, diffusion, unmodelled hysteresis) that lasts about `model_error_corr_s`. A
/// filter that treats it as white noise sampled every Δt counts the same error many times and
/// grows confident where the OCV is flat (LFP plateau). Treating it as white noise of the same
/// power over its correlation time (variance × τ/Δt: Bar-Shalom, Li, Kirubarajan, "Estimation
/// with applications to tracking and navigation", 2001, §8.4, band-limited noise) keeps the
/// information the voltage gives per unit time right.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CellEstimator {
    /// model voltage error at low current (V, 1σ)
    pub model_error_v: f64,
    /// growth of the model voltage error with the C-rate (V per C)
    pub model_error_v_per_c: f64,
    /// correlation time of the model voltage error (s)
    pub model_error_corr_s: f64,
    /// How long the load's model error outlasts the load over a rest (s): in the rest band
    /// the C-rate in the model error is `max(|C|, decayed previous)` decaying as e^(−t/τ) (a
    /// cell that just stopped a 1C discharge still carries the diffusion overpotential the RC
    /// pairs miss, which relaxes like the slowest pole). 0: the present C-rate only. Under
    /// discharge it is the present C-rate, while charging the charge's peak
    /// (`soc_ekf::load_c_rate`).
    pub model_error_relax_s: f64,
    /// Full charge: charging, cell voltage within `full_charge_dv_v` of `v_max_v` and the
    /// current tapered below `full_charge_taper_c` (C-rate): the constant-voltage phase of a
    /// charger is over and the cell is full (SOC = 1 with σ `full_charge_soc_sigma`).
    /// `full_charge_taper_c` = 0: no full-charge synchronisation. `full_charge_soc`: the SOC
    /// at that point (a constant-voltage phase cut at C/20 leaves the electrodes' diffusion
    /// short of equilibrium: 0.98..0.99 for the DFN cells here, measured by
    /// scripts/make_trace_family.py on the tuning traces).
    pub full_charge_soc: f64,
    pub full_charge_dv_v: f64,
    pub full_charge_taper_c: f64,
    pub full_charge_soc_sigma: f64,
    /// Smallest current step (C-rate of one cell, between two samples ≤ 1 s apart) that gives
    /// an R0 observation (−ΔV/ΔI, see `soh::r0_observation`). A C-rate, not amperes, so it
    /// scales with the cell and the pack's parallel count: the standard resistance tests
    /// define their current steps as multiples of the rated current I_t = C_n/1 h (IEC 62660-1,
    /// pulse power and internal resistance of EV cells; IEC 61960-3, DC internal resistance
    /// from a step of 0.2 I_t to 1 I_t), R = ΔV/ΔI. Energy-storage duty has only small steps (0.3..0.4 C on
    /// the family's ESS traces), so an absolute threshold sized for a drive cycle never fires
    /// there and the resistance ratio of an aged storage cell stays at 1 (issue 16). The
    /// smaller the step, the noisier one observation (σ_R ≈ √2·σ_v / ΔI), which `r0_gain`
    /// averages. 0: no R0 learning.
    pub r0_step_min_c: f64,
    /// How a current step's resistance depends on the step (`soh::r0_step_factor`): within
    /// one sample a cell's response is ohmic plus charge transfer, and charge transfer is not
    /// linear in the current (Butler–Volmer), so a step from rest to 0.3 C reads more
    /// resistance than a 1 C step between two drive currents (on the fresh tuning traces
    /// 1.6..1.7 against 0.95..0.99 × the R0 table). Each R0 observation is divided by the
    /// factor its own step predicts, so the learnt ratio is that of the 1 s, 1 C pulse from
    /// rest whatever the duty. `r0_step_ct_fraction`: the charge-transfer share φ of that
    /// pulse resistance (0: linear, no correction); `r0_step_i0_c`: the exchange current
    /// (C-rate) at `t_ref_c`; `r0_step_i0_ea_kj_per_mol`: its Arrhenius activation energy;
    /// `r0_step_pulse_ratio`: that pulse resistance over the R0 table (1: the table is it).
    /// Fitted on the fresh tuning traces by scripts/fit_step_resistance.py.
    pub r0_step_ct_fraction: f64,
    pub r0_step_i0_c: f64,
    pub r0_step_i0_ea_kj_per_mol: f64,
    pub r0_step_pulse_ratio: f64,
    /// Coldest model temperature (°C) at which a current step counts toward the SOH
    /// resistance ratio the engine reports (`soh_resistance`). Below it the step-resistance
    /// model above is not fitted (scripts/fit_step_resistance.py fits at and above it), and
    /// its error is not ageing: on the 0 °C tuning traces a fresh cell's steps read 1.08 (NMC)
    /// and 1.20 (LFP) × what the model predicts, against 0.99..1.03 at 10..40 °C. So the SOH
    /// ratio learns only from steps at or above it, and holds what warmer operation learnt
    /// through a cold spell (a pack does not age 20 % in a winter night); the SOC filter's
    /// own ratio keeps learning at every temperature, which its voltage model needs (tuning
    /// split: the 0 °C traces' SOC unchanged). Default −273.15: every step counts.
    pub r0_soh_min_temp_c: f64,
    /// Share of the learnt resistance growth (the ratio above 1) that the RC (diffusion)
    /// resistances take as well: R1, R2 × (1 + share·(max(ratio, 1) − 1)). 1: all of it (a
    /// growth that raises every polarisation alike), 0: R0 only (a contact or electrolyte
    /// resistance, ohmic). Which one an aged cell shows depends on the chemistry and the
    /// ageing; chosen per cell file on the aged tuning traces. Default 1.
    pub r0_ratio_rc_share: f64,
    /// End-of-discharge synchronisation, the knee near empty that LFP systems rely on besides
    /// full charge (issue 16): discharging at no more than `empty_current_c` (C-rate, above
    /// the rest band), a cell whose voltage with the model's polarisation added back
    /// (v − h + R0·i + v1 + v2) has fallen to `empty_ocv_v` is on the OCV knee, where the
    /// slope makes the voltage a precise SOC reading again: the SOC is taken from the OCV
    /// there (SOC = `empty_soc`, σ `empty_soc_sigma`, an anchor like a rest point), and with
    /// the previous anchor (a full charge) it gives a capacity observation over nearly the
    /// whole range. `empty_soc` is the SOC at that point, which sits above the OCV table's
    /// inversion of `empty_ocv_v` by what the equivalent circuit misses of the knee's
    /// polarisation (measured on the tuning trace lfp_t4_ess_full, as `full_charge_soc` is
    /// for the CV end). The model of compensated
    /// end-of-discharge-voltage fuel gauges, whose full-charge capacity is learnt on a
    /// discharge from full down to the EDV2 threshold (TI, "BQ4050 Technical Reference
    /// Manual", SLUUAQ3A, 2016–2022, CEDV gauging: EDV0/1/2, FCC update at EDV2). Set
    /// `empty_ocv_v` on the knee, below the plateau, where the OCV slope is steep (A123
    /// ANR26650: 3.0 V, SOC ≈ 0.11 on the table, 2.6 V per unit SOC); `empty_ocv_v` = 0: off.
    pub empty_ocv_v: f64,
    pub empty_current_c: f64,
    pub empty_soc: f64,
    pub empty_soc_sigma: f64,
    /// The least SOC σ the engine reports (the SOC filter's own P_zz is left as it is): on a
    /// flat OCV every rest or knee sample is another reading of the same OCV table, whose
    /// errors (hysteresis, the relaxation the equivalent circuit misses, the table's fit) are
    /// biases, not noise, yet the filter counts each as independent, so its P_zz falls below
    /// what the table can tell: on the LFP tuning traces 0.04 % at full with 0.07 % error,
    /// 0.1 % on the knee with 1.5..2 % error. Like the capacity consider term, a bound on the
    /// reported uncertainty only: raising the filter's own P_zz made it follow the plateau's
    /// voltage and lost accuracy (tuning split, lfp_t1 0.21 -> 0.42 % RMSE at 0.01). Chosen
    /// per cell file on the tuning split: the least value (in 0.25 % steps) that keeps every
    /// tuning trace of the chemistry inside the consistency bounds. Default 0 (no floor).
    pub soc_sigma_floor: f64,
    /// Relative error (1σ) of the RC polarisation the equivalent circuit predicts, as a
    /// consider parameter of the reported SOC σ (Schmidt's consider analysis: Tapley, Schutz,
    /// Born, "Statistical orbit determination", 2004, §6.3; the filter's gain is left as it
    /// is). The engine tracks per cell how its SOC and RC1 estimates would move if the RC
    /// polarisation (R1 and R2, so v1 and v2) were (1 + δ) times the model's
    /// (`engine::cells`, the sensitivity S = ∂x̂/∂δ: S_v ← a1·S_v + R1(1 − a1)·i in the
    /// prediction, S ← (I − KH)·S + K·v2 in each voltage update, S ← (I − KH)·S in an anchor)
    /// and reports σ² = P_zz + (capacity term) + (this · S_z)². Where the filter took a
    /// relaxation the circuit got wrong as SOC (the first minutes of a rest after a load near
    /// the LFP knee: 2..3 % on the held-out traces with σ at the floor), σ then says so;
    /// where it did not (the plateau, where K_z ≈ 0), σ is unchanged. Identified on the
    /// fresh tuning traces by scripts/fit_polarisation_error.py: in the first 10 min of every
    /// rest after a load, rms(DFN voltage − circuit voltage) / rms(the circuit's polarisation).
    /// Default 0 (off).
    pub rc_polarisation_rel_error: f64,
    /// Relative error (1σ) of the RC time constants (τ1 and τ2 scaled together), a second
    /// consider parameter of the reported SOC σ beside `rc_polarisation_rel_error`: where the
    /// cell relaxes slower (or faster) than the circuit, the error the filter takes as SOC
    /// lasts as long as the slower relaxation, which an amplitude error does not describe.
    /// The engine tracks S_ε = ∂x̂/∂ε as it tracks S_δ (with ∂a/∂ε = a·Δt/τ in the
    /// prediction, and ∂v2/∂ε of the open-loop second pair in each update). Identified with
    /// `rc_polarisation_rel_error` by scripts/fit_polarisation_error.py. Default 0 (off).
    pub rc_time_constant_rel_error: f64,
}

/// Absent from a cell file: the model-error terms and full-charge synchronisation are off (0),
/// R0 is learnt on steps of 0.2 C (see `r0_step_min_c`).
impl Default for CellEstimator {
    fn default() -> Self {
        CellEstimator {
            model_error_v: 0.0,
            model_error_v_per_c: 0.0,
            model_error_corr_s: 0.0,
            model_error_relax_s: 0.0,
            full_charge_soc: 0.0,
            full_charge_dv_v: 0.0,
            full_charge_taper_c: 0.0,
            full_charge_soc_sigma: 0.0,
            r0_step_min_c: 0.2,
            r0_step_ct_fraction: 0.0,
            r0_step_i0_c: 0.0,
            r0_step_i0_ea_kj_per_mol: 0.0,
            r0_step_pulse_ratio: 1.0,
            r0_soh_min_temp_c: ABSOLUTE_ZERO_C,
            r0_ratio_rc_share: 1.0,
            empty_ocv_v: 0.0,
            empty_current_c: 0.0,
            empty_soc: 0.0,
            empty_soc_sigma: 0.0,
            soc_sigma_floor: 0.0,
            rc_polarisation_rel_error: 0.0,
            rc_time_constant_rel_error: 0.0,
        }
    }
}

impl CellEstimator {
    fn validate(&self) -> Result<(), CellParamError> {
        for (name, v) in [
            ("model_error_v", self.model_error_v),
            ("model_error_v_per_c", self.model_error_v_per_c),
            ("model_error_corr_s", self.model_error_corr_s),
            ("model_error_relax_s", self.model_error_relax_s),
            ("full_charge_soc", self.full_charge_soc),
            ("full_charge_dv_v", self.full_charge_dv_v),
            ("full_charge_taper_c", self.full_charge_taper_c),
            ("full_charge_soc_sigma", self.full_charge_soc_sigma),
            ("r0_step_min_c", self.r0_step_min_c),
            ("r0_step_ct_fraction", self.r0_step_ct_fraction),
            ("r0_step_i0_c", self.r0_step_i0_c),
            ("r0_step_i0_ea_kj_per_mol", self.r0_step_i0_ea_kj_per_mol),
            ("r0_ratio_rc_share", self.r0_ratio_rc_share),
            ("empty_ocv_v", self.empty_ocv_v),
            ("empty_current_c", self.empty_current_c),
            ("empty_soc", self.empty_soc),
            ("empty_soc_sigma", self.empty_soc_sigma),
            ("soc_sigma_floor", self.soc_sigma_floor),
            ("rc_polarisation_rel_error", self.rc_polarisation_rel_error),
            ("rc_time_constant_rel_error", self.rc_time_constant_rel_error),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(err(&format!("estimator.{name}"), format!("expected a finite number >= 0, got {v}")));
            }
        }
        // Upper bounds (issue 11): a model error of volts or a correlation time of years is not
        // a model, and would make the SOC filter ignore every measurement silently.
        for (name, v, max, unit) in [
            ("model_error_v", self.model_error_v, 0.5, "V"),
            ("model_error_v_per_c", self.model_error_v_per_c, 1.0, "V per C"),
            ("model_error_corr_s", self.model_error_corr_s, 86_400.0, "s"),
            ("full_charge_dv_v", self.full_charge_dv_v, 0.5, "V"),
            ("full_charge_taper_c", self.full_charge_taper_c, 1.0, "C"),
            ("full_charge_soc_sigma", self.full_charge_soc_sigma, 0.5, ""),
            ("r0_step_min_c", self.r0_step_min_c, 10.0, "C"),
            ("r0_step_ct_fraction", self.r0_step_ct_fraction, 1.0, ""),
            ("r0_ratio_rc_share", self.r0_ratio_rc_share, 1.0, ""),
            ("r0_step_i0_c", self.r0_step_i0_c, 100.0, "C"),
            // exchange-current activation energies of Li-ion electrodes are tens of kJ/mol
            ("r0_step_i0_ea_kj_per_mol", self.r0_step_i0_ea_kj_per_mol, 200.0, "kJ/mol"),
            ("empty_current_c", self.empty_current_c, 1.0, "C"),
            ("empty_soc", self.empty_soc, 0.5, ""),
            ("empty_soc_sigma", self.empty_soc_sigma, 0.5, ""),
            // a floor of a tenth of the range would say the engine cannot tell SOC at all
            ("soc_sigma_floor", self.soc_sigma_floor, 0.1, ""),
            // an error ten times the polarisation itself is no model of it
            ("rc_polarisation_rel_error", self.rc_polarisation_rel_error, 10.0, ""),
            ("rc_time_constant_rel_error", self.rc_time_constant_rel_error, 10.0, ""),
        ] {
            if v > max {
                return Err(err(&format!("estimator.{name}"), format!("expected at most {max} {unit}, got {v}")));
            }
        }
        // a temperature a cell can have: from absolute zero up to where every Li-ion cell has
        // long vented (no datasheet rates a cell above 100 °C)
        if !(self.r0_soh_min_temp_c >= ABSOLUTE_ZERO_C && self.r0_soh_min_temp_c <= 100.0) {
            return Err(err(
                "estimator.r0_soh_min_temp_c",
                format!("expected a temperature in {ABSOLUTE_ZERO_C}..=100 °C (the default {ABSOLUTE_ZERO_C}: steps count at every temperature), got {}", self.r0_soh_min_temp_c),
            ));
        }
        let (lo, hi) = crate::soh::R0_RATIO_RANGE;
        if !(self.r0_step_pulse_ratio > lo && self.r0_step_pulse_ratio < hi) {
            return Err(err(
                "estimator.r0_step_pulse_ratio",
                format!("expected a ratio in ({lo}, {hi}) (1: the R0 table is the 1 C pulse resistance), got {}", self.r0_step_pulse_ratio),
            ));
        }
        if self.r0_step_ct_fraction > 0.0 && !(self.r0_step_i0_c > 0.0) {
            return Err(err("estimator.r0_step_i0_c", "with r0_step_ct_fraction set: an exchange current > 0 (C-rate)"));
        }
        if self.full_charge_taper_c > 0.0 && !(self.full_charge_soc_sigma > 0.0 && self.full_charge_dv_v > 0.0 && self.full_charge_soc > 0.5 && self.full_charge_soc <= 1.0) {
            return Err(err("estimator.full_charge_soc", "with full_charge_taper_c set: full_charge_soc in (0.5, 1], full_charge_soc_sigma and full_charge_dv_v > 0"));
        }
        Ok(())
    }
}

fn one() -> f64 {
    1.0
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OcvSection {
    pub soc: Vec<f64>,
    pub v: Vec<f64>,
    /// Entropic coefficient dOCV/dT at each `soc` breakpoint (V/K); zero if absent.
    #[serde(default)]
    pub docv_dt_v_per_k: Option<Vec<f64>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResistanceSection {
    pub temp_c: Vec<f64>,
    pub soc: Vec<f64>,
    /// rows: one per `temp_c`, columns: one per `soc`
    pub r0_ohm: Vec<Vec<f64>>,
    pub r1_ohm: Vec<Vec<f64>>,
    /// one per `temp_c`
    pub tau1_s: Vec<f64>,
    #[serde(default)]
    pub r2_ohm: Option<Vec<Vec<f64>>>,
    #[serde(default)]
    pub tau2_s: Option<Vec<f64>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HysteresisSection {
    /// Maximum hysteresis voltage M (V).
    pub m_v: f64,
    /// Rate constant γ (dimensionless, per unit of SOC throughput).
    pub gamma: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThermalSection {
    pub mass_kg: f64,
    pub cp_j_per_kg_k: f64,
}

/// The `[temperature]` table of a cell file: the cell temperatures (°C) between which the
/// datasheet allows charging and discharging. Written by hand from the datasheet (cited in the
/// file); `mbms node --check` keeps the protection's temperature faults inside these windows
/// (rust_core/src/config.rs `protection_findings`).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemperatureWindow {
    pub charge_min_c: f64,
    pub charge_max_c: f64,
    pub discharge_min_c: f64,
    pub discharge_max_c: f64,
}

impl TemperatureWindow {
    fn validate(&self) -> Result<(), CellParamError> {
        // -80..150 °C: beyond any lithium-ion cell's datasheet; a value outside is a typo or
        // kelvin where °C is meant
        for (name, v) in [
            ("charge_min_c", self.charge_min_c),
            ("charge_max_c", self.charge_max_c),
            ("discharge_min_c", self.discharge_min_c),
            ("discharge_max_c", self.discharge_max_c),
        ] {
            if !(v.is_finite() && (-80.0..=150.0).contains(&v)) {
                return Err(err(&format!("temperature.{name}"), format!("expected a cell temperature -80..=150 °C, got {v}")));
            }
        }
        if !(self.charge_min_c < self.charge_max_c) {
            return Err(err("temperature.charge_min_c", format!("expected charge_min_c < charge_max_c, got {} >= {}", self.charge_min_c, self.charge_max_c)));
        }
        if !(self.discharge_min_c < self.discharge_max_c) {
            return Err(err("temperature.discharge_min_c", format!("expected discharge_min_c < discharge_max_c, got {} >= {}", self.discharge_min_c, self.discharge_max_c)));
        }
        Ok(())
    }
}

/// Cell parameters ready for fast evaluation.
#[derive(Debug, Clone)]
pub struct CellParams {
    pub name: String,
    pub chemistry: String,
    pub source: String,
    pub capacity_ah: f64,
    pub v_min_v: f64,
    pub v_max_v: f64,
    pub t_ref_c: f64,
    pub coulombic_efficiency: f64,
    pub ocv: SocTable,
    pub docv_dt: SocTable,
    pub r0: TempSocTable,
    pub r1: TempSocTable,
    pub r2: Option<TempSocTable>,
    temp_c: Vec<f64>,
    tau1_s: Vec<f64>,
    tau2_s: Option<Vec<f64>>,
    pub hysteresis_m_v: f64,
    pub hysteresis_gamma: f64,
    pub mass_kg: f64,
    pub cp_j_per_kg_k: f64,
    pub estimator: CellEstimator,
    /// Operating temperature windows from the datasheet (`[temperature]`), if the file has them.
    pub temperature: Option<TemperatureWindow>,
}

/// A parameter-file error: the dotted field and what was expected.
#[derive(Debug, Clone, PartialEq)]
pub struct CellParamError {
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for CellParamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for CellParamError {}

fn err(field: &str, message: impl Into<String>) -> CellParamError {
    CellParamError { field: field.to_string(), message: message.into() }
}

impl CellParams {
    /// Parse and validate a TOML parameter set (the text of a `hw/cells/*.toml` file).
    pub fn from_toml_str(text: &str) -> Result<Self, CellParamError> {
        let file: CellFile = toml::from_str(text).map_err(|e| err("<toml>", e.to_string()))?;
        Self::from_file(file)
    }

    pub fn from_file(f: CellFile) -> Result<Self, CellParamError> {
        let positive = |field: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(err(field, format!("expected a positive number, got {v}")))
            }
        };
        positive("capacity_ah", f.capacity_ah)?;
        positive("thermal.mass_kg", f.thermal.mass_kg)?;
        positive("thermal.cp_j_per_kg_k", f.thermal.cp_j_per_kg_k)?;
        if !(f.v_min_v < f.v_max_v) {
            return Err(err("v_min_v", format!("expected v_min_v < v_max_v, got {} >= {}", f.v_min_v, f.v_max_v)));
        }
        if !(f.coulombic_efficiency > 0.0 && f.coulombic_efficiency <= 1.0) {
            return Err(err("coulombic_efficiency", "expected a value in (0, 1]"));
        }
        let ocv = SocTable::from_points(&f.ocv.soc, &f.ocv.v).map_err(|m| err("ocv", m))?;
        if ocv.values().windows(2).any(|w| w[1] < w[0]) {
            return Err(err("ocv.v", "OCV must not decrease with SOC"));
        }
        let docv_dt = match &f.ocv.docv_dt_v_per_k {
            Some(d) => SocTable::from_points(&f.ocv.soc, d).map_err(|m| err("ocv.docv_dt_v_per_k", m))?,
            None => SocTable::constant(0.0),
        };
        let r = &f.resistance;
        let table = |field: &str, rows: &[Vec<f64>]| -> Result<TempSocTable, CellParamError> {
            if rows.iter().flatten().any(|v| !(v.is_finite() && *v >= 0.0)) {
                return Err(err(field, "resistances must be finite and >= 0"));
            }
            TempSocTable::new(&r.temp_c, &r.soc, rows).map_err(|m| err(field, m))
        };
        let r0 = table("resistance.r0_ohm", &r.r0_ohm)?;
        if r0.rows.iter().flat_map(|t| t.values()).any(|v| *v <= 0.0) {
            return Err(err("resistance.r0_ohm", "expected R0 > 0 everywhere"));
        }
        let r1 = table("resistance.r1_ohm", &r.r1_ohm)?;
        let check_tau = |field: &str, tau: &[f64]| {
            if tau.len() != r.temp_c.len() {
                return Err(err(field, format!("expected {} values (one per temp_c)", r.temp_c.len())));
            }
            if tau.iter().any(|t| !(t.is_finite() && *t > 0.0)) {
                return Err(err(field, "time constants must be > 0"));
            }
            Ok(())
        };
        check_tau("resistance.tau1_s", &r.tau1_s)?;
        let (r2, tau2) = match (&r.r2_ohm, &r.tau2_s) {
            (Some(rows), Some(tau)) => {
                check_tau("resistance.tau2_s", tau)?;
                (Some(table("resistance.r2_ohm", rows)?), Some(tau.clone()))
            }
            (None, None) => (None, None),
            _ => return Err(err("resistance.r2_ohm", "r2_ohm and tau2_s must be given together")),
        };
        let (hm, hg) = match &f.hysteresis {
            Some(h) => {
                if !(h.m_v >= 0.0 && h.gamma >= 0.0) {
                    return Err(err("hysteresis", "m_v and gamma must be >= 0"));
                }
                (h.m_v, h.gamma)
            }
            None => (0.0, 0.0),
        };
        f.estimator.validate()?;
        let e = &f.estimator;
        if e.empty_ocv_v > 0.0 && !(e.empty_ocv_v > f.v_min_v && e.empty_ocv_v < f.v_max_v && e.empty_current_c > 0.0 && e.empty_soc > 0.0 && e.empty_soc < 0.5 && e.empty_soc_sigma > 0.0) {
            return Err(err(
                "estimator.empty_ocv_v",
                format!(
                    "with empty_ocv_v set: a voltage between v_min_v and v_max_v ({}..{} V), empty_current_c > 0, empty_soc in (0, 0.5) and empty_soc_sigma > 0; got {} V, {} C, {}, {}",
                    f.v_min_v, f.v_max_v, e.empty_ocv_v, e.empty_current_c, e.empty_soc, e.empty_soc_sigma
                ),
            ));
        }
        if let Some(t) = &f.temperature {
            t.validate()?;
        }
        Ok(Self {
            name: f.name,
            chemistry: f.chemistry,
            source: f.source,
            capacity_ah: f.capacity_ah,
            v_min_v: f.v_min_v,
            v_max_v: f.v_max_v,
            t_ref_c: f.t_ref_c,
            coulombic_efficiency: f.coulombic_efficiency,
            ocv,
            docv_dt,
            r0,
            r1,
            r2,
            temp_c: r.temp_c.clone(),
            tau1_s: r.tau1_s.clone(),
            tau2_s: tau2,
            hysteresis_m_v: hm,
            hysteresis_gamma: hg,
            mass_kg: f.thermal.mass_kg,
            cp_j_per_kg_k: f.thermal.cp_j_per_kg_k,
            estimator: f.estimator,
            temperature: f.temperature,
        })
    }

    /// Open-circuit voltage (V) at `soc` and temperature `temp_c`, without hysteresis.
    #[inline(always)]
    pub fn ocv(&self, soc: f64, temp_c: f64) -> f64 {
        self.ocv.eval(soc) + self.docv_dt.eval(soc) * (temp_c - self.t_ref_c)
    }

    /// dOCV/dSOC (V per unit SOC).
    #[inline(always)]
    pub fn docv_dsoc(&self, soc: f64) -> f64 {
        self.ocv.slope(soc)
    }

    /// Inverse OCV at the reference temperature: the SOC whose OCV is `v` (bisection on the
    /// monotone table); clamped to 0..=1. Used for SOC-from-OCV at rest.
    pub fn soc_from_ocv(&self, v: f64, temp_c: f64) -> f64 {
        let (mut lo, mut hi) = (0.0f64, 1.0f64);
        for _ in 0..40 {
            let mid = 0.5 * (lo + hi);
            if self.ocv(mid, temp_c) < v {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        0.5 * (lo + hi)
    }

    #[inline(always)]
    pub fn r0(&self, soc: f64, temp_c: f64) -> f64 {
        self.r0.eval(soc, temp_c)
    }

    #[inline(always)]
    pub fn r1(&self, soc: f64, temp_c: f64) -> f64 {
        self.r1.eval(soc, temp_c)
    }

    #[inline(always)]
    pub fn r2(&self, soc: f64, temp_c: f64) -> f64 {
        self.r2.as_ref().map_or(0.0, |t| t.eval(soc, temp_c))
    }

    #[inline(always)]
    pub fn tau1(&self, temp_c: f64) -> f64 {
        interp_sorted(&self.temp_c, &self.tau1_s, temp_c)
    }

    #[inline(always)]
    pub fn tau2(&self, temp_c: f64) -> f64 {
        self.tau2_s.as_ref().map_or(1.0, |t| interp_sorted(&self.temp_c, t, temp_c))
    }

    /// Temperature breakpoints of the RC time constants and the constants themselves.
    pub fn tau_tables(&self) -> (&[f64], &[f64], Option<&[f64]>) {
        (&self.temp_c, &self.tau1_s, self.tau2_s.as_deref())
    }

    pub fn has_rc2(&self) -> bool {
        self.r2.is_some()
    }

    /// The longest RC time constant of the cell file, over its temperatures (s).
    pub fn slowest_tau_s(&self) -> f64 {
        self.tau1_s.iter().chain(self.tau2_s.iter().flatten()).fold(0.0, |m, &t| m.max(t))
    }

    /// Capacity in coulombs.
    #[inline(always)]
    pub fn capacity_c(&self) -> f64 {
        self.capacity_ah * 3600.0
    }
}

/// The dynamic state of one cell.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CellState {
    pub soc: f64,
    /// Voltage over the first RC pair (V).
    pub v1: f64,
    /// Voltage over the second RC pair (V).
    pub v2: f64,
    /// Hysteresis voltage (V).
    pub h: f64,
}

impl CellState {
    pub fn at_rest(soc: f64) -> Self {
        Self { soc, ..Default::default() }
    }
}

/// Per-cell deviations from the nominal parameters (plant cell-to-cell variation, ageing).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CellScale {
    /// Capacity multiplier (SOH of capacity).
    pub capacity: f64,
    /// Multiplier on R0 (and on the RC resistances).
    pub resistance: f64,
}

impl Default for CellScale {
    fn default() -> Self {
        Self { capacity: 1.0, resistance: 1.0 }
    }
}

impl CellParams {
    /// Terminal voltage of a cell in `state` carrying `i_a` (discharge positive).
    #[inline(always)]
    pub fn terminal_voltage(&self, s: &CellState, scale: &CellScale, i_a: f64, temp_c: f64) -> f64 {
        self.ocv(s.soc, temp_c) + s.h - scale.resistance * self.r0(s.soc, temp_c) * i_a - s.v1 - s.v2
    }

    /// Advance `state` by `dt_s` with constant current `i_a` (discharge positive).
    /// Exact zero-order-hold discretisation of the RC pairs.
    #[inline(always)]
    pub fn step(&self, s: &mut CellState, scale: &CellScale, i_a: f64, temp_c: f64, dt_s: f64) {
        let c = self.step_coeffs(s.soc, temp_c, dt_s, scale);
        self.advance(s, &c, i_a);
    }

    /// The coefficients of [`CellParams::step`] at (`soc`, `temp_c`, `dt_s`, `scale`).
    /// Split out so that a simulator of many cells (the plant) can keep them while SOC and
    /// temperature move little, and call [`CellParams::advance`] every step.
    #[inline(always)]
    pub fn step_coeffs(&self, soc: f64, temp_c: f64, dt_s: f64, scale: &CellScale) -> StepCoeffs {
        let a1 = (-dt_s / self.tau1(temp_c)).exp();
        let b1 = scale.resistance * self.r1(soc, temp_c) * (1.0 - a1);
        let (a2, b2) = match &self.r2 {
            Some(r2) => {
                let a2 = (-dt_s / self.tau2(temp_c)).exp();
                (a2, scale.resistance * r2.eval(soc, temp_c) * (1.0 - a2))
            }
            None => (1.0, 0.0),
        };
        StepCoeffs { a1, b1, a2, b2, dz_per_a: dt_s / (self.capacity_c() * scale.capacity) }
    }

    /// One step with precomputed coefficients: v_j <- a_j·v_j + b_j·i, SOC by coulomb counting.
    #[inline(always)]
    pub fn advance(&self, s: &mut CellState, c: &StepCoeffs, i_a: f64) {
        let eta = if i_a < 0.0 { self.coulombic_efficiency } else { 1.0 };
        let dz = eta * i_a * c.dz_per_a;
        s.v1 = c.a1 * s.v1 + c.b1 * i_a;
        s.v2 = c.a2 * s.v2 + c.b2 * i_a;
        if self.hysteresis_m_v > 0.0 {
            let ah = (-(self.hysteresis_gamma * dz).abs()).exp();
            s.h = ah * s.h - (1.0 - ah) * self.hysteresis_m_v * i_a.signum();
        }
        s.soc -= dz;
    }
}

/// Coefficients of one ZOH step of the RC pairs (see [`CellParams::step_coeffs`]).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StepCoeffs {
    /// exp(-dt/τ1)
    pub a1: f64,
    /// R1·(1 - a1) (scaled)
    pub b1: f64,
    /// exp(-dt/τ2) (1 without a second RC pair)
    pub a2: f64,
    /// R2·(1 - a2) (scaled; 0 without a second RC pair)
    pub b2: f64,
    /// SOC change per ampere over the step: dt / (3600·Q·capacity scale)
    pub dz_per_a: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const TEST_CELL: &str = r#"
name = "test cell"
chemistry = "NMC"
source = "unit test"
capacity_ah = 5.0
v_min_v = 2.5
v_max_v = 4.2
t_ref_c = 25.0
[ocv]
soc = [0.0, 0.5, 1.0]
v = [3.0, 3.7, 4.2]
[resistance]
temp_c = [0.0, 25.0]
soc = [0.0, 1.0]
r0_ohm = [[0.04, 0.04], [0.02, 0.02]]
r1_ohm = [[0.02, 0.02], [0.01, 0.01]]
tau1_s = [20.0, 10.0]
[thermal]
mass_kg = 0.07
cp_j_per_kg_k = 1100.0
"#;

    #[test]
    fn parses_and_interpolates() {
        let p = CellParams::from_toml_str(TEST_CELL).unwrap();
        assert!((p.ocv(0.25, 25.0) - 3.35).abs() < 1e-12);
        assert!((p.r0(0.5, 12.5) - 0.03).abs() < 1e-12);
        assert!((p.docv_dsoc(0.75) - 1.0).abs() < 1e-9);
        assert!((p.soc_from_ocv(3.35, 25.0) - 0.25).abs() < 1e-9);
    }

    #[test]
    fn rc_step_is_exact() {
        let p = CellParams::from_toml_str(TEST_CELL).unwrap();
        let mut s = CellState::at_rest(0.5);
        let sc = CellScale::default();
        for _ in 0..1000 {
            p.step(&mut s, &sc, 5.0, 25.0, 0.1);
        }
        // 100 s of 5 A = 500 C of 18000 C
        assert!((s.soc - (0.5 - 500.0 / 18000.0)).abs() < 1e-12);
        let v1_expected = 0.01 * 5.0 * (1.0 - (-100.0f64 / 10.0).exp());
        assert!((s.v1 - v1_expected).abs() < 1e-9);
    }

    #[test]
    fn rejects_bad_files_naming_the_field() {
        let bad = TEST_CELL.replace("capacity_ah = 5.0", "capacity_ah = -1.0");
        let e = CellParams::from_toml_str(&bad).unwrap_err();
        assert_eq!(e.field, "capacity_ah");
        let bad = TEST_CELL.replace("tau1_s = [20.0, 10.0]", "tau1_s = [20.0]");
        assert_eq!(CellParams::from_toml_str(&bad).unwrap_err().field, "resistance.tau1_s");
        let bad = TEST_CELL.replace("v = [3.0, 3.7, 4.2]", "v = [3.0, 3.9, 3.8]");
        assert_eq!(CellParams::from_toml_str(&bad).unwrap_err().field, "ocv.v");
        let bad = TEST_CELL.replace("name = \"test cell\"", "name = \"x\"\nbogus = 1");
        assert!(CellParams::from_toml_str(&bad).unwrap_err().message.contains("bogus"));
        // the step-resistance keys: a charge-transfer share needs an exchange current, the
        // share is at most 1, the pulse ratio is a resistance ratio
        for (table, field) in [
            ("r0_step_ct_fraction = 0.8", "estimator.r0_step_i0_c"),
            ("r0_step_ct_fraction = 1.5\nr0_step_i0_c = 0.3", "estimator.r0_step_ct_fraction"),
            ("r0_step_pulse_ratio = 0", "estimator.r0_step_pulse_ratio"),
            ("r0_step_i0_ea_kj_per_mol = 900", "estimator.r0_step_i0_ea_kj_per_mol"),
            ("r0_ratio_rc_share = 1.5", "estimator.r0_ratio_rc_share"),
            ("r0_soh_min_temp_c = -300", "estimator.r0_soh_min_temp_c"),
            ("r0_soh_min_temp_c = nan", "estimator.r0_soh_min_temp_c"),
            ("soc_sigma_floor = 0.2", "estimator.soc_sigma_floor"),
            ("soc_sigma_floor = -0.01", "estimator.soc_sigma_floor"),
            ("rc_polarisation_rel_error = 20", "estimator.rc_polarisation_rel_error"),
            ("rc_polarisation_rel_error = -1", "estimator.rc_polarisation_rel_error"),
        ] {
            let bad = format!("{TEST_CELL}\n[estimator]\n{table}\n");
            assert_eq!(CellParams::from_toml_str(&bad).unwrap_err().field, field, "{table}");
        }
        let good = format!("{TEST_CELL}\n[estimator]\nr0_step_ct_fraction = 0.8\nr0_step_i0_c = 0.3\n");
        assert_eq!(CellParams::from_toml_str(&good).unwrap().estimator.r0_step_pulse_ratio, 1.0);
    }
}
