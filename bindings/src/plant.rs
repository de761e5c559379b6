//! `mbms._core.Plant`: the parallel-string plant simulator (see `mbms_sim::plant`).
//!
//! Description errors are raised as `ValueError((field, message))` so that the Python layer
//! (`mbms.plant`) can turn them into `ConfigError` naming the dotted field.

use numpy::PyArray1;
use pyo3::exceptions::{PyIndexError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use mbms_core::cell_model::CellParams;
use mbms_sim::plant::{Plant, PlantConfig, PlantConfigError, PlantFault, StringCommand};

fn cfg_error(e: PlantConfigError) -> PyErr {
    PyValueError::new_err((e.field, e.message))
}

/// Parse and validate a plant description (JSON text); return it with every default filled in.
#[pyfunction]
fn plant_config_normalize(config_json: &str) -> PyResult<String> {
    PlantConfig::from_json_str(config_json).map(|c| c.to_json()).map_err(cfg_error)
}

#[pyclass(name = "Plant", module = "mbms._core")]
pub struct PyPlant {
    plant: Plant,
}

impl PyPlant {
    fn check(&self, k: usize) -> PyResult<()> {
        if k < self.plant.n_strings() {
            Ok(())
        } else {
            Err(PyIndexError::new_err(format!("string {k} out of range 0..{}", self.plant.n_strings())))
        }
    }

    fn per_string<'py>(&self, py: Python<'py>, f: impl Fn(&Plant, usize) -> f64) -> Bound<'py, PyArray1<f64>> {
        let v: Vec<f64> = (0..self.plant.n_strings()).map(|k| f(&self.plant, k)).collect();
        PyArray1::from_vec(py, v)
    }
}

#[pymethods]
impl PyPlant {
    /// `config_json`: the description (JSON); `cell_tomls`: the text of each string's cell
    /// parameter file, in string order.
    #[new]
    fn new(config_json: &str, cell_tomls: Vec<String>, seed: u64) -> PyResult<Self> {
        let cfg = PlantConfig::from_json_str(config_json).map_err(cfg_error)?;
        let cells = cell_tomls
            .iter()
            .enumerate()
            .map(|(k, t)| {
                CellParams::from_toml_str(t).map_err(|e| {
                    PyValueError::new_err((format!("strings[{k}].cell"), format!("cell parameter file: {e}")))
                })
            })
            .collect::<PyResult<Vec<_>>>()?;
        let plant = Plant::new(cfg, cells, seed).map_err(cfg_error)?;
        Ok(Self { plant })
    }

    #[getter]
    fn n_strings(&self) -> usize {
        self.plant.n_strings()
    }

    #[getter]
    fn t_s(&self) -> f64 {
        self.plant.t_s()
    }

    fn series(&self, k: usize) -> PyResult<usize> {
        self.check(k)?;
        Ok(self.plant.series(k))
    }

    /// Advance by `dt_s` (GIL released).
    fn step(&mut self, py: Python<'_>, dt_s: f64) -> PyResult<()> {
        if !(dt_s > 0.0 && dt_s.is_finite()) {
            return Err(PyValueError::new_err(format!("dt_s: expected a positive finite number, got {dt_s}")));
        }
        let plant = &mut self.plant;
        py.allow_threads(|| plant.step(dt_s));
        Ok(())
    }

    /// `n_steps` steps of `dt_s` with the commands and load unchanged (GIL released); with
    /// `measure_all`, every string is also measured after each step (as BMUs would).
    #[pyo3(signature = (dt_s, n_steps, measure_all=false))]
    fn run(&mut self, py: Python<'_>, dt_s: f64, n_steps: usize, measure_all: bool) -> PyResult<()> {
        if !(dt_s > 0.0 && dt_s.is_finite()) {
            return Err(PyValueError::new_err(format!("dt_s: expected a positive finite number, got {dt_s}")));
        }
        let plant = &mut self.plant;
        py.allow_threads(|| {
            for _ in 0..n_steps {
                plant.step(dt_s);
                if measure_all {
                    for k in 0..plant.n_strings() {
                        std::hint::black_box(plant.measure(k));
                    }
                }
            }
        });
        Ok(())
    }

