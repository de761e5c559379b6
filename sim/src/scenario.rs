//! The scenario file of `mbms sim` (and of every campaign job): what battery, which load, which
//! faults, for how long. One schema, here: serde with `deny_unknown_fields` and serde defaults,
//! normalised and range-checked by [`Scenario::normalise`], exported as a JSON Schema
//! (`schemas/scenario.json`); Python (`mbms.sim.scenario`) holds a read-only view of the
//! normalised value and restates no default.
//!
//! Tables: `[scenario]` (run settings), `[system]` (the consensus `PeerConfig` fields shared by
//! all nodes, plus `drift_ppm`, one clock error per node), `[node]` (the pack file's `[node]`
//! table, `NodeConfig`), `[engine]` (`pack`: the pack file whose engine tables every node
//! uses), `[plant]` (the plant description, `PlantConfig`), `[[network]]` (network events) and
//! `[[events]]` (plant faults injected at run time, the plant's `ScheduledFault`).
//!
//! `extends` (a base scenario) is file I/O: the reader resolves it before this module sees the
//! data (sans-IO). Every error names the dotted field; the caller adds the file.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use mbms_consensus::PeerConfig;
use mbms_core::config::{typed_json, ConfigError};
use mbms_core::node::NodeConfig;

use crate::plant::{PlantConfig, ScheduledFault};

/// At most 64 packs: the consensus closed set is a 64-bit set of member ids.
pub const MAX_PACKS: usize = 64;

fn err(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError { file: None, field: field.into(), message: message.into() }
}

/// A scenario file after `extends` is resolved.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub scenario: Settings,
    /// The peer protocol settings shared by all nodes: any field of the consensus `PeerConfig`
    /// but `node_id` and `members` (those come from `plant.strings`, ids 1..N), plus
    /// `drift_ppm`. Normalised: every `PeerConfig` field, `drift_ppm` only if given.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "SystemSchema"))]
    pub system: Map<String, Value>,
    /// Filled by [`normalise`](Scenario::normalise): the `[system]` keys the file stated
    /// (`drift_ppm` apart), sorted; a normalised scenario keeps its own. Where a setting is
    /// derived unless stated (a system file derives `join_hold_lead_ms` and `lease_ms` from its
    /// `[inverter]`), "stated" is this list, not "equal to the default".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(skip))]
    pub system_given: Option<Vec<String>>,
    /// The `[node]` settings every node gets, in both modes (a pack file's `[node]` table).
    #[serde(default)]
    pub node: NodeConfig,
    #[serde(default)]
    pub engine: EngineRef,
    /// The plant description (`PlantConfig`), checked here but kept as written: its defaults
    /// are filled where the plant is built, and the engine takes a string's `r_extra_ohm` only
    /// if the string states it (else the pack file's).
    #[cfg_attr(feature = "schema", schemars(with = "PlantConfig"))]
    pub plant: Value,
    #[serde(default)]
    pub network: Vec<NetworkEvent>,
    /// Plant faults injected at run time (the schema of `plant.faults`); sorted by time.
    #[serde(default)]
    pub events: Vec<ScheduledFault>,
}

/// What the `[system]` table may hold (for the JSON Schema only: the table is checked by
/// typing it as a `PeerConfig`, which names the field).
#[cfg(feature = "schema")]
#[derive(schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
#[allow(dead_code)]
struct SystemSchema {
    #[serde(flatten)]
    peer: PeerConfig,
    /// One clock error per node (ppm), in node order; all zero if absent.
    drift_ppm: Option<Vec<f64>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One process: plant, N node cores and the peer network on a virtual clock.
    #[default]
    Fast,
    /// One real `mbms node` process per pack, a plant server and a simulated inverter.
    Processes,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default = "d_name")]
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Simulated time (s), > 0.
    pub duration_s: f64,
    /// Control period (s), 0.001..=1.0: the BMU's step. 0.1 s is the usual 10 Hz BMS cycle.
    #[serde(default = "d_dt")]
    pub dt_s: f64,
    /// Seed of every random draw of the run (cells, sensors, network).
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub mode: Mode,
    /// Interval of the recorded timeline rows (s), at least `dt_s`.
    #[serde(default = "d_record")]
    pub record_every_s: f64,
    /// A base scenario ("default" for the embedded one, or a path relative to this file) whose
    /// tables this file overrides key by key (arrays are replaced whole). Resolved by the reader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extends: Option<String>,
}

