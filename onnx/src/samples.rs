//! Small hand-made models with outputs one can compute by hand, for the tests of ftu-infer and
//! its benchmark: a per-pixel linear model, a shift (not flip-invariant), a half-resolution head,
//! a two-output model, and a plain convolutional network of chosen width and depth.

use crate::graph::{Attr, Dim, GraphBuilder, ModelMeta, OnnxError};
use crate::proto::ModelProto;

/// The input shape a sample declares: fixed batch and/or side, or dynamic (`None`).
#[derive(Debug, Clone, Copy, Default)]
pub struct InputShape {
    pub batch: Option<i64>,
    pub size: Option<i64>,
}

impl InputShape {
    fn dims(&self, channels: i64) -> Vec<Dim> {
        let side = |name: &str| self.size.map_or(Dim::named(name), Dim::Fixed);
        vec![
            self.batch.map_or(Dim::named("N"), Dim::Fixed),
            Dim::Fixed(channels),
            side("H"),
            side("W"),
        ]
    }

    fn out_dims(&self, channels: i64, divisor: i64) -> Vec<Dim> {
        let side = |name: &str| self.size.map_or(Dim::named(name), |s| Dim::Fixed(s / divisor));
        vec![
            self.batch.map_or(Dim::named("N"), Dim::Fixed),
            Dim::Fixed(channels),
            side("Ho"),
            side("Wo"),
        ]
    }
}

fn meta(arch: &str) -> ModelMeta {
    ModelMeta {
        props: vec![("ftu.arch".to_string(), arch.to_string())],
        ..ModelMeta::default()
    }
}

/// A 1×1 convolution from 3 channels to `out` with the given weights and bias.
fn conv1x1(g: &mut GraphBuilder, x: &str, out: i64, weights: Vec<f32>, bias: Vec<f32>) -> Result<String, OnnxError> {
    let w = g.initializer("w", &[out, 3, 1, 1], weights)?;
    let b = g.initializer("b", &[out], bias)?;
    Ok(g.node("Conv", &[x, &w, &b], &[("kernel_shape", Attr::Ints(vec![1, 1]))]))
}

/// `w·x + b` per pixel: one output channel.
fn linear_head(g: &mut GraphBuilder, x: &str, weights: [f32; 3], bias: f32) -> Result<String, OnnxError> {
    conv1x1(g, x, 1, weights.to_vec(), vec![bias])
}

/// `logits[n,0,y,x] = w·image[n,:,y,x] + b` (a 1×1 convolution), output called `output`.
/// Equivariant to every flip and rotation.
pub fn pixel_linear(weights: [f32; 3], bias: f32, shape: InputShape, output: &str) -> Result<ModelProto, OnnxError> {
    let mut g = GraphBuilder::new("pixel_linear");
    let x = g.input("image", &shape.dims(3));
    let y = linear_head(&mut g, &x, weights, bias)?;
    g.output(&y, output, &shape.out_dims(1, 1));
    Ok(g.finish(&meta("pixel_linear")))
}

/// `out[n,0,y,x] = image[n,0,y,x+1]` (0 past the right edge): not flip-invariant, so an
/// un-inverted horizontal flip shows.
pub fn shift_left(shape: InputShape) -> Result<ModelProto, OnnxError> {
    let mut g = GraphBuilder::new("shift_left");
    let x = g.input("image", &shape.dims(3));
    let mut kernel = vec![0f32; 3 * 3];
    kernel[2] = 1.0; // channel 0, column +1
    let w = g.initializer("w", &[1, 3, 1, 3], kernel)?;
    let y = g.node(
        "Conv",
        &[&x, &w],
        &[
            ("kernel_shape", Attr::Ints(vec![1, 3])),
            ("pads", Attr::Ints(vec![0, 1, 0, 1])),
        ],
    );
    g.output(&y, "logits", &shape.out_dims(1, 1));
    Ok(g.finish(&meta("shift_left")))
}

/// [`pixel_linear`] on 2×2 means: the output is at half the input resolution.
pub fn half_resolution(weights: [f32; 3], bias: f32) -> Result<ModelProto, OnnxError> {
    let shape = InputShape::default();
    let mut g = GraphBuilder::new("half_resolution");
    let x = g.input("image", &shape.dims(3));
    let pooled = g.node(
        "AveragePool",
        &[&x],
        &[
            ("kernel_shape", Attr::Ints(vec![2, 2])),
            ("strides", Attr::Ints(vec![2, 2])),
        ],
    );
    let y = linear_head(&mut g, &pooled, weights, bias)?;
    g.output(&y, "logits", &shape.out_dims(1, 2));
    Ok(g.finish(&meta("half_resolution")))
}

