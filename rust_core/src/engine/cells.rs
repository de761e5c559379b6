//! Cells stage: the per-cell SOC filter (2-state EKF on SOC and the first RC voltage, with the
//! second RC pair and hysteresis as known inputs), the coulomb count, and in the same pass the
//! per-cell quantities the pack needs (OCV, energy, resistance, SOF limits).
//!
//! This is the fused hot loop: in blocks of [`BLOCK`] cells, (a0) the predicted SOC located on
//! the OCV grid (vector arithmetic, so that the lookups start from ready indices), (a) the
//! table lookups (gathers) into small scratch arrays that stay in L1, (b) the filter
//! arithmetic, then the outputs and limits, as two branch-free loops that the compiler
//! vectorises (an AVX2 build of the same code is used when the CPU has it; results are
//! bit-identical), (c) the pack reductions in cell order. The R0 observation of the rest/SOH stage is folded into (a), where the cell's
//! resistance is looked up anyway.

use crate::cell_model::CellParams;
use crate::cell_tables::{CellTables, SocAt};
use crate::limits::{cell_limit, LimitsConfig};
use crate::protection::SensorConfig;
use crate::soc_ekf::{self, Cov2, EstimatorConfig, Predict};
use crate::soh::{self, r0_observation};

use serde::{Deserialize, Serialize};

use super::rest::RestSoh;
use super::state::{xs, X};
use super::sensing::Sensing;
use super::SOC_STATE_RANGE;

// ---------------------------------------------------------------------------------------------
// Engine
// ---------------------------------------------------------------------------------------------

/// Cells per block of the vectorised pass (scratch stays in L1: 24 arrays of at most 8 B ×
/// BLOCK, 24 KiB).
const BLOCK: usize = 128;

/// IEKF gate: an update that would move SOC by more than this (approximated with the
/// previous P_zz) spans more than two intervals of the 101-point OCV grid, over which the
/// piecewise-linear OCV's slope changes, so the linearisation at the predicted SOC is poor...
const IEKF_GATE_DZ: f64 = 0.02;
/// ...triggers this many Gauss-Newton relinearisations before the block's update (which is
/// one more). Bell & Cathey, "The iterated Kalman filter update as a Gauss-Newton method",
/// IEEE TAC 38 (1993) 294-297.
const IEKF_ITERS: usize = 3;

/// Per-block scratch of the cell pass.
struct Scratch {
    zp: [f64; BLOCK],
    r1: [f64; BLOCK],
    r0: [f64; BLOCK],
    /// the model's instantaneous voltage drop R0(i)·i at this step's load (V)
    u0: [f64; BLOCK],
    r0r: [f64; BLOCK],
    slope: [f64; BLOCK],
    ocv: [f64; BLOCK],
    h: [f64; BLOCK],
    e: [f64; BLOCK],
    v2: [f64; BLOCK],
    /// ∂v2/∂ε (`Cells::sens_t2`), and what the prediction adds to ∂v1/∂ε: (∂a1/∂ε)·(v1 − R1·i)
    /// with ∂a1/∂ε = a1·Δt/τ1 and v1 before the prediction
    t2: [f64; BLOCK],
    tin: [f64; BLOCK],
    a1: [f64; BLOCK],
    dc: [f64; BLOCK],
    dp: [f64; BLOCK],
    ocv_out: [f64; BLOCK],
    soe: [f64; BLOCK],
    ldc: [f64; BLOCK],
    lcc: [f64; BLOCK],
    ldp: [f64; BLOCK],
    lcp: [f64; BLOCK],
    /// the cell takes the iterated update this step
    gate: [bool; BLOCK],
    /// the predicted SOC located on the grid (interval, fraction), a pass ahead of the lookups
    at_k: [u32; BLOCK],
    at_f: [f64; BLOCK],
}

impl Scratch {
    fn new() -> Box<Self> {
        Box::new(Scratch {
            zp: [0.0; BLOCK],
            r1: [0.0; BLOCK],
            r0: [0.0; BLOCK],
            r0r: [0.0; BLOCK],
            slope: [0.0; BLOCK],
            ocv: [0.0; BLOCK],
            h: [0.0; BLOCK],
            e: [0.0; BLOCK],
            v2: [0.0; BLOCK],
            t2: [0.0; BLOCK],
            tin: [0.0; BLOCK],
            a1: [0.0; BLOCK],
            dc: [0.0; BLOCK],
            dp: [0.0; BLOCK],
            ocv_out: [0.0; BLOCK],
            soe: [0.0; BLOCK],
            ldc: [0.0; BLOCK],
            lcc: [0.0; BLOCK],
            ldp: [0.0; BLOCK],
            u0: [0.0; BLOCK],
            lcp: [0.0; BLOCK],
            gate: [false; BLOCK],
            at_k: [0; BLOCK],
            at_f: [0.0; BLOCK],
        })
    }
}

/// One block of the cell pass's arithmetic: predict, Joseph update, outputs, per-cell limits.
struct BlockMath<'a> {
    z: &'a mut [f64],
    v1: &'a mut [f64],
    cov: &'a mut [Cov2],
    miss: &'a mut [f64],
    /// per cell: the sensitivity (∂z/∂δ, ∂v1/∂δ) of the estimate to a relative error δ of the
    /// RC polarisation, and δ's variance (see `CellEstimator::rc_polarisation_rel_error`)
    sens_z: &'a mut [f64],
    sens_v: &'a mut [f64],
    sig_p2: f64,
    /// the same for a relative error ε of the RC time constants
    /// (`CellEstimator::rc_time_constant_rel_error`)
    sens_tz: &'a mut [f64],
    sens_tv: &'a mut [f64],
    sig_t2: f64,
    /// lower bound of the reported SOC variance (SOC², the cell file's `soc_sigma_floor`
    /// squared; the filter's P_zz is not bounded)
    sig2_floor: f64,
    inv_qc: &'a [f64],
    cap: &'a [f64],
    cap_var: &'a [f64],
    v: &'a [f64],
    ok: &'a [bool],
    soc: &'a mut [f64],
    sig: &'a mut [f64],
    cc: &'a mut [f64],
    sc: &'a mut Scratch,
    base_pr: Predict,
    g_eta_i: f64,
    r_meas: f64,
    /// (charge counted since the last anchor / nominal capacity)²: with `cap_var`, the SOC
    /// variance a capacity error adds to the reported σ
    y2: f64,
    hc_c: f64,
    hc_p: f64,
    vmin: f64,
    vmax: f64,
    /// false on the start-up step (see `Engine::step`): predict only
    update: bool,
}

