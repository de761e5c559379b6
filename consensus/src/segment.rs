//! Carrying peer messages ([`crate::wire`], 23 bytes) over CAN.
//!
//! Classic CAN: three frames per message (8, 8 and 6 bytes), no length byte (the layout is fixed).
//! - CAN id (11 bit) = 0x400 | (sender−1)<<4 | kind<<3 | toggle<<2 | index
//!   (sender 1..=64 → 6 bits; kind 0 = Limits, 1 = Detail; toggle = low bit of the message
//!   counter; index 0..=2 = frame number). The message's header byte is the id's sender and
//!   kind; frame k carries bytes 1+8k..=8+8k. Lower index = higher CAN priority, so a
//!   controller with several transmit buffers still sends them in order. Every id is one
//!   message of the shipped DBC with fixed signals (`mbms.telemetry.dbc_text`).
//! - The reassembler keeps one partial message per sender; a frame that is not the next
//!   expected one (index, kind, toggle) drops the partial message (counted). Losing a frame
//!   loses the message; the next heartbeat repairs it (full snapshots). The toggle keeps the
//!   frames of two messages from being glued together when frames are lost (which would
//!   otherwise be counted as a forgery).
//!
//! CAN FD: the 22 bytes after the header in one 24-byte frame (padded with 0xCC), id with toggle = index = 0.

use crate::wire::{MESSAGE_LEN, WireError};

pub const CAN_ID_BASE: u32 = 0x400;
pub const CAN_ID_LAST: u32 = 0x7FF;
pub const FRAMES: usize = 3;
const PAYLOAD: usize = MESSAGE_LEN - 1;
/// Data length of each classic frame.
const FRAME_LEN: [usize; FRAMES] = [8, 8, MESSAGE_LEN - 17];
const FD_LEN: usize = 24;
const FD_PAD: u8 = 0xCC;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CanFrame {
    pub id: u32,
    pub data: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentError {
    /// The message is not one of the format.
    Message(WireError),
    /// A CAN id outside the peer protocol's range 0x400..=0x7FF, or index 3.
    ForeignId(u32),
    /// Frame data of the wrong length (8, 8, 6 classic; 24 FD).
    FrameLength(usize),
    /// A frame that does not continue the partial message of its sender.
    OutOfOrder { sender: u16, index: u8 },
}

impl std::fmt::Display for SegmentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SegmentError::Message(e) => write!(f, "{e}"),
            SegmentError::ForeignId(id) => write!(f, "CAN id {id:#x} is not a peer-protocol frame"),
            SegmentError::FrameLength(n) => write!(f, "bad frame data length {n}"),
            SegmentError::OutOfOrder { sender, index } => {
                write!(f, "frame {index} of sender {sender} out of order")
            }
        }
    }
}

impl std::error::Error for SegmentError {}

impl SegmentError {
    /// Why a frame was dropped, as a transport counts it. `incomplete` is a continuation frame
    /// whose start was never seen: the receiver joined mid-message, a frame was lost, or the sender
    /// died mid-message. That is expected on a live bus, unlike `malformed` (bytes that cannot be a
    /// frame of this protocol), which points at a faulty or foreign device.
    pub fn kind(&self) -> &'static str {
        match self {
            SegmentError::FrameLength(n) if *n > FD_LEN => "oversized",
            SegmentError::ForeignId(_) => "foreign",
            SegmentError::OutOfOrder { .. } => "incomplete",
            _ => "malformed",
        }
    }
}

/// The CAN id of frame `index` of a message.
pub fn can_id(sender: u16, kind: u8, toggle: u8, index: u8) -> u32 {
    CAN_ID_BASE | ((sender as u32).wrapping_sub(1) & 0x3F) << 4 | (kind as u32 & 1) << 3 | (toggle as u32 & 1) << 2 | (index as u32 & 3)
}

/// (sender, kind, toggle, index) of a peer-protocol id.
pub fn split_id(id: u32) -> Result<(u16, u8, u8, u8), SegmentError> {
    if !(CAN_ID_BASE..=CAN_ID_LAST).contains(&id) || id & 3 == 3 {
        return Err(SegmentError::ForeignId(id));
    }
    Ok((((id >> 4) & 0x3F) as u16 + 1, ((id >> 3) & 1) as u8, ((id >> 2) & 1) as u8, (id & 3) as u8))
}

fn header(msg: &[u8]) -> Result<(u16, u8, u8), SegmentError> {
    if msg.len() != MESSAGE_LEN {
        return Err(SegmentError::Message(WireError::Length(msg.len())));
    }
    if msg[0] & 0x80 != 0 {
        return Err(SegmentError::Message(WireError::Header(msg[0])));
    }
    // toggle: low bit of the message counter (frame 0, bit 40 → byte 1+5, bit 0)
    Ok(((msg[0] & 0x3F) as u16 + 1, (msg[0] >> 6) & 1, msg[6] & 1))
}

