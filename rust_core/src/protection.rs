//! Pack protection: three-level threshold rules with hysteresis and time-based debounce,
//! latching faults, sensor plausibility.
//!
//! The three levels follow foxBMS 2's scheme (operating limit → "warning", recommended safety
//! limit → "alarm", maximum safety limit → "fault"; foxBMS documentation, "Diagnosis" and
//! "BMS application" modules). Each level has its own threshold and confirmation delay; a
//! condition is *confirmed* at the first step at which it has been present continuously for at
//! least the delay (detection latency = delay + at most one step). Warnings and alarms clear as
//! soon as the value falls below `threshold - hysteresis`; faults **latch** until the condition
//! has cleared *and* a reset is asked for.
//!
//! Actions: warning → derate the limits, alarm → request a ramp-down of the current,
//! fault → open the contactors (brief S1: local, no message needed).

use serde::Deserialize;

/// Tolerance on time comparisons of the debounce, so that a delay of 0.5 s sampled every
/// 0.1 s confirms at the 5th step even though 0.1 is not exact in binary floating point.
pub const TIME_EPS_S: f64 = 1e-9;

/// What the pack must do. Ordered by severity. Crosses to Python and logs as its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum Action {
    #[default]
    None = 0,
    Derate = 1,
    RampDown = 2,
    Open = 3,
}

/// Severity of an active condition. Ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Level {
    Warning = 0,
    Alarm = 1,
    Fault = 2,
}

impl Level {
    pub const ALL: [Level; 3] = [Level::Warning, Level::Alarm, Level::Fault];

    pub fn action(self) -> Action {
        match self {
            Level::Warning => Action::Derate,
            Level::Alarm => Action::RampDown,
            Level::Fault => Action::Open,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Level::Warning => "warning",
            Level::Alarm => "alarm",
            Level::Fault => "fault",
        }
    }
}

/// The protection rules. Per-cell rules are indexed by cell, temperature rules by sensor,
/// pack rules by `u32::MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Rule {
    CellOvervoltage = 0,
    CellUndervoltage = 1,
    OvertempCharge = 2,
    UndertempCharge = 3,
    OvertempDischarge = 4,
    UndertempDischarge = 5,
    OvercurrentCharge = 6,
    OvercurrentDischarge = 7,
    VoltageSpread = 8,
    TempSpread = 9,
    VoltageSensor = 10,
    TempSensor = 11,
    CurrentSensor = 12,
}

impl Rule {
    pub const COUNT: usize = 13;
    pub const ALL: [Rule; Rule::COUNT] = [
        Rule::CellOvervoltage,
        Rule::CellUndervoltage,
        Rule::OvertempCharge,
        Rule::UndertempCharge,
        Rule::OvertempDischarge,
        Rule::UndertempDischarge,
        Rule::OvercurrentCharge,
        Rule::OvercurrentDischarge,
        Rule::VoltageSpread,
        Rule::TempSpread,
        Rule::VoltageSensor,
        Rule::TempSensor,
        Rule::CurrentSensor,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Rule::CellOvervoltage => "cell_overvoltage",
            Rule::CellUndervoltage => "cell_undervoltage",
            Rule::OvertempCharge => "overtemp_charge",
            Rule::UndertempCharge => "undertemp_charge",
            Rule::OvertempDischarge => "overtemp_discharge",
            Rule::UndertempDischarge => "undertemp_discharge",
            Rule::OvercurrentCharge => "overcurrent_charge",
            Rule::OvercurrentDischarge => "overcurrent_discharge",
            Rule::VoltageSpread => "voltage_spread",
            Rule::TempSpread => "temp_spread",
            Rule::VoltageSensor => "voltage_sensor",
            Rule::TempSensor => "temp_sensor",
            Rule::CurrentSensor => "current_sensor",
        }
    }

    pub fn from_u8(v: u8) -> Option<Rule> {
        Rule::ALL.get(v as usize).copied()
    }
}

