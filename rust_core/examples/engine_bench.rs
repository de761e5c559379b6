//! Quick timing of the engine step (development aid; the reported benchmark is
//! `mbms bench core`, which runs Rust and numpy side by side).
use mbms_core::cell_model::CellParams;
use mbms_core::engine::{Engine, EngineConfig};
use std::time::Instant;

fn main() {
    let pack = include_str!("../../python/mbms/data/packs/example_pack.toml");
    let cell = CellParams::from_toml_str(include_str!("../../python/mbms/data/cells/lg_m50_nmc.toml")).unwrap();
    let sizes: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().unwrap()).collect();
    let sizes = if sizes.is_empty() { vec![16usize, 1000, 10000] } else { sizes };
    for &n in &sizes {
        let mut c = EngineConfig::from_toml_str(pack).unwrap();
        c.pack.series = n;
        let nt: usize = std::env::var("NT_DIV").ok().map_or((n / 4).max(1), |d| (n / d.parse::<usize>().unwrap()).max(1)); c.pack.temp_sensors = nt;
        let mut e = Engine::new(c, cell.clone()).unwrap();
        let mut v: Vec<f64> = (0..n).map(|k| 3.7 + 0.0001 * (k % 17) as f64).collect();
        let mut temps = vec![25.0; nt];
        let steps = (20_000_000 / n).max(50);
        let mut t = 0.0;
        e.step(t, &v, &temps, 0.0).unwrap();
        let t0 = Instant::now();
        for s in 0..steps {
            t += 0.1;
            let i = if s % 50 < 25 { 20.0 } else { -5.0 };
            for (k, x) in temps.iter_mut().enumerate() {
                *x = 25.0 + 0.01 * ((k + s) % 7) as f64;
            }
            for (k, x) in v.iter_mut().enumerate() {
                *x = 3.7 + 0.0001 * ((k + s) % 17) as f64;
            }
            e.step(t, &v, &temps, i).unwrap();
        }
        let ns = t0.elapsed().as_nanos() as f64 / (steps * n) as f64;
        println!("{n:6} cells: {ns:.1} ns/cell-step (incl. input generation), action {:?}", e.output().action);
    }
}