fn d_name() -> String {
    "unnamed".into()
}
fn d_dt() -> f64 {
    0.1
}
fn d_record() -> f64 {
    1.0
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct EngineRef {
    /// The pack file whose engine tables every node uses (a name in the pack folders or a
    /// path); `series`, `parallel`, `cell` and `temp_sensors` come from the node's plant string.
    #[serde(default = "d_pack")]
    pub pack: String,
}

impl Default for EngineRef {
    fn default() -> Self {
        Self { pack: d_pack() }
    }
}

fn d_pack() -> String {
    "example_pack".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum NetworkKind {
    /// Each receiver loses each message with probability `value`.
    Loss,
    /// Every message is delayed by up to `max_ms` (so reordered).
    Delay,
    /// Each message is delivered twice with probability `value`.
    Duplicate,
    /// Only nodes of the same group hear each other (`groups`: every id 1..N once).
    Partition,
    /// Loss, delay, duplication and partition end.
    Heal,
    /// Node `node` stops (process killed).
    Kill,
    /// Node `node` starts again with a new incarnation.
    Restart,
}

/// One network event. Which of `value`, `max_ms`, `groups`, `node` a kind takes is checked by
/// [`Scenario::normalise`] (a flat table keeps every error on its dotted field).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct NetworkEvent {
    pub at_s: f64,
    pub kind: NetworkKind,
    /// Probability 0..1 (loss, duplicate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// Maximum delay (delay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ms: Option<u32>,
    /// Node ids per side (partition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<Vec<u16>>>,
    /// Node id 1..N (kill, restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<u16>,
}

impl NetworkKind {
    /// The one key this kind takes besides `at_s` and `kind`.
    fn key(self) -> Option<&'static str> {
        match self {
            NetworkKind::Loss | NetworkKind::Duplicate => Some("value"),
            NetworkKind::Delay => Some("max_ms"),
            NetworkKind::Partition => Some("groups"),
            NetworkKind::Kill | NetworkKind::Restart => Some("node"),
            NetworkKind::Heal => None,
        }
    }
}

impl Scenario {
    /// Type a scenario given as JSON-like data (tables resolved, `extends` removed), then
    /// [`normalise`](Self::normalise) it.
    pub fn from_value(v: Value) -> Result<Self, ConfigError> {
        let mut s: Scenario = typed_json(v, "")?;
        s.normalise()?;
        Ok(s)
    }

    /// The typed plant description (checked by [`normalise`](Self::normalise)).
    pub fn plant_config(&self) -> Result<PlantConfig, ConfigError> {
        typed_json(self.plant.clone(), "plant")
    }

    /// Range and cross checks, defaults filled in (`[system]` becomes every `PeerConfig` field),
    /// events sorted by time. Idempotent: a normalised scenario normalises to itself.
    pub fn normalise(&mut self) -> Result<(), ConfigError> {
        let sc = &self.scenario;
        if sc.extends.is_some() {
            return Err(err("scenario.extends", "resolve extends before checking the scenario (the reader does)"));
        }
        if !(sc.duration_s.is_finite() && sc.duration_s > 0.0) {
            return Err(err("scenario.duration_s", format!("expected a number > 0, got {}", sc.duration_s)));
        }
        if !(sc.dt_s >= 0.001) {
            return Err(err("scenario.dt_s", format!("expected a number >= 0.001, got {}", sc.dt_s)));
        }
        if sc.dt_s > 1.0 {
            return Err(err("scenario.dt_s", format!("expected at most 1.0 s (the control period), got {}", sc.dt_s)));
        }
        if !(sc.record_every_s >= sc.dt_s) {
            return Err(err(
                "scenario.record_every_s",
                format!("expected a number >= {} (dt_s), got {}", sc.dt_s, sc.record_every_s),
            ));
        }
        let duration_s = sc.duration_s;

        if !self.plant.get("strings").is_some_and(Value::is_array) {
            return Err(err("plant.strings", "expected a non-empty array of tables (one per pack)"));
        }
        let plant = self.plant_config()?;
        let n = plant.strings.len();
        if n == 0 {
            return Err(err("plant.strings", "expected a non-empty array of tables (one per pack)"));
        }
        if n > MAX_PACKS {
            return Err(err("plant.strings", format!("expected at most {MAX_PACKS} packs, got {n}")));
        }
        plant.validate().map_err(|e| err(format!("plant.{}", e.field), e.message))?;

        let stated: Vec<String> = {
            let mut k: Vec<String> = self.system.keys().filter(|k| *k != "drift_ppm").cloned().collect();
            k.sort();
            k
        };
        self.system = normalise_system(std::mem::take(&mut self.system), n)?;
        match &self.system_given {
            None => self.system_given = Some(stated),
            Some(given) => {
                if let Some(k) = given.iter().find(|k| !self.system.contains_key(k.as_str())) {
                    return Err(err("system_given", format!("{k:?} is not a [system] setting")));
                }
            }
        }

        self.node.validate().map_err(|(f, m)| err(format!("node.{f}"), m))?;

        if self.engine.pack.is_empty() {
            return Err(err("engine.pack", "expected a pack file name or path"));
        }

        for (i, ev) in self.network.iter().enumerate() {
            check_network_event(i, ev, n, duration_s)?;
        }

        for (i, ev) in self.events.iter().enumerate() {
            if !(0.0..=duration_s).contains(&ev.at_s) {
                return Err(err(format!("events[{i}].at_s"), format!("expected a time in 0..{duration_s} s, got {}", ev.at_s)));
            }
        }
        // run-time faults are checked as the plant checks its scheduled faults
        let mut with_events = plant;
        with_events.faults = self.events.clone();
        with_events
            .validate()
            .map_err(|e| err(e.field.replacen("faults[", "events[", 1), e.message))?;
        self.events.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
        Ok(())
    }
}

