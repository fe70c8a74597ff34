//! ONNX Runtime, loaded at run time: where libonnxruntime is found, which device runs the models,
//! and what a model's inputs and outputs look like once ONNX Runtime has read it.

mod library;
mod model;
mod opset;
mod options;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::session::Session;

pub use library::{find_library, PYPI};
pub use model::{Element, ModelInfo, TensorInfo};
pub use opset::default_opset;
pub use options::{default_spinning, Device, RuntimeOptions, ThreadPool};

use options::cuda_provider;

/// The ONNX Runtime release the project is tested with; the install hint names it.
pub const ORT_VERSION: &str = "1.31.1";

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "ONNX Runtime library not found (looked at {looked}). Install it with \
         `pip install onnxruntime=={ORT_VERSION}` (CPU) or `pip install onnxruntime-gpu=={ORT_VERSION}` (CUDA 13), \
         or set ORT_DYLIB_PATH to the library file or the folder that holds it (e.g. onnxruntime/capi)"
    )]
    NotFound { looked: String },
    #[error("cannot load ONNX Runtime from {path}: {cause}")]
    Load { path: PathBuf, cause: String },
    #[error("ONNX Runtime environment: {0}")]
    Environment(String),
    #[error("{path}: ONNX Runtime cannot load the model: {cause}")]
    Model { path: PathBuf, cause: String },
    #[error(
        "{path}: the CUDA execution provider could not be registered on device {device}: {cause} \
         (install onnxruntime-gpu=={ORT_VERSION} with CUDA 13, or pass --allow-cpu-fallback)"
    )]
    Cuda { path: PathBuf, device: i32, cause: String },
    #[error("bad device {0:?}: expected cpu, cuda or cuda:N")]
    BadDevice(String),
    #[error(
        "ONNX Runtime's environment in this process was made with {made} thread pools; \
         one process cannot have both (ONNX Runtime has one environment per process)"
    )]
    ThreadPoolMismatch { made: &'static str },
}

/// The loaded ONNX Runtime and the options sessions are built with.
pub struct Runtime {
    env: ort::environment::Environment,
    options: RuntimeOptions,
    pub library: PathBuf,
    /// Set when a session asked for CUDA and fell back to the CPU; says why.
    fallback: std::sync::Mutex<Option<String>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("library", &self.library)
            .field("options", &self.options)
            .finish()
    }
}

/// What was loaded once per process: the library's path, the environment, and which thread
/// pools the environment was made with.
type Loaded = (PathBuf, ort::environment::Environment, ThreadPool);

/// The library is loaded once per process; later calls reuse it.
static LOADED: OnceLock<Result<Loaded, (PathBuf, String)>> = OnceLock::new();

impl Runtime {
    /// Finds and loads libonnxruntime (see [`find_library`]).
    pub fn load(options: RuntimeOptions) -> Result<Runtime, RuntimeError> {
        // The library is searched for (which may start Python) only until it has been loaded.
        let loaded = match LOADED.get() {
            Some(loaded) => loaded,
            None => {
                let library = find_library()?;
                LOADED.get_or_init(|| {
                    let fail = |e: String| (library.clone(), e);
                    let mut builder = ort::init_from(&library).map_err(|e| fail(e.to_string()))?;
                    if options.thread_pool == ThreadPool::Shared {
                        let mut pool = ort::environment::GlobalThreadPoolOptions::default()
                            .with_intra_threads(options.threads.unwrap_or(0))
                            .map_err(|e| fail(e.to_string()))?;
                        if let Some(spinning) = options.spinning_or_default() {
                            pool = pool.with_spin_control(spinning).map_err(|e| fail(e.to_string()))?;
                        }
                        builder = builder.with_global_thread_pool(pool);
                    }
                    let env = builder.with_name("ftu").build().map_err(|e| fail(e.to_string()))?;
                    Ok((library.clone(), env, options.thread_pool))
                })
            }
        };
        match loaded {
            Ok((_, _, made)) if *made != options.thread_pool => {
                Err(RuntimeError::ThreadPoolMismatch { made: made.name() })
            }
            Ok((path, env, _)) => Ok(Runtime {
                env: env.clone(),
                options,
                library: path.clone(),
                fallback: std::sync::Mutex::new(None),
            }),
            Err((path, cause)) => Err(RuntimeError::Load {
                path: path.clone(),
                cause: cause.clone(),
            }),
        }
    }

    pub fn options(&self) -> &RuntimeOptions {
        &self.options
    }

    /// Why sessions run on the CPU though CUDA was asked for, if they do.
    pub fn fallback(&self) -> Option<String> {
        self.fallback.lock().map(|g| g.clone()).unwrap_or(None)
    }

    /// A session for the model at `path`, on the configured device.
    pub fn session(&self, path: &Path) -> Result<Session, RuntimeError> {
        let model_err = |cause: String| RuntimeError::Model {
            path: path.to_path_buf(),
            cause,
        };
        let mut builder = Session::builder(&self.env).map_err(|e| model_err(e.to_string()))?;
        // With the shared pool, ort turns the session's own threads off: threads and spinning
        // were set on the pool.
        if self.options.thread_pool == ThreadPool::PerSession {
            if let Some(threads) = self.options.threads {
                builder = builder
                    .with_intra_threads(threads)
                    .map_err(|e| model_err(e.to_string()))?;
            }
            if let Some(spinning) = self.options.spinning_or_default() {
                builder = builder
                    .with_intra_op_spinning(spinning)
                    .map_err(|e| model_err(e.to_string()))?;
            }
        }
        if let Device::Cuda(device) = self.options.device {
            let cuda = cuda_provider(device, &self.options.cuda).build().error_on_failure();
            match builder.with_execution_providers([cuda]) {
                Ok(b) => builder = b,
                Err(e) => {
                    let cause = e.to_string();
                    if !self.options.allow_cpu_fallback {
                        return Err(RuntimeError::Cuda {
                            path: path.to_path_buf(),
                            device,
                            cause,
                        });
                    }
                    if let Ok(mut note) = self.fallback.lock() {
                        note.get_or_insert(format!(
                            "CUDA device {device} unavailable ({cause}); running on the CPU"
                        ));
                    }
                    builder = e.recover();
                }
            }
        }
        builder.commit_from_file(path).map_err(|e| model_err(e.to_string()))
    }
}
