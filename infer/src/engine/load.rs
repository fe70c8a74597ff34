//! Loading: a session per manifest model, built all at once, each checked against its manifest
//! entry and against what its metadata states.

use ort::session::Session;

use super::signature::check_fit;
use super::{describe, Engine, EngineError, LoadedModel};
use crate::session::{ModelInfo, Runtime, RuntimeError};
use ftu_formats::manifest::{Manifest, ModelSpec};

impl Engine {
    /// Opens a session per model (all at once: ONNX Runtime's graph optimisation of one model
    /// does not wait for another's) and checks each against the manifest; where the manifest and
    /// a model's metadata disagree, [`Engine::warnings`] says so.
    pub fn load(manifest: Manifest, runtime: &Runtime) -> Result<Engine, EngineError> {
        Engine::load_checked(manifest, runtime, false)
    }

    /// [`Engine::load`]; with `strict`, a disagreement between the manifest and what a model
    /// states (its norm, its training size) is an error instead of a warning.
    pub fn load_checked(manifest: Manifest, runtime: &Runtime, strict: bool) -> Result<Engine, EngineError> {
        let specs: Vec<(usize, &ModelSpec)> = manifest
            .groups
            .iter()
            .enumerate()
            .flat_map(|(gi, g)| g.models.iter().map(move |m| (gi, m)))
            .collect();
        let sessions: Vec<Result<Session, RuntimeError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = specs
                .iter()
                .map(|(_, spec)| scope.spawn(|| runtime.session(&spec.path)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a session builder thread panicked"))
                .collect()
        });
        let mut groups: Vec<Vec<LoadedModel>> = manifest.groups.iter().map(|_| Vec::new()).collect();
        let mut warnings = Vec::new();
        for ((gi, spec), session) in specs.into_iter().zip(sessions) {
            let session = session?;
            let info = ModelInfo::of(&session, &spec.path);
            let fit = check_fit(spec, &info, manifest.groups[gi].size, &manifest)?;
            let described = describe::Described::from_metadata(&info.metadata);
            let refused = |message: String| EngineError::Described {
                manifest: manifest.path.clone(),
                message,
            };
            let checked = describe::check(spec, &described, manifest.groups[gi].size).map_err(|e| refused(e.0))?;
            if strict {
                if let Some(first) = checked.warnings.first() {
                    return Err(refused(format!("{first} (an error with --strict)")));
                }
            }
            warnings.extend(checked.warnings);
            groups[gi].push(LoadedModel {
                spec: spec.clone(),
                session,
                info,
                described,
                norm: checked.norm,
                input: fit.input,
                output: fit.output,
                input_element: fit.input_element,
                output_element: fit.output_element,
                batch: fit.batch,
                recorded: Vec::new(),
            });
        }
        Ok(Engine {
            manifest,
            groups,
            recording: None,
            read_levels: true,
            warnings,
        })
    }
}