/// An active (confirmed) condition: the highest confirmed level of one rule at one index.
/// The one form of a fault in every output (engine, node, fast sim, logs):
/// `{"rule": "cell_overvoltage", "level": "alarm", "index": 3}` (issue 9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct ActiveFault {
    #[serde(serialize_with = "serialize_rule")]
    pub rule: Rule,
    #[serde(serialize_with = "serialize_level")]
    pub level: Level,
    /// Cell index, temperature-sensor index, or `u32::MAX` for a pack-level rule.
    pub index: u32,
}

pub const PACK_INDEX: u32 = u32::MAX;

fn serialize_rule<S: serde::Serializer>(r: &Rule, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(r.name())
}

fn serialize_level<S: serde::Serializer>(l: &Level, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(l.name())
}

/// A protection condition seen during a run, without its element: `{"rule", "level"}`
/// (the fault history of a pack in a simulation report, the same in every mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct FaultSeen {
    #[serde(serialize_with = "serialize_rule")]
    pub rule: Rule,
    #[serde(serialize_with = "serialize_level")]
    pub level: Level,
}

/// Thresholds of one rule. For an upper-bound rule (over-voltage, over-temperature, ...)
/// `warning <= alarm <= fault`; for a lower-bound rule (under-voltage, under-temperature)
/// `warning >= alarm >= fault`. The unit is the one in the rule's table name.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, serde::Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    pub warning: f64,
    pub alarm: f64,
    pub fault: f64,
    /// A confirmed level clears once the value is back by this much (same unit, >= 0).
    pub hysteresis: f64,
    pub warning_delay_s: f64,
    pub alarm_delay_s: f64,
    pub fault_delay_s: f64,
}

impl Thresholds {
    /// Validate; `upper` = rule trips above its thresholds.
    pub fn validate(&self, upper: bool) -> Result<(), String> {
        self.validate_field(upper).map_err(|(_, m)| m)
    }

    /// Validate, naming the offending key of the table (`warning`, `alarm`, `hysteresis`, ...).
    pub fn validate_field(&self, upper: bool) -> Result<(), (&'static str, String)> {
        for (name, x) in [("warning", self.warning), ("alarm", self.alarm), ("fault", self.fault)] {
            if !x.is_finite() {
                return Err((name, format!("thresholds must be finite numbers, got {x}")));
            }
        }
        let (first, second) = if upper {
            (self.warning <= self.alarm, self.alarm <= self.fault)
        } else {
            (self.warning >= self.alarm, self.alarm >= self.fault)
        };
        if !(first && second) {
            let msg = if upper {
                format!("expected warning <= alarm <= fault, got {} / {} / {}", self.warning, self.alarm, self.fault)
            } else {
                format!("expected warning >= alarm >= fault, got {} / {} / {}", self.warning, self.alarm, self.fault)
            };
            return Err((if first { "alarm" } else { "warning" }, msg));
        }
        if !(self.hysteresis >= 0.0 && self.hysteresis.is_finite()) {
            return Err(("hysteresis", format!("hysteresis must be finite and >= 0, got {}", self.hysteresis)));
        }
        for (name, d) in [
            ("warning_delay_s", self.warning_delay_s),
            ("alarm_delay_s", self.alarm_delay_s),
            ("fault_delay_s", self.fault_delay_s),
        ] {
            if !(d >= 0.0 && d.is_finite()) {
                return Err((name, format!("{name} must be finite and >= 0, got {d}")));
            }
        }
        Ok(())
    }
}

