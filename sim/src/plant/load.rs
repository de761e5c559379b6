//! The load/charger on the bus: a current or a power over time (discharge positive).

use serde::{Deserialize, Serialize};

use super::config::{cfg_err, finite, positive, PlantConfigError};

/// What a profile value means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Quantity {
    /// Current drawn from the bus (A).
    #[default]
    CurrentA,
    /// Power drawn from the bus (W); the current is P / V_bus.
    PowerW,
}

/// A built-in load profile.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LoadConfig {
    Constant {
        #[serde(default)]
        quantity: Quantity,
        value: f64,
    },
    /// Piecewise constant: `value[i]` from `t_s[i]` on (0 before `t_s[0]`).
    Steps {
        #[serde(default)]
        quantity: Quantity,
        t_s: Vec<f64>,
        value: Vec<f64>,
        #[serde(default)]
        repeat: bool,
    },
    /// Linear interpolation between points (a CSV file becomes this).
    Table {
        #[serde(default)]
        quantity: Quantity,
        t_s: Vec<f64>,
        value: Vec<f64>,
        #[serde(default)]
        repeat: bool,
    },
    /// A CSV file with columns `t_s,value` (header optional); the caller reads it and
    /// replaces this by a `table` (see [`LoadConfig::resolve_csv`]).
    Csv {
        #[serde(default)]
        quantity: Quantity,
        path: String,
        #[serde(default)]
        repeat: bool,
    },
    /// A drive-like profile repeating every `period_s`: idle, accelerations to `peak`,
    /// cruising with ripple, regenerative braking to −`regen_fraction`·`peak`.
    Drive {
        #[serde(default)]
        quantity: Quantity,
        peak: f64,
        #[serde(default = "d_period")]
        period_s: f64,
        #[serde(default = "d_regen")]
        regen_fraction: f64,
    },
}

fn d_period() -> f64 {
    600.0
}
fn d_regen() -> f64 {
    0.35
}

impl Default for LoadConfig {
    fn default() -> Self {
        LoadConfig::Constant { quantity: Quantity::CurrentA, value: 0.0 }
    }
}

/// Normalised drive shape (fraction of the period, fraction of the peak), linearly
/// interpolated: a synthetic urban/suburban cycle written for mbms (no standard drive cycle
/// is available offline): launch, cruise, braking, a harder acceleration, a motorway section.
const DRIVE_SHAPE: [(f64, f64); 22] = [
    (0.00, 0.00),
    (0.03, 0.00),
    (0.05, 0.80),
    (0.08, 0.30),
    (0.15, 0.25),
    (0.17, -1.00), // regen (scaled by regen_fraction)
    (0.20, 0.00),
    (0.24, 0.00),
    (0.26, 1.00),
    (0.30, 0.45),
    (0.40, 0.40),
    (0.42, -1.00),
    (0.45, 0.00),
    (0.50, 0.00),
    (0.53, 0.90),
    (0.58, 0.55),
    (0.75, 0.50),
    (0.78, 0.95),
    (0.85, 0.50),
    (0.90, -1.00),
    (0.95, 0.00),
    (1.00, 0.00),
];

impl LoadConfig {
    pub fn quantity(&self) -> Quantity {
        match self {
            LoadConfig::Constant { quantity, .. }
            | LoadConfig::Steps { quantity, .. }
            | LoadConfig::Table { quantity, .. }
            | LoadConfig::Csv { quantity, .. }
            | LoadConfig::Drive { quantity, .. } => *quantity,
        }
    }

