//! The configuration files of a node, read in one place: the pack file (engine tables, `[node]`,
//! `[hardware]`, optionally `extends` a base file that holds the engine tables) and the system
//! file shared by all peers (membership, peer protocol, transport, discovery).
//!
//! One path for every config value: TOML text (or a Python value, through the bindings) becomes
//! a [`toml::Value`], every float is checked to be finite (naming its dotted path), then serde
//! builds the typed config with `serde_path_to_error` (unknown keys, wrong types and missing keys
//! name their dotted field), then the ranges and the cross-checks run ([`node_findings`]). A real
//! start and `mbms node --check` call the same function; a start refuses any error finding, the
//! check lists them all. Sans-IO: files are read by the caller and handed over as text.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use mbms_consensus::PeerConfig;

use crate::cell_model::CellParams;
use crate::engine::{EngineConfig, ProtectionConfig};
use crate::node::{NodeConfig, MAX_NODE_ID};
use crate::protection::Thresholds;

// ---------------------------------------------------------------------------------------------
// Errors and findings
// ---------------------------------------------------------------------------------------------

/// A configuration error: the file it is in (if known), the dotted field and what was expected.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConfigError {
    pub file: Option<String>,
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.file {
            Some(file) => write!(f, "{file}: {}: {}", self.field, self.message),
            None => write!(f, "{}: {}", self.field, self.message),
        }
    }
}
impl std::error::Error for ConfigError {}

fn cerr(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError { file: None, field: field.into(), message: message.into() }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// A start refuses the configuration.
    Error,
    /// Legal but doubtful; a start logs it.
    Warning,
}

/// One finding of [`node_findings`]: file, dotted field, the value found (TOML), what was expected.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub file: String,
    pub field: String,
    /// The offending value as TOML, if the field has one.
    pub value: Option<String>,
    pub expected: String,
}

// ---------------------------------------------------------------------------------------------
// Values -> typed configs (the one conversion path)
// ---------------------------------------------------------------------------------------------

/// The first non-finite float (NaN, ±inf) below `v`, as a dotted path. TOML allows `nan` and
/// `inf`; no config value of mbms means either.
fn non_finite(v: &toml::Value, path: &str) -> Option<String> {
    match v {
        toml::Value::Float(x) if !x.is_finite() => Some(path.to_string()),
        toml::Value::Table(t) => t.iter().find_map(|(k, x)| non_finite(x, &join(path, k))),
        toml::Value::Array(a) => a.iter().enumerate().find_map(|(i, x)| non_finite(x, &format!("{path}[{i}]"))),
        _ => None,
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Build `T` from a value: finite floats, then serde with the dotted path of any error.
/// `prefix` is the dotted path of `v` in its file ("" for a whole file).
pub fn typed<T: DeserializeOwned>(v: toml::Value, prefix: &str) -> Result<T, ConfigError> {
    if let Some(p) = non_finite(&v, prefix) {
        return Err(cerr(p, "expected a finite number, got NaN or inf"));
    }
    serde_path_to_error::deserialize::<_, T>(v).map_err(|e| path_error(&e, prefix))
}

/// [`typed`] for a JSON value (what Python data becomes through `pythonize`; `null` is an
/// absent `Option`). JSON has no NaN or inf, so only the serde checks remain.
pub fn typed_json<T: DeserializeOwned>(v: serde_json::Value, prefix: &str) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize::<_, T>(v).map_err(|e| path_error(&e, prefix))
}

/// A serde error with its path as a [`ConfigError`] naming the dotted field.
fn path_error<E: std::fmt::Display>(e: &serde_path_to_error::Error<E>, prefix: &str) -> ConfigError {
    let inner = e.inner().to_string();
    let mut path = e.path().to_string();
    if path == "." {
        path.clear();
    }
    let mut field = join(prefix, &path);
    // serde names a missing key only in its message; put it into the dotted field
    if let Some(rest) = inner.strip_prefix("missing field `") {
        if let Some(name) = rest.split('`').next() {
            field = join(&field, name);
        }
    }
    // an unknown key: the path ends at its table; the key is in the message
    if let Some(rest) = inner.strip_prefix("unknown field `") {
        if let Some(name) = rest.split('`').next() {
            if !field.ends_with(name) {
                field = join(&field, name);
            }
        }
    }
    if field.is_empty() {
        field = "<root>".into();
    }
    cerr(field, clip_message(inner))
}

/// serde echoes the offending value; a hostile file's 200 kB string (or a float printed with
/// 300 digits) must still give a one-line error of readable length.
fn clip_message(mut m: String) -> String {
    const MAX: usize = 200;
    if m.len() > MAX {
        let cut = (0..=MAX).rev().find(|&i| m.is_char_boundary(i)).unwrap_or(0);
        m.truncate(cut);
        m.push_str("...");
    }
    m.replace(['\n', '\r'], " ")
}

/// Parse TOML text into a table, naming the line of a syntax error.
pub fn parse_toml(text: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>().map_err(|e| cerr("<toml>", format!("not valid TOML: {}", e.message().trim()) + &line_of(text, e.span())))
}

fn line_of(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(r) => format!(" (line {})", text[..r.start.min(text.len())].matches('\n').count() + 1),
        None => String::new(),
    }
}

/// The `extends` key of a pack file: the base file (path relative to this file) whose tables this
/// file overrides key by key. `None` if absent.
pub fn extends_of(table: &toml::Table) -> Result<Option<String>, ConfigError> {
    match table.get("extends") {
        None => Ok(None),
        Some(toml::Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
        Some(v) => Err(cerr("extends", format!("expected the path of a base pack file, got {v}"))),
    }
}

/// One file of a layered config: its name (for messages) and its parsed table.
#[derive(Debug, Clone)]
pub struct Layer {
    pub source: String,
    pub table: toml::Table,
}

/// Merge layers, base first: a later layer overrides an earlier one key by key (tables merge,
/// arrays and values are replaced). `extends` is dropped.
pub fn merge(layers: &[Layer]) -> toml::Table {
    fn into(dst: &mut toml::Table, src: &toml::Table) {
        for (k, v) in src {
            match (dst.get_mut(k), v) {
                (Some(toml::Value::Table(d)), toml::Value::Table(s)) => into(d, s),
                _ => {
                    dst.insert(k.clone(), v.clone());
                }
            }
        }
    }
    let mut out = toml::Table::new();
    for l in layers {
        into(&mut out, &l.table);
    }
    out.remove("extends");
    out
}

fn lookup<'a>(t: &'a toml::Table, dotted: &str) -> Option<&'a toml::Value> {
    let mut parts = dotted.split('.');
    let mut cur = t.get(parts.next()?)?;
    for p in parts {
        let (name, index) = match p.find('[') {
            Some(i) => (&p[..i], p[i + 1..].trim_end_matches(']').parse::<usize>().ok()),
            None => (p, None),
        };
        cur = cur.as_table()?.get(name)?;
        if let Some(i) = index {
            cur = cur.as_array()?.get(i)?;
        }
    }
    Some(cur)
}

/// The file a dotted field comes from: the last layer that sets it (or its closest parent
/// table); the top (last) layer if none does.
fn source_of(layers: &[Layer], field: &str) -> String {
    let mut path = field.to_string();
    loop {
        if let Some(l) = layers.iter().rev().find(|l| lookup(&l.table, &path).is_some()) {
            return l.source.clone();
        }
        match path.rfind('.') {
            Some(i) => path.truncate(i),
            None => break,
        }
    }
    layers.last().map(|l| l.source.clone()).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// The files' schemas
// ---------------------------------------------------------------------------------------------

/// The `[hardware]` table of a pack file: which measurement/actuator adapter the node uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct HardwareConfig {
    /// Adapter name in the `mbms.hardware` entry-point registry; "sim" = the simulated plant
    /// served by `mbms plant` (built in). Whether the name is installed is checked by the
    /// runtime's registry (mbms.registry), which knows the installed distributions.
    pub adapter: String,
    /// The node's own sensor link (adapter "sim", required there): "udp://IP:PORT" or
    /// "unix:///abs/path".
    #[serde(default)]
    pub link: String,
    /// Settings of a third-party adapter (passed to it unchanged; it checks them).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub options: serde_json::Map<String, serde_json::Value>,
    /// This pack's string index in the plant: 0..N-1 for the N configured members.
    #[serde(default)]
    pub string: u32,
    /// No reply from the plant for this long = lost link: fail-safe (ms).
    #[serde(default = "default_link_timeout_ms")]
    pub link_timeout_ms: u32,
    /// Adapter "linux": the LTC6813-1 daisy chain on isoSPI (mbms/hardware/ltc6813.py).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub afe: Option<AfeConfig>,
    /// Adapter "linux": the pack's sensor CAN bus (current sensor and insulation monitor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensor_can: Option<CanTransport>,
    /// Adapter "linux": the IVT-S current sensor on `sensor_can` (mbms/hardware/ivt_s.py).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_sensor: Option<CurrentSensorConfig>,
    /// Adapter "linux": contactor coils and auxiliary contacts on GPIO lines (gpio_contactors.py).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contactors: Option<ContactorLinesConfig>,
    /// Adapter "linux": the iso165C insulation monitor on `sensor_can` (iso165c.py); absent = none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insulation: Option<InsulationConfig>,
}

/// `[hardware.afe]`: one isoSPI chain of LTC6813-1; cells sit on inputs 1..cells_per_ic of each
/// IC and NTCs on GPIO1..temps_per_ic, IC 0 nearest to the controller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct AfeConfig {
    /// "/dev/spidevB.C" (Linux spidev), or "emu:///PATH" for the emulated chain of `mbms plant --devices`.
    pub device: String,
    /// SPI clock (Hz); isoSPI allows at most 1 MHz (LTC6813-1 datasheet: t_CLK >= 1 us).
    #[serde(default = "default_spi_hz")]
    pub spi_hz: u32,
    pub ics: u32,
    pub cells_per_ic: u32,
    pub temps_per_ic: u32,
    /// Discharge timeout code DCTO (0 = off, 1 = 0.5 min, 2 = 1 min, ... 15 = 120 min): balancing
    /// stops by itself when the controller stops rewriting the configuration.
    #[serde(default = "default_dcto")]
    pub dcto_code: u8,
    /// Run the open-wire check (ADOW) every this many acquisitions (0 = never).
    #[serde(default = "default_open_wire_every")]
    pub open_wire_every: u32,
    /// NTC divider: beta (K), R25 (ohm), pull-up to VREF2 (ohm).
    #[serde(default = "default_ntc_beta")]
    pub ntc_beta_k: f64,
    #[serde(default = "default_ntc_ohm")]
    pub ntc_r25_ohm: f64,
    #[serde(default = "default_ntc_ohm")]
    pub ntc_pullup_ohm: f64,
}