fn avx2_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[inline(always)]
fn block_math_impl(b: &mut BlockMath<'_>) {
    let len = b.z.len();
    let (z_s, v1_s, cov_s, miss_s) = (&mut b.z[..len], &mut b.v1[..len], &mut b.cov[..len], &mut b.miss[..len]);
    let (sz_s, sv_s) = (&mut b.sens_z[..len], &mut b.sens_v[..len]);
    let sig_p2 = b.sig_p2;
    let (tz_s, tv_s) = (&mut b.sens_tz[..len], &mut b.sens_tv[..len]);
    let sig_t2 = b.sig_t2;
    let (qb, capb, vb, okb) = (&b.inv_qc[..len], &b.cap[..len], &b.v[..len], &b.ok[..len]);
    let (cvb, y2) = (&b.cap_var[..len], b.y2);
    let (socb, sigb, ccb) = (&mut b.soc[..len], &mut b.sig[..len], &mut b.cc[..len]);
    let sc = &mut *b.sc;
    let (s_zp, s_r1, s_r0, s_slope) = (&sc.zp[..len], &sc.r1[..len], &sc.r0[..len], &sc.slope[..len]);
    let s_u0 = &sc.u0[..len];
    let (s_ocv, s_h, s_e, s_v2) = (&sc.ocv[..len], &sc.h[..len], &sc.e[..len], &sc.v2[..len]);
    let (s_a1, s_dc, s_dp, s_r0r) = (&sc.a1[..len], &sc.dc[..len], &sc.dp[..len], &sc.r0r[..len]);
    let (s_t2, s_tin) = (&sc.t2[..len], &sc.tin[..len]);
    let (s_ocv_out, s_soe) = (&mut sc.ocv_out[..len], &mut sc.soe[..len]);
    let (s_ldc, s_lcc) = (&mut sc.ldc[..len], &mut sc.lcc[..len]);
    let (s_ldp, s_lcp) = (&mut sc.ldp[..len], &mut sc.lcp[..len]);
    let (g_eta_i, r_meas) = (b.g_eta_i, b.r_meas);
    let (hc_c, hc_p, vmin, vmax) = (b.hc_c, b.hc_p, b.vmin, b.vmax);
    for j in 0..len {
        let inv_qc = qb[j];
        let mut z = z_s[j];
        let mut v1 = v1_s[j];
        let mut cov = cov_s[j];
        let pr = Predict { a1: s_a1[j], ..b.base_pr };
        let r1 = s_r1[j];
        soc_ekf::predict(&mut z, &mut v1, &mut cov, r1, inv_qc, &pr);
        let (z_p, v1_p, cov_p) = (z, v1, cov);
        // the consider sensitivity's prediction: v1 = a1·v1 + R1(1 − a1)·i, so ∂v1/∂δ gains
        // R1(1 − a1)·i (z does not depend on R1)
        let sz_p = sz_s[j];
        let sv_p = s_a1[j] * sv_s[j] + r1 * (1.0 - s_a1[j]) * pr.i_cell;
        // and the time constants': τ1 → τ1(1 + ε) moves a1 by ∂a1/∂ε = a1·Δt/τ1, so ∂v1/∂ε
        // gains (∂a1/∂ε)·(v1 − R1·i) (`tin`, from the gathers)
        let tz_p = tz_s[j];
        let tv_p = s_a1[j] * tv_s[j] + s_tin[j];
        let slope = s_slope[j];
        let ocv_pred = s_ocv[j];
        let v2 = s_v2[j];
        // computed for every cell, kept only where the voltage is trusted
        let innov = vb[j] - (ocv_pred - s_u0[j] - v1 - v2);
        let carried = soc_ekf::carried_miss_variance(miss_s[j], s_a1[j]);
        let r_rob = soc_ekf::robust_voltage_r(slope, &cov, innov, r_meas);
        let (r_eff, miss_left) = soc_ekf::failure_voltage_r(r_rob, r_meas, carried, s_a1[j]);
        let (k0, k1) = soc_ekf::update(&mut z, &mut v1, &mut cov, slope, innov, r_eff);
        let ok = okb[j] & b.update;
        miss_s[j] = if ok { miss_left } else { carried };
        let z = if ok { z.clamp(SOC_STATE_RANGE.0, SOC_STATE_RANGE.1) } else { z_p };
        let v1 = if ok { v1 } else { v1_p };
        let cov = if ok { cov } else { cov_p };
        // ... and their updates: the open-loop v2 enters the innovation with the same relative
        // error δ, and its ∂v2/∂ε with ε
        let s_u = soc_ekf::consider_update((sz_p, sv_p), k0, k1, slope, v2);
        let (sz, sv) = if ok { s_u } else { (sz_p, sv_p) };
        sz_s[j] = sz;
        sv_s[j] = sv;
        let t_u = soc_ekf::consider_update((tz_p, tv_p), k0, k1, slope, s_t2[j]);
        let (tz, tv) = if ok { t_u } else { (tz_p, tv_p) };
        tz_s[j] = tz;
        tv_s[j] = tv;
        z_s[j] = z;
        v1_s[j] = v1;
        cov_s[j] = cov;
        ccb[j] -= g_eta_i * inv_qc;
        let zo = z.clamp(0.0, 1.0);
        socb[j] = zo;
        // (and no less than the cell file's floor, see `CellEstimator::soc_sigma_floor`)
        // (plus the RC polarisation's consider terms, see `CellEstimator::rc_polarisation_rel_error`
        // and `rc_time_constant_rel_error`)
        sigb[j] = (cov.p00 + y2 * cvb[j] + sig_p2 * sz * sz + sig_t2 * tz * tz).max(b.sig2_floor).sqrt();
    }
    // (outputs and per-cell limits in a second loop over the block: fewer live values per
    // iteration, so the vectorised filter loop above does not spill)
    for j in 0..len {
        // pack quantities at the corrected state
        let zo = socb[j];
        let v1 = v1_s[j];
        let (r0, r1, slope, ocv_pred, v2, inv_qc) = (s_r0[j], s_r1[j], s_slope[j], s_ocv[j], s_v2[j], qb[j]);
        let dz = zo - s_zp[j].clamp(0.0, 1.0);
        let ocv = ocv_pred + slope * dz;
        s_ocv_out[j] = ocv;
        s_soe[j] = (s_e[j] + (ocv - s_h[j]) * dz) * capb[j];
        // SOF: horizon resistance and headroom per direction and horizon. The learnt
        // resistance ratio enters only where it raises the resistance: a ratio below 1 would
        // raise the current limits above the identified model's, and the R0 observation reads
        // low on fresh cells under large steps (the DFN's charge-transfer overpotential is
        // sub-linear in current: 0.6-0.8 on the drive traces of the SOC bench), so it is not
        // trusted to do that (fail-safe; the SOC filter's R0 still takes it as learnt).
        let vd = ocv - v2;
        let (dc, dp) = (s_dc[j], s_dp[j]);
        // (R1 already takes the ratio only upwards, see the gathers)
        let r0l = r0 / s_r0r[j].min(1.0);
        let inv_rh_c = 1.0 / (r0l + r1 * (1.0 - dc) + slope * hc_c * inv_qc);
        let inv_rh_p = 1.0 / (r0l + r1 * (1.0 - dp) + slope * hc_p * inv_qc);
        let vc = v1 * dc;
        let vpk = v1 * dp;
        s_ldc[j] = cell_limit(vd - vc - vmin, inv_rh_c);
        s_lcc[j] = cell_limit(vmax - vd + vc, inv_rh_c);
        s_ldp[j] = cell_limit(vd - vpk - vmin, inv_rh_p);
        s_lcp[j] = cell_limit(vmax - vd + vpk, inv_rh_p);
    }
}

