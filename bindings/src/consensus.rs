//! `mbms._core` bindings of the peer coordination core (crate `mbms-consensus`):
//! `ConsensusPeer`, `MessageAuth` (the tag of peer messages and telemetry), the CAN segmentation
//! (`can_segment_classic`, `CanReassembler`, `can_frame_fd`, `can_unframe_fd`), bus-load
//! figures and the simulator entry points.
//! A thin layer: conversion of Python values, nothing else.

use pyo3::exceptions::{PyKeyError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use mbms_consensus::busload;
use mbms_consensus::segment;
#[cfg(feature = "sim")]
use mbms_sim::protocol as sim;
use mbms_consensus::auth::{Auth, AuthError, KEY_LEN};
use mbms_consensus::wire::{Message, MessageView};
use mbms_consensus::{Contactors, LocalState, Peer, PeerConfig};

/// The authentication of system `system_id`: `keys` (1 or 2 keys of 16 bytes, the first signs),
/// or None for none at all (an explicit setting the caller has logged).
pub(crate) fn auth_from_py(system_id: u32, keys: Option<Vec<Vec<u8>>>) -> PyResult<Auth> {
    match keys {
        None => Ok(Auth::off(system_id)),
        Some(ks) => {
            let mut arr = Vec::with_capacity(ks.len());
            for k in ks {
                let a: [u8; KEY_LEN] = k
                    .as_slice()
                    .try_into()
                    .map_err(|_| PyValueError::new_err(format!("a key is {KEY_LEN} bytes, got {}", k.len())))?;
                arr.push(a);
            }
            Auth::new(system_id, &arr).map_err(PyValueError::new_err)
        }
    }
}

fn auth_error_kind(e: AuthError) -> &'static str {
    match e {
        AuthError::Wire(_) => "malformed",
        AuthError::Unauthenticated => "unauthenticated",
        AuthError::Forged => "forged",
    }
}

fn get<'py, T: FromPyObject<'py>>(d: &Bound<'py, PyDict>, key: &str) -> PyResult<T> {
    let v = d
        .get_item(key)?
        .ok_or_else(|| PyKeyError::new_err(format!("local state: missing field {key}")))?;
    v.extract().map_err(|e| PyTypeError::new_err(format!("local state: field {key}: {e}")))
}

fn local_from_dict(d: &Bound<'_, PyDict>) -> PyResult<LocalState> {
    let fb: (bool, bool, bool) = get(d, "feedback")?;
    Ok(LocalState {
        ocv_v: get(d, "ocv_v")?,
        r_ohm: get(d, "r_ohm")?,
        soc: get(d, "soc")?,
        dcl_a: get(d, "dcl_a")?,
        ccl_a: get(d, "ccl_a")?,
        dcl_peak_a: get(d, "dcl_peak_a")?,
        ccl_peak_a: get(d, "ccl_peak_a")?,
        fault: get(d, "fault")?,
        may_close: get(d, "may_close")?,
        v_string_v: get(d, "v_string_v")?,
        v_bus_v: get(d, "v_bus_v")?,
        i_a: get(d, "i_a")?,
        feedback: Contactors { neg: fb.0, pos: fb.1, pre: fb.2 },
        // optional: when the sample was taken (ms, own clock); absent = at the tick's time
        meas_t_ms: d.get_item("meas_t_ms")?.map(|v| v.extract()).transpose()?,
    })
}

/// One peer of the leader-less coordination (sans-IO).
/// Receive counters as Python sees them: (sender, boot, counter) tuples.
pub(crate) fn receive_counters_to_py(peer: &Peer) -> Vec<(u16, u16, u32)> {
    peer.receive_counters().into_iter().map(|r| (r.sender, r.incarnation, r.counter)).collect()
}

pub(crate) fn receive_counters_from_py(counters: Vec<(u16, u16, u32)>) -> Vec<mbms_consensus::ReceiveCounter> {
    counters
        .into_iter()
        .map(|(sender, incarnation, counter)| mbms_consensus::ReceiveCounter { sender, incarnation, counter })
        .collect()
}