fn default_spi_hz() -> u32 {
    1_000_000
}
fn default_dcto() -> u8 {
    2
}
fn default_open_wire_every() -> u32 {
    10
}
fn default_ntc_beta() -> f64 {
    3435.0
}
fn default_ntc_ohm() -> f64 {
    10_000.0
}

/// `[hardware.current_sensor]`: the IVT-S on the sensor bus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, deny_unknown_fields)]
pub struct CurrentSensorConfig {
    /// Cycle of I and U1..U3 (ms) the driver configures; T, W, As, Wh run 5x slower.
    pub cycle_ms: u32,
    /// A result older than this many of its cycles = sensor lost.
    pub timeout_cycles: u32,
    /// +1 if the sensor's positive direction is discharge, -1 if it is charge.
    pub current_sign: f64,
}

impl Default for CurrentSensorConfig {
    fn default() -> Self {
        Self { cycle_ms: 20, timeout_cycles: 5, current_sign: 1.0 }
    }
}

/// `[hardware.contactors]`: GPIO chip and line offsets; the welded / stuck-open checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ContactorLinesConfig {
    /// "/dev/gpiochipN" (libgpiod), or "emu:///PATH" for the emulated chip of `mbms plant --devices`.
    pub chip: String,
    pub neg_out: u32,
    pub pos_out: u32,
    pub pre_out: u32,
    pub neg_fb: u32,
    pub pos_fb: u32,
    pub pre_fb: u32,
    /// Welded: more than this current (A) with main positive and precharge commanded open.
    #[serde(default = "default_i_open_a")]
    pub i_open_a: f64,
    /// Stuck open: more than this voltage (V) across main contactors commanded and reported closed.
    #[serde(default = "default_dv_closed_v")]
    pub dv_closed_v: f64,
    /// Either condition must hold this long (ms): longer than the contactor's own open/close time.
    #[serde(default = "default_confirm_ms")]
    pub confirm_ms: u32,
}

fn default_i_open_a() -> f64 {
    2.0
}
fn default_dv_closed_v() -> f64 {
    10.0
}
fn default_confirm_ms() -> u32 {
    300
}

/// `[hardware.insulation]`: the iso165C on the sensor bus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct InsulationConfig {
    /// Insulation fault below this resistance (kOhm). UN ECE R100 asks >= 100 ohm/V on a DC
    /// bus: 100 kOhm for a 1000 V bus.
    pub min_kohm: f64,
    /// Warning (logged, not a trip) below this resistance (kOhm).
    pub warning_kohm: f64,
    /// No IMD_Info for this long = monitor lost (ms); the iso165C sends it every second.
    #[serde(default = "default_imd_timeout_ms")]
    pub timeout_ms: u32,
}

fn default_imd_timeout_ms() -> u32 {
    3000
}

fn default_link_timeout_ms() -> u32 {
    300
}

/// A pack file as a node reads it (after `extends` is merged).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct PackFile {
    /// Base pack file (path relative to this file) whose tables this file overrides key by key;
    /// lets node files share one copy of the engine tables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extends: Option<String>,
    pub pack: crate::engine::PackSection,
    #[serde(default)]
    pub estimator: crate::soc_ekf::EstimatorConfig,
    pub protection: ProtectionConfig,
    pub limits: crate::limits::LimitsConfig,
    #[serde(default)]
    pub balancing: crate::balancing::BalancingConfig,
    pub node: NodeConfig,
    pub hardware: HardwareConfig,
    /// How operators reach this node: MQTT, Prometheus metrics, UDS, the event log (issue 13).
    #[serde(default)]
    pub operator: OperatorConfig,
}

impl PackFile {
    pub fn engine(&self) -> EngineConfig {
        EngineConfig {
            pack: self.pack.clone(),
            estimator: self.estimator.clone(),
            protection: self.protection.clone(),
            limits: self.limits.clone(),
            balancing: self.balancing.clone(),
        }
    }
}

/// `[operator]` of a pack file: the node's links to its operators (issue 13). Every part is off
/// unless its table is present; the event log's bound always applies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, deny_unknown_fields)]
pub struct OperatorConfig {
    /// `events.jsonl` is rotated to `events.jsonl.1` (.2, ...) when it reaches this size (bytes).
    pub events_max_bytes: u64,
    /// Rotated event logs kept besides the live one (older ones are deleted).
    pub events_keep: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<MqttConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uds: Option<UdsConfig>,
}

impl Default for OperatorConfig {
    fn default() -> Self {
        // 4 MiB x (1 + 4): a few weeks of events of a busy node in 20 MiB of flash.
        Self { events_max_bytes: 4 << 20, events_keep: 4, mqtt: None, metrics: None, uds: None }
    }
}

/// `[operator.mqtt]`: state, events and Home Assistant discovery to an MQTT broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    pub host: String,
    /// 1883 plain, 8883 is the usual TLS port (IANA).
    pub port: u16,
    pub username: String,
    pub password: String,
    /// TLS to the broker; `ca_file` empty = the system's trust store.
    pub tls: bool,
    pub ca_file: String,
    /// Client certificate and key (both or neither).
    pub cert_file: String,
    pub key_file: String,
    /// Topics: `<topic_prefix>/<system_id>/<node id>/...`.
    pub topic_prefix: String,
    /// Home Assistant's discovery prefix; empty = no discovery messages.
    pub discovery_prefix: String,
    /// Period of the state messages (ms).
    pub state_period_ms: u32,
    /// Period of the per-cell voltage message (ms).
    pub cells_period_ms: u32,
    /// MQTT keepalive (s); the broker publishes the last will after 1.5 x this without traffic.
    pub keepalive_s: u16,
    pub qos: u8,
    /// Messages held while the broker is away; the oldest are dropped beyond this.
    pub queue_max: u32,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(), port: 1883, username: String::new(), password: String::new(), tls: false,
            ca_file: String::new(), cert_file: String::new(), key_file: String::new(), topic_prefix: "mbms".into(),
            discovery_prefix: "homeassistant".into(), state_period_ms: 1000, cells_period_ms: 10_000,
            keepalive_s: 30, qos: 1, queue_max: 1000,
        }
    }
}

/// `[operator.metrics]`: a Prometheus text endpoint (`http://bind:port/metrics`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    pub bind: String,
    /// 0 = any free port (tests; the node logs the one it got).
    pub port: u16,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { bind: "127.0.0.1".into(), port: 9108 }
    }
}

/// `[operator.uds]`: UDS (ISO 14229) diagnostics over ISO-TP (ISO 15765-2) on a python-can bus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, deny_unknown_fields)]
pub struct UdsConfig {
    /// python-can interface and channel (and port for udp_multicast).
    pub interface: String,
    pub channel: String,
    pub port: u16,
    /// Request / response CAN ids; 0 = 0x300 + node id / 0x340 + node id (between the
    /// telemetry 0x200..0x2FF and the peer protocol 0x400..0x7FF of mbms.dbc).
    pub rx_id: u32,
    pub tx_id: u32,
    /// Shared secret of SecurityAccess (hex, 16..64 bytes); empty = nothing that acts is allowed.
    pub security_key_hex: String,
    /// The ECU serial number DID 0xF18C reports.
    pub serial: String,
}

impl Default for UdsConfig {
    fn default() -> Self {
        Self {
            interface: "socketcan".into(), channel: "can0".into(), port: 43113, rx_id: 0, tx_id: 0,
            security_key_hex: String::new(), serial: String::new(),
        }
    }
}

/// Range checks of `[operator]`: (dotted field below `operator.`, what was expected).
fn operator_findings(o: &OperatorConfig) -> Vec<(String, String)> {
    let mut v = Vec::new();
    if o.events_max_bytes < 4096 {
        v.push(("events_max_bytes".into(), "at least 4096 (bytes)".into()));
    }
    if o.events_keep > 100 {
        v.push(("events_keep".into(), "0..=100 rotated files".into()));
    }
    if let Some(m) = &o.mqtt {
        if m.host.is_empty() || m.host.len() > 253 {
            // 253: the longest DNS name (RFC 1035)
            v.push(("mqtt.host".into(), "a broker host name or address (1..=253 characters)".into()));
        }
        if m.port == 0 {
            v.push(("mqtt.port".into(), "a port 1..65535".into()));
        }
        if m.qos > 2 {
            v.push(("mqtt.qos".into(), "0, 1 or 2".into()));
        }
        if m.cert_file.is_empty() != m.key_file.is_empty() {
            v.push(("mqtt.key_file".into(), "cert_file and key_file both given or both empty".into()));
        }
        if !m.tls && !(m.ca_file.is_empty() && m.cert_file.is_empty()) {
            v.push(("mqtt.tls".into(), "true when ca_file or cert_file is given".into()));
        }
        if !m.password.is_empty() && m.username.is_empty() {
            v.push(("mqtt.username".into(), "a user name when a password is given".into()));
        }
        if m.topic_prefix.is_empty() || m.topic_prefix.len() > 256 || m.topic_prefix.contains(['+', '#']) || m.topic_prefix.ends_with('/') {
            v.push(("mqtt.topic_prefix".into(), "a topic without wildcards (+, #) or a trailing '/'".into()));
        }
        if m.discovery_prefix.contains(['+', '#']) {
            v.push(("mqtt.discovery_prefix".into(), "a topic without wildcards (+, #)".into()));
        }
        for (f, x) in [("state_period_ms", m.state_period_ms), ("cells_period_ms", m.cells_period_ms)] {
            if !(100..=3_600_000).contains(&x) {
                v.push((format!("mqtt.{f}"), "an integer 100..=3600000 (ms)".into()));
            }
        }
        if !(5..=3600).contains(&m.keepalive_s) {
            v.push(("mqtt.keepalive_s".into(), "an integer 5..=3600 (s)".into()));
        }
        if !(1..=100_000).contains(&m.queue_max) {
            v.push(("mqtt.queue_max".into(), "an integer 1..=100000 (messages)".into()));
        }
    }
    if let Some(m) = &o.metrics {
        if !is_ip(&m.bind) {
            v.push(("metrics.bind".into(), "a numeric IP address".into()));
        }
    }
    if let Some(u) = &o.uds {
        for (f, x) in [("rx_id", u.rx_id), ("tx_id", u.tx_id)] {
            if x > 0x7FF {
                v.push((format!("uds.{f}"), "an 11-bit CAN id 0x001..=0x7FF, or 0 for the default".into()));
            }
        }
        if u.rx_id != 0 && u.rx_id == u.tx_id {
            v.push(("uds.tx_id".into(), "a CAN id other than rx_id".into()));
        }
        let k = &u.security_key_hex;
        if !k.is_empty() && (k.len() % 2 != 0 || !(32..=128).contains(&k.len()) || !k.chars().all(|c| c.is_ascii_hexdigit())) {
            v.push(("uds.security_key_hex".into(), "16..64 bytes as hex digits, or empty".into()));
        }
        if u.interface.is_empty() || u.interface.len() > 64 {
            v.push(("uds.interface".into(), "a python-can interface name of 1..=64 characters".into()));
        }
        if u.channel.is_empty() || u.channel.len() > 64 {
            v.push(("uds.channel".into(), "a python-can channel of 1..=64 characters".into()));
        }
        if u.serial.len() > 32 {
            v.push(("uds.serial".into(), "a serial number of up to 32 characters (DID 0xF18C)".into()));
        }
        if u.port == 0 {
            v.push(("uds.port".into(), "a port 1..65535".into()));
        }
    }
    v
}

