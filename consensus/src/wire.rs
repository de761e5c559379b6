//! The peer message format: one msgpack array, ≤ 64 bytes (one CAN FD frame).
//!
//! ```text
//! [verkind, system_id, sender, seq, incarnation, flags, coord, b0, b1, b2, b3, b4, b5 (, tag)]
//!   verkind      version<<4 | kind       (version 1; kind 0 = Limits, 1 = Detail)
//!   system_id    u32                     (messages of another system are dropped)
//!   sender       u16, 1..=64
//!   seq          u8, 0..=127, wraps      (serial-number order, RFC 1982, 7 bits)
//!   incarnation  u16                     (boot nonce; a new one = a restart; two at once = duplicate id)
//!   flags        phase (3 bits) | fault<<3 | main_closed<<4 | pre_closed<<5 | may_close<<6
//!   coord        req_ticket (4 bits) | grant_ticket<<4 (4 bits) | grant_to<<8 (7 bits); 0 = nothing
//!   kind 0 (Limits): ocv [10 mV], r [0.1 mΩ], dcl, ccl, dcl_peak, ccl_peak [0.1 A]
//!   kind 1 (Detail): proposed system dcl, ccl [0.1 A], soc [0.1 %], v_bus, v_string [10 mV], i [0.1 A, signed]
//!   tag          optional bin ≤ 8 bytes: room for a truncated 64-bit MAC (SecOC-style)
//! ```
//! A heartbeat alternates the two kinds, so two consecutive heartbeats carry a full state
//! snapshot; every message carries the phase, the contactor state and the grant/request
//! fields. Integers take msgpack's shortest form, so a typical message is ~30 bytes (four
//! classic CAN frames); the worst case is 51 bytes without tag, 61 with an 8-byte tag.
//! Limits are rounded down (errs low, S4); other quantities to nearest.

use rmp::decode::{read_array_len, read_bin_len, read_int};
use rmp::encode::{write_array_len, write_bin, write_sint, write_uint};

