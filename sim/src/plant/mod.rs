//! The plant: a simulated battery of parallel strings on one DC bus, the "true" cells that
//! the BMUs estimate from noisy sensors.
//!
//! Per step (`Plant::step(dt)`): scheduled faults are applied, contactors move, each closed
//! string becomes a Thevenin source (E_k, R_k) constant over the step (cells with their RC
//! pairs discretised exactly, plus `r_extra_ohm`, plus the precharge resistor when only the
//! precharge relay is closed), the bus node is solved exactly over the step
//! ([`network::solve_bus`]), the step-average string currents drive the cells
//! ([`mbms_core::cell_model::CellParams::advance`], the same update as `CellParams::step`) and the
//! lumped thermal model, and energy counters are kept. Sans-IO: time, commands and seed are
//! arguments; no clocks, files or OS randomness.

pub mod config;
pub mod contactor;
pub mod fault;
pub mod load;
pub mod network;
pub mod rng;
pub mod sensors;
pub mod string;

pub use config::{
    BalancingConfig, BusConfig, ContactorConfig, DcdcConfig, PlantConfig, PlantConfigError, ScheduledFault,
    SensorConfig, SensorSpec, StringConfig, ThermalConfig, VariationConfig,
};
pub use contactor::Contactors;
pub use fault::{ContactorId, PlantFault, SensorId};
pub use load::{LoadConfig, Quantity};
pub use sensors::Measurement;

use mbms_core::cell_model::CellParams;
use config::cfg_err;
use sensors::{open_wire_value, ChannelFault};
use string::StringSim;

/// What a string's BMU commands.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StringCommand {
    pub neg: bool,
    pub pos: bool,
    pub pre: bool,
    /// One per series element; empty = no balancing. Missing entries count as off.
    pub balance: Vec<bool>,
    /// Current set-point of the string's DC/DC converter (A, discharge positive); None = the
    /// converter passes through (the string shares passively).
    pub dcdc_setpoint_a: Option<f64>,
}

/// Cumulative energies since the start (J). Identity, every step, to rounding:
/// `cells_out = load + loss_cells + loss_wiring + loss_internal + loss_bus_bleed + loss_dcdc
///  + (bus_capacitor − bus_capacitor_initial)`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct EnergyCounters {
    /// Chemical energy released by the cells: Σ OCV·charge (J).
    pub cells_out: f64,
    /// Energy delivered to the load: ∫ V_bus·I_load (J).
    pub load: f64,
    /// Ohmic and polarisation losses in the cells (R0, RC pairs, hysteresis).
    pub loss_cells: f64,
    /// Losses in `r_extra_ohm` and precharge resistors.
    pub loss_wiring: f64,
    /// Self-discharge, internal shorts and balancing bleed.
    pub loss_internal: f64,
    pub loss_bus_bleed: f64,
    pub loss_dcdc: f64,
    /// Energy in the bus capacitance now and at the start: C·V²/2.
    pub bus_capacitor: f64,
    pub bus_capacitor_initial: f64,
}

impl EnergyCounters {
    /// cells_out minus everything it went into (should be ~0).
    pub fn residual(&self) -> f64 {
        self.cells_out
            - (self.load
                + self.loss_cells
                + self.loss_wiring
                + self.loss_internal
                + self.loss_bus_bleed
                + self.loss_dcdc
                + self.bus_capacitor
                - self.bus_capacitor_initial)
    }
}

/// One physical close of a string's main path (main negative and main positive both
/// closed), recorded by the plant at the instant it happens (S3 on the truth, issue 11).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MainCloseEvent {
    /// Plant time of the close (s).
    pub t_s: f64,
    pub string: usize,
    /// True |V_bus − V_string| just before the contact closed (V; V_string = the stack's
    /// terminal voltage, what the string-voltage sensor sees).
    pub dv_true_v: f64,
    /// Largest |string current| in the step that starts at the close (A): the inrush. NaN
    /// until that step has run.
    pub inrush_a: f64,
}

/// A load step tied to a join: when `string` (any string if None) closes its precharge
/// relay, the load changes by `delta_a` after `after_s` (and stays changed).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JoinLoadStep {
    pub string: Option<usize>,
    pub after_s: f64,
    pub delta_a: f64,
    /// Set when the trigger has fired: the plant time the step applies.
    at_s: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum LoadOverride {
    CurrentA(f64),
    PowerW(f64),
}

