//! The plant description (`PlantConfig`): strings, DC bus, load, thermal model, faults.
//!
//! Parsed from TOML or JSON with `serde_path_to_error`, so that a wrong type or an unknown
//! key is reported with its dotted path (`strings[2].sensors.current.noise`); ranges are
//! checked by [`PlantConfig::validate`], which names the field the same way.

use serde::{Deserialize, Serialize};

use super::fault::PlantFault;
use super::load::LoadConfig;

/// A description error: the dotted field and what was expected.
#[derive(Debug, Clone, PartialEq)]
pub struct PlantConfigError {
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for PlantConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for PlantConfigError {}

pub(crate) fn cfg_err(field: impl Into<String>, message: impl Into<String>) -> PlantConfigError {
    PlantConfigError { field: field.into(), message: message.into() }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct PlantConfig {
    /// The parallel strings, in bus order.
    pub strings: Vec<StringConfig>,
    #[serde(default)]
    pub bus: BusConfig,
    /// The built-in load/charger profile (discharge positive); the simulation may override it.
    #[serde(default)]
    pub load: LoadConfig,
    #[serde(default)]
    pub thermal: ThermalConfig,
    /// Faults applied when the plant time reaches `at_s`.
    #[serde(default)]
    pub faults: Vec<ScheduledFault>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct StringConfig {
    /// Series elements (each `parallel` cells in parallel).
    pub series: usize,
    pub parallel: usize,
    /// Cell parameter set: a name in `hw/cells/` or a path (resolved by the caller).
    pub cell: String,
    /// Mean initial SOC of the string's cells (0..1).
    pub initial_soc: f64,
    /// Extra series resistance of the string outside the cells: contactors, fuse, busbars,
    /// cabling (Ω); unstated, the engine's pack default (`mbms_core::engine::R_EXTRA_OHM_DEFAULT`),
    /// so a simulated BMS that is not told otherwise models its string as it is.
    #[serde(default = "d_r_extra")]
    pub r_extra_ohm: f64,
    /// Initial cell temperature; the coolant temperature if absent.
    #[serde(default)]
    pub initial_temp_c: Option<f64>,
    #[serde(default)]
    pub variation: VariationConfig,
    #[serde(default)]
    pub contactors: ContactorConfig,
    #[serde(default)]
    pub balancing: BalancingConfig,
    #[serde(default)]
    pub sensors: SensorConfig,
    /// A DC/DC converter between the string and the bus (active sharing).
    #[serde(default)]
    pub dcdc: Option<DcdcConfig>,
}

fn d_r_extra() -> f64 {
    mbms_core::engine::R_EXTRA_OHM_DEFAULT
}

/// Seeded cell-to-cell variation (normal distributions, relative sigmas) and whole-string
/// multipliers (a weaker, aged string).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct VariationConfig {
    /// Relative sigma of the capacity of each series element.
    pub capacity_sigma: f64,
    /// Relative sigma of the resistances (R0 and RC) of each series element.
    pub resistance_sigma: f64,
    /// Absolute sigma of the initial SOC of each series element.
    pub soc_sigma: f64,
    /// Mean self-discharge current per cell (A).
    pub self_discharge_a: f64,
    /// Sigma of the self-discharge current per cell (A); clipped at 0.
    pub self_discharge_sigma_a: f64,
    /// Multiplier on the capacity of every cell of the string (SOH).
    pub capacity_scale: f64,
    /// Multiplier on the resistance of every cell of the string.
    pub resistance_scale: f64,
}

impl Default for VariationConfig {
    fn default() -> Self {
        Self {
            capacity_sigma: 0.0,
            resistance_sigma: 0.0,
            soc_sigma: 0.0,
            self_discharge_a: 0.0,
            self_discharge_sigma_a: 0.0,
            capacity_scale: 1.0,
            resistance_scale: 1.0,
        }
    }
}

/// Main negative, main positive and precharge relay of a string.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct ContactorConfig {
    /// Time from command to closed contact (typ. 20-50 ms for HV contactors, e.g. TE EV200).
    pub close_time_s: f64,
    /// Time from command to open contact.
    pub open_time_s: f64,
    /// Precharge resistor in series with the precharge relay (Ω).
    pub r_precharge_ohm: f64,
}

impl Default for ContactorConfig {
    fn default() -> Self {
        Self { close_time_s: 0.03, open_time_s: 0.015, r_precharge_ohm: 20.0 }
    }
}

/// Passive balancing: a switch per series element puts a bleed resistor across it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct BalancingConfig {
    pub r_bleed_ohm: f64,
}

impl Default for BalancingConfig {
    fn default() -> Self {
        // ~120 mA at 4 V: a typical passive-balancing bleed (e.g. 33 Ω on LTC681x boards).
        Self { r_bleed_ohm: 33.0 }
    }
}