/// Two outputs like the 2nd-place model: `organ` (N×5, per-image channel means through a fixed
/// matrix) first, and the mask `mask` = [`pixel_linear`] second.
pub fn two_outputs(weights: [f32; 3], bias: f32) -> Result<ModelProto, OnnxError> {
    let shape = InputShape::default();
    let mut g = GraphBuilder::new("two_outputs");
    let x = g.input("image", &shape.dims(3));
    let pooled = g.node("GlobalAveragePool", &[&x], &[]);
    let flat = g.node("Flatten", &[&pooled], &[("axis", Attr::Int(1))]);
    let m = g.initializer("organ_w", &[3, 5], (0..15).map(|i| i as f32 / 10.0).collect())?;
    let organ = g.node("MatMul", &[&flat, &m], &[]);
    g.output(&organ, "organ", &[Dim::named("N"), Dim::Fixed(5)]);
    let y = linear_head(&mut g, &x, weights, bias)?;
    g.output(&y, "mask", &shape.out_dims(1, 1));
    Ok(g.finish(&meta("two_outputs")))
}

/// Two-channel softmax output `[background, ftu]`: ftu logit = w·x + b, background logit 0.
pub fn two_class(weights: [f32; 3], bias: f32) -> Result<ModelProto, OnnxError> {
    let shape = InputShape::default();
    let mut g = GraphBuilder::new("two_class");
    let x = g.input("image", &shape.dims(3));
    let mut k = vec![0f32; 3];
    k.extend(weights);
    let y = conv1x1(&mut g, &x, 2, k, vec![0.0, bias])?;
    g.output(&y, "logits", &shape.out_dims(2, 1));
    Ok(g.finish(&meta("two_class")))
}

/// A plain encoder–decoder of `depth` stride-2 3×3 conv + ReLU stages of `width` channels, a 3×3
/// conv at the bottom, bilinear upsampling back and a 1×1 head: the compute of a small real
/// segmentation network, with deterministic pseudo-random weights from `seed`.
pub fn conv_net(width: i64, depth: usize, seed: u64) -> Result<ModelProto, OnnxError> {
    let shape = InputShape::default();
    let mut g = GraphBuilder::new("conv_net");
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut weights = |n: usize, fan_in: usize| -> Vec<f32> {
        let scale = (2.0 / fan_in as f32).sqrt();
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale
            })
            .collect()
    };
    let mut x = g.input("image", &shape.dims(3));
    let mut channels = 3;
    let conv3 = |g: &mut GraphBuilder, x: &str, w: &str, b: &str, stride: i64| {
        g.node(
            "Conv",
            &[x, w, b],
            &[
                ("kernel_shape", Attr::Ints(vec![3, 3])),
                ("pads", Attr::Ints(vec![1, 1, 1, 1])),
                ("strides", Attr::Ints(vec![stride, stride])),
            ],
        )
    };
    for i in 0..depth {
        let w = g.initializer(
            &format!("enc{i}.w"),
            &[width, channels, 3, 3],
            weights((width * channels * 9) as usize, (channels * 9) as usize),
        )?;
        let b = g.initializer(&format!("enc{i}.b"), &[width], vec![0.01; width as usize])?;
        let y = conv3(&mut g, &x, &w, &b, 2);
        x = g.node("Relu", &[&y], &[]);
        channels = width;
    }
    let w = g.initializer(
        "mid.w",
        &[width, width, 3, 3],
        weights((width * width * 9) as usize, (width * 9) as usize),
    )?;
    let b = g.initializer("mid.b", &[width], vec![0.0; width as usize])?;
    let y = conv3(&mut g, &x, &w, &b, 1);
    x = g.node("Relu", &[&y], &[]);
    let factor = (1i64 << depth) as f32;
    let scales = g.initializer("up.scales", &[4], vec![1.0, 1.0, factor, factor])?;
    let up = g.node("Resize", &[&x, "", &scales], &[("mode", Attr::Str("linear".into()))]);
    let w = g.initializer("head.w", &[1, width, 1, 1], weights(width as usize, width as usize))?;
    let b = g.initializer("head.b", &[1], vec![0.0])?;
    let y = g.node("Conv", &[&up, &w, &b], &[("kernel_shape", Attr::Ints(vec![1, 1]))]);
    g.output(&y, "logits", &shape.out_dims(1, 1));
    Ok(g.finish(&meta("conv_net")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_declare_their_inputs_and_outputs() {
        let m = pixel_linear(
            [1.0, 0.0, 0.0],
            0.0,
            InputShape {
                batch: Some(1),
                size: Some(64),
            },
            "out",
        )
        .unwrap();
        let g = m.graph.unwrap();
        assert_eq!(g.input[0].name.as_deref(), Some("image"));
        assert_eq!(g.output[0].name.as_deref(), Some("out"));
        let m = two_outputs([1.0; 3], 0.0).unwrap();
        let names: Vec<_> = m
            .graph
            .unwrap()
            .output
            .iter()
            .map(|o| o.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["organ", "mask"]);
        let m = conv_net(8, 3, 1).unwrap();
        let init = &m.graph.unwrap().initializer;
        assert_eq!(init.len(), 3 * 2 + 2 + 1 + 2);
    }
}
