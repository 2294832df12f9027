//! The one pass the guard makes over every input and output: sum and sum of squares as f64,
//! and whether any value fails a range test, in eight lanes of a fixed order.
//!
//! The order is the contract: value `i` of each full group of eight is added to lane `i`,
//! the values after the last full group go to lane 0 in turn, and the lanes are summed
//! pairwise at the end (`((0+1)+(2+3))+((4+5)+(6+7))`). Every path follows it, so the same
//! values give the same bits everywhere: f32 tensors take AVX on x86-64 cores that have it and
//! NEON on aarch64 (products and sums rounded one at a time, never fused, as in plain code);
//! every other case takes the plain lanes. The daemon is built for size (`opt-level = "s"`),
//! where the compiler vectorises nothing by itself; a convnet's 12 288 input values took
//! about 34 µs in plain lanes.

/// Lanes per group of values.
const LANES: usize = 8;

/// Sums of a pass in progress: the eight lanes of the sum and of the sum of squares, and
/// whether every value so far passed the range test.
struct Lanes {
    sum: [f64; LANES],
    sum_sq: [f64; LANES],
    inside: bool,
}

impl Lanes {
    /// Adds `rest` (the values after the last full group) to lane 0, then sums the lanes:
    /// `(sum, sum of squares, whether any value failed the range test)`.
    fn finish<T: Copy>(
        mut self,
        rest: &[T],
        as_f64: impl Fn(T) -> f64,
        low: f64,
        high: f64,
    ) -> (f64, f64, bool) {
        for &value in rest {
            let x = as_f64(value);
            self.sum[0] += x;
            self.sum_sq[0] += x * x;
            self.inside &= (x >= low) & (x <= high);
        }
        let total =
            |l: [f64; LANES]| ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
        (total(self.sum), total(self.sum_sq), !self.inside)
    }
}

/// Sum and sum of squares of `values` as f64, and whether any fails `low <= x <= high` (NaN
/// fails), in the lanes of the module's order.
pub(super) fn sums_within<T: Copy>(
    values: &[T],
    as_f64: impl Fn(T) -> f64 + Copy,
    low: f64,
    high: f64,
) -> (f64, f64, bool) {
    let groups = values.len() / LANES * LANES;
    let (grouped, rest) = values.split_at(groups);
    plain_lanes(grouped, as_f64, low, high).finish(rest, as_f64, low, high)
}

/// [`sums_within`] for f32 values, on the widest path this CPU has.
pub(super) fn sums_within_f32(values: &[f32], low: f64, high: f64) -> (f64, f64, bool) {
    let groups = values.len() / LANES * LANES;
    let (grouped, rest) = values.split_at(groups);
    simd_lanes_f32(grouped, low, high)
        .unwrap_or_else(|| plain_lanes(grouped, f64::from, low, high))
        .finish(rest, f64::from, low, high)
}

#[cfg(target_arch = "x86_64")]
fn simd_lanes_f32(grouped: &[f32], low: f64, high: f64) -> Option<Lanes> {
    if !std::arch::is_x86_feature_detected!("avx") {
        return None;
    }
    // SAFETY: the CPU has AVX, checked on the line above, which is all `avx_lanes_f32` needs.
    Some(unsafe { avx_lanes_f32(grouped, low, high) })
}