pub struct Plant {
    cfg: PlantConfig,
    strings: Vec<StringSim>,
    t_s: f64,
    v_bus_v: f64,
    dt_cached: f64,
    load_override: Option<LoadOverride>,
    load_a: f64,
    load_limited: bool,
    i_cap_a: f64,
    i_bleed_a: f64,
    energy: EnergyCounters,
    /// Scheduled faults sorted by time and the index of the next one.
    schedule: Vec<ScheduledFault>,
    next_fault: usize,
    /// Every physical main close so far (S3 on the truth).
    main_closes: Vec<MainCloseEvent>,
    /// Per string: main path closed / precharge relay closed at the last contactor update.
    main_was: Vec<bool>,
    pre_was: Vec<bool>,
    /// Join-triggered load steps armed or pending, and the sum of those applied (A).
    join_steps: Vec<JoinLoadStep>,
    load_offset_a: f64,
    /// (plant time, ΔA) of every join load step applied.
    join_fired: Vec<(f64, f64)>,
}

impl Plant {
    /// Build the plant. `cells` holds one parameter set per string (the caller resolves the
    /// names in `cfg.strings[k].cell`). The seed fixes cell variation and sensor noise.
    pub fn new(cfg: PlantConfig, cells: Vec<CellParams>, seed: u64) -> Result<Plant, PlantConfigError> {
        cfg.validate()?;
        if cells.len() != cfg.strings.len() {
            return Err(cfg_err(
                "strings",
                format!("{} strings but {} cell parameter sets were given", cfg.strings.len(), cells.len()),
            ));
        }
        if let LoadConfig::Csv { path, .. } = &cfg.load {
            return Err(cfg_err("load.path", format!("CSV profile {path:?} not read: call LoadConfig::resolve_csv first")));
        }
        let strings: Vec<StringSim> = cfg
            .strings
            .iter()
            .zip(cells)
            .enumerate()
            .map(|(k, (sc, cell))| StringSim::new(sc, cell, &cfg.thermal, seed, k))
            .collect();
        let n_strings = strings.len();
        let mut schedule = cfg.faults.clone();
        schedule.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
        let v0 = cfg.bus.v_initial_v;
        let e_cap0 = 0.5 * cfg.bus.capacitance_f * v0 * v0;
        Ok(Plant {
            strings,
            t_s: 0.0,
            v_bus_v: v0,
            dt_cached: f64::NAN,
            load_override: None,
            load_a: 0.0,
            load_limited: false,
            i_cap_a: 0.0,
            i_bleed_a: 0.0,
            energy: EnergyCounters { bus_capacitor: e_cap0, bus_capacitor_initial: e_cap0, ..Default::default() },
            schedule,
            next_fault: 0,
            main_closes: Vec::new(),
            main_was: vec![false; n_strings],
            pre_was: vec![false; n_strings],
            join_steps: Vec::new(),
            load_offset_a: 0.0,
            join_fired: Vec::new(),
            cfg,
        })
    }

    pub fn config(&self) -> &PlantConfig {
        &self.cfg
    }

    pub fn n_strings(&self) -> usize {
        self.strings.len()
    }

    pub fn series(&self, string: usize) -> usize {
        self.strings[string].series
    }

    pub fn t_s(&self) -> f64 {
        self.t_s
    }

    /// Apply a BMU's command (contactor coils, balance switches, DC/DC set-point) now.
    pub fn set_command(&mut self, string: usize, cmd: &StringCommand) {
        let t = self.t_s;
        let s = &mut self.strings[string];
        s.contactors[0].command(cmd.neg, t);
        s.contactors[1].command(cmd.pos, t);
        s.contactors[2].command(cmd.pre, t);
        for j in 0..s.series {
            let on = cmd.balance.get(j).copied().unwrap_or(false);
            if s.balance[j] != on {
                s.balance[j] = on;
                s.dirty = true;
            }
        }
        s.dcdc_setpoint_a = if s.dcdc_max_a.is_some() { cmd.dcdc_setpoint_a } else { None };
    }

    /// Override the load with a current (A, discharge positive) until cleared.
    pub fn set_load_a(&mut self, i_a: f64) {
        self.load_override = Some(LoadOverride::CurrentA(i_a));
    }

    /// Override the load with a power (W, discharge positive) until cleared.
    pub fn set_load_w(&mut self, p_w: f64) {
        self.load_override = Some(LoadOverride::PowerW(p_w));
    }

    /// Back to the built-in profile.
    pub fn clear_load_override(&mut self) {
        self.load_override = None;
    }