#[pyclass(name = "ConsensusPeer", module = "mbms._core")]
pub struct PyConsensusPeer {
    peer: Peer,
}

#[pymethods]
impl PyConsensusPeer {
    /// `config`: dict of PeerConfig fields (missing ones take the defaults).
    /// Raises `mbms.errors.ConfigError` naming the field on an invalid configuration.
    /// `keys`: the system's keys (list of 16-byte keys, the first signs), None = no
    /// authentication (an explicit choice).
    #[new]
    #[pyo3(signature = (config, incarnation, keys))]
    fn new(config: &Bound<'_, PyAny>, incarnation: u64, keys: Option<Vec<Vec<u8>>>) -> PyResult<Self> {
        let cfg = crate::config::peer_from_py(config, "", None, true)?;
        let auth = auth_from_py(cfg.system_id, keys)?;
        Peer::new(cfg, incarnation, auth)
            .map(|peer| Self { peer })
            .map_err(|e| crate::config::raise_field(config.py(), e.field, e.message, None))
    }

    /// Feed received bytes; returns None if accepted, else the drop reason
    /// ("malformed", "unauthenticated", "forged", "old_boot", "unknown_sender", "own_echo",
    /// "duplicate", "stale", "duplicate_id"). Never raises on bad bytes.
    fn on_message(&mut self, now_ms: u64, data: &[u8]) -> Option<&'static str> {
        self.peer.on_message(now_ms, data).err().map(|e| e.kind())
    }

    /// One control step; `local` is a dict of LocalState fields (feedback = (neg, pos, pre)).
    fn tick<'py>(&mut self, py: Python<'py>, now_ms: u64, local: &Bound<'py, PyDict>) -> PyResult<Bound<'py, PyAny>> {
        let l = local_from_dict(local)?;
        let out = self.peer.tick(now_ms, &l);
        // the one output schema (mbms_consensus::PeerOutput's Serialize), never built by hand
        Ok(pythonize::pythonize(py, &out)?)
    }

    fn counters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(pythonize::pythonize(py, &self.peer.counters())?)
    }

    /// Per sender: (sender, boot, last message counter accepted), to persist.
    fn receive_counters(&self) -> Vec<(u16, u16, u32)> {
        receive_counters_to_py(&self.peer)
    }

    /// Restore persisted receive counters (only stricter: see the Rust `Peer`); returns how
    /// many entries were taken (ids that are no other member are ignored).
    fn restore_receive_counters(&mut self, counters: Vec<(u16, u16, u32)>) -> usize {
        self.peer.restore_receive_counters(&receive_counters_from_py(counters))
    }

    #[getter]
    fn phase(&self) -> &'static str {
        self.peer.phase().name()
    }
    #[getter]
    fn node_id(&self) -> u16 {
        self.peer.config().node_id
    }
    #[getter]
    fn quorum_size(&self) -> usize {
        self.peer.config().quorum()
    }
}

/// Authentication of one system (CMAC-AES-128, 32-bit tags): verifies peer messages for tools
/// that only listen (the monitor, `mbms log decode`), and tags/verifies telemetry.
#[pyclass(name = "MessageAuth", module = "mbms._core")]
pub struct PyMessageAuth {
    auth: Auth,
}

#[pymethods]
impl PyMessageAuth {
    #[new]
    #[pyo3(signature = (system_id, keys))]
    fn new(system_id: u32, keys: Option<Vec<Vec<u8>>>) -> PyResult<Self> {
        Ok(Self { auth: auth_from_py(system_id, keys)? })
    }
    #[getter]
    fn enabled(&self) -> bool {
        self.auth.enabled()
    }
    /// Verify and decode a peer message: a dict of its fields. Raises ValueError whose first
    /// argument is the reason ("malformed", "unauthenticated", "forged").
    fn open<'py>(&self, py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyAny>> {
        let m = self.auth.open(data).map_err(|e| PyValueError::new_err((auth_error_kind(e), format!("{e:?}"))))?;
        message_dict(py, &m, true)
    }
    /// Decode a peer message WITHOUT verifying it (`verified` = False in the dict).
    #[staticmethod]
    fn decode_unverified<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyAny>> {
        let m = Message::decode(data).map_err(|e| PyValueError::new_err(("malformed", e.to_string())))?;
        message_dict(py, &m, false)
    }
    /// The 32-bit tag of other data (telemetry) under the signing key; zero without keys.
    fn tag<'py>(&self, py: Python<'py>, data: &[u8]) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.auth.tag_data(data))
    }
    /// Check a tag made by [`PyMessageAuth::tag`]: None if valid, else the reason.
    fn verify(&self, data: &[u8], tag: &[u8]) -> Option<&'static str> {
        self.auth.verify_data(data, tag).err().map(auth_error_kind)
    }
}

