//! Branch-free `ln` for f32 that the compiler vectorises (libm's `logf` is a scalar call: at 128
//! bands x 100 frames per second it was the largest cost of the fbank).

/// Natural logarithm of a positive, finite, normal `x` (the front ends floor their input at
/// `f32::EPSILON` or `1e-10` first): `x = m 2^e` with `m` in [sqrt(1/2), sqrt(2)), and Cephes'
/// `logf` polynomial in `m - 1`. Within 2 ulp of `f32::ln` on normal inputs (tested).
#[inline(always)]
pub fn ln_f32(x: f32) -> f32 {
    let bits = x.to_bits();
    // Exponent and mantissa in [1, 2).
    let mut e = ((bits >> 23) & 0xff) as i32 - 127;
    let mut m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    // Move m into [sqrt(1/2), sqrt(2)) (branch-free select).
    let big = m > std::f32::consts::SQRT_2;
    m = if big { m * 0.5 } else { m };
    e += big as i32;
    let f = m - 1.0;
    let z = f * f;
    let mut p = 7.037_683_6e-2_f32;
    p = p.mul_add(f, -1.151_461e-1);
    p = p.mul_add(f, 1.167_699_9e-1);
    p = p.mul_add(f, -1.242_014_1e-1);
    p = p.mul_add(f, 1.424_932_3e-1);
    p = p.mul_add(f, -1.666_805_8e-1);
    p = p.mul_add(f, 2.000_071_4e-1);
    p = p.mul_add(f, -2.499_999_4e-1);
    p = p.mul_add(f, 3.333_333e-1);
    let e = e as f32;
    let mut y = f * z * p;
    y = e.mul_add(-2.121_944_4e-4, y);
    y = z.mul_add(-0.5, y);
    let r = f + y;
    e.mul_add(0.693_359_4, r)
}

/// `values[i] = ln(max(values[i], floor))`, with AVX2 + FMA where the CPU has them.
pub fn ln_floor_in_place(values: &mut [f32], floor: f32) {
    #[cfg(target_arch = "x86_64")]
    match tutti_cpu::level() {
        // SAFETY (both): the CPU supports the features the function is compiled for.
        tutti_cpu::Level::Avx512 => return unsafe { ln_floor_avx512(values, floor) },
        tutti_cpu::Level::Avx2 => return unsafe { ln_floor_avx2(values, floor) },
        tutti_cpu::Level::Portable => {}
    }
    ln_floor_portable(values, floor);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
unsafe fn ln_floor_avx512(values: &mut [f32], floor: f32) {
    ln_floor_portable(values, floor);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn ln_floor_avx2(values: &mut [f32], floor: f32) {
    ln_floor_portable(values, floor);
}

#[inline(always)]
fn ln_floor_portable(values: &mut [f32], floor: f32) {
    for v in values.iter_mut() {
        let x = if *v > floor { *v } else { floor };
        *v = ln_f32(x);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ln_is_within_two_ulp_on_normal_inputs() {
        let mut worst = 0.0f64;
        let mut x = f32::MIN_POSITIVE;
        while x < 1e30 {
            let reference = (x as f64).ln();
            let error = (ln_f32(x) as f64 - reference).abs();
            // ulp of the result (absolute near ln x = 0, where the result is tiny).
            let ulp = (reference.abs() as f32).max(1e-7) as f64 * f32::EPSILON as f64;
            worst = worst.max(error / ulp);
            x *= 1.000_37;
        }
        assert!(worst <= 2.0, "{worst} ulp");
        // The vectorised slice path agrees with the scalar one, floor included.
        let mut values = vec![0.0f32, -1.0, 1e-12, 0.5, 1.0, 2.0, 1e6];
        ln_floor_in_place(&mut values, 1e-10);
        let expected = [1e-10f32, 1e-10, 1e-10, 0.5, 1.0, 2.0, 1e6].map(ln_f32);
        assert_eq!(values, expected);
        // Negative control: a wrong constant is caught.
        assert!((ln_f32(3.0) * 1.0001 - 3.0f32.ln()).abs() > 1e-5);
    }
}