    #[pyo3(signature = (k, neg, pos, pre, balance=None, dcdc_setpoint_a=None))]
    fn set_command(
        &mut self,
        k: usize,
        neg: bool,
        pos: bool,
        pre: bool,
        balance: Option<Vec<bool>>,
        dcdc_setpoint_a: Option<f64>,
    ) -> PyResult<()> {
        self.check(k)?;
        let balance = balance.unwrap_or_default();
        let s = self.plant.series(k);
        if !balance.is_empty() && balance.len() != s {
            return Err(PyValueError::new_err(format!("balance: expected {s} flags (one per series element), got {}", balance.len())));
        }
        if let Some(sp) = dcdc_setpoint_a {
            if !sp.is_finite() {
                return Err(PyValueError::new_err("dcdc_setpoint_a: expected a finite number"));
            }
        }
        self.plant.set_command(k, &StringCommand { neg, pos, pre, balance, dcdc_setpoint_a });
        Ok(())
    }

    fn set_load_a(&mut self, i_a: f64) -> PyResult<()> {
        if !i_a.is_finite() {
            return Err(PyValueError::new_err("i_a: expected a finite number"));
        }
        self.plant.set_load_a(i_a);
        Ok(())
    }

    fn set_load_w(&mut self, p_w: f64) -> PyResult<()> {
        if !p_w.is_finite() {
            return Err(PyValueError::new_err("p_w: expected a finite number"));
        }
        self.plant.set_load_w(p_w);
        Ok(())
    }

    fn clear_load_override(&mut self) {
        self.plant.clear_load_override();
    }

