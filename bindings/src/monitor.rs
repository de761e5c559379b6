//! `mbms._core.SafetyMonitor`: the one safety monitor (`mbms_sim::monitor`) for processes mode,
//! which observes the plant's truth and the nodes' telemetry from outside. Same rules and
//! margins as the protocol and fast simulators.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use mbms_consensus::{Contactors, Phase};
use mbms_sim::monitor::{Monitor, MonitorConfig, NodeReport, PlantSnapshot, StringTruth, Violation};

use crate::config::{peer_from_py, to_py};

/// Violations as the one serde record of `mbms_sim::monitor::Violation`: a list of dicts
/// `{rule, t_s, detail, what: {kind, ...}}`.
fn violations_py<'py>(py: Python<'py>, v: &[Violation]) -> PyResult<Bound<'py, PyAny>> {
    to_py(py, &v)
}

fn t_us(t_s: f64) -> PyResult<u64> {
    if !(t_s.is_finite() && t_s >= 0.0) {
        return Err(PyValueError::new_err(format!("t_s: expected a time >= 0 s, got {t_s}")));
    }
    Ok((t_s * 1e6).round() as u64)
}

#[pyclass(name = "SafetyMonitor", module = "mbms._core")]
pub struct PySafetyMonitor {
    m: Monitor,
    truth: Vec<StringTruth>,
}

#[pymethods]
impl PySafetyMonitor {
    /// `config`: the peer configuration the nodes run (the dict `ConsensusPeer` takes).
    #[new]
    fn new(config: &Bound<'_, PyDict>) -> PyResult<Self> {
        let cfg = peer_from_py(config.as_any(), "system", None, false)?;
        let n = cfg.members.len();
        Ok(Self { m: Monitor::new(MonitorConfig::from_peer(&cfg, n, 0)), truth: Vec::with_capacity(n) })
    }

    /// Node `k`'s state as observed (its telemetry): `phase` the consensus phase 0..7 (None if
    /// not heard), `reports_open` whether it reports itself isolated or fail-safe.
    #[pyo3(signature = (k, alive, phase = None, reports_open = false, system_dcl_a = None, system_ccl_a = None,
                        local_dcl_a = None, local_ccl_a = None, closed_count = None, limits_binding = false))]
    #[allow(clippy::too_many_arguments)]
    fn node_report(
        &mut self,
        k: usize,
        alive: bool,
        phase: Option<u8>,
        reports_open: bool,
        system_dcl_a: Option<f64>,
        system_ccl_a: Option<f64>,
        local_dcl_a: Option<f64>,
        local_ccl_a: Option<f64>,
        closed_count: Option<u32>,
        limits_binding: bool,
    ) -> PyResult<()> {
        if k >= self.m.config().members {
            return Err(PyValueError::new_err(format!("k: expected a node index 0..{}, got {k}", self.m.config().members)));
        }
        if phase.is_some_and(|p| p > 7) {
            return Err(PyValueError::new_err(format!("phase: expected a consensus phase 0..7, got {phase:?}")));
        }
        self.m.set_report(
            k,
            NodeReport {
                alive,
                phase: phase.map(Phase::from_u8),
                reports_open,
                system_dcl_a,
                system_ccl_a,
                local_dcl_a,
                local_ccl_a,
                closed_count,
                limits_binding,
                ..NodeReport::default()
            },
        );
        Ok(())
    }

    /// Plant event: string `k`'s main contactor closed with the true |V_bus − V_string| `dv_v`.
    fn main_close_event(&mut self, k: usize, dv_v: f64) {
        self.m.main_close_event(k, dv_v);
    }

    /// The plant's truth at `t_s`: contactor states `(neg, pos, pre)`, string voltages and
    /// currents per string. `healthy`: the network is connected and every node is heard.
    /// Returns the violations found at this instant (records, see `violations`).
    #[allow(clippy::too_many_arguments)]
    fn plant_step<'py>(
        &mut self,
        py: Python<'py>,
        t_s: f64,
        v_bus_v: f64,
        contactors: Vec<(bool, bool, bool)>,
        v_string_v: Vec<f64>,
        i_a: Vec<f64>,
        healthy: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let n = self.m.config().members;
        if contactors.len() != n || v_string_v.len() != n || i_a.len() != n {
            return Err(PyValueError::new_err(format!(
                "contactors, v_string_v, i_a: expected {n} strings each, got {}, {}, {}",
                contactors.len(),
                v_string_v.len(),
                i_a.len()
            )));
        }
        let t = t_us(t_s)?;
        self.truth.clear();
        for k in 0..n {
            let (neg, pos, pre) = contactors[k];
            self.truth.push(StringTruth { contactors: Contactors { neg, pos, pre }, v_string_v: v_string_v[k], i_a: i_a[k], state: None });
        }
        let before = self.m.violations().len();
        let plant = PlantSnapshot { v_bus_v, strings: &self.truth };
        self.m.plant_step(t, &plant, healthy);
        violations_py(py, &self.m.violations()[before..])
    }

    /// End of the run: a disagreement still open counts as an agreement latency so far.
    fn finish(&mut self, t_s: f64) -> PyResult<()> {
        self.m.finish(t_us(t_s)?);
        Ok(())
    }

    /// Every violation so far: `{rule, t_s, detail, what: {kind, ...}}` each.
    fn violations<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        violations_py(py, self.m.violations())
    }

    /// Figures: `max_string_overcurrent_a`, `agree_latencies_ms`, `closes` [(t_ms, string, dv_v)].
    fn figures<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let f = self.m.figures();
        let d = PyDict::new(py);
        d.set_item("max_string_overcurrent_a", f.max_string_overcurrent_a)?;
        d.set_item("agree_latencies_ms", f.agree_latencies_us.iter().map(|&t| t as f64 / 1000.0).collect::<Vec<_>>())?;
        d.set_item("closes", f.closes.iter().map(|&(t, k, dv)| ((t / 1000) as i64, k, dv)).collect::<Vec<_>>())?;
        Ok(d)
    }

    /// The monitor's margins (documented in `sim/src/monitor.rs`).
    #[staticmethod]
    fn margins<'py>(py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        use mbms_sim::monitor as m;
        let d = PyDict::new(py);
        d.set_item("s3_dv_margin_v", m::S3_DV_MARGIN_V)?;
        d.set_item("limit_resolution_a", m::LIMIT_RESOLUTION_A)?;
        d.set_item("s5_bound_periods", m::S5_BOUND_PERIODS)?;
        d.set_item("s1_open_deadline_s", m::S1_OPEN_DEADLINE_US as f64 * 1e-6)?;
        Ok(d)
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PySafetyMonitor>()?;
    Ok(())
}
