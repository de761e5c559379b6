//! Carrying peer messages over CAN.
//!
//! Classic CAN (8-byte frames), the segmentation:
//! - CAN id (11 bit) = 0x400 | (sender−1)<<4 | toggle<<3 | index
//!   (sender 1..=64 → 6 bits; toggle = low bit of the sender's message counter, flips every
//!   message; index 0..=7 = frame number within the message). Lower index = higher CAN
//!   priority, so a controller with several transmit buffers still sends them in order.
//! - frame 0 data = [len, first ≤ 7 message bytes]; frames 1.. carry ≤ 8 bytes; every
//!   frame but the last is full (DLC 8). So a message is at most 8·8−1 = 63 bytes.
//! - The reassembler keeps one partial message per sender; a frame that is not the next
//!   expected one (index, toggle) drops the partial message (counted). Losing a frame loses
//!   the message; the next heartbeat repairs it (full snapshots).
//!
//! CAN FD: the whole message in one frame, same id with toggle = index = 0, data =
//! [len, message, padding 0xCC] padded up to the next FD data length.

pub const CAN_ID_BASE: u32 = 0x400;
pub const MAX_SEGMENTED_LEN: usize = 63;
const FD_SIZES: [usize; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CanFrame {
    pub id: u32,
    pub data: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentError {
    /// The message is longer than 63 bytes (or empty).
    MessageLength(usize),
    /// Sender outside 1..=64.
    Sender(u16),
    /// A CAN id outside the peer protocol's range 0x400..=0x7FF.
    ForeignId(u32),
    /// Frame data longer than its kind allows (8 classic, 64 FD) or a bad length byte.
    FrameLength(usize),
    /// A frame that does not continue the partial message of its sender.
    OutOfOrder { sender: u16, index: u8 },
}

impl std::fmt::Display for SegmentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SegmentError::MessageLength(n) => write!(f, "message of {n} bytes, expected 1..=63"),
            SegmentError::Sender(s) => write!(f, "sender {s} outside 1..=64"),
            SegmentError::ForeignId(id) => write!(f, "CAN id {id:#x} outside 0x400..=0x7ff"),
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
            SegmentError::MessageLength(n) if *n > MAX_SEGMENTED_LEN => "oversized",
            SegmentError::FrameLength(n) if *n > MAX_SEGMENTED_LEN => "oversized",
            SegmentError::ForeignId(_) => "foreign",
            SegmentError::OutOfOrder { .. } => "incomplete",
            _ => "malformed",
        }
    }
}

fn check(sender: u16, msg: &[u8]) -> Result<(), SegmentError> {
    if !(1..=64).contains(&sender) {
        return Err(SegmentError::Sender(sender));
    }
    if msg.is_empty() || msg.len() > MAX_SEGMENTED_LEN {
        return Err(SegmentError::MessageLength(msg.len()));
    }
    Ok(())
}

/// The CAN id of frame `index` of a message; `msg_counter` is the sender's message count.
pub fn can_id(sender: u16, msg_counter: u32, index: u8) -> u32 {
    CAN_ID_BASE | ((sender as u32 - 1) & 0x3F) << 4 | (msg_counter & 1) << 3 | (index as u32 & 7)
}

/// Split one message into classic CAN frames.
pub fn segment_classic(sender: u16, msg_counter: u32, msg: &[u8]) -> Result<Vec<CanFrame>, SegmentError> {
    check(sender, msg)?;
    let mut payload = Vec::with_capacity(msg.len() + 1);
    payload.push(msg.len() as u8);
    payload.extend_from_slice(msg);
    Ok(payload
        .chunks(8)
        .enumerate()
        .map(|(i, c)| CanFrame { id: can_id(sender, msg_counter, i as u8), data: c.to_vec() })
        .collect())
}

/// Number of classic frames for a message of `len` bytes.
pub fn classic_frame_count(len: usize) -> usize {
    (len + 1).div_ceil(8)
}

/// Pack one message into one CAN FD frame.
pub fn frame_fd(sender: u16, msg: &[u8]) -> Result<CanFrame, SegmentError> {
    check(sender, msg)?;
    let n = msg.len() + 1;
    let size = *FD_SIZES.iter().find(|&&s| s >= n).expect("n <= 64");
    let mut data = Vec::with_capacity(size);
    data.push(msg.len() as u8);
    data.extend_from_slice(msg);
    data.resize(size, 0xCC);
    Ok(CanFrame { id: can_id(sender, 0, 0), data })
}

/// Take the message out of a CAN FD frame.
pub fn unframe_fd(id: u32, data: &[u8]) -> Result<(u16, Vec<u8>), SegmentError> {
    let (sender, _, _) = split_id(id)?;
    if data.is_empty() || data.len() > 64 {
        return Err(SegmentError::FrameLength(data.len()));
    }
    let len = data[0] as usize;
    if len == 0 || len > MAX_SEGMENTED_LEN || len + 1 > data.len() {
        return Err(SegmentError::FrameLength(len));
    }
    Ok((sender, data[1..1 + len].to_vec()))
}

