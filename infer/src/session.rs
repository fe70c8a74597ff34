//! ONNX Runtime, loaded at run time: where libonnxruntime is found, which device runs the models,
//! and what a model's inputs and outputs look like once ONNX Runtime has read it.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::OnceLock;

use ftu_formats::dylib::{self, PythonShipped};
use ftu_formats::manifest::{ConvSearch, CudaSettings};
use ort::session::Session;
use ort::value::{TensorElementType, ValueType};

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

/// Where a session's intra-op threads come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ThreadPool {
    /// Each session its own pool (ONNX Runtime's default): an ensemble of n models on c cores
    /// has n × c intra-op threads, each pool idle between its own session's runs.
    #[default]
    PerSession,
    /// One pool for every session of the process (ONNX Runtime's global thread pools): c
    /// threads whatever the ensemble's size.
    Shared,
}

impl ThreadPool {
    pub fn name(self) -> &'static str {
        match self {
            ThreadPool::PerSession => "per-session",
            ThreadPool::Shared => "shared",
        }
    }
}

impl FromStr for ThreadPool {
    type Err = String;
    fn from_str(s: &str) -> Result<ThreadPool, String> {
        [ThreadPool::PerSession, ThreadPool::Shared]
            .into_iter()
            .find(|pool| pool.name() == s)
            .ok_or_else(|| format!("`{s}`: expected per-session or shared"))
    }
}

/// Where the models run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(i32),
}

impl FromStr for Device {
    type Err = RuntimeError;
    fn from_str(s: &str) -> Result<Device, RuntimeError> {
        let bad = || RuntimeError::BadDevice(s.to_string());
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            other => {
                let id = other.strip_prefix("cuda:").ok_or_else(bad)?;
                id.parse::<i32>()
                    .ok()
                    .filter(|id| *id >= 0)
                    .map(Device::Cuda)
                    .ok_or_else(bad)
            }
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(id) => write!(f, "cuda:{id}"),
        }
    }
}

/// How sessions are made.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    pub device: Device,
    /// Run on the CPU when the CUDA provider cannot be registered, instead of failing.
    pub allow_cpu_fallback: bool,
    /// Intra-op threads per session; ONNX Runtime's default (one per core) when `None`.
    pub threads: Option<usize>,
    /// Whether idle intra-op threads spin before they sleep (`session.intra_op.allow_spinning`);
    /// when `None`, [`default_spinning`] for this machine.
    pub spinning: Option<bool>,
    /// One intra-op pool per session, or one for all. The first runtime loaded in a process
    /// decides (ONNX Runtime has one environment per process); a later one asking otherwise
    /// gets [`RuntimeError::ThreadPoolMismatch`].
    pub thread_pool: ThreadPool,
    /// The CUDA execution provider's options (with `Device::Cuda`).
    pub cuda: CudaSettings,
}

impl RuntimeOptions {
    /// Whether idle intra-op threads spin: as set, else [`default_spinning`] (`None`: ONNX
    /// Runtime's own default).
    fn spinning_or_default(&self) -> Option<bool> {
        self.spinning.or_else(default_spinning)
    }
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            device: Device::Cpu,
            allow_cpu_fallback: false,
            threads: None,
            spinning: None,
            thread_pool: ThreadPool::PerSession,
            cuda: CudaSettings::default(),
        }
    }
}

/// Spinning off on machines of at most 4 cores, ONNX Runtime's default (on) above. With every
/// core an intra-op thread, threads that spin between model runs take the cores the slide
/// reader and the pre- and post-processing need: on 2 cores, `predict` ran 1.18× faster with
/// spinning off (8 slides of 3000², two models at 768², flips; 5.53 against 4.67 slides/s,
/// medians of 4 alternating runs), the model stage itself included. Many-core machines were not
/// measured, so they keep ONNX Runtime's choice.
pub fn default_spinning() -> Option<bool> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores <= 4).then_some(false)
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

/// ONNX Runtime's CUDA provider on `device`, with the options that are set.
fn cuda_provider(device: i32, settings: &CudaSettings) -> ort::ep::CUDA {
    use ort::ep::cuda::ConvAlgorithmSearch;
    let mut cuda = ort::ep::CUDA::default().with_device_id(device);
    if let Some(search) = settings.conv_search {
        cuda = cuda.with_conv_algorithm_search(match search {
            ConvSearch::Exhaustive => ConvAlgorithmSearch::Exhaustive,
            ConvSearch::Heuristic => ConvAlgorithmSearch::Heuristic,
            ConvSearch::Default => ConvAlgorithmSearch::Default,
        });
    }
    if let Some(mib) = settings.memory_limit_mib {
        cuda = cuda.with_memory_limit(mib.saturating_mul(1 << 20));
    }
    if let Some(tf32) = settings.tf32 {
        cuda = cuda.with_tf32(tf32);
    }
    cuda
}