/// Lanes of the pack reductions (see step (c) of the pass).
const LANES: usize = 4;
const _: () = assert!(BLOCK % LANES == 0, "blocks must start at a multiple of the lanes");

/// The pack reductions of the pass, per lane: sums of SOC, OCV, R0, energy; minima
/// of SOC and the four unit-cell limits; maximum of SOC.
#[derive(Clone, Copy)]
struct Reductions {
    sum: [[f64; LANES]; 4],
    min: [[f64; LANES]; 5],
    max: [f64; LANES],
}

impl Reductions {
    fn new() -> Self {
        Reductions { sum: [[0.0; LANES]; 4], min: [[f64::INFINITY; LANES]; 5], max: [f64::NEG_INFINITY; LANES] }
    }

    #[inline(always)]
    fn add(&mut self, l: usize, zo: f64, sc: &Scratch, j: usize) {
        self.sum[0][l] += zo;
        self.sum[1][l] += sc.ocv_out[j];
        self.sum[2][l] += sc.r0[j];
        self.sum[3][l] += sc.soe[j];
        self.min[0][l] = self.min[0][l].min(zo);
        self.min[1][l] = self.min[1][l].min(sc.ldc[j]);
        self.min[2][l] = self.min[2][l].min(sc.lcc[j]);
        self.min[3][l] = self.min[3][l].min(sc.ldp[j]);
        self.min[4][l] = self.min[4][l].min(sc.lcp[j]);
        self.max[l] = self.max[l].max(zo);
    }

    fn finish(&self) -> PackSums {
        let s = |x: &[f64; LANES]| ((x[0] + x[1]) + x[2]) + x[3];
        let lo = |x: &[f64; LANES]| x[0].min(x[1]).min(x[2]).min(x[3]);
        PackSums {
            soc_min: lo(&self.min[0]),
            soc_max: self.max[0].max(self.max[1]).max(self.max[2]).max(self.max[3]),
            soc_sum: s(&self.sum[0]),
            ocv_sum: s(&self.sum[1]),
            r_sum: s(&self.sum[2]),
            soe: s(&self.sum[3]),
            ld_c: lo(&self.min[1]),
            lc_c: lo(&self.min[2]),
            ld_p: lo(&self.min[3]),
            lc_p: lo(&self.min[4]),
        }
    }
}

/// What the cell pass needs to know about this step.
#[derive(Debug, Clone, Copy)]
pub(super) struct CellStep {
    pub dt: f64,
    /// cells in parallel per series element
    pub par: f64,
    /// string current (A, discharge positive; 0 if the sensor is implausible)
    pub i: f64,
    /// per unit cell: i / parallel, and the current step of this sample
    pub i_cell: f64,
    pub di_cell: f64,
    /// coulombic efficiency of this step's direction
    pub eta: f64,
    /// this sample is an R0 current step (see [`RestSoh::current_step`])
    pub r0_step: bool,
    /// first step: the SOC was just read off the OCV, predict only
    pub start_up: bool,
    /// the recent load (C-rate) the model error scales with
    pub load_c: f64,
}

/// The pack reductions of one pass, in cell order.
#[derive(Debug, Clone, Copy)]
pub(super) struct PackSums {
    pub soc_min: f64,
    pub soc_max: f64,
    pub soc_sum: f64,
    pub ocv_sum: f64,
    /// Σ R0 of the unit cells
    pub r_sum: f64,
    /// Σ energy of the unit cells (Wh)
    pub soe: f64,
    /// min over the cells of the unit-cell limits: discharge/charge, continuous/peak
    pub ld_c: f64,
    pub lc_c: f64,
    pub ld_p: f64,
    pub lc_p: f64,
}