/// What a string's BMU measures and how badly.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct SensorConfig {
    /// Number of temperature sensors; one per series element if absent. Sensor i sits on
    /// series element floor((i + 0.5)·series / n).
    pub temp_sensors: Option<usize>,
    /// Cell voltages (V).
    pub cell_voltage: SensorSpec,
    /// Cell temperatures (°C).
    pub cell_temp: SensorSpec,
    /// String current (A, discharge positive).
    pub current: SensorSpec,
    /// String voltage, inside the contactors (V).
    pub string_voltage: SensorSpec,
    /// Bus voltage, outside the contactors (V).
    pub bus_voltage: SensorSpec,
}

/// Error model of one kind of sensor, in the unit of its quantity:
/// `reading = quantise(true·(1 + gain_error) + offset + offset_i + noise·N(0,1), lsb)`,
/// where `offset_i ~ N(0, offset_sigma)` is drawn once per channel (seeded). A new sample is
/// taken when `period_s` has passed since the last one (0: at every `measure`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct SensorSpec {
    pub noise: f64,
    pub offset: f64,
    pub offset_sigma: f64,
    pub gain_error: f64,
    pub lsb: f64,
    pub period_s: f64,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct DcdcConfig {
    /// Largest string-side current magnitude (A).
    pub max_a: f64,
    /// Conversion efficiency (0, 1].
    #[serde(default = "d_eff")]
    pub efficiency: f64,
}

fn d_eff() -> f64 {
    0.97
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct BusConfig {
    /// DC-link capacitance of the bus (inverter input), F.
    pub capacitance_f: f64,
    /// Discharge (bleed) resistor across the bus; none if absent.
    pub r_bleed_ohm: Option<f64>,
    pub v_initial_v: f64,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self { capacitance_f: 2e-3, r_bleed_ohm: None, v_initial_v: 0.0 }
    }
}

/// Lumped thermal model, per cell (a series element of P cells is P times everything).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct ThermalConfig {
    pub coolant_c: f64,
    pub ambient_c: f64,
    /// Conductance cell to coolant (W/K); lost on a cooling failure.
    pub g_cool_w_per_k: f64,
    /// Conductance cell to ambient (W/K); stays on a cooling failure.
    pub g_ambient_w_per_k: f64,
    /// Conductance between neighbouring series elements (W/K per cell).
    pub g_neighbour_w_per_k: f64,
}

