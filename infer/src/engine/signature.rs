//! The model-signature check: one image input N×3×H×W of a supported element type, the
//! manifest's output and channel in it, fixed sizes only where the group's size allows them.

use super::EngineError;
use crate::session::{Element, ModelInfo, TensorInfo};
use ftu_formats::manifest::{Activation, Manifest, ModelSpec, OutputRef};

/// What [`check_fit`] found a model's signature to be.
#[derive(Debug)]
pub(super) struct Fit {
    pub(super) input: String,
    pub(super) output: String,
    pub(super) input_element: Element,
    pub(super) output_element: Element,
    /// A fixed batch size, if the model has one.
    pub(super) batch: Option<usize>,
}

/// Checks a model's signature against its manifest entry.
pub(super) fn check_fit(
    spec: &ModelSpec,
    info: &ModelInfo,
    size: usize,
    manifest: &Manifest,
) -> Result<Fit, EngineError> {
    let unfit = |message: String| EngineError::Unfit {
        field: spec.field.clone(),
        path: spec.path.clone(),
        message,
    };
    let [input] = info.inputs.as_slice() else {
        return Err(unfit(format!(
            "the model has {} inputs ({}); ftu feeds one image tensor",
            info.inputs.len(),
            names(&info.inputs)
        )));
    };
    if !input.element.is_supported() {
        return Err(unfit(format!(
            "input `{}` is {} {}; ftu feeds images as {}",
            input.name,
            input.element.onnx_name(),
            input.shape_string(),
            Element::ACCEPTED
        )));
    }
    if input.dims.len() != 4 {
        return Err(unfit(format!(
            "input `{}` is {} {}; expected N×3×H×W",
            input.name,
            input.element,
            input.shape_string()
        )));
    }
    if input.dims[1].is_some_and(|c| c != 3) {
        return Err(unfit(format!(
            "input `{}` has {} channels; ftu feeds 3",
            input.name,
            input.shape_string()
        )));
    }
    if let (Some(h), Some(w)) = (input.dims[2], input.dims[3]) {
        if manifest.scaling.is_some() || manifest.tta.scales.iter().any(|&s| s != 1.0) {
            return Err(unfit(format!(
                "input `{}` is fixed at {w}×{h} (width×height), but target_pixel_size or tta.scales change the input size; \
                 export the model with dynamic height and width",
                input.name
            )));
        }
        if (h as usize, w as usize) != (size, size) {
            return Err(unfit(format!(
                "input `{}` is fixed at {w}×{h} (width×height), but the group size is {size}",
                input.name
            )));
        }
    } else if input.dims[2].is_some() != input.dims[3].is_some() {
        return Err(unfit(format!(
            "input `{}` ({}) fixes only one of height and width",
            input.name,
            input.shape_string()
        )));
    }
    let batch = input.dims[0].map(|b| b as usize);
    if batch == Some(0) {
        return Err(unfit(format!("input `{}` has batch size 0", input.name)));
    }
    let output = match &spec.output {
        OutputRef::Index(i) => info.outputs.get(*i),
        OutputRef::Name(n) => info.outputs.iter().find(|o| &o.name == n),
    }
    .ok_or_else(|| {
        unfit(format!(
            "{} not found; the model's outputs are {}",
            spec.output,
            names(&info.outputs)
        ))
    })?;
    if !output.element.is_supported() {
        return Err(unfit(format!(
            "output `{}` is {}; ftu reads masks of {}",
            output.name,
            output.element.onnx_name(),
            Element::ACCEPTED
        )));
    }
    match output.dims.len() {
        4 => {
            if let Some(c) = output.dims[1] {
                if spec.channel as i64 >= c {
                    return Err(unfit(format!(
                        "channel {} asked for, but output `{}` is {}",
                        spec.channel,
                        output.name,
                        output.shape_string()
                    )));
                }
                if spec.activation == Activation::Softmax && c < 2 {
                    return Err(unfit(format!("softmax over output `{}` with one channel", output.name)));
                }
            }
        }
        3 if spec.channel == 0 && spec.activation != Activation::Softmax => {}
        _ => {
            return Err(unfit(format!(
                "output `{}` is {}; expected a mask N×C×H×W (or N×H×W with channel 0 and no softmax)",
                output.name,
                output.shape_string()
            )))
        }
    }
    Ok(Fit {
        input: input.name.clone(),
        output: output.name.clone(),
        input_element: input.element.clone(),
        output_element: output.element.clone(),
        batch,
    })
}

pub(super) fn names(list: &[TensorInfo]) -> String {
    if list.is_empty() {
        return "none".to_string();
    }
    list.iter()
        .map(|t| format!("`{}` {}", t.name, t.shape_string()))
        .collect::<Vec<_>>()
        .join(", ")
}