/// The per-cell filter state (struct of arrays) and the pass's scratch.
pub(super) struct Cells {
    /// false until the first step has read the SOC off the OCV
    pub initialized: bool,
    pub z: Vec<f64>,
    pub v1: Vec<f64>,
    pub v2: Vec<f64>,
    pub h: Vec<f64>,
    pub cov: Vec<Cov2>,
    /// per cell: the variance of the voltage the model missed, carried from the last update
    /// (V², see [`soc_ekf::carried_miss_variance`])
    pub miss: Vec<f64>,
    /// per cell: the consider sensitivity (∂z/∂δ, ∂v1/∂δ) to the RC polarisation's relative
    /// error δ (`CellEstimator::rc_polarisation_rel_error`); in the state file as `cells.sens`
    /// (optional: a file written before it restores 0).
    pub sens_z: Vec<f64>,
    pub sens_v: Vec<f64>,
    /// per cell: the consider sensitivity (∂z/∂ε, ∂v1/∂ε) to the RC time constants' relative
    /// error ε (`CellEstimator::rc_time_constant_rel_error`), and ∂v2/∂ε of the open-loop
    /// second pair; in the state file as `cells.sens_tau` (optional, as `sens`)
    pub sens_tz: Vec<f64>,
    pub sens_tv: Vec<f64>,
    pub sens_t2: Vec<f64>,
    scratch: Box<Scratch>,
    /// run the block arithmetic with AVX2 (detected once at construction)
    pub(super) use_avx2: bool,
}

impl Cells {
    pub fn new(n: usize) -> Self {
        Cells {
            initialized: false,
            z: vec![0.5; n],
            v1: vec![0.0; n],
            v2: vec![0.0; n],
            h: vec![0.0; n],
            cov: vec![Cov2 { p00: 0.25, p01: 0.0, p11: 1e-6 }; n],
            miss: vec![0.0; n],
            sens_z: vec![0.0; n],
            sens_v: vec![0.0; n],
            sens_tz: vec![0.0; n],
            sens_tv: vec![0.0; n],
            sens_t2: vec![0.0; n],
            scratch: Scratch::new(),
            use_avx2: avx2_available(),
        }
    }

    /// An anchor's update (gain (k0, k1)) applied to cell k's consider sensitivities (to δ
    /// and to ε, [`soc_ekf::consider_anchor`]): the anchor is taken as independent of the
    /// polarisation (a rest point adds back what the model says is left of it after 5..10 min,
    /// a small part of the load's).
    pub fn anchor_sensitivity(&mut self, k: usize, k0: f64, k1: f64) {
        (self.sens_z[k], self.sens_v[k]) = soc_ekf::consider_anchor((self.sens_z[k], self.sens_v[k]), k0, k1);
        (self.sens_tz[k], self.sens_tv[k]) = soc_ekf::consider_anchor((self.sens_tz[k], self.sens_tv[k]), k0, k1);
    }

    /// First step: SOC from the OCV of the first voltages (rest assumption).
    ///
    /// The SOC read off the OCV curve is uncertain by σ_y / (dOCV/dz), σ_y the voltage
    /// uncertainty the filter itself uses (sensor noise and model error, e.g. a cell not
    /// fully relaxed). On a flat plateau (LFP: dOCV/dz ≈ 0.05..0.15 V per unit SOC mid-range,
    /// hw/cells/a123_anr26650_lfp.toml) that is far wider than `initial_soc_sigma`; starting
    /// with the narrow σ would make the filter overconfident in a poor start value. So the
    /// start σ is the larger of the two, capped at 0.3 (about a uniform SOC on 0..1).
    ///
    /// A first sample under load (`i_cell` beyond the rest band `rest_i_cell`: a BMS that
    /// starts while its string carries current) is no OCV: the voltage is off it by the
    /// cell's polarisation, up to (R0 + R1 + R2)·|i| once the RC pairs have settled, which
    /// the engine cannot see yet. The reading is kept (the RC part's share is unknown) and σ_y
    /// gains that polarisation, so the filter's σ covers what the reading may be off by.
    #[allow(clippy::too_many_arguments)]
    pub fn initialize(&mut self, v: &[f64], i_cell: f64, rest_i_cell: f64, sens: &SensorConfig, est: &EstimatorConfig, tab: &CellTables, sensing: &Sensing, sensor_of: &[u32], soc_cc: &mut [f64]) {
        let sig = est.initial_soc_sigma;
        let sig_y = (est.voltage_noise_v.powi(2) + est.model_error_v.powi(2)).sqrt();
        let loaded = i_cell.abs() > rest_i_cell;
        for k in 0..self.z.len() {
            let ss = &sensing.ss[sensor_of[k] as usize];
            let ok = v[k] >= sens.cell_v_min_v && v[k] <= sens.cell_v_max_v && v[k] > sens.open_wire_v;
            let (z, p00) = if ok {
                let z = tab.soc_from_ocv(v[k], ss.dtemp);
                let at = tab.locate(z);
                let sig_y = if loaded {
                    let [r0, r1, r2, _] = tab.rc(at, ss.sel);
                    sig_y.hypot((r0 + r1 + r2) * i_cell)
                } else {
                    sig_y
                };
                let s = initial_sigma(sig, sig_y, tab.slope(at));
                (z, s * s)
            } else {
                (0.5, 0.25)
            };
            self.z[k] = z;
            soc_cc[k] = z;
            self.v1[k] = 0.0;
            self.v2[k] = 0.0;
            self.h[k] = 0.0;
            self.miss[k] = 0.0;
            self.sens_z[k] = 0.0;
            self.sens_v[k] = 0.0;
            self.sens_tz[k] = 0.0;
            self.sens_tv[k] = 0.0;
            self.sens_t2[k] = 0.0;
            // v1 at rest is ~0; 1 mV uncertainty
            self.cov[k] = Cov2 { p00, p01: 0.0, p11: 1e-6 };
        }
        self.initialized = true;
    }

