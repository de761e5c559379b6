//! The peer message format: a fixed layout of 23 bytes with a 32-bit authentication tag
//! (the AUTOSAR SecOC model: a truncated MAC over the message and its freshness value).
//!
//! ```text
//! byte 0       header: sender−1 (bits 0..5) | kind<<6 (0 = Limits, 1 = Detail) | bit 7 = 0
//! bytes 1..8   frame 0: flags (bits 0..6) | coord (7..21) | 0 (22..23) | boot (24..39) | counter (40..63)
//! bytes 9..16  frame 1: body part 1 (64 bits)
//! bytes 17..22 frame 2: body part 2 (bits 0..15) | tag (bits 16..47)
//!
//! flags   phase (3 bits) | fault<<3 | main_closed<<4 | pre_closed<<5 | may_close<<6
//! coord   req_ticket (4 bits) | grant_ticket<<4 (4 bits) | grant_to<<8 (7 bits); 0 = nothing
//! boot    the sender's boot counter (persisted, +1 per start; a new one = a restart)
//! counter the sender's message counter in this boot, 24 bits, +1 per message (freshness)
//! Limits  frame 1: ocv 17 bits [10 mV] | r 15 [0.1 mΩ] | dcl 15 [0.2 A] | ccl 15 [0.2 A] | 0 0
//!         frame 2: dcl_peak 8, ccl_peak 8 [1/32 of dcl, ccl: the peak as a multiple 0..7.97
//!                  of the continuous limit on the wire, rounded down]
//! Detail  frame 1: proposed system dcl 18, ccl 18 [0.1 A] | soc 10 [0.1 %] | i 15, signed [0.1 A] | 0 0 0
//!         frame 2: v_string − v_bus 16, signed [10 mV]
//! ```
//! The last frame is 6 bytes (issue 15's bus-load budget: 16 peers at a 100 ms heartbeat on
//! 500 kbit/s classic CAN, ≤ 12 % mean; `mbms bench consensus` measures it). Until this layout
//! it was 7 bytes: the peaks had 12-bit fields of 0.5 A and Detail 8 spare bits.
//! The peaks as a ratio: a short-term limit is a few times the continuous one (a cell's 10 s
//! pulse rating against its continuous rating), so 1/32 of the continuous limit is a finer step
//! than the 0.5 A of before for continuous limits under 16 A and ≤ 3 % of the continuous limit
//! above; a ratio ≥ 7.97 saturates low and a zero continuous limit carries a zero peak (errs
//! low, S4). The code of a peak is the largest k whose floor(continuous · k / 32) does not
//! exceed the peak (one code per value: decode refuses the others).
//! All multi-bit fields are little endian (Intel) inside their 8-byte frame and no field
//! crosses a frame: on classic CAN the header goes into the identifier and the frames are
//! three CAN frames ([`crate::segment`]), each described by the shipped DBC.
//! The tag is CMAC-AES-128 over the system id and bytes 0..=18 ([`crate::auth`]).
//! Values saturate at their field width; limits round down to their resolution and saturate
//! low (errs low, S4). Bodies are kept in 0.1 A / 10 mV units; the wire resolution of a field
//! coarser than that is applied (rounding down) when encoding.

pub const MESSAGE_LEN: usize = 23;
pub const TAG_LEN: usize = 4;
/// Bytes covered by the tag (everything before it).
pub const SIGNED_LEN: usize = MESSAGE_LEN - TAG_LEN;
/// Request tickets are 4 bits, 1..=15 (0 = no request).
pub const MAX_TICKET: u8 = 15;
/// The message counter is 24 bits; a peer whose counter would wrap starts a new boot.
pub const COUNTER_BITS: u32 = 24;
pub const COUNTER_MAX: u32 = (1 << COUNTER_BITS) - 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    /// Not exactly [`MESSAGE_LEN`] bytes.
    Length(usize),
    /// The header byte's reserved bit is set (not this format).
    Header(u8),
    /// A field out of its range; names it.
    Range(&'static str),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Length(n) => write!(f, "message of {n} bytes, expected {MESSAGE_LEN}"),
            WireError::Header(h) => write!(f, "header byte {h:#04x}: reserved bit set"),
            WireError::Range(field) => write!(f, "field {field} out of range"),
        }
    }
}

impl std::error::Error for WireError {}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Flags {
    pub phase: u8, // Phase as u8 (0..=7)
    pub fault: bool,
    pub main_closed: bool,
    pub pre_closed: bool,
    pub may_close: bool,
}

