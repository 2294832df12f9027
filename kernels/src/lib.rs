//! Numeric kernels that mintd substitutes into tract's plans (`daemon/src/engine/`), on plain
//! slices.
//!
//! A crate of their own for one reason: the release profile builds mintd at `opt-level = "s"`
//! (an edge binary, 19 MB instead of 24 MB), and at "s" rustc runs no loop vectoriser. This
//! crate alone is built at `opt-level = 3` (the workspace `Cargo.toml`), as `tract-linalg` is,
//! so its loops vectorise without growing the rest of the daemon.

#![forbid(unsafe_code)]

/// Max pool, kernel 2×2, stride 2, no padding, over f32 planes of `h`×`w` laid end to end in
/// `input` (NCHW: one plane per batch item and channel): writes each plane's `(h/2)`×`(w/2)`
/// outputs to the matching plane of `output`. An odd last row or column is not read.
///
/// Each output is `f32::MIN.max(a).max(b).max(c).max(d)` over its window's taps in row-major
/// order: tract's own fold (`f32::max` ignores NaN, so a window of NaN or -inf alone gives
/// `f32::MIN`), hence bit for bit tract's 2×2 stride-2 `OptMaxPool`.
///
/// Planes beyond the shorter of `input` (in planes of `h * w`) and `output` (in planes of
/// `(h/2) * (w/2)`) are left untouched.
pub fn max_pool_2x2_s2(input: &[f32], output: &mut [f32], h: usize, w: usize) {
    let (oh, ow) = (h / 2, w / 2);
    if oh == 0 || ow == 0 {
        return;
    }
    for (plane, out_plane) in input
        .chunks_exact(h * w)
        .zip(output.chunks_exact_mut(oh * ow))
    {
        // `oh` pairs of rows; an odd last row is left out, as tract leaves it.
        for (rows, out_row) in plane
            .chunks_exact(2 * w)
            .zip(out_plane.chunks_exact_mut(ow))
        {
            let (r0, r1) = rows.split_at(w);
            pool_row(&r0[..2 * ow], &r1[..2 * ow], out_row);
        }
    }
}

/// One output row from its two input rows, read as pairs of columns (an odd last column is
/// not part of them). Taps fold in tract's order: row 0 left, right, then row 1 left, right.
#[inline]
fn pool_row(r0: &[f32], r1: &[f32], out: &mut [f32]) {
    let (top, _) = r0.as_chunks::<2>();
    let (bottom, _) = r1.as_chunks::<2>();
    for ((o, a), b) in out.iter_mut().zip(top).zip(bottom) {
        *o = f32::MIN.max(a[0]).max(a[1]).max(b[0]).max(b[1]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_output_is_the_largest_of_its_window_and_odd_edges_are_not_read() {
        // Two planes of 3×5: the last row and column of each are never part of a window.
        #[rustfmt::skip]
        let input = [
            1.0, 5.0, -2.0, 0.5, 99.0,
            3.0, 4.0, 7.0, -1.0, 99.0,
            99.0, 99.0, 99.0, 99.0, 99.0,

            -1.0, -2.0, -3.0, -4.0, 99.0,
            -5.0, -6.0, -7.0, -0.5, 99.0,
            99.0, 99.0, 99.0, 99.0, 99.0,
        ];
        let mut out = [0.0; 4];
        max_pool_2x2_s2(&input, &mut out, 3, 5);
        assert_eq!(out, [5.0, 7.0, -1.0, -0.5]);
    }

    #[test]
    fn nan_is_ignored_and_a_window_of_nothing_else_gives_f32_min() {
        let nan = f32::NAN;
        let input = [nan, 2.0, nan, nan, nan, nan, f32::NEG_INFINITY, nan];
        let mut out = [0.0; 2];
        max_pool_2x2_s2(&input, &mut out, 2, 4);
        assert_eq!(out, [2.0, f32::MIN]);
    }

    #[test]
    fn planes_too_small_for_a_window_leave_the_output_alone() {
        let mut out = [7.0; 2];
        max_pool_2x2_s2(&[1.0; 3], &mut out, 1, 3);
        max_pool_2x2_s2(&[1.0; 3], &mut out, 3, 1);
        max_pool_2x2_s2(&[], &mut out, 0, 0);
        assert_eq!(out, [7.0; 2]);
    }
}