/// Sensor plausibility. A failed sensor trips its `*_sensor` rule at fault level after
/// `fault_delay_s`; its readings are not used by the estimator meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, serde::Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct SensorConfig {
    /// Plausible range of a cell-voltage reading; outside = failed sensor.
    pub cell_v_min_v: f64,
    pub cell_v_max_v: f64,
    /// A reading below this is taken as an open sense wire (the AFE reads ~0 V).
    pub open_wire_v: f64,
    pub temp_min_c: f64,
    pub temp_max_c: f64,
    /// |current| above this is implausible for the sensor (saturated / broken).
    pub current_max_abs_a: f64,
    /// A reading exactly unchanged for this many consecutive samples is "stuck" (0 = off).
    pub stuck_samples: u32,
    pub fault_delay_s: f64,
}

/// The debounce state of one rule at one index.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RuleState {
    /// Time the condition of each level was first seen (NaN: not pending).
    pub since: [f64; 3],
    /// Bit l set: level l confirmed (active).
    pub active: u8,
    /// Bit l set: condition of level l present at the last evaluation.
    pub present: u8,
}

impl Default for RuleState {
    fn default() -> Self {
        Self { since: [f64::NAN; 3], active: 0, present: 0 }
    }
}

/// Thresholds compiled for evaluation on a value transformed so that every rule is an
/// upper-bound rule: lower-bound rules evaluate `-x` against negated thresholds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CompiledRule {
    pub sign: f64,
    pub th: [f64; 3],
    pub clear: [f64; 3],
    pub delay: [f64; 3],
    /// Below this (transformed) value with an idle state nothing can happen: the fast path.
    pub idle_below: f64,
}

impl CompiledRule {
    pub fn new(t: &Thresholds, upper: bool) -> Self {
        let sign = if upper { 1.0 } else { -1.0 };
        let th = [sign * t.warning, sign * t.alarm, sign * t.fault];
        let clear = [th[0] - t.hysteresis, th[1] - t.hysteresis, th[2] - t.hysteresis];
        let idle_below = th[0].min(th[1]).min(th[2]);
        Self {
            sign,
            th,
            clear,
            delay: [t.warning_delay_s, t.alarm_delay_s, t.fault_delay_s],
            idle_below,
        }
    }

    /// A fault-only rule on a boolean "bad" signal (evaluate with x = 1.0 bad, 0.0 good).
    pub fn fault_only(delay_s: f64) -> Self {
        Self {
            sign: 1.0,
            th: [f64::INFINITY, f64::INFINITY, 0.5],
            clear: [f64::INFINITY, f64::INFINITY, 0.5],
            delay: [0.0, 0.0, delay_s],
            idle_below: 0.5,
        }
    }
}

/// Evaluate one rule at one index at time `t_s` with the (raw) value `x`.
/// `x = NaN` means "no trustworthy value": the state is held unchanged (neither confirmed
/// nor cleared; the sensor rule takes care of the failed sensor). `x = -inf` (after the sign
/// transform) means "rule not applicable now" (e.g. a charge window while discharging).
/// Returns true if the state is not idle afterwards.
#[inline]
pub fn evaluate(rule: &CompiledRule, st: &mut RuleState, t_s: f64, x_raw: f64) -> bool {
    let x = rule.sign * x_raw;
    if x.is_nan() {
        return st.active != 0 || st.present != 0;
    }
    for l in 0..3 {
        let bit = 1u8 << l;
        let present = if st.active & bit != 0 {
            // confirmed: present until the value is back below threshold - hysteresis
            !(x < rule.clear[l])
        } else {
            x > rule.th[l]
        };
        if present {
            st.present |= bit;
        } else {
            st.present &= !bit;
        }
        if st.active & bit != 0 {
            if !present && l != Level::Fault as usize {
                st.active &= !bit;
                st.since[l] = f64::NAN;
            }
            // faults stay latched; `present` tells reset() whether they may clear
        } else if present {
            if st.since[l].is_nan() {
                st.since[l] = t_s;
            }
            if t_s - st.since[l] >= rule.delay[l] - TIME_EPS_S {
                st.active |= bit;
            }
        } else {
            st.since[l] = f64::NAN;
        }
    }
    st.active != 0 || st.present != 0
}

