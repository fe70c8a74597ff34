//! What a model looks like once ONNX Runtime has read it: its inputs' and outputs' names,
//! element types and shapes, its opset and its metadata.

use std::path::Path;

use ort::session::Session;
use ort::value::{TensorElementType, ValueType};

use super::opset::default_opset;

/// A tensor's element type: the three ftu feeds and reads, or any other by ONNX's name for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Element {
    F32,
    F16,
    BF16,
    /// ONNX's name for the type: `tensor(int64)`, `tensor(double)`, `seq(tensor(float))`, …
    Other(String),
}

impl Element {
    /// What ftu feeds a model's image input and reads from its mask output, as the error
    /// messages list them.
    pub const ACCEPTED: &'static str = "tensor(float), tensor(float16) or tensor(bfloat16)";

    fn of(ty: TensorElementType) -> Element {
        match ty {
            TensorElementType::Float32 => Element::F32,
            TensorElementType::Float16 => Element::F16,
            TensorElementType::Bfloat16 => Element::BF16,
            other => Element::Other(format!("tensor({})", onnx_element_name(other))),
        }
    }

    /// ONNX's name: `tensor(float)`, `tensor(float16)`, `tensor(bfloat16)` or the other's.
    pub fn onnx_name(&self) -> &str {
        match self {
            Element::F32 => "tensor(float)",
            Element::F16 => "tensor(float16)",
            Element::BF16 => "tensor(bfloat16)",
            Element::Other(name) => name,
        }
    }

    /// Whether ftu can feed (an input) or read (an output) tensors of this type.
    pub fn is_supported(&self) -> bool {
        !matches!(self, Element::Other(_))
    }
}

/// `float32`, `float16` and `bfloat16` for the types ftu reads; ONNX's name for any other.
impl std::fmt::Display for Element {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Element::F32 => "float32",
            Element::F16 => "float16",
            Element::BF16 => "bfloat16",
            Element::Other(name) => name,
        })
    }
}

/// ONNX's name for an element type, as in `tensor(NAME)` (onnx.proto's `TensorProto.DataType`,
/// lower case, as ONNX Runtime prints it).
fn onnx_element_name(ty: TensorElementType) -> &'static str {
    use TensorElementType as T;
    match ty {
        T::Float32 => "float",
        T::Uint8 => "uint8",
        T::Int8 => "int8",
        T::Uint16 => "uint16",
        T::Int16 => "int16",
        T::Int32 => "int32",
        T::Int64 => "int64",
        T::String => "string",
        T::Bool => "bool",
        T::Float16 => "float16",
        T::Float64 => "double",
        T::Uint32 => "uint32",
        T::Uint64 => "uint64",
        T::Bfloat16 => "bfloat16",
        T::Complex64 => "complex64",
        T::Complex128 => "complex128",
        T::Float8E4M3FN => "float8e4m3fn",
        T::Float8E4M3FNUZ => "float8e4m3fnuz",
        T::Float8E5M2 => "float8e5m2",
        T::Float8E5M2FNUZ => "float8e5m2fnuz",
        T::Uint4 => "uint4",
        T::Int4 => "int4",
        T::Float4E2M1 => "float4e2m1",
        T::Float8E8M0 => "float8e8m0",
        T::Uint2 => "uint2",
        T::Int2 => "int2",
        T::Undefined => "undefined",
        _ => "unknown",
    }
}

/// ONNX's name for a value type that is not a tensor: `seq(tensor(float))`, `map(int64,tensor(float))`,
/// `optional(…)`.
fn onnx_value_name(ty: &ValueType) -> String {
    match ty {
        ValueType::Tensor { ty, .. } => format!("tensor({})", onnx_element_name(*ty)),
        ValueType::Sequence(inner) => format!("seq({})", onnx_value_name(inner)),
        ValueType::Map { key, value } => {
            format!("map({},tensor({}))", onnx_element_name(*key), onnx_element_name(*value))
        }
        ValueType::Optional(inner) => format!("optional({})", onnx_value_name(inner)),
    }
}

