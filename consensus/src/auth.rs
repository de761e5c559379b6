//! Message authentication, after the AUTOSAR SecOC model: a MAC truncated to 32 bits over the
//! message, its freshness value (boot counter + message counter, both in the message) and the
//! system id (not sent: a message of another system fails verification).
//!
//! - MAC: CMAC with AES-128 (NIST SP 800-38B; RFC 4493), RustCrypto `cmac` + `aes`.
//! - Truncation to 32 bits (SecOC allows truncated MACs; NIST SP 800-38B §A.2 asks that the
//!   tag length be chosen against the number of forgery attempts an attacker can make). The
//!   attempts are bounded by the bus: classic CAN at 500 kbit/s carries at most ~1 500
//!   three-frame messages per second, 5.4·10⁶ per hour, so a flooding attacker succeeds with
//!   probability ≤ 5.4·10⁶ / 2³² ≈ 1.3·10⁻³ per hour of saturating the bus (which itself stops
//!   the peers' heartbeats and is counted as forged traffic). A 64-bit tag would need a fourth
//!   frame per message and break the bus-load budget (≤ 12 % for 16 peers).
//! - Keys: the first key signs, every key verifies (rotation without downtime: a node is
//!   given the new key as a second key first, then as the first, then alone).
//! - [`Auth::off`] verifies nothing and signs with a zero tag; receivers with keys count such
//!   messages as `unauthenticated` (a distinct counter from `forged`).

use aes::Aes128;
use cmac::{Cmac, Mac};

use crate::wire::{Message, WireError, MESSAGE_LEN, SIGNED_LEN, TAG_LEN};

pub const KEY_LEN: usize = 16;
/// At most this many keys at once (the signing key and the ones being rotated out/in).
pub const MAX_KEYS: usize = 2;

/// Verdict on a message's tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthError {
    /// Not a message of the format.
    Wire(WireError),
    /// The tag is zero: sent by a node with authentication off (or a device that knows no key).
    Unauthenticated,
    /// The tag does not match under any key: forged, corrupted or of another system.
    Forged,
}

#[derive(Clone)]
pub struct Auth {
    system_id: u32,
    macs: Vec<Cmac<Aes128>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // never print key material
        write!(f, "Auth {{ system_id: {}, keys: {} }}", self.system_id, self.macs.len())
    }
}

impl Auth {
    /// Authentication with these keys (the first signs). Errors name what is wrong.
    pub fn new(system_id: u32, keys: &[[u8; KEY_LEN]]) -> Result<Auth, String> {
        if keys.is_empty() || keys.len() > MAX_KEYS {
            return Err(format!("expected 1..={MAX_KEYS} keys, got {}", keys.len()));
        }
        if keys.iter().any(|k| k.iter().all(|&b| b == 0)) {
            return Err("an all-zero key is not a key".into());
        }
        let macs = keys
            .iter()
            .map(|k| <Cmac<Aes128> as Mac>::new_from_slice(k).expect("16-byte key"))
            .collect();
        Ok(Auth { system_id, macs })
    }

    /// No authentication: sign with a zero tag, accept everything (an explicit setting only).
    pub fn off(system_id: u32) -> Auth {
        Auth { system_id, macs: Vec::new() }
    }

    pub fn enabled(&self) -> bool {
        !self.macs.is_empty()
    }

    pub fn system_id(&self) -> u32 {
        self.system_id
    }

    fn tag_with(&self, mac: &Cmac<Aes128>, signed: &[u8]) -> [u8; TAG_LEN] {
        let mut m = mac.clone();
        m.update(&self.system_id.to_le_bytes());
        m.update(signed);
        let full = m.finalize().into_bytes();
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(&full[..TAG_LEN]);
        t
    }

    /// The tag of a message's bytes under the signing key (zero with authentication off).
    pub fn tag(&self, bytes: &[u8; MESSAGE_LEN]) -> [u8; TAG_LEN] {
        match self.macs.first() {
            Some(mac) => self.tag_with(mac, &bytes[..SIGNED_LEN]),
            None => [0; TAG_LEN],
        }
    }

    /// Set the message's tag and encode it.
    pub fn seal(&self, m: &mut Message) -> [u8; MESSAGE_LEN] {
        let mut b = m.encode();
        m.tag = self.tag(&b);
        b[SIGNED_LEN..].copy_from_slice(&m.tag);
        b
    }

    /// Verify encoded bytes (constant-time comparison of the tag).
    pub fn verify_bytes(&self, bytes: &[u8; MESSAGE_LEN]) -> Result<(), AuthError> {
        if self.macs.is_empty() {
            return Ok(());
        }
        let got = &bytes[SIGNED_LEN..];
        for mac in &self.macs {
            let want = self.tag_with(mac, &bytes[..SIGNED_LEN]);
            // constant time: no early exit on the first differing byte
            if want.iter().zip(got).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0 {
                return Ok(());
            }
        }
        if got.iter().all(|&b| b == 0) {
            Err(AuthError::Unauthenticated)
        } else {
            Err(AuthError::Forged)
        }
    }

    /// Decode and verify: the only way received bytes become a [`Message`] a peer acts on.
    pub fn open(&self, data: &[u8]) -> Result<Message, AuthError> {
        let m = Message::decode(data).map_err(AuthError::Wire)?;
        let mut b = [0u8; MESSAGE_LEN];
        b.copy_from_slice(data);
        self.verify_bytes(&b)?;
        Ok(m)
    }

    /// The tag of other data of this system (telemetry) under the signing key. The MAC input
    /// starts with 0xFF after the system id, which no peer message can (its header byte has
    /// bit 7 clear), so a tag of one kind is never valid for the other.
    pub fn tag_data(&self, data: &[u8]) -> [u8; TAG_LEN] {
        match self.macs.first() {
            Some(mac) => self.tag_other(mac, data),
            None => [0; TAG_LEN],
        }
    }

