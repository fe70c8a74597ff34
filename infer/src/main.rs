//! `ftu-infer`: ensemble prediction through ONNX Runtime, model inspection, RLE tools and scoring.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use ftu_formats::manifest::{ConvSearch, CudaSettings, Manifest};
use ftu_formats::mask::{image as mask_image, rle};
use ftu_formats::slide::SlideLimits;
use ftu_infer::engine::Engine;
use ftu_infer::predict::{self, OnError, PredictOptions};
use ftu_infer::score;
use ftu_infer::session::{Device, ModelInfo, Runtime, RuntimeOptions, ThreadPool};
use ftu_infer::slides::{SlideDefaults, SlideList, SlidesMeta};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "ftu-infer",
    version,
    about = "Segment functional tissue units in histology slides"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Predict every slide of a Kaggle-layout folder with an ensemble manifest; write a submission.
    Predict(PredictArgs),
    /// Show an ONNX model's inputs, outputs, opset and ftu metadata as ONNX Runtime sees them.
    Inspect(InspectArgs),
    /// Run-length encoding in the competition's convention (column-major, 1-based).
    #[command(subcommand)]
    Rle(RleCommand),
    /// Mean Dice of a submission against the truth, overall and per organ.
    Score(ScoreArgs),
    /// Put shard outputs (`predict --shard i/N`) back together: in test.csv's order, a list's,
    /// or by id (`predict --slides` shards keep their columns).
    Merge(MergeArgs),
    /// Soft labels for unlabelled slides (a folder's test.csv) for `ftu-train train --pseudo`:
    /// OUT/labels/ID.png (round(p·255)) and OUT/pseudo.csv naming each slide's image and label.
    Pseudo(PseudoArgs),
    /// One folder for an offline Kaggle notebook: this binary, libonnxruntime (and the CUDA
    /// provider with --gpu), the ensemble's ONNX files and its manifest with relative paths.
    Bundle(BundleArgs),
}

#[derive(Args)]
struct MergeArgs {
    /// The test.csv the shards split: rows in its order, each of its ids exactly once. Default:
    /// none (the shards' own ids, sorted, numbers as numbers).
    #[arg(long, conflicts_with = "ids")]
    test: Option<PathBuf>,
    /// A CSV whose id column (e.g. a list under the header `id`) gives the order, each id
    /// exactly once. Default: none.
    #[arg(long, value_name = "CSV")]
    ids: Option<PathBuf>,
    /// The merged output.
    #[arg(long, default_value = "submission.csv")]
    out: PathBuf,
    /// The shards' outputs (id,rle, or predict --slides' id,organ,pixel_size,height,width,rle),
    /// in any order.
    #[arg(required = true)]
    shards: Vec<PathBuf>,
}

#[derive(Args)]
struct BundleArgs {
    #[arg(long)]
    manifest: PathBuf,
    /// A new (or empty) folder.
    #[arg(long)]
    out: PathBuf,
    /// Also ship the CUDA execution provider found beside libonnxruntime (onnxruntime-gpu).
    #[arg(long)]
    gpu: bool,
}

#[derive(Subcommand)]
enum RleCommand {
    /// Print the RLE of a mask image (any non-zero pixel is foreground).
    Encode {
        mask: PathBuf,
        /// Refuse images with more pixels than this.
        #[arg(long, default_value_t = ftu_formats::slide::DEFAULT_MAX_PIXELS)]
        max_pixels: u64,
    },
    /// Write the mask an RLE string describes as a 0/255 PNG.
    Decode {
        #[arg(long)]
        height: usize,
        #[arg(long)]
        width: usize,
        #[arg(long)]
        out: PathBuf,
        /// The RLE string; read from stdin when absent.
        rle: Option<String>,
    },
}

