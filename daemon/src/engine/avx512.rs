//! mintd's own direct convolution for x86-64 cores with AVX-512.
//!
//! tract-linalg 0.23.9's direct convolution kernel (`conv_w4`) uses 256-bit registers: four
//! output channels and sixteen points of a row per step. On a core with AVX-512,
//! [`DirectConvAvx512`] keeps sixteen 512-bit accumulators instead: sixteen output channels
//! × sixteen points, eight × thirty-two or four × sixty-four, picked by how much of the row
//! is left. Each step loads one to four vectors of input and multiplies them by weights read
//! as broadcasts from a copy packed at plan time (sixteen output channels side by side per
//! tap), so the FMA units, not the loads, set the pace. A row's last, partial vector is
//! loaded and stored under a mask.
//!
//! [`pool_row`] is the 2×2, stride-2 max pool's row on the same cores.
//!
//! The values: each output starts from its bias and adds the taps in the order input
//! channel, kernel row, kernel column, one rounding per tap, as tract's `DirectSpatialConv`
//! does; they differ from im2col's product (which adds the bias last) only by rounding.

use std::arch::x86_64::{
    __mmask16, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_mask_storeu_ps, _mm512_maskz_loadu_ps,
    _mm512_max_ps, _mm512_permutex2var_ps, _mm512_set1_ps, _mm512_setr_epi32, _mm512_setzero_ps,
    _mm512_storeu_ps,
};
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

/// Output channels per block of packed weights, and points per vector.
const LANES: usize = 16;

/// Whether this machine runs [`DirectConvAvx512`]'s kernel.
pub fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

/// The shape of a valid (already padded) 2-D convolution over f32 NCHW images with one
/// group and stride 1 along the rows. Strides along the columns and dilations are free.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Geometry {
    /// Input channels.
    pub input_channels: usize,
    /// Output channels.
    pub output_channels: usize,
    /// Input height and width (the padded image).
    pub input: [usize; 2],
    /// Kernel height and width.
    pub kernel: [usize; 2],
    /// Dilation between kernel rows and between kernel columns.
    pub dilations: [usize; 2],
    /// Stride between output rows (between output columns it is 1).
    pub row_stride: usize,
}

impl Geometry {
    /// Output height and width, or `None` when the kernel does not fit the image.
    pub fn output(&self) -> Option<[usize; 2]> {
        let [h, w] = self.input;
        let reach = |k: usize, d: usize| d.checked_mul(k.checked_sub(1)?)?.checked_add(1);
        let h_reach = reach(self.kernel[0], self.dilations[0])?;
        let w_reach = reach(self.kernel[1], self.dilations[1])?;
        if h < h_reach || w < w_reach || self.row_stride == 0 {
            return None;
        }
        Some([(h - h_reach) / self.row_stride + 1, w - w_reach + 1])
    }

    fn taps(&self) -> usize {
        self.kernel[0] * self.kernel[1]
    }
}

/// A valid f32 NCHW convolution (one group, stride 1 along rows) with constant weights and
/// biases, computed by mintd's AVX-512 kernel. Input `[N, C, H, W]` of the geometry's input
/// channels and size, output `[N, O, H', W']`.
#[derive(Debug, Clone)]
pub struct DirectConvAvx512 {
    geometry: Geometry,
    /// The output size, from the geometry.
    output: [usize; 2],
    /// Weights as `[block of 16 output channels][input channel][kernel row][kernel column][16]`,
    /// zero past the last output channel.
    packed: Arc<[f32]>,
    /// One bias per output channel, zero past the last, to a whole number of blocks.
    bias: Arc<[f32]>,
    /// Whether a Relu follows: each output is `max(sum, 0)` (a NaN sum gives 0, as in
    /// tract's `max`).
    relu: bool,
}

/// Operators are equal when they compute the same: same geometry, same weights' bits.
impl PartialEq for DirectConvAvx512 {
    fn eq(&self, other: &Self) -> bool {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        self.geometry == other.geometry
            && self.relu == other.relu
            && bits(&self.packed) == bits(&other.packed)
            && bits(&self.bias) == bits(&other.bias)
    }
}

impl Eq for DirectConvAvx512 {}