impl Flags {
    pub fn to_u8(self) -> u8 {
        (self.phase & 7)
            | (self.fault as u8) << 3
            | (self.main_closed as u8) << 4
            | (self.pre_closed as u8) << 5
            | (self.may_close as u8) << 6
    }
    pub fn from_u8(b: u8) -> Result<Self, WireError> {
        if b & 0x80 != 0 {
            return Err(WireError::Range("flags"));
        }
        Ok(Self {
            phase: b & 7,
            fault: b & 8 != 0,
            main_closed: b & 16 != 0,
            pre_closed: b & 32 != 0,
            may_close: b & 64 != 0,
        })
    }
}

/// The grant/request fields every message carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Coord {
    /// The sender's current close request (1..=15), 0 = none.
    pub req_ticket: u8,
    /// The member the sender currently grants to (0 = none) and that member's ticket.
    pub grant_to: u16,
    pub grant_ticket: u8,
}

impl Coord {
    pub fn to_u16(self) -> u16 {
        (self.req_ticket as u16 & 15) | (self.grant_ticket as u16 & 15) << 4 | (self.grant_to & 127) << 8
    }
    pub fn from_u64(v: u64) -> Result<Self, WireError> {
        if v >> 15 != 0 {
            return Err(WireError::Range("coord"));
        }
        let grant_to = (v >> 8) as u16 & 127;
        let grant_ticket = (v >> 4) as u8 & 15;
        if grant_to > 64 || (grant_to == 0) != (grant_ticket == 0) {
            return Err(WireError::Range("coord"));
        }
        Ok(Self { req_ticket: (v & 15) as u8, grant_to, grant_ticket })
    }
}

/// The string's electrical state that the sharing formula needs (kind 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LimitsBody {
    pub ocv_10mv: u32,
    pub r_100uohm: u32,
    pub dcl_da: u32,
    pub ccl_da: u32,
    pub dcl_peak_da: u32,
    pub ccl_peak_da: u32,
}

impl LimitsBody {
    /// These limits at the wire's resolution (rounded down, saturated): what every receiver
    /// will see, so the sender uses the same values for its own string.
    pub fn on_wire(self) -> LimitsBody {
        let (dcl_da, ccl_da) = (lim_on_wire(self.dcl_da), lim_on_wire(self.ccl_da));
        LimitsBody {
            ocv_10mv: self.ocv_10mv.min(max_of(OCV_BITS)),
            r_100uohm: self.r_100uohm.min(max_of(R_BITS)),
            dcl_da,
            ccl_da,
            dcl_peak_da: peak_of(peak_code(self.dcl_peak_da, dcl_da), dcl_da),
            ccl_peak_da: peak_of(peak_code(self.ccl_peak_da, ccl_da), ccl_da),
        }
    }
}

/// Proposed system limits and measured detail (kind 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DetailBody {
    pub prop_dcl_da: u32,
    pub prop_ccl_da: u32,
    pub soc_permille: u16,
    /// v_string − v_bus (what a peer's eligibility to close depends on).
    pub dv_10mv: i32,
    pub i_da: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    Limits(LimitsBody),
    Detail(DetailBody),
}


/// A decoded message as tools show it (`mbms log decode`, the monitor): the one serialized form
/// of a peer message's fields in physical units (bindings pythonize it).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct MessageView {
    pub sender: u16,
    pub incarnation: u16,
    pub counter: u32,
    pub phase: u8,
    pub fault: bool,
    pub main_closed: bool,
    pub pre_closed: bool,
    pub may_close: bool,
    pub req_ticket: u8,
    pub grant_to: u16,
    pub grant_ticket: u8,
    /// "limits" | "detail"
    pub kind: &'static str,
    /// The body in A, V, Ω and fractions, by field name.
    pub values: std::collections::BTreeMap<&'static str, f64>,
    #[serde(serialize_with = "as_bytes")]
    pub tag: [u8; TAG_LEN],
    /// The tag was verified (false: decoded without a key).
    pub verified: bool,
}

fn as_bytes<S: serde::Serializer>(b: &[u8; TAG_LEN], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(b)
}