    /// The profile value at `t_s` (A or W, discharge positive).
    pub fn value_at(&self, t_s: f64) -> f64 {
        match self {
            LoadConfig::Constant { value, .. } => *value,
            LoadConfig::Steps { t_s: ts, value, repeat, .. } => {
                let t = wrap(t_s, ts, *repeat);
                let k = ts.partition_point(|&x| x <= t);
                if k == 0 {
                    0.0
                } else {
                    value[k - 1]
                }
            }
            LoadConfig::Table { t_s: ts, value, repeat, .. } => {
                mbms_core::cell_model::interp_sorted(ts, value, wrap(t_s, ts, *repeat))
            }
            LoadConfig::Csv { .. } => 0.0, // rejected by `Plant::new` until resolved
            LoadConfig::Drive { peak, period_s, regen_fraction, .. } => {
                let x = (t_s / period_s).rem_euclid(1.0);
                let k = DRIVE_SHAPE.partition_point(|p| p.0 <= x).clamp(1, DRIVE_SHAPE.len() - 1);
                let (x0, y0) = DRIVE_SHAPE[k - 1];
                let (x1, y1) = DRIVE_SHAPE[k];
                let mut y = y0 + (y1 - y0) * (x - x0) / (x1 - x0);
                if y < 0.0 {
                    y *= regen_fraction;
                } else if y > 0.2 {
                    // traffic ripple while driving: ±5 % at a 7 s period
                    y *= 1.0 + 0.05 * (2.0 * std::f64::consts::PI * t_s / 7.0).sin();
                }
                peak * y
            }
        }
    }

    /// Replace a `csv` profile by a `table`, reading the file with `read` (the caller's I/O).
    pub fn resolve_csv(
        &mut self,
        read: impl Fn(&str) -> Result<String, String>,
    ) -> Result<(), PlantConfigError> {
        if let LoadConfig::Csv { quantity, path, repeat } = self {
            let text = read(path).map_err(|m| cfg_err("load.path", m))?;
            let (t_s, value) = parse_csv(&text).map_err(|m| cfg_err("load.path", format!("{path}: {m}")))?;
            *self = LoadConfig::Table { quantity: *quantity, t_s, value, repeat: *repeat };
        }
        Ok(())
    }

    pub fn validate(&self, field: &str) -> Result<(), PlantConfigError> {
        let f = |x: &str| format!("{field}.{x}");
        match self {
            LoadConfig::Constant { value, .. } => finite(&f("value"), *value),
            LoadConfig::Steps { t_s, value, .. } | LoadConfig::Table { t_s, value, .. } => {
                if t_s.is_empty() || t_s.len() != value.len() {
                    return Err(cfg_err(f("t_s"), format!("expected as many times as values (>= 1), got {} and {}", t_s.len(), value.len())));
                }
                if t_s.iter().any(|t| !t.is_finite()) || t_s.windows(2).any(|w| !(w[1] > w[0])) {
                    return Err(cfg_err(f("t_s"), "expected finite, strictly increasing times"));
                }
                if value.iter().any(|v| !v.is_finite()) {
                    return Err(cfg_err(f("value"), "expected finite values"));
                }
                Ok(())
            }
            LoadConfig::Csv { .. } => Ok(()),
            LoadConfig::Drive { peak, period_s, regen_fraction, .. } => {
                finite(&f("peak"), *peak)?;
                positive(&f("period_s"), *period_s)?;
                if !(0.0..=1.0).contains(regen_fraction) {
                    return Err(cfg_err(f("regen_fraction"), format!("expected 0..1, got {regen_fraction}")));
                }
                Ok(())
            }
        }
    }
}

fn wrap(t: f64, ts: &[f64], repeat: bool) -> f64 {
    let end = ts[ts.len() - 1];
    if repeat && end > 0.0 {
        t.rem_euclid(end)
    } else {
        t
    }
}

/// Parse `t_s,value` lines; a first line that is not numeric is a header; `#` comments.
pub fn parse_csv(text: &str) -> Result<(Vec<f64>, Vec<f64>), String> {
    let (mut t, mut v) = (Vec::new(), Vec::new());
    let mut header_seen = false;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let cols: Vec<&str> = line.split(',').map(str::trim).collect();
        let parsed = (cols.len() >= 2)
            .then(|| Some((cols[0].parse::<f64>().ok()?, cols[1].parse::<f64>().ok()?)))
            .flatten();
        match parsed {
            Some((a, b)) => {
                t.push(a);
                v.push(b);
            }
            None if t.is_empty() && !header_seen => header_seen = true,
            None => return Err(format!("line {}: expected two numbers `t_s,value`, got {line:?}", n + 1)),
        }
    }
    if t.is_empty() {
        return Err("no data rows".into());
    }
    Ok((t, v))
}
