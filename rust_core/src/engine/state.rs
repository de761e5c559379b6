//! Engine state export/import: one JSON document in which each stage's state is its own
//! section with its own version, so that a stage can change its state without touching the
//! others, and a file is never read with the wrong layout.
//!
//! ```text
//! {"format": "mbms-engine-state", "version": 2, "series": 96, "temp_sensors": 24,
//!  "cells":      {"version": 1, "initialized": true, "z": [...], "v1": [...], ...},
//!  "rest_soh":   {"version": 1, "q_since_rest_ah": "...", "cap_ah": [...], ...},
//!  "limits":     {"version": 1, "dcl_a": "...", ...},
//!  "protection": {"version": 1, "latched": [{"rule": "cell_overvoltage", "index": 3}]}}
//! ```
//!
//! Numbers are written as strings in Rust's shortest round-trip form (`"0.4803073109530227"`,
//! `"NaN"` for "none yet"), which read back bit for bit (JSON numbers would not carry NaN, and
//! a JSON reader need not round correctly). Sensing and balancing keep nothing across a restart
//! (a restored state starts a new time base), so they have no section.
//!
//! Older formats: format 1 (the binary record with magic `MBMSENG1` and fixed per-cell slots,
//! written up to this change) is migrated: read with its own layout into the version-1
//! sections, then restored like a current file. A section of a version this code does not
//! know (a file from a newer mbms) and any other content are rejected with a message naming
//! what was found; nothing is applied then.

use serde::de::{self, DeserializeOwned, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::protection::Rule;

use super::{Engine, EngineStateError};

/// `format` of the document.
pub const STATE_FORMAT: &str = "mbms-engine-state";
/// Version of the document's envelope (1 was the binary `MBMSENG1` record).
pub const STATE_VERSION: u32 = 2;
/// Magic of format 1.
const V1_MAGIC: &[u8; 8] = b"MBMSENG1";

/// An f64 written as its shortest round-trip decimal string (exact, NaN and ∞ included).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(super) struct X(pub f64);

impl Serialize for X {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{:?}", self.0))
    }
}

impl<'de> Deserialize<'de> for X {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<X, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = X;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number as a decimal string (\"3.7\", \"NaN\")")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<X, E> {
                s.parse::<f64>().map(X).map_err(|_| E::invalid_value(de::Unexpected::Str(s), &self))
            }
            fn visit_f64<E: de::Error>(self, x: f64) -> Result<X, E> {
                Ok(X(x))
            }
            fn visit_i64<E: de::Error>(self, x: i64) -> Result<X, E> {
                Ok(X(x as f64))
            }
            fn visit_u64<E: de::Error>(self, x: u64) -> Result<X, E> {
                Ok(X(x as f64))
            }
        }
        d.deserialize_any(V)
    }
}

pub(super) fn xs(v: &[f64]) -> Vec<X> {
    v.iter().map(|&x| X(x)).collect()
}

/// A section with its version: the version is read first, then the body with the layout of
/// that version (unknown fields are errors).
fn section<T: DeserializeOwned>(doc: &serde_json::Value, name: &str, known: u32) -> Result<T, EngineStateError> {
    let e = |m: String| EngineStateError { message: m };
    let s = doc.get(name).ok_or_else(|| e(format!("section {name:?} missing")))?;
    let v = s.get("version").and_then(|v| v.as_u64());
    match v {
        Some(v) if v == known as u64 => {}
        Some(v) => {
            return Err(e(format!(
                "section {name:?} has version {v}; this mbms reads version {known} (a file from a newer mbms?): not restored"
            )))
        }
        None => return Err(e(format!("section {name:?}: no version number"))),
    }
    serde_path_to_error::deserialize(s).map_err(|err| e(format!("{name}.{}: {}", err.path(), err.inner())))
}

/// The sections of one state, whichever format it came from.
pub(super) struct Sections {
    pub cells: super::cells::CellsStateV1,
    pub rest_soh: super::rest::RestSohStateV1,
    pub limits: super::limits::LimitsStateV1,
    pub protection: super::protection::ProtectionStateV1,
}

#[derive(Serialize)]
struct Document<'a> {
    format: &'a str,
    version: u32,
    series: usize,
    temp_sensors: usize,
    cells: super::cells::CellsStateV1,
    rest_soh: super::rest::RestSohStateV1,
    limits: super::limits::LimitsStateV1,
    protection: super::protection::ProtectionStateV1,
}

impl Engine {
    /// The engine's state as a versioned JSON document (see the module doc).
    pub fn export_state(&self) -> Vec<u8> {
        let doc = Document {
            format: STATE_FORMAT,
            version: STATE_VERSION,
            series: self.n,
            temp_sensors: self.n_t,
            cells: self.cells.export(&self.out.soc_cc),
            rest_soh: self.soh.export(),
            limits: self.limits.export(),
            protection: self.protection.export(),
        };
        serde_json::to_vec(&doc).expect("the engine state serialises")
    }