    /// Inject a fault now; `fault_json` is one fault table (`{"kind": ..., "string": ...}`).
    fn inject(&mut self, fault_json: &str) -> PyResult<()> {
        let mut de = serde_json::Deserializer::from_str(fault_json);
        let f: PlantFault = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let p = e.path().to_string();
            PyValueError::new_err((if p == "." { "fault".to_string() } else { format!("fault.{p}") }, e.inner().to_string()))
        })?;
        self.plant.inject(f).map_err(cfg_error)
    }

    /// (t_s, v_cell_v, t_cell_c, i_a, v_string_v, v_bus_v, (neg, pos, pre), valid);
    /// fresh=True converts current, string and bus voltage now (on-demand conversion).
    #[allow(clippy::type_complexity)]
    #[pyo3(signature = (k, fresh=false))]
    fn measure<'py>(
        &mut self,
        py: Python<'py>,
        k: usize,
        fresh: bool,
    ) -> PyResult<(f64, Bound<'py, PyArray1<f64>>, Bound<'py, PyArray1<f64>>, f64, f64, f64, (bool, bool, bool), bool)> {
        self.check(k)?;
        let m = if fresh { self.plant.measure_fresh(k) } else { self.plant.measure(k) };
        Ok((
            m.t_s,
            PyArray1::from_slice(py, &m.v_cell_v),
            PyArray1::from_slice(py, &m.t_cell_c),
            m.i_a,
            m.v_string_v,
            m.v_bus_v,
            (m.feedback.neg, m.feedback.pos, m.feedback.pre),
            m.valid,
        ))
    }

    /// Arm a load step tied to a join: when string `k` (any if None) closes its precharge
    /// relay, the load changes by `delta_a` `after_s` later (and stays changed). Fires once.
    #[pyo3(signature = (k, after_s, delta_a))]
    fn arm_join_load_step(&mut self, k: Option<usize>, after_s: f64, delta_a: f64) -> PyResult<()> {
        if let Some(k) = k {
            self.check(k)?;
        }
        if !(after_s.is_finite() && after_s >= 0.0) || !delta_a.is_finite() {
            return Err(PyValueError::new_err("arm_join_load_step: expected after_s >= 0 and a finite delta_a"));
        }
        self.plant.arm_join_load_step(k, after_s, delta_a);
        Ok(())
    }

    /// Remove the join load steps, armed and applied (the load returns to its profile).
    fn clear_join_load_steps(&mut self) {
        self.plant.clear_join_load_steps();
    }

    /// (plant time, ΔA) of every join load step applied so far.
    fn join_steps_fired(&self) -> Vec<(f64, f64)> {
        self.plant.join_steps_fired().to_vec()
    }

    // ---- truth ----

    /// Every physical main close so far: [(t_s, string, dv_true_v, inrush_a)], recorded at the
    /// instant the contact closed (inrush NaN until the next step has run).
    fn main_close_events(&self) -> Vec<(f64, usize, f64, f64)> {
        self.plant.main_close_events().iter().map(|e| (e.t_s, e.string, e.dv_true_v, e.inrush_a)).collect()
    }

    fn v_bus_v(&self) -> f64 {
        self.plant.v_bus_v()
    }

    fn string_current_a<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f64>> {
        self.per_string(py, |p, k| p.string_current_a(k))
    }

    fn string_peak_current_a<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f64>> {
        self.per_string(py, |p, k| p.string_peak_current_a(k))
    }

    fn string_ocv_v<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f64>> {
        self.per_string(py, |p, k| p.string_ocv_v(k))
    }

    fn string_voltage_v<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f64>> {
        self.per_string(py, |p, k| p.string_voltage_v(k))
    }

    /// (E_v, R_ohm) arrays: the Thevenin sources of the last step.
    fn string_thevenin<'py>(&self, py: Python<'py>) -> (Bound<'py, PyArray1<f64>>, Bound<'py, PyArray1<f64>>) {
        (self.per_string(py, |p, k| p.string_thevenin(k).0), self.per_string(py, |p, k| p.string_thevenin(k).1))
    }

    fn cell_soc<'py>(&self, py: Python<'py>, k: usize) -> PyResult<Bound<'py, PyArray1<f64>>> {
        self.check(k)?;
        Ok(PyArray1::from_slice(py, self.plant.cell_soc(k)))
    }

    fn cell_temp_c<'py>(&self, py: Python<'py>, k: usize) -> PyResult<Bound<'py, PyArray1<f64>>> {
        self.check(k)?;
        Ok(PyArray1::from_slice(py, self.plant.cell_temp_c(k)))
    }

    fn cell_capacity_scale<'py>(&self, py: Python<'py>, k: usize) -> PyResult<Bound<'py, PyArray1<f64>>> {
        self.check(k)?;
        Ok(PyArray1::from_vec(py, self.plant.cell_capacity_scale(k)))
    }

    fn contactor_state(&self, k: usize) -> PyResult<(bool, bool, bool)> {
        self.check(k)?;
        let c = self.plant.contactor_state(k);
        Ok((c.neg, c.pos, c.pre))
    }

    fn load_a(&self) -> f64 {
        self.plant.load_a()
    }

    fn load_limited(&self) -> bool {
        self.plant.load_limited()
    }

    fn capacitor_current_a(&self) -> f64 {
        self.plant.capacitor_current_a()
    }

    fn bleed_current_a(&self) -> f64 {
        self.plant.bleed_current_a()
    }

    /// Cumulative energies (J): cells_out, load, loss_cells, loss_wiring, loss_internal,
    /// loss_bus_bleed, loss_dcdc, bus_capacitor, bus_capacitor_initial, residual.
    fn energy<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let e = self.plant.energy();
        let d = PyDict::new(py);
        d.set_item("cells_out", e.cells_out)?;
        d.set_item("load", e.load)?;
        d.set_item("loss_cells", e.loss_cells)?;
        d.set_item("loss_wiring", e.loss_wiring)?;
        d.set_item("loss_internal", e.loss_internal)?;
        d.set_item("loss_bus_bleed", e.loss_bus_bleed)?;
        d.set_item("loss_dcdc", e.loss_dcdc)?;
        d.set_item("bus_capacitor", e.bus_capacitor)?;
        d.set_item("bus_capacitor_initial", e.bus_capacitor_initial)?;
        d.set_item("residual", e.residual())?;
        Ok(d)
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyPlant>()?;
    m.add_function(wrap_pyfunction!(plant_config_normalize, m)?)?;
    Ok(())
}