/// Split one message into three classic CAN frames.
pub fn segment_classic(msg: &[u8]) -> Result<Vec<CanFrame>, SegmentError> {
    let (sender, kind, toggle) = header(msg)?;
    Ok(msg[1..]
        .chunks(8)
        .enumerate()
        .map(|(i, c)| CanFrame { id: can_id(sender, kind, toggle, i as u8), data: c.to_vec() })
        .collect())
}

/// Pack one message into one CAN FD frame (24 data bytes, an FD length).
pub fn frame_fd(msg: &[u8]) -> Result<CanFrame, SegmentError> {
    let (sender, kind, _) = header(msg)?;
    let mut data = msg[1..].to_vec();
    data.resize(FD_LEN, FD_PAD);
    Ok(CanFrame { id: can_id(sender, kind, 0, 0), data })
}

fn with_header(sender: u16, kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(MESSAGE_LEN);
    m.push((sender - 1) as u8 | kind << 6);
    m.extend_from_slice(payload);
    m
}

/// Take the message out of a CAN FD frame.
pub fn unframe_fd(id: u32, data: &[u8]) -> Result<(u16, Vec<u8>), SegmentError> {
    let (sender, kind, toggle, index) = split_id(id)?;
    if toggle != 0 || index != 0 {
        return Err(SegmentError::ForeignId(id));
    }
    if data.len() != FD_LEN || data[PAYLOAD..].iter().any(|&b| b != FD_PAD) {
        return Err(SegmentError::FrameLength(data.len()));
    }
    Ok((sender, with_header(sender, kind, &data[..PAYLOAD])))
}

#[derive(Clone, Debug, Default)]
struct Partial {
    active: bool,
    kind: u8,
    toggle: u8,
    next: u8,
    buf: Vec<u8>,
}

/// Sans-IO reassembler of classic-CAN-segmented messages (one partial message per sender).
#[derive(Clone, Debug)]
pub struct Reassembler {
    slots: Vec<Partial>,
    /// Frames dropped (foreign id, bad length, out of order).
    pub dropped_frames: u64,
    pub messages: u64,
}

impl Default for Reassembler {
    fn default() -> Self {
        Self::new()
    }
}

impl Reassembler {
    pub fn new() -> Self {
        Self { slots: vec![Partial::default(); 65], dropped_frames: 0, messages: 0 }
    }

    /// Feed one received frame; returns (sender, message) when a message completes.
    pub fn push(&mut self, id: u32, data: &[u8]) -> Result<Option<(u16, Vec<u8>)>, SegmentError> {
        let r = self.push_inner(id, data);
        match &r {
            Err(_) => self.dropped_frames += 1,
            Ok(Some(_)) => self.messages += 1,
            Ok(None) => {}
        }
        r
    }

    fn push_inner(&mut self, id: u32, data: &[u8]) -> Result<Option<(u16, Vec<u8>)>, SegmentError> {
        let (sender, kind, toggle, index) = split_id(id)?;
        let slot = &mut self.slots[sender as usize];
        if data.len() != FRAME_LEN[index as usize] {
            slot.active = false;
            return Err(SegmentError::FrameLength(data.len()));
        }
        if index == 0 {
            slot.active = true;
            slot.kind = kind;
            slot.toggle = toggle;
            slot.next = 1;
            slot.buf.clear();
            slot.buf.extend_from_slice(data);
            return Ok(None);
        }
        if !slot.active || slot.kind != kind || slot.toggle != toggle || slot.next != index {
            slot.active = false;
            return Err(SegmentError::OutOfOrder { sender, index });
        }
        slot.buf.extend_from_slice(data);
        slot.next += 1;
        if slot.next as usize == FRAMES {
            slot.active = false;
            let m = with_header(sender, kind, &slot.buf);
            slot.buf.clear();
            return Ok(Some((sender, m)));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn message(sender: u16, kind: u8, fill: &[u8]) -> Vec<u8> {
        let mut m = vec![(sender - 1) as u8 | kind << 6];
        m.extend((0..PAYLOAD).map(|i| fill[i % fill.len()]));
        m
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases(5000)))]
        #[test]
        fn round_trip_with_interleaved_senders(
            a in proptest::collection::vec(any::<u8>(), 1..=24),
            b in proptest::collection::vec(any::<u8>(), 1..=24),
            ka in 0u8..2, kb in 0u8..2,
        ) {
            let ma = message(3, ka, &a);
            let mb = message(64, kb, &b);
            let fa = segment_classic(&ma).unwrap();
            let fb = segment_classic(&mb).unwrap();
            prop_assert_eq!(fa.len(), FRAMES);
            let mut r = Reassembler::new();
            let mut got = Vec::new();
            for i in 0..FRAMES {
                for f in [&fa[i], &fb[i]] {
                    prop_assert_eq!(f.data.len(), FRAME_LEN[i]);
                    if let Some(m) = r.push(f.id, &f.data).unwrap() { got.push(m); }
                }
            }
            got.sort();
            let mut want = vec![(3u16, ma.clone()), (64u16, mb.clone())];
            want.sort();
            prop_assert_eq!(got, want);
            let fd = frame_fd(&ma).unwrap();
            prop_assert_eq!(unframe_fd(fd.id, &fd.data).unwrap(), (3u16, ma));
        }