/// Clear a latched fault whose condition is gone. Returns true if the state is idle now.
pub fn reset(st: &mut RuleState) -> bool {
    let f = 1u8 << (Level::Fault as usize);
    if st.active & f != 0 && st.present & f == 0 {
        st.active &= !f;
        st.since[Level::Fault as usize] = f64::NAN;
    }
    st.active == 0 && st.present == 0
}

/// Highest active level of a state.
#[inline]
pub fn highest(st: &RuleState) -> Option<Level> {
    if st.active & 4 != 0 {
        Some(Level::Fault)
    } else if st.active & 2 != 0 {
        Some(Level::Alarm)
    } else if st.active & 1 != 0 {
        Some(Level::Warning)
    } else {
        None
    }
}

/// All indices of one rule: a dense "busy" byte per index for the fast path (cheap to
/// scan at 10 000 cells), full states only where something is going on.
#[derive(Debug, Clone)]
pub struct RuleBank {
    pub rule: Rule,
    pub compiled: CompiledRule,
    pub busy: Vec<u8>,
    pub states: Vec<RuleState>,
    /// number of busy indices (0: nothing to report)
    pub n_busy: usize,
}

impl RuleBank {
    pub fn new(rule: Rule, compiled: CompiledRule, n: usize) -> Self {
        Self { rule, compiled, busy: vec![0; n], states: vec![RuleState::default(); n], n_busy: 0 }
    }

    /// Evaluate index `k` with raw value `x`; fast when idle and far from the thresholds.
    #[inline(always)]
    pub fn eval(&mut self, k: usize, t_s: f64, x_raw: f64) {
        let x = self.compiled.sign * x_raw;
        // fast path: idle and at or below every threshold (NaN falls through to evaluate)
        if self.busy[k] == 0 && x <= self.compiled.idle_below {
            return;
        }
        self.eval_slow(k, t_s, x_raw);
    }

    #[inline(never)]
    fn eval_slow(&mut self, k: usize, t_s: f64, x_raw: f64) {
        let was = self.busy[k] != 0;
        let now = evaluate(&self.compiled, &mut self.states[k], t_s, x_raw);
        self.set_busy(k, was, now);
    }

    fn set_busy(&mut self, k: usize, was: bool, now: bool) {
        self.busy[k] = now as u8;
        match (was, now) {
            (false, true) => self.n_busy += 1,
            (true, false) => self.n_busy -= 1,
            _ => {}
        }
    }

    pub fn reset(&mut self) {
        if self.n_busy == 0 {
            return;
        }
        for k in 0..self.busy.len() {
            if self.busy[k] != 0 {
                let idle = reset(&mut self.states[k]);
                self.set_busy(k, true, !idle);
            }
        }
    }

    /// Append the active entries; return the most severe action.
    pub fn collect(&self, pack_level: bool, out: &mut Vec<ActiveFault>) -> Action {
        let mut action = Action::None;
        if self.n_busy == 0 {
            return action;
        }
        for k in 0..self.busy.len() {
            if self.busy[k] != 0 {
                if let Some(level) = highest(&self.states[k]) {
                    let index = if pack_level { PACK_INDEX } else { k as u32 };
                    out.push(ActiveFault { rule: self.rule, level, index });
                    action = action.max(level.action());
                }
            }
        }
        action
    }