/// `[transport.can]`: a python-can bus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, deny_unknown_fields)]
pub struct CanTransport {
    /// python-can interface name: socketcan, udp_multicast, virtual, ...
    pub interface: String,
    pub channel: String,
    /// Only for udp_multicast: the UDP port (python-can's default is 43113).
    pub port: u16,
    pub bitrate: u32,
    /// CAN FD: one frame per peer message; classic CAN segments into up to 8 frames.
    pub fd: bool,
}

impl Default for CanTransport {
    fn default() -> Self {
        Self { interface: "socketcan".into(), channel: "can0".into(), port: 43113, bitrate: 500_000, fd: false }
    }
}

/// Range checks of a python-can bus table (the peers' `[transport.can]`, `[inverter.can]`,
/// `[hardware.sensor_can]`): (field below the table, what was expected). The same for every bus,
/// so `--check` refuses what opening the bus at a start would trip over.
fn can_bus_findings(c: &CanTransport) -> Vec<(&'static str, &'static str)> {
    let mut v = Vec::new();
    // Names are short identifiers: an empty, huge or control-character name is a typo or garbage
    // (issue 11: a 200 kB value must not reach python-can).
    for (f, x) in [("interface", &c.interface), ("channel", &c.channel)] {
        if x.is_empty() || x.len() > 64 || x.chars().any(char::is_control) {
            v.push((f, "a python-can name of 1..=64 printable characters"));
        }
    }
    if c.port == 0 {
        v.push(("port", "a port 1..65535"));
    }
    if !(10_000..=8_000_000).contains(&c.bitrate) {
        v.push(("bitrate", "a bit rate 10000..=8000000"));
    }
    v
}

/// `[transport.udp]`: one msgpack datagram per message, to a multicast group or a peer list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, deny_unknown_fields)]
pub struct UdpTransport {
    pub port: u16,
    /// IPv4 multicast group (224.0.0.0/4); ignored if `peers` is given.
    pub group: String,
    /// Address of the interface to join the group on / send from ("0.0.0.0" = default route).
    pub interface: String,
    /// Unicast alternative: "ip:port" of every member, in the order of `members`.
    pub peers: Vec<String>,
    /// Address to bind for receiving.
    pub bind: String,
    pub ttl: u8,
}

impl Default for UdpTransport {
    fn default() -> Self {
        Self {
            port: 47100,
            group: "239.255.77.1".into(),
            interface: "0.0.0.0".into(),
            peers: Vec::new(),
            bind: "0.0.0.0".into(),
            ttl: 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct TransportConfig {
    /// Name of the transport in the `mbms.transports` entry-point registry: built in are
    /// "can" (python-can: socketcan on controllers, udp_multicast between processes on one
    /// host; settings in `[transport.can]`) and "udp" (one msgpack datagram per message;
    /// `[transport.udp]`). Another installed transport is named here and takes its settings
    /// from `[transport.options]`; whether the name is installed is checked by the runtime's
    /// registry (mbms.registry), which knows the installed distributions.
    pub kind: String,
    /// Settings of a third-party transport (passed to it unchanged; it checks them).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub options: serde_json::Map<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub can: Option<CanTransport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<UdpTransport>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, deny_unknown_fields)]
pub struct DiscoveryConfig {
    pub enabled: bool,
    /// IP addresses zeroconf uses; empty = all.
    pub interfaces: Vec<String>,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self { enabled: true, interfaces: Vec::new() }
    }
}

/// Message authentication of a system (brief S7): the key file every node of the system reads,
/// or, explicitly, none. A system file without `[auth]` loads (tools that only read the
/// configuration need no key), but a node does not start from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The system's key file (`mbms keys new FILE`; mode 0600), relative to the system file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
    /// No authentication at all: any device on the bus can speak for a node. Only for a bench;
    /// every node logs it at start.
    #[serde(default)]
    pub off: bool,
}

/// Which battery protocol the inverter (or charger) speaks on the inverter CAN channel.
/// Each is a DBC file shipped in the package (`mbms/data/dbc/<name>.dbc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum InverterProtocol {
    /// The 11-bit "Pylontech / CAN-BMS" low-voltage set (0x351 ... 0x35E), cyclic.
    PylonLv,
    /// The 29-bit Pylon HV (Force-H) set: the inverter polls 0x4200, the BMS answers.
    PylonHv,
}

/// `[inverter]`: the battery's link to its inverter, sent by the current speaker (the
/// peer every live peer names; consensus `update_speaker`) on a CAN channel of its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, deny_unknown_fields)]
pub struct InverterConfig {
    pub protocol: InverterProtocol,
    /// The inverter's CAN bus (python-can), not the peers' one.
    pub can: CanTransport,
    /// Frame cycle of the cyclic protocols (ms); Pylontech LV sends every frame once a second.
    pub cycle_ms: u32,
    /// The inverter's communication timeout (ms): it stops when no frame came for this long.
    /// A speaker handover must fit inside it (fail_timeout_ms + cycle_ms).
    pub timeout_ms: u32,
    /// CVL = series × (cell v_max − this) (V per cell).
    pub cvl_margin_v_per_cell: f64,
    /// DVL = series × (cell v_min + this) (V per cell).
    pub dvl_margin_v_per_cell: f64,
    /// Manufacturer name in the name frame (ASCII, up to 8 characters).
    pub manufacturer: String,
    /// Below this SOC (0..1) the battery asks the inverter to force-charge.
    pub force_charge_soc: f64,
    /// After losing the quorum the former speaker sends this many cycles of "stop" frames
    /// (limits 0, enables off) before falling silent.
    pub stop_frames: u32,
}

impl Default for InverterConfig {
    fn default() -> Self {
        Self {
            protocol: InverterProtocol::PylonLv,
            can: CanTransport { channel: "can1".into(), ..CanTransport::default() },
            cycle_ms: 1000,
            timeout_ms: 5000,
            cvl_margin_v_per_cell: 0.05,
            dvl_margin_v_per_cell: 0.1,
            manufacturer: "MBMS".into(),
            force_charge_soc: 0.05,
            stop_frames: 3,
        }
    }
}

impl InverterConfig {
    /// Longest time from the speaker raising the join hold until the inverter has it (ms).
    /// Pylon LV: the speaker sends the frames at once when the hold rises, so one gateway
    /// period (200 ms, the speaker's loop) bounds it. Pylon HV: the BMS answers only the
    /// inverter's poll of 0x4200, which comes every `cycle_ms` (about 1 s in the Pylon HV
    /// protocol document), plus that gateway period.
    pub fn hold_latency_ms(&self) -> u32 {
        const GATEWAY_PERIOD_MS: u32 = 200;
        match self.protocol {
            InverterProtocol::PylonLv => GATEWAY_PERIOD_MS,
            InverterProtocol::PylonHv => self.cycle_ms + GATEWAY_PERIOD_MS,
        }
    }

    pub fn validate(&self, fail_timeout_ms: u32) -> Result<(), ConfigError> {
        if !(10..=10_000).contains(&self.cycle_ms) {
            return Err(cerr("inverter.cycle_ms", format!("expected 10..=10000 ms, got {}", self.cycle_ms)));
        }
        let need = self.cycle_ms as u64 + fail_timeout_ms as u64;
        if (self.timeout_ms as u64) <= need || self.timeout_ms > 600_000 {
            return Err(cerr(
                "inverter.timeout_ms",
                format!("expected > cycle_ms + protocol.fail_timeout_ms = {need} ms (a speaker handover must fit) and <= 600000, got {}", self.timeout_ms),
            ));
        }
        for (name, v) in [("cvl_margin_v_per_cell", self.cvl_margin_v_per_cell), ("dvl_margin_v_per_cell", self.dvl_margin_v_per_cell)] {
            if !(v.is_finite() && (0.0..=0.5).contains(&v)) {
                return Err(cerr(format!("inverter.{name}"), format!("expected 0..=0.5 V per cell, got {v}")));
            }
        }
        if !(self.force_charge_soc.is_finite() && (0.0..=1.0).contains(&self.force_charge_soc)) {
            return Err(cerr("inverter.force_charge_soc", "expected a fraction in 0..=1"));
        }
        if self.manufacturer.len() > 8 || !self.manufacturer.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(cerr("inverter.manufacturer", "expected up to 8 printable ASCII characters"));
        }
        if self.stop_frames > 100 {
            return Err(cerr("inverter.stop_frames", "expected <= 100"));
        }
        if let Some((f, m)) = can_bus_findings(&self.can).first() {
            return Err(cerr(format!("inverter.can.{f}"), format!("expected {m}")));
        }
        Ok(())
    }
}

