//! CAN frame lengths in bits (with bit stuffing) and the bus load of the peer protocol.
//!
//! Classic CAN, 11-bit id, worst-case stuffing (Davis, Burns, Bril, Lukkien: "Controller
//! Area Network (CAN) schedulability analysis: refuted, revisited and revised", Real-Time
//! Systems 35, 2007, eq. 1, plus the 3-bit interframe space):
//!   bits(n) = 8n + 47 + floor((34 + 8n − 1)/4)      (n = data bytes; 135 bits for n = 8)
//! Exact stuffing builds the frame's bits (SOF, id, RTR, IDE, r0, DLC, data, CRC-15 with
//! polynomial 0x4599 per ISO 11898-1) and counts the stuff bits (after five equal bits),
//! then adds the fixed tail: CRC delimiter, ACK slot+delimiter, EOF (7), IFS (3) = 13 bits.
//! CAN FD (ISO 11898-1:2015), 11-bit id with bit-rate switch: the arbitration phase and the
//! tail at the nominal rate, the data phase (ESI, DLC, data, stuff count, CRC-17/21 with
//! fixed stuff bits) at the data rate; dynamic stuffing counted worst case.

use crate::segment::{segment_classic, CanFrame};

/// Worst-case bits of a classic CAN data frame with an 11-bit id and `n` data bytes.
pub fn classic_frame_bits_worst(n: usize) -> u32 {
    let n = n.min(8) as u32;
    8 * n + 47 + (34 + 8 * n - 1) / 4
}

fn crc15(bits: &[bool]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bits {
        let nxt = b ^ ((crc >> 14) & 1 == 1);
        crc = (crc << 1) & 0x7FFF;
        if nxt {
            crc ^= 0x4599;
        }
    }
    crc
}

/// Exact bits of a classic CAN data frame (11-bit id) with these data bytes.
pub fn classic_frame_bits_exact(id: u32, data: &[u8]) -> u32 {
    let n = data.len().min(8);
    let mut bits: Vec<bool> = Vec::with_capacity(19 + 64 + 15);
    bits.push(false); // SOF
    for i in (0..11).rev() {
        bits.push((id >> i) & 1 == 1);
    }
    bits.extend([false, false, false]); // RTR, IDE, r0
    for i in (0..4).rev() {
        bits.push((n >> i) & 1 == 1);
    }
    for &byte in &data[..n] {
        for i in (0..8).rev() {
            bits.push((byte >> i) & 1 == 1);
        }
    }
    let crc = crc15(&bits);
    for i in (0..15).rev() {
        bits.push((crc >> i) & 1 == 1);
    }
    let mut stuff = 0u32;
    let mut run = 0u32;
    let mut last = None;
    for &b in &bits {
        if Some(b) == last {
            run += 1;
        } else {
            run = 1;
            last = Some(b);
        }
        if run == 5 {
            // The stuff bit is the complement and starts a new run.
            stuff += 1;
            last = Some(!b);
            run = 1;
        }
    }
    bits.len() as u32 + stuff + 13
}

/// Worst-case duration (µs) of a CAN FD frame with `n` data bytes (padded to an FD length).
pub fn fd_frame_us_worst(n: usize, nominal_bps: f64, data_bps: f64) -> f64 {
    const FD_SIZES: [usize; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64];
    let n = *FD_SIZES.iter().find(|&&s| s >= n.min(64)).unwrap_or(&64);
    // SOF, id 11, RRS, IDE, FDF, res, BRS = 17 bits, dynamic stuffing ≤ (17−1)/4;
    // tail: CRC delimiter, ACK 2, EOF 7, IFS 3 = 13.
    let nominal_bits = 17.0 + 4.0 + 13.0;
    let crc_len: f64 = if n <= 16 { 17.0 } else { 21.0 };
    let dyn_bits = 1.0 + 4.0 + 8.0 * n as f64; // ESI, DLC, data
    let dyn_stuff = ((dyn_bits - 1.0) / 4.0).floor();
    let fixed = 4.0 + crc_len; // stuff count (incl. parity) + CRC
    let fixed_stuff = (fixed / 4.0).ceil() + 1.0;
    let data_bits = dyn_bits + dyn_stuff + fixed + fixed_stuff;
    1e6 * (nominal_bits / nominal_bps + data_bits / data_bps)
}

/// Bits on a classic CAN bus for one message segmented as in [`crate::segment`].
pub fn classic_message_bits(msg: &[u8], worst: bool) -> u32 {
    match segment_classic(msg) {
        Ok(frames) => frames.iter().map(|f: &CanFrame| frame_bits(f, worst)).sum(),
        Err(_) => 0,
    }
}

/// Exact bits of the same message without its tag (the last frame 4 bytes shorter): what
/// authentication costs on the bus, measured side by side (`mbms bench consensus`).
pub fn classic_message_bits_untagged(msg: &[u8]) -> u32 {
    match segment_classic(msg) {
        Ok(mut frames) => {
            if let Some(last) = frames.last_mut() {
                let n = last.data.len().saturating_sub(crate::wire::TAG_LEN);
                last.data.truncate(n);
            }
            frames.iter().map(|f| classic_frame_bits_exact(f.id, &f.data)).sum()
        }
        Err(_) => 0,
    }
}