fn split_id(id: u32) -> Result<(u16, u8, u8), SegmentError> {
    if !(CAN_ID_BASE..=0x7FF).contains(&id) {
        return Err(SegmentError::ForeignId(id));
    }
    Ok((((id >> 4) & 0x3F) as u16 + 1, ((id >> 3) & 1) as u8, (id & 7) as u8))
}

#[derive(Clone, Debug, Default)]
struct Partial {
    active: bool,
    toggle: u8,
    next: u8,
    len: usize,
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
        let (sender, toggle, index) = split_id(id)?;
        let slot = &mut self.slots[sender as usize];
        if data.is_empty() || data.len() > 8 {
            slot.active = false;
            return Err(SegmentError::FrameLength(data.len()));
        }
        if index == 0 {
            let len = data[0] as usize;
            if len == 0 || len > MAX_SEGMENTED_LEN {
                slot.active = false;
                return Err(SegmentError::FrameLength(len));
            }
            slot.active = true;
            slot.toggle = toggle;
            slot.next = 1;
            slot.len = len;
            slot.buf.clear();
            slot.buf.extend_from_slice(&data[1..]);
        } else {
            if !slot.active || slot.toggle != toggle || slot.next != index {
                slot.active = false;
                return Err(SegmentError::OutOfOrder { sender, index });
            }
            slot.buf.extend_from_slice(data);
            slot.next += 1;
        }
        let remaining = slot.len as isize - slot.buf.len() as isize;
        if remaining == 0 {
            slot.active = false;
            return Ok(Some((sender, std::mem::take(&mut slot.buf))));
        }
        // Not done: this frame must have been full, and the message must not overrun.
        if remaining < 0 || data.len() != 8 {
            slot.active = false;
            return Err(SegmentError::FrameLength(data.len()));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn round_trip_with_interleaved_senders(
            a in proptest::collection::vec(any::<u8>(), 1..=63),
            b in proptest::collection::vec(any::<u8>(), 1..=63),
            ca in any::<u32>(), cb in any::<u32>(),
        ) {
            let fa = segment_classic(3, ca, &a).unwrap();
            let fb = segment_classic(64, cb, &b).unwrap();
            prop_assert_eq!(fa.len(), classic_frame_count(a.len()));
            let mut r = Reassembler::new();
            let mut got = Vec::new();
            let n = fa.len().max(fb.len());
            for i in 0..n {
                for f in [fa.get(i), fb.get(i)].into_iter().flatten() {
                    prop_assert!(f.data.len() <= 8);
                    if let Some(m) = r.push(f.id, &f.data).unwrap() { got.push(m); }
                }
            }
            got.sort();
            let mut want = vec![(3u16, a.clone()), (64u16, b.clone())];
            want.sort();
            prop_assert_eq!(got, want);
            let fd = frame_fd(7, &a).unwrap();
            prop_assert_eq!(unframe_fd(fd.id, &fd.data).unwrap(), (7u16, a));
        }

        #[test]
        fn arbitrary_frames_never_panic(frames in proptest::collection::vec(
            (0u32..0x800, proptest::collection::vec(any::<u8>(), 0..10)), 0..40)) {
            let mut r = Reassembler::new();
            for (id, d) in frames {
                if let Ok(Some((_, m))) = r.push(id, &d) {
                    prop_assert!(!m.is_empty() && m.len() <= MAX_SEGMENTED_LEN);
                }
                let _ = unframe_fd(id, &d);
            }
        }
    }

    #[test]
    fn a_lost_frame_loses_only_that_message() {
        let m1: Vec<u8> = (0..30).collect();
        let m2: Vec<u8> = (100..130).collect();
        let f1 = segment_classic(5, 0, &m1).unwrap();
        let f2 = segment_classic(5, 1, &m2).unwrap();
        let mut r = Reassembler::new();
        // Frame 2 of m1 lost; then the tail of m2 (its frames 2.. carry toggle 1, index 2..).
        for f in f1.iter().take(2) {
            assert_eq!(r.push(f.id, &f.data).unwrap(), None);
        }
        assert!(r.push(f2[2].id, &f2[2].data).is_err());
        let mut out = None;
        for f in &f2 {
            out = r.push(f.id, &f.data).unwrap();
        }
        assert_eq!(out, Some((5, m2)));
        assert!(segment_classic(5, 0, &[0u8; 64]).is_err());
        assert!(segment_classic(0, 0, &[1]).is_err());
        assert_eq!(r.push(0x123, &[1, 2]), Err(SegmentError::ForeignId(0x123)));
    }
}