impl DirectConvAvx512 {
    /// The operator for `geometry`, from OIHW weights and one bias per output channel.
    pub fn new(geometry: Geometry, weights: &[f32], bias: &[f32]) -> TractResult<Self> {
        let output = geometry
            .output()
            .with_context(|| format!("the kernel does not fit the image: {geometry:?}"))?;
        let (ic, oc, taps) = (
            geometry.input_channels,
            geometry.output_channels,
            geometry.taps(),
        );
        ensure!(
            ic > 0 && oc > 0 && taps > 0,
            "empty convolution: {geometry:?}"
        );
        ensure!(
            weights.len() == oc * ic * taps,
            "{} weights for {oc}×{ic}×{taps}",
            weights.len()
        );
        ensure!(bias.len() == oc, "{} biases for {oc} channels", bias.len());
        let blocks = oc.div_ceil(LANES);
        let mut packed = vec![0f32; blocks * ic * taps * LANES];
        for (o, filter) in weights.chunks_exact(ic * taps).enumerate() {
            let (block, lane) = (o / LANES, o % LANES);
            for (k, &w) in filter.iter().enumerate() {
                packed[(block * ic * taps + k) * LANES + lane] = w;
            }
        }
        let mut padded_bias = vec![0f32; blocks * LANES];
        padded_bias[..oc].copy_from_slice(bias);
        Ok(DirectConvAvx512 {
            geometry,
            output,
            packed: packed.into(),
            bias: padded_bias.into(),
            relu: false,
        })
    }

    /// The same convolution followed by a Relu.
    pub fn with_relu(self) -> Self {
        DirectConvAvx512 { relu: true, ..self }
    }

    /// Convolves `images` (`n` images of the geometry) into `out` (`n` output images),
    /// writing every element of `out` and reading none. Panics on a CPU without AVX-512F
    /// (`eval` checks [`available`] first and errs) or when the lengths are not those of
    /// the same number of images.
    fn convolve(&self, images: &[f32], out: &mut [f32]) {
        assert!(available(), "DirectConvAvx512 needs AVX-512F");
        let g = &self.geometry;
        let [ih, iw] = g.input;
        let [oh, ow] = self.output;
        let in_image = g.input_channels * ih * iw;
        let out_image = g.output_channels * oh * ow;
        assert!(
            images.len().is_multiple_of(in_image)
                && out.len() == images.len() / in_image * out_image,
            "{} input values and {} outputs for {g:?}",
            images.len(),
            out.len()
        );
        let block_weights = g.input_channels * g.taps() * LANES;
        let tiles = ow.div_ceil(LANES);
        let rest = ow % LANES;
        let last_mask: __mmask16 = if rest == 0 { !0 } else { (1 << rest) - 1 };
        let shape = Shape {
            channels: g.input_channels,
            plane: ih * iw,
            row: iw,
            kernel: g.kernel,
            dilations: g.dilations,
            out_plane: oh * ow,
        };
        for (image, out_image) in images
            .chunks_exact(in_image)
            .zip(out.chunks_exact_mut(out_image))
        {
            for block in 0..g.output_channels.div_ceil(LANES) {
                let weights = &self.packed[block * block_weights..][..block_weights];
                let bias = &self.bias[block * LANES..][..LANES];
                for y in 0..oh {
                    let input_row = &image[y * g.row_stride * iw..];
                    let mut tile = 0;
                    while tile < tiles {
                        let step = match tiles - tile {
                            4.. => 4,
                            2 | 3 => 2,
                            _ => 1,
                        };
                        let mask = if tile + step == tiles { last_mask } else { !0 };
                        let x = tile * LANES;
                        let run = Run {
                            input: &input_row[x..],
                            weights,
                            bias,
                            first_channel: block * LANES,
                            channels: g.output_channels,
                            out_offset: y * ow + x,
                            mask,
                            relu: self.relu,
                        };
                        // SAFETY: the CPU has AVX-512F (asserted at the top), which is all
                        // `columns` needs; it checks its slices' bounds itself.
                        unsafe {
                            match step {
                                4 => columns::<4, 4>(&shape, &run, out_image),
                                2 => columns::<8, 2>(&shape, &run, out_image),
                                _ => columns::<16, 1>(&shape, &run, out_image),
                            }
                        }
                        tile += step;
                    }
                }
            }
        }
    }
}