    fn tag_other(&self, mac: &Cmac<Aes128>, data: &[u8]) -> [u8; TAG_LEN] {
        let mut m = mac.clone();
        m.update(&self.system_id.to_le_bytes());
        m.update(&[0xFF]);
        m.update(data);
        let full = m.finalize().into_bytes();
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(&full[..TAG_LEN]);
        t
    }

    /// Check a tag of [`Auth::tag_data`] (any key; always valid with authentication off).
    pub fn verify_data(&self, data: &[u8], tag: &[u8]) -> Result<(), AuthError> {
        if self.macs.is_empty() {
            return Ok(());
        }
        if tag.len() == TAG_LEN {
            for mac in &self.macs {
                let want = self.tag_other(mac, data);
                if want.iter().zip(tag).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0 {
                    return Ok(());
                }
            }
        }
        if tag.iter().all(|&b| b == 0) {
            Err(AuthError::Unauthenticated)
        } else {
            Err(AuthError::Forged)
        }
    }

    /// Verify a message that was decoded elsewhere (a simulator decodes a broadcast once).
    pub fn verify(&self, m: &Message) -> Result<(), AuthError> {
        self.verify_bytes(&m.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Body, Coord, Flags, LimitsBody};
    use proptest::prelude::*;

    fn msg() -> Message {
        Message {
            sender: 3,
            incarnation: 7,
            counter: 1000,
            flags: Flags { phase: 4, main_closed: true, ..Default::default() },
            coord: Coord::default(),
            body: Body::Limits(LimitsBody { ocv_10mv: 40_000, r_100uohm: 500, dcl_da: 1000, ccl_da: 500, dcl_peak_da: 2000, ccl_peak_da: 1000 }),
            tag: [0; TAG_LEN],
        }
    }

    #[test]
    fn rfc4493_cmac_aes128_example_2() {
        // RFC 4493 §4, Example 2 (16-byte message): checks the MAC itself, not our framing.
        let key = [0x2b, 0x7e, 0x15, 0x16, 0x28, 0xae, 0xd2, 0xa6, 0xab, 0xf7, 0x15, 0x88, 0x09, 0xcf, 0x4f, 0x3c];
        let data = [0x6b, 0xc1, 0xbe, 0xe2, 0x2e, 0x40, 0x9f, 0x96, 0xe9, 0x3d, 0x7e, 0x11, 0x73, 0x93, 0x17, 0x2a];
        let mut m = <Cmac<Aes128> as Mac>::new_from_slice(&key).unwrap();
        m.update(&data);
        let t = m.finalize().into_bytes();
        assert_eq!(&t[..4], &[0x07, 0x0a, 0x16, 0xb4]);
    }

    #[test]
    fn sealed_messages_verify_and_any_change_is_forged() {
        let a = Auth::new(9, &[[1; 16]]).unwrap();
        let mut m = msg();
        let b = a.seal(&mut m);
        assert_eq!(a.open(&b), Ok(m.clone()));
        assert_eq!(a.verify(&m), Ok(()));
        for i in 0..MESSAGE_LEN {
            let mut x = b;
            x[i] ^= 0x10;
            assert!(matches!(a.open(&x), Err(AuthError::Forged) | Err(AuthError::Wire(_))), "byte {i}");
        }
        // another system's key context, another key
        assert_eq!(Auth::new(10, &[[1; 16]]).unwrap().open(&b), Err(AuthError::Forged));
        assert_eq!(Auth::new(9, &[[2; 16]]).unwrap().open(&b), Err(AuthError::Forged));
        // authentication off: zero tag, counted apart
        let off = Auth::off(9);
        let mut m2 = msg();
        let z = off.seal(&mut m2);
        assert_eq!(a.open(&z), Err(AuthError::Unauthenticated));
        assert_eq!(off.open(&b), Ok(m));
        // other data: a tag of its own kind, never valid as a peer message tag
        let t = a.tag_data(b"telemetry");
        assert_eq!(a.verify_data(b"telemetry", &t), Ok(()));
        assert_eq!(a.verify_data(b"telemetrY", &t), Err(AuthError::Forged));
        assert_eq!(a.verify_data(b"telemetry", &[0; 4]), Err(AuthError::Unauthenticated));
        assert_eq!(a.verify_data(b"telemetry", &t[..3]), Err(AuthError::Forged));
    }

    #[test]
    fn rotation_accepts_both_keys_and_signs_with_the_first() {
        let old = Auth::new(9, &[[1; 16]]).unwrap();
        let new = Auth::new(9, &[[2; 16]]).unwrap();
        let both = Auth::new(9, &[[2; 16], [1; 16]]).unwrap();
        let (mut a, mut b) = (msg(), msg());
        assert!(both.open(&old.seal(&mut a)).is_ok());
        assert!(both.open(&new.seal(&mut b)).is_ok());
        let mut c = msg();
        assert!(new.open(&both.seal(&mut c)).is_ok());
        assert!(Auth::new(9, &[]).is_err() && Auth::new(9, &[[0; 16]]).is_err());
        assert!(Auth::new(9, &[[1; 16], [2; 16], [3; 16]]).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases(20_000)))]
        #[test]
        fn random_bytes_never_authenticate(data in proptest::collection::vec(any::<u8>(), 0..40)) {
            let a = Auth::new(9, &[[7; 16]]).unwrap();
            // 2^-32 per try: 20 000 tries pass with probability 1 − 5·10⁻⁶.
            prop_assert!(a.open(&data).is_err());
        }
    }
}
