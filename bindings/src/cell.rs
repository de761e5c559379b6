//! `mbms._core.CellModel`: a parsed cell parameter set.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use mbms_core::cell_model::{CellParams, CellScale, CellState};
use mbms_core::soc_ekf;

/// `temp_c` of [`PyCellModel::simulate`]: one temperature, or one per sample.
#[derive(FromPyObject)]
enum Temperatures {
    One(f64),
    Each(Vec<f64>),
}

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

    /// The model error (V, 1σ) the SOC filter states for this cell at each sample of a
    /// current profile (discharge positive, every `dt_s`), without its correlation-time
    /// weighting: the cell file's low-current part and its part growing with the recent load,
    /// in quadrature, the load held and released as the engine does (`soc_ekf::load_c_rate`,
    /// rest band `rest_c`, a C-rate of the file's capacity).
    fn stated_model_error_v(&self, current_a: Vec<f64>, dt_s: f64, rest_c: f64) -> PyResult<Vec<f64>> {
        if !(dt_s.is_finite() && dt_s > 0.0) {
            return Err(PyValueError::new_err(format!("dt_s: expected a finite number > 0, got {dt_s}")));
        }
        if !(rest_c.is_finite() && rest_c >= 0.0) {
            return Err(PyValueError::new_err(format!("rest_c: expected a finite number >= 0, got {rest_c}")));
        }
        let p = &self.params;
        let mut load = 0.0;
        Ok(current_a
            .iter()
            .map(|&i| {
                load = soc_ekf::load_c_rate(load, i / p.capacity_ah, rest_c, dt_s, p.estimator.model_error_relax_s);
                let (s0, sc) = soc_ekf::cell_model_error_v(&p.estimator, load);
                s0.hypot(sc)
            })
            .collect())
    }

    /// Simulate one cell from rest at `soc0` through a current profile (discharge
    /// positive) sampled every `dt_s`; returns (terminal voltage, soc) lists. `temp_c`: one
    /// temperature for the whole profile, or one per sample. `capacity_scale`,
    /// `resistance_scale`: an aged cell (its capacity and its R0 and RC resistances as
    /// multiples of the file's, as the plant ages a cell).
    #[pyo3(signature = (soc0, current_a, dt_s, temp_c, *, capacity_scale = 1.0, resistance_scale = 1.0))]
    fn simulate(
        &self,
        soc0: f64,
        current_a: Vec<f64>,
        dt_s: f64,
        temp_c: Temperatures,
        capacity_scale: f64,
        resistance_scale: f64,
    ) -> PyResult<(Vec<f64>, Vec<f64>)> {
        for (name, x) in [("capacity_scale", capacity_scale), ("resistance_scale", resistance_scale), ("dt_s", dt_s)] {
            if !(x.is_finite() && x > 0.0) {
                return Err(PyValueError::new_err(format!("{name}: expected a finite number > 0, got {x}")));
            }
        }
        let temps = match temp_c {
            Temperatures::One(t) => vec![t; current_a.len()],
            Temperatures::Each(ts) if ts.len() == current_a.len() => ts,
            Temperatures::Each(ts) => {
                return Err(PyValueError::new_err(format!(
                    "temp_c: expected one temperature or one per current sample ({}), got {}",
                    current_a.len(),
                    ts.len()
                )))
            }
        };
        let p = &self.params;
        let sc = CellScale { capacity: capacity_scale, resistance: resistance_scale };
        let mut s = CellState::at_rest(soc0);
        let mut v = Vec::with_capacity(current_a.len());
        let mut z = Vec::with_capacity(current_a.len());
        for (&i, &t) in current_a.iter().zip(&temps) {
            p.step(&mut s, &sc, i, t, dt_s);
            v.push(p.terminal_voltage(&s, &sc, i, t));
            z.push(s.soc);
        }
        Ok((v, z))
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyCellModel>()?;
    Ok(())
}
