//! Swin Transformer (tiny, small, base; patch 4, window 7) with timm's parameter names
//! (`patch_embed.proj`, `patch_embed.norm`, `layers.1.downsample.{norm,reduction}`,
//! `layers.0.blocks.0.{norm1,attn.qkv,attn.proj,attn.relative_position_bias_table,norm2,mlp.fc1,mlp.fc2}`),
//! so a timm `swin_*_patch4_window7_224` file loads as it is. Its levels are the four stages'
//! outputs at strides 4 to 32, as timm's `features_only` returns them (there N×H×W×C; here N×C×H×W).
//!
//! A block is windowed multi-head self-attention (7×7 windows, a learned bias per relative
//! position and head) and an MLP (4× wide, exact GELU), each after a LayerNorm and on a residual;
//! every second block shifts the windows by 3 tokens (a cyclic roll, with a mask that keeps
//! attention within the regions the roll brought together). Where a stage's height or width is
//! not a multiple of 7, the rolled tokens are padded with zeros at the bottom and right to whole
//! windows and the padding is cut off after attention, as timm does with `always_partition=True`
//! and dynamic masks: every stage partitions and shifts, whatever its size. With inputs of 256
//! pixels and more, where the deepest stage is wider than a window, that is also timm's default
//! model at that input size. Inputs must be multiples of 32.

use candle_core::{Device, Tensor};
use candle_nn::{Init, VarBuilder};
use ftu_onnx::Attr;

use super::{drop_path_rate, Encoder};
use crate::layers::{Activation, Conv2d, ConvCfg, DropPath, Layer, LayerNorm, Linear};
use crate::{Ctx, Exporter, ModelError, Result};

const EPS: f64 = 1e-5;
const WINDOW: usize = 7;
const SHIFT: usize = WINDOW / 2;
const AREA: usize = WINDOW * WINDOW;
/// The attention logit between tokens of different regions of a shifted window, as timm's.
const MASKED: f32 = -100.0;

/// The sizes on offer, by timm's name, with (embedding width, stage depths, stage heads).
pub const SIZES: [(&str, usize, [usize; 4], [usize; 4]); 3] = [
    ("tiny", 96, [2, 2, 6, 2], [3, 6, 12, 24]),
    ("small", 96, [2, 2, 18, 2], [3, 6, 12, 24]),
    ("base", 128, [2, 2, 18, 2], [4, 8, 16, 32]),
];

/// For tokens i, j of a window (row-major), the index of their relative position (dy, dx) in
/// the bias table of (2·7 − 1)² rows: timm's `relative_position_index`.
fn relative_position_index() -> Vec<u32> {
    let mut index = Vec::with_capacity(AREA * AREA);
    let w = WINDOW as i64;
    for i in 0..AREA as i64 {
        for j in 0..AREA as i64 {
            let (dy, dx) = (i / w - j / w + w - 1, i % w - j % w + w - 1);
            index.push((dy * (2 * w - 1) + dx) as u32);
        }
    }
    index
}

/// The region of each position of a padded side of `n` (0, 1 or 2), as timm's shifted-window
/// mask slices it: [0, n − 7), [n − 7, n − 3), [n − 3, n).
fn regions(n: usize) -> Vec<i64> {
    (0..n)
        .map(|i| (i + WINDOW >= n) as i64 + (i + SHIFT >= n) as i64)
        .collect()
}

/// The shifted-window mask of padded hp×wp tokens: windows × 49 × 49, 0 within a region and
/// −100 across regions.
fn shift_mask(hp: usize, wp: usize, dev: &Device) -> Result<Tensor> {
    let (rh, rw) = (regions(hp), regions(wp));
    let (nh, nw) = (hp / WINDOW, wp / WINDOW);
    let mut mask = Vec::with_capacity(nh * nw * AREA * AREA);
    for wy in 0..nh {
        for wx in 0..nw {
            let id = |t: usize| rh[wy * WINDOW + t / WINDOW] * 3 + rw[wx * WINDOW + t % WINDOW];
            for i in 0..AREA {
                for j in 0..AREA {
                    mask.push(if id(i) == id(j) { 0.0 } else { MASKED });
                }
            }
        }
    }
    Ok(Tensor::from_vec(mask, (nh * nw, AREA, AREA), dev)?)
}