impl MessageView {
    pub fn of(m: &Message, verified: bool) -> Self {
        let (kind, values): (&'static str, Vec<(&'static str, f64)>) = match m.body {
            Body::Limits(b) => (
                "limits",
                vec![
                    ("ocv_v", b.ocv_10mv as f64 / 100.0),
                    ("r_ohm", b.r_100uohm as f64 / 1e4),
                    ("dcl_a", b.dcl_da as f64 / 10.0),
                    ("ccl_a", b.ccl_da as f64 / 10.0),
                    ("dcl_peak_a", b.dcl_peak_da as f64 / 10.0),
                    ("ccl_peak_a", b.ccl_peak_da as f64 / 10.0),
                ],
            ),
            Body::Detail(b) => (
                "detail",
                vec![
                    ("sys_dcl_a", b.prop_dcl_da as f64 / 10.0),
                    ("sys_ccl_a", b.prop_ccl_da as f64 / 10.0),
                    ("soc", b.soc_permille as f64 / 1000.0),
                    ("dv_v", b.dv_10mv as f64 / 100.0),
                    ("i_a", b.i_da as f64 / 10.0),
                ],
            ),
        };
        Self {
            sender: m.sender,
            incarnation: m.incarnation,
            counter: m.counter,
            phase: m.flags.phase,
            fault: m.flags.fault,
            main_closed: m.flags.main_closed,
            pre_closed: m.flags.pre_closed,
            may_close: m.flags.may_close,
            req_ticket: m.coord.req_ticket,
            grant_to: m.coord.grant_to,
            grant_ticket: m.coord.grant_ticket,
            kind,
            values: values.into_iter().collect(),
            tag: m.tag,
            verified,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub sender: u16,
    /// The sender's boot counter (its incarnation): a new one is a restart.
    pub incarnation: u16,
    /// The sender's message counter in this boot (freshness, [`COUNTER_BITS`] bits).
    pub counter: u32,
    pub flags: Flags,
    pub coord: Coord,
    pub body: Body,
    /// The authentication tag as received or as computed by [`crate::auth::Auth::seal`].
    pub tag: [u8; TAG_LEN],
}

// Field widths of the fixed layout (bits) and wire steps of the limits (in 0.1 A).
const OCV_BITS: u32 = 17;
const R_BITS: u32 = 15;
const LIM_BITS: u32 = 15;
const LIM_STEP_DA: u32 = 2;
const PEAK_BITS: u32 = 8;
/// A peak's code counts 1/PEAK_DEN of the continuous limit.
const PEAK_DEN: u64 = 32;
const PROP_BITS: u32 = 18;
const DV_BITS: u32 = 16;
const SOC_BITS: u32 = 10;
const I_BITS: u32 = 15;
/// Body bits in the last frame (both kinds), before the tag.
const BODY2_BITS: u32 = 16;

const fn max_of(bits: u32) -> u32 {
    ((1u64 << bits) - 1) as u32
}

// ---- unit conversions (saturating at the field width; NaN maps to 0, which errs low for limits) ----

pub fn volts_to_10mv(v: f64) -> u32 {
    (v * 100.0).round().clamp(0.0, max_of(OCV_BITS) as f64) as u32
}
/// A voltage difference (saturating at ±327.67 V, beyond any close window).
pub fn dv_to_10mv(v: f64) -> i32 {
    let m = (1i64 << (DV_BITS - 1)) as f64;
    (v * 100.0).round().clamp(-m, m - 1.0) as i32
}
pub fn ohm_to_100uohm(r: f64) -> u32 {
    (r * 1e4).round().clamp(0.0, max_of(R_BITS) as f64) as u32
}
/// Limits round DOWN: a reported limit never exceeds the computed one.
pub fn amps_to_da_floor(a: f64) -> u32 {
    (a * 10.0).floor().clamp(0.0, (max_of(LIM_BITS) * LIM_STEP_DA) as f64) as u32
}
/// Proposed system limits (wider field), rounded down.
pub fn amps_to_da_floor_system(a: f64) -> u32 {
    (a * 10.0).floor().clamp(0.0, max_of(PROP_BITS) as f64) as u32
}
pub fn amps_to_da_signed(a: f64) -> i32 {
    let m = (1i64 << (I_BITS - 1)) as f64;
    (a * 10.0).round().clamp(-m, m - 1.0) as i32
}
pub fn soc_to_permille(soc: f64) -> u16 {
    (soc * 1000.0).round().clamp(0.0, 1000.0) as u16
}

/// Packs fields into a little-endian 64-bit word, low bits first.
struct Packer(u64, u32);
impl Packer {
    fn put(&mut self, v: u64, bits: u32) {
        self.0 |= (v & ((1u64 << bits) - 1)) << self.1;
        self.1 += bits;
    }
}
struct Unpacker(u64, u32);
impl Unpacker {
    fn get(&mut self, bits: u32) -> u64 {
        let v = (self.0 >> self.1) & ((1u64 << bits) - 1);
        self.1 += bits;
        v
    }
}

fn word(data: &[u8], frame: usize) -> u64 {
    let mut b = [0u8; 8];
    let end = (9 + 8 * frame).min(MESSAGE_LEN);
    b[..end - 1 - 8 * frame].copy_from_slice(&data[1 + 8 * frame..end]);
    u64::from_le_bytes(b)
}

/// A limit in 0.1 A on a wire field of `step` and `bits`: rounded down, saturated.
fn lim(da: u32, step: u32, bits: u32) -> u64 {
    (da / step).min(max_of(bits)) as u64
}

/// A continuous limit (0.1 A) as the wire carries it.
fn lim_on_wire(da: u32) -> u32 {
    lim(da, LIM_STEP_DA, LIM_BITS) as u32 * LIM_STEP_DA
}

/// The code of a peak limit given the continuous limit on the wire (both 0.1 A): the largest
/// k ≤ 255 with floor(cont · k / 32) ≤ peak, i.e. floor((32 · peak + 31) / cont): rounded down,
/// saturated low; 0 without a continuous limit.
fn peak_code(peak_da: u32, cont_da: u32) -> u64 {
    if cont_da == 0 {
        return 0;
    }
    ((PEAK_DEN * peak_da as u64 + PEAK_DEN - 1) / cont_da as u64).min(max_of(PEAK_BITS) as u64)
}

/// The peak limit (0.1 A) of a code: floor(cont · k / 32).
fn peak_of(code: u64, cont_da: u32) -> u32 {
    (cont_da as u64 * code / PEAK_DEN) as u32
}

impl Message {
    pub fn kind(&self) -> u8 {
        match self.body {
            Body::Limits(_) => 0,
            Body::Detail(_) => 1,
        }
    }