fn message_dict<'py>(py: Python<'py>, m: &Message, verified: bool) -> PyResult<Bound<'py, PyAny>> {
    // the one serialized view of a message (mbms_consensus::wire::MessageView)
    Ok(pythonize::pythonize(py, &MessageView::of(m, verified))?)
}

/// Split a message into classic CAN frames: list of (can_id, data).
#[pyfunction]
fn can_segment_classic<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Vec<(u32, Bound<'py, PyBytes>)>> {
    let frames = segment::segment_classic(data).map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(frames.into_iter().map(|f| (f.id, PyBytes::new(py, &f.data))).collect())
}

/// One message in one CAN FD frame: (can_id, data padded to an FD length).
#[pyfunction]
fn can_frame_fd<'py>(py: Python<'py>, data: &[u8]) -> PyResult<(u32, Bound<'py, PyBytes>)> {
    let f = segment::frame_fd(data).map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok((f.id, PyBytes::new(py, &f.data)))
}

/// The message of a CAN FD frame: (sender, message). Raises ValueError on a bad frame.
#[pyfunction]
fn can_unframe_fd<'py>(py: Python<'py>, can_id: u32, data: &[u8]) -> PyResult<(u16, Bound<'py, PyBytes>)> {
    let (s, m) = segment::unframe_fd(can_id, data).map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok((s, PyBytes::new(py, &m)))
}

/// Reassembler of classic-CAN-segmented messages. Bad frames are counted and dropped.
#[pyclass(name = "CanReassembler", module = "mbms._core")]
pub struct PyCanReassembler {
    inner: segment::Reassembler,
    last_error: Option<String>,
    last_error_kind: Option<&'static str>,
}

#[pymethods]
impl PyCanReassembler {
    #[new]
    fn new() -> Self {
        Self { inner: segment::Reassembler::new(), last_error: None, last_error_kind: None }
    }
    /// Feed one frame; returns (sender, message) when a message completes, else None.
    fn push<'py>(&mut self, py: Python<'py>, can_id: u32, data: &[u8]) -> Option<(u16, Bound<'py, PyBytes>)> {
        match self.inner.push(can_id, data) {
            Ok(Some((s, m))) => Some((s, PyBytes::new(py, &m))),
            Ok(None) => None,
            Err(e) => {
                self.last_error = Some(e.to_string());
                self.last_error_kind = Some(e.kind());
                None
            }
        }
    }
    #[getter]
    fn dropped_frames(&self) -> u64 {
        self.inner.dropped_frames
    }
    #[getter]
    fn messages(&self) -> u64 {
        self.inner.messages
    }
    #[getter]
    fn last_error(&self) -> Option<String> {
        self.last_error.clone()
    }
    /// Why the last frame was dropped: "malformed", "oversized", "foreign" or "incomplete".
    #[getter]
    fn last_error_kind(&self) -> Option<&'static str> {
        self.last_error_kind
    }
}

/// Bits of one classic CAN frame (11-bit id): exact stuffing, or worst case if `worst`.
#[pyfunction]
#[pyo3(signature = (can_id, data, worst = false))]
fn can_frame_bits_classic(can_id: u32, data: &[u8], worst: bool) -> u32 {
    if worst {
        busload::classic_frame_bits_worst(data.len())
    } else {
        busload::classic_frame_bits_exact(can_id, data)
    }
}