/// A torch.roll by `shift` along `axis` (positive moves elements to higher indices).
fn roll(x: &Tensor, axis: usize, shift: i64) -> Result<Tensor> {
    let n = x.dims()[axis] as i64;
    let s = shift.rem_euclid(n) as usize;
    if s == 0 {
        return Ok(x.clone());
    }
    let n = n as usize;
    Ok(Tensor::cat(
        &[&x.narrow(axis, n - s, s)?, &x.narrow(axis, 0, n - s)?],
        axis,
    )?)
}

/// Runtime dimensions and shapes in the exported graph.
struct Dims;

impl Dims {
    /// Dimension `axis` of `x` as an int64 vector of one element.
    fn of(e: &mut Exporter, x: &str, axis: i64) -> Result<String> {
        let shape = e.op("Shape", &[x], &[]);
        let index = e.ints(&[axis])?;
        Ok(e.op("Gather", &[&shape, &index], &[("axis", Attr::Int(0))]))
    }

    fn int(e: &mut Exporter, op: &str, a: &str, value: i64) -> Result<String> {
        let b = e.ints(&[value])?;
        Ok(e.op(op, &[a, &b], &[]))
    }

    /// (7 − n mod 7) mod 7: the padding that makes `n` whole windows.
    fn pad_to_window(e: &mut Exporter, n: &str) -> Result<String> {
        let rest = Self::int(e, "Mod", n, WINDOW as i64)?;
        let seven = e.ints(&[WINDOW as i64])?;
        let missing = e.op("Sub", &[&seven, &rest], &[]);
        Self::int(e, "Mod", &missing, WINDOW as i64)
    }
}

/// The roll of `x` (N×H×W×C) by `sign`·3 along H and W in the graph, 3 taken modulo the side as
/// torch.roll does.
fn export_roll(e: &mut Exporter, x: &str, sign: i64) -> Result<String> {
    let mut x = x.to_string();
    for axis in [1i64, 2] {
        let n = Dims::of(e, &x, axis)?;
        let three = e.ints(&[SHIFT as i64])?;
        let s = e.op("Mod", &[&three, &n], &[]);
        // Rolling by −s starts at s; rolling by +s starts at n − s.
        let start = if sign < 0 { s } else { e.op("Sub", &[&n, &s], &[]) };
        let (zero, end, axes) = (e.ints(&[0])?, e.ints(&[i64::MAX])?, e.ints(&[axis])?);
        let tail = e.op("Slice", &[&x, &start, &end, &axes], &[]);
        let head = e.op("Slice", &[&x, &zero, &start, &axes], &[]);
        x = e.concat(&[&tail, &head], axis);
    }
    Ok(x)
}

/// The shifted-window mask in the graph for padded sides `hp`, `wp` (int64 vectors of one
/// element): 1 × windows × 1 × 49 × 49.
fn export_shift_mask(e: &mut Exporter, hp: &str, wp: &str) -> Result<String> {
    let mut ids = Vec::new();
    for n in [hp, wp] {
        let zero = e.int_scalar(0)?;
        let one = e.int_scalar(1)?;
        let axes0 = e.ints(&[0])?;
        let n_scalar = e.op("Squeeze", &[n, &axes0], &[]);
        let i = e.op("Range", &[&zero, &n_scalar, &one], &[]);
        let mut id: Option<String> = None;
        for back in [WINDOW as i64, SHIFT as i64] {
            let edge = Dims::int(e, "Sub", n, back)?;
            let past = e.op("GreaterOrEqual", &[&i, &edge], &[]);
            let past = e.op("Cast", &[&past], &[("to", Attr::Int(7))]);
            id = Some(match id {
                Some(a) => e.add(&a, &past),
                None => past,
            });
        }
        ids.push(id.expect("two edges"));
    }
    let rows = e.ints(&[1])?;
    let cols = e.ints(&[0])?;
    let id_h = e.op("Unsqueeze", &[&ids[0], &rows], &[]);
    let id_h = Dims::int(e, "Mul", &id_h, 3)?;
    let id_w = e.op("Unsqueeze", &[&ids[1], &cols], &[]);
    let id = e.add(&id_h, &id_w);
    // Hp×Wp → windows × 49, as the tokens are partitioned.
    let nh = Dims::int(e, "Div", hp, WINDOW as i64)?;
    let nw = Dims::int(e, "Div", wp, WINDOW as i64)?;
    let w = e.ints(&[WINDOW as i64])?;
    let shape = e.concat(&[&nh, &w, &nw, &w], 0);
    let id = e.op("Reshape", &[&id, &shape], &[]);
    let id = e.op("Transpose", &[&id], &[("perm", Attr::Ints(vec![0, 2, 1, 3]))]);
    let flat = e.ints(&[-1, AREA as i64])?;
    let id = e.op("Reshape", &[&id, &flat], &[]);
    let (a1, a2) = (e.ints(&[1])?, e.ints(&[2])?);
    let left = e.op("Unsqueeze", &[&id, &a2], &[]);
    let right = e.op("Unsqueeze", &[&id, &a1], &[]);
    let same = e.op("Equal", &[&left, &right], &[]);
    let (zero, masked) = (e.scalar(0.0)?, e.scalar(MASKED)?);
    let mask = e.op("Where", &[&same, &zero, &masked], &[]);
    let outer = e.ints(&[0, 2])?;
    Ok(e.op("Unsqueeze", &[&mask, &outer], &[]))
}