#[derive(Args)]
struct RuntimeArgs {
    /// cpu, cuda or cuda:N (the CUDA execution provider needs onnxruntime-gpu).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// When CUDA cannot be used, run on the CPU (and say so) instead of failing.
    #[arg(long)]
    allow_cpu_fallback: bool,
    /// Intra-op threads per model (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Whether ONNX Runtime's idle threads spin before sleeping. Default: off on machines of at
    /// most 4 cores (it leaves them to the slide reader between model runs), on above.
    #[arg(long, value_name = "on|off", value_parser = parse_switch)]
    spin: Option<bool>,
    /// `per-session`: each model its own intra-op pool (ONNX Runtime's default); `shared`: one
    /// pool for all the ensemble's models (`--threads` and `--spin` then set that pool).
    #[arg(long, value_name = "per-session|shared", default_value = "per-session")]
    thread_pool: ThreadPool,
    /// CUDA: how cuDNN picks convolution algorithms (over the manifest's `[cuda] conv_search`;
    /// ONNX Runtime's default: exhaustive).
    #[arg(long, value_name = "exhaustive|heuristic|default")]
    cuda_conv_search: Option<ConvSearch>,
    /// CUDA: the most device memory ONNX Runtime's arena takes, in MiB (over the manifest's
    /// `[cuda] memory_limit_mib`; default: no limit).
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..))]
    cuda_memory_limit_mib: Option<u64>,
    /// CUDA: whether float32 convolutions and matmuls may use TF32 tensor cores (over the
    /// manifest's `[cuda] tf32`; ONNX Runtime's default: on).
    #[arg(long, value_name = "on|off", value_parser = parse_switch)]
    cuda_tf32: Option<bool>,
}

fn parse_switch(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("`{s}`: expected on or off")),
    }
}

impl RuntimeArgs {
    fn load(&self) -> Result<Runtime> {
        self.load_with(CudaSettings::default())
    }

    /// With the manifest's `[cuda]` options where no flag sets them.
    fn load_with(&self, manifest_cuda: CudaSettings) -> Result<Runtime> {
        let device: Device = self.device.parse()?;
        let flags = CudaSettings {
            conv_search: self.cuda_conv_search,
            memory_limit_mib: self.cuda_memory_limit_mib.map(|m| m as usize),
            tf32: self.cuda_tf32,
        };
        let runtime = Runtime::load(RuntimeOptions {
            device,
            allow_cpu_fallback: self.allow_cpu_fallback,
            threads: self.threads,
            spinning: self.spin,
            thread_pool: self.thread_pool,
            cuda: flags.or(manifest_cuda),
        })?;
        Ok(runtime)
    }
}