    /// Pass 2 over the cells (the fused hot loop, see the module doc): filter, coulomb count,
    /// R0 observation, per-cell outputs `soc`, `soc_sigma`, `soc_cc`, and the pack sums.
    /// One SOC lookup per cell (at the predicted SOC) serves the RC prediction, the
    /// measurement, the limits and the pack sums; after the update the OCV is carried to the
    /// corrected SOC along the same interval's slope (exact within the interval).
    #[allow(clippy::too_many_arguments)]
    pub fn update(
        &mut self,
        st: &CellStep,
        v_cell_v: &[f64],
        sensing: &Sensing,
        soh: &mut RestSoh,
        sensor_of: &[u32],
        tab: &CellTables,
        p: &CellParams,
        est: &EstimatorConfig,
        lc: &LimitsConfig,
        o_soc: &mut [f64],
        o_sig: &mut [f64],
        o_cc: &mut [f64],
    ) -> PackSums {
        #[cfg(target_arch = "x86_64")]
        if self.use_avx2 {
            // SAFETY: use_avx2 is set only when the CPU reports AVX2 (checked at construction).
            return unsafe { self.update_avx2(st, v_cell_v, sensing, soh, sensor_of, tab, p, est, lc, o_soc, o_sig, o_cc) };
        }
        self.update_impl(st, v_cell_v, sensing, soh, sensor_of, tab, p, est, lc, o_soc, o_sig, o_cc)
    }

