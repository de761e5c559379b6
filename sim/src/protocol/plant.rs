//! The simulator's small electrical model: N strings (OCV, resistance, contactors with
//! actuation delay, precharge resistor) on one bus with a DC-link capacitance, a bleed
//! resistor and an optional load. Bus voltage by implicit Euler (stiff: R·C ≪ dt).

use mbms_consensus::peer::Contactors;
use mbms_consensus::sharing::StringState;

/// Bus DC-link capacitance (F): a few mF is typical of a traction inverter.
pub const C_BUS_F: f64 = 2e-3;
/// Precharge resistor (Ω): τ = R·C = 40 ms with C_BUS_F.
pub const R_PRE_OHM: f64 = 20.0;
/// Bleed resistor across the DC link (Ω).
pub const R_BLEED_OHM: f64 = 10_000.0;
/// Contactor actuation delays (µs): closing is slower than opening.
pub const CLOSE_DELAY_US: u64 = 12_000;
pub const OPEN_DELAY_US: u64 = 4_000;
/// Linear OCV(SOC) of a ~400 V string: OCV = 360 V + 80 V·SOC; capacity in Ah.
pub const OCV0_V: f64 = 360.0;
pub const OCV_SLOPE_V: f64 = 80.0;
pub const CAPACITY_AH: f64 = 50.0;

#[derive(Clone, Debug)]
pub struct StringTruth {
    pub soc: f64,
    pub r_ohm: f64,
    pub dcl_a: f64,
    pub ccl_a: f64,
    pub dcl_peak_a: f64,
    pub ccl_peak_a: f64,
    pub command: Contactors,
    pub command_at_us: u64,
    pub actual: Contactors,
    pub i_a: f64,
}

impl StringTruth {
    pub fn ocv_v(&self) -> f64 {
        OCV0_V + OCV_SLOPE_V * self.soc
    }
    pub fn main_closed(&self) -> bool {
        self.actual.neg && self.actual.pos
    }
    fn conductance(&self) -> f64 {
        if !self.actual.neg {
            0.0
        } else if self.actual.pos {
            1.0 / self.r_ohm
        } else if self.actual.pre {
            1.0 / (self.r_ohm + R_PRE_OHM)
        } else {
            0.0
        }
    }
    pub fn state(&self) -> StringState {
        StringState {
            ocv_v: self.ocv_v(),
            r_ohm: self.r_ohm,
            dcl_a: self.dcl_a,
            ccl_a: self.ccl_a,
            dcl_peak_a: self.dcl_peak_a,
            ccl_peak_a: self.ccl_peak_a,
        }
    }
    /// Terminal voltage inside the contactors.
    pub fn v_string_v(&self) -> f64 {
        self.ocv_v() - self.i_a * self.r_ohm
    }
}

#[derive(Clone, Debug)]
pub struct Plant {
    pub strings: Vec<StringTruth>,
    pub v_bus_v: f64,
    pub load_a: f64,
    pub t_us: u64,
}

impl Plant {
    pub fn new(strings: Vec<StringTruth>) -> Self {
        Self { strings, v_bus_v: 0.0, load_a: 0.0, t_us: 0 }
    }

    pub fn command(&mut self, k: usize, c: Contactors, t_us: u64) {
        let s = &mut self.strings[k];
        if s.command != c {
            s.command = c;
            s.command_at_us = t_us;
        }
    }

    /// A crashed controller drops its coils: contactors open at once (hardware fail-safe).
    pub fn drop_coils(&mut self, k: usize, t_us: u64) {
        let s = &mut self.strings[k];
        s.command = Contactors::OPEN;
        s.command_at_us = t_us;
        s.actual = Contactors::OPEN;
    }

    pub fn any_main_closed(&self) -> bool {
        self.strings.iter().any(|s| s.main_closed())
    }

    /// Advance to `t_us`.
    pub fn advance(&mut self, t_us: u64) {
        if t_us <= self.t_us {
            return;
        }
        let dt = (t_us - self.t_us) as f64 * 1e-6;
        self.t_us = t_us;
        for s in &mut self.strings {
            // Each contact follows its command after the actuation delay.
            let age = t_us.saturating_sub(s.command_at_us);
            let follow = |cmd: bool, act: bool| -> bool {
                if cmd == act {
                    act
                } else if cmd {
                    age >= CLOSE_DELAY_US
                } else {
                    age < OPEN_DELAY_US
                }
            };
            s.actual = Contactors {
                neg: follow(s.command.neg, s.actual.neg),
                pos: follow(s.command.pos, s.actual.pos),
                pre: follow(s.command.pre, s.actual.pre),
            };
        }
        let load = if self.any_main_closed() { self.load_a } else { 0.0 };
        let (mut gsum, mut isum) = (1.0 / R_BLEED_OHM, 0.0);
        for s in &self.strings {
            let g = s.conductance();
            gsum += g;
            isum += g * s.ocv_v();
        }
        let c = C_BUS_F / dt;
        self.v_bus_v = ((c * self.v_bus_v + isum - load) / (c + gsum)).max(0.0);
        for s in &mut self.strings {
            s.i_a = s.conductance() * (s.ocv_v() - self.v_bus_v);
            s.soc = (s.soc - s.i_a * dt / (3600.0 * CAPACITY_AH)).clamp(0.0, 1.0);
        }
    }
}
