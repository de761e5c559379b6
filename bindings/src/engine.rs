//! `mbms._core.Engine`: the pack engine. Arrays come in as read-only numpy views (no copy);
//! the GIL is released while the Rust step runs.

use numpy::{IntoPyArray, PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use mbms_core::cell_model::CellParams;
use mbms_core::engine::Engine;
use mbms_core::protection::{Level, Rule};

use crate::config::{engine_from_py, raise_field};

fn slice<'a>(a: &'a PyReadonlyArray1<'_, f64>, name: &str) -> PyResult<&'a [f64]> {
    a.as_slice().map_err(|_| PyTypeError::new_err(format!("{name}: expected a contiguous float64 array")))
}

#[pyclass(name = "Engine", module = "mbms._core")]
pub struct PyEngine {
    engine: Engine,
}

#[pymethods]
impl PyEngine {
    /// `config`: the engine tables (pack, estimator, protection, limits, balancing) as a dict
    /// (through `mbms._core` config conversion: errors are `mbms.errors.ConfigError`);
    /// `cell_toml`: the text of the cell parameter file.
    #[new]
    #[pyo3(signature = (config, cell_toml, source = None))]
    fn new(config: &Bound<'_, PyAny>, cell_toml: &str, source: Option<&str>) -> PyResult<Self> {
        let py = config.py();
        let cfg = engine_from_py(config, source)?;
        let cell = CellParams::from_toml_str(cell_toml).map_err(|e| raise_field(py, "pack.cell", format!("{}: {}", e.field, e.message), source))?;
        let engine = Engine::new(cfg, cell).map_err(|e| raise_field(py, e.field, e.message, source))?;
        Ok(Self { engine })
    }

    #[getter]
    fn n_cells(&self) -> usize {
        self.engine.n_cells()
    }

    #[getter]
    fn n_temps(&self) -> usize {
        self.engine.n_temps()
    }

    /// One step. Raises ValueError("argument: message") on bad input.
    fn step(
        &mut self,
        py: Python<'_>,
        t_s: f64,
        v_cell_v: PyReadonlyArray1<'_, f64>,
        t_cell_c: PyReadonlyArray1<'_, f64>,
        i_a: f64,
    ) -> PyResult<()> {
        let v = slice(&v_cell_v, "v_cell_v")?;
        let t = slice(&t_cell_c, "t_cell_c")?;
        let engine = &mut self.engine;
        py.allow_threads(|| engine.step(t_s, v, t, i_a))
            .map_err(|e| PyValueError::new_err(e.to_string()))
    }

    /// Run many steps in Rust (trace replay, benchmarks): rows of `v_cell_v` (steps × cells)
    /// and `t_cell_c` (steps × sensors). Returns the SOC history (steps × cells) if
    /// `record_soc`, else None. Stops at the first bad row with ValueError naming it.
    #[pyo3(signature = (t_s, v_cell_v, t_cell_c, i_a, record_soc = false))]
    fn step_many<'py>(
        &mut self,
        py: Python<'py>,
        t_s: PyReadonlyArray1<'_, f64>,
        v_cell_v: PyReadonlyArray2<'_, f64>,
        t_cell_c: PyReadonlyArray2<'_, f64>,
        i_a: PyReadonlyArray1<'_, f64>,
        record_soc: bool,
    ) -> PyResult<Option<Bound<'py, PyArray2<f64>>>> {
        let ts = slice(&t_s, "t_s")?;
        let is = slice(&i_a, "i_a")?;
        let steps = ts.len();
        let (n, nt) = (self.engine.n_cells(), self.engine.n_temps());
        let vs = v_cell_v.as_slice().map_err(|_| PyTypeError::new_err("v_cell_v: expected a C-contiguous float64 array"))?;
        let tcs = t_cell_c.as_slice().map_err(|_| PyTypeError::new_err("t_cell_c: expected a C-contiguous float64 array"))?;
        if is.len() != steps || v_cell_v.shape() != [steps, n] || t_cell_c.shape() != [steps, nt] {
            return Err(PyValueError::new_err(format!(
                "shapes: expected t_s ({steps},), v_cell_v ({steps}, {n}), t_cell_c ({steps}, {nt}), i_a ({steps},); got {:?}, {:?}, {:?}",
                v_cell_v.shape(), t_cell_c.shape(), is.len()
            )));
        }
        let engine = &mut self.engine;
        let hist = py.allow_threads(|| -> Result<Vec<f64>, String> {
            let mut hist = if record_soc { Vec::with_capacity(steps * n) } else { Vec::new() };
            for k in 0..steps {
                engine
                    .step(ts[k], &vs[k * n..(k + 1) * n], &tcs[k * nt..(k + 1) * nt], is[k])
                    .map_err(|e| format!("row {k}: {e}"))?;
                if record_soc {
                    hist.extend_from_slice(&engine.output().soc);
                }
            }
            Ok(hist)
        })
        .map_err(PyValueError::new_err)?;
        if record_soc {
            let arr = hist.into_pyarray(py).reshape([steps, n])?;
            Ok(Some(arr))
        } else {
            Ok(None)
        }
    }

    /// The outputs of the last step as a dict (arrays are copies).
    fn output<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let o = self.engine.output();
        let d = PyDict::new(py);
        d.set_item("action", o.action as u8)?;
        // the one fault form (mbms_core::protection::ActiveFault's Serialize)
        d.set_item("faults", pythonize::pythonize(py, &o.faults)?)?;
        d.set_item("soc", PyArray1::from_slice(py, &o.soc))?;
        d.set_item("soc_sigma", PyArray1::from_slice(py, &o.soc_sigma))?;
        d.set_item("soc_cc", PyArray1::from_slice(py, &o.soc_cc))?;
        d.set_item("balance", PyArray1::from_slice(py, &o.balance))?;
        d.set_item("capacity_ah", PyArray1::from_slice(py, &o.capacity_ah))?;
        for (k, v) in [
            ("soc_min", o.soc_min),
            ("soc_max", o.soc_max),
            ("soc_mean", o.soc_mean),
            ("soe_wh", o.soe_wh),
            ("ocv_string_v", o.ocv_string_v),
            ("r_string_ohm", o.r_string_ohm),
            ("dcl_a", o.dcl_a),
            ("ccl_a", o.ccl_a),
            ("dcl_peak_a", o.dcl_peak_a),
            ("ccl_peak_a", o.ccl_peak_a),
            ("soh_capacity", o.soh_capacity),
            ("soh_resistance", o.soh_resistance),
        ] {
            d.set_item(k, v)?;
        }
        let transfers = PyList::empty(py);
        for t in &o.transfers {
            transfers.append((t.from, t.to, t.amount_ah))?;
        }
        d.set_item("transfers", transfers)?;
        Ok(d)
    }

    /// The packed cell tables and scalar cell parameters the engine uses (for the numpy
    /// reference implementation and for tests).
    fn tables<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let t = self.engine.tables();
        let c = self.engine.cell();
        let d = PyDict::new(py);
        d.set_item("ocv", PyArray1::from_slice(py, &t.ocv))?;
        d.set_item("docv_dt", PyArray1::from_slice(py, &t.docv_dt))?;
        d.set_item("energy", PyArray1::from_slice(py, &t.energy))?;
        d.set_item("temps", PyArray1::from_slice(py, &t.temps))?;
        let rows = |r: &Vec<Vec<f64>>| -> PyResult<Bound<'py, PyArray2<f64>>> {
            Ok(PyArray2::from_vec2(py, r)?)
        };
        d.set_item("r0", rows(&t.r0)?)?;
        d.set_item("r1", rows(&t.r1)?)?;
        d.set_item("has_rc2", c.has_rc2())?;
        match &t.r2 {
            Some(r2) => d.set_item("r2", rows(r2)?)?,
            None => d.set_item("r2", py.None())?,
        }
        let (tt, tau1, tau2) = c.tau_tables();
        d.set_item("tau_temps", PyArray1::from_slice(py, tt))?;
        d.set_item("tau1_s", PyArray1::from_slice(py, tau1))?;
        match tau2 {
            Some(t2) => d.set_item("tau2_s", PyArray1::from_slice(py, t2))?,
            None => d.set_item("tau2_s", py.None())?,
        }
        d.set_item("hysteresis_gamma", c.hysteresis_gamma)?;
        d.set_item("model_temp_deadband_c", mbms_core::engine::MODEL_TEMP_DEADBAND_C)?;
        d.set_item("t_ref_c", c.t_ref_c)?;
        d.set_item("capacity_ah", c.capacity_ah)?;
        d.set_item("v_min_v", c.v_min_v)?;
        d.set_item("v_max_v", c.v_max_v)?;
        d.set_item("coulombic_efficiency", c.coulombic_efficiency)?;
        d.set_item("hysteresis_m_v", c.hysteresis_m_v)?;
        let ce = &c.estimator;
        d.set_item("model_error_v", ce.model_error_v)?;
        d.set_item("model_error_v_per_c", ce.model_error_v_per_c)?;
        d.set_item("model_error_corr_s", ce.model_error_corr_s)?;
        d.set_item("model_error_relax_s", ce.model_error_relax_s)?;
        d.set_item("r0_step_min_c", ce.r0_step_min_c)?;
        d.set_item("r0_step_ct_fraction", ce.r0_step_ct_fraction)?;
        d.set_item("r0_step_i0_c", ce.r0_step_i0_c)?;
        d.set_item("r0_step_i0_ea_kj_per_mol", ce.r0_step_i0_ea_kj_per_mol)?;
        d.set_item("r0_step_pulse_ratio", ce.r0_step_pulse_ratio)?;
        d.set_item("r0_soh_min_temp_c", ce.r0_soh_min_temp_c)?;
        d.set_item("r0_ratio_rc_share", ce.r0_ratio_rc_share)?;
        d.set_item("soc_sigma_floor", ce.soc_sigma_floor)?;
        d.set_item("rc_polarisation_rel_error", ce.rc_polarisation_rel_error)?;
        d.set_item("rc_time_constant_rel_error", ce.rc_time_constant_rel_error)?;
        d.set_item("r0_prior_weight", mbms_core::soh::R0_PRIOR_WEIGHT)?;
        d.set_item("r0_count_cap", mbms_core::soh::R0_COUNT_CAP)?;
        d.set_item("gas_constant_j_per_mol_k", mbms_core::soh::R_GAS)?;
        d.set_item("offset_horizon_s", mbms_core::soc_ekf::OFFSET_HORIZON_S)?;
        d.set_item("offset_settle_s", mbms_core::soc_ekf::OFFSET_SETTLE_S)?;
        Ok(d)
    }

    fn reset_faults(&mut self, t_s: f64) {
        self.engine.reset_faults(t_s);
    }

    fn export_state<'py>(&self, py: Python<'py>) -> Bound<'py, pyo3::types::PyBytes> {
        pyo3::types::PyBytes::new(py, &self.engine.export_state())
    }

    /// Returns what was dropped as implausible (empty: all restored).
    fn import_state(&mut self, data: &[u8]) -> PyResult<Vec<String>> {
        self.engine.import_state(data).map_err(|e| PyValueError::new_err(e.to_string()))
    }
}

/// Rule names in discriminant order.
#[pyfunction]
fn engine_rules() -> Vec<&'static str> {
    Rule::ALL.iter().map(|r| r.name()).collect()
}

/// Protection level names, lowest first (`Level::name`): the one spelling of a fault's level.
#[pyfunction]
fn engine_levels() -> Vec<&'static str> {
    Level::ALL.iter().map(|l| l.name()).collect()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyEngine>()?;
    m.add_function(wrap_pyfunction!(engine_rules, m)?)?;
    m.add_function(wrap_pyfunction!(engine_levels, m)?)?;
    Ok(())
}
