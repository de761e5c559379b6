//! `mbms._core.load_profile_values`: the load profile of a plant description evaluated at given
//! times, for the "inverter" of `mbms sim --mode processes` (which sets the plant's load from
//! outside, clipped to the agreed limits, as the fast simulator does inside).

use pyo3::prelude::*;
use pyo3::exceptions::PyValueError;

use mbms_sim::plant::{PlantConfig, Quantity};

/// `(values, is_power)`: the description's `load` profile at each time in `t_s` (A, or W if
/// the profile's quantity is power; discharge positive). Errors: `ValueError((field, message))`.
#[pyfunction]
fn load_profile_values(config_json: &str, t_s: Vec<f64>) -> PyResult<(Vec<f64>, bool)> {
    let cfg = PlantConfig::from_json_str(config_json).map_err(|e| PyValueError::new_err((e.field, e.message)))?;
    let values = t_s.iter().map(|&t| cfg.load.value_at(t)).collect();
    Ok((values, cfg.load.quantity() == Quantity::PowerW))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(load_profile_values, m)?)?;
    Ok(())
}