/// Windowed multi-head self-attention with a relative position bias (`attn.*`).
struct WindowAttention {
    name: String,
    heads: usize,
    channels: usize,
    qkv: Linear,
    proj: Linear,
    table: Tensor,
}

impl WindowAttention {
    fn new(vb: VarBuilder, channels: usize, heads: usize) -> Result<WindowAttention> {
        if !channels.is_multiple_of(heads) {
            return Err(ModelError::Config(format!(
                "{}: {channels} channels do not split into {heads} heads",
                vb.prefix()
            )));
        }
        let rows = (2 * WINDOW - 1) * (2 * WINDOW - 1);
        let table = vb.get_with_hints(
            (rows, heads),
            "relative_position_bias_table",
            Init::Randn { mean: 0.0, stdev: 0.02 },
        )?;
        Ok(WindowAttention {
            name: vb.prefix(),
            heads,
            channels,
            qkv: Linear::new(vb.pp("qkv"), channels, 3 * channels, true)?,
            proj: Linear::new(vb.pp("proj"), channels, channels, true)?,
            table,
        })
    }

    /// heads × 49 × 49.
    fn bias(&self) -> Result<Tensor> {
        let index = Tensor::new(relative_position_index().as_slice(), self.table.device())?;
        let bias = self.table.index_select(&index, 0)?.reshape((AREA, AREA, self.heads))?;
        Ok(bias.permute((2, 0, 1))?.contiguous()?)
    }

    /// `windows` is (N·windows)×49×C; `mask`, when the windows are shifted, windows×49×49.
    fn forward(&self, windows: &Tensor, mask: Option<&Tensor>, ctx: &Ctx) -> Result<Tensor> {
        let c = windows.dim(2)?;
        let scale = 1.0 / ((c / self.heads) as f64).sqrt();
        let qkv = self.qkv.forward(windows, ctx)?;
        let bias = self.bias()?;
        let out = if ctx.cpu_ops_f32(&qkv) {
            crate::ops::window_attention::window_attention(&qkv, &bias, mask, self.heads, scale)?
        } else {
            crate::ops::window_attention::window_attention_generic(&qkv, &bias, mask, self.heads, scale, ctx)?
        };
        self.proj.forward(&out, ctx)
    }