    /// Restore an exported state (this format or format 1, which is migrated). Structural
    /// problems (not a state, other pack, unknown section version, non-finite values) are an
    /// error and nothing is applied; implausible values are dropped as described in
    /// [`Engine::apply_state`] and listed in the Ok value (empty: everything restored).
    pub fn import_state(&mut self, data: &[u8]) -> Result<Vec<String>, EngineStateError> {
        let e = |m: String| EngineStateError { message: m };
        let sections = if data.starts_with(V1_MAGIC) {
            super::state_v1::read(data, self.n, self.n_t, |rule| self.protection.len(rule))?
        } else if data.first() == Some(&b'{') {
            let doc: serde_json::Value =
                serde_json::from_slice(data).map_err(|err| e(format!("not a readable JSON document: {err}")))?;
            let format = doc.get("format").and_then(|f| f.as_str());
            if format != Some(STATE_FORMAT) {
                return Err(e(format!("format {format:?}, expected {STATE_FORMAT:?}")));
            }
            match doc.get("version").and_then(|v| v.as_u64()) {
                Some(v) if v == STATE_VERSION as u64 => {}
                v => {
                    return Err(e(format!(
                        "document version {v:?}; this mbms reads version {STATE_VERSION} and migrates format 1"
                    )))
                }
            }
            let (n, n_t) = (doc.get("series").and_then(|v| v.as_u64()), doc.get("temp_sensors").and_then(|v| v.as_u64()));
            if n != Some(self.n as u64) || n_t != Some(self.n_t as u64) {
                return Err(e(format!(
                    "state is for {} cells / {} sensors, engine has {} / {}",
                    n.map_or("?".into(), |x| x.to_string()),
                    n_t.map_or("?".into(), |x| x.to_string()),
                    self.n,
                    self.n_t
                )));
            }
            Sections {
                cells: section(&doc, "cells", 1)?,
                rest_soh: section(&doc, "rest_soh", 1)?,
                limits: section(&doc, "limits", 1)?,
                protection: section(&doc, "protection", 1)?,
            }
        } else {
            let head: String = data.iter().take(8).map(|&b| if b.is_ascii_graphic() { b as char } else { '.' }).collect();
            return Err(e(format!(
                "not an mbms engine state (starts with {head:?}; expected a JSON document or the format-1 magic \"MBMSENG1\")"
            )));
        };
        self.apply_state(sections)
    }

    /// Check every section, then apply. The estimator state (cells and rest/SOH) is all or
    /// nothing: if any of it is implausible none is applied and the engine starts from the
    /// first measurement (SOC from OCV, nominal capacity and resistance), as on a first start.
    /// Latched faults are kept (they only ever hold the contactors open); implausible limit
    /// values restart from 0 (they ramp up, S4).
    fn apply_state(&mut self, s: Sections) -> Result<Vec<String>, EngineStateError> {
        let e = |m: String| EngineStateError { message: m };
        // structure: lengths, finite values, known rules
        self.cells.check(&s.cells, self.n).map_err(e)?;
        self.soh.check(&s.rest_soh, self.n).map_err(e)?;
        let latched = self.protection.check(&s.protection).map_err(e)?;
        // plausibility (a file with a valid checksum can still hold nonsense: SOC 150 %, 1e6 Ah)
        let mut dropped = Vec::new();
        let estimator_problem = self
            .cells
            .implausible(&s.cells, &self.cell)
            .or_else(|| self.soh.implausible(&s.rest_soh, &self.cell));
        if let Some(why) = &estimator_problem {
            dropped.push(format!("estimator state ({why}): starts from measurements"));
        }
        let limits = self.limits.plausible(&s.limits, &self.cfg.limits, &mut dropped);
        // all checked: apply
        if estimator_problem.is_none() {
            self.cells.import(&s.cells, &mut self.out.soc_cc);
            self.soh.import(&s.rest_soh);
        }
        self.limits.import(limits);
        for (rule, k) in latched {
            self.protection.restore_latched(rule, k);
        }
        // re-anchor time: the next step starts a new time base (no integration over the gap)
        self.sensing.restart_time_base();
        self.soh.restart_time_base();
        self.balancer.decided_t = f64::NAN; // new time base: decide balancing afresh
        self.out.action = self.protection.collect(&mut self.out.faults);
        Ok(dropped)
    }
}

/// A rule by its name in the state file.
pub(super) fn rule_by_name(name: &str) -> Option<Rule> {
    Rule::ALL.iter().copied().find(|r| r.name() == name)
}
