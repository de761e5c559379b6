//! Member sets (closed, live) as the outputs carry them: a `u64` with bit (id − 1) per member
//! inside the protocol, a sorted list of ids wherever an output leaves it (bindings, logs), so
//! the closed set has one type in every mode (issue 9).

/// The ids (1..=64) of the members set in `set`, ascending.
pub fn ids(set: u64) -> Vec<u16> {
    (1..=64u16).filter(|id| set & (1u64 << (id - 1)) != 0).collect()
}

/// serde `serialize_with` for a member bit set: the list of ids.
pub fn serialize_ids<S: serde::Serializer>(set: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(ids(*set))
}

/// serde `serialize_with` for encoded messages: each one as bytes (not a list of numbers).
pub fn serialize_messages<S: serde::Serializer>(m: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
    struct Bytes<'a>(&'a [u8]);
    impl serde::Serialize for Bytes<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }
    s.collect_seq(m.iter().map(|b| Bytes(b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_one_based_and_sorted() {
        assert_eq!(ids(0), Vec::<u16>::new());
        assert_eq!(ids(0b1011), vec![1, 2, 4]);
        assert_eq!(ids(1u64 << 63), vec![64]);
    }
}