    fn export(&self, e: &mut Exporter, windows: &str, mask: Option<&str>) -> Result<String> {
        let d = (self.channels / self.heads) as i64;
        let qkv = self.qkv.export(e, windows)?;
        let split = e.ints(&[0, 0, 3, self.heads as i64, d])?;
        let qkv = e.op("Reshape", &[&qkv, &split], &[]);
        let qkv = e.op("Transpose", &[&qkv], &[("perm", Attr::Ints(vec![2, 0, 3, 1, 4]))]);
        let mut parts = Vec::new();
        for i in 0..3 {
            let index = e.int_scalar(i)?;
            parts.push(e.op("Gather", &[&qkv, &index], &[("axis", Attr::Int(0))]));
        }
        let scale = e.scalar(1.0 / (d as f32).sqrt())?;
        let q = e.mul(&parts[0], &scale);
        let k_t = e.op("Transpose", &[&parts[1]], &[("perm", Attr::Ints(vec![0, 1, 3, 2]))]);
        let scores = e.op("MatMul", &[&q, &k_t], &[]);
        let table = e.param(&format!("{}.relative_position_bias_table", self.name), &self.table)?;
        let index: Vec<i64> = relative_position_index().into_iter().map(i64::from).collect();
        let index = e.ints(&index)?;
        let bias = e.op("Gather", &[&table, &index], &[("axis", Attr::Int(0))]);
        let shape = e.ints(&[AREA as i64, AREA as i64, self.heads as i64])?;
        let bias = e.op("Reshape", &[&bias, &shape], &[]);
        let bias = e.op("Transpose", &[&bias], &[("perm", Attr::Ints(vec![2, 0, 1]))]);
        let mut scores = e.add(&scores, &bias);
        if let Some(mask) = mask {
            // (N·windows)×heads×49×49 → N×windows×heads×49×49, plus the mask, and back.
            let count = Dims::of(e, mask, 1)?;
            let (lead, tail) = (e.ints(&[-1])?, e.ints(&[self.heads as i64, AREA as i64, AREA as i64])?);
            let shape = e.concat(&[&lead, &count, &tail], 0);
            let grouped = e.op("Reshape", &[&scores, &shape], &[]);
            let masked = e.add(&grouped, mask);
            let back = e.ints(&[-1, self.heads as i64, AREA as i64, AREA as i64])?;
            scores = e.op("Reshape", &[&masked, &back], &[]);
        }
        let probs = e.op("Softmax", &[&scores], &[("axis", Attr::Int(-1))]);
        let out = e.op("MatMul", &[&probs, &parts[2]], &[]);
        let out = e.op("Transpose", &[&out], &[("perm", Attr::Ints(vec![0, 2, 1, 3]))]);
        let merged = e.ints(&[0, 0, self.channels as i64])?;
        let out = e.op("Reshape", &[&out, &merged], &[]);
        self.proj.export(e, &out)
    }
}

struct Block {
    norm1: LayerNorm,
    attn: WindowAttention,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    shifted: bool,
    drop_path: DropPath,
}

impl Block {
    fn new(vb: VarBuilder, channels: usize, heads: usize, shifted: bool, drop_path: f64) -> Result<Block> {
        Ok(Block {
            norm1: LayerNorm::new(vb.pp("norm1"), channels, EPS)?,
            attn: WindowAttention::new(vb.pp("attn"), channels, heads)?,
            norm2: LayerNorm::new(vb.pp("norm2"), channels, EPS)?,
            fc1: Linear::new(vb.pp("mlp").pp("fc1"), channels, 4 * channels, true)?,
            fc2: Linear::new(vb.pp("mlp").pp("fc2"), 4 * channels, channels, true)?,
            shifted,
            drop_path: DropPath { p: drop_path },
        })
    }

    /// `x` is N×H×W×C; `mask` the stage's shifted-window mask.
    fn forward(&self, x: &Tensor, mask: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let (n, h, w, c) = x.dims4()?;
        let mut y = self.norm1.forward(x, ctx)?;
        if self.shifted {
            y = roll(&roll(&y, 1, -(SHIFT as i64))?, 2, -(SHIFT as i64))?;
        }
        let (hp, wp) = (h.div_ceil(WINDOW) * WINDOW, w.div_ceil(WINDOW) * WINDOW);
        let y = y.pad_with_zeros(1, 0, hp - h)?.pad_with_zeros(2, 0, wp - w)?;
        let (nh, nw) = (hp / WINDOW, wp / WINDOW);
        let windows = y
            .reshape((n, nh, WINDOW, nw, WINDOW, c))?
            .permute((0, 1, 3, 2, 4, 5))?
            .reshape((n * nh * nw, AREA, c))?;
        let out = self.attn.forward(&windows, self.shifted.then_some(mask), ctx)?;
        let out = out
            .reshape((n, nh, nw, WINDOW, WINDOW, c))?
            .permute((0, 1, 3, 2, 4, 5))?
            .reshape((n, hp, wp, c))?
            .narrow(1, 0, h)?
            .narrow(2, 0, w)?;
        let mut out = out.contiguous()?;
        if self.shifted {
            out = roll(&roll(&out, 1, SHIFT as i64)?, 2, SHIFT as i64)?;
        }
        let x = (x + self.drop_path.forward(&out, ctx)?)?;
        let y = self.fc1.forward(&self.norm2.forward(&x, ctx)?, ctx)?;
        let y = self.fc2.forward(&Activation::Gelu.forward(&y, ctx)?, ctx)?;
        Ok((&x + self.drop_path.forward(&y, ctx)?)?)
    }

