//! Models whose image input and mask output are float16 or bfloat16 get their batches in that
//! type and are read as float32; other types are refused by ONNX's name for them.

use std::path::{Path, PathBuf};

use ftu_formats::manifest::Manifest;
use ftu_formats::organ::{DataSource, Organ};
use ftu_formats::slide::RgbImage;
use ftu_infer::engine::{Engine, SlideContext, Timings};
use ftu_infer::session::{Element, Runtime, RuntimeOptions};
use ftu_onnx::proto::tensor_proto::DataType;
use ftu_onnx::proto::{attribute_proto::AttributeType, type_proto, AttributeProto, ModelProto, NodeProto};
use ftu_onnx::samples::{self, InputShape};

const KIDNEY: SlideContext = SlideContext {
    organ: Organ::Kidney,
    source: DataSource::Hpa,
    pixel_size: 0.4,
};

fn engine(dir: &Path, manifest: &str) -> Result<Engine, String> {
    let path = dir.join("ensemble.toml");
    std::fs::write(&path, manifest).unwrap();
    let manifest = Manifest::load(&path).map_err(|e| e.to_string())?;
    let runtime = Runtime::load(RuntimeOptions {
        threads: Some(1),
        ..RuntimeOptions::default()
    })
    .expect("ONNX Runtime must be installed for these tests (see scripts/test.sh)");
    Engine::load(manifest, &runtime).map_err(|e| e.to_string())
}

fn cast(input: &str, output: &str, to: DataType) -> NodeProto {
    NodeProto {
        name: Some(format!("{output}_cast")),
        op_type: Some("Cast".to_string()),
        input: vec![input.to_string()],
        output: vec![output.to_string()],
        attribute: vec![AttributeProto {
            name: Some("to".to_string()),
            r#type: Some(AttributeType::Int as i32),
            i: Some(to as i64),
            ..AttributeProto::default()
        }],
        ..NodeProto::default()
    }
}

fn set_elem_type(info: &mut ftu_onnx::proto::ValueInfoProto, ty: DataType) {
    match info.r#type.as_mut().and_then(|t| t.value.as_mut()) {
        Some(type_proto::Value::TensorType(t)) => t.elem_type = Some(ty as i32),
        _ => panic!("{:?} is not a tensor", info.name),
    }
}

/// `model` (float32 in, float32 out) with its graph input taking `input` and its first output
/// giving `output`: a Cast after the input and before the output, the float32 graph between.
fn with_io_types(mut model: ModelProto, input: DataType, output: DataType) -> ModelProto {
    let g = model.graph.as_mut().unwrap();
    let x = g.input[0].name.clone().unwrap();
    let y = g.output[0].name.clone().unwrap();
    let (x32, y32) = (format!("{x}_f32"), format!("{y}_f32"));
    for node in &mut g.node {
        node.input
            .iter_mut()
            .filter(|i| **i == x)
            .for_each(|i| *i = x32.clone());
        node.output
            .iter_mut()
            .filter(|o| **o == y)
            .for_each(|o| *o = y32.clone());
    }
    g.node.insert(0, cast(&x, &x32, DataType::Float));
    g.node.push(cast(&y32, &y, output));
    set_elem_type(&mut g.input[0], input);
    set_elem_type(&mut g.output[0], output);
    model
}

fn write(dir: &Path, name: &str, model: &ModelProto) -> PathBuf {
    let path = dir.join(name);
    ftu_onnx::write(model, &path).unwrap();
    path
}

fn slide(seed: usize) -> RgbImage {
    let mut img = RgbImage::new(64, 64);
    for (i, v) in img.data.iter_mut().enumerate() {
        *v = ((i * 7919 + seed * 104_729) % 251) as u8;
    }
    img
}

const LINEAR: [f32; 3] = [0.5, -0.25, 0.75];

fn linear_manifest(model: &str) -> String {
    format!(
        "[[group]]\nsize = 64\n[[group.model]]\npath = \"{model}\"\nnorm = \"unit\"\noutput = \"o\"\nactivation = \"none\"\n"
    )
}

/// The linear model's output in float32 for `img`, at `unit` normalisation.
fn linear_expected(img: &RgbImage) -> Vec<f32> {
    img.data
        .chunks_exact(3)
        .map(|p| (0..3).map(|c| LINEAR[c] * p[c] as f32 / 255.0).sum::<f32>() + 0.125)
        .collect()
}