    /// Inject a fault now.
    pub fn inject(&mut self, fault: PlantFault) -> Result<(), PlantConfigError> {
        fault.validate(&self.cfg.strings).map_err(|(f, m)| cfg_err(format!("fault.{f}"), m))?;
        self.apply_fault(&fault);
        Ok(())
    }

    fn apply_fault(&mut self, fault: &PlantFault) {
        let s = &mut self.strings[fault.string()];
        match *fault {
            PlantFault::SensorStuck { sensor, channel, .. } => {
                s.sensors.group(sensor).faults[channel] = Some(ChannelFault::Stuck(None));
            }
            PlantFault::SensorOffset { sensor, channel, offset, .. } => {
                s.sensors.group(sensor).faults[channel] = Some(ChannelFault::Offset(offset));
            }
            PlantFault::SensorOpenWire { sensor, channel, .. } => {
                s.sensors.group(sensor).faults[channel] = Some(ChannelFault::OpenWire);
            }
            PlantFault::SensorsLost { .. } => s.sensors.lost = true,
            PlantFault::InternalShort { element, r_short_ohm, .. } => {
                s.g_short[element] = 1.0 / r_short_ohm;
                s.dirty = true;
            }
            PlantFault::CapacityFade { element, factor, .. } => s.fade(element, factor),
            PlantFault::ContactorWelded { contactor, .. } => s.contactors[contactor.index()].welded = true,
            PlantFault::ContactorFailsToClose { contactor, .. } => {
                s.contactors[contactor.index()].fails_to_close = true
            }
            PlantFault::ContactorFeedbackWrong { contactor, .. } => {
                s.contactors[contactor.index()].feedback_wrong = true
            }
            PlantFault::CoolingFailure { .. } => s.fail_cooling(),
            PlantFault::CoolingRestored { .. } => s.restore_cooling(),
            PlantFault::SensorRepaired { sensor, channel, .. } => {
                s.sensors.group(sensor).faults[channel] = None;
            }
            PlantFault::ShortCleared { element, .. } => {
                s.g_short[element] = 0.0;
                s.dirty = true;
            }
        }
    }

    /// Arm a load step tied to a join (see [`JoinLoadStep`]); it fires once.
    pub fn arm_join_load_step(&mut self, string: Option<usize>, after_s: f64, delta_a: f64) {
        self.join_steps.push(JoinLoadStep { string, after_s: after_s.max(0.0), delta_a, at_s: None });
    }

    /// Drop the applied join load steps and the armed ones.
    pub fn clear_join_load_steps(&mut self) {
        self.join_steps.clear();
        self.load_offset_a = 0.0;
    }

    /// (plant time, ΔA) of every join load step applied so far.
    pub fn join_steps_fired(&self) -> &[(f64, f64)] {
        &self.join_fired
    }

    /// Every physical main close so far, in time order: (t_s, string, true |ΔV|, inrush).
    pub fn main_close_events(&self) -> &[MainCloseEvent] {
        &self.main_closes
    }

    /// Earliest instant strictly inside (t, t_end) at which something physical switches:
    /// a contact finishing its travel or a join load step.
    fn next_event_in(&self, t_end: f64) -> Option<f64> {
        let t = self.t_s;
        let mut best: Option<f64> = None;
        let mut consider = |x: f64| {
            if x > t + 1e-9 && x < t_end - 1e-9 && best.is_none_or(|b| x < b) {
                best = Some(x);
            }
        };
        for s in &self.strings {
            for c in &s.contactors {
                if let Some(x) = c.pending_move_at(s.close_time_s, s.open_time_s) {
                    consider(x);
                }
            }
        }
        for j in &self.join_steps {
            if let Some(x) = j.at_s {
                consider(x);
            }
        }
        best
    }

    /// After a contactor update at time `t`: record main closes (true |ΔV| at this instant)
    /// and fire join load-step triggers on precharge closes.
    fn note_contacts(&mut self, t: f64) {
        for k in 0..self.strings.len() {
            let c = self.strings[k].state();
            let main = c.neg && c.pos;
            let pre = c.neg && c.pre;
            if main && !self.main_was[k] {
                let v_string = self.string_voltage_v(k);
                self.main_closes.push(MainCloseEvent {
                    t_s: t,
                    string: k,
                    dv_true_v: (self.v_bus_v - v_string).abs(),
                    inrush_a: f64::NAN,
                });
            }
            if pre && !self.pre_was[k] {
                for j in &mut self.join_steps {
                    if j.at_s.is_none() && j.string.is_none_or(|s| s == k) {
                        j.at_s = Some(t + j.after_s);
                    }
                }
            }
            self.main_was[k] = main;
            self.pre_was[k] = pre;
        }
    }

