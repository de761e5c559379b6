//! A small seeded PRNG: xoshiro256** (Blackman & Vigna, "Scrambled linear pseudorandom number
//! generators", ACM TOMS 2021) seeded through SplitMix64, with normals from the ziggurat method
//! (Marsaglia & Tsang, "The Ziggurat Method for Generating Random Variables", J. Stat. Softw.
//! 5(8), 2000; 128 layers, layer index and value taken from separate bits, which avoids the
//! correlation noted by Doornik 2005). Sensor noise draws thousands of normals per step, and
//! the ziggurat needs a logarithm only in ~1 % of the draws, where Box-Muller needs one each.
//! The one PRNG module of the simulators: the plant's sensor noise and variation (`Rng`), the
//! protocol and fast simulators' schedules and network fates (`SplitMix64`). No OS randomness
//! anywhere: everything follows from the seed.

use std::sync::OnceLock;

/// SplitMix64 (Steele, Lea & Flood, OOPSLA 2014), defined once in the protocol crate (the
/// peer's request jitter needs it): here it expands a seed into state words, and the
/// simulators draw their schedules and network fates from it directly.
pub use mbms_consensus::prng::SplitMix64;

#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A generator for stream `stream` of `seed` (independent streams per string and purpose).
    pub fn new(seed: u64, stream: u64) -> Self {
        let mut sm = SplitMix64::new(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        let s = [sm.next_u64(), sm.next_u64(), sm.next_u64(), sm.next_u64()];
        Self { s }
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) with 53 bits.
    #[inline]
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal.
    #[inline(always)]
    pub fn normal(&mut self) -> f64 {
        let z = zig();
        let u = self.next_u64();
        let hz = u as u32 as i32;
        let iz = ((u >> 32) & 127) as usize;
        if hz.unsigned_abs() < z.k[iz] {
            return hz as f64 * z.w[iz];
        }
        self.normal_slow(hz, iz)
    }

    /// The wedges and the tail of the ziggurat (~1 % of the draws).
    #[cold]
    #[inline(never)]
    fn normal_slow(&mut self, mut hz: i32, mut iz: usize) -> f64 {
        let z = zig();
        loop {
            let x = hz as f64 * z.w[iz];
            if iz == 0 {
                // the tail beyond R (Marsaglia 1964)
                loop {
                    let x = -(1.0 - self.uniform()).ln() / ZIG_R;
                    let y = -(1.0 - self.uniform()).ln();
                    if y + y >= x * x {
                        return if hz > 0 { ZIG_R + x } else { -ZIG_R - x };
                    }
                }
            }
            if z.f[iz] + self.uniform() * (z.f[iz - 1] - z.f[iz]) < (-0.5 * x * x).exp() {
                return x;
            }
            let u = self.next_u64();
            hz = u as u32 as i32;
            iz = ((u >> 32) & 127) as usize;
            if hz.unsigned_abs() < z.k[iz] {
                return hz as f64 * z.w[iz];
            }
        }
    }
}

const ZIG_R: f64 = 3.442619855899;
const ZIG_V: f64 = 9.91256303526217e-3;

struct Ziggurat {
    k: [u32; 128],
    w: [f64; 128],
    f: [f64; 128],
}

/// The layer tables of Marsaglia & Tsang's `zigset` (pure function of the constants).
fn zig() -> &'static Ziggurat {
    static Z: OnceLock<Ziggurat> = OnceLock::new();
    Z.get_or_init(|| {
        let m1 = 2147483648.0f64;
        let mut z = Ziggurat { k: [0; 128], w: [0.0; 128], f: [0.0; 128] };
        let mut dn = ZIG_R;
        let mut tn = dn;
        let q = ZIG_V / (-0.5 * dn * dn).exp();
        z.k[0] = ((dn / q) * m1) as u32;
        z.k[1] = 0;
        z.w[0] = q / m1;
        z.w[127] = dn / m1;
        z.f[0] = 1.0;
        z.f[127] = (-0.5 * dn * dn).exp();
        for i in (1..=126).rev() {
            dn = (-2.0 * (ZIG_V / dn + (-0.5 * dn * dn).exp()).ln()).sqrt();
            z.k[i + 1] = ((dn / tn) * m1) as u32;
            tn = dn;
            z.f[i] = (-0.5 * dn * dn).exp();
            z.w[i] = dn / m1;
        }
        z
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_reference_values() {
        // Reference output of Vigna's splitmix64.c for seed 1234567.
        let mut sm = SplitMix64::new(1234567);
        assert_eq!(sm.next_u64(), 6457827717110365317);
        assert_eq!(sm.next_u64(), 3203168211198807973);
    }

    #[test]
    fn normals_have_unit_moments_and_are_reproducible() {
        let mut a = Rng::new(7, 3);
        let mut b = Rng::new(7, 3);
        let n = 1_000_000;
        let (mut m, mut m2, mut m4, mut tail3, mut tail1) = (0.0, 0.0, 0.0, 0usize, 0usize);
        for _ in 0..n {
            let z = a.normal();
            assert_eq!(z, b.normal());
            m += z;
            m2 += z * z;
            m4 += z * z * z * z;
            tail3 += (z.abs() > 3.0) as usize;
            tail1 += (z > 1.0) as usize;
        }
        let nf = n as f64;
        let (m, m2, m4) = (m / nf, m2 / nf, m4 / nf);
        assert!(m.abs() < 0.005, "mean {m}");
        assert!((m2 - 1.0).abs() < 0.005, "variance {m2}");
        assert!((m4 - 3.0).abs() < 0.05, "fourth moment {m4}");
        // P(|z| > 3) = 0.0026998, P(z > 1) = 0.158655
        assert!((tail3 as f64 / nf - 0.0026998).abs() < 0.0003, "tail {}", tail3 as f64 / nf);
        assert!((tail1 as f64 / nf - 0.158655).abs() < 0.002, "P(z>1) {}", tail1 as f64 / nf);
        let mut c = Rng::new(7, 4);
        assert_ne!(Rng::new(7, 3).next_u64(), c.next_u64());
    }
}