    /// Encode (with the tag as it is in `self.tag`). Values wider than their field are
    /// saturated by the conversions above; here they are masked to their width.
    pub fn encode(&self) -> [u8; MESSAGE_LEN] {
        let mut out = [0u8; MESSAGE_LEN];
        out[0] = ((self.sender.wrapping_sub(1) & 0x3F) as u8) | self.kind() << 6;
        let mut f0 = Packer(0, 0);
        f0.put(self.flags.to_u8() as u64, 7);
        f0.put(self.coord.to_u16() as u64, 15);
        f0.put(0, 2);
        f0.put(self.incarnation as u64, 16);
        f0.put(self.counter as u64, COUNTER_BITS);
        let (mut f1, mut f2) = (Packer(0, 0), Packer(0, 0));
        match &self.body {
            Body::Limits(b) => {
                f1.put(b.ocv_10mv.min(max_of(OCV_BITS)) as u64, OCV_BITS);
                f1.put(b.r_100uohm.min(max_of(R_BITS)) as u64, R_BITS);
                f1.put(lim(b.dcl_da, LIM_STEP_DA, LIM_BITS), LIM_BITS);
                f1.put(lim(b.ccl_da, LIM_STEP_DA, LIM_BITS), LIM_BITS);
                f2.put(peak_code(b.dcl_peak_da, lim_on_wire(b.dcl_da)), PEAK_BITS);
                f2.put(peak_code(b.ccl_peak_da, lim_on_wire(b.ccl_da)), PEAK_BITS);
            }
            Body::Detail(b) => {
                f1.put(b.prop_dcl_da.min(max_of(PROP_BITS)) as u64, PROP_BITS);
                f1.put(b.prop_ccl_da.min(max_of(PROP_BITS)) as u64, PROP_BITS);
                f1.put(b.soc_permille.min(1000) as u64, SOC_BITS);
                let m = 1i32 << (I_BITS - 1);
                f1.put(b.i_da.clamp(-m, m - 1) as u32 as u64, I_BITS);
                let m = 1i32 << (DV_BITS - 1);
                f2.put(b.dv_10mv.clamp(-m, m - 1) as u32 as u64, DV_BITS);
            }
        }
        f2.1 = BODY2_BITS;
        f2.put(u32::from_le_bytes(self.tag) as u64, 32);
        out[1..9].copy_from_slice(&f0.0.to_le_bytes());
        out[9..17].copy_from_slice(&f1.0.to_le_bytes());
        out[17..MESSAGE_LEN].copy_from_slice(&f2.0.to_le_bytes()[..MESSAGE_LEN - 17]);
        out
    }

