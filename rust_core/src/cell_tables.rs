//! The cell model's tables packed for the engine's hot loop.
//!
//! [`CellParams`] evaluates each table on its own (locate the SOC interval, interpolate, and
//! for (T, SOC) tables search the temperature row). Per cell and step the engine needs OCV,
//! dOCV/dSOC, the entropic term, R0, R1 (and R2) and the stored energy at the same SOC and
//! temperature. All SOC tables share one uniform grid, so the interval is located **once**
//! per cell, and the temperature rows are selected **once** per sensor ([`TempSel`]).
//! The values are exactly those of `CellParams` (tested below).

use crate::cell_model::{CellParams, SOC_GRID_POINTS};

/// Temperature row selection, computed once per sensor and step.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct TempSel {
    pub lo: usize,
    pub hi: usize,
    pub f: f64,
}

/// A located SOC: grid interval `k` and fraction `f` within it.
#[derive(Debug, Clone, Copy)]
pub struct SocAt {
    pub k: usize,
    pub f: f64,
}

#[derive(Debug, Clone)]
pub struct CellTables {
    /// number of grid intervals, as f64
    pub scale: f64,
    last: usize,
    pub ocv: Vec<f64>,
    pub docv_dt: Vec<f64>,
    /// ∫₀ᶻ OCV dz at the reference temperature (V = Wh per Ah of capacity).
    pub energy: Vec<f64>,
    pub temps: Vec<f64>,
    pub r0: Vec<Vec<f64>>,
    pub r1: Vec<Vec<f64>>,
    pub r2: Option<Vec<Vec<f64>>>,
    pub t_ref_c: f64,
    /// false when the entropic table is all zeros (skips a lookup per cell)
    has_entropic: bool,
    /// The per-cell lookups packed so that one cell touches few cache lines and the three
    /// resistances interpolate as one 4-lane vector: per temperature row and grid point
    /// `[R0, R1, R2 (0 without a second RC pair), 0]`, index `row · SOC_GRID_POINTS + k`...
    rc: Vec<[f64; 4]>,
    /// ...and per grid interval k `[OCV(k), OCV(k+1), E(k), E(k+1)]`.
    oe: Vec<[f64; 4]>,
}

impl CellTables {
    pub fn new(p: &CellParams) -> Self {
        let ocv = p.ocv.values().to_vec();
        let n = ocv.len();
        debug_assert_eq!(n, SOC_GRID_POINTS);
        let h = 1.0 / (n - 1) as f64;
        let mut energy = vec![0.0; n];
        for k in 1..n {
            energy[k] = energy[k - 1] + 0.5 * h * (ocv[k - 1] + ocv[k]);
        }
        let rows = |t: &crate::cell_model::TempSocTable| -> Vec<Vec<f64>> {
            t.rows().iter().map(|r| r.values().to_vec()).collect()
        };
        let (r0, r1, r2) = (rows(&p.r0), rows(&p.r1), p.r2.as_ref().map(rows));
        // the unchecked lookups rely on every table having the grid's length
        let all_rows = r0.iter().chain(r1.iter()).chain(r2.iter().flatten());
        assert!(all_rows.map(|r| r.len()).chain([p.docv_dt.values().len()]).all(|l| l == n));
        let mut rc = Vec::with_capacity(r0.len() * n);
        for row in 0..r0.len() {
            for k in 0..n {
                let r2k = r2.as_ref().map_or(0.0, |r| r[row][k]);
                rc.push([r0[row][k], r1[row][k], r2k, 0.0]);
            }
        }
        let oe = (0..n - 1).map(|k| [ocv[k], ocv[k + 1], energy[k], energy[k + 1]]).collect();
        Self {
            rc,
            oe,
            scale: (n - 1) as f64,
            last: n - 1,
            docv_dt: p.docv_dt.values().to_vec(),
            ocv,
            energy,
            temps: p.r0.temps().to_vec(),
            r0,
            r1,
            r2,
            t_ref_c: p.t_ref_c,
            has_entropic: p.docv_dt.values().iter().any(|x| *x != 0.0),
        }
    }

    /// Row selection for `temp_c` (same clamping and interpolation as `TempSocTable::eval`).
    pub fn temp_sel(&self, temp_c: f64) -> TempSel {
        let t = &self.temps;
        let n = t.len();
        if n == 1 || !(temp_c > t[0]) {
            return TempSel { lo: 0, hi: 0, f: 0.0 };
        }
        if temp_c >= t[n - 1] {
            return TempSel { lo: n - 1, hi: n - 1, f: 0.0 };
        }
        let mut k = 0;
        while t[k + 1] < temp_c {
            k += 1;
        }
        TempSel { lo: k, hi: k + 1, f: (temp_c - t[k]) / (t[k + 1] - t[k]) }
    }