pub const VERSION: u8 = 1;
pub const MAX_MESSAGE_LEN: usize = 64;
pub const MAX_TAG_LEN: usize = 8;
/// Request tickets are 4 bits, 1..=15 (0 = no request).
pub const MAX_TICKET: u8 = 15;
/// Sequence numbers are 7 bits so that they are one msgpack byte.
pub const SEQ_MOD: u8 = 128;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    Empty,
    TooLong(usize),
    /// Not the expected msgpack structure; names the field that failed.
    Malformed(&'static str),
    Version(u8),
    Kind(u8),
    /// A field out of its range; names it.
    Range(&'static str),
    TrailingBytes,
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Empty => write!(f, "empty message"),
            WireError::TooLong(n) => write!(f, "message of {n} bytes, expected <= {MAX_MESSAGE_LEN}"),
            WireError::Malformed(field) => write!(f, "malformed msgpack at field {field}"),
            WireError::Version(v) => write!(f, "version {v}, expected {VERSION}"),
            WireError::Kind(k) => write!(f, "unknown message kind {k}"),
            WireError::Range(field) => write!(f, "field {field} out of range"),
            WireError::TrailingBytes => write!(f, "trailing bytes after the message"),
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

/// Proposed system limits and measured detail (kind 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DetailBody {
    pub prop_dcl_da: u32,
    pub prop_ccl_da: u32,
    pub soc_permille: u16,
    pub v_bus_10mv: u32,
    pub v_string_10mv: u32,
    pub i_da: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    Limits(LimitsBody),
    Detail(DetailBody),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub system_id: u32,
    pub sender: u16,
    pub seq: u8,
    pub incarnation: u16,
    pub flags: Flags,
    pub coord: Coord,
    pub body: Body,
    /// Room for an authentication tag (not computed here yet).
    pub tag: Option<Vec<u8>>,
}

// ---- unit conversions (saturating; NaN maps to 0, which errs low for limits) ----

pub fn volts_to_10mv(v: f64) -> u32 {
    (v * 100.0).round().clamp(0.0, u32::MAX as f64) as u32
}
pub fn ohm_to_100uohm(r: f64) -> u32 {
    (r * 1e4).round().clamp(0.0, u32::MAX as f64) as u32
}
/// Limits round DOWN: a reported limit never exceeds the computed one.
pub fn amps_to_da_floor(a: f64) -> u32 {
    (a * 10.0).floor().clamp(0.0, u32::MAX as f64) as u32
}
pub fn amps_to_da_signed(a: f64) -> i32 {
    (a * 10.0).round().clamp(i32::MIN as f64, i32::MAX as f64) as i32
}
pub fn soc_to_permille(soc: f64) -> u16 {
    (soc * 1000.0).round().clamp(0.0, 1000.0) as u16
}

impl Message {
    pub fn kind(&self) -> u8 {
        match self.body {
            Body::Limits(_) => 0,
            Body::Detail(_) => 1,
        }
    }

    /// Encode; the result is ≤ 64 bytes by construction (field widths are bounded).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_MESSAGE_LEN);
        let n = 13 + self.tag.is_some() as u32;
        // Writes into a Vec cannot fail.
        write_array_len(&mut out, n).expect("vec write");
        let w = |out: &mut Vec<u8>, v: u64| {
            write_uint(out, v).expect("vec write");
        };
        w(&mut out, ((VERSION << 4) | self.kind()) as u64);
        w(&mut out, self.system_id as u64);
        w(&mut out, self.sender as u64);
        w(&mut out, (self.seq % SEQ_MOD) as u64);
        w(&mut out, self.incarnation as u64);
        w(&mut out, self.flags.to_u8() as u64);
        w(&mut out, self.coord.to_u16() as u64);
        match &self.body {
            Body::Limits(b) => {
                for v in [b.ocv_10mv, b.r_100uohm, b.dcl_da, b.ccl_da, b.dcl_peak_da, b.ccl_peak_da] {
                    w(&mut out, v as u64);
                }
            }
            Body::Detail(b) => {
                w(&mut out, b.prop_dcl_da as u64);
                w(&mut out, b.prop_ccl_da as u64);
                w(&mut out, b.soc_permille as u64);
                w(&mut out, b.v_bus_10mv as u64);
                w(&mut out, b.v_string_10mv as u64);
                write_sint(&mut out, b.i_da as i64).expect("vec write");
            }
        }
        if let Some(tag) = &self.tag {
            let t = &tag[..tag.len().min(MAX_TAG_LEN)];
            write_bin(&mut out, t).expect("vec write");
        }
        out
    }

    /// Decode; every failure is a typed error, never a panic (fuzzed with proptest).
    pub fn decode(data: &[u8]) -> Result<Message, WireError> {
        if data.is_empty() {
            return Err(WireError::Empty);
        }
        if data.len() > MAX_MESSAGE_LEN {
            return Err(WireError::TooLong(data.len()));
        }
        let mut rd: &[u8] = data;
        let n = read_array_len(&mut rd).map_err(|_| WireError::Malformed("array"))?;
        if n != 13 && n != 14 {
            return Err(WireError::Malformed("array length"));
        }
        fn u(rd: &mut &[u8], field: &'static str, max: u64) -> Result<u64, WireError> {
            let v: u64 = read_int(rd).map_err(|_| WireError::Malformed(field))?;
            if v > max {
                return Err(WireError::Range(field));
            }
            Ok(v)
        }
        let verkind = u(&mut rd, "verkind", 255)? as u8;
        if verkind >> 4 != VERSION {
            return Err(WireError::Version(verkind >> 4));
        }
        let kind = verkind & 15;
        if kind > 1 {
            return Err(WireError::Kind(kind));
        }
        let system_id = u(&mut rd, "system_id", u32::MAX as u64)? as u32;
        let sender = u(&mut rd, "sender", 64)? as u16;
        if sender == 0 {
            return Err(WireError::Range("sender"));
        }
        let seq = u(&mut rd, "seq", (SEQ_MOD - 1) as u64)? as u8;
        let incarnation = u(&mut rd, "incarnation", u16::MAX as u64)? as u16;
        let flags = Flags::from_u8(u(&mut rd, "flags", 127)? as u8)?;
        let coord = Coord::from_u64(u(&mut rd, "coord", u16::MAX as u64)?)?;
        let m32 = u32::MAX as u64;
        let body = if kind == 0 {
            Body::Limits(LimitsBody {
                ocv_10mv: u(&mut rd, "ocv", m32)? as u32,
                r_100uohm: u(&mut rd, "r", m32)? as u32,
                dcl_da: u(&mut rd, "dcl", m32)? as u32,
                ccl_da: u(&mut rd, "ccl", m32)? as u32,
                dcl_peak_da: u(&mut rd, "dcl_peak", m32)? as u32,
                ccl_peak_da: u(&mut rd, "ccl_peak", m32)? as u32,
            })
        } else {
            let prop_dcl_da = u(&mut rd, "prop_dcl", m32)? as u32;
            let prop_ccl_da = u(&mut rd, "prop_ccl", m32)? as u32;
            let soc_permille = u(&mut rd, "soc", 1000)? as u16;
            let v_bus_10mv = u(&mut rd, "v_bus", m32)? as u32;
            let v_string_10mv = u(&mut rd, "v_string", m32)? as u32;
            let i: i64 = read_int(&mut rd).map_err(|_| WireError::Malformed("i"))?;
            if i < i32::MIN as i64 || i > i32::MAX as i64 {
                return Err(WireError::Range("i"));
            }
            Body::Detail(DetailBody {
                prop_dcl_da,
                prop_ccl_da,
                soc_permille,
                v_bus_10mv,
                v_string_10mv,
                i_da: i as i32,
            })
        };
        let tag = if n == 14 {
            let len = read_bin_len(&mut rd).map_err(|_| WireError::Malformed("tag"))? as usize;
            if len > MAX_TAG_LEN || len > rd.len() {
                return Err(WireError::Malformed("tag"));
            }
            let t = rd[..len].to_vec();
            rd = &rd[len..];
            Some(t)
        } else {
            None
        };
        if !rd.is_empty() {
            return Err(WireError::TrailingBytes);
        }
        Ok(Message { system_id, sender, seq, incarnation, flags, coord, body, tag })
    }
}