/// Exact bits of the same message in the layout before this one (issue 15's first layout, 24
/// bytes: the last frame 7 bytes, with the peaks as 12-bit fields of 0.5 A and 8 spare bits in
/// Detail): `mbms bench consensus` prints both on the same traffic, side by side.
pub fn classic_message_bits_24byte(msg: &[u8]) -> u32 {
    use crate::wire::{Body, Message};
    let (Ok(frames), Ok(m)) = (segment_classic(msg), Message::decode(msg)) else { return 0 };
    let body2: u64 = match m.body {
        Body::Limits(l) => ((l.dcl_peak_da / 5).min(4095) | (l.ccl_peak_da / 5).min(4095) << 12) as u64,
        Body::Detail(d) => (d.dv_10mv as u32 & 0xFFFF) as u64,
    };
    let last = (body2 | (u32::from_le_bytes(m.tag) as u64) << 24).to_le_bytes();
    frames[..2].iter().map(|f| classic_frame_bits_exact(f.id, &f.data)).sum::<u32>()
        + classic_frame_bits_exact(frames[2].id, &last[..7])
}

fn frame_bits(f: &CanFrame, worst: bool) -> u32 {
    if worst {
        classic_frame_bits_worst(f.data.len())
    } else {
        classic_frame_bits_exact(f.id, &f.data)
    }
}

/// Bus load (fraction) of `peers` peers each sending one message per `period_ms`, on
/// classic CAN at `bitrate`, worst-case stuffing (frames of 8, 8 and 6 bytes).
pub fn classic_load_worst(peers: u32, period_ms: f64, bitrate: f64) -> f64 {
    let bits = 2 * classic_frame_bits_worst(8) + classic_frame_bits_worst(crate::wire::MESSAGE_LEN - 17);
    peers as f64 * bits as f64 / (period_ms * 1e-3) / bitrate
}

/// Bus load (fraction) of the same on CAN FD (one 24-byte frame per message), worst case.
pub fn fd_load_worst(peers: u32, period_ms: f64, nominal_bps: f64, data_bps: f64) -> f64 {
    peers as f64 * fd_frame_us_worst(24, nominal_bps, data_bps) * 1e-6 / (period_ms * 1e-3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worst_case_matches_the_published_formula() {
        assert_eq!(classic_frame_bits_worst(8), 135);
        assert_eq!(classic_frame_bits_worst(0), 47 + 8);
    }

    #[test]
    fn exact_is_between_unstuffed_and_worst_case() {
        for n in 0..=8usize {
            for pattern in [0x00u8, 0xFF, 0x55, 0x0F, 0xCC] {
                let data = vec![pattern; n];
                let e = classic_frame_bits_exact(0x455, &data);
                let unstuffed = 19 + 8 * n as u32 + 15 + 13;
                assert!(e >= unstuffed && e <= classic_frame_bits_worst(n), "n={n} {pattern:#x}: {e}");
            }
        }
        // All-zero data stuffs heavily: one stuff bit per 4 bits after the first 5.
        assert!(classic_frame_bits_exact(0x400, &[0; 8]) > classic_frame_bits_exact(0x400, &[0x55; 8]));
    }

    #[test]
    fn the_previous_layout_costs_one_byte_more_on_the_last_frame() {
        let m = crate::wire::tests::worst();
        let b = m.encode();
        let frames = segment_classic(&b).unwrap();
        let now = classic_message_bits(&b, false);
        let before = classic_message_bits_24byte(&b);
        // frames 0 and 1 are the same; the last frame has one data byte more (8 bits + stuffing)
        assert!(before >= now + 8 && before <= now + 8 + 3, "{before} vs {now}");
        assert_eq!(frames[2].data.len() + 1, 7);
        assert_eq!(classic_message_bits_24byte(&b[..5]), 0);
    }

    #[test]
    fn crc15_of_a_known_frame() {
        // CRC of the empty bit string is 0; of a single 1 bit is the polynomial.
        assert_eq!(crc15(&[]), 0);
        assert_eq!(crc15(&[true]), 0x4599);
    }

    #[test]
    fn load_scales_with_peers_and_period() {
        let l16 = classic_load_worst(16, 100.0, 500_000.0);
        let l8 = classic_load_worst(8, 100.0, 500_000.0);
        assert!((l16 - 2.0 * l8).abs() < 1e-12);
        // 2 full frames of 135 bits + a 6-byte one of 47+48+20 = 115 bits, worst case.
        assert!((l16 - 16.0 * 385.0 / 0.1 / 500_000.0).abs() < 1e-12);
        assert!(fd_load_worst(16, 100.0, 500_000.0, 2_000_000.0) < l16);
    }
}