#[derive(Args)]
struct PredictArgs {
    /// The ensemble manifest (TOML).
    #[arg(long)]
    manifest: PathBuf,
    /// Folder with test.csv and test_images/ (truth.csv, when present, is drawn on overlays).
    #[arg(long, required_unless_present = "slides", conflicts_with = "slides")]
    data: Option<PathBuf>,
    /// Slide files or folders of them instead of --data (no test.csv): ids from the file names,
    /// sizes and µm per pixel from the files. The output CSV is then
    /// id,organ,pixel_size,height,width,rle.
    #[arg(long, num_args = 1..)]
    slides: Vec<PathBuf>,
    /// With --slides: a CSV of id,organ[,pixel_size][,data_source] (other columns ignored, so a
    /// test.csv serves); a row's pixel_size wins over the file's. Default: none.
    #[arg(long, value_name = "CSV", requires = "slides")]
    slides_meta: Option<PathBuf>,
    /// With --slides: the organ of every slide without a --slides-meta row. Default: none (each
    /// slide needs a row).
    #[arg(long)]
    organ: Option<ftu_formats::Organ>,
    /// With --slides: µm per pixel of every file that states none and has no --slides-meta
    /// pixel_size; auto: such a file is an error.
    #[arg(long, value_name = "auto|UM", default_value = "auto")]
    pixel_size: ftu_infer::slides::PixelSizeArg,
    /// With --slides: where slides without a --slides-meta data_source come from, for manifests
    /// with per-source thresholds.
    #[arg(long, default_value = "hpa")]
    data_source: ftu_formats::DataSource,
    /// Reuse the slides an interrupted or failed run of the same manifest and options finished
    /// (OUT's stem.journal.csv) and predict only the rest. Default: start over.
    #[arg(long = "continue")]
    resume: bool,
    /// The submission to write (id,rle); a .report.json lands beside it.
    #[arg(long, default_value = "submission.csv")]
    out: PathBuf,
    /// Write each slide's probability map here as an 8-bit PNG (round(p·255)), or as a tiled
    /// TIFF (ID.tiff) for slides predicted by a tiled manifest. Default: not written.
    #[arg(long)]
    probs: Option<PathBuf>,
    /// Write each slide with the predicted (yellow) and true (cyan) outlines here as PNG.
    /// Default: not written.
    #[arg(long)]
    overlays: Option<PathBuf>,
    /// Longest side of an overlay or overview PNG.
    #[arg(long, default_value_t = 1024)]
    overlay_size: usize,
    /// Write each slide's FTU outlines here as QuPath GeoJSON, with a PNG overview. Default: not
    /// written.
    #[arg(long)]
    geojson: Option<PathBuf>,
    /// Write each slide's final mask here as a tiled 0/255 TIFF. Default: not written.
    #[arg(long)]
    masks: Option<PathBuf>,
    #[command(flatten)]
    batch: BatchArgs,
    /// Tiled groups read windows from the full-resolution page even when the slide's pyramid
    /// has a level at (or finer than) the group's scale (read from by default: fewer pixels to
    /// decode, the mask within a stated tolerance).
    #[arg(long)]
    read_level0: bool,
    /// After predicting, run every batch the models were given again through bare ONNX Runtime
    /// (keeping them in memory, up to 4 GiB) and print that limit next to predict's own times.
    #[arg(long)]
    bench_limit: bool,
    /// Refuse to run when the manifest contradicts what a model states in its metadata (a norm
    /// other than its ftu.norm, a group size over 2× from its ftu.train_size) instead of warning.
    #[arg(long)]
    strict: bool,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

/// Which of test.csv's slides a run takes, and what it does with a bad one.
#[derive(Args)]
struct BatchArgs {
    /// Predict only rows i, i+N, i+2N, … of test.csv (0-based), for array jobs; see `merge`.
    /// Default: every row.
    #[arg(long, value_name = "i/N")]
    shard: Option<predict::Shard>,
    /// fail: stop at the first bad slide; skip: go on without it (predict writes it an empty
    /// mask, pseudo leaves it out of pseudo.csv) and list it at the end.
    #[arg(long, value_enum, default_value = "fail")]
    on_error: OnError,
    /// Refuse slides with more pixels than this.
    #[arg(long, default_value_t = ftu_formats::slide::DEFAULT_MAX_PIXELS)]
    max_pixels: u64,
}

#[derive(Args)]
struct PseudoArgs {
    /// The ensemble manifest (TOML).
    #[arg(long)]
    manifest: PathBuf,
    /// Folder with test.csv and test_images/: the unlabelled slides.
    #[arg(long)]
    data: PathBuf,
    /// Where labels/, pseudo.csv and predictions.csv go.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    batch: BatchArgs,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

#[derive(Args)]
struct InspectArgs {
    /// ONNX models (inputs, outputs, opset, metadata), or slides (TIFF/SVS/OME-TIFF, PNG, JPEG,
    /// OpenSlide's formats: size, pyramid levels, µm per pixel and where that was read,
    /// objective power); each in turn.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
}

#[derive(Args)]
struct ScoreArgs {
    /// Truth: a train.csv, or id,rle with --meta for sizes and organs.
    #[arg(long)]
    truth: PathBuf,
    /// Predictions: id,rle (a submission).
    #[arg(long)]
    pred: PathBuf,
    /// A test.csv giving each id's organ and size.
    #[arg(long)]
    meta: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    ftu_formats::exit::run(|| dispatch(Cli::parse()))
}

fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Predict(a) => run_predict(a)?,
        Command::Pseudo(a) => run_pseudo(a)?,
        Command::Bundle(a) => {
            let running = std::env::current_exe().context("locating the ftu-infer binary")?;
            // This binary if it is portable, else scripts/portable.sh's build beside it, else
            // this one with a warning.
            let choice = ftu_infer::bundle::choose_binary(&running, ftu_infer::bundle::inspect_binary)?;
            if let Some(w) = &choice.warning {
                eprintln!("warning: {w}");
            }
            eprintln!(
                "binary: {} ({})",
                choice.binary.path.display(),
                choice.binary.describe()
            );
            let binary = choice.binary.path.clone();
            let library = ftu_infer::session::find_library()?;
            let request = ftu_infer::bundle::BundleRequest {
                manifest: a.manifest.clone(),
                out: a.out.clone(),
                gpu: a.gpu,
                binary,
                library,
            };
            let summary = ftu_infer::bundle::bundle(&request)?;
            for f in &summary.files {
                println!("{}", a.out.join(f).display());
            }
            eprintln!(
                "bundle {}: {} files, {:.1} MB; see its README.md",
                a.out.display(),
                summary.files.len(),
                summary.bytes as f64 / 1e6
            );
        }
        Command::Inspect(a) => inspect(&a.files)?,
        Command::Rle(RleCommand::Encode { mask, max_pixels }) => {
            let m = mask_image::read_mask(&mask, SlideLimits { max_pixels })?;
            println!("{}", rle::encode(&m));
        }
        Command::Rle(RleCommand::Decode {
            height,
            width,
            out,
            rle: text,
        }) => {
            if height == 0 || width == 0 {
                bail!("--height and --width must be positive");
            }
            let text = match text {
                Some(t) => t,
                None => {
                    let mut s = String::new();
                    std::io::stdin()
                        .read_to_string(&mut s)
                        .context("reading the RLE from stdin")?;
                    s
                }
            };
            let m = rle::decode(&text, height, width)
                .with_context(|| format!("decoding RLE for a {width}×{height} (width×height) mask"))?;
            mask_image::write_mask_png(&out, &m)?;
            eprintln!("wrote {} ({} foreground pixels)", out.display(), m.count());
        }
        Command::Merge(a) => {
            use ftu_infer::merge::Order;
            let order = match (&a.test, &a.ids) {
                (Some(test), _) => Order::Test(test),
                (None, Some(ids)) => Order::Ids(ids),
                (None, None) => Order::ById,
            };
            let rows = ftu_infer::merge::merge_any(order, &a.shards)?;
            rows.write(&a.out)
                .with_context(|| format!("writing {}", a.out.display()))?;
            println!(
                "wrote {} ({} rows from {} shards)",
                a.out.display(),
                rows.len(),
                a.shards.len()
            );
        }
        Command::Score(a) => {
            let scores = score::score_files(&a.truth, &a.pred, a.meta.as_deref())?;
            if scores.images.is_empty() {
                bail!("{} has no rows to score", a.truth.display());
            }
            println!("mean dice {:.4} over {} images", scores.mean(), scores.images.len());
            println!("{:<16}{:>6}{:>9}", "organ", "count", "dice");
            for o in scores.per_organ() {
                println!("{:<16}{:>6}{:>9.4}", o.organ.as_str(), o.count, o.dice);
            }
        }
    }
    Ok(())
}