        #[test]
        fn arbitrary_frames_never_panic(frames in proptest::collection::vec(
            (0u32..0x800, proptest::collection::vec(any::<u8>(), 0..30)), 0..40)) {
            let mut r = Reassembler::new();
            for (id, d) in frames {
                if let Ok(Some((_, m))) = r.push(id, &d) {
                    prop_assert_eq!(m.len(), MESSAGE_LEN);
                }
                if let Ok((_, m)) = unframe_fd(id, &d) {
                    prop_assert_eq!(m.len(), MESSAGE_LEN);
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases(5000)))]
        /// Issue 15 item 5: a bad frame changes no state that is not its own sender's. Sender 5
        /// is halfway through a message; garbage under any other id (foreign ids, other senders,
        /// any length) is counted as dropped or completes a message of its own id only, and 5's
        /// message still completes unchanged. The reassembler's memory stays bounded: 65 slots
        /// of at most one message each, whatever it was fed.
        #[test]
        fn a_bad_frame_changes_no_other_senders_message(
            fill in proptest::collection::vec(any::<u8>(), 1..=24),
            garbage in proptest::collection::vec((0u32..0x1000, proptest::collection::vec(any::<u8>(), 0..30)), 0..40),
        ) {
            let m = message(5, 1, &fill);
            let f = segment_classic(&m).unwrap();
            let mut r = Reassembler::new();
            prop_assert_eq!(r.push(f[0].id, &f[0].data), Ok(None));
            prop_assert_eq!(r.push(f[1].id, &f[1].data), Ok(None));
            let (dropped0, messages0) = (r.dropped_frames, r.messages);
            let mut errors = 0;
            let mut completed = 0;
            for (id, d) in garbage.iter().filter(|(id, _)| split_id(*id).map_or(true, |(s, ..)| s != 5)) {
                match r.push(*id, d) {
                    Err(_) => errors += 1,
                    Ok(Some((s, out))) => {
                        completed += 1;
                        prop_assert_eq!(s, split_id(*id).unwrap().0);
                        prop_assert_eq!(out.len(), MESSAGE_LEN);
                    }
                    Ok(None) => {}
                }
            }
            prop_assert_eq!(r.dropped_frames - dropped0, errors, "every rejected frame is counted");
            prop_assert_eq!(r.messages - messages0, completed);
            prop_assert_eq!(r.push(f[2].id, &f[2].data), Ok(Some((5, m))));
            prop_assert_eq!(r.slots.len(), 65);
            prop_assert!(r.slots.iter().all(|p| p.buf.len() <= MESSAGE_LEN && p.buf.capacity() <= 2 * MESSAGE_LEN));
        }
    }

    #[test]
    fn a_lost_frame_loses_only_that_message_and_never_glues_two() {
        let mut m1 = message(5, 0, &[1]);
        let mut m2 = message(5, 0, &[2]);
        m1[6] = 0; // counter low bit 0
        m2[6] = 1; // the next message: toggle 1
        let f1 = segment_classic(&m1).unwrap();
        let f2 = segment_classic(&m2).unwrap();
        let mut r = Reassembler::new();
        // frame 0 of m1, then m1's frames 1, 2 lost, then m2 without its frame 0: not glued
        assert_eq!(r.push(f1[0].id, &f1[0].data).unwrap(), None);
        assert!(matches!(r.push(f2[1].id, &f2[1].data), Err(SegmentError::OutOfOrder { .. })));
        assert!(r.push(f2[2].id, &f2[2].data).is_err());
        let mut out = None;
        for f in &f2 {
            out = r.push(f.id, &f.data).unwrap();
        }
        assert_eq!(out, Some((5, m2)));
        assert!(segment_classic(&[0u8; 26]).is_err());
        assert_eq!(r.push(0x123, &[1, 2]), Err(SegmentError::ForeignId(0x123)));
        assert_eq!(r.push(0x403, &[0; 8]), Err(SegmentError::ForeignId(0x403)));
    }
}