    /// Decode (the tag is read, not verified: see [`crate::auth::Auth::open`]). Every failure
    /// is a typed error, never a panic (fuzzed with proptest).
    pub fn decode(data: &[u8]) -> Result<Message, WireError> {
        if data.len() != MESSAGE_LEN {
            return Err(WireError::Length(data.len()));
        }
        let h = data[0];
        if h & 0x80 != 0 {
            return Err(WireError::Header(h));
        }
        let sender = (h & 0x3F) as u16 + 1;
        let kind = (h >> 6) & 1;
        let mut f0 = Unpacker(word(data, 0), 0);
        let flags = Flags::from_u8(f0.get(7) as u8)?;
        let coord = Coord::from_u64(f0.get(15))?;
        if f0.get(2) != 0 {
            return Err(WireError::Range("reserved"));
        }
        let incarnation = f0.get(16) as u16;
        let counter = f0.get(COUNTER_BITS) as u32;
        let mut f1 = Unpacker(word(data, 1), 0);
        let mut f2 = Unpacker(word(data, 2), 0);
        // two's complement of a `bits`-wide field
        fn signed(raw: u64, bits: u32) -> i32 {
            (if raw >= 1 << (bits - 1) { raw as i64 - (1 << bits) } else { raw as i64 }) as i32
        }
        let body = if kind == 0 {
            let ocv_10mv = f1.get(OCV_BITS) as u32;
            let r_100uohm = f1.get(R_BITS) as u32;
            let dcl_da = f1.get(LIM_BITS) as u32 * LIM_STEP_DA;
            let ccl_da = f1.get(LIM_BITS) as u32 * LIM_STEP_DA;
            if f1.get(2) != 0 {
                return Err(WireError::Range("reserved"));
            }
            // one code per peak value (see peak_code): a code that is not the largest of its
            // value would decode to a message that encodes to other bytes
            let mut peak = |cont_da: u32| {
                let code = f2.get(PEAK_BITS);
                let da = peak_of(code, cont_da);
                if peak_code(da, cont_da) != code {
                    return Err(WireError::Range("peak"));
                }
                Ok(da)
            };
            let dcl_peak_da = peak(dcl_da)?;
            let ccl_peak_da = peak(ccl_da)?;
            Body::Limits(LimitsBody { ocv_10mv, r_100uohm, dcl_da, ccl_da, dcl_peak_da, ccl_peak_da })
        } else {
            let prop_dcl_da = f1.get(PROP_BITS) as u32;
            let prop_ccl_da = f1.get(PROP_BITS) as u32;
            let soc = f1.get(SOC_BITS);
            if soc > 1000 {
                return Err(WireError::Range("soc"));
            }
            let i_da = signed(f1.get(I_BITS), I_BITS);
            if f1.get(3) != 0 {
                return Err(WireError::Range("reserved"));
            }
            let dv_10mv = signed(f2.get(DV_BITS), DV_BITS);
            Body::Detail(DetailBody { prop_dcl_da, prop_ccl_da, soc_permille: soc as u16, dv_10mv, i_da })
        };
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&data[SIGNED_LEN..]);
        Ok(Message { sender, incarnation, counter, flags, coord, body, tag })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn worst() -> Message {
        Message {
            sender: 64,
            incarnation: u16::MAX,
            counter: COUNTER_MAX,
            flags: Flags { phase: 7, fault: true, main_closed: true, pre_closed: true, may_close: true },
            coord: Coord { req_ticket: 15, grant_to: 64, grant_ticket: 15 },
            body: Body::Detail(DetailBody {
                prop_dcl_da: max_of(PROP_BITS),
                prop_ccl_da: max_of(PROP_BITS),
                soc_permille: 1000,
                dv_10mv: -(1 << 15),
                i_da: -(1 << 14),
            }),
            tag: [0xAB; TAG_LEN],
        }
    }