/// Worst-case classic CAN load (fraction) of `peers` peers sending one message each per
/// `period_ms`.
#[pyfunction]
fn can_bus_load_classic(peers: u32, period_ms: f64, bitrate: f64) -> f64 {
    busload::classic_load_worst(peers, period_ms, bitrate)
}

#[cfg(feature = "sim")]
fn sim_params(peers_min: usize, peers_max: usize, duration_ms: u64, config: Option<&Bound<'_, PyDict>>, adversary: Option<bool>) -> PyResult<sim::SimParams> {
    let base = match config {
        Some(d) => crate::config::peer_from_py(d.as_any(), "", None, false)?,
        None => PeerConfig::default(),
    };
    if peers_min == 0 || peers_max > 64 || peers_min > peers_max {
        return Err(PyValueError::new_err(("peers", "expected 1 <= peers_min <= peers_max <= 64".to_string())));
    }
    Ok(sim::SimParams { peers_min, peers_max, duration_ms, base, adversary, ..sim::SimParams::default() })
}

#[cfg(feature = "sim")]
fn sabotage(name: Option<&str>) -> PyResult<sim::Sabotage> {
    name.unwrap_or("none").parse().map_err(|e: String| PyValueError::new_err(("sabotage", e)))
}

#[cfg(feature = "sim")]
/// Run seeded fault schedules (GIL released). Returns a dict of figures.
#[pyfunction]
#[pyo3(signature = (seeds, first_seed = 0, peers_min = 3, peers_max = 5, duration_ms = 6000, threads = 2, config = None, sabotage = None, adversary = None))]
#[allow(clippy::too_many_arguments)]
fn consensus_sim<'py>(
    py: Python<'py>,
    seeds: u64,
    first_seed: u64,
    peers_min: usize,
    peers_max: usize,
    duration_ms: u64,
    threads: usize,
    config: Option<&Bound<'py, PyDict>>,
    sabotage: Option<&str>,
    adversary: Option<bool>,
) -> PyResult<Bound<'py, PyDict>> {
    let mut params = sim_params(peers_min, peers_max, duration_ms, config, adversary)?;
    // a checker self-test of the simulator only (never reachable from a node): see sim::Sabotage
    params.sabotage = self::sabotage(sabotage)?;
    let s = py.allow_threads(|| sim::run_many(first_seed, seeds, &params, threads));
    let d = PyDict::new(py);
    d.set_item("schedules", s.schedules)?;
    d.set_item("violations", s.violations)?;
    let failing: Vec<(u64, String)> =
        s.failing.iter().map(|(seed, v)| (*seed, v.first().cloned().unwrap_or_default())).collect();
    d.set_item("failing", failing)?;
    for (name, v) in [
        ("agree", &s.agree_periods),
        ("agree_clean", &s.agree_clean_periods),
        ("detect", &s.detect_periods),
        ("cold_close", &s.cold_close_periods),
        ("grant", &s.grant_periods),
    ] {
        for q in [50.0, 90.0, 99.0, 100.0] {
            let key = if q == 100.0 { format!("{name}_max_periods") } else { format!("{name}_p{}_periods", q as u32) };
            d.set_item(key, sim::percentile(v, q))?;
        }
        d.set_item(format!("{name}_samples"), v.len())?;
    }
    d.set_item("closes", s.closes)?;
    d.set_item("aborts", s.aborts)?;
    d.set_item("messages", s.messages)?;
    d.set_item("mean_message_len", s.message_bytes as f64 / s.messages.max(1) as f64)?;
    d.set_item("adversarial_schedules", s.adversarial)?;
    d.set_item("attack_deliveries", s.attack_deliveries)?;
    d.set_item("attack_accepted", s.attack_accepted)?;
    let dropped = PyDict::new(py);
    for (k, v) in &s.attack_dropped {
        dropped.set_item(*k, *v)?;
    }
    d.set_item("attack_dropped", dropped)?;
    Ok(d)
}