    #[inline(always)]
    pub fn locate(&self, z: f64) -> SocAt {
        let x = z.clamp(0.0, 1.0) * self.scale;
        // `x as usize` is a saturating conversion (NaN, negative, beyond 2^64: a dozen
        // instructions in the hottest loop); here x is in 0..=scale or NaN, and a NaN (which
        // `as` maps to 0) is mapped to 0 explicitly, so the truncating conversion is exact.
        let xi = if x.is_nan() { 0.0 } else { x };
        // SAFETY: xi is finite and in 0..=scale (< 2^31), representable as i32.
        let k = (unsafe { xi.to_int_unchecked::<i32>() } as usize).min(self.last - 1);
        SocAt { k, f: x - k as f64 }
    }

    #[inline(always)]
    fn lerp(y: &[f64], a: SocAt) -> f64 {
        debug_assert!(a.k + 1 < y.len());
        // SAFETY: every table has SOC_GRID_POINTS values (checked in `new`) and `locate`
        // returns k <= SOC_GRID_POINTS - 2, so k and k + 1 are in bounds. This is the
        // hottest lookup of the engine; the bounds checks cost a measurable share.
        let (y0, y1) = unsafe { (*y.get_unchecked(a.k), *y.get_unchecked(a.k + 1)) };
        y0 + a.f * (y1 - y0)
    }

    /// OCV (V) at `a` with the entropic correction for `dtemp` = T − T_ref.
    #[inline(always)]
    pub fn ocv(&self, a: SocAt, dtemp: f64) -> f64 {
        let v = Self::lerp(&self.ocv, a);
        if self.has_entropic {
            v + Self::lerp(&self.docv_dt, a) * dtemp
        } else {
            v
        }
    }

    /// dOCV/dSOC of the interval (as `SocTable::slope`).
    #[inline(always)]
    pub fn slope(&self, a: SocAt) -> f64 {
        debug_assert!(a.k + 1 < self.ocv.len());
        // SAFETY: as in `lerp`.
        let (y0, y1) = unsafe { (*self.ocv.get_unchecked(a.k), *self.ocv.get_unchecked(a.k + 1)) };
        (y1 - y0) * self.scale
    }

    #[inline(always)]
    pub fn energy(&self, a: SocAt) -> f64 {
        Self::lerp(&self.energy, a)
    }

    #[inline(always)]
    fn rows_eval(rows: &[Vec<f64>], a: SocAt, s: TempSel) -> f64 {
        let lo = Self::lerp(&rows[s.lo], a);
        if s.f == 0.0 {
            return lo; // at a breakpoint, clamped, or a single-temperature table
        }
        let hi = Self::lerp(&rows[s.hi], a);
        lo + s.f * (hi - lo)
    }

    #[inline(always)]
    pub fn r0(&self, a: SocAt, s: TempSel) -> f64 {
        Self::rows_eval(&self.r0, a, s)
    }

    #[inline(always)]
    pub fn r1(&self, a: SocAt, s: TempSel) -> f64 {
        Self::rows_eval(&self.r1, a, s)
    }

    #[inline(always)]
    pub fn r2(&self, a: SocAt, s: TempSel) -> f64 {
        self.r2.as_ref().map_or(0.0, |r| Self::rows_eval(r, a, s))
    }

    /// R0, R1 and R2 (0 without a second RC pair) at `a` and the temperature `s`, and in the
    /// fourth lane 0: the same interpolation as [`Self::r0`] (SOC within each row, then
    /// between the rows), blended without the breakpoint branch: with `s.f == 0` the blend
    /// `lo + 0·(hi − lo)` is `lo` (the tables are finite).
    #[inline(always)]
    pub fn rc(&self, a: SocAt, s: TempSel) -> [f64; 4] {
        let grid = self.last + 1;
        let (lo, hi) = (s.lo * grid, s.hi * grid);
        debug_assert!(lo.max(hi) + a.k + 1 < self.rc.len());
        // SAFETY: rows are < the number of temperature rows (`temp_sel`), k <= grid - 2
        // (`locate`), and `rc` holds every row's full grid (built in `new`).
        let (l0, l1, h0, h1) = unsafe {
            (
                *self.rc.get_unchecked(lo + a.k),
                *self.rc.get_unchecked(lo + a.k + 1),
                *self.rc.get_unchecked(hi + a.k),
                *self.rc.get_unchecked(hi + a.k + 1),
            )
        };
        let mut out = [0.0; 4];
        for j in 0..4 {
            let y_lo = l0[j] + a.f * (l1[j] - l0[j]);
            let y_hi = h0[j] + a.f * (h1[j] - h0[j]);
            out[j] = y_lo + s.f * (y_hi - y_lo);
        }
        out
    }