    fn export(&self, e: &mut Exporter, x: &str, mask: &str) -> Result<String> {
        let mut y = self.norm1.export(e, x)?;
        if self.shifted {
            y = export_roll(e, &y, -1)?;
        }
        let (h, w) = (Dims::of(e, &y, 1)?, Dims::of(e, &y, 2)?);
        let (ph, pw) = (Dims::pad_to_window(e, &h)?, Dims::pad_to_window(e, &w)?);
        let zeros = e.ints(&[0, 0, 0, 0, 0])?;
        let last = e.ints(&[0])?;
        let pads = e.concat(&[&zeros, &ph, &pw, &last], 0);
        let padded = e.op("Pad", &[&y, &pads], &[]);
        let (hp, wp) = (Dims::of(e, &padded, 1)?, Dims::of(e, &padded, 2)?);
        let nh = Dims::int(e, "Div", &hp, WINDOW as i64)?;
        let nw = Dims::int(e, "Div", &wp, WINDOW as i64)?;
        let (lead, win, c) = (
            e.ints(&[-1])?,
            e.ints(&[WINDOW as i64])?,
            e.ints(&[self.attn.channels as i64])?,
        );
        let split = e.concat(&[&lead, &nh, &win, &nw, &win, &c], 0);
        let windows = e.op("Reshape", &[&padded, &split], &[]);
        let perm = Attr::Ints(vec![0, 1, 3, 2, 4, 5]);
        let windows = e.op("Transpose", &[&windows], &[("perm", perm.clone())]);
        let flat = e.ints(&[-1, AREA as i64, self.attn.channels as i64])?;
        let windows = e.op("Reshape", &[&windows, &flat], &[]);
        let out = self.attn.export(e, &windows, self.shifted.then_some(mask))?;
        let grouped = e.concat(&[&lead, &nh, &nw, &win, &win, &c], 0);
        let out = e.op("Reshape", &[&out, &grouped], &[]);
        let out = e.op("Transpose", &[&out], &[("perm", perm)]);
        let whole = e.concat(&[&lead, &hp, &wp, &c], 0);
        let out = e.op("Reshape", &[&out, &whole], &[]);
        let (starts, axes) = (e.ints(&[0, 0])?, e.ints(&[1, 2])?);
        let ends = e.concat(&[&h, &w], 0);
        let mut out = e.op("Slice", &[&out, &starts, &ends, &axes], &[]);
        if self.shifted {
            out = export_roll(e, &out, 1)?;
        }
        let out = self.drop_path.export(e, &out)?;
        let x = e.add(x, &out);
        let y = self.norm2.export(e, &x)?;
        let y = self.fc1.export(e, &y)?;
        let y = Activation::Gelu.export(e, &y)?;
        let y = self.fc2.export(e, &y)?;
        let y = self.drop_path.export(e, &y)?;
        Ok(e.add(&x, &y))
    }
}

/// timm's `PatchMerging`: each 2×2 neighbourhood's tokens concatenated (row offset fastest after
/// the channels, then column offset), LayerNorm-ed and projected to twice the width.
struct PatchMerging {
    norm: LayerNorm,
    reduction: Linear,
    channels: usize,
}