    /// Advance the plant by `dt_s` (> 0). The step is split at the instants where a contact
    /// finishes its travel or a join load step fires, so each happens at its true time.
    pub fn step(&mut self, dt_s: f64) {
        if !(dt_s > 0.0 && dt_s.is_finite()) {
            return;
        }
        let t_end = self.t_s + dt_s;
        let mut guard = 0;
        while let Some(x) = self.next_event_in(t_end).filter(|_| guard < 16) {
            self.step_once(x - self.t_s);
            guard += 1;
        }
        let rest = t_end - self.t_s;
        if rest > 1e-12 {
            self.step_once(rest);
        }
        // a sum of sub-steps may differ from t + dt by a rounding error: keep the caller's grid
        self.t_s = t_end;
    }

    fn step_once(&mut self, dt_s: f64) {
        // join load steps due now
        let t_now = self.t_s;
        let mut fired = 0.0;
        let log = &mut self.join_fired;
        self.join_steps.retain(|j| match j.at_s {
            Some(at) if at <= t_now + 1e-9 => {
                fired += j.delta_a;
                log.push((t_now, j.delta_a));
                false
            }
            _ => true,
        });
        self.load_offset_a += fired;
        while self.next_fault < self.schedule.len() && self.schedule[self.next_fault].at_s <= self.t_s + 1e-12 {
            let f = self.schedule[self.next_fault].fault.clone();
            self.apply_fault(&f);
            self.next_fault += 1;
        }
        let rebuild_all = dt_s != self.dt_cached;
        self.dt_cached = dt_s;
        let t = self.t_s;
        let v_prev = self.v_bus_v;

        // 1. contactors and Thevenin sources
        let (mut a0, mut g) = (0.0, 0.0);
        let mut load_enabled = false;
        let mut e_flush = 0.0;
        for s in &mut self.strings {
            let (ct, ot) = (s.close_time_s, s.open_time_s);
            for c in &mut s.contactors {
                c.update(t, ct, ot);
            }
            if rebuild_all {
                e_flush += s.rebuild(dt_s);
            } else if s.dirty {
                s.resum();
            }
            s.e_step_v = s.e_sum;
            s.r_step_ohm = s.r_cells_ohm() + s.r_extra_ohm;
            match s.path_ohm() {
                None => {}
                Some(r_path) => {
                    if r_path == 0.0 {
                        load_enabled = true;
                    }
                    if let (Some(sp), Some(max), true) = (s.dcdc_setpoint_a, s.dcdc_max_a, r_path == 0.0 && v_prev > 1.0) {
                        let i = sp.clamp(-max, max);
                        let p_in = i * (s.e_step_v - s.r_step_ohm * i);
                        let eta = s.dcdc_efficiency;
                        a0 += (if p_in >= 0.0 { p_in * eta } else { p_in / eta }) / v_prev;
                    } else {
                        let r = s.r_step_ohm + r_path;
                        a0 += s.e_step_v / r;
                        g += 1.0 / r;
                    }
                }
            }
        }
        let g_bleed = self.cfg.bus.r_bleed_ohm.map_or(0.0, |r| 1.0 / r);
        g += g_bleed;
        self.note_contacts(t);

        // 2. the load (only drawn while a string is connected through its main contactor)
        let (quantity, value) = match self.load_override {
            Some(LoadOverride::CurrentA(i)) => (Quantity::CurrentA, i),
            Some(LoadOverride::PowerW(p)) => (Quantity::PowerW, p),
            None => (self.cfg.load.quantity(), self.cfg.load.value_at(t)),
        };
        self.load_limited = false;
        let i_load = if !load_enabled {
            0.0
        } else {
            self.load_offset_a + match quantity {
                Quantity::CurrentA => value,
                Quantity::PowerW => match network::constant_power_voltage(a0, g, value) {
                    Some(v) => value / v,
                    None => {
                        // beyond the maximum power point: the bus collapses to half its
                        // open-circuit voltage and the load takes what it can
                        self.load_limited = true;
                        0.5 * a0
                    }
                },
            }
        };
        self.load_a = i_load;

        // 3. the bus over the step
        let c = self.cfg.bus.capacitance_f;
        let bus = network::solve_bus(v_prev, c, g, a0 - i_load, dt_s);
        let iv = bus.int_v;
        let v_avg = bus.v_avg();

        // 4. string currents, energy, cells
        let mut en = self.energy;
        en.cells_out += e_flush;
        en.loss_internal += e_flush;
        for s in &mut self.strings {
            let (e, r) = (s.e_step_v, s.r_step_ohm);
            let r_cells = s.r_cells_ohm();
            let (i, i2dt, r_path) = match s.path_ohm() {
                None => (0.0, 0.0, 0.0),
                Some(r_path) => {
                    if let (Some(sp), Some(max), true) = (s.dcdc_setpoint_a, s.dcdc_max_a, r_path == 0.0 && v_prev > 1.0) {
                        let i = sp.clamp(-max, max);
                        let v_t = e - r * i;
                        let p_in = i * v_t;
                        let eta = s.dcdc_efficiency;
                        let j_bus = (if p_in >= 0.0 { p_in * eta } else { p_in / eta }) / v_prev;
                        en.loss_dcdc += p_in * dt_s - j_bus * iv;
                        s.i_peak_a = i.abs();
                        (i, i * i * dt_s, 0.0)
                    } else {
                        let rt = r + r_path;
                        s.i_peak_a = bus.i_peak(e, rt);
                        (bus.i_avg(e, rt), bus.int_i2(e, rt), r_path)
                    }
                }
            };
            if s.path_ohm().is_none() {
                s.i_peak_a = 0.0;
            }
            let q = i * dt_s;
            en.cells_out += s.ocv_sum * q;
            en.loss_cells += (s.ocv_sum - e) * q + r_cells * i2dt;
            en.loss_wiring += (s.r_extra_ohm + r_path) * i2dt;
            s.i_a = i;
            let e_int = s.advance(i, dt_s);
            en.cells_out += e_int;
            en.loss_internal += e_int;
        }
        en.load += i_load * iv;
        en.loss_bus_bleed += g_bleed * bus.int_v2;
        en.bus_capacitor = 0.5 * c * bus.v1 * bus.v1;
        self.energy = en;
        self.i_cap_a = c * (bus.v1 - bus.v0) / dt_s;
        self.i_bleed_a = g_bleed * v_avg;
        self.v_bus_v = bus.v1;
        self.t_s += dt_s;
        // the inrush of a close recorded at the start of this step
        for ev in self.main_closes.iter_mut().rev().take_while(|e| e.inrush_a.is_nan()) {
            ev.inrush_a = self.strings[ev.string].i_peak_a;
        }
        // contacts that finished moving during the step show it at its end
        let t_end = self.t_s;
        for s in &mut self.strings {
            let (ct, ot) = (s.close_time_s, s.open_time_s);
            for c in &mut s.contactors {
                c.update(t_end, ct, ot);
            }
        }
        self.note_contacts(t_end);
    }