/// PyPI's `onnxruntime` and `onnxruntime-gpu`: `onnxruntime/capi/libonnxruntime.so.1.x.y`.
pub const PYPI: PythonShipped = PythonShipped {
    package: "onnxruntime",
    subdir: "capi",
};

/// The candidates for libonnxruntime, in order: `ORT_DYLIB_PATH`; the folder of the running
/// binary (and its `lib/`), as in a Kaggle bundle; the `onnxruntime` package of the Python beside
/// the binary (a wheel's install), of the active virtualenv's, then of `python3` on PATH (see
/// [`ftu_formats::dylib`]).
pub fn find_library() -> Result<PathBuf, RuntimeError> {
    let mut looked = Vec::new();
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH") {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        // A folder (onnxruntime's capi/, which holds only libonnxruntime.so.1.x.y): the library in it.
        if let Some(found) = path.is_dir().then(|| library_in(&path)).flatten() {
            return Ok(found);
        }
        looked.push(match path.is_dir() {
            true => format!(
                "ORT_DYLIB_PATH={} (a folder without libonnxruntime.so or libonnxruntime.so.1.*)",
                path.display()
            ),
            false => format!("ORT_DYLIB_PATH={}", path.display()),
        });
    }
    dylib::search(
        &dylib::binary_folders(),
        &dylib::pythons(),
        PYPI,
        library_in,
        &mut looked,
    )
    .map(|found| found.path)
    .ok_or_else(|| RuntimeError::NotFound {
        looked: looked.join(", "),
    })
}

/// `libonnxruntime.so`, or the newest versioned `libonnxruntime.so.1.x.y`, in `dir`.
fn library_in(dir: &Path) -> Option<PathBuf> {
    let names: &[&str] = if cfg!(target_os = "macos") {
        &["libonnxruntime.dylib"]
    } else if cfg!(windows) {
        &["onnxruntime.dll"]
    } else {
        &["libonnxruntime.so"]
    };
    for name in names {
        let path = dir.join(name);
        if path.is_file() {
            return Some(path);
        }
    }
    let mut versioned: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libonnxruntime.so.") || n.starts_with("libonnxruntime.1."))
        })
        .collect();
    versioned.sort();
    versioned.pop()
}

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