fn worst(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// float16 and bfloat16 inputs and outputs: the engine feeds and reads each; the values carry
/// that type's rounding (float16 11 significant bits, bfloat16 8) and no more.
#[test]
fn half_precision_inputs_and_outputs_are_fed_and_read() {
    let dir = tempfile::tempdir().unwrap();
    let base = samples::pixel_linear(LINEAR, 0.125, InputShape::default(), "o").unwrap();
    let img = slide(1);
    let want = linear_expected(&img);
    for (ty, element, tolerance) in [
        (DataType::Float16, Element::F16, 2e-3),
        (DataType::Bfloat16, Element::BF16, 1.6e-2),
    ] {
        let name = format!("{}.onnx", element.onnx_name());
        write(dir.path(), &name, &with_io_types(base.clone(), ty, ty));
        let mut e = engine(dir.path(), &linear_manifest(&name)).unwrap();
        let (_, info) = e.models().next().unwrap();
        assert_eq!(info.inputs[0].element, element);
        assert_eq!(info.outputs[0].element, element);
        let got = e.predict(&img, &KIDNEY, &mut Timings::default()).unwrap();
        let w = worst(&got.data, &want);
        assert!(w <= tolerance, "{element}: worst difference {w} > {tolerance}");
        assert!(w > 0.0, "{element}: no rounding at all; was the model run in float32?");
    }
    // A float16 input with a float32 output, and the other way round.
    for (input, output) in [
        (DataType::Float16, DataType::Float),
        (DataType::Float, DataType::Bfloat16),
    ] {
        write(dir.path(), "mixed.onnx", &with_io_types(base.clone(), input, output));
        let mut e = engine(dir.path(), &linear_manifest("mixed.onnx")).unwrap();
        let got = e.predict(&img, &KIDNEY, &mut Timings::default()).unwrap();
        assert!(worst(&got.data, &want) <= 1.6e-2, "{input:?} in, {output:?} out");
    }
}

/// An image input or mask output of a type ftu does not feed is refused at load, named as ONNX
/// names it, with the types ftu accepts.
#[test]
fn other_types_are_refused_by_their_onnx_name() {
    let dir = tempfile::tempdir().unwrap();
    let base = samples::pixel_linear(LINEAR, 0.125, InputShape::default(), "o").unwrap();
    write(
        dir.path(),
        "int64.onnx",
        &with_io_types(base.clone(), DataType::Int64, DataType::Float),
    );
    let err = engine(dir.path(), &linear_manifest("int64.onnx")).err().unwrap();
    assert!(
        err.contains("input `image` is tensor(int64) N×3×H×W")
            && err.contains("tensor(float), tensor(float16) or tensor(bfloat16)"),
        "{err}"
    );
    write(
        dir.path(),
        "double.onnx",
        &with_io_types(base, DataType::Float, DataType::Double),
    );
    let err = engine(dir.path(), &linear_manifest("double.onnx")).err().unwrap();
    assert!(
        err.contains("output `o` is tensor(double)") && err.contains("tensor(bfloat16)"),
        "{err}"
    );
}

/// `tests/fixtures/pytorch_two_head_fp16.onnx` is a PyTorch model made float16 with `model.half()`
/// and exported (float16 weights, input `image` and outputs; see make_pytorch_fp16_fixture.py).
/// Its probabilities are within 4/255 of the float32 model's in PyTorch.
#[test]
fn a_float16_pytorch_export_predicts_within_4_255_of_float32_pytorch() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures.join("pytorch_two_head_fp16.onnx"),
        dir.path().join("torch16.onnx"),
    )
    .unwrap();
    let text = "[[group]]\nsize = 64\n[[group.model]]\npath = \"torch16.onnx\"\nchannels = \"bgr\"\n\
                mean = [103.53, 116.28, 123.675]\nstd = [57.375, 57.12, 58.395]\noutput = \"mask\"\n\
                activation = \"sigmoid\"\n";
    let mut e = engine(dir.path(), text).unwrap();
    let (_, info) = e.models().next().unwrap();
    assert_eq!(
        (&info.inputs[0].name, &info.inputs[0].element),
        (&"image".to_string(), &Element::F16)
    );
    let mut img = RgbImage::new(64, 64);
    for (i, p) in img.data.chunks_exact_mut(3).enumerate() {
        let (y, x) = (i / 64, i % 64);
        p.copy_from_slice(&[
            ((x * 7 + y * 3) % 256) as u8,
            ((x * y) % 256) as u8,
            ((255 + 512 - 2 * x - y) % 256) as u8,
        ]);
    }
    let want: Vec<f32> = std::fs::read(fixtures.join("pytorch_two_head_fp16.prob.f32"))
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert!(
        want.iter().any(|&p| p < 0.2) && want.iter().any(|&p| p > 0.8),
        "the reference spans 0..1"
    );
    let got = e.predict(&img, &KIDNEY, &mut Timings::default()).unwrap();
    let w = worst(&got.data, &want);
    eprintln!("float16 export in ftu against float32 PyTorch: worst probability difference {w:.2e}");
    assert!(w <= 4.0 / 255.0, "worst difference {w} > 4/255");
}
