//! The ONNX side of every layer: an `Exporter` wraps ftu-onnx's `GraphBuilder` and turns Candle
//! tensors into initializers named after their parameters, plus the few graph idioms layers share.

use candle_core::Tensor;
use ftu_onnx::{Attr, GraphBuilder};

use crate::Result;

pub struct Exporter {
    graph: GraphBuilder,
}

impl Exporter {
    pub fn new(name: &str) -> Exporter {
        Exporter {
            graph: GraphBuilder::new(name),
        }
    }

    pub fn graph(&mut self) -> &mut GraphBuilder {
        &mut self.graph
    }

    pub fn into_graph(self) -> GraphBuilder {
        self.graph
    }

    /// A parameter tensor as an initializer with the given name.
    pub fn param(&mut self, name: &str, tensor: &Tensor) -> Result<String> {
        let dims: Vec<i64> = tensor.dims().iter().map(|&d| d as i64).collect();
        let data = tensor.flatten_all()?.to_vec1::<f32>()?;
        Ok(self.graph.initializer(name, &dims, data)?)
    }

    /// A float constant under a fresh name.
    pub fn floats(&mut self, dims: &[i64], data: Vec<f32>) -> Result<String> {
        let name = self.graph.fresh("const");
        Ok(self.graph.initializer(&name, dims, data)?)
    }

    /// A float scalar constant.
    pub fn scalar(&mut self, value: f32) -> Result<String> {
        self.floats(&[], vec![value])
    }

    /// An int64 vector constant under a fresh name.
    pub fn ints(&mut self, data: &[i64]) -> Result<String> {
        let name = self.graph.fresh("shape");
        Ok(self.graph.initializer_i64(&name, &[data.len() as i64], data)?)
    }

    /// An int64 scalar (rank 0) constant, as Range and Gather take.
    pub fn int_scalar(&mut self, value: i64) -> Result<String> {
        let name = self.graph.fresh("int");
        Ok(self.graph.initializer_i64(&name, &[], &[value])?)
    }

    pub fn op(&mut self, op: &str, inputs: &[&str], attrs: &[(&str, Attr)]) -> String {
        self.graph.node(op, inputs, attrs)
    }

    pub fn add(&mut self, a: &str, b: &str) -> String {
        self.op("Add", &[a, b], &[])
    }

    pub fn mul(&mut self, a: &str, b: &str) -> String {
        self.op("Mul", &[a, b], &[])
    }

    pub fn concat(&mut self, values: &[&str], axis: i64) -> String {
        self.op("Concat", values, &[("axis", Attr::Int(axis))])
    }

    /// `x` of N×C×H×W as tokens N×(H·W)×C, as a transformer block reads it.
    pub fn to_tokens(&mut self, x: &str) -> Result<String> {
        let shape = self.ints(&[0, 0, -1])?;
        let flat = self.op("Reshape", &[x, &shape], &[]);
        Ok(self.op("Transpose", &[&flat], &[("perm", Attr::Ints(vec![0, 2, 1]))]))
    }

    /// Tokens N×L×C back to N×C×H×W, with H and W taken from `like` (any N×?×H×W value).
    pub fn to_spatial(&mut self, tokens: &str, channels: usize, like: &str) -> Result<String> {
        let chw = self.op("Transpose", &[tokens], &[("perm", Attr::Ints(vec![0, 2, 1]))]);
        let hw = self.spatial_dims(like)?;
        let lead = self.ints(&[0, channels as i64])?;
        let shape = self.concat(&[&lead, &hw], 0);
        Ok(self.op("Reshape", &[&chw, &shape], &[]))
    }

    /// The shape [N, C, H, W] of `x`'s N and C with `like`'s H and W, as an int64 vector.
    pub fn shape_with_spatial_of(&mut self, x: &str, like: &str) -> Result<String> {
        let shape = self.op("Shape", &[x], &[]);
        let (start, end) = (self.ints(&[0])?, self.ints(&[2])?);
        let nc = self.op("Slice", &[&shape, &start, &end], &[]);
        let hw = self.spatial_dims(like)?;
        Ok(self.concat(&[&nc, &hw], 0))
    }

    /// The [H, W] of an N×C×H×W value, as an int64 vector.
    pub fn spatial_dims(&mut self, x: &str) -> Result<String> {
        let shape = self.op("Shape", &[x], &[]);
        let starts = self.ints(&[2])?;
        let ends = self.ints(&[4])?;
        Ok(self.op("Slice", &[&shape, &starts, &ends], &[]))
    }
}