/// A system file, shared by all peers. The peer protocol settings are one [`PeerConfig`]:
/// `heartbeat_ms`, `dv_close_v` and `lease_ms` may sit at the top level (where operators look
/// for them) or in `[protocol]`, not both; identity fields (`system_id`, `node_id`, `members`,
/// `seed`) are never taken from `[protocol]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct SystemFile {
    /// Name of the battery system (letters, digits, '-', '_', '.'; up to 40). The wire carries
    /// its CRC-32.
    pub system_id: String,
    /// The configured member ids (1..=63, unique). Quorum = floor(N/2)+1 of them (brief §3).
    pub members: Vec<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_ms: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dv_close_v: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ms: Option<u32>,
    pub transport: TransportConfig,
    #[serde(default)]
    pub discovery: DiscoveryConfig,
    /// Peer protocol settings (consensus `PeerConfig`); missing keys take its defaults.
    #[serde(default)]
    pub protocol: PeerConfig,
    /// Message authentication (S7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthConfig>,
    /// The inverter link (none: no inverter frames are sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inverter: Option<InverterConfig>,
}

/// PeerConfig fields that a system file may give at its top level.
const TOP_LEVEL_PEER: [&str; 3] = ["heartbeat_ms", "dv_close_v", "lease_ms"];
/// PeerConfig fields that come from elsewhere (the node, the system id, the boot).
const IDENTITY_PEER: [&str; 4] = ["system_id", "node_id", "members", "seed"];

/// The normalised system: what every consumer (node, monitor, processes mode) reads.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SystemConfig {
    pub source: String,
    pub system_id: String,
    /// CRC-32 (IEEE) of `system_id`: the system id of the peer messages.
    pub system_id_u32: u32,
    pub members: Vec<u16>,
    pub quorum: usize,
    pub transport: TransportConfig,
    pub discovery: DiscoveryConfig,
    /// Every protocol setting, defaults filled; identity fields as placeholders (node_id = the
    /// first member, seed 0) until a node takes it ([`SystemConfig::peer_for`]).
    pub protocol: PeerConfig,
    /// Message authentication as the file gives it (None: not configured).
    pub auth: Option<AuthConfig>,
    pub inverter: Option<InverterConfig>,
}

impl SystemConfig {
    /// The peer config of node `node_id` with boot seed `seed`.
    pub fn peer_for(&self, node_id: u16, seed: u64) -> PeerConfig {
        PeerConfig { node_id, seed, ..self.protocol.clone() }
    }
}

/// CRC-32 (IEEE 802.3, reflected, as zlib's `crc32`).
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

// ---------------------------------------------------------------------------------------------
// Reading the files
// ---------------------------------------------------------------------------------------------

/// The engine's part of pack-file layers (other tables `node`, `hardware` belong to the node
/// runtime and are skipped; any other top-level key is an error).
pub fn engine_from_layers(layers: &[Layer]) -> Result<EngineConfig, ConfigError> {
    let mut merged = merge(layers);
    let attach = |e: ConfigError| ConfigError { file: Some(source_of(layers, &e.field)), ..e };
    for k in merged.keys() {
        if !EngineConfig::TABLES.iter().any(|t| *t == &k[..]) && k != "node" && k != "hardware" && k != "operator" {
            return Err(attach(cerr(
                k.clone(),
                format!("unknown top-level table; expected {:?}, node, hardware, operator, extends", EngineConfig::TABLES),
            )));
        }
    }
    merged.retain(|k, _| EngineConfig::TABLES.iter().any(|t| *t == &k[..]));
    let cfg: EngineConfig = typed(toml::Value::Table(merged), "").map_err(attach)?;
    cfg.validate().map_err(|e| attach(cerr(e.field, e.message)))?;
    Ok(cfg)
}

/// S3 (issue 11): a join may close only once the inverter holds its current. The speaker hears
/// a peer's request up to a heartbeat late, the inverter the hold `hold_latency_ms` after that
/// ([`InverterConfig::hold_latency_ms`]), so the join hold must lead the close by their sum.
pub fn join_hold_lead_needed_ms(protocol: &PeerConfig, hold_latency_ms: u32) -> u32 {
    protocol.heartbeat_ms + hold_latency_ms
}

/// What a system file that does not set `protocol.join_hold_lead_ms` gets for an inverter whose
/// hold arrives `hold_latency_ms` late: the lead it needs, and (unless `lease_given`) a lease that
/// covers it: lease·(1−2ρ) > lead + precharge_timeout + verify_timeout + close_confirm, rounded up
/// to 100 ms (PeerConfig::validate states the same bound). The one derivation: the system reader
/// and the simulators (through the bindings) use it.
pub fn derive_join_hold(protocol: &mut PeerConfig, hold_latency_ms: u32, lease_given: bool) {
    let need = join_hold_lead_needed_ms(protocol, hold_latency_ms);
    protocol.join_hold_lead_ms = need;
    if !lease_given {
        let close = (need.max(protocol.grant_wait_ms) + protocol.precharge_timeout_ms
            + protocol.verify_timeout_ms + protocol.close_confirm_ms) as f64;
        let rho2 = 2.0 * protocol.max_drift_ppm as f64 * 1e-6;
        let lease = ((close / (1.0 - rho2)) / 100.0).floor() as u32 * 100 + 100;
        protocol.lease_ms = protocol.lease_ms.max(lease);
    }
}

/// Read a system file (text already parsed), normalised.
pub fn system_from_table(source: &str, table: toml::Table) -> Result<SystemConfig, ConfigError> {
    let at = |e: ConfigError| ConfigError { file: Some(source.to_string()), ..e };
    if let Some(toml::Value::Table(p)) = table.get("protocol") {
        for k in IDENTITY_PEER {
            if p.contains_key(k) {
                return Err(at(cerr(format!("protocol.{k}"), "not a protocol setting: set by the system file (system_id, members) or the node")));
            }
        }
        for k in TOP_LEVEL_PEER {
            if p.contains_key(k) && table.contains_key(k) {
                return Err(at(cerr(k, format!("given twice: at the top level and in [protocol]; keep one"))));
            }
        }
    }
    let in_protocol = |k: &str| table.get("protocol").and_then(|p| p.as_table()).is_some_and(|p| p.contains_key(k));
    let lead_given = in_protocol("join_hold_lead_ms");
    let lease_given = in_protocol("lease_ms") || table.contains_key("lease_ms");
    let f: SystemFile = typed(toml::Value::Table(table), "").map_err(at)?;
    if let Some(a) = &f.auth {
        match (&a.key_file, a.off) {
            (Some(_), true) => return Err(at(cerr("auth", "key_file and off = true: choose one"))),
            (None, false) => {
                return Err(at(cerr("auth", "expected key_file = \"FILE\" (mbms keys new FILE) or off = true")))
            }
            (Some(k), false) if k.trim().is_empty() => return Err(at(cerr("auth.key_file", "empty path"))),
            _ => {}
        }
    }
    let mut protocol = f.protocol.clone();
    if let Some(v) = f.heartbeat_ms {
        protocol.heartbeat_ms = v;
    }
    if let Some(v) = f.dv_close_v {
        protocol.dv_close_v = v;
    }
    if let Some(v) = f.lease_ms {
        protocol.lease_ms = v;
    }
    protocol.system_id = crc32(f.system_id.as_bytes());
    protocol.members = f.members.clone();
    protocol.node_id = f.members.first().copied().unwrap_or(0);
    protocol.seed = 0;
    if let Some(inv) = &f.inverter {
        inv.validate(protocol.fail_timeout_ms).map_err(at)?;
        let need = join_hold_lead_needed_ms(&protocol, inv.hold_latency_ms());
        if !lead_given {
            derive_join_hold(&mut protocol, inv.hold_latency_ms(), lease_given);
        }
        if protocol.join_hold_lead_ms < need {
            return Err(at(cerr(
                "protocol.join_hold_lead_ms",
                format!(
                    "expected >= heartbeat_ms + the inverter's hold latency ({:?}: {} ms) = {need} ms, got {} (raise lease_ms with it)",
                    inv.protocol,
                    inv.hold_latency_ms(),
                    protocol.join_hold_lead_ms
                ),
            )));
        }
    }
    Ok(SystemConfig {
        source: source.to_string(),
        system_id_u32: protocol.system_id,
        quorum: f.members.len() / 2 + 1,
        system_id: f.system_id,
        members: f.members,
        transport: f.transport,
        discovery: f.discovery,
        protocol,
        auth: f.auth,
        inverter: f.inverter,
    })
}

/// The result of reading a node's files: what a start uses, and every finding.
#[derive(Debug, Clone, Serialize)]
pub struct NodeFiles {
    pub pack: Option<PackFile>,
    pub system: Option<SystemConfig>,
    pub findings: Vec<Finding>,
}

impl NodeFiles {
    /// The first error, as a start reports it.
    pub fn first_error(&self) -> Option<ConfigError> {
        self.findings.iter().find(|f| f.severity == Severity::Error).map(|f| ConfigError {
            file: Some(f.file.clone()),
            field: f.field.clone(),
            message: match &f.value {
                Some(v) => format!("{}, got {v}", f.expected),
                None => f.expected.clone(),
            },
        })
    }
}