/// `[system]`: `drift_ppm` apart, typed as a `PeerConfig` (unknown keys and types named),
/// checked with the members 1..N, and written back with every field but `node_id`/`members`.
fn normalise_system(mut table: Map<String, Value>, n: usize) -> Result<Map<String, Value>, ConfigError> {
    for key in ["members", "node_id"] {
        if table.contains_key(key) {
            return Err(err(format!("system.{key}"), "members and node ids come from plant.strings (1..N); remove it"));
        }
    }
    let drift: Vec<f64> = match table.remove("drift_ppm") {
        None => Vec::new(),
        Some(v) => typed_json(v, "system.drift_ppm")?,
    };
    if !drift.is_empty() && drift.len() != n {
        return Err(err("system.drift_ppm", format!("expected {n} values (one per pack), got {}", drift.len())));
    }
    let mut peer: PeerConfig = typed_json(Value::Object(table), "system")?;
    peer.node_id = 1;
    peer.members = (1..=n as u16).collect();
    peer.validate().map_err(|e| err(format!("system.{}", e.field), e.message))?;
    let Value::Object(mut out) = serde_json::to_value(&peer).expect("PeerConfig serialises") else {
        unreachable!("PeerConfig is a struct")
    };
    out.remove("node_id");
    out.remove("members");
    if !drift.is_empty() {
        out.insert("drift_ppm".into(), serde_json::to_value(drift).expect("numbers serialise"));
    }
    Ok(out)
}

fn check_network_event(i: usize, ev: &NetworkEvent, n: usize, duration_s: f64) -> Result<(), ConfigError> {
    let f = |name: &str| format!("network[{i}].{name}");
    if !(0.0..=duration_s).contains(&ev.at_s) {
        return Err(err(f("at_s"), format!("expected a time in 0..{duration_s} s, got {}", ev.at_s)));
    }
    let given = [
        ("value", ev.value.is_some()),
        ("max_ms", ev.max_ms.is_some()),
        ("groups", ev.groups.is_some()),
        ("node", ev.node.is_some()),
    ];
    let wanted = ev.kind.key();
    for (key, set) in given {
        if set && Some(key) != wanted {
            let expected = match wanted {
                Some(k) => format!("at_s, kind and {k}"),
                None => "at_s and kind".into(),
            };
            return Err(err(f(key), format!("unknown key for kind {:?}; expected {expected}", ev.kind)));
        }
    }
    if let Some(key) = wanted {
        if !given.iter().any(|(k, set)| *k == key && *set) {
            return Err(err(f(key), format!("missing; kind {:?} needs it", ev.kind)));
        }
    }
    if let Some(v) = ev.value {
        if !(0.0..=1.0).contains(&v) {
            return Err(err(f("value"), format!("expected a probability in 0..1, got {v}")));
        }
    }
    if let Some(groups) = &ev.groups {
        let mut seen: Vec<u16> = groups.iter().flatten().copied().collect();
        seen.sort_unstable();
        if seen != (1..=n as u16).collect::<Vec<_>>() {
            return Err(err(f("groups"), format!("expected every node id 1..{n} exactly once, got {groups:?}")));
        }
    }
    if let Some(node) = ev.node {
        if !(1..=n as u16).contains(&node) {
            return Err(err(f("node"), format!("expected a node id in 1..{n}, got {node}")));
        }
    }
    Ok(())
}