impl BatchArgs {
    /// Options predicting `data` into `out` with these slides and limits, nothing else written.
    fn options(&self, data: PathBuf, out: PathBuf) -> PredictOptions {
        PredictOptions {
            on_error: self.on_error,
            limits: SlideLimits {
                max_pixels: self.max_pixels,
            },
            shard: self.shard,
            ..PredictOptions::new(data, out)
        }
    }
}

fn run_predict(a: PredictArgs) -> Result<()> {
    let started = std::time::Instant::now();
    check_inputs(&a)?;
    let manifest = Manifest::load(&a.manifest)?;
    let slides = match &a.slides[..] {
        [] => None,
        paths => {
            let defaults = SlideDefaults {
                meta: a.slides_meta.as_deref().map(SlidesMeta::read).transpose()?,
                organ: a.organ,
                data_source: a.data_source,
                pixel_size: a.pixel_size,
            };
            let list = SlideList::from_paths(paths, &defaults)?;
            for r in &list.rows {
                println!(
                    "{}: {}×{}, {}, {} µm/pixel ({})",
                    r.id,
                    r.img_width,
                    r.img_height,
                    r.organ.as_str(),
                    r.pixel_size,
                    list.pixel_size_from[&r.id]
                );
            }
            for p in &list.not_slides {
                println!("not a slide, left out: {}", p.display());
            }
            if let (Some(first), Some(meta)) = (list.unmatched_meta.first(), &defaults.meta) {
                println!(
                    "note: {} id(s) of {} match no slide file (the first: {first})",
                    list.unmatched_meta.len(),
                    meta.path.display()
                );
            }
            Some(list)
        }
    };
    let what = match &a.data {
        Some(d) => d.display().to_string(),
        None => format!("{} slide file(s)", slides.as_ref().map_or(0, |l| l.rows.len())),
    };
    let opts = PredictOptions {
        probs: a.probs,
        overlays: a.overlays,
        overlay_size: a.overlay_size.max(16),
        geojson: a.geojson,
        masks: a.masks,
        slides,
        resume: a.resume,
        run_options: format!("read_level0={}", a.read_level0),
        ..a.batch.options(a.data.unwrap_or_default(), a.out)
    };
    // The first slide decodes while the sessions are built.
    let reader = predict::SlideReader::start(&opts, &manifest).with_context(|| format!("predicting {what}"))?;
    let loaded_at = std::time::Instant::now();
    let (mut engine, runtime) = load_engine_from(manifest, &a.runtime, a.strict)?;
    let loaded = loaded_at.elapsed();
    if a.bench_limit {
        engine.record_batches(4 << 30);
    }
    engine.set_read_levels(!a.read_level0);
    let report = match with_progress(|progress| predict::predict_with(&mut engine, &opts, reader, progress)) {
        Ok(report) => report,
        Err(e) => {
            if let predict::PredictError::NothingPredicted { report, .. } = &e {
                println!("{report}");
            }
            return Err(anyhow::Error::new(e).context(format!("predicting {what}")));
        }
    };
    if let Some(note) = runtime.fallback() {
        println!("note: {note}");
    }
    println!("{report}");
    if a.bench_limit {
        let total = started.elapsed().as_secs_f64();
        let limit = engine.replay().context("replaying the batches for --bench-limit")?;
        let ratio = |s: f64| s / limit.seconds.max(1e-9);
        let model = report.timings.model.as_secs_f64();
        println!(
            "limit: the same {} model runs ({} images) through bare ONNX Runtime took {:.2} s",
            limit.batches, limit.items, limit.seconds
        );
        println!(
            "  model stage in predict {model:.2} s ({:.2}× the limit); predict {:.2} s ({:.2}×); \
             with start-up and loading ({:.2} s) {total:.2} s ({:.2}×)",
            ratio(model),
            report.wall_seconds,
            ratio(report.wall_seconds),
            loaded.as_secs_f64(),
            ratio(total)
        );
    }
    Ok(())
}

