//! One model run: the batch in the model's element type, its output back as float32, checked
//! for its shape and for values that are not finite, and one item's mask channel activated.

use half::{bf16, f16};
use ndarray::{ArrayD, ArrayView4, ArrayViewD, Axis};
use ort::session::SessionInputValue;
use ort::value::{Tensor, TensorRef};
use rayon::prelude::*;

use super::{EngineError, LoadedModel};
use crate::session::Element;
use ftu_formats::manifest::{Activation, ModelSpec};

/// Runs one N×3×H×W batch; returns the selected output, N×C×H×W or N×H×W.
pub(super) fn run(model: &mut LoadedModel, batch: ArrayView4<f32>) -> Result<ArrayD<f32>, EngineError> {
    let n = batch.len_of(Axis(0));
    let (field, path) = (model.spec.field.clone(), model.spec.path.clone());
    let err = |message: String| EngineError::Run {
        field: field.clone(),
        path: path.clone(),
        message,
    };
    let tensor = input_value(batch, &model.input_element).map_err(|e| err(e.to_string()))?;
    let output = model.output.as_str();
    let outputs = model
        .session
        .run(ort::inputs![model.input.as_str() => tensor])
        .map_err(|e| err(e.to_string()))?;
    let value = outputs
        .get(output)
        .ok_or_else(|| err(format!("no output `{output}` in the results")))?;
    let out = output_as_f32(value, &model.output_element).map_err(|e| err(e.to_string()))?;
    if !matches!(out.ndim(), 3 | 4) || out.len_of(Axis(0)) != n {
        return Err(err(format!(
            "output `{output}` has shape {}; expected N×C×H×W or N×H×W with N = {n}",
            out.shape().iter().map(usize::to_string).collect::<Vec<_>>().join("×")
        )));
    }
    // NaN would threshold to background and +Inf to foreground without a word: refuse both.
    let count = out.iter().filter(|v| !v.is_finite()).count();
    if count > 0 {
        return Err(EngineError::NonFinite {
            field,
            path,
            output: output.to_string(),
            count,
            total: out.len(),
        });
    }
    Ok(out)
}

/// The batch as the model's input type: float32 as it is (no copy), float16 and bfloat16
/// converted value by value (round to nearest even).
pub(super) fn input_value<'a>(
    batch: ArrayView4<'a, f32>,
    element: &Element,
) -> Result<SessionInputValue<'a>, ort::Error> {
    Ok(match element {
        Element::F16 => Tensor::from_array(batch.mapv(f16::from_f32))?.into(),
        Element::BF16 => Tensor::from_array(batch.mapv(bf16::from_f32))?.into(),
        // check_fit let no other type through.
        _ => TensorRef::from_array_view(batch)?.into(),
    })
}

/// An output of the model's output type as float32, standard layout.
pub(super) fn output_as_f32(value: &ort::value::DynValue, element: &Element) -> Result<ArrayD<f32>, ort::Error> {
    Ok(match element {
        Element::F16 => value.try_extract_array::<f16>()?.mapv(f16::to_f32),
        Element::BF16 => value.try_extract_array::<bf16>()?.mapv(bf16::to_f32),
        _ => value.try_extract_array::<f32>()?.as_standard_layout().into_owned(),
    })
}

impl LoadedModel {
    pub(super) fn run_error(&self, message: impl Into<String>) -> EngineError {
        EngineError::Run {
            field: self.spec.field.clone(),
            path: self.spec.path.clone(),
            message: message.into(),
        }
    }
}

/// One item of a model's output (C×H×W, or H×W: one implicit channel): its mask channel with
/// the activation applied, row-major.
pub(super) fn activated(spec: &ModelSpec, item: ArrayViewD<f32>) -> Result<Vec<f32>, String> {
    let item = if item.ndim() == 2 {
        item.insert_axis(Axis(0))
    } else {
        item
    };
    let c = item.len_of(Axis(0));
    if spec.channel >= c {
        return Err(format!("channel {} asked for, but the output has {c}", spec.channel));
    }
    let plane = item.index_axis(Axis(0), spec.channel);
    Ok(match spec.activation {
        Activation::None => plane.iter().copied().collect(),
        Activation::Sigmoid => {
            let plane = plane.as_slice().expect("a standard-layout output");
            plane
                .par_iter()
                .with_min_len(1 << 14)
                .map(|&x| 1.0 / (1.0 + (-x).exp()))
                .collect()
        }
        Activation::Softmax => {
            // Over the channel axis, per pixel: exp(x − max) / Σ exp(x_k − max).
            let max = item.fold_axis(Axis(0), f32::NEG_INFINITY, |&m, &x| m.max(x));
            let denom = item
                .axis_iter(Axis(0))
                .fold(ArrayD::<f32>::zeros(max.raw_dim()), |acc, lane| {
                    acc + (&lane - &max).mapv(f32::exp)
                });
            ((&plane - &max).mapv(f32::exp) / &denom).iter().copied().collect()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ftu_formats::manifest::{ChannelOrder, Normalisation, OutputRef};

    fn spec(activation: Activation, channel: usize) -> ModelSpec {
        ModelSpec {
            field: "group[0].model[0]".into(),
            path: "m.onnx".into(),
            weight: 1.0,
            norm: Some(Normalisation {
                mean: [0.0; 3],
                std: [1.0; 3],
            }),
            channels: ChannelOrder::Rgb,
            output: OutputRef::Index(0),
            activation,
            channel,
            organs: None,
        }
    }

    #[test]
    fn activations_pick_the_channel_of_the_right_item() {
        // batch 2, 2 channels, 1×2 pixels
        let out = ndarray::Array::from_shape_vec(
            ndarray::IxDyn(&[2, 2, 1, 2]),
            vec![0.0, 1.0, 2.0, 3.0, /* item 1 */ 0.0, 0.0, 5.0, -5.0],
        )
        .unwrap();
        let item = |i: usize| out.index_axis(Axis(0), i);
        assert_eq!(activated(&spec(Activation::None, 1), item(0)).unwrap(), [2.0, 3.0]);
        let s = activated(&spec(Activation::Sigmoid, 0), item(1)).unwrap();
        assert_eq!(s, [0.5, 0.5]);
        let soft = activated(&spec(Activation::Softmax, 1), item(1)).unwrap();
        let e5 = 1.0 / (1.0 + (-5.0f32).exp());
        assert!(
            (soft[0] - e5).abs() < 1e-6 && (soft[1] - (1.0 - e5)).abs() < 1e-6,
            "{soft:?}"
        );
        assert!(activated(&spec(Activation::None, 2), item(0)).is_err());
        // N×H×W outputs have one implicit channel.
        let nhw = ndarray::Array::from_shape_vec(ndarray::IxDyn(&[2, 1, 2]), vec![0.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!(
            activated(&spec(Activation::None, 0), nhw.index_axis(Axis(0), 1)).unwrap(),
            [2.0, 3.0]
        );
    }
}