/// Read and check a node's files: the pack file's layers (base first), the system file and the
/// cell parameter file's text (`None`: not found; the caller adds that finding). Everything a
/// start checks, in the order a start checks it; a start refuses the first error.
pub fn node_findings(layers: &[Layer], system: Option<(&str, &str)>, cell_text: Option<&str>) -> NodeFiles {
    let mut out = NodeFiles { pack: None, system: None, findings: Vec::new() };
    let merged = merge(layers);
    let pack_src = layers.last().map(|l| l.source.clone()).unwrap_or_default();
    let pack_finding = |sev: Severity, field: &str, expected: String| {
        let value = lookup(&merged, field).filter(|v| !v.is_table()).map(|v| v.to_string());
        Finding { severity: sev, file: source_of(layers, field), field: field.to_string(), expected: expected_text(expected, value.is_some()), value }
    };
    // --- pack file (none given: the system file alone): schema, then ranges of every part
    let parsed = if layers.is_empty() { None } else { Some(typed::<PackFile>(toml::Value::Table(merged.clone()), "")) };
    match parsed {
        None => {}
        Some(Err(e)) => out.findings.push(pack_finding(Severity::Error, &e.field, e.message)),
        Some(Ok(p)) => {
            if let Err(e) = p.engine().validate() {
                out.findings.push(pack_finding(Severity::Error, &e.field, e.message));
            }
            if let Err((f, m)) = p.node.validate() {
                out.findings.push(pack_finding(Severity::Error, &format!("node.{f}"), m));
            }
            if p.node.id.is_none() {
                out.findings.push(pack_finding(Severity::Error, "node.id", "missing; the node's id (one of the system's members) is required".into()));
            }
            if p.node.state_dir.is_none() {
                out.findings.push(pack_finding(Severity::Error, "node.state_dir", "missing; the directory of the node's state and event log is required".into()));
            }
            for (f, m) in hardware_findings(&p.hardware).into_iter().chain(afe_pack_findings(&p.hardware, &p.pack)) {
                out.findings.push(pack_finding(Severity::Error, &format!("hardware.{f}"), m));
            }
            for (f, m) in operator_findings(&p.operator) {
                out.findings.push(pack_finding(Severity::Error, &format!("operator.{f}"), m));
            }
            if let Some(text) = cell_text {
                match CellParams::from_toml_str(text) {
                    Err(e) => out.findings.push(pack_finding(Severity::Error, "pack.cell", format!("a valid cell parameter file; {}: {}", e.field, clip_message(e.message)))),
                    Ok(cell) => {
                        for (sev, f, m) in protection_findings(&p.engine(), &cell) {
                            out.findings.push(pack_finding(sev, &f, m));
                        }
                    }
                }
            }
            out.pack = Some(p);
        }
    }
    // --- system file
    if let Some((sys_src, sys_text)) = system {
        let sys_finding = |table: Option<&toml::Table>, sev: Severity, field: &str, expected: String| {
            let value = table.and_then(|t| lookup(t, field)).filter(|v| !v.is_table()).map(|v| v.to_string());
            Finding { severity: sev, file: sys_src.to_string(), field: field.to_string(), expected: expected_text(expected, value.is_some()), value }
        };
        match parse_toml(sys_text) {
            Err(e) => out.findings.push(sys_finding(None, Severity::Error, &e.field, e.message)),
            Ok(table) => match system_from_table(sys_src, table.clone()) {
                Err(e) => out.findings.push(sys_finding(Some(&table), Severity::Error, &e.field, e.message)),
                Ok(s) => {
                    for (sev, f, m) in system_findings(&s, &table) {
                        out.findings.push(sys_finding(Some(&table), sev, &f, m));
                    }
                    // --- the node within the system
                    if let Some(p) = &out.pack {
                        if let Some(id) = p.node.id {
                            if !s.members.contains(&id) {
                                out.findings.push(pack_finding(Severity::Error, "node.id", format!("one of the system's members {:?} ({sys_src})", s.members)));
                            } else if let Err(e) = s.peer_for(id, 0).validate() {
                                let f = peer_field(&table, &e.field);
                                out.findings.push(sys_finding(Some(&table), Severity::Error, &f, e.message));
                            }
                        }
                        // The simulated plant's string index: at most one string per possible
                        // member id (1..=63), so 0..=62. Not bounded by this system's N: a plant
                        // may also carry strings outside the membership (a spare, a foreign or
                        // mis-numbered node in a fault campaign); the plant link refuses an index
                        // beyond the plant's own strings when it connects.
                        const MAX_STRINGS: u32 = 63;
                        if p.hardware.adapter == "sim" && p.hardware.string >= MAX_STRINGS {
                            out.findings.push(pack_finding(Severity::Error, "hardware.string", format!("a string index 0..={} (one string per possible member id 1..=63)", MAX_STRINGS - 1)));
                        }
                        // A close command acts at the end of a period; the contactor's feedback
                        // reaches the logic with the sample of the period after the next, so a
                        // close can be confirmed no sooner than two periods after the command.
                        let need = 2 * p.node.control_period_ms;
                        if s.protocol.close_confirm_ms <= need {
                            let f = peer_field(&table, "close_confirm_ms");
                            out.findings.push(sys_finding(Some(&table), Severity::Error, &f, format!("more than 2 x node.control_period_ms of {pack_src} = {need} ms (feedback arrives two periods after a command)")));
                        }
                        if s.protocol.fail_timeout_ms as u64 <= p.node.control_period_ms as u64 {
                            let f = peer_field(&table, "fail_timeout_ms");
                            out.findings.push(sys_finding(Some(&table), Severity::Error, &f, format!("more than node.control_period_ms = {} ms", p.node.control_period_ms)));
                        }
                    }
                    out.system = Some(s);
                }
            },
        }
    }
    out
}

/// Findings say what was expected: a bare phrase gets "expected " in front; where the finding
/// carries the value, a ", got <value>" of the message is left to it.
fn expected_text(mut s: String, has_value: bool) -> String {
    // serde/toml messages can span lines (a caret diagram, "at line 3"): a finding is one line
    // of `mbms node --check` output, so the lines are joined
    if s.contains('\n') {
        s = s.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ");
    }
    if has_value && s.starts_with("expected") {
        if let Some(i) = s.rfind(", got ") {
            s.truncate(i);
        }
    }
    if s.contains("expected") || s.starts_with("missing") || s.starts_with("not ") || s.starts_with("given twice") {
        s
    } else {
        format!("expected {s}")
    }
}

/// Where a PeerConfig field sits in a system file.
fn peer_field(table: &toml::Table, field: &str) -> String {
    match field {
        "members" | "system_id" => field.to_string(),
        "node_id" => "members".to_string(),
        f if TOP_LEVEL_PEER.contains(&f) && table.contains_key(f) => f.to_string(),
        f if TOP_LEVEL_PEER.contains(&f)
            && !table.get("protocol").and_then(|p| p.as_table()).is_some_and(|p| p.contains_key(f)) =>
        {
            f.to_string()
        }
        f => format!("protocol.{f}"),
    }
}

fn is_ip(s: &str) -> bool {
    s.parse::<std::net::IpAddr>().is_ok()
}

fn hardware_findings(h: &HardwareConfig) -> Vec<(String, String)> {
    let mut v = Vec::new();
    if h.adapter.is_empty() {
        v.push(("adapter".into(), "an adapter name (\"sim\" or an installed mbms.hardware entry point)".into()));
    }
    if h.adapter == "sim" {
        if let Some(rest) = h.link.strip_prefix("udp://") {
            if rest.parse::<std::net::SocketAddr>().map(|a| a.port() == 0).unwrap_or(true) {
                v.push(("link".into(), "\"udp://IP:PORT\" with a numeric IP address and a port 1..65535".into()));
            }
        } else if let Some(rest) = h.link.strip_prefix("unix://") {
            if !rest.starts_with('/') {
                v.push(("link".into(), "an absolute socket path after unix://".into()));
            }
        } else {
            v.push(("link".into(), "\"udp://IP:PORT\" or \"unix:///PATH\"".into()));
        }
    }
    if !(1..=60_000).contains(&h.link_timeout_ms) {
        v.push(("link_timeout_ms".into(), "an integer 1..=60000 (ms)".into()));
    }
    if h.adapter == "linux" {
        for (name, present) in [("afe", h.afe.is_some()), ("sensor_can", h.sensor_can.is_some()), ("current_sensor", h.current_sensor.is_some()), ("contactors", h.contactors.is_some())] {
            if !present {
                v.push((name.into(), format!("a [hardware.{name}] table (adapter \"linux\")")));
            }
        }
    }
    if let Some(a) = &h.afe {
        if a.ics == 0 || a.ics > 64 {
            v.push(("afe.ics".into(), "1..=64 ICs in the chain".into()));
        }
        if !(1..=18).contains(&a.cells_per_ic) {
            v.push(("afe.cells_per_ic".into(), "1..=18 (an LTC6813 has 18 cell inputs)".into()));
        }
        if a.temps_per_ic > 9 {
            v.push(("afe.temps_per_ic".into(), "0..=9 (an LTC6813 has 9 GPIOs)".into()));
        }
        if !(1..=1_000_000).contains(&a.spi_hz) {
            v.push(("afe.spi_hz".into(), "1..=1000000 Hz (isoSPI: at most 1 MHz)".into()));
        }
        if a.dcto_code > 15 {
            v.push(("afe.dcto_code".into(), "a DCTO code 0..=15".into()));
        }
        if !(a.device.starts_with("/dev/") || a.device.starts_with("emu:///")) {
            v.push(("afe.device".into(), "\"/dev/spidevB.C\" or \"emu:///PATH\"".into()));
        }
        if !(a.ntc_beta_k > 0.0 && a.ntc_r25_ohm > 0.0 && a.ntc_pullup_ohm > 0.0) {
            v.push(("afe.ntc_beta_k".into(), "positive NTC beta, R25 and pull-up".into()));
        }
        // issue 11: upper bounds too (a value that is legal but absurd misleads silently).
        // NTC thermistors for cell sensing have beta 2000..6000 K (e.g. Murata NCP, TDK B57);
        // R25 and the divider's pull-up sit between 100 ohm and 1 MOhm.
        if !(1000.0..=10_000.0).contains(&a.ntc_beta_k) {
            v.push(("afe.ntc_beta_k".into(), "an NTC beta 1000..=10000 K".into()));
        }
        for (f, x) in [("ntc_r25_ohm", a.ntc_r25_ohm), ("ntc_pullup_ohm", a.ntc_pullup_ohm)] {
            if !(100.0..=1e6).contains(&x) {
                v.push((format!("afe.{f}"), "100..=1000000 ohm".into()));
            }
        }
        if a.open_wire_every > 10_000 {
            v.push(("afe.open_wire_every".into(), "0 (never) or up to 10000 acquisitions".into()));
        }
    }
    if let Some(c) = &h.sensor_can {
        for (f, m) in can_bus_findings(c) {
            v.push((format!("sensor_can.{f}"), m.into()));
        }
    }
    if let Some(c) = &h.current_sensor {
        if !(1..=10_000).contains(&c.cycle_ms) {
            v.push(("current_sensor.cycle_ms".into(), "1..=10000 ms".into()));
        }
        if !(2..=1000).contains(&c.timeout_cycles) || c.cycle_ms as u64 * c.timeout_cycles as u64 > 60_000 {
            v.push(("current_sensor.timeout_cycles".into(), "2..=1000 cycles, and cycle_ms x timeout_cycles <= 60000 ms".into()));
        }
        if c.current_sign != 1.0 && c.current_sign != -1.0 {
            v.push(("current_sensor.current_sign".into(), "1.0 or -1.0".into()));
        }
    }
    if let Some(c) = &h.contactors {
        let lines = [c.neg_out, c.pos_out, c.pre_out, c.neg_fb, c.pos_fb, c.pre_fb];
        if (1..lines.len()).any(|i| lines[..i].contains(&lines[i])) {
            v.push(("contactors.neg_out".into(), "six different line offsets".into()));
        }
        if !(c.chip.starts_with("/dev/") || c.chip.starts_with("emu:///")) {
            v.push(("contactors.chip".into(), "\"/dev/gpiochipN\" or \"emu:///PATH\"".into()));
        }
        // The welded / stuck-open checks must be able to fire: a threshold above anything a
        // string carries or a confirm time of hours disables them silently (issue 11).
        if !(c.i_open_a > 0.0 && c.i_open_a <= 50.0) {
            v.push(("contactors.i_open_a".into(), "0 < i_open_a <= 50 A".into()));
        }
        if !(c.dv_closed_v > 0.0 && c.dv_closed_v <= 100.0) {
            v.push(("contactors.dv_closed_v".into(), "0 < dv_closed_v <= 100 V".into()));
        }
        if !(1..=10_000).contains(&c.confirm_ms) {
            v.push(("contactors.confirm_ms".into(), "1..=10000 ms".into()));
        }
        for (f, x) in [("neg_out", c.neg_out), ("pos_out", c.pos_out), ("pre_out", c.pre_out), ("neg_fb", c.neg_fb), ("pos_fb", c.pos_fb), ("pre_fb", c.pre_fb)] {
            if x > 4095 {
                v.push((format!("contactors.{f}"), "a GPIO line offset 0..=4095".into()));
            }
        }
    }
    if let Some(i) = &h.insulation {
        // the iso165C measures 30 kOhm .. 2 MOhm (manual: threshold ranges)
        if !(30.0..=2000.0).contains(&i.min_kohm) || i.warning_kohm <= i.min_kohm || i.warning_kohm > 2000.0 {
            v.push(("insulation.min_kohm".into(), "30 <= min_kohm < warning_kohm <= 2000 (kOhm)".into()));
        }
        if !(1000..=60_000).contains(&i.timeout_ms) {
            v.push(("insulation.timeout_ms".into(), "1000..=60000 ms (the iso165C sends IMD_Info every second)".into()));
        }
    }
    v
}