fn run_pseudo(a: PseudoArgs) -> Result<()> {
    let (mut engine, _runtime) = load_engine(&a.manifest, &a.runtime)?;
    let opts = a.batch.options(a.data, a.out.join("predictions.csv"));
    let report = with_progress(|progress| ftu_infer::pseudo::pseudo_labels(&mut engine, &opts, &a.out, progress))
        .with_context(|| format!("pseudo-labelling {}", opts.data.display()))?;
    println!("{}", report.predict);
    println!(
        "wrote {} ({} slides with soft labels in {})",
        report.csv.display(),
        report.labelled,
        a.out.join("labels").display()
    );
    Ok(())
}

/// `inspect FILE…`: each file in turn; one that cannot be inspected is reported and the rest go
/// on (the command then fails).
fn inspect(files: &[PathBuf]) -> Result<()> {
    if let [file] = files {
        return inspect_one(file, &mut None);
    }
    let mut runtime = None;
    let mut failed = 0;
    for (i, file) in files.iter().enumerate() {
        if i > 0 {
            println!();
        }
        if let Err(e) = inspect_one(file, &mut runtime) {
            failed += 1;
            let causes: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("error: {}", causes.join(": "));
        }
    }
    if failed > 0 {
        bail!("{failed} of {} files could not be inspected", files.len());
    }
    Ok(())
}