    /// The whole pass (gathers, arithmetic, reductions) compiled for AVX2: the arithmetic
    /// vectorises 4 lanes wide, the gathers use the 3-operand VEX forms. Rust never
    /// contracts a·b+c into an FMA on its own, so both builds give bit-identical results.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn update_avx2(
        &mut self,
        st: &CellStep,
        v_cell_v: &[f64],
        sensing: &Sensing,
        soh: &mut RestSoh,
        sensor_of: &[u32],
        tab: &CellTables,
        p: &CellParams,
        est: &EstimatorConfig,
        lc: &LimitsConfig,
        o_soc: &mut [f64],
        o_sig: &mut [f64],
        o_cc: &mut [f64],
    ) -> PackSums {
        self.update_impl(st, v_cell_v, sensing, soh, sensor_of, tab, p, est, lc, o_soc, o_sig, o_cc)
    }

    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn update_impl(
        &mut self,
        st: &CellStep,
        v_cell_v: &[f64],
        sensing: &Sensing,
        soh: &mut RestSoh,
        sensor_of: &[u32],
        tab: &CellTables,
        p: &CellParams,
        est: &EstimatorConfig,
        lc: &LimitsConfig,
        o_soc: &mut [f64],
        o_sig: &mut [f64],
        o_cc: &mut [f64],
    ) -> PackSums {
        let (dt, i, i_cell, di_cell, eta, r0_step, start_up) =
            (st.dt, st.i, st.i_cell, st.di_cell, st.eta, st.r0_step, st.start_up);
        let var_i_cell = (est.current_noise_a / st.par).powi(2);
        let base_pr = Predict {
            a1: 1.0,
            dt_s: dt,
            i_cell,
            eta_i: eta * i_cell,
            q_z_dt: est.soc_process_noise * dt,
            q_v1_dt: est.v1_process_noise * dt,
            var_i_cell,
            var_off_cell: soc_ekf::offset_noise(est.current_offset_a / st.par, dt),
        };
        let r_meas = soc_ekf::measurement_variance(est, &p.estimator, st.load_c, dt);
        let vmin = p.v_min_v + lc.voltage_margin_v;
        let vmax = p.v_max_v - lc.voltage_margin_v;
        let hc_c = lc.continuous_horizon_s; // horizon for the SOC term
        let hc_p = lc.peak_horizon_s;
        let has_rc2 = p.has_rc2();
        let hyst = p.hysteresis_m_v > 0.0;
        let ah = if hyst {
            (-(p.hysteresis_gamma * eta * i_cell * dt / (3600.0 * p.capacity_ah)).abs()).exp()
        } else {
            1.0
        };
        let hm = p.hysteresis_m_v * i.signum();

        let n = self.z.len();
        let mut red = Reductions::new();
        let ssv = &sensing.ss[..];
        let v_in = &v_cell_v[..n];
        let valids = &sensing.v_valid[..n];
        let dvs = &sensing.r0_dv[..n];
        let zs = &mut self.z[..n];
        let v1s = &mut self.v1[..n];
        let v2s = &mut self.v2[..n];
        let hs = &mut self.h[..n];
        let covs = &mut self.cov[..n];
        let misses = &mut self.miss[..n];
        let (szs, svs) = (&mut self.sens_z[..n], &mut self.sens_v[..n]);
        let (tzs, tvs, t2s) = (&mut self.sens_tz[..n], &mut self.sens_tv[..n], &mut self.sens_t2[..n]);
        let inv_qcs = &soh.inv_qc[..n];
        let caps = &soh.cap_ah[..n];
        let cap_vars = &soh.cap_var[..n];
        // The reported σ: the filter's P_zz plus a consider term for the capacity the filter
        // takes as known (Bierman, "Factorization methods for discrete sequential estimation",
        // 1977, ch. VI; Tapley, Schutz, Born, "Statistical orbit determination", 2004, §6.3):
        // a relative capacity error δ moves the coulomb count by δ·y, y the charge counted
        // since the last anchor over the nominal capacity, so σ² gains y²·var(δ), var(δ) the
        // capacity estimator's own (the prior's until the first capacity observation). The
        // filter's gain is left as it is: on the tuning split, feeding this variance into
        // P_zz made the filter trust the biased voltage under load and lost more than it won.
        let y_anchor = soh.q_since_rest_ah / p.capacity_ah;
        let y2 = y_anchor * y_anchor;
        let r0rs = &mut soh.r0_ratio[..n];
        let r0ns = &mut soh.r0_n[..n];
        let r0ss = &mut soh.r0_soh_ratio[..n];
        let r0sns = &mut soh.r0_soh_n[..n];
        let o_soc = &mut o_soc[..n];
        let o_sig = &mut o_sig[..n];
        let o_cc = &mut o_cc[..n];
        let g_eta_i = base_pr.eta_i * dt;
        let r0_gain = est.r0_gain;
        let rc_share = p.estimator.r0_ratio_rc_share;
        let sig_p2 = p.estimator.rc_polarisation_rel_error.powi(2);
        let sig_t2 = p.estimator.rc_time_constant_rel_error.powi(2);
        let sig2_floor = p.estimator.soc_sigma_floor * p.estimator.soc_sigma_floor;
        let sc = &mut *self.scratch;
        let sensor_of = &sensor_of[..n];
        let mut start = 0;
        while start < n {
            let end = (start + BLOCK).min(n);
            let len = end - start;
            // (a0) the predicted SOC and where it lies on the grid, as vector arithmetic: the
            // lookups below then start from a ready index instead of a chain per cell
            for j in 0..len {
                let k = start + j;
                let z_pred = zs[k] - g_eta_i * inv_qcs[k];
                let at = tab.locate(z_pred);
                sc.zp[j] = z_pred;
                sc.at_k[j] = at.k as u32;
                sc.at_f[j] = at.f;
            }
            // (a) gathers
            for j in 0..len {
                let k = start + j;
                let ss = &ssv[sensor_of[k] as usize];
                let at = SocAt { k: sc.at_k[j] as usize, f: sc.at_f[j] };
                // R0, R1, R2 in one packed lookup (one 4-lane interpolation)
                let [r0_nom, r1_nom, r2_nom, _] = tab.rc(at, ss.sel);
                let mut r0r = r0rs[k];
                // The learnt ratio scales the RC (diffusion) resistances only upwards: a ratio
                // below 1 comes from the step response's charge transfer, sub-linear in current
                // (Butler-Volmer: large steps read low, 0.6-0.8 on fresh cells under drive
                // profiles), which says nothing of the diffusion polarisation; a ratio above 1
                // (ageing) raises them by the cell file's `r0_ratio_rc_share` of it (an ohmic
                // growth, contact or electrolyte, leaves them). Tuning split: lfp_t1 0.24 ->
                // 0.21 %, nmc_t1 0.35 -> 0.33 % SOC RMSE, the other six unchanged.
                let rc_scale = 1.0 + rc_share * (r0r.max(1.0) - 1.0);
                let r1 = r1_nom * rc_scale;
                // R0 from the current step: −ΔV/ΔI of this cell, ratio to what the table reads
                // on such a step (`soh::r0_step_factor`: a 1 s, 1 C pulse resistance ratio
                // whatever the step), low-passed
                if r0_step {
                    let r0_step_nom = r0_nom * sensing.r0_step_factor[sensor_of[k] as usize];
                    if let Some(r) = r0_observation(dvs[k], di_cell, r0_step_nom) {
                        r0r += soh::r0_running_gain(r0ns[k], r0_gain) * (r / r0_step_nom - r0r);
                        r0rs[k] = r0r;
                        r0ns[k] = (r0ns[k] + 1.0).min(soh::R0_COUNT_CAP);
                        // the SOH ratio: the same mean over the steps inside the step model's
                        // temperature range (`CellEstimator::r0_soh_min_temp_c`)
                        if sensing.r0_soh_step[sensor_of[k] as usize] {
                            r0ss[k] += soh::r0_running_gain(r0sns[k], r0_gain) * (r / r0_step_nom - r0ss[k]);
                            r0sns[k] = (r0sns[k] + 1.0).min(soh::R0_COUNT_CAP);
                        }
                    }
                }
                let mut v2 = 0.0;
                let mut t2 = 0.0;
                if has_rc2 {
                    let r2 = r2_nom * rc_scale;
                    // ∂v2/∂ε of the open-loop pair, as ∂v1/∂ε in the block arithmetic
                    t2 = ss.a2 * t2s[k] + ss.da2 * (v2s[k] - r2 * i_cell);
                    t2s[k] = t2;
                    v2 = ss.a2 * v2s[k] + r2 * (1.0 - ss.a2) * i_cell;
                    v2s[k] = v2;
                }
                let mut hk = 0.0;
                if hyst {
                    hk = ah * hs[k] - (1.0 - ah) * hm;
                    hs[k] = hk;
                }
                let r0 = r0_nom * r0r;
                sc.u0[j] = r0 * sensing.r0_load_factor[sensor_of[k] as usize] * i_cell;
                let (ocv_t, slope_t, energy) = tab.ocv_slope_energy(at);
                let slope = slope_t;
                let ocv_lin = ocv_t + tab.entropic(at, ss.dtemp) + hk;
                sc.r1[j] = r1;
                sc.r0[j] = r0;
                sc.r0r[j] = r0r;
                sc.slope[j] = slope;
                sc.ocv[j] = ocv_lin;
                sc.h[j] = hk;
                sc.e[j] = energy;
                sc.v2[j] = v2;
                sc.t2[j] = t2;
                sc.a1[j] = ss.a1;
                sc.tin[j] = ss.da1 * (v1s[k] - r1 * i_cell);
                sc.dc[j] = ss.d_cont;
                sc.dp[j] = ss.d_peak;
            }
            // (a2) Iterated update (IEKF) where the update is a large SOC step: there the OCV
            // linearised at the predicted SOC is a poor model over the step (start-up 20 % off
            // with a wide P_zz), and a plain EKF overshoots or crawls. Cheap gate with the
            // previous P_zz, evaluated for the whole block as vector arithmetic; the rare cells
            // past it are relinearised one by one, which only moves the point the block
            // linearises the OCV at (`slope`, and the OCV line evaluated at the predicted SOC).
            if !start_up {
                let mut any = false;
                for j in 0..len {
                    let k = start + j;
                    let (a1, r1, slope) = (sc.a1[j], sc.r1[j], sc.slope[j]);
                    let v1_pred = a1 * v1s[k] + r1 * (1.0 - a1) * i_cell;
                    let innov0 = v_in[k] - (sc.ocv[j] - sc.u0[j] - v1_pred - sc.v2[j]);
                    let pz = covs[k].p00;
                    let gate = valids[k] & ((slope * pz * innov0).abs() > IEKF_GATE_DZ * (slope * slope * pz + r_meas));
                    sc.gate[j] = gate;
                    any |= gate;
                }
                if any {
                    for j in 0..len {
                        if !sc.gate[j] {
                            continue;
                        }
                        let k = start + j;
                        let ss = &ssv[sensor_of[k] as usize];
                        let (u0, r1, v2, hk) = (sc.u0[j], sc.r1[j], sc.v2[j], sc.h[j]);
                        let (mut zc, mut v1c, mut pc) = (zs[k], v1s[k], covs[k]);
                        soc_ekf::predict(&mut zc, &mut v1c, &mut pc, r1, inv_qcs[k], &Predict { a1: sc.a1[j], ..base_pr });
                        let y = v_in[k] + u0 + v1c + v2; // v = OCV(z) + h − R0(i)·i − v1 − v2
                        let (zl, sl, ol) =
                            soc_ekf::iterate_linearization(zc, &pc, y, r_meas, IEKF_ITERS, |z| {
                                let a = tab.locate(z);
                                (tab.slope(a), tab.ocv(a, ss.dtemp) + hk)
                            });
                        sc.slope[j] = sl;
                        sc.ocv[j] = ol + sl * (zc - zl);
                    }
                }
            }
            // (b) arithmetic
            {
                let mut bm = BlockMath {
                    z: &mut zs[start..end],
                    v1: &mut v1s[start..end],
                    cov: &mut covs[start..end],
                    miss: &mut misses[start..end],
                    sens_z: &mut szs[start..end],
                    sens_v: &mut svs[start..end],
                    sig_p2,
                    sens_tz: &mut tzs[start..end],
                    sens_tv: &mut tvs[start..end],
                    sig_t2,
                    sig2_floor,
                    inv_qc: &inv_qcs[start..end],
                    cap: &caps[start..end],
                    cap_var: &cap_vars[start..end],
                    v: &v_in[start..end],
                    ok: &valids[start..end],
                    soc: &mut o_soc[start..end],
                    sig: &mut o_sig[start..end],
                    cc: &mut o_cc[start..end],
                    sc: &mut *sc,
                    base_pr,
                    g_eta_i,
                    r_meas,
                    y2,
                    hc_c,
                    hc_p,
                    vmin,
                    vmax,
                    update: !start_up,
                };
                block_math_impl(&mut bm);
            }
            // (c) reductions: four lanes (cell k in lane k mod 4, blocks start at multiples of
            // 4), so that they vectorise; the lanes are combined in a fixed order at the end
            // (a local copy with constant lane indices stays in registers)
            let mut acc = red;
            let mut j = 0;
            while j + LANES <= len {
                for l in 0..LANES {
                    acc.add(l, o_soc[start + j + l], sc, j + l);
                }
                j += LANES;
            }
            while j < len {
                let zo = o_soc[start + j];
                match j % LANES {
                    0 => acc.add(0, zo, sc, j),
                    1 => acc.add(1, zo, sc, j),
                    2 => acc.add(2, zo, sc, j),
                    _ => acc.add(3, zo, sc, j),
                }
                j += 1;
            }
            red = acc;
            start = end;
        }
        red.finish()
    }
}

