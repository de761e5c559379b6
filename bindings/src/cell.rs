//! `mbms._core.CellModel`: a parsed cell parameter set.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use mbms_core::cell_model::{CellParams, CellScale, CellState};

/// A cell parameter set (parsed from the text of a `hw/cells/*.toml` file).
#[pyclass(name = "CellModel", module = "mbms._core", frozen)]
pub struct PyCellModel {
    pub params: CellParams,
}

#[pymethods]
impl PyCellModel {
    #[staticmethod]
    fn from_toml(text: &str) -> PyResult<Self> {
        CellParams::from_toml_str(text)
            .map(|params| Self { params })
            .map_err(|e| PyValueError::new_err(e.to_string()))
    }

    #[getter]
    fn name(&self) -> &str {
        &self.params.name
    }
    #[getter]
    fn chemistry(&self) -> &str {
        &self.params.chemistry
    }
    #[getter]
    fn source(&self) -> &str {
        &self.params.source
    }
    #[getter]
    fn capacity_ah(&self) -> f64 {
        self.params.capacity_ah
    }
    #[getter]
    fn v_min_v(&self) -> f64 {
        self.params.v_min_v
    }
    #[getter]
    fn v_max_v(&self) -> f64 {
        self.params.v_max_v
    }

    fn ocv(&self, soc: f64, temp_c: f64) -> f64 {
        self.params.ocv(soc, temp_c)
    }
    fn soc_from_ocv(&self, v: f64, temp_c: f64) -> f64 {
        self.params.soc_from_ocv(v, temp_c)
    }
    fn r0(&self, soc: f64, temp_c: f64) -> f64 {
        self.params.r0(soc, temp_c)
    }

    /// Simulate one cell from rest at `soc0` through a current profile (discharge
    /// positive) sampled every `dt_s`; returns (terminal voltage, soc) lists.
    fn simulate(
        &self,
        soc0: f64,
        current_a: Vec<f64>,
        dt_s: f64,
        temp_c: f64,
    ) -> (Vec<f64>, Vec<f64>) {
        let p = &self.params;
        let sc = CellScale::default();
        let mut s = CellState::at_rest(soc0);
        let mut v = Vec::with_capacity(current_a.len());
        let mut z = Vec::with_capacity(current_a.len());
        for &i in &current_a {
            p.step(&mut s, &sc, i, temp_c, dt_s);
            v.push(p.terminal_voltage(&s, &sc, i, temp_c));
            z.push(s.soc);
        }
        (v, z)
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyCellModel>()?;
    Ok(())
}