    /// Latched faults (for state export): indices with the fault bit set.
    pub fn latched(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.busy.len()).filter(move |&k| self.busy[k] != 0 && self.states[k].active & 4 != 0)
    }

    /// Restore a latched fault (state import): fault active, condition assumed present
    /// until the next evaluation says otherwise.
    pub fn restore_latched(&mut self, k: usize) {
        let was = self.busy[k] != 0;
        self.states[k].active |= 4;
        self.states[k].present |= 4;
        self.set_busy(k, was, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn th() -> Thresholds {
        Thresholds {
            warning: 4.1,
            alarm: 4.15,
            fault: 4.2,
            hysteresis: 0.05,
            warning_delay_s: 1.0,
            alarm_delay_s: 0.5,
            fault_delay_s: 0.3,
        }
    }

    #[test]
    fn order_is_validated() {
        assert!(th().validate(true).is_ok());
        assert!(th().validate(false).is_err());
        let mut t = th();
        t.alarm = 4.3;
        assert!(t.validate(true).unwrap_err().contains("warning <= alarm <= fault"));
    }

    #[test]
    fn fault_latches_until_cleared_and_reset() {
        let r = CompiledRule::new(&th(), true);
        let mut s = RuleState::default();
        let mut t = 0.0;
        // over the fault threshold for long enough
        while highest(&s) != Some(Level::Fault) {
            evaluate(&r, &mut s, t, 4.25);
            t += 0.1;
            assert!(t < 2.0);
        }
        // reset while the condition is present: stays
        assert!(!reset(&mut s));
        assert_eq!(highest(&s), Some(Level::Fault));
        // below threshold but within hysteresis: still present
        evaluate(&r, &mut s, t, 4.17);
        assert!(!reset(&mut s));
        assert_eq!(highest(&s), Some(Level::Fault));
        // cleared: warning/alarm drop at once, fault stays latched until reset
        evaluate(&r, &mut s, t + 0.1, 3.9);
        assert_eq!(highest(&s), Some(Level::Fault));
        assert!(reset(&mut s));
        assert_eq!(highest(&s), None);
    }

    #[test]
    fn lower_bound_rule() {
        let t = Thresholds {
            warning: 2.8,
            alarm: 2.7,
            fault: 2.5,
            hysteresis: 0.1,
            warning_delay_s: 0.0,
            alarm_delay_s: 0.0,
            fault_delay_s: 0.0,
        };
        let r = CompiledRule::new(&t, false);
        let mut s = RuleState::default();
        evaluate(&r, &mut s, 0.0, 2.75);
        assert_eq!(highest(&s), Some(Level::Warning));
        evaluate(&r, &mut s, 0.1, 2.4);
        assert_eq!(highest(&s), Some(Level::Fault));
    }

    proptest! {
        /// The fault level confirms at exactly the first sample with t - t_first >= delay,
        /// whatever the sampling period; an interruption restarts the debounce.
        #[test]
        fn debounce_is_exact(dt in 0.001f64..0.7, delay in 0.0f64..3.0, t0 in 0.0f64..100.0) {
            let mut t = th();
            t.fault_delay_s = delay;
            let r = CompiledRule::new(&t, true);
            let mut s = RuleState::default();
            let first = t0;
            let mut k = 0u32;
            loop {
                let now = t0 + k as f64 * dt;
                evaluate(&r, &mut s, now, 4.3);
                let confirmed = s.active & 4 != 0;
                let due = now - first >= delay - TIME_EPS_S;
                prop_assert_eq!(confirmed, due, "k={} now={}", k, now);
                if confirmed { break; }
                k += 1;
            }
            // no step of the sequence before that was confirmed, so latency <= delay + dt
            prop_assert!(k as f64 * dt <= delay + dt + 1e-9);
        }

        #[test]
        fn interruption_restarts_debounce(delay in 0.2f64..2.0) {
            let mut t = th();
            t.fault_delay_s = delay;
            let r = CompiledRule::new(&t, true);
            let mut s = RuleState::default();
            evaluate(&r, &mut s, 0.0, 4.3);
            evaluate(&r, &mut s, delay * 0.9, 4.0);
            evaluate(&r, &mut s, delay * 0.95, 4.3);
            evaluate(&r, &mut s, delay * 1.5, 4.3);
            prop_assert_eq!(s.active & 4, 0);
            evaluate(&r, &mut s, delay * 1.95 + 1e-6, 4.3);
            prop_assert_eq!(s.active & 4, 4);
        }
    }
}
