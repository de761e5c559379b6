//! `mbms._core.FastSim`: the fast mode of `mbms sim` (plant + N nodes + simulated network).
//! Configs arrive as JSON text (the Python layer validated and resolved them); this layer
//! only converts, releases the GIL around the run and hands numpy arrays back.

#[cfg(feature = "sim")]
use numpy::{PyArray1, PyArray2, PyArray3, PyArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
#[cfg(feature = "sim")]
use pyo3::types::PyDict;
#[cfg(feature = "sim")]
use pyo3::types::PyList;

#[cfg(feature = "sim")]
use mbms_core::cell_model::CellParams;
#[cfg(feature = "sim")]
use mbms_sim::fastsim::{FastSim, NodeSpec, STRING_CHANNELS, SYSTEM_CHANNELS};
#[cfg(feature = "sim")]
use mbms_sim::plant::config::PlantConfig;
#[cfg(feature = "sim")]
use mbms_sim::plant::fault::PlantFault;
#[cfg(feature = "sim")]
use mbms_sim::plant::Plant;

#[cfg(feature = "sim")]
use crate::config::{engine_from_py, node_from_py, peer_from_py, raise_field, to_py};

#[cfg(feature = "sim")]
fn verr(field: &str, msg: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(format!("{field}: {msg}"))
}

#[cfg(feature = "sim")]
#[pyclass(name = "FastSim", module = "mbms._core", unsendable)]
pub struct PyFastSim {
    sim: FastSim,
}

#[cfg(feature = "sim")]
#[pymethods]
impl PyFastSim {
    /// plant_json: the plant description; cells: per string the TOML text of its cell file;
    /// engines: per string the engine tables (dict); system: the shared peer settings (dict of
    /// PeerConfig fields, the scenario's `[system]`); node: the `[node]` settings (dict);
    /// drift_ppm: per node clock error. Config errors are `mbms.errors.ConfigError`.
    #[new]
    #[pyo3(signature = (plant_json, cells, engines, system, node, drift_ppm, seed, dt_ms, record_every))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        plant_json: &str,
        cells: Vec<String>,
        engines: Vec<Bound<'_, PyAny>>,
        system: &Bound<'_, PyAny>,
        node: &Bound<'_, PyAny>,
        drift_ppm: Vec<f64>,
        seed: u64,
        dt_ms: u64,
        record_every: u64,
    ) -> PyResult<Self> {
        let plant_cfg: PlantConfig = serde_json::from_str(plant_json).map_err(|e| verr("plant", e))?;
        let n = plant_cfg.strings.len();
        if cells.len() != n || engines.len() != n {
            return Err(verr("plant.strings", format!("expected {n} cells and engine configs, got {} and {}", cells.len(), engines.len())));
        }
        let cell_params = cells
            .iter()
            .enumerate()
            .map(|(k, t)| CellParams::from_toml_str(t).map_err(|e| verr(&format!("plant.strings[{k}].cell"), e)))
            .collect::<PyResult<Vec<_>>>()?;
        let plant = Plant::new(plant_cfg, cell_params.clone(), seed).map_err(|e| verr(&format!("plant.{}", e.field), e.message))?;
        let node_cfg = node_from_py(node, "node", None)?;
        let members: Vec<u16> = (1..=n as u16).collect();
        let base = peer_from_py(system, "system", None, false)?;
        let mut specs = Vec::with_capacity(n);
        for k in 0..n {
            let engine = engine_from_py(&engines[k], None)?;
            let mut peer = base.clone();
            peer.node_id = k as u16 + 1;
            peer.members = members.clone();
            peer.seed = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(k as u64);
            peer.validate().map_err(|e| raise_field(system.py(), format!("system.{}", e.field), e.message, None))?;
            specs.push(NodeSpec {
                node: node_cfg.clone(),
                engine,
                cell: cell_params[k].clone(),
                peer,
                drift_ppm: drift_ppm.get(k).copied().unwrap_or(0.0),
                // different boot times: clocks are not synchronised (brief §3, S2)
                clock_offset_ms: 1_000 * (k as u64 + 1) + (seed % 997),
            });
        }
        let sim = FastSim::new(plant, specs, seed, dt_ms, record_every).map_err(PyValueError::new_err)?;
        Ok(Self { sim })
    }

    #[getter]
    fn t_ms(&self) -> u64 {
        self.sim.t_ms()
    }

    #[getter]
    fn n(&self) -> usize {
        self.sim.n()
    }

    #[staticmethod]
    fn system_channels() -> Vec<&'static str> {
        SYSTEM_CHANNELS.to_vec()
    }

    #[staticmethod]
    fn string_channels() -> Vec<&'static str> {
        STRING_CHANNELS.to_vec()
    }

    /// Run until the virtual clock reaches `t_ms` (GIL released).
    fn run_until(&mut self, py: Python<'_>, t_ms: u64) {
        let sim = &mut self.sim;
        py.allow_threads(|| sim.run_until(t_ms));
    }

    fn set_loss(&mut self, p: f64) -> PyResult<()> {
        if !(0.0..=1.0).contains(&p) {
            return Err(verr("loss", "expected a probability in 0..1"));
        }
        self.sim.net.loss = p;
        Ok(())
    }
    fn set_duplicate(&mut self, p: f64) -> PyResult<()> {
        if !(0.0..=1.0).contains(&p) {
            return Err(verr("duplicate", "expected a probability in 0..1"));
        }
        self.sim.net.dup = p;
        Ok(())
    }
    fn set_delay(&mut self, max_ms: u64) {
        self.sim.net.set_max_delay_ms(max_ms);
    }
    /// Partition group per node index (nodes in equal groups hear each other).
    fn set_groups(&mut self, groups: Vec<u8>) -> PyResult<()> {
        if groups.len() != self.sim.n() {
            return Err(verr("groups", format!("expected {} entries", self.sim.n())));
        }
        self.sim.net.group = groups;
        Ok(())
    }
    /// Whether the load obeys the agreed limits (default true: an inverter obeying the BMS).
    fn set_clip_load(&mut self, on: bool) {
        self.sim.clip_load = on;
    }
    /// Runtime-like sampling: nodes step every `period_ms` (a multiple of dt_ms) on the sample
    /// taken at their previous period, and take a fresh one when they ask (two-phase close).
    /// None: every step, on a sample of that instant.
    #[pyo3(signature = (period_ms=None))]
    fn set_node_period(&mut self, period_ms: Option<u64>) -> PyResult<()> {
        if let Some(p) = period_ms {
            if p == 0 || p % self.sim.dt_ms() != 0 {
                return Err(verr("node_period_ms", format!("expected a positive multiple of dt_ms = {}", self.sim.dt_ms())));
            }
        }
        self.sim.node_period_ms = period_ms;
        Ok(())
    }
    /// The inverter holds its current while the speaker reports a join in progress.
    fn set_hold_load_during_join(&mut self, on: bool) {
        self.sim.hold_load_during_join = on;
    }
    /// The inverter starts holding this long after the speaker raised join_in_progress (ms).
    fn set_hold_latency_ms(&mut self, ms: u64) {
        self.sim.hold_latency_ms = ms;
    }
    /// Freeze the plant for `ms` from now (a stopped plant process).
    fn freeze_plant(&mut self, ms: u64) {
        self.sim.freeze_plant(ms);
    }
    /// Arm a load step tied to a join (see `mbms.plant.Plant.arm_join_load_step`).
    #[pyo3(signature = (k, after_s, delta_a))]
    fn arm_join_load_step(&mut self, k: Option<usize>, after_s: f64, delta_a: f64) -> PyResult<()> {
        if let Some(k) = k {
            self.check(k)?;
        }
        if !(after_s.is_finite() && after_s >= 0.0) || !delta_a.is_finite() {
            return Err(verr("join_step", "expected after_s >= 0 and a finite delta_a"));
        }
        self.sim.plant_mut().arm_join_load_step(k, after_s, delta_a);
        Ok(())
    }
    fn clear_join_load_steps(&mut self) {
        self.sim.plant_mut().clear_join_load_steps();
    }
    /// (plant time s, ΔA) of every join load step the plant applied.
    fn join_steps_fired(&self) -> Vec<(f64, f64)> {
        self.sim.plant().join_steps_fired().to_vec()
    }
    /// Plant time (s); behind the simulation's clock by the time the plant was frozen.
    fn plant_t_s(&self) -> f64 {
        self.sim.plant().t_s()
    }
    /// Arm a step of the load request (through the inverter: limits, hold) tied to a join.
    #[pyo3(signature = (k, after_ms, delta_a))]
    fn arm_join_request_step(&mut self, k: Option<usize>, after_ms: u64, delta_a: f64) -> PyResult<()> {
        if let Some(k) = k {
            self.check(k)?;
        }
        if !delta_a.is_finite() {
            return Err(verr("request_step", "expected a finite delta_a"));
        }
        self.sim.arm_join_request_step(k, after_ms, delta_a);
        Ok(())
    }
    fn clear_request_steps(&mut self) {
        self.sim.clear_request_steps();
    }
    /// Every physical main close of the plant: [(t_s plant time, string, dv_true_v, inrush_a)].
    fn main_close_events(&self) -> Vec<(f64, usize, f64, f64)> {
        self.sim.plant().main_close_events().iter().map(|e| (e.t_s, e.string, e.dv_true_v, e.inrush_a)).collect()
    }
    /// Node k's current incarnation as the record `mbms_sim::fastsim::NodeState`: {phase,
    /// command, fault, aborts, closes}; None if it is dead.
    fn node_state<'py>(&self, py: Python<'py>, k: usize) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.check(k)?;
        // the one record (mbms_sim::fastsim::NodeState), not a tuple
        self.sim.node_state(k).map(|st| to_py(py, &st)).transpose()
    }
    /// Load current drawn in the last plant step (A).
    fn plant_load_a(&self) -> f64 {
        self.sim.plant().load_a()
    }
    fn kill(&mut self, k: usize) -> PyResult<()> {
        self.check(k)?;
        self.sim.kill(k);
        Ok(())
    }
    fn restart(&mut self, k: usize) -> PyResult<()> {
        self.check(k)?;
        self.sim.restart(k).map_err(PyValueError::new_err)
    }
    /// Inject a plant fault given as JSON (the plant's fault schema).
    fn inject(&mut self, fault_json: &str) -> PyResult<()> {
        let f: PlantFault = serde_json::from_str(fault_json).map_err(|e| verr("fault", e))?;
        self.sim.plant_mut().inject(f).map_err(|e| verr(&format!("fault.{}", e.field), e.message))
    }

    /// (system, strings): arrays of shape (rows, len(system_channels())) and
    /// (rows, n, len(string_channels())).
    fn records<'py>(&self, py: Python<'py>) -> PyResult<(Bound<'py, PyArray2<f64>>, Bound<'py, PyArray3<f64>>)> {
        let ns = SYSTEM_CHANNELS.len();
        let nc = STRING_CHANNELS.len();
        let rows = self.sim.system_rows.len() / ns;
        let sys = PyArray1::from_slice(py, &self.sim.system_rows).reshape([rows, ns])?;
        let st = PyArray1::from_slice(py, &self.sim.string_rows).reshape([rows, self.sim.n(), nc])?;
        Ok((sys, st))
    }

    /// The latest recorded row: (system values, per-string values), or None before the first.
    fn last(&self) -> Option<(Vec<f64>, Vec<Vec<f64>>)> {
        let ns = SYSTEM_CHANNELS.len();
        let nc = STRING_CHANNELS.len();
        let n = self.sim.n();
        if self.sim.system_rows.len() < ns {
            return None;
        }
        let sys = self.sim.system_rows[self.sim.system_rows.len() - ns..].to_vec();
        let tail = &self.sim.string_rows[self.sim.string_rows.len() - n * nc..];
        Some((sys, tail.chunks(nc).map(|c| c.to_vec()).collect()))
    }

    /// Safety/agreement figures: dict with violations, max_string_overcurrent_a,
    /// agree_latencies_ms, closes [(t_ms, string, dv)], energies.
    fn report<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.sim.finish();
        let d = PyDict::new(py);
        let inv = &self.sim.inv;
        d.set_item("violations", PyList::new(py, &inv.violations)?)?;
        d.set_item("max_string_overcurrent_a", inv.max_string_overcurrent_a)?;
        d.set_item("agree_latencies_ms", inv.agree_latencies_ms.clone())?;
        d.set_item("closes", inv.closes.clone())?;
        d.set_item("detect_latencies_ms", inv.detect_latencies_ms.clone())?;
        d.set_item("energy_discharged_j", self.sim.energy_discharged_j)?;
        d.set_item("energy_charged_j", self.sim.energy_charged_j)?;
        let packs = PyList::empty(py);
        for k in 0..self.sim.n() {
            // the one pack report schema (mbms_sim::fastsim::PackReport), not built by hand
            packs.append(pythonize::pythonize(py, &self.sim.pack_report(k))?)?;
        }
        d.set_item("packs", packs)?;
        Ok(d)
    }
}

#[cfg(feature = "sim")]
impl PyFastSim {
    fn check(&self, k: usize) -> PyResult<()> {
        if k >= self.sim.n() {
            return Err(verr("node", format!("expected an index 0..{}", self.sim.n())));
        }
        Ok(())
    }
}

#[cfg(feature = "sim")]
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyFastSim>()?;
    Ok(())
}
