//! `mbms._core.NodeCore`: one BMU's decision logic (engine + peer + contactor sequencing),
//! driven by the real-time runtime (`mbms node`, through `mbms.node.core_adapter`).

use numpy::{IntoPyArray, PyReadonlyArray1};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use mbms_consensus::Contactors;

use mbms_core::cell_model::CellParams;
use mbms_core::node::{NodeCore, NodeInputs};

use super::consensus::event_dict;
use crate::config::{engine_from_py, node_from_py, peer_from_py, raise_field};

fn ids(set: u64) -> Vec<u16> {
    (1..=64u16).filter(|id| set & (1u64 << (id - 1)) != 0).collect()
}

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

    /// One control period. `feedback` = (neg, pos, pre). Returns a dict with contactors,
    /// balance (numpy bool), messages (list of bytes), phase, action, fault, failsafe, limits,
    /// closed_set, live_set, quorum, speaker, soc values and the active faults.
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
    ) -> PyResult<Bound<'py, PyDict>> {
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
        let o = self.core.output();
        let eo = self.core.engine().output();
        let d = PyDict::new(py);
        d.set_item("contactors", (o.contactors.neg, o.contactors.pos, o.contactors.pre))?;
        d.set_item("balance", o.balance.clone().into_pyarray(py))?;
        let msgs = PyList::empty(py);
        for m in &o.messages {
            msgs.append(PyBytes::new(py, m))?;
        }
        d.set_item("messages", msgs)?;
        d.set_item("phase", o.phase as u8)?;
        d.set_item("action", o.action as u8)?;
        d.set_item("fault", o.fault)?;
        d.set_item("failsafe", format!("{:?}", o.failsafe))?;
        d.set_item("local_dcl_a", o.local_dcl_a)?;
        d.set_item("local_ccl_a", o.local_ccl_a)?;
        d.set_item("system_dcl_a", o.system_dcl_a)?;
        d.set_item("system_ccl_a", o.system_ccl_a)?;
        d.set_item("closed_set", ids(o.closed_set))?;
        d.set_item("live_set", ids(o.live_set))?;
        d.set_item("quorum", o.quorum)?;
        d.set_item("speaker", o.speaker)?;
        d.set_item("dcdc_setpoint_a", o.dcdc_setpoint_a)?;
        d.set_item("soc", eo.soc_mean)?;
        d.set_item("soc_min", eo.soc_min)?;
        d.set_item("soc_max", eo.soc_max)?;
        d.set_item("ocv_string_v", eo.ocv_string_v)?;
        d.set_item("r_string_ohm", eo.r_string_ohm)?;
        let faults: Vec<(String, String, u32)> =
            eo.faults.iter().map(|f| (format!("{:?}", f.rule), format!("{:?}", f.level), f.index)).collect();
        d.set_item("faults", faults)?;
        d.set_item("resets", o.resets)?;
        d.set_item("sample_request", o.sample_request)?;
        d.set_item("join_in_progress", o.join_in_progress)?;
        // the peer's events of this step (peer_restarted, duplicate_id, ...): the runtime logs them
        let evs = PyList::empty(py);
        for e in &self.core.peer().output().events {
            evs.append(event_dict(py, e)?)?;
        }
        d.set_item("events", evs)?;
        Ok(d)
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

    /// Peer message counters.
    fn counters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = self.core.peer().counters();
        let d = PyDict::new(py);
        d.set_item("rx_ok", c.rx_ok)?;
        d.set_item("rx_malformed", c.rx_malformed)?;
        d.set_item("rx_unauthenticated", c.rx_unauthenticated)?;
        d.set_item("rx_forged", c.rx_forged)?;
        d.set_item("rx_old_boot", c.rx_old_boot)?;
        d.set_item("rx_unknown_sender", c.rx_unknown_sender)?;
        d.set_item("rx_own_echo", c.rx_own_echo)?;
        d.set_item("rx_duplicate", c.rx_duplicate)?;
        d.set_item("rx_stale", c.rx_stale)?;
        d.set_item("duplicate_id", c.duplicate_id)?;
        d.set_item("tx", c.tx)?;
        d.set_item("peers_lost", c.peers_lost)?;
        Ok(d)
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyNodeCore>()?;
    Ok(())
}