/// The default-domain opset an ONNX file imports: `ModelProto.opset_import` (field 8, each an
/// `OperatorSetIdProto` of domain = 1 and version = 2), found by walking the top-level fields
/// and seeking past the others, the graph included, so a large model is not read. `None` when
/// the file imports no default-domain opset or is not a protobuf this walk understands.
pub fn default_opset(path: &Path) -> std::io::Result<Option<u32>> {
    use std::io::{BufReader, Read, Seek, SeekFrom};
    fn varint(r: &mut impl Read) -> std::io::Result<Option<u64>> {
        let (mut value, mut shift) = (0u64, 0);
        let mut byte = [0u8];
        loop {
            if r.read(&mut byte)? == 0 {
                return Ok(None);
            }
            if shift > 63 {
                return Ok(None);
            }
            value |= u64::from(byte[0] & 0x7f) << shift;
            if byte[0] & 0x80 == 0 {
                return Ok(Some(value));
            }
            shift += 7;
        }
    }
    /// (domain, version) of one OperatorSetIdProto.
    fn opset_id(mut bytes: &[u8]) -> std::io::Result<Option<(String, u64)>> {
        let (mut domain, mut version) = (String::new(), None);
        while !bytes.is_empty() {
            let Some(key) = varint(&mut bytes)? else {
                return Ok(None);
            };
            match (key >> 3, key & 7) {
                (2, 0) => version = varint(&mut bytes)?,
                (_, 0) => drop(varint(&mut bytes)?),
                (field, 2) => {
                    let Some(len) = varint(&mut bytes)? else {
                        return Ok(None);
                    };
                    let Some(value) = usize::try_from(len).ok().and_then(|n| bytes.get(..n)) else {
                        return Ok(None);
                    };
                    if field == 1 {
                        domain = String::from_utf8_lossy(value).into_owned();
                    }
                    bytes = &bytes[value.len()..];
                }
                _ => return Ok(None),
            }
        }
        Ok(version.map(|v| (domain, v)))
    }
    let mut file = BufReader::new(std::fs::File::open(path)?);
    while let Some(key) = varint(&mut file)? {
        let skip = match key & 7 {
            0 => {
                varint(&mut file)?;
                0
            }
            1 => 8,
            5 => 4,
            2 => {
                let Some(len) = varint(&mut file)? else { return Ok(None) };
                if key >> 3 == 8 && len <= 1 << 16 {
                    let mut bytes = vec![0u8; len as usize];
                    file.read_exact(&mut bytes)?;
                    if let Some((domain, version)) = opset_id(&bytes)? {
                        if domain.is_empty() || domain == "ai.onnx" {
                            return Ok(u32::try_from(version).ok());
                        }
                    }
                    0
                } else {
                    len
                }
            }
            _ => return Ok(None),
        };
        if skip > 0 {
            let Ok(skip) = i64::try_from(skip) else { return Ok(None) };
            file.seek(SeekFrom::Current(skip))?;
        }
    }
    Ok(None)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The opset walk: a default-domain import after a large skipped graph and another domain's
    /// import; "ai.onnx" counts as the default; a file without one, or cut short, gives None.
    #[test]
    fn cuda_options_reach_the_provider_only_when_set() {
        let set = CudaSettings {
            conv_search: Some(ConvSearch::Heuristic),
            memory_limit_mib: Some(2),
            tf32: Some(false),
        };
        let shown = format!("{:?}", cuda_provider(1, &set));
        for want in [
            "\"device_id\": \"1\"",
            "\"cudnn_conv_algo_search\": \"HEURISTIC\"",
            "\"gpu_mem_limit\": \"2097152\"",
            "\"use_tf32\": \"false\"",
        ] {
            assert!(shown.contains(want), "{want} not in {shown}");
        }
        let shown = format!("{:?}", cuda_provider(0, &CudaSettings::default()));
        for absent in ["cudnn_conv_algo_search", "gpu_mem_limit", "use_tf32"] {
            assert!(!shown.contains(absent), "{absent} in {shown}");
        }
    }

    #[test]
    fn default_opset_is_read_past_the_graph() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            path
        };
        let graph_len = 300_000usize;
        let import = |domain: &str, version: u8| {
            let mut inner = vec![0x0a, domain.len() as u8];
            inner.extend(domain.as_bytes());
            inner.extend([0x10, version]);
            let mut field = vec![0x42, inner.len() as u8];
            field.extend(inner);
            field
        };
        // ir_version = 8; a graph of 300 000 bytes (length varint e0 a7 12), skipped unread.
        let mut model = vec![0x08, 0x08];
        model.extend([0x3a, 0xe0, 0xa7, 0x12]);
        model.extend(std::iter::repeat_n(0u8, graph_len));
        model.extend(import("com.microsoft", 1));
        model.extend(import("", 17));
        model.extend([0x72, 0x00]); // metadata_props, empty
        assert_eq!(default_opset(&write("a.onnx", &model)).unwrap(), Some(17));
        let mut named = vec![0x08, 0x07];
        named.extend(import("ai.onnx", 13));
        assert_eq!(default_opset(&write("b.onnx", &named)).unwrap(), Some(13));
        let mut other = vec![0x08, 0x07];
        other.extend(import("com.microsoft", 1));
        assert_eq!(default_opset(&write("c.onnx", &other)).unwrap(), None);
        assert_eq!(default_opset(&write("d.onnx", &model[..5000])).unwrap(), None);
        assert_eq!(default_opset(&write("e.onnx", b"not a model at all")).unwrap(), None);
    }

    #[test]
    fn devices_parse_and_print_back() {
        assert_eq!("cpu".parse::<Device>().unwrap(), Device::Cpu);
        assert_eq!("CUDA".parse::<Device>().unwrap(), Device::Cuda(0));
        assert_eq!("cuda:3".parse::<Device>().unwrap(), Device::Cuda(3));
        assert_eq!(Device::Cuda(3).to_string(), "cuda:3");
        for bad in ["gpu", "cuda:", "cuda:-1", "cuda:x"] {
            assert!(bad.parse::<Device>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_versioned_library_is_found_when_the_plain_name_is_absent() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(library_in(dir.path()), None);
        std::fs::write(dir.path().join("libonnxruntime.so.1.30.0"), b"").unwrap();
        std::fs::write(dir.path().join("libonnxruntime.so.1.31.1"), b"").unwrap();
        std::fs::write(dir.path().join("libonnxruntime_providers_shared.so"), b"").unwrap();
        assert_eq!(
            library_in(dir.path()),
            Some(dir.path().join("libonnxruntime.so.1.31.1"))
        );
        std::fs::write(dir.path().join("libonnxruntime.so"), b"").unwrap();
        assert_eq!(library_in(dir.path()), Some(dir.path().join("libonnxruntime.so")));
    }
}