/// The image's layout as the kernel walks it.
struct Shape {
    channels: usize,
    /// Input values per channel, and per row.
    plane: usize,
    row: usize,
    kernel: [usize; 2],
    dilations: [usize; 2],
    /// Output values per channel.
    out_plane: usize,
}

/// One call of the kernel: `XT` vectors of one output row, for one block of 16 channels.
struct Run<'a> {
    /// The input from the first tap of the first vector on (channel 0, the output row's
    /// first input row, the first vector's first column).
    input: &'a [f32],
    /// The block's packed weights, and its 16 biases.
    weights: &'a [f32],
    bias: &'a [f32],
    /// The block's first output channel, and the convolution's number of output channels.
    first_channel: usize,
    channels: usize,
    /// Where the first vector's first point goes in an output channel's plane.
    out_offset: usize,
    /// The lanes of the last vector that are points of the row.
    mask: __mmask16,
    /// Whether to store `max(sum, 0)`.
    relu: bool,
}

/// Runs `$body` sixteen times with `$k` a constant 0 to 15 (four times, 0 to 3, for
/// `each4!`). The kernel's accumulators are an array indexed by such constants, which the
/// compiler keeps in registers at every optimisation level; a loop would have to be
/// unrolled first, which the release profile's size optimisation does not do.
macro_rules! each16 {
    ($k:ident => $body:block) => {
        each4!(HIGH => {
            each4!(LOW => {
                const $k: usize = HIGH * 4 + LOW;
                $body
            });
        });
    };
}

macro_rules! each4 {
    ($k:ident => $body:block) => {{
        const $k: usize = 0;
        $body
    }
    {
        const $k: usize = 1;
        $body
    }
    {
        const $k: usize = 2;
        $body
    }
    {
        const $k: usize = 3;
        $body
    }};
}

/// Computes `XT` vectors (16 points each) of one output row for the block's 16 output
/// channels, `OCB` channels at a time (`OCB × XT = 16` accumulators: accumulator `k` holds
/// channel `k / XT`, vector `k % XT`), and stores them in `out` (one output image).
///
/// # Safety
///
/// The caller must make sure the CPU has AVX-512F. Every memory access is within the slices
/// passed: the asserts at the top check the farthest one against each slice's length, and
/// the last vector's loads and stores are masked to `mask`, whose lanes past the slices'
/// ends are never touched (masked AVX-512 loads and stores suppress faults on masked lanes).
#[target_feature(enable = "avx512f")]
unsafe fn columns<const OCB: usize, const XT: usize>(s: &Shape, r: &Run, out: &mut [f32]) {
    const { assert!(OCB * XT == LANES && XT <= 4) };
    let [kh, kw] = s.kernel;
    let [dh, dw] = s.dilations;
    let lanes = r.mask.count_ones() as usize;
    // The mask is a prefix of the lanes (or all of them).
    assert!(lanes > 0 && u32::from(r.mask) == (1u32 << lanes) - 1);
    let span = LANES * (XT - 1) + lanes;
    let reach = (s.channels - 1) * s.plane + (kh - 1) * dh * s.row + (kw - 1) * dw + span;
    assert!(reach <= r.input.len(), "input read past its end");
    let taps = s.channels * kh * kw;
    assert!(r.weights.len() >= taps * LANES && r.bias.len() >= LANES);
    let valid = r.channels.saturating_sub(r.first_channel).min(LANES);
    if valid > 0 {
        assert!(
            (r.first_channel + valid - 1) * s.out_plane + r.out_offset + span <= out.len(),
            "output written past its end"
        );
    }
    let input = r.input.as_ptr();
    let out = out.as_mut_ptr();
    for sub in (0..LANES).step_by(OCB) {
        let valid = valid.saturating_sub(sub).min(OCB);
        if valid == 0 {
            break;
        }
        let mut acc = [_mm512_setzero_ps(); LANES];
        each16!(K => {
            acc[K] = _mm512_set1_ps(r.bias[sub + K / XT]);
        });
        let mut w = r.weights.as_ptr().add(sub);
        for c in 0..s.channels {
            for ky in 0..kh {
                let row = input.add(c * s.plane + ky * dh * s.row);
                for kx in 0..kw {
                    let at = row.add(kx * dw);
                    let mut x = [_mm512_setzero_ps(); 4];
                    each4!(T => {
                        if T + 1 < XT {
                            x[T] = _mm512_loadu_ps(at.add(T * LANES));
                        } else if T + 1 == XT {
                            x[T] = _mm512_maskz_loadu_ps(r.mask, at.add(T * LANES));
                        }
                    });
                    each16!(K => {
                        acc[K] = _mm512_fmadd_ps(_mm512_set1_ps(*w.add(K / XT)), x[K % XT], acc[K]);
                    });
                    w = w.add(LANES);
                }
            }
        }
        if r.relu {
            each16!(K => {
                // `max_ps` returns its second operand when the first is NaN.
                acc[K] = _mm512_max_ps(acc[K], _mm512_setzero_ps());
            });
        }
        each16!(K => {
            if K / XT < valid {
                let at = out.add((r.first_channel + sub + K / XT) * s.out_plane + r.out_offset);
                if K % XT + 1 < XT {
                    _mm512_storeu_ps(at.add(K % XT * LANES), acc[K]);
                } else {
                    _mm512_mask_storeu_ps(at.add(K % XT * LANES), r.mask, acc[K]);
                }
            }
        });
    }
}

