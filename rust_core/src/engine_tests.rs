//! Engine tests: a simulated pack (the cell model as plant, seeded noise) drives the engine.

use super::*;
use crate::cell_model::{CellScale, CellState};
use crate::protection::Level;
use proptest::prelude::*;

const PACK: &str = include_str!("../../python/mbms/data/packs/example_pack.toml");
const NMC: &str = include_str!("../../python/mbms/data/cells/lg_m50_nmc.toml");
const LFP: &str = include_str!("../../python/mbms/data/cells/a123_anr26650_lfp.toml");

/// Seeded SplitMix64 with a Box-Muller normal (tests only).
struct Rng(u64);
impl Rng {
    fn u(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
    fn n(&mut self) -> f64 {
        let (a, b) = (self.u().max(1e-300), self.u());
        (-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos()
    }
}

fn config(series: usize, temps: usize) -> EngineConfig {
    let mut c = EngineConfig::from_toml_str(PACK).unwrap();
    c.pack.series = series;
    c.pack.temp_sensors = temps;
    c.protection.sensors.stuck_samples = 0;
    c
}

fn engine(series: usize, temps: usize) -> Engine {
    Engine::new(config(series, temps), CellParams::from_toml_str(NMC).unwrap()).unwrap()
}

/// A plant of `n` elements (P cells each) with per-element SOC and capacity spread.
struct Plant {
    p: CellParams,
    s: Vec<CellState>,
    sc: Vec<CellScale>,
    par: f64,
    rng: Rng,
    noise_v: f64,
    /// the cells' temperature (°C)
    temp_c: f64,
}

impl Plant {
    fn new(p: CellParams, n: usize, par: f64, soc: f64, seed: u64) -> Self {
        let mut rng = Rng(seed);
        let s = (0..n).map(|_| CellState::at_rest(soc + 0.02 * (rng.u() - 0.5))).collect();
        let sc = (0..n).map(|_| CellScale { capacity: 1.0 + 0.02 * (rng.u() - 0.5), resistance: 1.0 }).collect();
        Self { p, s, sc, par, rng, noise_v: 0.001, temp_c: 25.0 }
    }
    /// The cell model's terminal voltage, with the instantaneous drop on the step-resistance
    /// curve the estimator assumes of a real cell (`soh::r0_step_factor` from rest to this
    /// load; the cell model itself is linear in R0): the plant is the cell the file describes.
    fn voltages(&mut self, i: f64) -> Vec<f64> {
        let ic = i / self.par;
        let t = self.temp_c;
        let f = crate::soh::r0_step_factor(&self.p.estimator, 0.0, ic / self.p.capacity_ah, t, self.p.t_ref_c);
        (0..self.s.len())
            .map(|k| {
                let s = &self.s[k];
                let extra = self.sc[k].resistance * self.p.r0(s.soc, t) * (f - 1.0) * ic;
                self.p.terminal_voltage(s, &self.sc[k], ic, t) - extra + self.noise_v * self.rng.n()
            })
            .collect()
    }
    fn step(&mut self, i: f64, dt: f64) {
        let ic = i / self.par;
        for k in 0..self.s.len() {
            self.p.step(&mut self.s[k], &self.sc[k], ic, self.temp_c, dt);
        }
    }
}

#[test]
fn example_pack_parses_and_ignores_node_tables() {
    let c = EngineConfig::from_toml_str(PACK).unwrap();
    assert_eq!((c.pack.series, c.pack.parallel, c.pack.temp_sensors), (96, 4, 24));
    let with_node = format!("{PACK}\n[node]\nid = 3\n[hardware.afe]\nkind = \"x\"\n");
    assert_eq!(EngineConfig::from_toml_str(&with_node).unwrap(), c);
    let bad = PACK.replace("series = 96", "series = 96\nbogus = 1");
    assert!(EngineConfig::from_toml_str(&bad).unwrap_err().message.contains("bogus"));
    let bad = PACK.replace("warning = 4.15", "warning = 4.25");
    assert_eq!(EngineConfig::from_toml_str(&bad).unwrap_err().field, "protection.cell_overvoltage_v.warning");
    let bad = PACK.replace("series = 96", "series = 96\nbogus = 1");
    assert_eq!(EngineConfig::from_toml_str(&bad).unwrap_err().field, "pack.bogus");
    let bad = PACK.replace("series = 96", "series = 100000000");
    assert_eq!(EngineConfig::from_toml_str(&bad).unwrap_err().field, "pack.series");
    let bad = PACK.replace("r_extra_ohm = 0.012", "r_extra_ohm = nan");
    assert_eq!(EngineConfig::from_toml_str(&bad).unwrap_err().field, "pack.r_extra_ohm");
}

#[test]
fn wrong_lengths_are_errors_naming_the_argument() {
    let mut e = engine(8, 2);
    let err = e.step(0.0, &[3.7; 7], &[25.0; 2], 0.0).unwrap_err();
    assert_eq!(err.argument, "v_cell_v");
    let err = e.step(0.0, &[3.7; 8], &[25.0; 3], 0.0).unwrap_err();
    assert_eq!(err.argument, "t_cell_c");
    e.step(1.0, &[3.7; 8], &[25.0; 2], 0.0).unwrap();
    assert_eq!(e.step(1.0, &[3.7; 8], &[25.0; 2], 0.0).unwrap_err().argument, "t_s");
}

#[test]
fn soc_converges_from_a_wrong_start_and_tracks_a_dynamic_profile() {
    let p = CellParams::from_toml_str(NMC).unwrap();
    let n = 16;
    let mut plant = Plant::new(p.clone(), n, 4.0, 0.8, 1);
    let mut e = engine(n, 4);
    // start: the engine sees the rested plant, but with a 20 % SOC bias injected afterwards
    let mut t = 0.0;
    e.step(t, &plant.voltages(0.0), &[25.0; 4], 0.0).unwrap();
    let out = e.output();
    for k in 0..n {
        assert!((out.soc[k] - plant.s[k].soc).abs() < 0.01, "OCV start {k}");
    }
    // corrupt SOC by +0.2 through the state file (the cells section's z), with a covariance
    // that admits it (σ 0.2). A state wrong by far more than its own σ is recovered only as
    // fast as the coulomb count's covariance grows: the voltage under load is weighted as the
    // slow bias the cell file's [estimator] table says it is (issue 16).
    let state = patch_state(&e.export_state(), |d| {
        for z in d["cells"]["z"].as_array_mut().unwrap() {
            *z = num(get_num(z) + 0.2);
        }
        for c in d["cells"]["cov"].as_array_mut().unwrap() {
            c[0] = num(0.04);
        }
    });
    e.import_state(&state).unwrap();
    let dt = 0.1;
    let mut max_err_late: f64 = 0.0;
    for step in 0..30000 {
        // dynamic: 20 A pulses with regen, 3000 s
        let ph = (step / 200) % 4;
        let i = [20.0, 5.0, -8.0, 30.0][ph];
        plant.step(i, dt);
        t += dt;
        e.step(t, &plant.voltages(i), &[25.0; 4], i).unwrap();
        if step > 6000 {
            let o = e.output();
            for k in 0..n {
                max_err_late = max_err_late.max((o.soc[k] - plant.s[k].soc).abs());
            }
        }
    }
    assert!(max_err_late < 0.02, "max SOC error after convergence {max_err_late}");
    let o = e.output();
    assert!(o.soc_min <= o.soc_mean && o.soc_mean <= o.soc_max);
    // string OCV ~ sum of the plant's OCVs
    let ocv_plant: f64 = plant.s.iter().map(|s| p.ocv(s.soc, 25.0)).sum();
    assert!((o.ocv_string_v - ocv_plant).abs() < 0.05 * n as f64 * 0.05 + 0.5);
    assert!((o.r_string_ohm - (n as f64 * 0.025 / 4.0 + 0.012)).abs() < 1e-6 + 0.2 * o.r_string_ohm);
}

/// A BMS that starts while its string carries current: the first sample is no OCV, and the
/// start-up σ covers the polarisation (R0 + R1 + R2)·|i| the reading cannot see; at rest (the
/// same voltages, no current) it is the rest reading's.
#[test]
fn a_start_under_load_widens_the_start_sigma_by_the_polarisation() {
    let p = CellParams::from_toml_str(NMC).unwrap();
    let n = 4;
    let par = config(n, 1).pack.parallel as f64;
    let v = [3.70; 4];
    let sigma = |i: f64| {
        let mut e = engine(n, 1);
        e.step(0.0, &v, &[25.0], i).unwrap();
        e.output().soc_sigma.clone()
    };
    let (rest, loaded, charging) = (sigma(0.0), sigma(20.0), sigma(-20.0));
    let z = p.soc_from_ocv(3.70, 25.0);
    let pol = (p.r0(z, 25.0) + p.r1(z, 25.0) + p.r2(z, 25.0)) * 20.0 / par;
    for k in 0..n {
        assert!(loaded[k] > rest[k], "cell {k}: {} vs {}", loaded[k], rest[k]);
        assert_eq!(loaded[k], charging[k], "either direction");
        // the polarisation over the OCV slope, within the table's interpolation
        let expect = pol / p.docv_dsoc(z);
        assert!((loaded[k] - expect).abs() < 0.1 * expect, "cell {k}: {} vs {expect}", loaded[k]);
    }
    // a current inside the rest band is rest
    let inside = sigma(0.5 * config(n, 1).estimator.rest_current_a);
    assert_eq!(inside, rest);
}

#[test]
fn flat_ocv_lfp_does_not_diverge() {
    let p = CellParams::from_toml_str(LFP).unwrap();
    let n = 4;
    let mut plant = Plant::new(p.clone(), n, 1.0, 0.6, 3);
    let mut c = config(n, 1);
    c.pack.parallel = 1;
    let mut e = Engine::new(c, p).unwrap();
    let mut t = 0.0;
    e.step(t, &plant.voltages(0.0), &[25.0], 0.0).unwrap();
    for step in 0..20000 {
        let i = if (step / 300) % 2 == 0 { 2.3 } else { -1.0 };
        plant.step(i, 0.1);
        t += 0.1;
        e.step(t, &plant.voltages(i), &[25.0], i).unwrap();
        let o = e.output();
        for k in 0..n {
            assert!(o.soc[k].is_finite() && o.soc_sigma[k].is_finite());
            assert!((o.soc[k] - plant.s[k].soc).abs() < 0.1, "step {step} cell {k}: {} vs {}", o.soc[k], plant.s[k].soc);
        }
    }
}

/// Issue 16: on the LFP plateau the voltage says almost nothing, so the filter's σ must grow
/// with the coulomb count's own uncertainty (the current sensor's offset) instead of shrinking
/// to the voltage noise over a tiny OCV slope. A plant held on the plateau with a current
/// sensor that reads 1 % of C high: the error grows ~1 %/h, and σ must keep covering it.
#[test]
fn lfp_plateau_covariance_grows_with_the_current_offset() {
    let p = CellParams::from_toml_str(LFP).unwrap();
    let q = p.capacity_ah;
    let mut plant = Plant::new(p.clone(), 1, 1.0, 0.55, 5);
    let mut c = config(1, 1);
    c.pack.parallel = 1;
    c.estimator.current_offset_a = 0.01 * q;
    c.estimator.current_noise_a = 0.002 * q;
    c.estimator.rest_current_a = 0.02 * q;
    let mut no_offset = c.clone();
    no_offset.estimator.current_offset_a = 0.0;
    let mut e = Engine::new(c, p.clone()).unwrap();
    let mut e0 = Engine::new(no_offset, p).unwrap();
    let offset = 0.01 * q;
    let mut t = 0.0;
    e.step(t, &plant.voltages(0.0), &[25.0], offset).unwrap();
    e0.step(t, &plant.voltages(0.0), &[25.0], offset).unwrap();
    for step in 1..=7200 {
        // ±0.5C for 5 min each way: SOC stays on the plateau (0.5..0.6)
        let i = if (step / 300) % 2 == 0 { 0.5 * q } else { -0.5 * q };
        plant.step(i, 1.0);
        t += 1.0;
        let v = plant.voltages(i);
        e.step(t, &v, &[25.0], i + offset).unwrap();
        e0.step(t, &v, &[25.0], i + offset).unwrap();
        let o = e.output();
        let err = (o.soc[0] - plant.s[0].soc).abs();
        assert!(err <= 3.0 * o.soc_sigma[0] + 1e-3, "t {t} s: |e| {err:.4} > 3σ {:.4}", 3.0 * o.soc_sigma[0]);
    }
    let (o, o0) = (e.output(), e0.output());
    // two hours of a 1 %/h offset: the SOC may be 2 % off; σ must say at least half of that,
    // and it is the declared offset that keeps σ open (without it σ ends lower)
    assert!(o.soc_sigma[0] >= 0.01, "σ after 2 h on the plateau {} < 1 %", o.soc_sigma[0]);
    assert!(o.soc_sigma[0] > o0.soc_sigma[0], "offset {} vs none {}", o.soc_sigma[0], o0.soc_sigma[0]);
}

/// Full-charge synchronisation (cell file `estimator.full_charge_*`): a CV phase at v_max whose
/// current tapers below C/18 sets the SOC to `full_charge_soc`, whatever the filter believed.
#[test]
fn cv_taper_at_full_charge_sets_the_soc() {
    let p = CellParams::from_toml_str(LFP).unwrap();
    let fc = p.estimator.clone();
    assert!(fc.full_charge_taper_c > 0.0, "the LFP cell file enables full-charge synchronisation");
    let q = p.capacity_ah;
    let mut c = config(1, 1);
    c.pack.parallel = 1;
    c.estimator.rest_current_a = 0.02 * q;
    let v_max = p.v_max_v;
    let mut e = Engine::new(c, p.clone()).unwrap();
    // start on the plateau at 60 %
    e.step(0.0, &[p.ocv(0.6, 25.0)], &[25.0], 0.0).unwrap();
    let z0 = e.output().soc[0];
    assert!((z0 - 0.6).abs() < 0.05);
    // CV phase: voltage held at v_max - 2 mV, current tapering from C/2 towards C/20
    let mut t = 0.0;
    let mut i_ch = 0.5 * q;
    while i_ch > 0.05 * q {
        t += 1.0;
        i_ch *= 0.995;
        e.step(t, &[v_max - 0.002], &[25.0], -i_ch).unwrap();
        // latched exactly when the taper threshold is crossed
        assert_eq!(e.soh.full_done[0], i_ch <= fc.full_charge_taper_c * q, "t {t}: i {i_ch}");
    }
    let after = e.output().soc[0];
    assert!((after - fc.full_charge_soc).abs() < 0.005, "after the taper: {after} vs {}", fc.full_charge_soc);
    assert!(e.output().soc_sigma[0] <= fc.full_charge_soc_sigma * 1.5);
    // no sync while discharging near v_max
    let mut e2 = Engine::new({ let mut c = config(1, 1); c.pack.parallel = 1; c.estimator.rest_current_a = 0.02 * q; c }, p.clone()).unwrap();
    e2.step(0.0, &[p.ocv(0.6, 25.0)], &[25.0], 0.0).unwrap();
    for k in 1..200 {
        e2.step(k as f64, &[v_max - 0.002], &[25.0], 0.04 * q).unwrap();
    }
    assert!(!e2.soh.full_done[0]);
}

/// End-of-discharge synchronisation (cell file `estimator.empty_*`): a discharge at C/5 from
/// full down the LFP knee sets the SOC to `empty_soc` once the compensated voltage reaches
/// `empty_ocv_v`, once per discharge, and with the full charge before it gives a capacity
/// observation: a cell with 85 % of the file's capacity is learnt on that one cycle. A
/// drive-rate discharge (1C) down the same knee takes no such point, nor does the first
/// `slowest_tau_s` of a low-rate discharge.
#[test]
fn low_rate_discharge_down_the_knee_synchronises_and_learns_capacity() {
    let p = CellParams::from_toml_str(LFP).unwrap();
    let ce = p.estimator.clone();
    assert!(ce.empty_ocv_v > 0.0, "the LFP cell file enables end-of-discharge synchronisation");
    let q = p.capacity_ah;
    let run = |rate_c: f64| {
        let mut plant = Plant::new(p.clone(), 1, 1.0, 0.6, 11);
        plant.sc[0].capacity = 0.85;
        plant.noise_v = 0.0005;
        let mut c = config(1, 1);
        c.pack.parallel = 1;
        c.estimator.rest_current_a = 0.02 * q;
        // a one-cell string's sensor: offset 0.5 % of C, noise 0.2 % of C (the accuracy
        // harness's corruption, mbms.accuracy.Corruption)
        c.estimator.current_offset_a = 0.005 * q;
        c.estimator.current_noise_a = 0.002 * q;
        let mut e = Engine::new(c, p.clone()).unwrap();
        let mut t = 0.0;
        e.step(t, &plant.voltages(0.0), &[25.0], 0.0).unwrap();
        // CC-CV charge to full (the full-charge anchor)
        let mut i = -0.5 * q;
        while -i > 0.04 * q {
            let v = plant.voltages(i);
            if v[0] >= p.v_max_v - 0.002 {
                i *= 0.99;
            }
            plant.step(i, 1.0);
            t += 1.0;
            e.step(t, &plant.voltages(i), &[25.0], i).unwrap();
        }
        assert!(e.soh.full_done[0], "the CV phase synchronised");
        // discharge at `rate_c` until the cell is at 5 % SOC
        let i = rate_c * q;
        let (mut synced_at, mut first_low) = (None, None);
        while plant.s[0].soc > 0.05 {
            plant.step(i, 1.0);
            t += 1.0;
            e.step(t, &plant.voltages(i), &[25.0], i).unwrap();
            first_low.get_or_insert(t);
            if e.soh.empty_done[0] && synced_at.is_none() {
                synced_at = Some((t, plant.s[0].soc, e.cells.z[0]));
            }
        }
        (e, synced_at, first_low.unwrap())
    };
    let (e, synced, t_low) = run(0.2);
    let (t_sync, soc_true, soc_est) = synced.expect("a C/5 discharge down the knee synchronises");
    // the settle time is the slowest RC time constant at the cell's temperature (25 °C here)
    let settle_s = p.tau1(25.0).max(if p.tau_tables().2.is_some() { p.tau2(25.0) } else { 0.0 });
    assert!(t_sync - t_low >= settle_s, "not before the settle time: {t_sync} - {t_low} < {settle_s}");
    // the ECM plant has no knee polarisation, so at the sync its SOC is the OCV inversion of
    // empty_ocv_v (the DFN's sits higher: `empty_soc`); the sync is a Kalman update weighing
    // `empty_soc_sigma` against the filter's σ, which on the steep knee is small already
    assert!((soc_true - p.soc_from_ocv(ce.empty_ocv_v, 25.0)).abs() < 0.02, "sync at true SOC {soc_true}");
    assert!((soc_est - soc_true).abs() < 0.03, "SOC after the sync {soc_est} vs {soc_true}");
    let cap = e.output().soh_capacity;
    assert!((cap - 0.85).abs() < 0.05, "capacity after one full-to-knee cycle: {cap} (true 0.85, prior 1.0)");
    // a drive-rate discharge down the same knee: no sync, no capacity observation
    let (e1, synced1, _) = run(1.0);
    assert!(synced1.is_none() && !e1.soh.empty_done[0]);
    assert_eq!(e1.output().soh_capacity, 1.0);
}

/// The full-charge SOC follows the temperature (`RestSoh::full_charge_soc`): at the cell
/// file's `t_ref_c` it is `full_charge_soc`; at 10 °C, where the NMC cell's steady-state
/// resistance near full is 1.5 × that at 25 °C, the CV phase ends 1.5 × further from full.
#[test]
fn full_charge_soc_scales_with_the_resistance_at_the_cells_temperature() {
    let p = CellParams::from_toml_str(NMC).unwrap();
    let fc = p.estimator.full_charge_soc;
    let q = p.capacity_ah;
    let after_cv = |temp_c: f64| {
        let mut c = config(1, 1);
        c.pack.parallel = 1;
        c.estimator.rest_current_a = 0.02 * q;
        let mut e = Engine::new(c, p.clone()).unwrap();
        e.step(0.0, &[p.ocv(0.9, temp_c)], &[temp_c], 0.0).unwrap();
        let (mut t, mut i_ch) = (0.0, 0.2 * q);
        while i_ch > 0.05 * q {
            t += 1.0;
            i_ch *= 0.995;
            e.step(t, &[p.v_max_v - 0.002], &[temp_c], -i_ch).unwrap();
        }
        assert!(e.soh.full_done[0], "{temp_c} °C: synchronised");
        e.cells.z[0]
    };
    let at_ref = after_cv(p.t_ref_c);
    assert!((at_ref - fc).abs() < 0.003, "at t_ref: {at_ref} vs {fc}");
    let tab = CellTables::new(&p);
    let a = tab.locate(fc);
    let steady = |t: f64| {
        let [r0, r1, r2, _] = tab.rc(a, tab.temp_sel(t));
        r0 + r1 + r2
    };
    let want = 1.0 - (1.0 - fc) * steady(10.0) / steady(p.t_ref_c);
    assert!(want < fc - 0.004, "the table makes 10 °C differ: {want}");
    let cold = after_cv(10.0);
    assert!((cold - want).abs() < 0.003, "at 10 °C: {cold} vs {want}");
}

#[test]
fn nan_and_stuck_sensors_trip_their_protection() {
    let mut c = config(4, 2);
    c.protection.sensors.stuck_samples = 5;
    let mut e = Engine::new(c, CellParams::from_toml_str(NMC).unwrap()).unwrap();
    let mut rng = Rng(5);
    let mut t = 0.0;
    let delay = 0.3;
    let mut first_bad = None;
    for step in 0..20 {
        let mut v: Vec<f64> = (0..4).map(|_| 3.7 + 0.001 * rng.n()).collect();
        if step >= 3 {
            v[2] = f64::NAN;
            first_bad.get_or_insert(t);
        }
        let temps = [25.0 + 0.01 * rng.n(), 25.0 + 0.01 * rng.n()];
        e.step(t, &v, &temps, 1.0).unwrap();
        let o = e.output();
        let tripped = o.faults.iter().any(|f| f.rule == Rule::VoltageSensor && f.index == 2 && f.level == Level::Fault);
        let due = first_bad.map_or(false, |t0| t - t0 >= delay - 1e-9);
        assert_eq!(tripped, due, "t={t}");
        if tripped {
            assert_eq!(o.action, Action::Open);
            assert_eq!((o.dcl_a, o.ccl_a), (0.0, 0.0));
        }
        t += 0.1;
    }
    // stuck temperature sensor: identical readings for 5 samples
    let mut e = Engine::new(
        {
            let mut c = config(4, 2);
            c.protection.sensors.stuck_samples = 5;
            c
        },
        CellParams::from_toml_str(NMC).unwrap(),
    )
    .unwrap();
    let mut t = 0.0;
    for _ in 0..12 {
        let v: Vec<f64> = (0..4).map(|_| 3.7 + 0.001 * rng.n()).collect();
        e.step(t, &v, &[25.0, 25.0 + 0.01 * rng.n()], 1.0).unwrap();
        t += 0.1;
    }
    assert!(e.output().faults.iter().any(|f| f.rule == Rule::TempSensor && f.index == 0));
    assert!(!e.output().faults.iter().any(|f| f.rule == Rule::TempSensor && f.index == 1));
}

#[test]
fn latch_reset_and_state_roundtrip() {
    let mut e = engine(4, 1);
    let mut t = 0.0;
    let mut v = vec![3.7; 4];
    for _ in 0..10 {
        v[1] = 4.3; // over the 4.22 V fault threshold
        e.step(t, &v, &[25.0], 0.0).unwrap();
        t += 0.1;
    }
    assert_eq!(e.output().action, Action::Open);
    e.reset_faults(t);
    assert_eq!(e.output().action, Action::Open, "condition still present: reset must not clear");
    v[1] = 3.7;
    e.step(t, &v, &[25.0], 0.0).unwrap();
    t += 0.1;
    assert_eq!(e.output().action, Action::Open, "latched until reset");
    // the latch survives export / import
    let st = e.export_state();
    let mut e2 = engine(4, 1);
    e2.import_state(&st).unwrap();
    assert_eq!(e2.output().action, Action::Open);
    assert!(e2.import_state(&st[..st.len() - 1]).is_err());
    assert!(engine(5, 1).import_state(&st).is_err());
    e2.step(t, &v, &[25.0], 0.0).unwrap();
    t += 0.1;
    e2.reset_faults(t);
    assert_eq!(e2.output().action, Action::None, "{:?}", e2.output().faults);
    assert!(e2.output().faults.is_empty());
    // the same continuation from the same state gives the same outputs
    let st = e2.export_state();
    let mut e3 = engine(4, 1);
    e3.import_state(&st).unwrap();
    // import re-anchors time (no integration over the gap): import into both
    e2.import_state(&st).unwrap();
    assert_eq!(e3.export_state(), st);
    for k in 0..20 {
        let vv: Vec<f64> = (0..4).map(|j| 3.7 - 0.001 * (k + j) as f64).collect();
        e2.step(t, &vv, &[25.0], 3.0).unwrap();
        e3.step(t, &vv, &[25.0], 3.0).unwrap();
        t += 0.1;
    }
    assert_eq!(e2.output(), e3.output());
}

#[test]
fn capacity_and_resistance_are_estimated_from_partial_cycles() {
    // plant: 10 % capacity fade, 30 % resistance growth
    let mut p = CellParams::from_toml_str(NMC).unwrap();
    // the plant is the equivalent circuit itself: a rest point's OCV carries no relaxation
    // model error (with the cell file's 600 s release its σ would be ~2.5 % of SOC, and the
    // balanced AWTLS rightly keeps such readings near the prior)
    p.estimator.model_error_relax_s = 0.0;
    let n = 2;
    let mut plant = Plant::new(p.clone(), n, 1.0, 0.9, 11);
    for sc in plant.sc.iter_mut() {
        *sc = CellScale { capacity: 0.9, resistance: 1.3 };
    }
    plant.noise_v = 0.0005;
    let mut c = config(n, 1);
    c.pack.parallel = 1;
    c.estimator.rest_time_s = 600.0;
    let mut e = Engine::new(c, p).unwrap();
    let mut t = 0.0;
    e.step(t, &plant.voltages(0.0), &[25.0], 0.0).unwrap();
    let dt = 1.0;
    // rest, partial discharge (5 A for ~40 % SOC), rest, partial charge, ... with pulses
    for cycle in 0..4 {
        let phases: [(f64, f64); 2] = if cycle % 2 == 0 { [(5.0, 1300.0), (0.0, 1800.0)] } else { [(-4.0, 1500.0), (0.0, 1800.0)] };
        let phases = [(0.0, 1800.0), phases[0], phases[1]];
        for (i, dur) in phases {
            let mut s = 0.0;
            while s < dur {
                // small pulses on the load for R0 steps
                let i_now = if i != 0.0 && ((s as i64) / 20) % 2 == 0 { i * 1.3 } else { i };
                plant.step(i_now, dt);
                t += dt;
                s += dt;
                e.step(t, &plant.voltages(i_now), &[25.0], i_now).unwrap();
            }
        }
    }
    let o = e.output();
    assert!((o.soh_capacity - 0.9).abs() < 0.03, "soh_capacity {}", o.soh_capacity);
    assert!((o.soh_resistance - 1.3).abs() < 0.1, "soh_resistance {}", o.soh_resistance);
}

/// One cell on the ECM plant at `r_plant` × the cell file's resistance, from `soc0`: 0.3 C
/// storage steps (60 s off, 60 s on: R0 observations) for `steps_s`, then `rest_s` of rest,
/// 1 s samples at 25 °C; the engine after it.
fn storage_steps(p: CellParams, c: EngineConfig, soc0: f64, r_plant: f64, steps_s: usize, rest_s: usize) -> Engine {
    storage_steps_at(p, c, soc0, r_plant, steps_s, rest_s, 25.0)
}

/// `storage_steps` with the cell (plant and sensor) at `temp_c`.
fn storage_steps_at(p: CellParams, c: EngineConfig, soc0: f64, r_plant: f64, steps_s: usize, rest_s: usize, temp_c: f64) -> Engine {
    let mut plant = Plant::new(p.clone(), 1, 1.0, soc0, 5);
    plant.sc[0] = CellScale { capacity: 1.0, resistance: r_plant };
    plant.noise_v = 0.0005;
    plant.temp_c = temp_c;
    let i_on = 0.3 * p.capacity_ah;
    let mut e = Engine::new(c, p).unwrap();
    let mut t = 0.0;
    e.step(t, &plant.voltages(0.0), &[temp_c], 0.0).unwrap();
    for k in 0..steps_s + rest_s {
        let i = if k < steps_s && (k / 60) % 2 == 1 { i_on } else { 0.0 };
        plant.step(i, 1.0);
        t += 1.0;
        e.step(t, &plant.voltages(i), &[temp_c], i).unwrap();
    }
    e
}

/// The SOH resistance learns only from steps at or above the cell file's
/// `r0_soh_min_temp_c` (below it the step model is not fitted: a fresh cell's 0 °C steps read
/// 1.08..1.20 x the model on the tuning traces), while the SOC filter's own ratio learns at
/// every temperature. An aged cell (plant 1.5 x the table) at 0 °C: the filter's ratio finds
/// it, the reported SOH ratio holds the table's 1; the same cell at 25 °C: both find it. With
/// no limit (the default) the 0 °C steps count toward the SOH ratio as well.
#[test]
fn the_soh_resistance_learns_only_inside_the_step_models_temperature_range() {
    let run = |temp_c: f64, min_c: f64| -> (f64, f64, f64) {
        let mut p = CellParams::from_toml_str(NMC).unwrap();
        p.estimator.r0_soh_min_temp_c = min_c;
        let mut c = config(1, 1);
        c.pack.parallel = 1;
        let e = storage_steps_at(p, c, 0.8, 1.5, 4_000, 0, temp_c);
        (e.soh.r0_ratio[0], e.soh.r0_soh_ratio[0], e.output().soh_resistance)
    };
    let zero_k = crate::cell_model::ABSOLUTE_ZERO_C;
    assert_eq!(crate::cell_model::CellEstimator::default().r0_soh_min_temp_c, zero_k, "a cell file without the key: no limit");
    assert_eq!(CellParams::from_toml_str(NMC).unwrap().estimator.r0_soh_min_temp_c, 5.0, "the shipped NMC file's");
    let (filter, soh, out) = run(0.0, 5.0);
    assert!((filter - 1.5).abs() < 0.1, "0 C: the filter's ratio {filter} learns");
    assert_eq!((soh, out), (1.0, 1.0), "0 C, limit 5 C: the SOH ratio holds");
    let (filter, soh, out) = run(25.0, 5.0);
    assert!((filter - 1.5).abs() < 0.1 && (soh - filter).abs() < 1e-12 && out == soh, "25 C: both learn ({filter}, {soh})");
    let (filter, soh, _) = run(0.0, zero_k);
    assert!((soh - filter).abs() < 1e-12 && (soh - 1.5).abs() < 0.1, "no limit: the 0 C steps count ({soh})");
}

/// Storage duty: the only current steps are 0.3 C on and off (issue 16: an absolute 5 A
/// threshold never fired there and an aged cell's resistance ratio stayed 1). With the cell
/// file's `r0_step_min_c` (0.2 C) the ratio converges to the plant's; with a threshold above
/// the steps no observation is taken; the threshold scales with the parallel count.
#[test]
fn resistance_is_learnt_on_storage_steps_above_the_cell_files_c_rate() {
    let run = |step_min_c: Option<f64>| -> f64 {
        let mut p = CellParams::from_toml_str(NMC).unwrap();
        if let Some(c) = step_min_c {
            p.estimator.r0_step_min_c = c;
        }
        let mut c = config(1, 1);
        c.pack.parallel = 1;
        storage_steps(p, c, 0.8, 1.5, 8_000, 0).output().soh_resistance
    };
    let p = CellParams::from_toml_str(NMC).unwrap();
    assert_eq!(p.estimator.r0_step_min_c, 0.2, "the cell file's threshold");
    assert_eq!(rest::RestSoh::r0_step_min_a(&p, 3.0), 0.2 * p.capacity_ah * 3.0);
    let learnt = run(None);
    assert!((learnt - 1.5).abs() < 0.08, "0.3 C steps, 0.2 C threshold: ratio {learnt}");
    assert_eq!(run(Some(0.4)), 1.0, "steps below the threshold give no observation");
    assert_eq!(run(Some(0.0)), 1.0, "0: no R0 learning");
}

/// A storage cell's first steps: the ratio is the running mean of its observations with the
/// R0 table as one more (soh::r0_running_gain), so twenty 0.3 C steps (ten pulses) find an
/// aged cell's resistance. The low-pass alone from the first step (gain 0.05) would still
/// read 1.37 of 1.6 after them.
#[test]
fn an_aged_cells_resistance_is_found_within_its_first_twenty_steps() {
    let mut c = config(1, 1);
    c.pack.parallel = 1;
    let e = storage_steps(CellParams::from_toml_str(NMC).unwrap(), c, 0.8, 1.6, 1200, 0);
    let r = e.output().soh_resistance;
    assert!((r - 1.6).abs() < 0.06, "resistance ratio {r} after 19 steps, plant 1.6");
}

/// The SOF takes the learnt resistance ratio only where it raises the resistance: a cell
/// whose R0 observations read below the table (a plant at 0.6 of it here; the DFN drive traces
/// read 0.6-0.8 on fresh cells) keeps the limits of the identified model, while a cell that
/// reads above it (1.5) has its limits lowered. Without the floor the 0.6 cell's peak
/// discharge limit would be about 1/0.6 of the model's.
#[test]
fn a_learnt_resistance_below_the_table_does_not_raise_the_current_limits() {
    let run = |r_plant: f64| -> (f64, f64, f64, f64) {
        let mut c = config(1, 1);
        c.pack.parallel = 1;
        // no current caps: the limits are the cell's (headroom over resistance)
        c.limits.max_discharge_a = 1e4;
        c.limits.max_charge_a = 1e4;
        c.limits.max_discharge_peak_a = 1e4;
        c.limits.max_charge_peak_a = 1e4;
        // then a 20 min rest: the RC states decay and the limits compare the resistances alone
        let e = storage_steps(CellParams::from_toml_str(NMC).unwrap(), c, 0.5, r_plant, 4_000, 1_200);
        let o = e.output();
        (o.soh_resistance, o.dcl_peak_a, o.ccl_peak_a, o.soc[0])
    };
    let (r_low, dcl_low, ccl_low, soc_low) = run(0.6);
    let (r_one, dcl_one, ccl_one, soc_one) = run(1.0);
    let (r_high, dcl_high, _, _) = run(1.5);
    assert!((r_low - 0.6).abs() < 0.08 && (r_one - 1.0).abs() < 0.08 && (r_high - 1.5).abs() < 0.1);
    assert!((soc_low - soc_one).abs() < 0.01, "same SOC: {soc_low} vs {soc_one}");
    assert!(dcl_low <= dcl_one * 1.03, "learnt 0.6 raised the peak discharge limit: {dcl_low} vs {dcl_one} A");
    assert!(ccl_low <= ccl_one * 1.03, "learnt 0.6 raised the peak charge limit: {ccl_low} vs {ccl_one} A");
    assert!(dcl_high < dcl_one * 0.85, "learnt 1.5 must lower the limit: {dcl_high} vs {dcl_one} A");
}

/// A sample stands for the period before it: N samples of rest at Δt after a load are a rest
/// of N·Δt, so the default `rest_time_s` (600 s) is reached by exactly 600 rest samples at 1 s.
#[test]
fn rest_point_after_rest_time_counting_the_first_sample_period() {
    let p = CellParams::from_toml_str(NMC).unwrap();
    let c = config(1, 1);
    assert_eq!(c.estimator.rest_time_s, 600.0, "the engine default");
    let mut e = Engine::new(c, p.clone()).unwrap();
    let v = [p.ocv(0.5, 25.0)];
    let mut t = 0.0;
    for _ in 0..10 {
        e.step(t, &v, &[25.0], 5.0).unwrap();
        t += 1.0;
    }
    for k in 1..=600 {
        e.step(t, &v, &[25.0], 0.0).unwrap();
        assert_eq!(e.soh.rest_done, k == 600, "rest sample {k}");
        t += 1.0;
    }
    assert!(e.soh.z_rest[0].is_finite(), "the rest point anchored the SOC");
}

/// A rest shorter than `rest_time_s` but of at least `rest_end_min_s` gives its rest point when
/// the load resumes, with the rest's last voltage and before the load's first sample is
/// counted; a shorter one gives none.
#[test]
fn a_short_rest_gives_its_rest_point_when_the_load_resumes() {
    let p = CellParams::from_toml_str(NMC).unwrap();
    let c = config(1, 1);
    assert_eq!(c.estimator.rest_end_min_s, 300.0, "the engine default");
    let run = |rest_samples: usize| {
        let mut e = Engine::new(c.clone(), p.clone()).unwrap();
        let mut t = 0.0;
        for _ in 0..10 {
            e.step(t, &[p.ocv(0.6, 25.0) - 0.05], &[25.0], 5.0).unwrap();
            t += 1.0;
        }
        // the rest at the OCV of 40 %
        for _ in 0..rest_samples {
            e.step(t, &[p.ocv(0.4, 25.0)], &[25.0], 0.0).unwrap();
            t += 1.0;
        }
        assert!(!e.soh.rest_done && e.soh.z_rest[0].is_nan(), "no rest point before the load resumes");
        e.step(t, &[p.ocv(0.4, 25.0) - 0.05], &[25.0], 5.0).unwrap();
        e
    };
    let e = run(300);
    let z = e.soh.z_rest[0];
    assert!((z - 0.4).abs() < 0.01, "the rest point read the rest's last voltage: {z:.4}");
    let q_first = 5.0 / e.par / 3600.0; // the load's first sample (1 s at 5 A, discharge)
    assert!((e.soh.q_since_rest_ah - q_first).abs() < 1e-12, "the load's first sample is counted after the rest point: {}", e.soh.q_since_rest_ah);
    let e = run(299);
    assert!(e.soh.z_rest[0].is_nan(), "a 299 s rest gives no rest point");
}

/// One A123 cell (1s1p) with a rest band of 2 % of a C, as the accuracy harness runs it.
fn one_lfp_cell() -> (CellParams, Engine) {
    let p = CellParams::from_toml_str(LFP).unwrap();
    let mut c = config(1, 1);
    c.pack.parallel = 1;
    c.estimator.rest_current_a = 0.02 * p.capacity_ah;
    let e = Engine::new(c, p.clone()).unwrap();
    (p, e)
}

/// A rest point is a measurement of the OCV independent of the filter: the RC1 voltage added
/// back to the rest voltage is what the load left when the rest began, decayed with τ1, not
/// the filter's present v1, which the rest's voltage updates move to explain whatever keeps
/// the voltage off the OCV of the filter's own SOC. The held-out case (lfp_h7): an LFP cell at
/// 45 % SOC, beside the OCV step between 40 and 50 %, whose estimate had drifted to 51 % under
/// load; through the rest its voltage relaxed more slowly than τ1 (the DFN's diffusion), the
/// filter's v1 took that up (6 mV after 10 min) and, added back, read the filter's 51 % back
/// to it with a 1 % σ. Here the filter is put in that state just before the rest point.
#[test]
fn a_rest_point_does_not_read_the_filters_own_soc_back() {
    let (p, mut e) = one_lfp_cell();
    let q = p.capacity_ah;
    let z_true = 0.451;
    let mut t = 0.0;
    e.step(t, &[p.ocv(0.50, 25.0)], &[25.0], 0.0).unwrap();
    for _ in 0..60 {
        t += 1.0;
        e.step(t, &[p.ocv(0.50, 25.0) - 0.04], &[25.0], q).unwrap();
    }
    // the rest: 2 mV below the OCV (not yet relaxed)
    let v_rest = [p.ocv(z_true, 25.0) - 0.002];
    for _ in 1..600 {
        t += 1.0;
        e.step(t, &v_rest, &[25.0], 0.0).unwrap();
    }
    assert!(!e.soh.rest_done);
    // the filter as on the held-out trace: SOC 51 % (σ 3.7 %), v1 holding the voltage on
    // the OCV there
    e.cells.z[0] = 0.51;
    e.cells.v1[0] = p.ocv(0.51, 25.0) - v_rest[0];
    e.cells.cov[0] = crate::soc_ekf::Cov2 { p00: 0.037f64.powi(2), p01: 0.0, p11: 1e-6 };
    t += 1.0;
    e.step(t, &v_rest, &[25.0], 0.0).unwrap();
    assert!(e.soh.rest_done, "the rest point is taken after 600 s");
    // (the rest point follows the step's outputs: the filter state is read)
    let (z, sig) = (e.cells.z[0], e.cells.cov[0].p00.sqrt());
    let err = z - z_true;
    // the 2 mV the cell is still below its OCV read as SOC: a small low bias, which the rest
    // point's σ covers
    assert!(err.abs() < 0.025, "the rest point left the SOC at {z:.3} (true {z_true})");
    assert!(err.abs() <= 3.0 * sig, "|e| {:.4} beyond 3σ {:.4}", err.abs(), 3.0 * sig);
}

/// A rest point reads the OCV from the rest's averaged samples (`rest::REST_OCV_AVG_S`), not
/// from one sample: on the A123 plateau (0.25..0.5 mV per % of SOC around 84 %) one sample's
/// noise is several % of SOC, and where it lands on a steeper part of the table its σ comes out
/// small. The held-out case (lfp_h4, seed 3): a rest sample 3.5 mV high at 83.6 % read 94.9 %
/// with a 2.7 % σ and moved the SOC 7 % the wrong way. Here the rest carries the cell monitor's
/// 2 mV noise (seeded) and its last sample, the one the rest point is taken with, is such an
/// outlier: alone it reads > 8 % off (the check below that it does is what makes the test able
/// to fail), averaged the rest reads within 1.5 %.
#[test]
fn a_rest_point_reads_the_averaged_rest_not_one_noisy_sample() {
    let (p, mut e) = one_lfp_cell();
    let q = p.capacity_ah;
    let mut plant = Plant::new(p.clone(), 1, 1.0, 0.85, 7);
    plant.noise_v = 0.0;
    let temp = [plant.temp_c];
    let mut t = 0.0;
    e.step(t, &plant.voltages(0.0), &temp, 0.0).unwrap();
    // a minute at 1C (1.7 % of SOC out), then the rest with the cell monitor's noise
    for _ in 0..60 {
        t += 1.0;
        plant.step(q, 1.0);
        e.step(t, &plant.voltages(q), &temp, q).unwrap();
    }
    plant.noise_v = 0.002;
    for _ in 1..600 {
        t += 1.0;
        plant.step(0.0, 1.0);
        e.step(t, &plant.voltages(0.0), &temp, 0.0).unwrap();
    }
    assert!(!e.soh.rest_done);
    t += 1.0;
    plant.step(0.0, 1.0);
    plant.noise_v = 0.0;
    let outlier = plant.voltages(0.0)[0] + 0.0035;
    let z_true = plant.s[0].soc;
    let alone = p.soc_from_ocv(outlier, plant.temp_c);
    assert!(alone - z_true > 0.08, "the outlier alone reads {alone:.3} (true {z_true:.3}): not the case under test");
    e.step(t, &[outlier], &temp, 0.0).unwrap();
    assert!(e.soh.rest_done, "the rest point is taken after 600 s");
    let reading = e.soh.z_rest[0];
    assert!((reading - z_true).abs() < 0.015, "the rest point read {reading:.4} (true {z_true:.4})");
    let z = e.cells.z[0];
    assert!((z - z_true).abs() < 0.015, "the rest point left the SOC at {z:.4} (true {z_true:.4})");
}

/// The model error's C-rate: the present one under discharge; the charge's peak while
/// charging (the CV phase's taper does not shrink it); in the rest band the last load released
/// with the cell file's `model_error_relax_s` (0: the present C-rate only).
#[test]
fn load_c_rate_holds_the_charge_peak_and_relaxes_at_rest() {
    use crate::soc_ekf::load_c_rate;
    let rest = 0.02;
    // discharge: the present C-rate, whatever came before and whatever the release time
    assert_eq!(load_c_rate(2.0, 0.5, rest, 1.0, 300.0), 0.5);
    assert_eq!(load_c_rate(0.2, 0.5, rest, 1.0, 300.0), 0.5);
    // charge: a CC phase at C/3 then a CV taper to C/20 keeps C/3
    let mut c = 0.0;
    for i in [-0.33, -0.33, -0.2, -0.1, -0.05] {
        c = load_c_rate(c, i, rest, 1.0, 0.0);
    }
    assert_eq!(c, 0.33);
    // a discharge ends the hold
    assert_eq!(load_c_rate(c, 0.1, rest, 1.0, 0.0), 0.1);
    // rest: released with τ, or at once with τ = 0
    let after = load_c_rate(2.0, 0.0, rest, 300.0, 300.0);
    assert!((after - 2.0 * (-1.0f64).exp()).abs() < 1e-12, "{after}");
    assert_eq!(load_c_rate(2.0, 0.01, rest, 1.0, 0.0), 0.01);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    /// Whatever the inputs (including NaN and absurd values), limits stay within 0..=maxima
    /// and every step with a confirmed fault commands Open in that step.
    #[test]
    fn limits_bounded_and_faults_open(
        seq in proptest::collection::vec(
            (prop_oneof![Just(f64::NAN), 0.0f64..5.5], -60.0f64..60.0, prop_oneof![Just(f64::NAN), -40.0f64..80.0], 0.05f64..2.0),
            1..80)
    ) {
        let mut e = engine(6, 2);
        let cfg = e.config().limits.clone();
        let mut t = 0.0;
        for (vbad, i, temp, dt) in seq {
            let v = [3.7, 3.71, vbad, 3.69, 3.7, 3.72];
            e.step(t, &v, &[25.0, temp], i).unwrap();
            let o = e.output();
            for (x, max) in [(o.dcl_a, cfg.max_discharge_a), (o.ccl_a, cfg.max_charge_a),
                             (o.dcl_peak_a, cfg.max_discharge_peak_a), (o.ccl_peak_a, cfg.max_charge_peak_a)] {
                prop_assert!(x >= 0.0 && x <= max, "{} not in 0..={}", x, max);
            }
            let has_fault = o.faults.iter().any(|f| f.level == Level::Fault);
            prop_assert_eq!(has_fault, o.action == Action::Open);
            if has_fault { prop_assert_eq!(o.dcl_a, 0.0); }
            t += dt;
        }
    }
}

#[test]
fn simd_and_scalar_paths_agree_bit_for_bit() {
    let p = CellParams::from_toml_str(NMC).unwrap();
    let n = 300; // more than two blocks, with a remainder
    let mut plant = Plant::new(p, n, 4.0, 0.7, 21);
    let mut a = engine(n, 30);
    let mut b = engine(n, 30);
    b.cells.use_avx2 = false;
    let mut t = 0.0;
    for step in 0..400 {
        let i = [25.0, -10.0, 3.0][(step / 40) % 3];
        plant.step(i, 0.1);
        let mut v = plant.voltages(i);
        if step % 97 == 0 {
            v[step % n] = f64::NAN;
        }
        let temps: Vec<f64> = (0..30).map(|s| 20.0 + s as f64 * 0.5 + 0.01 * step as f64).collect();
        a.step(t, &v, &temps, i).unwrap();
        b.step(t, &v, &temps, i).unwrap();
        assert_eq!(a.output(), b.output(), "step {step}");
        t += 0.1;
    }
}

#[test]
fn implausible_restored_state_is_dropped_latches_kept() {
    // a state with a valid layout but SOC 150 % in cell 2 and a latched over-voltage fault
    let mut e = engine(4, 1);
    let mut v = vec![3.7; 4];
    let mut t = 0.0;
    for _ in 0..10 {
        v[1] = 4.3;
        e.step(t, &v, &[25.0], 0.0).unwrap();
        t += 0.1;
    }
    assert_eq!(e.output().action, Action::Open);
    let st = patch_state(&e.export_state(), |d| d["cells"]["z"][2] = num(1.5));
    let mut e2 = engine(4, 1);
    let dropped = e2.import_state(&st).unwrap();
    assert_eq!(dropped.len(), 1, "{dropped:?}");
    assert!(dropped[0].contains("cell 2: SOC 1.5"), "{dropped:?}");
    assert_eq!(e2.output().action, Action::Open, "the latched fault survives");
    // the estimator starts from the measurement, as a fresh engine does
    let mut fresh = engine(4, 1);
    let vv = vec![3.6; 4];
    e2.step(100.0, &vv, &[25.0], 0.0).unwrap();
    fresh.step(100.0, &vv, &[25.0], 0.0).unwrap();
    assert_eq!(e2.output().soc, fresh.output().soc);
    // a capacity of 1e6 Ah is outside the band of the cell file
    let st = patch_state(&e.export_state(), |d| d["rest_soh"]["cap_ah"][0] = num(1e6));
    let dropped = engine(4, 1).import_state(&st).unwrap();
    assert!(dropped.len() == 1 && dropped[0].contains("cell 0: capacity 1000000"), "{dropped:?}");
    // a carried model failure of 10 V (σ) on a cell whose window is 1.7 V
    let st = patch_state(&e.export_state(), |d| d["cells"]["miss"][1] = num(100.0));
    let dropped = engine(4, 1).import_state(&st).unwrap();
    assert!(dropped.len() == 1 && dropped[0].contains("cell 1: carried model-failure variance 100"), "{dropped:?}");
    // the untouched state is restored whole
    assert!(engine(4, 1).import_state(&e.export_state()).unwrap().is_empty());
}

// ---- versioned state file (issue 9 item 5) ----

/// The state document with `f` applied.
fn patch_state(st: &[u8], f: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut d: serde_json::Value = serde_json::from_slice(st).unwrap();
    f(&mut d);
    serde_json::to_vec(&d).unwrap()
}

/// A number as the state file writes it (shortest round-trip decimal string).
fn num(x: f64) -> serde_json::Value {
    serde_json::Value::String(format!("{x:?}"))
}

fn get_num(v: &serde_json::Value) -> f64 {
    v.as_str().unwrap().parse().unwrap()
}

/// A state worth saving: SOC, RC, covariance, an R0 step, a latched fault, limits.
fn used_engine() -> (Engine, f64) {
    let mut e = engine(4, 1);
    let mut t = 0.0;
    for k in 0..60 {
        let mut v: Vec<f64> = (0..4).map(|j| 3.7 - 0.002 * j as f64 - 0.0005 * k as f64).collect();
        if (10..20).contains(&k) {
            v[1] = 4.3; // latched over-voltage on cell 1
        }
        let i = if k % 20 < 10 { 8.0 } else { -3.0 };
        e.step(t, &v, &[25.0], i).unwrap();
        t += 0.1;
    }
    (e, t)
}

/// Format 1 as the engine wrote it before the versioned document (rust_core/src/engine.rs at
/// main 9be3b54, `export_state`): kept here to check the migration against the layout itself.
fn format_1_record(e: &Engine) -> Vec<u8> {
    let mut w = Vec::new();
    w.extend_from_slice(b"MBMSENG1");
    w.extend_from_slice(&(e.n as u64).to_le_bytes());
    w.extend_from_slice(&(e.n_t as u64).to_le_bytes());
    w.push(e.cells.initialized as u8);
    let put = |w: &mut Vec<u8>, x: f64| w.extend_from_slice(&x.to_le_bytes());
    let (c, s) = (&e.cells, &e.soh);
    for k in 0..e.n {
        for x in [c.z[k], c.v1[k], c.v2[k], c.h[k], c.cov[k].p00, c.cov[k].p01, c.cov[k].p11, e.out.soc_cc[k], s.cap_ah[k], s.r0_ratio[k], s.z_rest[k], s.z_rest_var[k]] {
            put(&mut w, x);
        }
        for x in s.awtls[k].c {
            put(&mut w, x);
        }
    }
    let l = &e.limits;
    for x in [s.q_since_rest_ah, s.dt2_since_rest, s.time_since_rest_s, l.dcl.value, l.ccl.value, l.dcl_peak.value, l.ccl_peak.value] {
        put(&mut w, x);
    }
    let latched = e.protection.latched();
    w.extend_from_slice(&(latched.len() as u32).to_le_bytes());
    for (r, k) in latched {
        w.push(r as u8);
        w.extend_from_slice(&(k as u32).to_le_bytes());
    }
    w
}

#[test]
fn state_file_is_a_versioned_document_per_stage() {
    let (e, _) = used_engine();
    let d: serde_json::Value = serde_json::from_slice(&e.export_state()).unwrap();
    assert_eq!(d["format"], "mbms-engine-state");
    assert_eq!(d["version"], 2);
    for s in ["cells", "rest_soh", "limits", "protection"] {
        assert_eq!(d[s]["version"], 1, "{s}");
    }
    assert_eq!(d["protection"]["latched"][0]["rule"], "cell_overvoltage");
    assert_eq!(d["protection"]["latched"][0]["index"], 1);
    // "none yet" survives as NaN, every number bit for bit
    assert_eq!(d["rest_soh"]["z_rest"][0], "NaN");
    let mut e2 = engine(4, 1);
    assert!(e2.import_state(&e.export_state()).unwrap().is_empty());
    assert_eq!(e2.export_state(), e.export_state());
    assert_eq!(e2.cells.z, e.cells.z);
}

#[test]
fn newer_or_foreign_state_is_rejected_with_a_message_and_nothing_applied() {
    let (e, _) = used_engine();
    let st = e.export_state();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (patch_state(&st, |d| d["cells"]["version"] = 2.into()), "section \"cells\" has version 2; this mbms reads version 1"),
        (patch_state(&st, |d| d["limits"]["version"] = 7.into()), "section \"limits\" has version 7"),
        (patch_state(&st, |d| { d.as_object_mut().unwrap().remove("rest_soh"); }), "section \"rest_soh\" missing"),
        (patch_state(&st, |d| { d["protection"].as_object_mut().unwrap().remove("version"); }), "section \"protection\": no version number"),
        (patch_state(&st, |d| d["version"] = 3.into()), "document version Some(3)"),
        (patch_state(&st, |d| d["format"] = "something-else".into()), "format Some(\"something-else\")"),
        (patch_state(&st, |d| d["cells"]["extra"] = 1.into()), "cells.extra: unknown field `extra`"),
        (patch_state(&st, |d| d["cells"]["z"][3] = "soc".into()), "cells.z[3]"),
        (patch_state(&st, |d| d["protection"]["latched"][0]["rule"] = "cell_overheat".into()), "unknown rule \"cell_overheat\""),
        (patch_state(&st, |d| d["rest_soh"]["cap_ah"] = serde_json::json!(["1.0"])), "rest_soh.cap_ah: 1 values, expected 4"),
        (patch_state(&st, |d| d["series"] = 5.into()), "state is for 5 cells / 1 sensors, engine has 4 / 1"),
        (b"MBMSENG2\0\0\0\0".to_vec(), "not an mbms engine state"),
        (st[..st.len() - 2].to_vec(), "not a readable JSON document"),
    ];
    for (data, words) in cases {
        let mut fresh = engine(4, 1);
        let before = fresh.export_state();
        let err = fresh.import_state(&data).expect_err(words).to_string();
        assert!(err.starts_with("engine state: ") && err.contains(words), "{err:?} lacks {words:?}");
        assert_eq!(fresh.export_state(), before, "{words}: something was applied");
    }
}

#[test]
fn format_1_record_is_migrated_to_the_same_state() {
    let (e, mut t) = used_engine();
    let v1 = format_1_record(&e);
    let (mut a, mut b) = (engine(4, 1), engine(4, 1));
    assert!(a.import_state(&v1).unwrap().is_empty());
    // a format-1 record has no recent load (rest_soh.load_c, newer): it migrates as relaxed;
    // nor R0 observation counts (rest_soh.r0_n, newer): its ratio counts as learnt, as a
    // current-format file without them; nor the SOH resistance ratio and its count
    // (rest_soh.r0_soh_ratio, r0_soh_n, newer): they restore the filter's; nor the σ's
    // consider sensitivities (cells.sens and cells.sens_tau, newer): they restore 0, as a
    // current-format file without them
    let current = patch_state(&e.export_state(), |d| {
        d["rest_soh"]["load_c"] = num(0.0);
        d["rest_soh"].as_object_mut().unwrap().remove("r0_n");
        d["rest_soh"].as_object_mut().unwrap().remove("r0_soh_ratio");
        d["rest_soh"].as_object_mut().unwrap().remove("r0_soh_n");
        d["cells"].as_object_mut().unwrap().remove("sens");
        d["cells"].as_object_mut().unwrap().remove("sens_tau");
    });
    assert!(b.import_state(&current).unwrap().is_empty());
    assert_eq!(a.export_state(), b.export_state());
    assert_eq!(a.output().action, Action::Open, "the latched fault migrates");
    for k in 0..30 {
        let v: Vec<f64> = (0..4).map(|j| 3.65 - 0.001 * (k + j) as f64).collect();
        a.step(t, &v, &[25.0], 4.0).unwrap();
        b.step(t, &v, &[25.0], 4.0).unwrap();
        t += 0.1;
    }
    assert_eq!(a.output(), b.output());
    // a damaged or foreign format-1 record is refused, not misread
    assert!(engine(4, 1).import_state(&v1[..v1.len() - 1]).unwrap_err().to_string().contains("format 1: truncated fault list"));
    assert!(engine(5, 1).import_state(&v1).unwrap_err().to_string().contains("state is for 4 cells / 1 sensors, engine has 5 / 1"));
    let mut trailing = v1.clone();
    trailing.push(0);
    assert!(engine(4, 1).import_state(&trailing).unwrap_err().to_string().contains("format 1: trailing bytes"));
}

/// The RC polarisation's consider term (cell file `rc_polarisation_rel_error`): after a load
/// near the LFP knee, a cell whose overpotential relaxes more slowly than the circuit's RC
/// pair is read as SOC by the filter. The term leaves every estimate as it is and widens the
/// reported σ by how far the estimate moved on the RC model, so that the error stays inside
/// 3σ where without it σ sat at the floor.
#[test]
fn the_rc_polarisation_consider_term_widens_sigma_only() {
    let mut p = CellParams::from_toml_str(LFP).unwrap();
    assert!(p.estimator.rc_polarisation_rel_error > 0.0, "on in the LFP cell file");
    let q = p.capacity_ah;
    let run = |rel: f64, p: &mut CellParams| {
        p.estimator.rc_polarisation_rel_error = rel;
        let mut e = filter_alone(p.clone());
        let mut plant = Plant::new(p.clone(), 1, 1.0, 0.22, 3);
        plant.noise_v = 0.0;
        let mut out = Vec::new();
        let mut t = 0.0;
        // a rest at 22 %, a 1C discharge into the knee, then a rest; the cell's extra
        // overpotential (the diffusion the one-RC model misses: 0.2..0.5 V on the held-out
        // lfp_h7 after 2.6C pulses) builds to 0.25 V and relaxes with 400 s
        let mut extra = 0.0;
        for k in 0..1500 {
            let i = if (300..600).contains(&k) { q } else { 0.0 };
            let target = if i > 0.0 { 0.25 } else { 0.0 };
            extra += (target - extra) * (1.0 - (-1.0f64 / 400.0).exp());
            plant.step(i, 1.0);
            let v = plant.voltages(i)[0] - extra;
            e.step(t, &[v], &[25.0], i).unwrap();
            let r = e.output();
            out.push((r.soc[0], r.soc_sigma[0], plant.s[0].soc));
            t += 1.0;
        }
        out
    };
    let plain = run(0.0, &mut p);
    let rel = CellParams::from_toml_str(LFP).unwrap().estimator.rc_polarisation_rel_error;
    let consider = run(rel, &mut p);
    consider_widens_sigma_only(&plain, &consider, 600, "the amplitude term");
}

/// A one-cell engine of `p` with no rest point (the filter alone), rest band C/50.
fn filter_alone(p: CellParams) -> Engine {
    let mut c = config(1, 1);
    c.pack.parallel = 1;
    c.estimator.rest_current_a = 0.02 * p.capacity_ah;
    c.estimator.rest_time_s = 1e9;
    c.estimator.rest_end_min_s = 0.0;
    Engine::new(c, p).unwrap()
}

/// A consider term's runs of (SOC, σ, true SOC) without (`plain`) and with it (`consider`):
/// every estimate the same, σ only wider, and from step `from` on (the rest after the load)
/// an error beyond 3σ without the term that the term brings inside.
fn consider_widens_sigma_only(plain: &[(f64, f64, f64)], consider: &[(f64, f64, f64)], from: usize, what: &str) {
    let mut widened = 0;
    for (k, (a, b)) in plain.iter().zip(consider).enumerate() {
        assert_eq!(a.0, b.0, "step {k}: the estimate is the same");
        assert!(b.1 >= a.1, "step {k}: σ only widens");
        widened += (b.1 > a.1 * 1.01) as usize;
    }
    let worst = |o: &[(f64, f64, f64)]| o[from..].iter().map(|(z, s, zt)| (z - zt).abs() / s).fold(0.0f64, f64::max);
    let (w_plain, w_consider) = (worst(plain), worst(consider));
    eprintln!("worst |e|/σ in the rest: plain {w_plain:.2}, with {what} {w_consider:.2}; widened on {widened} steps");
    assert!(w_plain > 3.0, "the case is one the plain σ does not cover: {w_plain:.2}");
    assert!(w_consider <= 3.0, "{what} covers it: {w_consider:.2}");
}

/// The RC time constants' consider term (cell file `rc_time_constant_rel_error`): a cell whose
/// RC pair relaxes three times slower than the circuit's (its τ1 × 3, everything else the
/// file's) after 150 s at 2C from 22 % SOC, into the LFP knee. The filter reads the slower recovery as
/// SOC; the amplitude term (`rc_polarisation_rel_error`, off here) knows nothing of it. The
/// τ term leaves every estimate as it is and widens σ until the error is inside 3σ.
#[test]
fn the_rc_time_constant_consider_term_widens_sigma_only() {
    let file = CellParams::from_toml_str(LFP).unwrap();
    let rel = file.estimator.rc_time_constant_rel_error;
    assert!(rel > 0.0, "on in the LFP cell file");
    let q = file.capacity_ah;
    let slow_toml: String = LFP
        .lines()
        .map(|l| match l.strip_prefix("tau1_s = [").and_then(|r| r.strip_suffix(']')) {
            Some(vals) => {
                let tripled: Vec<String> = vals.split(',').map(|x| (3.0 * x.trim().parse::<f64>().unwrap()).to_string()).collect();
                format!("tau1_s = [{}]", tripled.join(", "))
            }
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let slow = CellParams::from_toml_str(&slow_toml).unwrap();
    assert!(slow.tau1(25.0) > 2.9 * file.tau1(25.0));
    let run = |eps: f64| {
        let mut p = file.clone();
        p.estimator.rc_polarisation_rel_error = 0.0;
        p.estimator.rc_time_constant_rel_error = eps;
        let mut e = filter_alone(p);
        let mut plant = Plant::new(slow.clone(), 1, 1.0, 0.22, 3);
        plant.noise_v = 0.0;
        let mut out = Vec::new();
        for k in 0..1800 {
            let i = if (300..450).contains(&k) { 2.0 * q } else { 0.0 };
            plant.step(i, 1.0);
            e.step(k as f64, &plant.voltages(i), &[25.0], i).unwrap();
            let r = e.output();
            out.push((r.soc[0], r.soc_sigma[0], plant.s[0].soc));
        }
        out
    };
    let (plain, consider) = (run(0.0), run(rel));
    consider_widens_sigma_only(&plain, &consider, 450, "the τ term");
}

/// Runs an engine on `engine_cell` against a 4-cell plant of `plant_cell` at `temp_c`, from a
/// rest at `soc0`, through `profile` ((string current A, seconds) segments, dt 1 s); returns
/// the largest |SOC error| over the cells at the end of each segment.
fn track(plant_cell: &CellParams, engine_cell: &CellParams, temp_c: f64, soc0: f64, profile: &[(f64, usize)]) -> Vec<f64> {
    let n = 4;
    let mut plant = Plant::new(plant_cell.clone(), n, 1.0, soc0, 5);
    plant.temp_c = temp_c;
    let mut c = config(n, 1);
    c.pack.parallel = 1;
    let mut e = Engine::new(c, engine_cell.clone()).unwrap();
    let err = |e: &Engine, plant: &Plant| (0..n).map(|k| (e.output().soc[k] - plant.s[k].soc).abs()).fold(0.0, f64::max);
    let mut t = 0.0;
    e.step(t, &plant.voltages(0.0), &[temp_c], 0.0).unwrap();
    let mut out = vec![err(&e, &plant)];
    for &(i, secs) in profile {
        for _ in 0..secs {
            plant.step(i, 1.0);
            t += 1.0;
            e.step(t, &plant.voltages(i), &[temp_c], i).unwrap();
        }
        out.push(err(&e, &plant));
    }
    out
}

/// LFP has an OCV hysteresis of tens of mV between charge and discharge (Plett's one-state
/// model, `[hysteresis]` of the cell file): on the A123 file's slope at 30..40 % SOC
/// (2.5..5 mV per %) 20 mV is 4..8 % of SOC. A cell with it, tracked by the engine with the
/// same cell file, reads its rests right after a discharge and after a charge; the same engine
/// without the hysteresis state reads them off by the hysteresis voltage.
#[test]
fn the_hysteresis_state_reads_rests_after_charge_and_discharge() {
    let plain = CellParams::from_toml_str(LFP).unwrap();
    let hyst = CellParams::from_toml_str(&format!("{LFP}\n[hysteresis]\nm_v = 0.02\ngamma = 100\n")).unwrap();
    assert!(hyst.hysteresis_m_v > 0.0 && plain.hysteresis_m_v == 0.0);
    // 1C discharge 0.45 -> 0.30, 20 min rest (a rest point), 1C charge back to 0.40, 20 min rest
    let profile = [(2.3, 540), (0.0, 1200), (-2.3, 360), (0.0, 1200)];
    let with = track(&hyst, &hyst, 25.0, 0.45, &profile);
    let without = track(&hyst, &plain, 25.0, 0.45, &profile);
    // (measured: with 0.8, 0.8, 0.04, 0.13, 0.04 %; without 0.8, 0.9, 5.4, 5.4, 29 %: after
    // the charge the plateau reads the +20 mV as 30 % more SOC)
    assert!(with.iter().all(|&e| e < 0.015), "with the hysteresis state: {with:?}");
    for end_of_rest in [2, 4] {
        assert!(without[end_of_rest] > 0.04 && without[end_of_rest] > 10.0 * with[end_of_rest], "{without:?} vs {with:?}");
    }
}

/// The OCV moves with temperature by the entropic coefficient dOCV/dT (`docv_dt_v_per_k` of
/// the cell file; the identified files' are 0): a cell at 45 °C whose OCV is 0.3 mV/K above
/// the 25 °C table reads, on LFP's shallow slope at 40 % SOC (2.6 mV per %), about 2 % high
/// without the entropic term. The engine with it reads the rest right from its first sample on.
#[test]
fn the_entropic_term_reads_a_warm_cells_rest() {
    let plain = CellParams::from_toml_str(LFP).unwrap();
    let zeros = format!("docv_dt_v_per_k = [{}]", vec!["0"; 101].join(", "));
    assert!(LFP.contains(&zeros));
    let warm = CellParams::from_toml_str(&LFP.replace(&zeros, &format!("docv_dt_v_per_k = [{}]", vec!["0.0003"; 101].join(", ")))).unwrap();
    let profile = [(0.0, 900), (2.3, 180), (0.0, 1200)];
    let with = track(&warm, &warm, 45.0, 0.40, &profile);
    let without = track(&warm, &plain, 45.0, 0.40, &profile);
    // (measured: with 0.34, 0.12, 0.08, 0.05 %; without 3.4, 2.8, 2.9, 1.2 %)
    assert!(with.iter().all(|&e| e < 0.005), "with the entropic term: {with:?}");
    assert!(without[0] > 0.02 && without[1] > 0.02, "the first sample and the first rest: {without:?}");
    assert!(without[3] > 5.0 * with[3], "after a discharge and a rest: {without:?} vs {with:?}");
    // at the table's temperature the term is 0: the plain file reads the same cell right
    let at_ref = track(&warm, &plain, 25.0, 0.40, &profile);
    assert!(at_ref.iter().all(|&e| e < 0.005), "at 25 °C: {at_ref:?}");
}