/// One file: a slide, an ONNX model (through `runtime`, loaded on first use), or an error
/// saying it is neither.
fn inspect_one(path: &Path, runtime: &mut Option<Runtime>) -> Result<()> {
    if !path.exists() {
        bail!("{}: no such file", path.display());
    }
    if path.is_dir() {
        bail!(
            "{} is a folder; inspect takes files (a model or a slide)",
            path.display()
        );
    }
    if ftu_infer::slides::is_slide(path) {
        return inspect_slide(path);
    }
    // An ONNX model is a protobuf that imports an opset; anything else never reaches ONNX Runtime.
    if !matches!(ftu_infer::session::default_opset(path), Ok(Some(_))) {
        bail!(
            "{}: not a model or a slide (neither ONNX nor TIFF, SVS, PNG, JPEG or a format OpenSlide reads)",
            path.display()
        );
    }
    if runtime.is_none() {
        *runtime = Some(
            RuntimeArgs {
                device: "cpu".into(),
                allow_cpu_fallback: false,
                threads: Some(1),
                spin: None,
                thread_pool: ThreadPool::PerSession,
                cuda_conv_search: None,
                cuda_memory_limit_mib: None,
                cuda_tf32: None,
            }
            .load()?,
        );
    }
    let session = runtime.as_ref().expect("loaded above").session(path)?;
    println!("{}", path.display());
    print!("{}", ModelInfo::of(&session, path).report());
    Ok(())
}

fn inspect_slide(path: &Path) -> Result<()> {
    let meta = ftu_formats::slide::meta::read_meta(path)?;
    println!("{}", path.display());
    println!("format: {}, {}×{} pixels", meta.format, meta.width, meta.height);
    match meta.pixel_size {
        Some((um, from)) => println!(
            "pixel size: {um} µm ({})",
            serde_json::to_value(from)?.as_str().unwrap_or("")
        ),
        None => println!("pixel size: not stated (give it with predict --slides-meta or --pixel-size)"),
    }
    if let Some(mag) = meta.objective_power {
        println!("objective power: {mag}×");
    }
    for l in &meta.levels {
        let (dx, _) = l.downsample(meta.width, meta.height);
        println!("level (page {}): {}×{}, downsample {dx:.2}", l.page, l.width, l.height);
    }
    if let Some(d) = &meta.description {
        let short: String = d.chars().take(200).collect();
        println!("description: {}", short.replace(['\r', '\n'], " "));
    }
    // Which OpenSlide reads the formats ftu's reader does not (loaded now if not yet).
    match ftu_formats::slide::openslide::loaded() {
        Ok(l) => println!("openslide: {} from {} ({})", l.version, l.path.display(), l.origin),
        Err(e) => println!("openslide: none ({e})"),
    }
    Ok(())
}