/// The JSON Schema of a scenario file.
#[cfg(feature = "schema")]
pub fn schema() -> serde_json::Value {
    schemars::schema_for!(Scenario).to_value()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Value {
        serde_json::json!({
            "scenario": {"duration_s": 10.0},
            "plant": {"strings": [
                {"series": 4, "parallel": 1, "cell": "lg_m50_nmc", "initial_soc": 0.5},
                {"series": 4, "parallel": 1, "cell": "lg_m50_nmc", "initial_soc": 0.5},
            ]},
        })
    }

    fn field_of(v: Value) -> String {
        Scenario::from_value(v).unwrap_err().field
    }

    #[test]
    fn defaults_fill_and_normalising_twice_changes_nothing() {
        let s = Scenario::from_value(base()).unwrap();
        assert_eq!(s.scenario.dt_s, 0.1);
        assert_eq!(s.engine.pack, "example_pack");
        assert_eq!(s.system["dv_close_v"], serde_json::to_value(PeerConfig::default().dv_close_v).unwrap());
        assert!(!s.system.contains_key("members") && !s.system.contains_key("drift_ppm"));
        assert_eq!(s.system_given.as_deref(), Some(&[][..]));
        let again = Scenario::from_value(serde_json::to_value(&s).unwrap()).unwrap();
        assert_eq!(serde_json::to_value(&again).unwrap(), serde_json::to_value(&s).unwrap());
    }

    #[test]
    fn the_stated_system_keys_are_kept_apart_from_the_defaults() {
        let mut v = base();
        v["system"] = serde_json::json!({"lease_ms": 2000, "heartbeat_ms": 100, "drift_ppm": [1.0, -1.0]});
        let s = Scenario::from_value(v).unwrap();
        // lease_ms equals the peer default and is still "stated"
        assert_eq!(s.system_given, Some(vec!["heartbeat_ms".to_string(), "lease_ms".to_string()]));
        assert!(s.system.contains_key("join_hold_lead_ms"));
        let again = Scenario::from_value(serde_json::to_value(&s).unwrap()).unwrap();
        assert_eq!(again.system_given, s.system_given);
        let mut bad = serde_json::to_value(&s).unwrap();
        bad["system_given"] = serde_json::json!(["lease_msec"]);
        assert_eq!(field_of(bad), "system_given");
    }

    #[test]
    fn errors_name_the_dotted_field() {
        let mut v = base();
        v["scenario"]["bogus"] = 1.into();
        assert_eq!(field_of(v), "scenario.bogus");
        let mut v = base();
        v["scenario"]["mode"] = "warp".into();
        assert_eq!(field_of(v), "scenario.mode");
        let mut v = base();
        v["network"] = serde_json::json!([{"at_s": 1.0, "kind": "kill", "node": 3}]);
        assert_eq!(field_of(v), "network[0].node");
        let mut v = base();
        v["network"] = serde_json::json!([{"at_s": 1.0, "kind": "heal", "value": 0.5}]);
        assert_eq!(field_of(v), "network[0].value");
        let mut v = base();
        v["network"] = serde_json::json!([{"at_s": 1.0, "kind": "loss"}]);
        assert_eq!(field_of(v), "network[0].value");
        let mut v = base();
        v["system"] = serde_json::json!({"drift_ppm": [1.0]});
        assert_eq!(field_of(v), "system.drift_ppm");
        let mut v = base();
        v["system"] = serde_json::json!({"lease_msec": 1});
        assert_eq!(field_of(v), "system.lease_msec");
        let mut v = base();
        v["events"] = serde_json::json!([{"at_s": 1.0, "fault": {"kind": "internal_short", "string": 7, "element": 1, "r_short_ohm": 1.0}}]);
        assert!(field_of(v).starts_with("events[0].fault.string"));
    }
}