    /// What string `string`'s BMU sees now (sampled per the sensors' periods; between samples
    /// the last readings are held).
    pub fn measure(&mut self, string: usize) -> &Measurement {
        self.measure_inner(string, false)
    }

    /// Like [`Plant::measure`], but the string current, string voltage and bus voltage are
    /// converted now whatever their sampling period (an on-demand conversion of the HV
    /// measurement, as a BMU requests before it closes a main contactor).
    pub fn measure_fresh(&mut self, string: usize) -> &Measurement {
        self.measure_inner(string, true)
    }

    fn measure_inner(&mut self, string: usize, fresh: bool) -> &Measurement {
        let t = self.t_s;
        let v_bus = self.v_bus_v;
        let s = &mut self.strings[string];
        let fb = s.feedback();
        let n = s.series;
        // true values first (s is borrowed mutably below through its sensor bank)
        let mut v_stack = 0.0;
        let mut scratch = std::mem::take(&mut s.sensors.scratch);
        for (j, v) in scratch.iter_mut().enumerate() {
            *v = s.element_voltage(j);
            v_stack += *v;
        }
        let i_true = s.i_a;
        let b = &mut s.sensors;
        b.m.t_s = t;
        b.m.feedback = fb;
        if b.lost {
            b.m.valid = false;
            b.m.v_cell_v.fill(f64::NAN);
            b.m.t_cell_c.fill(f64::NAN);
            b.m.i_a = f64::NAN;
            b.m.v_string_v = f64::NAN;
            b.m.v_bus_v = f64::NAN;
            b.scratch = scratch;
            return &self.strings[string].sensors.m;
        }
        b.m.valid = true;
        if b.cell_voltage.due(t) {
            // open sense wire c: channel c reads 0, channel c−1 the sum of both elements
            if b.cell_voltage.any_fault() {
                for c in 0..n {
                    if b.cell_voltage.has_open_wire(c) {
                        if c > 0 {
                            scratch[c - 1] += scratch[c];
                        }
                        scratch[c] = 0.0;
                    }
                }
            }
            for (c, &x) in scratch.iter().enumerate() {
                b.m.v_cell_v[c] = b.cell_voltage.read(c, x, &mut b.rng);
            }
        }
        if b.cell_temp.due(t) {
            for c in 0..b.temp_element.len() {
                let x = if b.cell_temp.has_open_wire(c) {
                    open_wire_value(SensorId::CellTemp)
                } else {
                    s.temp_c[b.temp_element[c]]
                };
                b.m.t_cell_c[c] = b.cell_temp.read(c, x, &mut b.rng);
            }
        }
        if b.current.due(t) || fresh {
            let x = if b.current.has_open_wire(0) { 0.0 } else { i_true };
            b.m.i_a = b.current.read(0, x, &mut b.rng);
        }
        if b.string_voltage.due(t) || fresh {
            let x = if b.string_voltage.has_open_wire(0) { 0.0 } else { v_stack };
            b.m.v_string_v = b.string_voltage.read(0, x, &mut b.rng);
        }
        if b.bus_voltage.due(t) || fresh {
            let x = if b.bus_voltage.has_open_wire(0) { 0.0 } else { v_bus };
            b.m.v_bus_v = b.bus_voltage.read(0, x, &mut b.rng);
        }
        b.scratch = scratch;
        &self.strings[string].sensors.m
    }