/// One row of a 2×2, stride-2 max pool: `out[i]` is `f32::MIN.max(r0[2i]).max(r0[2i + 1])
/// .max(r1[2i]).max(r1[2i + 1])` for each `i` of `out`, sixteen at a time, the same bits as
/// that scalar fold: with `m = max_ps(x, m)`, a NaN `x` keeps `m` and so does an `x` equal
/// to it (a zero of either sign), as `m.max(x)` compiles on x86-64.
///
/// # Safety
///
/// The CPU must have AVX-512F. `r0` and `r1` must hold at least `2 × out.len()` values
/// (asserted). Loads and stores stay within those lengths: each vector's are masked to the
/// values that are left (masked AVX-512 loads and stores touch no masked lane).
#[target_feature(enable = "avx512f")]
pub unsafe fn pool_row(r0: &[f32], r1: &[f32], out: &mut [f32]) {
    let n = out.len();
    assert!(
        r0.len() >= 2 * n && r1.len() >= 2 * n,
        "pool rows too short"
    );
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    let min = _mm512_set1_ps(f32::MIN);
    let prefix = |lanes: usize| -> __mmask16 {
        match lanes {
            0 => 0,
            16.. => !0,
            l => (1 << l) - 1,
        }
    };
    for i in (0..n).step_by(LANES) {
        let lanes = (n - i).min(LANES);
        // The 2 × lanes inputs of each row: the first 16 in `a`, the rest in `b`.
        let (first, second) = (prefix(2 * lanes), prefix((2 * lanes).saturating_sub(LANES)));
        let (p0, p1) = (r0.as_ptr().add(2 * i), r1.as_ptr().add(2 * i));
        let a0 = _mm512_maskz_loadu_ps(first, p0);
        // With at most 8 outputs left, `second` is empty and `p + 16` may lie past the
        // row: a wrapping address, never read.
        let b0 = _mm512_maskz_loadu_ps(second, p0.wrapping_add(LANES));
        let a1 = _mm512_maskz_loadu_ps(first, p1);
        let b1 = _mm512_maskz_loadu_ps(second, p1.wrapping_add(LANES));
        let mut m = _mm512_max_ps(_mm512_permutex2var_ps(a0, even, b0), min);
        m = _mm512_max_ps(_mm512_permutex2var_ps(a0, odd, b0), m);
        m = _mm512_max_ps(_mm512_permutex2var_ps(a1, even, b1), m);
        m = _mm512_max_ps(_mm512_permutex2var_ps(a1, odd, b1), m);
        _mm512_mask_storeu_ps(out.as_mut_ptr().add(i), prefix(lanes), m);
    }
}

impl Op for DirectConvAvx512 {
    fn name(&self) -> StaticName {
        "DirectConvAvx512".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("{:?}, relu: {}", self.geometry, self.relu)])
    }

    op_as_typed_op!();
}