/// One input or output of a model: name, element type, dims (`None` = dynamic, with its symbol).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub element: Element,
    pub dims: Vec<Option<i64>>,
    pub symbols: Vec<String>,
}

impl TensorInfo {
    /// `N×3×H×W`, dynamic dims by their symbol or `?`.
    pub fn shape_string(&self) -> String {
        if self.dims.is_empty() {
            return "scalar or unknown".to_string();
        }
        self.dims
            .iter()
            .enumerate()
            .map(|(i, d)| match d {
                Some(v) => v.to_string(),
                None => self
                    .symbols
                    .get(i)
                    .filter(|s| !s.is_empty())
                    .cloned()
                    .unwrap_or_else(|| "?".to_string()),
            })
            .collect::<Vec<_>>()
            .join("×")
    }
}

/// What ONNX Runtime reports about a model.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub inputs: Vec<TensorInfo>,
    pub outputs: Vec<TensorInfo>,
    pub opset: Option<u32>,
    pub producer: Option<String>,
    /// `metadata_props`, sorted by key.
    pub metadata: Vec<(String, String)>,
}

impl ModelInfo {
    /// What `session` reports, with the opset read from the model file at `path` (ONNX
    /// Runtime's C API has it only from 1.22 on, and ftu asks for no newer API than 1.17's).
    pub fn of(session: &Session, path: &Path) -> ModelInfo {
        let (producer, metadata) = match session.metadata() {
            Ok(meta) => {
                let mut props: Vec<(String, String)> = meta
                    .custom_keys()
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|k| meta.custom(&k).map(|v| (k, v)))
                    .collect();
                props.sort();
                (meta.producer(), props)
            }
            Err(_) => (None, Vec::new()),
        };
        ModelInfo {
            inputs: session
                .inputs()
                .iter()
                .map(|o| tensor_info(o.name(), o.dtype()))
                .collect(),
            outputs: session
                .outputs()
                .iter()
                .map(|o| tensor_info(o.name(), o.dtype()))
                .collect(),
            opset: default_opset(path).ok().flatten(),
            producer,
            metadata,
        }
    }

    /// A readable report, as `ftu-infer inspect` prints it.
    pub fn report(&self) -> String {
        let mut s = String::new();
        let opset = self.opset.map_or("unknown".to_string(), |v| v.to_string());
        s.push_str(&format!("opset: {opset}\n"));
        if let Some(p) = self.producer.as_ref().filter(|p| !p.is_empty()) {
            s.push_str(&format!("producer: {p}\n"));
        }
        for (title, list) in [("inputs", &self.inputs), ("outputs", &self.outputs)] {
            s.push_str(&format!("{title}:\n"));
            for (i, t) in list.iter().enumerate() {
                s.push_str(&format!("  [{i}] {}: {} {}\n", t.name, t.element, t.shape_string()));
            }
        }
        let (ftu, other): (Vec<_>, Vec<_>) = self.metadata.iter().partition(|(k, _)| k.starts_with("ftu."));
        for (title, list) in [("ftu metadata", ftu), ("other metadata", other)] {
            if !list.is_empty() {
                s.push_str(&format!("{title}:\n"));
                for (k, v) in list {
                    s.push_str(&format!("  {k} = {v}\n"));
                }
            }
        }
        s
    }
}

fn tensor_info(name: &str, dtype: &ValueType) -> TensorInfo {
    match dtype {
        ValueType::Tensor {
            ty,
            shape,
            dimension_symbols,
        } => TensorInfo {
            name: name.to_string(),
            element: Element::of(*ty),
            dims: shape.iter().map(|&d| (d >= 0).then_some(d)).collect(),
            symbols: dimension_symbols.iter().cloned().collect(),
        },
        other => TensorInfo {
            name: name.to_string(),
            element: Element::Other(onnx_value_name(other)),
            dims: Vec::new(),
            symbols: Vec::new(),
        },
    }
}
