//! A graph builder over the protobuf types: inputs, outputs, initializers and nodes by name, then
//! one `ModelProto` with its opset and ftu metadata, written atomically.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use prost::Message;

use crate::proto::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto, AttributeProto, GraphProto,
    ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto,
    ValueInfoProto,
};

/// ONNX IR version 8 goes with opsets up to 17–20; ONNX Runtime 1.17+ reads it.
const IR_VERSION: i64 = 8;

#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("cannot write ONNX model {path}: {cause}")]
    Write { path: PathBuf, cause: std::io::Error },
    #[error("cannot read ONNX model {path}: {cause}")]
    Read { path: PathBuf, cause: std::io::Error },
    #[error("{path} is not an ONNX model: {cause}")]
    Decode { path: PathBuf, cause: prost::DecodeError },
    #[error("initializer {name}: {len} values do not fill shape {dims:?}")]
    InitializerShape { name: String, dims: Vec<i64>, len: usize },
}

/// One dimension of a graph input or output: fixed, or symbolic (dynamic) with a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Fixed(i64),
    Named(String),
}

impl Dim {
    pub fn named(name: &str) -> Dim {
        Dim::Named(name.to_string())
    }
}

/// A node attribute value.
#[derive(Debug, Clone)]
pub enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
    Floats(Vec<f32>),
    Str(String),
}

/// Top-level facts written into the model: opset and `metadata_props`.
#[derive(Debug, Clone)]
pub struct ModelMeta {
    pub opset: i64,
    pub producer: String,
    pub props: Vec<(String, String)>,
}

impl Default for ModelMeta {
    fn default() -> Self {
        ModelMeta {
            opset: 17,
            producer: "ftu".to_string(),
            props: Vec::new(),
        }
    }
}

/// Builds one float32 graph. Node outputs get unique generated names unless given.
#[derive(Debug, Default)]
pub struct GraphBuilder {
    name: String,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    used: HashSet<String>,
    counter: usize,
}

impl GraphBuilder {
    pub fn new(name: &str) -> GraphBuilder {
        GraphBuilder {
            name: name.to_string(),
            ..GraphBuilder::default()
        }
    }

    /// A name not used yet in this graph, starting with `prefix`.
    pub fn fresh(&mut self, prefix: &str) -> String {
        loop {
            self.counter += 1;
            let name = format!("{prefix}_{}", self.counter);
            if self.used.insert(name.clone()) {
                return name;
            }
        }
    }

    /// Declares a float32 graph input.
    pub fn input(&mut self, name: &str, dims: &[Dim]) -> String {
        self.used.insert(name.to_string());
        self.inputs.push(value_info(name, DataType::Float, dims));
        name.to_string()
    }

    /// Declares `value` (a node output already in the graph) as a float32 graph output called `name`,
    /// adding an Identity node when the names differ.
    pub fn output(&mut self, value: &str, name: &str, dims: &[Dim]) {
        if value != name {
            self.node_named("Identity", &[value], name, &[]);
        }
        self.outputs.push(value_info(name, DataType::Float, dims));
    }

    /// A float32 constant tensor, row-major.
    pub fn initializer(&mut self, name: &str, dims: &[i64], data: Vec<f32>) -> Result<String, OnnxError> {
        check_fills(name, dims, data.len())?;
        let raw: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.push_initializer(name, dims, DataType::Float, raw);
        Ok(name.to_string())
    }

    /// An int64 constant tensor (shapes, axes, pads).
    pub fn initializer_i64(&mut self, name: &str, dims: &[i64], data: &[i64]) -> Result<String, OnnxError> {
        check_fills(name, dims, data.len())?;
        let raw: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.push_initializer(name, dims, DataType::Int64, raw);
        Ok(name.to_string())
    }

    fn push_initializer(&mut self, name: &str, dims: &[i64], data_type: DataType, raw: Vec<u8>) {
        self.used.insert(name.to_string());
        self.initializers.push(TensorProto {
            name: Some(name.to_string()),
            dims: dims.to_vec(),
            data_type: Some(data_type as i32),
            raw_data: Some(raw),
            ..TensorProto::default()
        });
    }

    /// Appends a node with one output and returns that output's generated name. An empty input
    /// name is ONNX's "optional input left out".
    pub fn node(&mut self, op: &str, inputs: &[&str], attrs: &[(&str, Attr)]) -> String {
        let out = self.fresh(&op.to_ascii_lowercase());
        self.push_node(op, inputs, std::slice::from_ref(&out), attrs);
        out
    }

    /// Appends a node whose single output has the given name.
    pub fn node_named(&mut self, op: &str, inputs: &[&str], output: &str, attrs: &[(&str, Attr)]) -> String {
        self.used.insert(output.to_string());
        self.push_node(op, inputs, &[output.to_string()], attrs);
        output.to_string()
    }

    /// Appends a node with several outputs.
    pub fn node_multi(&mut self, op: &str, inputs: &[&str], outputs: usize, attrs: &[(&str, Attr)]) -> Vec<String> {
        let names: Vec<String> = (0..outputs).map(|_| self.fresh(&op.to_ascii_lowercase())).collect();
        self.push_node(op, inputs, &names, attrs);
        names
    }