impl PatchMerging {
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let (n, h, w, c) = x.dims4()?;
        if h % 2 != 0 || w % 2 != 0 {
            return Err(ModelError::Config(format!(
                "swin: a {h}×{w} stage cannot be merged 2×2; inputs must be multiples of 32"
            )));
        }
        let merged = x
            .reshape((n, h / 2, 2, w / 2, 2, c))?
            .permute((0, 1, 3, 4, 2, 5))?
            .reshape((n, h / 2, w / 2, 4 * c))?;
        self.reduction.forward(&self.norm.forward(&merged, ctx)?, ctx)
    }

    /// The same order from reshapes that need no runtime shape: N×H×W×C → N×W×H×C → pairs of
    /// rows → N×H/2×W×2C → pairs of columns → N×H/2×W/2×4C.
    fn export(&self, e: &mut Exporter, x: &str) -> Result<String> {
        let swap = Attr::Ints(vec![0, 2, 1, 3]);
        let t = e.op("Transpose", &[x], &[("perm", swap.clone())]);
        let rows = e.ints(&[0, 0, -1, 2 * self.channels as i64])?;
        let t = e.op("Reshape", &[&t, &rows], &[]);
        let t = e.op("Transpose", &[&t], &[("perm", swap)]);
        let cols = e.ints(&[0, 0, -1, 4 * self.channels as i64])?;
        let merged = e.op("Reshape", &[&t, &cols], &[]);
        let normed = self.norm.export(e, &merged)?;
        self.reduction.export(e, &normed)
    }
}

struct Stage {
    downsample: Option<PatchMerging>,
    blocks: Vec<Block>,
}

pub struct Swin {
    patch_embed: Conv2d,
    patch_norm: LayerNorm,
    stages: Vec<Stage>,
    widths: [usize; 4],
}

impl Swin {
    /// `size` is one of `SIZES`' names.
    pub fn new(vb: VarBuilder, size: &str, drop_path: f64) -> Result<Swin> {
        let &(_, embed, depths, heads) = SIZES.iter().find(|s| s.0 == size).ok_or_else(|| {
            ModelError::Config(format!(
                "swin_{size}: the size must be one of {}",
                SIZES.map(|s| s.0).join(", ")
            ))
        })?;
        let widths = [embed, 2 * embed, 4 * embed, 8 * embed];
        let pe = vb.pp("patch_embed");
        let patch_embed = Conv2d::new(
            pe.pp("proj"),
            3,
            embed,
            4,
            ConvCfg::same(4).padding(0).stride(4).bias(true),
        )?;
        let patch_norm = LayerNorm::new(pe.pp("norm"), embed, EPS)?;
        let total: usize = depths.iter().sum();
        let mut index = 0;
        let mut stages = Vec::new();
        for i in 0..4 {
            let vb_stage = vb.pp("layers").pp(i);
            let downsample = if i == 0 {
                None
            } else {
                let down = vb_stage.pp("downsample");
                Some(PatchMerging {
                    norm: LayerNorm::new(down.pp("norm"), 4 * widths[i - 1], EPS)?,
                    reduction: Linear::new(down.pp("reduction"), 4 * widths[i - 1], widths[i], false)?,
                    channels: widths[i - 1],
                })
            };
            let mut blocks = Vec::new();
            for j in 0..depths[i] {
                let rate = drop_path_rate(drop_path, index, total);
                blocks.push(Block::new(
                    vb_stage.pp("blocks").pp(j),
                    widths[i],
                    heads[i],
                    j % 2 == 1,
                    rate,
                )?);
                index += 1;
            }
            stages.push(Stage { downsample, blocks });
        }
        Ok(Swin {
            patch_embed,
            patch_norm,
            stages,
            widths,
        })
    }
}

impl Encoder for Swin {
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Vec<Tensor>> {
        let (_, _, h, w) = x.dims4()?;
        if h % 32 != 0 || w % 32 != 0 {
            return Err(ModelError::Config(format!(
                "swin: a {h}×{w} input; inputs must be multiples of 32"
            )));
        }
        let y = self.patch_embed.forward(x, ctx)?.permute((0, 2, 3, 1))?.contiguous()?;
        let mut y = self.patch_norm.forward(&y, ctx)?;
        let mut levels = Vec::new();
        for stage in &self.stages {
            if let Some(down) = &stage.downsample {
                y = down.forward(&y, ctx)?;
            }
            let (_, h, w, _) = y.dims4()?;
            let (hp, wp) = (h.div_ceil(WINDOW) * WINDOW, w.div_ceil(WINDOW) * WINDOW);
            let mask = shift_mask(hp, wp, y.device())?;
            for block in &stage.blocks {
                y = block.forward(&y, &mask, ctx)?;
            }
            levels.push(y.permute((0, 3, 1, 2))?.contiguous()?);
        }
        Ok(levels)
    }

