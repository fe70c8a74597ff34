//! A float32 model turned into a float16 one that still takes and gives float32: every float
//! initializer becomes float16 (except the inputs ONNX requires in float32, such as Resize's
//! scales), a Cast follows each float input and precedes each float output, so the manifests and
//! callers of the float32 model need no change. Refuses graphs with ops whose type rules it does
//! not know, rather than writing a model ONNX Runtime would reject or run wrongly.

use std::collections::{HashMap, HashSet};

use half::f16;

use crate::proto::{attribute_proto::AttributeType, tensor_proto::DataType, type_proto, AttributeProto, ModelProto};

/// Ops whose float inputs and outputs all share one type, so that they run in float16 when their
/// float inputs are float16. Resize is here too, with its float32-only inputs in [`F32_INPUTS`].
const UNIFORM_OPS: &[&str] = &[
    "Abs",
    "Add",
    "AveragePool",
    "BatchNormalization",
    "Clip",
    "Concat",
    "Conv",
    "ConvTranspose",
    "Div",
    "Erf",
    "Expand",
    "Flatten",
    "Gather",
    "Gemm",
    "GlobalAveragePool",
    "HardSigmoid",
    "HardSwish",
    "Identity",
    "LayerNormalization",
    "MatMul",
    "MaxPool",
    "Mul",
    "Neg",
    "Pad",
    "ReduceMean",
    "Relu",
    "Reshape",
    "Resize",
    "Sigmoid",
    "Slice",
    "Softmax",
    "Split",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Tanh",
    "Transpose",
    "Unsqueeze",
];

/// Ops whose outputs are never float (they stay as they are).
const NON_FLOAT_OUTPUT_OPS: &[&str] = &["Shape"];

/// (op, input index) pairs that ONNX types as float32 whatever the data's type.
const F32_INPUTS: &[(&str, usize)] = &[("Resize", 1), ("Resize", 2)];

/// What the conversion did, for the exporter to report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fp16Report {
    /// Float initializers stored as float16.
    pub initializers: usize,
    /// Values stored in them.
    pub values: usize,
    /// Finite values beyond float16's range (±65504), stored as ±65504.
    pub saturated: usize,
    /// Non-zero values below float16's smallest subnormal (about 6e-8), stored as zero.
    pub flushed: usize,
    /// Float initializers kept float32 because ONNX types that input float32 (Resize's scales).
    pub kept_f32: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum Fp16Error {
    #[error("the model has no graph")]
    NoGraph,
    #[error(
        "node {node} ({op}): float16 conversion does not know this op's type rules; \
         export in float32 instead"
    )]
    UnknownOp { node: String, op: String },
    #[error("initializer {name} is read both as float32-only input ({op}) and as data")]
    MixedUse { name: String, op: String },
    #[error("initializer {name}: {len} raw bytes are not float32 values")]
    RawLength { name: String, len: usize },
}

/// Converts `model` in place; its float32 inputs and outputs keep their names and types.
pub fn to_fp16(model: &mut ModelProto) -> Result<Fp16Report, Fp16Error> {
    let graph = model.graph.as_mut().ok_or(Fp16Error::NoGraph)?;
    let float = DataType::Float as i32;
    let half = DataType::Float16 as i32;

    for node in &graph.node {
        let op = node.op_type();
        if !UNIFORM_OPS.contains(&op) && !NON_FLOAT_OUTPUT_OPS.contains(&op) {
            return Err(Fp16Error::UnknownOp {
                node: node.name().to_string(),
                op: op.to_string(),
            });
        }
    }

    // Which float initializers must stay float32, and which are data.
    let mut f32_only: HashMap<String, String> = HashMap::new();
    let mut data: HashSet<String> = HashSet::new();
    for node in &graph.node {
        for (i, input) in node.input.iter().enumerate() {
            if F32_INPUTS.contains(&(node.op_type(), i)) {
                f32_only.insert(input.clone(), node.op_type().to_string());
            } else {
                data.insert(input.clone());
            }
        }
    }

    let mut report = Fp16Report::default();
    for init in graph.initializer.iter_mut().filter(|t| t.data_type == Some(float)) {
        let name = init.name().to_string();
        if let Some(op) = f32_only.get(&name) {
            if data.contains(&name) {
                return Err(Fp16Error::MixedUse { name, op: op.clone() });
            }
            report.kept_f32 += 1;
            continue;
        }
        let values: Vec<f32> = match &init.raw_data {
            Some(raw) if raw.len() % 4 == 0 => raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Some(raw) => return Err(Fp16Error::RawLength { name, len: raw.len() }),
            None => std::mem::take(&mut init.float_data),
        };
        let mut raw = Vec::with_capacity(values.len() * 2);
        for v in values {
            raw.extend_from_slice(&to_half(v, &mut report).to_le_bytes());
        }
        report.initializers += 1;
        init.data_type = Some(half);
        init.raw_data = Some(raw);
    }

    // Float graph inputs: a Cast to float16 under a new name, read by everything that read the input.
    let mut renamed: HashMap<String, String> = HashMap::new();
    let mut casts_in = Vec::new();
    let mut used: HashSet<String> = graph.node.iter().flat_map(|n| n.output.iter().cloned()).collect();
    used.extend(graph.input.iter().map(|i| i.name().to_string()));
    used.extend(graph.initializer.iter().map(|i| i.name().to_string()));
    let mut fresh = |base: &str| {
        let mut name = format!("{base}_fp16");
        while used.contains(&name) {
            name.push('_');
        }
        used.insert(name.clone());
        name
    };
    for input in graph.input.iter().filter(|i| elem_type(i) == Some(float)) {
        let name = input.name().to_string();
        let cast = fresh(&name);
        casts_in.push(cast_node(&format!("{name}_to_fp16"), &name, &cast, DataType::Float16));
        renamed.insert(name, cast);
    }
    for node in &mut graph.node {
        for input in &mut node.input {
            if let Some(new) = renamed.get(input) {
                *input = new.clone();
            }
        }
    }

    // Float graph outputs: the producing value gets a new name, and a Cast back to float32 takes the old.
    let mut casts_out = Vec::new();
    for output in graph.output.iter().filter(|o| elem_type(o) == Some(float)) {
        let name = output.name().to_string();
        let inner = fresh(&name);
        for node in &mut graph.node {
            for value in node.input.iter_mut().chain(node.output.iter_mut()) {
                if *value == name {
                    *value = inner.clone();
                }
            }
        }
        casts_out.push(cast_node(&format!("{name}_to_fp32"), &inner, &name, DataType::Float));
    }

    for info in &mut graph.value_info {
        if elem_type(info) == Some(float) {
            if let Some(type_proto::Value::TensorType(t)) = info.r#type.as_mut().and_then(|t| t.value.as_mut()) {
                t.elem_type = Some(half);
            }
        }
    }

    let body = std::mem::take(&mut graph.node);
    graph.node = casts_in.into_iter().chain(body).chain(casts_out).collect();
    Ok(report)
}

