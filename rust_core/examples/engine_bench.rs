//! Quick timing of the engine step (development aid for profiling with `perf`; the reported
//! benchmark is `mbms bench core`, which runs Rust and numpy side by side). The inputs follow
//! that benchmark's (python/mbms/bench/core.py): SOC spread, dynamic current profile, ±1 mV
//! voltage noise, 0.1 °C temperature noise, one sensor per 4 cells, inputs generated before
//! the timed loop. Usage: `engine_bench [cells...]`; env CELL_STEPS (default 2e7).
use mbms_core::cell_model::CellParams;
use mbms_core::engine::{Engine, EngineConfig};
use std::time::Instant;

/// xorshift64* and Box-Muller: deterministic noise without a dependency.
struct Rng(u64);
impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545F4914F6CDD1D) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (a, b) = (self.uniform(), self.uniform());
        (-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()
    }
}

fn main() {
    let pack = include_str!("../../python/mbms/data/packs/example_pack.toml");
    let cell = CellParams::from_toml_str(include_str!("../../python/mbms/data/cells/lg_m50_nmc.toml")).unwrap();
    let sizes: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().unwrap()).collect();
    let sizes = if sizes.is_empty() { vec![1000usize, 10000] } else { sizes };
    let cell_steps: f64 = std::env::var("CELL_STEPS").ok().map_or(2e7, |s| s.parse().unwrap());
    for &n in &sizes {
        let mut c = EngineConfig::from_toml_str(pack).unwrap();
        c.pack.series = n;
        let nt = (n / 4).max(1);
        c.pack.temp_sensors = nt;
        c.estimator.rest_time_s = 1e9;
        let mut e = Engine::new(c, cell.clone()).unwrap();
        let steps = ((cell_steps / n as f64) as usize).max(20) + 1;
        let mut rng = Rng(0x9E3779B97F4A7C15);
        let ocv0: Vec<f64> = (0..n).map(|_| 3.70 + 0.03 * rng.uniform()).collect();
        let profile = [20.0, 5.0, -8.0, 30.0, 12.0, -4.0];
        let i: Vec<f64> = (0..steps).map(|s| profile[(s / 50) % profile.len()]).collect();
        // inputs of at most 256 distinct steps, cycled (keeps generation out of a profile)
        let rows = steps.min(256);
        let mut v = vec![0.0; rows * n];
        let mut tc = vec![0.0; rows * nt];
        for s in 0..rows {
            for k in 0..n {
                v[s * n + k] = ocv0[k] - 0.00625 * i[s] - 2e-6 * s as f64 + 0.001 * rng.normal();
            }
            for k in 0..nt {
                tc[s * nt + k] = 25.0 + 0.1 * rng.normal();
            }
        }
        e.step(0.0, &v[..n], &tc[..nt], i[0]).unwrap();
        // minimum over short repetitions: robust against other load on a shared machine
        let reps = 30;
        let per_rep = ((steps - 1) / reps).max(1);
        let mut best = f64::INFINITY;
        let mut s = 1;
        for _ in 0..reps {
            let t0 = Instant::now();
            for _ in 0..per_rep {
                let r = s % rows;
                e.step(0.1 * s as f64, &v[r * n..(r + 1) * n], &tc[r * nt..(r + 1) * nt], i[s % steps]).unwrap();
                s += 1;
            }
            best = best.min(t0.elapsed().as_nanos() as f64 / (per_rep * n) as f64);
        }
        let ns = best;
        println!("{n:6} cells: {ns:.1} ns/cell-step, soc_mean {:.6}", e.output().soc_mean);
    }
}