/// Start-up SOC σ from the OCV slope (see [`Cells::initialize`]).
#[inline]
fn initial_sigma(sig_cfg: f64, sig_y: f64, slope: f64) -> f64 {
    let from_ocv = if slope > 0.0 { sig_y / slope } else { f64::INFINITY };
    sig_cfg.max(from_ocv).min(0.3)
}

/// An optional per-cell group of consider sensitivities in the state file (`cells.<name>`):
/// none (a file written before it), or one finite group per cell.
fn optional_sensitivities<const N: usize>(name: &str, v: &[[X; N]], n: usize) -> Result<(), String> {
    if !v.is_empty() && v.len() != n {
        return Err(format!("cells.{name}: {} values, expected {n} (one per cell) or none", v.len()));
    }
    if v.iter().flatten().any(|x| !x.0.is_finite()) {
        return Err(format!("cells.{name}: expected finite sensitivities"));
    }
    Ok(())
}

/// State of the cells stage in the state file, version 1 (see [`super::state`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CellsStateV1 {
    pub version: u32,
    /// the SOC has been read off the OCV (false: the next step does that)
    pub initialized: bool,
    /// filter state per cell: SOC, RC voltages (V), hysteresis voltage (V)
    pub z: Vec<X>,
    pub v1: Vec<X>,
    pub v2: Vec<X>,
    pub h: Vec<X>,
    /// covariance of (SOC, v1) per cell: p00, p01, p11
    pub cov: Vec<[X; 3]>,
    /// coulomb-counted SOC per cell (the output `soc_cc` is this stage's counter)
    pub soc_cc: Vec<X>,
    /// per cell: the carried variance of the voltage the model missed (V²); absent in files
    /// written before it (then 0: no failure carried)
    #[serde(default)]
    pub miss: Vec<X>,
    /// per cell: the consider sensitivity (∂z/∂δ, ∂v1/∂δ) to the RC polarisation's relative
    /// error (`CellEstimator::rc_polarisation_rel_error`); absent in files written before it
    /// (then 0: the reported σ lacks the term until the next load builds it up)
    #[serde(default)]
    pub sens: Vec<[X; 2]>,
    /// per cell: the consider sensitivity (∂z/∂ε, ∂v1/∂ε, ∂v2/∂ε) to the RC time constants'
    /// relative error (`CellEstimator::rc_time_constant_rel_error`); absent in files written
    /// before it (then 0, as `sens`)
    #[serde(default)]
    pub sens_tau: Vec<[X; 3]>,
}