/// The chain must measure exactly the pack's series elements and temperature sensors.
fn afe_pack_findings(h: &HardwareConfig, pack: &crate::engine::PackSection) -> Vec<(String, String)> {
    let mut v = Vec::new();
    if let Some(a) = &h.afe {
        if (a.ics * a.cells_per_ic) as usize != pack.series {
            v.push(("afe.cells_per_ic".into(), format!("ics x cells_per_ic = pack.series ({})", pack.series)));
        }
        if (a.ics * a.temps_per_ic) as usize != pack.temp_sensors {
            v.push(("afe.temps_per_ic".into(), format!("ics x temps_per_ic = pack.temp_sensors ({})", pack.temp_sensors)));
        }
    }
    v
}

fn system_findings(s: &SystemConfig, table: &toml::Table) -> Vec<(Severity, String, String)> {
    use Severity::*;
    let mut v = Vec::new();
    let id = &s.system_id;
    if id.is_empty() || id.len() > 40 || !id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        v.push((Error, "system_id".into(), "up to 40 letters, digits, '-', '_' or '.'".into()));
    }
    if s.members.is_empty() {
        v.push((Error, "members".into(), "a non-empty list of node ids".into()));
    }
    let mut seen = Vec::new();
    for (i, &m) in s.members.iter().enumerate() {
        if !(1..=MAX_NODE_ID).contains(&m) {
            v.push((Error, format!("members[{i}]"), format!("a node id 1..={MAX_NODE_ID}")));
        } else if seen.contains(&m) {
            v.push((Error, format!("members[{i}]"), format!("unique node ids; {m} appears twice")));
        }
        seen.push(m);
    }
    // N = 2 gives quorum 2: either node down blocks every close (S2 needs a quorum grant).
    if s.members.len() == 2 {
        v.push((Warning, "members".into(), "N = 1 or N >= 3 members (with N = 2 the quorum is 2 of 2: one node down blocks every close)".into()));
    }
    // Peer ranges that do not depend on the node (node_id is a member by construction here).
    if let Err(e) = s.protocol.validate() {
        if e.field != "node_id" && e.field != "members" {
            v.push((Error, peer_field(table, &e.field), e.message));
        }
    }
    let t = &s.transport;
    match t.kind.as_str() {
        "can" => {
            if t.can.is_none() {
                v.push((Error, "transport.can".into(), "a [transport.can] table (kind = \"can\")".into()));
            }
            if t.udp.is_some() {
                v.push((Error, "transport.udp".into(), "no [transport.udp] table with kind = \"can\"".into()));
            }
            if let Some(c) = &t.can {
                for (f, m) in can_bus_findings(c) {
                    v.push((Error, format!("transport.can.{f}"), m.into()));
                }
            }
        }
        "udp" => {
            if t.udp.is_none() {
                v.push((Error, "transport.udp".into(), "a [transport.udp] table (kind = \"udp\")".into()));
            }
            if t.can.is_some() {
                v.push((Error, "transport.can".into(), "no [transport.can] table with kind = \"udp\"".into()));
            }
            if let Some(u) = &t.udp {
                if u.port == 0 {
                    v.push((Error, "transport.udp.port".into(), "a port 1..65535".into()));
                }
                if !u.group.parse::<std::net::Ipv4Addr>().is_ok_and(|a| a.is_multicast()) {
                    v.push((Error, "transport.udp.group".into(), "an IPv4 multicast address (224.0.0.0/4)".into()));
                }
                for (k, val) in [("interface", &u.interface), ("bind", &u.bind)] {
                    if val.parse::<std::net::Ipv4Addr>().is_err() {
                        v.push((Error, format!("transport.udp.{k}"), "an IPv4 address".into()));
                    }
                }
                if u.ttl == 0 {
                    v.push((Error, "transport.udp.ttl".into(), "a TTL 1..=255".into()));
                }
                for (i, p) in u.peers.iter().enumerate() {
                    if p.parse::<std::net::SocketAddr>().map(|a| a.port() == 0).unwrap_or(true) {
                        v.push((Error, format!("transport.udp.peers[{i}]"), "\"ip:port\" with a numeric IP address".into()));
                    }
                }
                if !u.peers.is_empty() && u.peers.len() != s.members.len() {
                    v.push((Error, "transport.udp.peers".into(), format!("one \"ip:port\" per member ({}, in the order of members)", s.members.len())));
                }
            }
        }
        "" => v.push((Error, "transport.kind".into(), "a transport name (\"can\", \"udp\" or an installed mbms.transports entry point)".into())),
        // a third-party transport: its own settings are in [transport.options], checked by it
        _ => {
            for (name, present) in [("can", t.can.is_some()), ("udp", t.udp.is_some())] {
                if present {
                    v.push((Error, format!("transport.{name}"), format!("no [transport.{name}] table with kind = {:?} (its settings go in [transport.options])", t.kind)));
                }
            }
        }
    }
    for (i, x) in s.discovery.interfaces.iter().enumerate() {
        if !is_ip(x) {
            v.push((Error, format!("discovery.interfaces[{i}]"), "an IP address".into()));
        }
    }
    v
}

/// Margin (V) by which the over-voltage fault may exceed the cell's datasheet charge voltage
/// `v_max_v`: the AFE's measurement error (LTC6811: 1.2 mV typical, 2.2 mV max total error) plus
/// the charge-voltage tolerance cell datasheets give (±50 mV, e.g. "4.20 ± 0.05 V"). Above this
/// the cell is overcharged before protection acts.
pub const OV_FAULT_MARGIN_V: f64 = 0.05;
/// Margin (V) by which the under-voltage fault may sit below the datasheet discharge cut-off
/// `v_min_v`: under load the terminal voltage dips by I·R0 (~0.1 V at 1 C) below the cut-off
/// during the confirmation delay; deeper is over-discharge (copper dissolution).
pub const UV_FAULT_MARGIN_V: f64 = 0.1;

/// Margin (°C) by which a temperature fault may sit outside the cell's datasheet window
/// (`[temperature]` of the cell file): the error of the measuring chain. A ±1 % NTC with a ±1 %
/// beta tolerance read through a ratiometric ADC (e.g. Vishay NTCLE413/TDK B57861S, LTC6813
/// GPIO inputs) is within about ±1.5 K over -20..60 °C; 2 °C covers that and the AFE's
/// reference error. Further out the cell runs outside its window before protection acts.
pub const TEMP_FAULT_MARGIN_C: f64 = 2.0;