#[cfg(target_arch = "aarch64")]
fn simd_lanes_f32(grouped: &[f32], low: f64, high: f64) -> Option<Lanes> {
    Some(neon_lanes_f32(grouped, low, high))
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn simd_lanes_f32(_: &[f32], _: f64, _: f64) -> Option<Lanes> {
    None
}

/// The lanes of `grouped` (whole groups of eight) in plain code. The lanes are named
/// variables: at `opt-level = "s"` an array of lanes goes through memory on every addition.
fn plain_lanes<T: Copy>(grouped: &[T], as_f64: impl Fn(T) -> f64, low: f64, high: f64) -> Lanes {
    let z = 0.0f64;
    let (mut s0, mut s1, mut s2, mut s3, mut s4, mut s5, mut s6, mut s7) = (z, z, z, z, z, z, z, z);
    let (mut q0, mut q1, mut q2, mut q3, mut q4, mut q5, mut q6, mut q7) = (z, z, z, z, z, z, z, z);
    let mut inside = true;
    let within = |x: f64| (x >= low) & (x <= high);
    for g in grouped.chunks_exact(LANES) {
        let (a, b, c, d) = (as_f64(g[0]), as_f64(g[1]), as_f64(g[2]), as_f64(g[3]));
        let (e, f, h, i) = (as_f64(g[4]), as_f64(g[5]), as_f64(g[6]), as_f64(g[7]));
        (s0, s1, s2, s3) = (s0 + a, s1 + b, s2 + c, s3 + d);
        (s4, s5, s6, s7) = (s4 + e, s5 + f, s6 + h, s7 + i);
        (q0, q1, q2, q3) = (q0 + a * a, q1 + b * b, q2 + c * c, q3 + d * d);
        (q4, q5, q6, q7) = (q4 + e * e, q5 + f * f, q6 + h * h, q7 + i * i);
        inside &= within(a) & within(b) & within(c) & within(d);
        inside &= within(e) & within(f) & within(h) & within(i);
    }
    Lanes {
        sum: [s0, s1, s2, s3, s4, s5, s6, s7],
        sum_sq: [q0, q1, q2, q3, q4, q5, q6, q7],
        inside,
    }
}

/// The lanes of `grouped` (whole groups of eight) with AVX: a group's eight f32 become two
/// vectors of four f64 (lanes 0–3 and 4–7); products and sums are separate instructions,
/// rounded one at a time like the plain lanes (nothing here enables FMA).
///
/// # Safety
///
/// The CPU must have AVX.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn avx_lanes_f32(grouped: &[f32], low: f64, high: f64) -> Lanes {
    use std::arch::x86_64::*;
    let (low_v, high_v) = (_mm256_set1_pd(low), _mm256_set1_pd(high));
    let (mut s0, mut s1) = (_mm256_setzero_pd(), _mm256_setzero_pd());
    let (mut q0, mut q1) = (_mm256_setzero_pd(), _mm256_setzero_pd());
    let mut inside = _mm256_cmp_pd::<_CMP_TRUE_UQ>(s0, s0);
    for g in grouped.chunks_exact(LANES) {
        // SAFETY: `g` holds exactly eight f32, the 32 bytes read; `loadu` needs no alignment.
        let v = unsafe { _mm256_loadu_ps(g.as_ptr()) };
        let a = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
        let b = _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v));
        s0 = _mm256_add_pd(s0, a);
        s1 = _mm256_add_pd(s1, b);
        q0 = _mm256_add_pd(q0, _mm256_mul_pd(a, a));
        q1 = _mm256_add_pd(q1, _mm256_mul_pd(b, b));
        // Ordered comparisons: false for NaN, as `x >= low` is in plain code.
        let in_a = _mm256_and_pd(
            _mm256_cmp_pd::<_CMP_GE_OQ>(a, low_v),
            _mm256_cmp_pd::<_CMP_LE_OQ>(a, high_v),
        );
        let in_b = _mm256_and_pd(
            _mm256_cmp_pd::<_CMP_GE_OQ>(b, low_v),
            _mm256_cmp_pd::<_CMP_LE_OQ>(b, high_v),
        );
        inside = _mm256_and_pd(inside, _mm256_and_pd(in_a, in_b));
    }
    let mut lanes = Lanes {
        sum: [0.0; LANES],
        sum_sq: [0.0; LANES],
        inside: _mm256_movemask_pd(inside) == 0b1111,
    };
    let (sum, sum_sq) = (lanes.sum.as_mut_ptr(), lanes.sum_sq.as_mut_ptr());
    // SAFETY: each array holds eight f64; each store writes four of them, at 0 and at 4;
    // `storeu` needs no alignment.
    unsafe {
        _mm256_storeu_pd(sum, s0);
        _mm256_storeu_pd(sum.add(4), s1);
        _mm256_storeu_pd(sum_sq, q0);
        _mm256_storeu_pd(sum_sq.add(4), q1);
    }
    lanes
}