impl Cells {
    pub fn export(&self, soc_cc: &[f64]) -> CellsStateV1 {
        CellsStateV1 {
            version: 1,
            initialized: self.initialized,
            z: xs(&self.z),
            v1: xs(&self.v1),
            v2: xs(&self.v2),
            h: xs(&self.h),
            cov: self.cov.iter().map(|c| [X(c.p00), X(c.p01), X(c.p11)]).collect(),
            soc_cc: xs(soc_cc),
            miss: xs(&self.miss),
            sens: self.sens_z.iter().zip(&self.sens_v).map(|(&z, &v)| [X(z), X(v)]).collect(),
            sens_tau: (0..self.z.len()).map(|k| [X(self.sens_tz[k]), X(self.sens_tv[k]), X(self.sens_t2[k])]).collect(),
        }
    }

    /// Structure: one value per cell, all finite.
    pub fn check(&self, s: &CellsStateV1, n: usize) -> Result<(), String> {
        for (name, len) in [("z", s.z.len()), ("v1", s.v1.len()), ("v2", s.v2.len()), ("h", s.h.len()), ("cov", s.cov.len()), ("soc_cc", s.soc_cc.len())] {
            if len != n {
                return Err(format!("cells.{name}: {len} values, expected {n} (one per cell)"));
            }
        }
        if !s.miss.is_empty() && s.miss.len() != n {
            return Err(format!("cells.miss: {} values, expected {n} (one per cell) or none", s.miss.len()));
        }
        if s.miss.iter().any(|x| !(x.0.is_finite() && x.0 >= 0.0)) {
            return Err("cells.miss: expected finite variances >= 0".into());
        }
        optional_sensitivities("sens", &s.sens, n)?;
        optional_sensitivities("sens_tau", &s.sens_tau, n)?;
        for k in 0..n {
            let c = &s.cov[k];
            if ![s.z[k], s.v1[k], s.v2[k], s.h[k], c[0], c[1], c[2], s.soc_cc[k]].iter().all(|x| x.0.is_finite()) {
                return Err(format!("cell {k}: non-finite or non-positive state"));
            }
        }
        Ok(())
    }

    /// The first implausible value, or None. Bands: the filter's own SOC range, the cell
    /// file's voltage window for polarisations and its hysteresis amplitude, a covariance
    /// that is one.
    pub fn implausible(&self, s: &CellsStateV1, cell: &CellParams) -> Option<String> {
        let (z_lo, z_hi) = SOC_STATE_RANGE;
        // an RC polarisation larger than the cell's whole voltage window is no polarisation
        let v_window = cell.v_max_v - cell.v_min_v;
        let h_max = cell.hysteresis_m_v.abs() * (1.0 + 1e-9) + 1e-12;
        let inside = |x: f64, lo: f64, hi: f64| x.is_finite() && x >= lo && x <= hi;
        for k in 0..s.z.len() {
            let (z, v1, v2, h) = (s.z[k].0, s.v1[k].0, s.v2[k].0, s.h[k].0);
            let [p00, p01, p11] = s.cov[k].map(|x| x.0);
            let why = if !inside(z, z_lo, z_hi) {
                format!("cell {k}: SOC {z} outside {z_lo}..{z_hi}")
            } else if !inside(v1, -v_window, v_window) || !inside(v2, -v_window, v_window) {
                format!("cell {k}: RC polarisation {v1} / {v2} V beyond the cell's {v_window} V window")
            } else if !inside(h, -h_max, h_max) {
                format!("cell {k}: hysteresis {h} V beyond the cell file's {h_max} V")
            } else if !s.miss.get(k).is_none_or(|m| inside(m.0, 0.0, v_window * v_window)) {
                // a missed voltage larger than the cell's whole window is no model failure
                format!("cell {k}: carried model-failure variance {} V² beyond the cell's ({v_window} V)²", s.miss[k].0)
            } else if !(inside(p00, 0.0, 1.0) && p11 >= 0.0 && p01.is_finite() && p01 * p01 <= p00 * p11 * (1.0 + 1e-9) + 1e-300) {
                format!("cell {k}: covariance ({p00}, {p01}, {p11}) is not a covariance")
            } else {
                continue;
            };
            return Some(why);
        }
        None
    }

    /// Apply a checked, plausible state.
    pub fn import(&mut self, s: &CellsStateV1, soc_cc: &mut [f64]) {
        for k in 0..self.z.len() {
            self.z[k] = s.z[k].0;
            self.v1[k] = s.v1[k].0;
            self.v2[k] = s.v2[k].0;
            self.h[k] = s.h[k].0;
            let [p00, p01, p11] = s.cov[k].map(|x| x.0);
            self.cov[k] = Cov2 { p00, p01, p11 };
            soc_cc[k] = s.soc_cc[k].0;
            self.miss[k] = s.miss.get(k).map_or(0.0, |x| x.0);
            let [sz, sv] = s.sens.get(k).map_or([0.0; 2], |p| [p[0].0, p[1].0]);
            self.sens_z[k] = sz;
            self.sens_v[k] = sv;
            let [tz, tv, t2] = s.sens_tau.get(k).map_or([0.0; 3], |p| p.map(|x| x.0));
            self.sens_tz[k] = tz;
            self.sens_tv[k] = tv;
            self.sens_t2[k] = t2;
        }
        self.initialized = s.initialized;
    }
}
