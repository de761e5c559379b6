//! The one conversion path of configs across the boundary. Python values go in through
//! `pythonize` into a `toml::Value`, then `mbms_core::config::typed` (finite floats, serde with
//! dotted-path errors) and the type's range checks; normalised configs come back out through
//! `pythonize`. Every error is raised as `mbms.errors.ConfigError(field, message, source)`.
//!
//! Python functions: `config_extends`, `node_files`, `engine_config`, `engine_config_layers`,
//! `peer_config`, `node_config`, `config_schemas`.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use serde::de::DeserializeOwned;
use serde::Serialize;

use mbms_consensus::PeerConfig;
use mbms_core::config::{self as cfg, ConfigError, Layer};
use mbms_core::engine::EngineConfig;
use mbms_core::node::NodeConfig;

/// `mbms.errors.ConfigError(field, message, source)` from a Rust config error.
pub fn raise(py: Python<'_>, e: ConfigError) -> PyErr {
    let made = py
        .import("mbms.errors")
        .and_then(|m| m.getattr("ConfigError"))
        .and_then(|cls| cls.call1((e.field.clone(), e.message.clone(), e.file.clone())));
    match made {
        Ok(obj) => PyErr::from_value(obj),
        Err(err) => err,
    }
}

/// A config error without a file, from the (field, message) of a core validation.
pub fn raise_field(py: Python<'_>, field: impl Into<String>, message: impl Into<String>, file: Option<&str>) -> PyErr {
    raise(py, ConfigError { file: file.map(str::to_string), field: field.into(), message: message.into() })
}

/// A typed config from a Python value (dict of the config's fields). `prefix` is the dotted
/// path of the value in its file, `source` the file (for the error).
pub fn from_py<T: DeserializeOwned>(obj: &Bound<'_, PyAny>, prefix: &str, source: Option<&str>) -> PyResult<T> {
    let py = obj.py();
    let with = |e: ConfigError| raise(py, ConfigError { file: source.map(str::to_string), ..e });
    let value: toml::Value = pythonize::depythonize(obj).map_err(|e| {
        let field = if prefix.is_empty() { "<root>".to_string() } else { prefix.to_string() };
        with(ConfigError { file: None, field, message: format!("expected a table of settings: {e}") })
    })?;
    cfg::typed(value, prefix).map_err(with)
}

/// A normalised config as Python data (dicts, lists, numbers, strings).
pub fn to_py<'py, T: Serialize>(py: Python<'py>, v: &T) -> PyResult<Bound<'py, PyAny>> {
    pythonize::pythonize(py, v).map_err(|e| PyValueError::new_err(e.to_string()))
}

fn layers_of(py: Python<'_>, layers: Vec<(String, String)>) -> PyResult<Vec<Layer>> {
    layers
        .into_iter()
        .map(|(source, text)| match cfg::parse_toml(&text) {
            Ok(table) => Ok(Layer { source, table }),
            Err(e) => Err(raise(py, ConfigError { file: Some(source), ..e })),
        })
        .collect()
}

/// The base file a pack file extends (`extends`), or None. Raises ConfigError on bad TOML.
#[pyfunction]
fn config_extends(py: Python<'_>, source: &str, text: &str) -> PyResult<Option<String>> {
    let table = cfg::parse_toml(text).map_err(|e| raise(py, ConfigError { file: Some(source.into()), ..e }))?;
    cfg::extends_of(&table).map_err(|e| raise(py, ConfigError { file: Some(source.into()), ..e }))
}

/// Read and check a node's files (what `mbms node` and `mbms node --check` both run):
/// `layers` = [(source, text)] of the pack file and the files it extends, base first; `system`
/// = (source, text); `cell_text` = the cell file's text (None: not found). Returns a dict with
/// `pack` (normalised pack file or None), `system` (normalised system or None) and `findings`
/// (list of dicts: severity, file, field, value, expected). Never raises for file contents.
#[pyfunction]
#[pyo3(signature = (layers, system, cell_text))]
fn node_files<'py>(
    py: Python<'py>,
    layers: Vec<(String, String)>,
    system: Option<(String, String)>,
    cell_text: Option<String>,
) -> PyResult<Bound<'py, PyAny>> {
    let mut parsed = Vec::new();
    let mut findings = Vec::new();
    for (source, text) in layers {
        match cfg::parse_toml(&text) {
            Ok(table) => parsed.push(Layer { source, table }),
            Err(e) => findings.push(cfg::Finding { severity: cfg::Severity::Error, file: source, field: e.field, value: None, expected: e.message }),
        }
    }
    let mut out = if findings.is_empty() {
        cfg::node_findings(&parsed, system.as_ref().map(|(s, t)| (s.as_str(), t.as_str())), cell_text.as_deref())
    } else {
        cfg::NodeFiles { pack: None, system: None, findings: Vec::new() }
    };
    findings.append(&mut out.findings);
    out.findings = findings;
    #[derive(Serialize)]
    struct Out<'a> {
        pack: Option<&'a cfg::PackFile>,
        engine: Option<EngineConfig>,
        system: &'a Option<cfg::SystemConfig>,
        findings: &'a [cfg::Finding],
    }
    let engine = out.pack.as_ref().map(|p| p.engine());
    to_py(py, &Out { pack: out.pack.as_ref(), engine, system: &out.system, findings: &out.findings })
}

/// The engine tables of a pack file's layers (base first), normalised (defaults filled).
#[pyfunction]
fn engine_config_layers<'py>(py: Python<'py>, layers: Vec<(String, String)>) -> PyResult<Bound<'py, PyAny>> {
    let layers = layers_of(py, layers)?;
    let e = cfg::engine_from_layers(&layers).map_err(|e| raise(py, e))?;
    to_py(py, &e)
}