    /// OCV (without the entropic term), its slope and the stored energy at `a`, from one
    /// packed record: the same values as [`Self::ocv`] (at `dtemp = 0` or without an
    /// entropic table), [`Self::slope`] and [`Self::energy`].
    #[inline(always)]
    pub fn ocv_slope_energy(&self, a: SocAt) -> (f64, f64, f64) {
        debug_assert!(a.k < self.oe.len());
        // SAFETY: k <= grid - 2 (`locate`) and `oe` has grid - 1 records.
        let r = unsafe { *self.oe.get_unchecked(a.k) };
        let d_ocv = r[1] - r[0];
        (r[0] + a.f * d_ocv, d_ocv * self.scale, r[2] + a.f * (r[3] - r[2]))
    }

    /// The entropic OCV term at `a` for `dtemp` = T − T_ref (0 without an entropic table).
    #[inline(always)]
    pub fn entropic(&self, a: SocAt, dtemp: f64) -> f64 {
        if self.has_entropic {
            Self::lerp(&self.docv_dt, a) * dtemp
        } else {
            0.0
        }
    }

    /// Inverse OCV: the SOC whose OCV (at T_ref + `dtemp`) is `v`, clamped to 0..=1.
    /// Binary search on the grid, then linear inversion inside the interval.
    pub fn soc_from_ocv(&self, v: f64, dtemp: f64) -> f64 {
        let at = |k: usize| self.ocv[k] + self.docv_dt[k] * dtemp;
        if !(v > at(0)) {
            return 0.0;
        }
        if v >= at(self.last) {
            return 1.0;
        }
        let (mut lo, mut hi) = (0usize, self.last);
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            if at(mid) < v {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let (a, b) = (at(lo), at(hi));
        let f = if b > a { (v - a) / (b - a) } else { 0.5 };
        (lo as f64 + f) / self.scale
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CELL: &str = r#"
name = "t"
chemistry = "NMC"
source = "unit test"
capacity_ah = 5.0
v_min_v = 2.5
v_max_v = 4.2
t_ref_c = 25.0
[ocv]
soc = [0.0, 0.3, 0.5, 1.0]
v = [3.0, 3.6, 3.7, 4.2]
docv_dt_v_per_k = [0.0001, 0.0, -0.0001, 0.0002]
[resistance]
temp_c = [-10.0, 10.0, 25.0, 45.0]
soc = [0.0, 0.5, 1.0]
r0_ohm = [[0.06, 0.05, 0.055], [0.03, 0.025, 0.028], [0.02, 0.018, 0.019], [0.015, 0.014, 0.016]]
r1_ohm = [[0.03, 0.02, 0.02], [0.015, 0.01, 0.01], [0.01, 0.008, 0.009], [0.008, 0.006, 0.007]]
tau1_s = [40.0, 30.0, 20.0, 15.0]
[thermal]
mass_kg = 0.07
cp_j_per_kg_k = 1100.0
"#;

    #[test]
    fn packed_tables_equal_the_cell_model() {
        let p = CellParams::from_toml_str(CELL).unwrap();
        let t = CellTables::new(&p);
        for zi in 0..=137 {
            let z = zi as f64 / 137.0;
            for &temp in &[-20.0, -10.0, 0.0, 17.3, 25.0, 33.0, 60.0] {
                let a = t.locate(z);
                let s = t.temp_sel(temp);
                assert!((t.ocv(a, temp - 25.0) - p.ocv(z, temp)).abs() < 1e-12);
                assert!((t.slope(a) - p.docv_dsoc(z)).abs() < 1e-9);
                assert!((t.r0(a, s) - p.r0(z, temp)).abs() < 1e-12, "z={z} T={temp}");
                assert!((t.r1(a, s) - p.r1(z, temp)).abs() < 1e-12);
                // the packed lookups give the very same numbers
                let rc = t.rc(a, s);
                assert_eq!((rc[0], rc[1], rc[2], rc[3]), (t.r0(a, s), t.r1(a, s), t.r2(a, s), 0.0));
                let (ocv, slope, e) = t.ocv_slope_energy(a);
                assert_eq!((ocv + t.entropic(a, temp - 25.0), slope, e), (t.ocv(a, temp - 25.0), t.slope(a), t.energy(a)));
                let zi = t.soc_from_ocv(p.ocv(z, temp), temp - 25.0);
                assert!((zi - z).abs() < 1e-9, "{zi} vs {z}");
            }
        }
        // energy: ∫ OCV over the full range by trapezoids of the piecewise-linear table
        let e = t.energy(t.locate(1.0));
        let exact = 0.3 * (3.0 + 3.6) / 2.0 + 0.2 * (3.6 + 3.7) / 2.0 + 0.5 * (3.7 + 4.2) / 2.0;
        assert!((e - exact).abs() < 1e-9);
    }
}