    fn push_node(&mut self, op: &str, inputs: &[&str], outputs: &[String], attrs: &[(&str, Attr)]) {
        let name = self.fresh(&format!("{op}_node"));
        self.nodes.push(NodeProto {
            name: Some(name),
            op_type: Some(op.to_string()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.to_vec(),
            attribute: attrs.iter().map(|(name, value)| attribute(name, value)).collect(),
            ..NodeProto::default()
        });
    }

    /// The finished model.
    pub fn finish(self, meta: &ModelMeta) -> ModelProto {
        ModelProto {
            ir_version: Some(IR_VERSION),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(meta.opset),
            }],
            producer_name: Some(meta.producer.clone()),
            producer_version: Some(env!("CARGO_PKG_VERSION").to_string()),
            graph: Some(GraphProto {
                name: Some(self.name),
                node: self.nodes,
                initializer: self.initializers,
                input: self.inputs,
                output: self.outputs,
                ..GraphProto::default()
            }),
            metadata_props: meta
                .props
                .iter()
                .map(|(k, v)| StringStringEntryProto {
                    key: Some(k.clone()),
                    value: Some(v.clone()),
                })
                .collect(),
            ..ModelProto::default()
        }
    }
}

/// The model's protobuf bytes.
pub fn to_bytes(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

/// Writes the model to `path` through a temp file and a rename, so a failed write leaves no half model.
pub fn write(model: &ModelProto, path: &Path) -> Result<(), OnnxError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let result = std::fs::write(&tmp, to_bytes(model)).and_then(|()| std::fs::rename(&tmp, path));
    result.map_err(|cause| {
        let _ = std::fs::remove_file(&tmp);
        OnnxError::Write {
            path: path.to_path_buf(),
            cause,
        }
    })
}

/// Reads and decodes an ONNX file.
pub fn read(path: &Path) -> Result<ModelProto, OnnxError> {
    let bytes = std::fs::read(path).map_err(|cause| OnnxError::Read {
        path: path.to_path_buf(),
        cause,
    })?;
    ModelProto::decode(bytes.as_slice()).map_err(|cause| OnnxError::Decode {
        path: path.to_path_buf(),
        cause,
    })
}

/// An initializer's values must fill its shape exactly.
fn check_fills(name: &str, dims: &[i64], len: usize) -> Result<(), OnnxError> {
    if dims.iter().product::<i64>() == len as i64 {
        Ok(())
    } else {
        Err(OnnxError::InitializerShape {
            name: name.to_string(),
            dims: dims.to_vec(),
            len,
        })
    }
}

fn value_info(name: &str, data_type: DataType, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: Some(match d {
                Dim::Fixed(v) => tensor_shape_proto::dimension::Value::DimValue(*v),
                Dim::Named(s) => tensor_shape_proto::dimension::Value::DimParam(s.clone()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(data_type as i32),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..TypeProto::default()
        }),
        ..ValueInfoProto::default()
    }
}

fn attribute(name: &str, value: &Attr) -> AttributeProto {
    let mut a = AttributeProto {
        name: Some(name.to_string()),
        ..AttributeProto::default()
    };
    match value {
        Attr::Int(v) => {
            a.r#type = Some(AttributeType::Int as i32);
            a.i = Some(*v);
        }
        Attr::Ints(v) => {
            a.r#type = Some(AttributeType::Ints as i32);
            a.ints = v.clone();
        }
        Attr::Float(v) => {
            a.r#type = Some(AttributeType::Float as i32);
            a.f = Some(*v);
        }
        Attr::Floats(v) => {
            a.r#type = Some(AttributeType::Floats as i32);
            a.floats = v.clone();
        }
        Attr::Str(v) => {
            a.r#type = Some(AttributeType::String as i32);
            a.s = Some(v.as_bytes().to_vec());
        }
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_round_trips_through_bytes_with_its_metadata() {
        let mut g = GraphBuilder::new("t");
        let x = g.input(
            "image",
            &[Dim::named("N"), Dim::Fixed(3), Dim::named("H"), Dim::named("W")],
        );
        let w = g.initializer("w", &[1, 3, 1, 1], vec![1.0, 2.0, 3.0]).unwrap();
        let y = g.node("Conv", &[&x, &w], &[("kernel_shape", Attr::Ints(vec![1, 1]))]);
        g.output(
            &y,
            "logits",
            &[Dim::named("N"), Dim::Fixed(1), Dim::named("H"), Dim::named("W")],
        );
        let meta = ModelMeta {
            props: vec![("ftu.arch".into(), "test".into())],
            ..ModelMeta::default()
        };
        let model = g.finish(&meta);
        let back = ModelProto::decode(to_bytes(&model).as_slice()).unwrap();
        assert_eq!(back, model);
        let graph = back.graph.unwrap();
        assert_eq!(graph.node.len(), 2, "Conv, then Identity to the output name");
        assert_eq!(graph.output[0].name.as_deref(), Some("logits"));
        assert_eq!(back.opset_import[0].version, Some(17));
        assert_eq!(back.metadata_props[0].value.as_deref(), Some("test"));
        let raw = graph.initializer[0].raw_data.as_ref().unwrap();
        assert_eq!(f32::from_le_bytes(raw[4..8].try_into().unwrap()), 2.0);
    }

    #[test]
    fn an_initializer_that_does_not_fill_its_shape_is_refused() {
        let mut g = GraphBuilder::new("t");
        let err = g.initializer("w", &[2, 2], vec![1.0; 3]).unwrap_err();
        assert!(err.to_string().contains("initializer w"), "{err}");
    }

    #[test]
    fn fresh_names_never_collide_with_declared_ones() {
        let mut g = GraphBuilder::new("t");
        g.input("relu_1", &[Dim::Fixed(1)]);
        let a = g.node("Relu", &["relu_1"], &[]);
        let b = g.node("Relu", &[&a], &[]);
        assert_ne!(a, "relu_1");
        assert_ne!(a, b);
    }
}