    #[test]
    fn extremes_round_trip() {
        let m = worst();
        assert_eq!(Message::decode(&m.encode()).unwrap(), m);
        let mut m2 = m.clone();
        m2.sender = 1;
        m2.body = Body::Limits(LimitsBody {
            ocv_10mv: max_of(OCV_BITS),
            r_100uohm: max_of(R_BITS),
            dcl_da: max_of(LIM_BITS) * LIM_STEP_DA,
            ccl_da: 0,
            dcl_peak_da: peak_of(max_of(PEAK_BITS) as u64, max_of(LIM_BITS) * LIM_STEP_DA),
            ccl_peak_da: 0,
        });
        assert_eq!(Message::decode(&m2.encode()).unwrap(), m2);
        // Limits between wire steps round down (errs low, S4), never up.
        let mut m3 = m2.clone();
        m3.body = Body::Limits(LimitsBody { dcl_da: 1001, ccl_da: 99_999, dcl_peak_da: 2004, ccl_peak_da: 1, ..Default::default() });
        match Message::decode(&m3.encode()).unwrap().body {
            // peak 200.4 A over 100 A: code 64 (2.0x); 0.1 A over 6553.4 A: code 0
            Body::Limits(l) => assert_eq!((l.dcl_da, l.ccl_da, l.dcl_peak_da, l.ccl_peak_da), (1000, max_of(LIM_BITS) * 2, 2000, 0)),
            _ => unreachable!(),
        }
        // what encode sends is what on_wire says (the sender uses the same values as receivers)
        if let Body::Limits(l) = m3.body {
            assert_eq!(Message::decode(&m3.encode()).unwrap().body, Body::Limits(l.on_wire()));
        }
    }

    #[test]
    fn conversions_saturate_and_limits_round_down() {
        assert_eq!(amps_to_da_floor(1e9), max_of(LIM_BITS) * LIM_STEP_DA);
        assert_eq!(dv_to_10mv(-1e6), -(1 << 15));
        assert_eq!(amps_to_da_floor(f64::NAN), 0);
        assert_eq!(amps_to_da_floor(12.39), 123);
        assert_eq!(amps_to_da_signed(-1e9), -(1 << 14));
        assert_eq!(amps_to_da_signed(1e9), (1 << 14) - 1);
        assert_eq!(volts_to_10mv(1300.0), 130_000);
        assert_eq!(ohm_to_100uohm(0.05), 500);
    }

    #[test]
    fn bad_inputs_are_typed_errors() {
        assert_eq!(Message::decode(&[]), Err(WireError::Length(0)));
        assert_eq!(Message::decode(&[0u8; 25]), Err(WireError::Length(25)));
        let mut b = worst().encode();
        b[0] |= 0x80;
        assert!(matches!(Message::decode(&b), Err(WireError::Header(_))));
        let mut b = worst().encode();
        b[1] |= 0x80; // bit 7 of frame 0 is coord bit 0..: make coord grant_to without ticket
        b[2] = 0xFF;
        b[3] = 0x3F;
        assert!(Message::decode(&b).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases(20_000)))]
        #[test]
        fn decode_never_panics_and_what_decodes_re_encodes(data in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(m) = Message::decode(&data) {
                // A decoded message encodes back to the same bytes (one meaning per bit pattern).
                prop_assert_eq!(&m.encode()[..], &data[..]);
            }
        }

        #[test]
        fn peaks_round_down_by_less_than_a_32nd_of_the_continuous_limit(
            dcl in 0u32..200_000, peak in 0u32..2_000_000, ocv in 0u32..200_000, r in 0u32..40_000,
        ) {
            let body = LimitsBody { ocv_10mv: ocv, r_100uohm: r, dcl_da: dcl, ccl_da: peak, dcl_peak_da: peak, ccl_peak_da: dcl };
            let w = body.on_wire();
            // never above the true value (errs low, S4) ...
            prop_assert!(w.dcl_peak_da <= peak && w.ccl_peak_da <= dcl && w.dcl_da <= dcl);
            // ... and below it by less than one code step unless the ratio saturates
            if w.dcl_da > 0 && (peak as u64) * 32 < w.dcl_da as u64 * 255 {
                prop_assert!(((peak - w.dcl_peak_da) as u64) * 32 < w.dcl_da as u64 + 32, "{:?}", w);
            }
            // the wire carries exactly the on-wire values, and they are a fixed point
            prop_assert_eq!(w.on_wire(), w);
            let m = Message { body: Body::Limits(body), ..worst() };
            prop_assert_eq!(Message::decode(&m.encode()).unwrap().body, Body::Limits(w));
        }

        #[test]
        fn random_message_length_inputs(data in proptest::collection::vec(any::<u8>(), MESSAGE_LEN..=MESSAGE_LEN)) {
            if let Ok(m) = Message::decode(&data) {
                prop_assert_eq!(&m.encode()[..], &data[..]);
            }
        }
    }
}