/// Cross-checks a BMS engineer expects of the protection and limits, against the cell file.
pub fn protection_findings(e: &EngineConfig, cell: &CellParams) -> Vec<(Severity, String, String)> {
    use Severity::*;
    let mut v = Vec::new();
    let p = &e.protection;
    let rules: [(&str, &Thresholds, bool); 10] = [
        ("cell_overvoltage_v", &p.cell_overvoltage_v, true),
        ("cell_undervoltage_v", &p.cell_undervoltage_v, false),
        ("overtemp_charge_c", &p.overtemp_charge_c, true),
        ("undertemp_charge_c", &p.undertemp_charge_c, false),
        ("overtemp_discharge_c", &p.overtemp_discharge_c, true),
        ("undertemp_discharge_c", &p.undertemp_discharge_c, false),
        ("overcurrent_charge_a", &p.overcurrent_charge_a, true),
        ("overcurrent_discharge_a", &p.overcurrent_discharge_a, true),
        ("voltage_spread_v", &p.voltage_spread_v, true),
        ("temp_spread_c", &p.temp_spread_c, true),
    ];
    // warning < alarm < fault in the rule's direction: equal levels make a level meaningless
    // (it is confirmed together with the next), a reversed one never acts first.
    for (name, t, upper) in rules {
        let (first, second) = if upper {
            (t.warning < t.alarm, t.alarm < t.fault)
        } else {
            (t.warning > t.alarm, t.alarm > t.fault)
        };
        let dir = if upper { "<" } else { ">" };
        if !first {
            v.push((Error, format!("protection.{name}.warning"), format!("warning {dir} alarm ({})", t.alarm)));
        } else if !second {
            v.push((Error, format!("protection.{name}.alarm"), format!("alarm {dir} fault ({})", t.fault)));
        }
    }
    let ov = &p.cell_overvoltage_v;
    let uv = &p.cell_undervoltage_v;
    if ov.fault > cell.v_max_v + OV_FAULT_MARGIN_V {
        v.push((Error, "protection.cell_overvoltage_v.fault".into(), format!("<= the cell's v_max_v {} V + {OV_FAULT_MARGIN_V} V ({})", cell.v_max_v, cell.name)));
    }
    if uv.fault < cell.v_min_v - UV_FAULT_MARGIN_V {
        v.push((Error, "protection.cell_undervoltage_v.fault".into(), format!(">= the cell's v_min_v {} V - {UV_FAULT_MARGIN_V} V ({})", cell.v_min_v, cell.name)));
    }
    // temperature faults inside the datasheet's charge and discharge windows (cell file
    // [temperature]), each rule against the window of its own direction
    match &cell.temperature {
        Some(w) => {
            let m = TEMP_FAULT_MARGIN_C;
            for (name, fault, limit, upper, what) in [
                ("overtemp_charge_c", p.overtemp_charge_c.fault, w.charge_max_c, true, "charge_max_c"),
                ("undertemp_charge_c", p.undertemp_charge_c.fault, w.charge_min_c, false, "charge_min_c"),
                ("overtemp_discharge_c", p.overtemp_discharge_c.fault, w.discharge_max_c, true, "discharge_max_c"),
                ("undertemp_discharge_c", p.undertemp_discharge_c.fault, w.discharge_min_c, false, "discharge_min_c"),
            ] {
                let inside = if upper { fault <= limit + m } else { fault >= limit - m };
                if !inside {
                    let (op, sign) = if upper { ("<=", "+") } else { (">=", "-") };
                    v.push((Error, format!("protection.{name}.fault"), format!("{op} the cell's temperature.{what} {limit} °C {sign} {m} °C ({})", cell.name)));
                }
            }
        }
        None => v.push((Warning, "pack.cell".into(), format!("a cell file with a [temperature] table (the datasheet's charge and discharge windows); without it the temperature faults are not checked against the cell ({})", cell.name))),
    }
    // every under-voltage level below every over-voltage level: else a healthy cell is in both
    let uv_top = uv.warning.max(uv.alarm).max(uv.fault);
    let ov_bottom = ov.warning.min(ov.alarm).min(ov.fault);
    if uv_top >= ov_bottom {
        v.push((Error, "protection.cell_undervoltage_v.warning".into(), format!("every under-voltage threshold below the lowest over-voltage threshold ({ov_bottom} V)")));
    }
    // thresholds a sensor can report: outside its plausible range a rule can never trip
    let s = &p.sensors;
    for (name, t) in [
        ("overtemp_charge_c", &p.overtemp_charge_c),
        ("overtemp_discharge_c", &p.overtemp_discharge_c),
        ("undertemp_charge_c", &p.undertemp_charge_c),
        ("undertemp_discharge_c", &p.undertemp_discharge_c),
    ] {
        if !(t.fault > s.temp_min_c && t.fault < s.temp_max_c) {
            v.push((Error, format!("protection.{name}.fault"), format!("inside the temperature sensor's plausible range ({}, {}) °C", s.temp_min_c, s.temp_max_c)));
        }
    }
    for (name, t) in [("overcurrent_charge_a", &p.overcurrent_charge_a), ("overcurrent_discharge_a", &p.overcurrent_discharge_a)] {
        if t.fault >= s.current_max_abs_a {
            v.push((Error, format!("protection.{name}.fault"), format!("below the current sensor's full scale sensors.current_max_abs_a = {} A", s.current_max_abs_a)));
        }
    }
    if !(ov.fault < s.cell_v_max_v && uv.fault > s.cell_v_min_v) {
        v.push((Error, "protection.sensors.cell_v_max_v".into(), format!("a plausible cell-voltage range ({}, {}) V around the protection faults", s.cell_v_min_v, s.cell_v_max_v)));
    }
    // the limits handed to the inverter sit below the current faults, else obeying them trips us
    let l = &e.limits;
    if l.max_discharge_peak_a >= p.overcurrent_discharge_a.fault {
        v.push((Warning, "limits.max_discharge_peak_a".into(), format!("below protection.overcurrent_discharge_a.fault ({} A)", p.overcurrent_discharge_a.fault)));
    }
    if l.max_charge_peak_a >= p.overcurrent_charge_a.fault {
        v.push((Warning, "limits.max_charge_peak_a".into(), format!("below protection.overcurrent_charge_a.fault ({} A)", p.overcurrent_charge_a.fault)));
    }
    v
}

// ---------------------------------------------------------------------------------------------
// JSON Schemas of the files
// ---------------------------------------------------------------------------------------------