/// Serial-number order on 7-bit sequence numbers (RFC 1982): is `a` newer than `b`?
pub fn seq_newer(a: u8, b: u8) -> bool {
    let d = (a.wrapping_sub(b)) % SEQ_MOD;
    d != 0 && d < SEQ_MOD / 2
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn worst() -> Message {
        Message {
            system_id: u32::MAX,
            sender: 64,
            seq: 127,
            incarnation: u16::MAX,
            flags: Flags { phase: 7, fault: true, main_closed: true, pre_closed: true, may_close: true },
            coord: Coord { req_ticket: 15, grant_to: 64, grant_ticket: 15 },
            body: Body::Detail(DetailBody {
                prop_dcl_da: u32::MAX,
                prop_ccl_da: u32::MAX,
                soc_permille: 1000,
                v_bus_10mv: u32::MAX,
                v_string_10mv: u32::MAX,
                i_da: i32::MIN,
            }),
            tag: Some(vec![0xAB; MAX_TAG_LEN]),
        }
    }

    #[test]
    fn worst_case_fits_one_can_fd_frame_and_round_trips() {
        let m = worst();
        let b = m.encode();
        assert!(b.len() <= MAX_MESSAGE_LEN, "{} bytes", b.len());
        assert_eq!(Message::decode(&b).unwrap(), m);
        let mut m2 = m.clone();
        m2.body = Body::Limits(LimitsBody {
            ocv_10mv: u32::MAX,
            r_100uohm: u32::MAX,
            dcl_da: u32::MAX,
            ccl_da: u32::MAX,
            dcl_peak_da: u32::MAX,
            ccl_peak_da: u32::MAX,
        });
        let b2 = m2.encode();
        assert!(b2.len() <= MAX_MESSAGE_LEN, "{} bytes", b2.len());
        assert_eq!(Message::decode(&b2).unwrap(), m2);
    }

    #[test]
    fn typical_message_is_compact() {
        // 400 V string, 50 mΩ, 200 A limits, 16 peers.
        let m = Message {
            system_id: 7,
            sender: 16,
            seq: 100,
            incarnation: 40_000,
            flags: Flags { phase: 4, main_closed: true, may_close: true, ..Default::default() },
            coord: Coord::default(),
            body: Body::Limits(LimitsBody {
                ocv_10mv: volts_to_10mv(400.0),
                r_100uohm: ohm_to_100uohm(0.05),
                dcl_da: 2000,
                ccl_da: 1000,
                dcl_peak_da: 4000,
                ccl_peak_da: 2000,
            }),
            tag: None,
        };
        assert!(m.encode().len() <= 28, "{}", m.encode().len());
    }

    #[test]
    fn bad_inputs_are_typed_errors() {
        assert_eq!(Message::decode(&[]), Err(WireError::Empty));
        assert_eq!(Message::decode(&[0u8; 65]), Err(WireError::TooLong(65)));
        let mut b = worst().encode();
        b[1] = 0x20; // verkind: version 2, kind 0
        assert_eq!(Message::decode(&b), Err(WireError::Version(2)));
        let mut b = worst().encode();
        b.push(0);
        assert!(Message::decode(&b).is_err());
    }

    #[test]
    fn serial_order_wraps() {
        assert!(seq_newer(1, 0));
        assert!(seq_newer(0, 127));
        assert!(!seq_newer(0, 1));
        assert!(!seq_newer(5, 5));
        assert!(!seq_newer(70, 5)); // 65 ahead: ambiguous half, treated as old
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]
        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = Message::decode(&data);
        }

        #[test]
        fn mutated_valid_messages_never_panic(idx in 0usize..64, val in any::<u8>()) {
            let mut b = worst().encode();
            let i = idx % b.len();
            b[i] = val;
            if let Ok(m) = Message::decode(&b) {
                // Whatever decodes re-encodes within the size bound.
                prop_assert!(m.encode().len() <= MAX_MESSAGE_LEN);
            }
        }
    }
}