/// The lanes of `grouped` (whole groups of eight) with NEON, part of every aarch64 core: a
/// group's eight f32 become four vectors of two f64 (lanes 0–1, 2–3, 4–5, 6–7); products and
/// sums are separate instructions, rounded one at a time like the plain lanes.
#[cfg(target_arch = "aarch64")]
fn neon_lanes_f32(grouped: &[f32], low: f64, high: f64) -> Lanes {
    use std::arch::aarch64::*;
    let mut lanes = Lanes {
        sum: [0.0; LANES],
        sum_sq: [0.0; LANES],
        inside: true,
    };
    // SAFETY: NEON is in the aarch64 baseline that every build of this target assumes.
    // `g` holds exactly eight f32: the two loads read its 32 bytes, at 0 and at 4. The
    // stores write eight f64 into each eight-f64 array, two at a time at 0, 2, 4 and 6.
    unsafe {
        let (low_v, high_v) = (vdupq_n_f64(low), vdupq_n_f64(high));
        let z = vdupq_n_f64(0.0);
        let (mut s0, mut s1, mut s2, mut s3) = (z, z, z, z);
        let (mut q0, mut q1, mut q2, mut q3) = (z, z, z, z);
        let mut inside = vdupq_n_u64(u64::MAX);
        let within = |x: float64x2_t| vandq_u64(vcgeq_f64(x, low_v), vcleq_f64(x, high_v));
        for g in grouped.chunks_exact(LANES) {
            let (v0, v1) = (vld1q_f32(g.as_ptr()), vld1q_f32(g.as_ptr().add(4)));
            let (a, b) = (vcvt_f64_f32(vget_low_f32(v0)), vcvt_high_f64_f32(v0));
            let (c, d) = (vcvt_f64_f32(vget_low_f32(v1)), vcvt_high_f64_f32(v1));
            (s0, s1, s2, s3) = (
                vaddq_f64(s0, a),
                vaddq_f64(s1, b),
                vaddq_f64(s2, c),
                vaddq_f64(s3, d),
            );
            q0 = vaddq_f64(q0, vmulq_f64(a, a));
            q1 = vaddq_f64(q1, vmulq_f64(b, b));
            q2 = vaddq_f64(q2, vmulq_f64(c, c));
            q3 = vaddq_f64(q3, vmulq_f64(d, d));
            let all = vandq_u64(
                vandq_u64(within(a), within(b)),
                vandq_u64(within(c), within(d)),
            );
            inside = vandq_u64(inside, all);
        }
        let (sum, sum_sq) = (lanes.sum.as_mut_ptr(), lanes.sum_sq.as_mut_ptr());
        for (at, s, q) in [(0, s0, q0), (2, s1, q1), (4, s2, q2), (6, s3, q3)] {
            vst1q_f64(sum.add(at), s);
            vst1q_f64(sum_sq.add(at), q);
        }
        lanes.inside = vminvq_u32(vreinterpretq_u32_u64(inside)) == u32::MAX;
    }
    lanes
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The module's order written out value by value: the reference every path must match.
    fn reference(values: &[f32], low: f64, high: f64) -> (f64, f64, bool) {
        let (mut sum, mut sum_sq, mut bad) = ([0.0f64; LANES], [0.0f64; LANES], false);
        let groups = values.len() / LANES * LANES;
        for (i, &v) in values.iter().enumerate() {
            let lane = if i < groups { i % LANES } else { 0 };
            let x = f64::from(v);
            sum[lane] += x;
            sum_sq[lane] += x * x;
            bad |= !(low..=high).contains(&x);
        }
        let total =
            |l: [f64; LANES]| ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
        (total(sum), total(sum_sq), bad)
    }

    fn same_bits(a: (f64, f64, bool), b: (f64, f64, bool)) -> bool {
        let eq = |x: f64, y: f64| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan());
        eq(a.0, b.0) && eq(a.1, b.1) && a.2 == b.2
    }

    /// Values whose sums round differently in every other order: wide magnitudes and signs
    /// from a fixed-seed generator.
    fn awkward(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let mantissa = (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                mantissa * 2f32.powi((s % 40) as i32 - 20)
            })
            .collect()
    }

    #[test]
    fn every_path_sums_in_the_same_order_for_every_length() {
        let plain = |v: &[f32], low, high| sums_within(v, f64::from, low, high);
        for n in (0..=40).chain([255, 12_288, 12_291]) {
            let values = awkward(n, n as u64 + 7);
            for (low, high) in [(f64::MIN, f64::MAX), (-1.0, 1.0), (-1e-3, 1e-3)] {
                let want = reference(&values, low, high);
                assert!(
                    same_bits(sums_within_f32(&values, low, high), want),
                    "n = {n}"
                );
                assert!(same_bits(plain(&values, low, high), want), "n = {n}");
            }
        }
    }

    #[test]
    fn a_value_failing_the_range_test_is_seen_in_every_lane_and_in_the_rest() {
        for n in [8, 16, 19] {
            for at in 0..n {
                for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 2.0, -2.0] {
                    let mut values = vec![0.5f32; n];
                    values[at] = bad;
                    let got = sums_within_f32(&values, -1.0, 1.0);
                    assert!(got.2, "n = {n}, value {bad} at {at} not seen");
                    assert!(same_bits(got, reference(&values, -1.0, 1.0)));
                }
            }
            // The bounds themselves pass.
            let edge: Vec<f32> = (0..n)
                .map(|i| if i % 2 == 0 { -1.0 } else { 1.0 })
                .collect();
            assert!(!sums_within_f32(&edge, -1.0, 1.0).2, "n = {n}");
        }
    }
}