/// JSON Schemas (draft 2020-12) of every config file, by file kind: `pack` (a node's pack file),
/// `engine` (the engine tables alone), `system`, `node` (the `[node]` table, as a scenario takes
/// it), `peer` (consensus `PeerConfig`, the scenario's `[system]`).
#[cfg(feature = "schema")]
pub fn schemas() -> Vec<(&'static str, serde_json::Value)> {
    let to = |s: schemars::Schema| s.to_value();
    vec![
        ("pack", to(schemars::schema_for!(PackFile))),
        ("engine", to(schemars::schema_for!(EngineConfig))),
        ("system", to(schemars::schema_for!(SystemFile))),
        ("node", to(schemars::schema_for!(NodeConfig))),
        ("peer", to(schemars::schema_for!(PeerConfig))),
    ]
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_multi_line_serde_message_becomes_one_line() {
        let t = super::expected_text("invalid type: string \"x\"\n  expected a number\n".to_string(), false);
        assert!(!t.contains('\n'), "{t}");
        assert_eq!(t, "invalid type: string \"x\" expected a number");
    }

    use super::*;

    const PACK: &str = include_str!("../../python/mbms/data/packs/example_pack.toml");
    const NODE1: &str = include_str!("../../python/mbms/data/packs/node1.toml");
    const SYSTEM: &str = include_str!("../../python/mbms/data/systems/example_system.toml");
    const CELL: &str = include_str!("../../python/mbms/data/cells/lg_m50_nmc.toml");

    fn layers(top: &str) -> Vec<Layer> {
        let mut v = Vec::new();
        let t = parse_toml(top).unwrap();
        if extends_of(&t).unwrap().is_some() {
            v.push(Layer { source: "example_pack.toml".into(), table: parse_toml(PACK).unwrap() });
        }
        v.push(Layer { source: "node.toml".into(), table: t });
        v
    }

    /// node1 with the engine tables inlined (no extends): engine edits are plain replacements.
    fn full() -> String {
        PACK.to_string() + "\n" + &NODE1.replace("extends = \"example_pack.toml\"", "")
    }

    fn check(node: &str, system: &str) -> NodeFiles {
        node_findings(&layers(node), Some(("system.toml", system)), Some(CELL))
    }

    #[test]
    fn shipped_files_have_no_errors() {
        let r = check(NODE1, SYSTEM);
        assert!(r.findings.iter().all(|f| f.severity != Severity::Error), "{:?}", r.findings);
        let s = r.system.unwrap();
        assert_eq!(s.quorum, 3);
        assert_eq!(s.protocol.lease_ms, 4000);
        assert_eq!(s.system_id_u32, crc32(b"example-rack"));
    }

    #[test]
    fn crc32_matches_zlib() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    fn first(node: &str, system: &str) -> (String, String) {
        let r = check(node, system);
        let e = r.first_error().expect("an error");
        (e.file.unwrap(), e.field)
    }

    #[test]
    fn bad_values_name_their_field() {
        let cases: [(&str, &str, &str); 7] = [
            ("id = 1", "id = 1\nseries = 96", "node.series"),
            ("string = 0", "string = 99", "hardware.string"),
            ("id = 1", "id = 9", "node.id"),
            ("stale_ms = 500", "stale_ms = nan", "node.stale_ms"),
            ("overrun_ms = 250", "overrun_ms = \"x\"", "node.overrun_ms"),
            ("[hardware]", "[hardwar]", "hardwar"),
            ("state_dir = \"/var/lib/mbms/node1\"   #", "#", "node.state_dir"),
        ];
        for (from, to, field) in cases {
            let text = NODE1.replacen(from, to, 1);
            assert_ne!(text, NODE1, "{from}");
            assert_eq!(first(&text, SYSTEM).1, field, "{to}");
        }
    }

    #[test]
    fn engine_values_and_cross_checks_name_their_field() {
        let cases: [(&str, &str, &str); 8] = [
            ("hysteresis = 0.03", "hysterisis = 0.03", "protection.cell_overvoltage_v.hysterisis"),
            ("series = 96", "series = \"96\"", "pack.series"),
            ("series = 96", "series = 100000000", "pack.series"),
            ("fault = 4.22", "fault = 5.5", "protection.cell_overvoltage_v.fault"),
            ("warning = 4.15", "warning = 4.25", "protection.cell_overvoltage_v.warning"),
            ("warning = 2.80", "warning = nan", "protection.cell_undervoltage_v.warning"),
            ("r_extra_ohm = 0.012", "r_extra_ohm = inf", "pack.r_extra_ohm"),
            ("warning = 2.80\nalarm = 2.65\nfault = 2.50", "warning = 4.30\nalarm = 4.28\nfault = 4.26", "protection.cell_undervoltage_v.warning"),
        ];
        let base = full();
        for (from, to, field) in cases {
            let node = base.replacen(from, to, 1);
            assert_ne!(node, base, "{from}");
            assert_eq!(first(&node, SYSTEM).1, field, "{to}");
        }
    }

    #[test]
    fn temperature_faults_stay_inside_the_cells_windows() {
        // LG M50 ([temperature] of its cell file): charge 0..45 °C, discharge -20..60 °C
        let cases: [(&str, &str, Option<&str>); 6] = [
            ("alarm = 43.0\nfault = 45.0", "alarm = 43.0\nfault = 48.0", Some("protection.overtemp_charge_c.fault")),
            ("alarm = 43.0\nfault = 45.0", "alarm = 43.0\nfault = 47.0", None), // 45 + the 2 °C margin
            ("alarm = 2.0\nfault = 0.0", "alarm = 2.0\nfault = -5.0", Some("protection.undertemp_charge_c.fault")),
            ("alarm = 55.0\nfault = 60.0", "alarm = 55.0\nfault = 65.0", Some("protection.overtemp_discharge_c.fault")),
            ("alarm = -15.0\nfault = -20.0", "alarm = -15.0\nfault = -25.0", Some("protection.undertemp_discharge_c.fault")),
            ("alarm = -15.0\nfault = -20.0", "alarm = -15.0\nfault = -22.0", None),
        ];
        let base = full();
        for (from, to, field) in cases {
            let node = base.replacen(from, to, 1);
            assert_ne!(node, base, "{from}");
            let r = check(&node, SYSTEM);
            let errors: Vec<_> = r.findings.iter().filter(|f| f.severity == Severity::Error).collect();
            match field {
                Some(field) => {
                    assert_eq!(errors.len(), 1, "{to}: {errors:?}");
                    assert_eq!(errors[0].field, field);
                    assert!(errors[0].expected.contains("temperature.") && errors[0].expected.contains("LG INR21700-M50"), "{:?}", errors[0]);
                    assert!(errors[0].value.is_some());
                }
                None => assert!(errors.is_empty(), "{to}: {errors:?}"),
            }
        }
        // a cell file without the window: a warning naming pack.cell, no error
        let start = CELL.find("[temperature]").unwrap();
        let end = start + CELL[start..].find("\n[estimator]").unwrap();
        let no_window = format!("{}{}", &CELL[..start], &CELL[end..]);
        let r = node_findings(&layers(NODE1), Some(("system.toml", SYSTEM)), Some(&no_window));
        assert!(r.findings.iter().all(|f| f.severity != Severity::Error), "{:?}", r.findings);
        assert!(r.findings.iter().any(|f| f.severity == Severity::Warning && f.field == "pack.cell" && f.expected.contains("[temperature]")), "{:?}", r.findings);
        // a reversed window is an error of the cell file
        let reversed = CELL.replacen("charge_min_c = 0\n", "charge_min_c = 50\n", 1);
        assert_ne!(reversed, CELL);
        let r = node_findings(&layers(NODE1), Some(("system.toml", SYSTEM)), Some(&reversed));
        let e = r.first_error().expect("an error");
        assert_eq!(e.field, "pack.cell");
        assert!(e.message.contains("temperature.charge_min_c"), "{}", e.message);
    }

    #[test]
    fn system_values_name_their_field() {
        let cases: [(&str, &str, &str); 5] = [
            ("dv_close_v = 3.0", "dv_close_v = 100.0", "dv_close_v"),
            ("members = [1, 2, 3, 4]", "members = [2, 3, 4]", "node.id"),
            ("kind = \"can\"", "kind = \"udp\"", "transport.udp"),
            ("close_confirm_ms = 400", "close_confirm_ms = 150", "protocol.close_confirm_ms"),
            ("lease_ms = 4000", "lease_ms = 1000", "lease_ms"),
        ];
        for (from, to, field) in cases {
            let sys = SYSTEM.replacen(from, to, 1);
            assert_ne!(sys, SYSTEM, "{from}");
            let (file, f) = first(NODE1, &sys);
            assert_eq!(f, field, "{to}");
            let want_file = if field.starts_with("node.") { "node.toml" } else { "system.toml" };
            assert_eq!(file, want_file, "{to}");
        }
    }

    #[test]
    fn extends_merges_and_attributes_fields_to_their_file() {
        let node = "extends = \"example_pack.toml\"\n[node]\nid = 2\nstate_dir = \"s\"\n[hardware]\nadapter = \"sim\"\nlink = \"udp://127.0.0.1:47000\"\nstring = 1\n[pack]\nseries = 12\ntemp_sensors = 3\n";
        let r = check(node, SYSTEM);
        assert!(r.first_error().is_none(), "{:?}", r.findings);
        let p = r.pack.unwrap();
        assert_eq!(p.pack.series, 12);
        assert_eq!(p.pack.parallel, 4);
        let bad = node.replace("temp_sensors = 3", "temp_sensors = 13");
        let e = check(&bad, SYSTEM).first_error().unwrap();
        assert_eq!((e.file.as_deref(), e.field.as_str()), (Some("node.toml"), "pack.temp_sensors"));
        let bad = node.to_string() + "[protection.cell_overvoltage_v]\nfault = 9.0\n";
        let e = check(&bad, SYSTEM).first_error().unwrap();
        assert_eq!(e.file.as_deref(), Some("node.toml"));
        // a field only the base file sets is reported against the base file
        let r = node_findings(
            &[
                Layer { source: "base.toml".into(), table: parse_toml(&PACK.replace("fault = 4.22", "fault = 6.0")).unwrap() },
                Layer { source: "node.toml".into(), table: parse_toml(node).unwrap() },
            ],
            Some(("system.toml", SYSTEM)),
            Some(CELL),
        );
        let e = r.first_error().unwrap();
        assert_eq!((e.file.as_deref(), e.field.as_str()), (Some("base.toml"), "protection.cell_overvoltage_v.fault"));
    }

    #[test]
    fn findings_carry_value_and_expected() {
        let r = check(&full().replacen("fault = 4.22", "fault = 5.5", 1), SYSTEM);
        let f = r.findings.iter().find(|f| f.field == "protection.cell_overvoltage_v.fault").unwrap();
        assert_eq!(f.value.as_deref(), Some("5.5"));
        assert!(f.expected.contains("4.2"), "{}", f.expected);
    }

    #[test]
    fn engine_layers_ignore_node_tables_but_not_misspelt_ones() {
        let l = layers(NODE1);
        assert_eq!(engine_from_layers(&l).unwrap().pack.series, 96);
        let l = layers(&full().replace("[balancing]", "[balncing]"));
        assert_eq!(engine_from_layers(&l).unwrap_err().field, "balncing");
    }

    // ---- issue 15 item 5: the config decoders survive any text ----

    /// Values that break a typed field in every way TOML can: non-finite, out of range, wrong
    /// type, empty, nested.
    const TOKENS: [&str; 20] = [
        "nan", "inf", "-inf", "-1", "0", "1e308", "-1e308", "18446744073709551616", "9223372036854775807",
        "\"\"", "\"x\"", "[]", "[1, 2]", "{}", "{ a = 1 }", "true", "1.5", "-0.0", "[[]]", "\"\\u0000\"",
    ];

    /// A shipped file with edits: a line's value replaced by a token, a line dropped or
    /// duplicated, or the text cut at a byte (on a char boundary).
    fn mutate(text: &str, edits: &[(usize, u8, usize)]) -> String {
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        for &(at, how, tok) in edits {
            if lines.is_empty() {
                break;
            }
            let i = at % lines.len();
            match how % 4 {
                0 => {
                    if let Some(eq) = lines[i].find('=') {
                        lines[i] = format!("{}= {}", &lines[i][..eq], TOKENS[tok % TOKENS.len()]);
                    }
                }
                1 => {
                    lines.remove(i);
                }
                2 => {
                    let l = lines[i].clone();
                    lines.insert(i, l);
                }
                _ => {
                    let l = &lines[i];
                    let mut cut = tok % (l.len() + 1);
                    while !l.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    lines[i] = l[..cut].to_string();
                }
            }
        }
        lines.join("\n")
    }

    /// Whatever the text, the node's config check returns findings or a typed error; the first
    /// error names a field.
    fn check_any(pack: &str, system: &str, cell: &str) -> Result<(), proptest::test_runner::TestCaseError> {
        let Ok(t) = parse_toml(pack) else { return Ok(()) };
        let mut l = Vec::new();
        if matches!(extends_of(&t), Ok(Some(_))) {
            l.push(Layer { source: "example_pack.toml".into(), table: parse_toml(PACK).unwrap() });
        }
        l.push(Layer { source: "node.toml".into(), table: t });
        let r = node_findings(&l, Some(("system.toml", system)), Some(cell));
        if let Some(e) = r.first_error() {
            proptest::prop_assert!(!e.field.is_empty() || !e.message.is_empty());
        }
        let _ = engine_from_layers(&l);
        let _ = crate::cell_model::CellParams::from_toml_str(cell);
        Ok(())
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(mbms_consensus::fuzz_cases(300)))]
        #[test]
        fn mutated_config_files_never_panic(
            which in 0u8..3,
            edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<usize>()), 1..6),
        ) {
            let (mut node, mut system, mut cell) = (NODE1.to_string(), SYSTEM.to_string(), CELL.to_string());
            match which {
                0 => node = mutate(&full(), &edits),
                1 => system = mutate(SYSTEM, &edits),
                _ => cell = mutate(CELL, &edits),
            }
            check_any(&node, &system, &cell)?;
        }

        #[test]
        fn random_text_never_panics(text in "\\PC{0,200}", which in 0u8..3) {
            match which {
                0 => check_any(&text, SYSTEM, CELL)?,
                1 => check_any(NODE1, &text, CELL)?,
                _ => check_any(NODE1, SYSTEM, &text)?,
            }
        }
    }
}