fn to_half(v: f32, report: &mut Fp16Report) -> f16 {
    report.values += 1;
    let h = f16::from_f32(v);
    if v.is_finite() && h.is_infinite() {
        report.saturated += 1;
        return if v > 0.0 { f16::MAX } else { f16::MIN };
    }
    if v != 0.0 && h.to_f32() == 0.0 {
        report.flushed += 1;
    }
    h
}

fn elem_type(info: &crate::proto::ValueInfoProto) -> Option<i32> {
    match info.r#type.as_ref()?.value.as_ref()? {
        type_proto::Value::TensorType(t) => t.elem_type,
        _ => None,
    }
}

fn cast_node(name: &str, input: &str, output: &str, to: DataType) -> crate::proto::NodeProto {
    crate::proto::NodeProto {
        name: Some(name.to_string()),
        op_type: Some("Cast".to_string()),
        input: vec![input.to_string()],
        output: vec![output.to_string()],
        attribute: vec![AttributeProto {
            name: Some("to".to_string()),
            r#type: Some(AttributeType::Int as i32),
            i: Some(to as i64),
            ..AttributeProto::default()
        }],
        ..crate::proto::NodeProto::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Attr, Dim, GraphBuilder, ModelMeta};

    fn dims() -> Vec<Dim> {
        vec![Dim::named("N"), Dim::Fixed(1), Dim::named("H"), Dim::named("W")]
    }

    /// image → Conv → Resize(×2) → logits, with a Shape output that must stay int64.
    fn model() -> ModelProto {
        let mut g = GraphBuilder::new("t");
        let x = g.input("image", &dims());
        let w = g.initializer("w", &[1, 1, 1, 1], vec![1e5]).unwrap();
        let b = g.initializer("b", &[1], vec![1e-9]).unwrap();
        let y = g.node("Conv", &[&x, &w, &b], &[("kernel_shape", Attr::Ints(vec![1, 1]))]);
        let scales = g.initializer("scales", &[4], vec![1.0, 1.0, 2.0, 2.0]).unwrap();
        let up = g.node("Resize", &[&y, "", &scales], &[("mode", Attr::Str("nearest".into()))]);
        g.output(&up, "logits", &dims());
        g.finish(&ModelMeta::default())
    }

    #[test]
    fn weights_become_float16_and_the_io_stays_float32() {
        let mut m = model();
        let report = to_fp16(&mut m).unwrap();
        assert_eq!(
            report,
            Fp16Report {
                initializers: 2,
                values: 2,
                saturated: 1,
                flushed: 1,
                kept_f32: 1
            }
        );
        let g = m.graph.as_ref().unwrap();
        let init = |name: &str| g.initializer.iter().find(|t| t.name() == name).unwrap();
        assert_eq!(init("w").data_type, Some(DataType::Float16 as i32));
        assert_eq!(init("w").raw_data.as_deref(), Some(&f16::MAX.to_le_bytes()[..]));
        assert_eq!(init("scales").data_type, Some(DataType::Float as i32));
        assert_eq!(g.input[0].name(), "image");
        assert_eq!(elem_type(&g.input[0]), Some(DataType::Float as i32));
        assert_eq!(elem_type(&g.output[0]), Some(DataType::Float as i32));

        let first = &g.node[0];
        assert_eq!((first.op_type(), first.input[0].as_str()), ("Cast", "image"));
        let last = g.node.last().unwrap();
        assert_eq!((last.op_type(), last.output[0].as_str()), ("Cast", "logits"));
        // Nothing but the casts reads the float32 input or writes the float32 output.
        for n in &g.node[1..g.node.len() - 1] {
            assert!(!n.input.iter().any(|i| i == "image"), "{n:?}");
            assert!(!n.output.iter().any(|o| o == "logits"), "{n:?}");
        }
        let conv = g.node.iter().find(|n| n.op_type() == "Conv").unwrap();
        assert_eq!(conv.input[0], first.output[0]);
    }

    #[test]
    fn an_op_with_unknown_type_rules_is_refused() {
        let mut g = GraphBuilder::new("t");
        let x = g.input("image", &dims());
        let y = g.node("RandomNormalLike", &[&x], &[]);
        g.output(&y, "logits", &dims());
        let mut m = g.finish(&ModelMeta::default());
        let err = to_fp16(&mut m).unwrap_err();
        assert!(err.to_string().contains("RandomNormalLike"), "{err}");
    }
}
