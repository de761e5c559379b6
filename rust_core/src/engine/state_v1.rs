//! Format 1 of the engine state (up to the versioned per-stage document): a little-endian
//! binary record, magic `MBMSENG1`, cell and sensor counts, the `initialized` flag, per cell
//! 18 f64 in fixed slots (z, v1, v2, h, p00, p01, p11, soc_cc, cap_ah, r0_ratio, z_rest,
//! z_rest_var, the six AWTLS sums), then q_since_rest_ah, dt2_since_rest, time_since_rest_s,
//! dcl, ccl, dcl_peak, ccl_peak, and the latched faults as (rule discriminant u8, index u32).
//!
//! Only read, to migrate a node's saved state: the record is translated into the version-1
//! sections of the current format and restored through the same checks.

use crate::protection::Rule;

use super::cells::CellsStateV1;
use super::limits::LimitsStateV1;
use super::protection::{Latch, ProtectionStateV1};
use super::rest::RestSohStateV1;
use super::state::{Sections, X};
use super::EngineStateError;

/// f64 per cell record of format 1.
const PER_CELL: usize = 18;

struct Reader<'a> {
    d: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.d.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn f64(&mut self) -> Option<f64> {
        Some(f64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

/// Read a format-1 record for an engine of `n` cells and `n_t` sensors; `bank_len` gives the
/// number of indexes of a rule (to refuse a latched fault outside the pack).
pub(super) fn read(data: &[u8], n_engine: usize, n_t_engine: usize, bank_len: impl Fn(Rule) -> usize) -> Result<Sections, EngineStateError> {
    let e = |m: &str| EngineStateError { message: format!("format 1: {m}") };
    let mut r = Reader { d: data, pos: 0 };
    r.take(8).ok_or_else(|| e("truncated header"))?; // the magic, checked by the caller
    let n = r.u64().ok_or_else(|| e("truncated header"))? as usize;
    let n_t = r.u64().ok_or_else(|| e("truncated header"))? as usize;
    if n != n_engine || n_t != n_t_engine {
        return Err(EngineStateError {
            message: format!("state is for {n} cells / {n_t} sensors, engine has {n_engine} / {n_t_engine}"),
        });
    }
    let initialized = r.take(1).ok_or_else(|| e("truncated"))?[0] != 0;
    let mut per_cell = vec![[0.0f64; PER_CELL]; n];
    for row in per_cell.iter_mut() {
        for x in row.iter_mut() {
            *x = r.f64().ok_or_else(|| e("truncated cell data"))?;
        }
    }
    let mut pack = [0.0f64; 7];
    for x in pack.iter_mut() {
        *x = r.f64().ok_or_else(|| e("truncated pack data"))?;
    }
    let nl = r.u32().ok_or_else(|| e("truncated fault list"))? as usize;
    let mut latched = Vec::with_capacity(nl.min(1 << 20));
    for _ in 0..nl {
        let rule = r.take(1).ok_or_else(|| e("truncated fault list"))?[0];
        let k = r.u32().ok_or_else(|| e("truncated fault list"))? as usize;
        let rule = Rule::from_u8(rule).ok_or_else(|| e("unknown rule in fault list"))?;
        if k >= bank_len(rule) {
            return Err(e("fault index out of range"));
        }
        latched.push(Latch { rule: rule.name().to_string(), index: k });
    }
    if r.pos != data.len() {
        return Err(e("trailing bytes"));
    }
    let col = |j: usize| per_cell.iter().map(|row| X(row[j])).collect::<Vec<X>>();
    Ok(Sections {
        cells: CellsStateV1 {
            version: 1,
            initialized,
            z: col(0),
            v1: col(1),
            v2: col(2),
            h: col(3),
            cov: per_cell.iter().map(|row| [X(row[4]), X(row[5]), X(row[6])]).collect(),
            soc_cc: col(7),
            miss: Vec::new(), // not in a version-1 file: no failure carried
            sens: Vec::new(), // nor the consider sensitivities: 0
            sens_tau: Vec::new(),
        },
        rest_soh: RestSohStateV1 {
            version: 1,
            q_since_rest_ah: X(pack[0]),
            dt2_since_rest: X(pack[1]),
            time_since_rest_s: X(pack[2]),
            load_c: X(0.0), // not in a version-1 file: relaxed
            cap_ah: col(8),
            r0_ratio: col(9),
            r0_n: Vec::new(), // not in a version-1 file: the ratio counts as learnt
            r0_soh_ratio: Vec::new(), // nor the SOH ratio: the filter's
            r0_soh_n: Vec::new(),
            z_rest: col(10),
            z_rest_var: col(11),
            awtls: per_cell.iter().map(|row| std::array::from_fn(|j| X(row[12 + j]))).collect(),
        },
        limits: LimitsStateV1 { version: 1, dcl_a: X(pack[3]), ccl_a: X(pack[4]), dcl_peak_a: X(pack[5]), ccl_peak_a: X(pack[6]) },
        protection: ProtectionStateV1 { version: 1, latched },
    })
}
