//! Sensor error models and sensor faults, as a string's BMU sees them.

use super::config::{SensorConfig, SensorSpec};
use super::contactor::Contactors;
use super::fault::SensorId;
use crate::rng::Rng;

/// What a string's BMU sees now.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Measurement {
    pub t_s: f64,
    /// One per series element (V).
    pub v_cell_v: Vec<f64>,
    /// One per temperature sensor (°C).
    pub t_cell_c: Vec<f64>,
    /// String current (A, discharge positive).
    pub i_a: f64,
    /// String voltage inside the contactors (V).
    pub v_string_v: f64,
    /// Bus voltage outside the contactors (V).
    pub v_bus_v: f64,
    /// Auxiliary feedback contacts.
    pub feedback: Contactors,
    /// False when the string's measurement board is lost (values are then NaN).
    pub valid: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ChannelFault {
    Stuck(Option<f64>),
    Offset(f64),
    OpenWire,
}

/// One kind of sensor of a string: spec, per-channel offsets, faults, sampling clock.
#[derive(Debug, Clone)]
pub struct SensorGroup {
    pub spec: SensorSpec,
    inv_lsb: f64,
    offsets: Vec<f64>,
    pub faults: Vec<Option<ChannelFault>>,
    next_t: f64,
}

impl SensorGroup {
    fn new(spec: &SensorSpec, channels: usize, rng: &mut Rng) -> Self {
        let offsets = (0..channels).map(|_| spec.offset + spec.offset_sigma * rng.normal()).collect();
        let inv_lsb = if spec.lsb > 0.0 { 1.0 / spec.lsb } else { 0.0 };
        Self { spec: spec.clone(), inv_lsb, offsets, faults: vec![None; channels], next_t: f64::NEG_INFINITY }
    }

    /// Is a new sample due at `t_s`? (Advances the sampling clock if so.)
    pub fn due(&mut self, t_s: f64) -> bool {
        if t_s + 1e-9 >= self.next_t {
            self.next_t = if self.spec.period_s > 0.0 {
                // keep the sampling grid; skip samples missed between calls
                let base = if self.next_t.is_finite() { self.next_t } else { t_s };
                let n = ((t_s - base) / self.spec.period_s).floor().max(0.0) + 1.0;
                base + n * self.spec.period_s
            } else {
                t_s
            };
            true
        } else {
            false
        }
    }

    /// One reading of channel `ch` whose true value is `x`.
    #[inline(always)]
    pub fn read(&mut self, ch: usize, x: f64, rng: &mut Rng) -> f64 {
        let s = &self.spec;
        if self.faults[ch].is_none() && s.noise > 0.0 {
            // the common case without faults, in one piece
            let mut r = x * (1.0 + s.gain_error) + self.offsets[ch] + s.noise * rng.normal();
            if s.lsb > 0.0 {
                r = round_half_even(r * self.inv_lsb) * s.lsb;
            }
            return r;
        }
        let mut r = x * (1.0 + s.gain_error) + self.offsets[ch];
        if s.noise > 0.0 {
            r += s.noise * rng.normal();
        }
        if s.lsb > 0.0 {
            r = round_half_even(r * self.inv_lsb) * s.lsb;
        }
        match &mut self.faults[ch] {
            None | Some(ChannelFault::OpenWire) => r,
            Some(ChannelFault::Offset(o)) => r + *o,
            Some(ChannelFault::Stuck(v)) => *v.get_or_insert(r),
        }
    }

    pub fn any_fault(&self) -> bool {
        self.faults.iter().any(Option::is_some)
    }

    #[inline]
    pub fn has_open_wire(&self, ch: usize) -> bool {
        matches!(self.faults[ch], Some(ChannelFault::OpenWire))
    }
}

/// All sensors of a string.
#[derive(Debug, Clone)]
pub struct SensorBank {
    pub cell_voltage: SensorGroup,
    pub cell_temp: SensorGroup,
    pub current: SensorGroup,
    pub string_voltage: SensorGroup,
    pub bus_voltage: SensorGroup,
    /// Series element each temperature sensor sits on.
    pub temp_element: Vec<usize>,
    pub lost: bool,
    pub rng: Rng,
    pub m: Measurement,
    /// Scratch for true cell voltages (no allocation per sample).
    pub scratch: Vec<f64>,
}

impl SensorBank {
    pub fn new(cfg: &SensorConfig, series: usize, mut rng: Rng) -> Self {
        let n_t = cfg.temp_sensors.unwrap_or(series);
        let temp_element = (0..n_t).map(|i| ((2 * i + 1) * series) / (2 * n_t)).collect();
        let cell_voltage = SensorGroup::new(&cfg.cell_voltage, series, &mut rng);
        let cell_temp = SensorGroup::new(&cfg.cell_temp, n_t, &mut rng);
        let current = SensorGroup::new(&cfg.current, 1, &mut rng);
        let string_voltage = SensorGroup::new(&cfg.string_voltage, 1, &mut rng);
        let bus_voltage = SensorGroup::new(&cfg.bus_voltage, 1, &mut rng);
        let m = Measurement {
            v_cell_v: vec![f64::NAN; series],
            t_cell_c: vec![f64::NAN; n_t],
            i_a: f64::NAN,
            v_string_v: f64::NAN,
            v_bus_v: f64::NAN,
            valid: true,
            ..Default::default()
        };
        Self {
            cell_voltage,
            cell_temp,
            current,
            string_voltage,
            bus_voltage,
            temp_element,
            lost: false,
            rng,
            m,
            scratch: vec![0.0; series],
        }
    }

    pub fn group(&mut self, id: SensorId) -> &mut SensorGroup {
        match id {
            SensorId::CellVoltage => &mut self.cell_voltage,
            SensorId::CellTemp => &mut self.cell_temp,
            SensorId::Current => &mut self.current,
            SensorId::StringVoltage => &mut self.string_voltage,
            SensorId::BusVoltage => &mut self.bus_voltage,
        }
    }
}

/// Round to the nearest integer (ties to even) without a libm call: adding and subtracting
/// 1.5·2^52 leaves no fraction bits (exact for |x| < 2^51; readings are far below).
#[inline(always)]
fn round_half_even(x: f64) -> f64 {
    const MAGIC: f64 = 6_755_399_441_055_744.0;
    if x.abs() < 2_251_799_813_685_248.0 {
        (x + MAGIC) - MAGIC
    } else {
        x.round()
    }
}

/// Open-wire reading of a scalar or a temperature channel.
pub fn open_wire_value(id: SensorId) -> f64 {
    match id {
        // an open NTC divider reads the cold end of the range
        SensorId::CellTemp => -40.0,
        _ => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_matches_round_except_ties() {
        for &x in &[0.4, 0.6, -0.4, -0.6, 41999.7, -3.2e6, 1e17, 2.5, 3.5] {
            let r = round_half_even(x);
            if (x - x.trunc()).abs() == 0.5 {
                assert_eq!(r % 2.0, 0.0);
            } else {
                assert_eq!(r, x.round(), "{x}");
            }
        }
    }
}