#[cfg(feature = "sim")]
/// Replay one seed with a trace: (violations, trace lines).
#[pyfunction]
#[pyo3(signature = (seed, peers_min = 3, peers_max = 5, duration_ms = 6000, sabotage = None, adversary = None))]
fn consensus_sim_replay(
    py: Python<'_>,
    seed: u64,
    peers_min: usize,
    peers_max: usize,
    duration_ms: u64,
    sabotage: Option<&str>,
    adversary: Option<bool>,
) -> PyResult<(Vec<String>, Vec<String>)> {
    let mut params = sim_params(peers_min, peers_max, duration_ms, None, adversary)?;
    params.verbose = true;
    params.sabotage = self::sabotage(sabotage)?;
    let r = py.allow_threads(|| sim::run_schedule(seed, &params));
    Ok((r.violations, r.trace))
}

#[cfg(feature = "sim")]
/// Bus load of the protocol measured on simulated traffic (clean cold start + steady).
#[pyfunction]
#[pyo3(signature = (peers = 16, duration_ms = 10000, seed = 1, bitrate = 500000.0, config = None))]
fn consensus_bus_load<'py>(
    py: Python<'py>,
    peers: usize,
    duration_ms: u64,
    seed: u64,
    bitrate: f64,
    config: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyDict>> {
    let params = sim_params(peers, peers, duration_ms, config, None)?;
    let r = py.allow_threads(|| sim::measure_bus_load(peers, duration_ms, seed, bitrate, &params.base));
    let d = PyDict::new(py);
    d.set_item("peers", r.peers)?;
    d.set_item("heartbeat_ms", r.heartbeat_ms)?;
    d.set_item("bitrate", r.bitrate)?;
    d.set_item("classic_worst_mean", r.classic_worst_mean)?;
    d.set_item("classic_worst_peak", r.classic_worst_peak)?;
    d.set_item("classic_worst_steady", r.classic_worst_steady)?;
    d.set_item("classic_exact_mean", r.classic_exact_mean)?;
    d.set_item("classic_exact_peak", r.classic_exact_peak)?;
    d.set_item("classic_24byte_mean", r.classic_24byte_mean)?;
    d.set_item("classic_24byte_peak", r.classic_24byte_peak)?;
    d.set_item("classic_untagged_mean", r.classic_untagged_mean)?;
    d.set_item("classic_untagged_peak", r.classic_untagged_peak)?;
    d.set_item("fd_worst_mean", r.fd_worst_mean)?;
    d.set_item("fd_worst_peak", r.fd_worst_peak)?;
    d.set_item("mean_message_len", r.mean_message_len)?;
    d.set_item("max_message_len", r.max_message_len)?;
    d.set_item("messages_per_s", r.messages_per_s)?;
    Ok(d)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    #[cfg(feature = "sim")]
    m.add("SABOTAGE_MODES", sim::Sabotage::ALL.iter().map(|(n, _)| *n).collect::<Vec<_>>())?;
    m.add_class::<PyConsensusPeer>()?;
    m.add_class::<PyCanReassembler>()?;
    m.add_class::<PyMessageAuth>()?;
    m.add("MESSAGE_LEN", mbms_consensus::wire::MESSAGE_LEN)?;
    // The peer phases in wire order (the 3-bit phase of every peer message): mbms.types.Phase
    // is built from this list, so Python never restates the Rust enum.
    let phases: Vec<&'static str> = (0u8..8).map(|v| mbms_consensus::Phase::from_u8(v).name()).collect();
    m.add("PHASE_NAMES", phases)?;
    m.add_function(wrap_pyfunction!(can_segment_classic, m)?)?;
    m.add_function(wrap_pyfunction!(can_frame_fd, m)?)?;
    m.add_function(wrap_pyfunction!(can_unframe_fd, m)?)?;
    m.add_function(wrap_pyfunction!(can_frame_bits_classic, m)?)?;
    m.add_function(wrap_pyfunction!(can_bus_load_classic, m)?)?;
    #[cfg(feature = "sim")]
    m.add_function(wrap_pyfunction!(consensus_sim, m)?)?;
    #[cfg(feature = "sim")]
    m.add_function(wrap_pyfunction!(consensus_sim_replay, m)?)?;
    #[cfg(feature = "sim")]
    m.add_function(wrap_pyfunction!(consensus_bus_load, m)?)?;
    Ok(())
}