    // ---- truth, for tests and plots ----

    pub fn v_bus_v(&self) -> f64 {
        self.v_bus_v
    }

    /// Step-average current of string k over the last step (A, discharge positive).
    pub fn string_current_a(&self, k: usize) -> f64 {
        self.strings[k].i_a
    }

    /// Largest |current| of string k within the last step (the inrush when a contact closes).
    pub fn string_peak_current_a(&self, k: usize) -> f64 {
        self.strings[k].i_peak_a
    }

    /// Open-circuit voltage of string k now (V).
    pub fn string_ocv_v(&self, k: usize) -> f64 {
        self.strings[k].ocv_now()
    }

    /// Terminal voltage of string k's cell stack now (what its string-voltage sensor sees).
    pub fn string_voltage_v(&self, k: usize) -> f64 {
        let s = &self.strings[k];
        (0..s.series).map(|j| s.element_voltage(j)).sum()
    }

    /// The Thevenin source (E, R) string k presented to the bus in the last step: the
    /// §4 quantities (E includes polarisation; R = cells + r_extra, without precharge).
    pub fn string_thevenin(&self, k: usize) -> (f64, f64) {
        (self.strings[k].e_step_v, self.strings[k].r_step_ohm)
    }

    pub fn cell_soc(&self, k: usize) -> &[f64] {
        &self.strings[k].soc
    }

    pub fn cell_temp_c(&self, k: usize) -> &[f64] {
        &self.strings[k].temp_c
    }

    /// Capacity multiplier of every series element of string k (variation and fade).
    pub fn cell_capacity_scale(&self, k: usize) -> Vec<f64> {
        self.strings[k].scale.iter().map(|s| s.capacity).collect()
    }

    /// Real contact states of string k.
    pub fn contactor_state(&self, k: usize) -> Contactors {
        self.strings[k].state()
    }

    /// Load current drawn in the last step (A, discharge positive; 0 while no main is closed).
    pub fn load_a(&self) -> f64 {
        self.load_a
    }

    /// True if a power demand exceeded what the strings can deliver in the last step.
    pub fn load_limited(&self) -> bool {
        self.load_limited
    }

    /// Step-average current into the bus capacitance in the last step (A).
    pub fn capacitor_current_a(&self) -> f64 {
        self.i_cap_a
    }

    /// Step-average current in the bus bleed resistor in the last step (A).
    pub fn bleed_current_a(&self) -> f64 {
        self.i_bleed_a
    }

    pub fn energy(&self) -> &EnergyCounters {
        &self.energy
    }
}


#[cfg(test)]
mod tests;