impl EvalOp for DirectConvAvx512 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let g = &self.geometry;
        let &[n, c, h, w] = input.shape() else {
            bail!(
                "DirectConvAvx512 wants a rank-4 input, got {:?}",
                input.shape()
            );
        };
        ensure!(
            [c, h, w] == [g.input_channels, g.input[0], g.input[1]],
            "DirectConvAvx512 for {g:?} got an input of shape {:?}",
            input.shape()
        );
        ensure!(available(), "DirectConvAvx512 needs AVX-512F");
        let [oh, ow] = self.output;
        // The output is written once, by the kernel, not zeroed first: on the convnet the
        // zeroing pass cost as much as conv1 itself (docs/performance.md).
        // SAFETY: `Tensor::uninitialized` leaves the values unset, so nothing may read them
        // before they are written. Nothing does: `convolve` only writes `out`, and writes
        // every element of it. Each image's output channels are covered by the blocks of 16
        // (`columns` stores each block's channels below the count), each channel's rows by
        // `y in 0..oh`, and each row's `ow` points by its vectors, the last one masked to
        // the row's end (the test `convolve_writes_every_output` checks it on outputs
        // filled with NaN). f32 has no invalid bit patterns once written.
        let mut output = unsafe { Tensor::uninitialized::<f32>(&[n, g.output_channels, oh, ow])? };
        {
            let input = input.try_as_plain_ram()?;
            let mut out = output.try_as_plain_ram_mut()?;
            self.convolve(input.as_slice::<f32>()?, out.as_slice_mut::<f32>()?);
        }
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for DirectConvAvx512 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let fact = inputs[0];
        let g = &self.geometry;
        ensure!(
            fact.datum_type == f32::datum_type() && fact.rank() == 4,
            "DirectConvAvx512 wants a rank-4 f32 input, got {fact:?}"
        );
        let s = &fact.shape;
        ensure!(
            s[1] == g.input_channels.to_dim()
                && s[2] == g.input[0].to_dim()
                && s[3] == g.input[1].to_dim(),
            "DirectConvAvx512 for {g:?} got an input of shape {s:?}"
        );
        let [oh, ow] = self.output;
        Ok(tvec!(f32::fact([
            s[0].clone(),
            g.output_channels.to_dim(),
            oh.to_dim(),
            ow.to_dim()
        ])))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn convolve_writes_every_output() {
        if !available() {
            return;
        }
        let g = Geometry {
            input_channels: 3,
            output_channels: 8,
            input: [7, 22],
            kernel: [3, 3],
            dilations: [1, 1],
            row_stride: 1,
        };
        // Rows of 17, 37 and 200 points (a masked last vector after 1, 2 + 1 and
        // 4 + 4 + 4 vectors), 1 to 68 output channels, two images, a stride between rows.
        let cases = [
            (g, 1),
            (
                Geometry {
                    input: [5, 19],
                    output_channels: 1,
                    ..g
                },
                2,
            ),
            (
                Geometry {
                    input: [5, 39],
                    output_channels: 20,
                    ..g
                },
                1,
            ),
            (
                Geometry {
                    input: [4, 202],
                    output_channels: 68,
                    ..g
                },
                2,
            ),
            (
                Geometry {
                    input: [9, 18],
                    output_channels: 6,
                    row_stride: 3,
                    ..g
                },
                1,
            ),
        ];
        for (g, n) in cases {
            let [oh, ow] = g.output().unwrap();
            let taps = g.taps() * g.input_channels;
            let weights: Vec<f32> = (0..g.output_channels * taps)
                .map(|i| (i % 7) as f32 - 3.)
                .collect();
            let bias = vec![0.5; g.output_channels];
            let op = DirectConvAvx512::new(g, &weights, &bias).unwrap();
            let images = vec![1f32; n * g.input_channels * g.input[0] * g.input[1]];
            let mut out = vec![f32::NAN; n * g.output_channels * oh * ow];
            op.convolve(&images, &mut out);
            let unwritten = out.iter().filter(|x| x.is_nan()).count();
            assert_eq!(
                unwritten, 0,
                "{g:?}, {n} images: {unwritten} outputs unwritten"
            );
        }
    }
}
