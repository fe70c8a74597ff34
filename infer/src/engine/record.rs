//! Batch recording for `predict --bench-limit`: the batches a run gave the models, kept in
//! memory and replayed through bare ONNX Runtime for the limit of the model stage.

use std::time::Instant;

use ndarray::Axis;

use super::run::input_value;
use super::{Engine, EngineError, LoadedModel};

pub(super) struct Recording {
    pub(super) bytes_left: usize,
    pub(super) overflowed: bool,
}

/// The bare ONNX Runtime time of the batches a run gave the models: the limit of its model stage.
#[derive(Debug, Clone, PartialEq)]
pub struct Replay {
    /// Model runs (batches) replayed, and the images in them.
    pub batches: usize,
    pub items: usize,
    /// Wall time of `Session::run` over all of them, one after another (model by model).
    pub seconds: f64,
}

impl Engine {
    /// From now on, keeps every batch the models run (up to `max_bytes` of them in all) for
    /// [`Engine::replay`].
    pub fn record_batches(&mut self, max_bytes: usize) {
        self.recording = Some(Recording {
            bytes_left: max_bytes,
            overflowed: false,
        });
    }

    /// Runs every recorded batch again through its model's session and nothing else (no
    /// layout, output extraction, checks or TTA): what the model stage would take if the engine
    /// added nothing. Fails when the recording outgrew its byte limit (say how many slides fit).
    pub fn replay(&mut self) -> Result<Replay, EngineError> {
        let recording = self.recording.take();
        let models: Vec<&mut LoadedModel> = self.groups.iter_mut().flatten().collect();
        if let Some(r) = recording.filter(|r| r.overflowed) {
            // The partial recording is dropped: a limit over part of the run would mislead.
            let kept: usize = models.into_iter().map(|m| std::mem::take(&mut m.recorded).len()).sum();
            return Err(EngineError::RecordingFull {
                kept,
                mib_left: r.bytes_left >> 20,
            });
        }
        let (mut batches, mut items) = (0, 0);
        let start = Instant::now();
        for model in models {
            let (field, path) = (model.spec.field.clone(), model.spec.path.clone());
            let err = |e: ort::Error| EngineError::Run {
                field: field.clone(),
                path: path.clone(),
                message: e.to_string(),
            };
            for batch in std::mem::take(&mut model.recorded) {
                let tensor = input_value(batch.view(), &model.input_element).map_err(err)?;
                let outputs = model
                    .session
                    .run(ort::inputs![model.input.as_str() => tensor])
                    .map_err(err)?;
                drop(outputs);
                batches += 1;
                items += batch.len_of(Axis(0));
            }
        }
        Ok(Replay {
            batches,
            items,
            seconds: start.elapsed().as_secs_f64(),
        })
    }
}
