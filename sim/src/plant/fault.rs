//! Faults that can be injected into the plant (scheduled in the description, or at run time
//! with `Plant::inject`). Each names the string (index into `strings`) it acts on.

use serde::{Deserialize, Serialize};

use super::config::StringConfig;

/// A sensor group of a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum SensorId {
    /// channel = series element
    CellVoltage,
    /// channel = temperature sensor
    CellTemp,
    Current,
    StringVoltage,
    BusVoltage,
}

/// One of the three switching devices of a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum ContactorId {
    Neg,
    Pos,
    Pre,
}

impl ContactorId {
    pub fn index(self) -> usize {
        match self {
            ContactorId::Neg => 0,
            ContactorId::Pos => 1,
            ContactorId::Pre => 2,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum PlantFault {
    /// The channel keeps returning the reading it had when the fault struck.
    SensorStuck {
        string: usize,
        sensor: SensorId,
        #[serde(default)]
        channel: usize,
    },
    /// The channel reads `offset` (unit of the quantity) too high.
    SensorOffset {
        string: usize,
        sensor: SensorId,
        #[serde(default)]
        channel: usize,
        offset: f64,
    },
    /// An open sense wire. Cell voltage: the lower sense wire of element `channel` is broken;
    /// that channel reads 0 V and the one below it (channel − 1, if any) reads the sum of both
    /// elements, as a multiplexed AFE with filter capacitors settles (cf. ADI LTC6811
    /// datasheet, "open wire check"). Temperature: an open NTC reads the bottom of the range
    /// (−40 °C). Current and voltages: 0.
    SensorOpenWire {
        string: usize,
        sensor: SensorId,
        #[serde(default)]
        channel: usize,
    },
    /// The string's measurement board is lost: `Measurement.valid` = false, values NaN.
    SensorsLost { string: usize },
    /// An internal short in series element `element`: every cell of it is discharged through
    /// `r_short_ohm` (extra self-discharge, heat released inside the cell).
    InternalShort { string: usize, element: usize, r_short_ohm: f64 },
    /// The capacity of series element `element` is multiplied by `factor` (0, 1].
    CapacityFade { string: usize, element: usize, factor: f64 },
    /// The contact welds: once closed it never opens again.
    ContactorWelded { string: usize, contactor: ContactorId },
    /// The contactor never closes (coil or driver open).
    ContactorFailsToClose { string: usize, contactor: ContactorId },
    /// The auxiliary feedback contact reports the opposite of the real state.
    ContactorFeedbackWrong { string: usize, contactor: ContactorId },
    /// The string loses its coolant; only the ambient conductance remains.
    CoolingFailure { string: usize },
    /// Recovery: the coolant flows again.
    CoolingRestored { string: usize },
    /// Recovery: an internal short of `element` clears (a soft short that burns open).
    ShortCleared { string: usize, element: usize },
    /// Recovery: a sensor channel is repaired (stuck, offset or open wire removed).
    SensorRepaired {
        string: usize,
        sensor: SensorId,
        #[serde(default)]
        channel: usize,
    },
}

impl PlantFault {
    pub fn string(&self) -> usize {
        match *self {
            PlantFault::SensorStuck { string, .. }
            | PlantFault::SensorOffset { string, .. }
            | PlantFault::SensorOpenWire { string, .. }
            | PlantFault::SensorsLost { string }
            | PlantFault::InternalShort { string, .. }
            | PlantFault::CapacityFade { string, .. }
            | PlantFault::ContactorWelded { string, .. }
            | PlantFault::ContactorFailsToClose { string, .. }
            | PlantFault::ContactorFeedbackWrong { string, .. }
            | PlantFault::CoolingFailure { string }
            | PlantFault::CoolingRestored { string }
            | PlantFault::ShortCleared { string, .. }
            | PlantFault::SensorRepaired { string, .. } => string,
        }
    }

    /// Check indices and values against the strings; the error names the field inside the fault.
    pub fn validate(&self, strings: &[StringConfig]) -> Result<(), (String, String)> {
        let k = self.string();
        let Some(s) = strings.get(k) else {
            return Err(("string".into(), format!("expected 0..{}, got {k}", strings.len())));
        };
        let channels = |sensor: SensorId| match sensor {
            SensorId::CellVoltage => s.series,
            SensorId::CellTemp => s.sensors.temp_sensors.unwrap_or(s.series),
            _ => 1,
        };
        match *self {
            PlantFault::SensorStuck { sensor, channel, .. }
            | PlantFault::SensorOffset { sensor, channel, .. }
            | PlantFault::SensorOpenWire { sensor, channel, .. }
            | PlantFault::SensorRepaired { sensor, channel, .. } => {
                let n = channels(sensor);
                if channel >= n {
                    return Err(("channel".into(), format!("expected 0..{n} for {sensor:?}, got {channel}")));
                }
                if let PlantFault::SensorOffset { offset, .. } = self {
                    if !offset.is_finite() {
                        return Err(("offset".into(), "expected a finite number".into()));
                    }
                }
            }
            PlantFault::ShortCleared { element, .. } => {
                if element >= s.series {
                    return Err(("element".into(), format!("expected 0..{}, got {element}", s.series)));
                }
            }
            PlantFault::InternalShort { element, r_short_ohm, .. } => {
                if element >= s.series {
                    return Err(("element".into(), format!("expected 0..{}, got {element}", s.series)));
                }
                if !(r_short_ohm.is_finite() && r_short_ohm > 0.0) {
                    return Err(("r_short_ohm".into(), format!("expected a positive number, got {r_short_ohm}")));
                }
            }
            PlantFault::CapacityFade { element, factor, .. } => {
                if element >= s.series {
                    return Err(("element".into(), format!("expected 0..{}, got {element}", s.series)));
                }
                if !(factor > 0.0 && factor <= 1.0) {
                    return Err(("factor".into(), format!("expected (0, 1], got {factor}")));
                }
            }
            _ => {}
        }
        Ok(())
    }
}
