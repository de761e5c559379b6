//! `scenario_config`: the tables of a scenario file (`extends` already resolved by the reader),
//! typed and normalised by `mbms_sim::scenario::Scenario`; errors are `mbms.errors.ConfigError`
//! naming the file and the dotted field.

use pyo3::prelude::*;

use mbms_core::config::ConfigError;
use mbms_sim::scenario::Scenario;

use crate::config::{raise, to_py};

/// A scenario's tables (dict) normalised: defaults filled, ranges and cross checks done.
#[pyfunction]
#[pyo3(signature = (value, source = None))]
fn scenario_config<'py>(value: &Bound<'py, PyAny>, source: Option<&str>) -> PyResult<Bound<'py, PyAny>> {
    let py = value.py();
    let with = |e: ConfigError| raise(py, ConfigError { file: source.map(str::to_string), ..e });
    let v: serde_json::Value = pythonize::depythonize(value).map_err(|e| {
        with(ConfigError { file: None, field: "<root>".into(), message: format!("expected the tables of a scenario: {e}") })
    })?;
    let s = Scenario::from_value(v).map_err(with)?;
    to_py(py, &s)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(scenario_config, m)?)?;
    Ok(())
}