/// Where `--data` or `--slides` was given the other's kind of folder, what to pass instead.
fn check_inputs(a: &PredictArgs) -> Result<()> {
    if let Some(data) = &a.data {
        if data.is_dir() && !data.join("test.csv").is_file() {
            let slides = std::fs::read_dir(data)
                .map(|entries| {
                    entries
                        .flatten()
                        .any(|e| e.path().is_file() && ftu_infer::slides::is_slide(&e.path()))
                })
                .unwrap_or(false);
            if slides {
                bail!(
                    "{} has no test.csv but holds slide files; predict them with --slides {} and --organ or \
                     --slides-meta (--data takes a Kaggle-layout folder: test.csv and test_images/)",
                    data.display(),
                    data.display()
                );
            }
        }
    }
    for p in &a.slides {
        if p.is_dir() && p.join("test.csv").is_file() && p.join("test_images").is_dir() {
            bail!(
                "{} is a Kaggle-layout folder (test.csv, test_images/); predict it with --data {}",
                p.display(),
                p.display()
            );
        }
    }
    Ok(())
}

/// The manifest's ensemble on the asked-for runtime, with what it loaded said on stderr.
fn load_engine(manifest: &Path, runtime: &RuntimeArgs) -> Result<(Engine, Runtime)> {
    load_engine_from(Manifest::load(manifest)?, runtime, false)
}

/// With `strict`, a manifest that contradicts what a model states is refused, not warned about.
fn load_engine_from(manifest: Manifest, runtime: &RuntimeArgs, strict: bool) -> Result<(Engine, Runtime)> {
    let runtime = runtime.load_with(manifest.cuda)?;
    eprintln!(
        "ONNX Runtime {} on {}",
        runtime.library.display(),
        runtime.options().device
    );
    let engine = Engine::load_checked(manifest, &runtime, strict)?;
    if let Some(note) = runtime.fallback() {
        eprintln!("warning: {note}");
    }
    for (spec, described, norm) in engine.described() {
        let from = match spec.norm {
            Some(_) => "the manifest's",
            None => "the model's ftu.norm",
        };
        eprintln!(
            "{}: {} ({}), norm {} ({from})",
            spec.field,
            spec.path.display(),
            described.summary(),
            ftu_infer::engine::describe::norm_name(norm, spec.channels)
        );
    }
    for w in engine.warnings() {
        eprintln!("warning: {w}");
    }
    let m = engine.manifest();
    eprintln!(
        "{} models in {} groups (sizes {}), TTA {} × {} scales",
        m.groups.iter().map(|g| g.models.len()).sum::<usize>(),
        m.groups.len(),
        m.groups
            .iter()
            .map(|g| g.size.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        m.tta.mode.as_str(),
        m.tta.scales.len()
    );
    Ok((engine, runtime))
}

/// Runs `f` with progress bars: slides, and the current slide's tissue windows.
fn with_progress<T>(f: impl FnOnce(predict::Progress) -> T) -> T {
    let bars = indicatif::MultiProgress::new();
    let bar = bars.add(ProgressBar::new(0));
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} slides {elapsed_precise} eta {eta} {msg}")
            .expect("a valid template"),
    );
    let windows = bars.add(ProgressBar::new(0));
    windows.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} tissue windows of this slide, eta {eta}")
            .expect("a valid template"),
    );
    let result = f(&mut |event| match event {
        predict::Event::Slide { done, total, id } => {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
            bar.set_message(id.to_string());
        }
        predict::Event::Windows { done, total } => {
            if done == 0 {
                windows.reset();
            }
            windows.set_length(total as u64);
            windows.set_position(done as u64);
        }
    });
    windows.finish_and_clear();
    bar.finish_and_clear();
    result
}
