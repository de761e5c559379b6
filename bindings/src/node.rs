//! `mbms._core.NodeCore`: one BMU's decision logic (engine + peer + contactor sequencing),
//! driven by the real-time runtime (`mbms node`, through `mbms.node.core_adapter`).

use numpy::PyReadonlyArray1;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use mbms_consensus::Contactors;

use mbms_core::cell_model::CellParams;
use mbms_core::node::{NodeCore, NodeInputs};

use crate::config::{engine_from_py, node_from_py, peer_from_py, raise_field};

#[pyclass(name = "NodeCore", module = "mbms._core", unsendable)]
pub struct PyNodeCore {
    core: NodeCore,
}

#[pymethods]
impl PyNodeCore {
    /// engine: the engine tables (dict); cell_toml: the cell file's text; peer: the consensus
    /// PeerConfig (dict, incl. node_id and members); node: the `[node]` settings (dict). Errors
    /// are `mbms.errors.ConfigError` naming the field. `keys`: the system's message keys (the
    /// first signs), None = no authentication (an explicit, logged setting of the caller).
    #[new]
    #[pyo3(signature = (engine, cell_toml, peer, node, incarnation, keys))]
    fn new(
        engine: &Bound<'_, PyAny>,
        cell_toml: &str,
        peer: &Bound<'_, PyAny>,
        node: &Bound<'_, PyAny>,
        incarnation: u64,
        keys: Option<Vec<Vec<u8>>>,
    ) -> PyResult<Self> {
        let py = engine.py();
        let engine = engine_from_py(engine, None)?;
        let cell = CellParams::from_toml_str(cell_toml).map_err(|e| raise_field(py, "pack.cell", format!("{}: {}", e.field, e.message), None))?;
        let peer = peer_from_py(peer, "protocol", None, true)?;
        let node_cfg = node_from_py(node, "node", None)?;
        let auth = crate::consensus::auth_from_py(peer.system_id, keys)?;
        let core = NodeCore::new(node_cfg, engine, cell, peer, incarnation, auth).map_err(|e| raise_field(py, e.field, e.message, None))?;
        Ok(Self { core })
    }

    #[getter]
    fn node_id(&self) -> u16 {
        self.core.node_id()
    }

    #[getter]
    fn n_cells(&self) -> usize {
        self.core.engine().n_cells()
    }

    #[getter]
    fn n_temps(&self) -> usize {
        self.core.engine().n_temps()
    }

    /// One control period. `feedback` = (neg, pos, pre). Returns the node's output as the one
    /// schema `mbms_core::node::NodeReport` serializes (contactors, balance, messages as bytes,
    /// phase name, action, failsafe, limits, closed/live ids, soc, faults, events).
    #[pyo3(signature = (t_ms, meas_t_ms, v_cell_v, t_cell_c, i_a, v_string_v, v_bus_v, feedback, valid))]
    #[allow(clippy::too_many_arguments)]
    fn step<'py>(
        &mut self,
        py: Python<'py>,
        t_ms: u64,
        meas_t_ms: u64,
        v_cell_v: PyReadonlyArray1<'_, f64>,
        t_cell_c: PyReadonlyArray1<'_, f64>,
        i_a: f64,
        v_string_v: f64,
        v_bus_v: f64,
        feedback: (bool, bool, bool),
        valid: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let v = v_cell_v.as_slice().map_err(|_| PyTypeError::new_err("v_cell_v: expected a contiguous float64 array"))?;
        let t = t_cell_c.as_slice().map_err(|_| PyTypeError::new_err("t_cell_c: expected a contiguous float64 array"))?;
        let inp = NodeInputs {
            t_ms,
            meas_t_ms,
            v_cell_v: v,
            t_cell_c: t,
            i_a,
            v_string_v,
            v_bus_v,
            feedback: Contactors { neg: feedback.0, pos: feedback.1, pre: feedback.2 },
            valid,
        };
        let core = &mut self.core;
        py.allow_threads(|| {
            core.step(&inp);
        });
        // the one output schema (mbms_core::node::NodeReport), never built by hand here
        Ok(pythonize::pythonize(py, &self.core.report())?)
    }

    /// The boot counter this core's messages carry (it moves on when the message counter
    /// would wrap: the runtime persists it so that the next start is higher).
    #[getter]
    fn incarnation(&self) -> u16 {
        self.core.peer().incarnation_wire()
    }

    /// A peer message; False if it was rejected (counted by the peer).
    fn receive(&mut self, t_ms: u64, payload: &[u8]) -> bool {
        self.core.receive(t_ms, payload)
    }

    /// The runtime forced all contactors open itself; the next step re-sequences.
    fn fail_safe(&mut self) {
        self.core.fail_safe();
    }

    fn reset_faults(&mut self, t_ms: u64) {
        self.core.reset_faults(t_ms);
    }

    fn export_state<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.core.engine().export_state())
    }

    /// Returns what was dropped as implausible (empty: all restored).
    fn import_state(&mut self, data: &[u8]) -> PyResult<Vec<String>> {
        self.core.engine_mut().import_state(data).map_err(|e| PyValueError::new_err(e.to_string()))
    }

    /// Per sender: (sender, boot, last message counter accepted), to persist with the state.
    fn receive_counters(&self) -> Vec<(u16, u16, u32)> {
        crate::consensus::receive_counters_to_py(self.core.peer())
    }

    /// Restore persisted receive counters before the first message (only stricter); returns
    /// how many entries were taken.
    fn restore_receive_counters(&mut self, counters: Vec<(u16, u16, u32)>) -> usize {
        self.core.restore_receive_counters(&crate::consensus::receive_counters_from_py(counters))
    }

    /// Peer message counters.
    fn counters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(pythonize::pythonize(py, &self.core.peer().counters())?)
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyNodeCore>()?;
    Ok(())
}