/// Engine tables given as a dict, normalised and validated.
#[pyfunction]
#[pyo3(signature = (value, source = None))]
fn engine_config<'py>(value: &Bound<'py, PyAny>, source: Option<&str>) -> PyResult<Bound<'py, PyAny>> {
    let py = value.py();
    let e: EngineConfig = engine_from_py(value, source)?;
    to_py(py, &e)
}

/// Engine tables from a Python dict (a pack file's data: the tables `node` and `hardware` are
/// skipped, any other unknown key is an error), validated before anything is allocated.
pub fn engine_from_py(value: &Bound<'_, PyAny>, source: Option<&str>) -> PyResult<EngineConfig> {
    let py = value.py();
    let with = |e: ConfigError| raise(py, ConfigError { file: source.map(str::to_string), ..e });
    let v: toml::Value = pythonize::depythonize(value)
        .map_err(|e| with(ConfigError { file: None, field: "<root>".into(), message: format!("expected a table of settings: {e}") }))?;
    let toml::Value::Table(table) = v else {
        return Err(with(ConfigError { file: None, field: "<root>".into(), message: "expected a table".into() }));
    };
    cfg::engine_from_layers(&[Layer { source: source.unwrap_or_default().to_string(), table }]).map_err(with)
}

/// Consensus `PeerConfig` fields given as a dict (missing ones take the defaults), normalised
/// and validated. `prefix` names the table in messages (e.g. "system").
pub fn peer_from_py(value: &Bound<'_, PyAny>, prefix: &str, source: Option<&str>, check: bool) -> PyResult<PeerConfig> {
    let p: PeerConfig = from_py(value, prefix, source)?;
    if check {
        p.validate().map_err(|e| raise_field(value.py(), join(prefix, &e.field), e.message, source))?;
    }
    Ok(p)
}

/// `[node]` settings given as a dict, normalised and validated.
pub fn node_from_py(value: &Bound<'_, PyAny>, prefix: &str, source: Option<&str>) -> PyResult<NodeConfig> {
    let n: NodeConfig = from_py(value, prefix, source)?;
    n.validate().map_err(|(f, m)| raise_field(value.py(), join(prefix, &f), m, source))?;
    Ok(n)
}

fn join(prefix: &str, field: &str) -> String {
    if prefix.is_empty() {
        field.to_string()
    } else {
        format!("{prefix}.{field}")
    }
}

/// `PeerConfig` normalised (defaults filled) and validated; `check=False` skips the
/// validation (for a base config that a caller completes with node_id and members).
#[pyfunction]
#[pyo3(signature = (value, prefix = "", source = None, check = true))]
fn peer_config<'py>(value: &Bound<'py, PyAny>, prefix: &str, source: Option<&str>, check: bool) -> PyResult<Bound<'py, PyAny>> {
    let p = peer_from_py(value, prefix, source, check)?;
    to_py(value.py(), &p)
}

/// The join hold lead and lease a system file derives for an inverter whose hold arrives
/// `hold_latency_ms` late (mbms_core::config::derive_join_hold), from the PeerConfig settings
/// `value` (defaults filled; not range-checked): {"join_hold_lead_ms", "lease_ms"}.
#[pyfunction]
#[pyo3(signature = (value, hold_latency_ms, lease_given = false))]
fn join_hold_derived<'py>(value: &Bound<'py, PyAny>, hold_latency_ms: u32, lease_given: bool) -> PyResult<Bound<'py, PyDict>> {
    let mut p = peer_from_py(value, "", None, false)?;
    cfg::derive_join_hold(&mut p, hold_latency_ms, lease_given);
    let d = PyDict::new(value.py());
    d.set_item("join_hold_lead_ms", p.join_hold_lead_ms)?;
    d.set_item("lease_ms", p.lease_ms)?;
    Ok(d)
}

/// `[node]` settings normalised (defaults filled) and validated.
#[pyfunction]
#[pyo3(signature = (value, prefix = "node", source = None))]
fn node_config<'py>(value: &Bound<'py, PyAny>, prefix: &str, source: Option<&str>) -> PyResult<Bound<'py, PyAny>> {
    let n = node_from_py(value, prefix, source)?;
    to_py(value.py(), &n)
}

/// JSON Schemas of the config files: {kind: schema as JSON text}.
#[pyfunction]
fn config_schemas<'py>(py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (name, schema) in cfg::schemas() {
        let text = serde_json::to_string_pretty(&schema).map_err(|e| PyValueError::new_err(e.to_string()))?;
        d.set_item(name, text)?;
    }
    // the scenario file's schema is the simulator's (it embeds the plant description)
    #[cfg(feature = "sim")]
    {
        let text = serde_json::to_string_pretty(&mbms_sim::scenario::schema()).map_err(|e| PyValueError::new_err(e.to_string()))?;
        d.set_item("scenario", text)?;
    }
    Ok(d)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(config_extends, m)?)?;
    m.add_function(wrap_pyfunction!(node_files, m)?)?;
    m.add_function(wrap_pyfunction!(engine_config_layers, m)?)?;
    m.add_function(wrap_pyfunction!(engine_config, m)?)?;
    m.add_function(wrap_pyfunction!(peer_config, m)?)?;
    m.add_function(wrap_pyfunction!(node_config, m)?)?;
    m.add_function(wrap_pyfunction!(join_hold_derived, m)?)?;
    m.add_function(wrap_pyfunction!(config_schemas, m)?)?;
    Ok(())
}