impl Default for ThermalConfig {
    fn default() -> Self {
        Self {
            coolant_c: 25.0,
            ambient_c: 25.0,
            g_cool_w_per_k: 0.3,
            g_ambient_w_per_k: 0.02,
            g_neighbour_w_per_k: 0.5,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ScheduledFault {
    pub at_s: f64,
    pub fault: PlantFault,
}

impl PlantConfig {
    /// Parse a TOML description (no file access: the caller reads the text).
    pub fn from_toml_str(text: &str) -> Result<Self, PlantConfigError> {
        let de = toml::Deserializer::new(text);
        let cfg: Self = serde_path_to_error::deserialize(de).map_err(|e| path_err(&e))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parse a JSON description (what the Python layer sends).
    pub fn from_json_str(text: &str) -> Result<Self, PlantConfigError> {
        let mut de = serde_json::Deserializer::from_str(text);
        let cfg: Self = serde_path_to_error::deserialize(&mut de).map_err(|e| path_err(&e))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("PlantConfig serialises")
    }

    /// The cell names of the strings, in order (resolve them to `CellParams` for `Plant::new`).
    pub fn cell_names(&self) -> Vec<String> {
        self.strings.iter().map(|s| s.cell.clone()).collect()
    }

    /// Parse the cell parameter set of every string, reading each with `read(cell name)` (the
    /// caller's I/O, e.g. a lookup in `hw/cells/`); errors name `strings[k].cell`.
    pub fn load_cells(
        &self,
        read: impl Fn(&str) -> Result<String, String>,
    ) -> Result<Vec<mbms_core::cell_model::CellParams>, PlantConfigError> {
        self.strings
            .iter()
            .enumerate()
            .map(|(k, s)| {
                let field = format!("strings[{k}].cell");
                let text = read(&s.cell).map_err(|m| cfg_err(&field, m))?;
                mbms_core::cell_model::CellParams::from_toml_str(&text)
                    .map_err(|e| cfg_err(&field, format!("{}: {e}", s.cell)))
            })
            .collect()
    }

    /// Range checks, naming the dotted field.
    pub fn validate(&self) -> Result<(), PlantConfigError> {
        if self.strings.is_empty() {
            return Err(cfg_err("strings", "expected at least one string"));
        }
        for (k, s) in self.strings.iter().enumerate() {
            let f = |name: &str| format!("strings[{k}].{name}");
            if s.series == 0 {
                return Err(cfg_err(f("series"), "expected at least 1 series element"));
            }
            if s.parallel == 0 {
                return Err(cfg_err(f("parallel"), "expected at least 1 cell in parallel"));
            }
            if !(0.0..=1.0).contains(&s.initial_soc) {
                return Err(cfg_err(f("initial_soc"), format!("expected 0..1, got {}", s.initial_soc)));
            }
            non_negative(&f("r_extra_ohm"), s.r_extra_ohm)?;
            if let Some(t) = s.initial_temp_c {
                finite(&f("initial_temp_c"), t)?;
            }
            let v = &s.variation;
            for (name, x) in [
                ("capacity_sigma", v.capacity_sigma),
                ("resistance_sigma", v.resistance_sigma),
                ("soc_sigma", v.soc_sigma),
                ("self_discharge_a", v.self_discharge_a),
                ("self_discharge_sigma_a", v.self_discharge_sigma_a),
            ] {
                non_negative(&f(&format!("variation.{name}")), x)?;
            }
            if v.capacity_sigma >= 0.3 || v.resistance_sigma >= 0.3 {
                return Err(cfg_err(f("variation"), "relative sigmas must be < 0.3 (scales are clipped to ±3σ)"));
            }
            positive(&f("variation.capacity_scale"), v.capacity_scale)?;
            positive(&f("variation.resistance_scale"), v.resistance_scale)?;
            let c = &s.contactors;
            non_negative(&f("contactors.close_time_s"), c.close_time_s)?;
            non_negative(&f("contactors.open_time_s"), c.open_time_s)?;
            positive(&f("contactors.r_precharge_ohm"), c.r_precharge_ohm)?;
            positive(&f("balancing.r_bleed_ohm"), s.balancing.r_bleed_ohm)?;
            if let Some(n) = s.sensors.temp_sensors {
                if n == 0 || n > s.series {
                    return Err(cfg_err(f("sensors.temp_sensors"), format!("expected 1..={} (series), got {n}", s.series)));
                }
            }
            for (name, spec) in [
                ("cell_voltage", &s.sensors.cell_voltage),
                ("cell_temp", &s.sensors.cell_temp),
                ("current", &s.sensors.current),
                ("string_voltage", &s.sensors.string_voltage),
                ("bus_voltage", &s.sensors.bus_voltage),
            ] {
                let g = |x: &str| f(&format!("sensors.{name}.{x}"));
                non_negative(&g("noise"), spec.noise)?;
                finite(&g("offset"), spec.offset)?;
                non_negative(&g("offset_sigma"), spec.offset_sigma)?;
                if !(spec.gain_error.is_finite() && spec.gain_error.abs() < 0.5) {
                    return Err(cfg_err(g("gain_error"), format!("expected |gain_error| < 0.5, got {}", spec.gain_error)));
                }
                non_negative(&g("lsb"), spec.lsb)?;
                non_negative(&g("period_s"), spec.period_s)?;
            }
            if let Some(d) = &s.dcdc {
                positive(&f("dcdc.max_a"), d.max_a)?;
                if !(d.efficiency > 0.0 && d.efficiency <= 1.0) {
                    return Err(cfg_err(f("dcdc.efficiency"), format!("expected (0, 1], got {}", d.efficiency)));
                }
            }
        }
        positive("bus.capacitance_f", self.bus.capacitance_f)?;
        if let Some(r) = self.bus.r_bleed_ohm {
            positive("bus.r_bleed_ohm", r)?;
        }
        non_negative("bus.v_initial_v", self.bus.v_initial_v)?;
        self.load.validate("load")?;
        let t = &self.thermal;
        finite("thermal.coolant_c", t.coolant_c)?;
        finite("thermal.ambient_c", t.ambient_c)?;
        non_negative("thermal.g_cool_w_per_k", t.g_cool_w_per_k)?;
        non_negative("thermal.g_ambient_w_per_k", t.g_ambient_w_per_k)?;
        non_negative("thermal.g_neighbour_w_per_k", t.g_neighbour_w_per_k)?;
        for (i, sf) in self.faults.iter().enumerate() {
            non_negative(&format!("faults[{i}].at_s"), sf.at_s)?;
            sf.fault
                .validate(&self.strings)
                .map_err(|(field, m)| cfg_err(format!("faults[{i}].fault.{field}"), m))?;
        }
        Ok(())
    }
}

fn path_err<E: std::fmt::Display>(e: &serde_path_to_error::Error<E>) -> PlantConfigError {
    let path = e.path().to_string();
    let field = if path == "." || path.is_empty() { "<root>".to_string() } else { path };
    cfg_err(field, e.inner().to_string())
}

pub(crate) fn finite(field: &str, v: f64) -> Result<(), PlantConfigError> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(cfg_err(field, format!("expected a finite number, got {v}")))
    }
}

pub(crate) fn positive(field: &str, v: f64) -> Result<(), PlantConfigError> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(cfg_err(field, format!("expected a positive number, got {v}")))
    }
}

pub(crate) fn non_negative(field: &str, v: f64) -> Result<(), PlantConfigError> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(cfg_err(field, format!("expected a number >= 0, got {v}")))
    }
}