    fn export(&self, e: &mut Exporter, x: &str) -> Result<Vec<String>> {
        let y = self.patch_embed.export(e, x)?;
        let y = e.op("Transpose", &[&y], &[("perm", Attr::Ints(vec![0, 2, 3, 1]))]);
        let mut y = self.patch_norm.export(e, &y)?;
        let mut levels = Vec::new();
        for stage in &self.stages {
            if let Some(down) = &stage.downsample {
                y = down.export(e, &y)?;
            }
            let mut padded = Vec::new();
            for axis in [1, 2] {
                let n = Dims::of(e, &y, axis)?;
                let pad = Dims::pad_to_window(e, &n)?;
                padded.push(e.add(&n, &pad));
            }
            let mask = export_shift_mask(e, &padded[0], &padded[1])?;
            for block in &stage.blocks {
                y = block.export(e, &y, &mask)?;
            }
            levels.push(e.op("Transpose", &[&y], &[("perm", Attr::Ints(vec![0, 3, 1, 2]))]));
        }
        Ok(levels)
    }

    fn channels(&self) -> Vec<usize> {
        self.widths.to_vec()
    }

    fn strides(&self) -> Vec<usize> {
        vec![4, 8, 16, 32]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// timm's `get_relative_position_index` for a 7×7 window: the corners and the centre.
    #[test]
    fn relative_positions_index_the_bias_table_as_timm_does() {
        let index = relative_position_index();
        assert_eq!(index.len(), AREA * AREA);
        assert_eq!(index[0], 84, "a token and itself: (6, 6) → 6·13 + 6");
        assert_eq!(index[AREA - 1], 84 - 6 * 13 - 6, "token 0 and token 48: (−6, −6)");
        assert_eq!(index[(AREA - 1) * AREA], 168, "token 48 and token 0: (6, 6) + (6, 6)");
        assert!(index.iter().all(|&i| i < 169));
    }

    /// The shifted-window mask of a 14×7 padded stage: windows that hold one region attend
    /// freely; the last rows' windows split into the regions timm's slices make.
    #[test]
    fn the_shift_mask_keeps_attention_within_regions() {
        let mask = shift_mask(14, 7, &Device::Cpu).unwrap();
        assert_eq!(mask.dims(), &[2, AREA, AREA]);
        let m: Vec<Vec<Vec<f32>>> = mask.to_vec3().unwrap();
        // Regions of a side of 14: rows 0–6 → 0, 7–10 → 1, 11–13 → 2; of a side of 7: columns
        // 0–3 → 1, 4–6 → 2 (there is no region 0 along a single window).
        assert_eq!(regions(14), [0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2]);
        assert_eq!(regions(7), [1, 1, 1, 1, 2, 2, 2]);
        // Window 0, tokens (0,0) and (0,3): same row region, same column region.
        assert_eq!(m[0][0][3], 0.0);
        // Window 0, tokens (0,0) and (0,4): columns 3 and 4 are different regions.
        assert_eq!(m[0][0][4], MASKED);
        // Window 1 (rows 7–13), tokens (0,0) and (3,0) (rows 7 and 10): one region; (4,0) (row 11) not.
        assert_eq!(m[1][0][3 * WINDOW], 0.0);
        assert_eq!(m[1][0][4 * WINDOW], MASKED);
        let symmetric = (0..AREA).all(|i| (0..AREA).all(|j| m[1][i][j] == m[1][j][i]));
        assert!(symmetric);
    }

    #[test]
    fn roll_is_torch_roll_including_shifts_past_the_side() {
        let x = Tensor::arange(0u32, 5, &Device::Cpu).unwrap().reshape((1, 5)).unwrap();
        let rolled = |s| roll(&x, 1, s).unwrap().flatten_all().unwrap().to_vec1::<u32>().unwrap();
        assert_eq!(rolled(-3), [3, 4, 0, 1, 2]);
        assert_eq!(rolled(3), [2, 3, 4, 0, 1]);
        let y = Tensor::arange(0u32, 2, &Device::Cpu).unwrap().reshape((1, 2)).unwrap();
        assert_eq!(
            roll(&y, 1, -3)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<u32>()
                .unwrap(),
            [1, 0]
        );
    }
}
