//! The ensemble manifest (TOML): groups of models at an input size, how each model wants its
//! input and gives its output, TTA, per-organ thresholds. Parsed and checked once here; errors name
//! the field (`group[1].model[0].norm`). The file's own shape, which the trainer and the bundle
//! write, is [`ManifestFile`]; [`Manifest`] is the checked value the engine runs.
//! Each checked type sits in the file of its table (`group.rs`, `model.rs`, `thresholds.rs`, …);
//! `check.rs` turns the file's shape into them.

use std::path::{Path, PathBuf};

mod check;
mod cuda;
pub mod file;
mod group;
mod model;
mod postprocess;
mod scaling;
mod thresholds;
mod tissue;
mod tta;

pub use cuda::{ConvSearch, CudaSettings};
pub use file::{ManifestError, ManifestFile, OutputRef};
pub use group::{Group, GroupMode, TileSpec};
pub use model::{Activation, ChannelOrder, ModelSpec, Normalisation};
pub use postprocess::{Area, PostprocessSpec, PostprocessTable};
pub use scaling::{round_to_multiple, PixelScaling};
pub use thresholds::Thresholds;
pub use tissue::TissueDetection;
pub use tta::Tta;

/// The model input sizes must divide by this (the encoders' total stride).
pub const SIZE_MULTIPLE: usize = 32;

/// A checked manifest. Model paths are absolute (resolved against the manifest's folder).
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub path: PathBuf,
    pub groups: Vec<Group>,
    pub tta: Tta,
    pub thresholds: Thresholds,
    pub scaling: Option<PixelScaling>,
    /// `[tissue]`: which windows of a tiled group are worth running.
    pub tissue: TissueDetection,
    /// `[postprocess]`: mask clean-up per organ.
    pub postprocess: PostprocessTable,
    /// `[cuda]`: options of ONNX Runtime's CUDA execution provider (ignored on the CPU).
    pub cuda: CudaSettings,
}

impl Manifest {
    /// Reads and checks a manifest file; model files must exist.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ManifestError::Read {
            path: path.to_path_buf(),
            cause,
        })?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        Manifest::parse(&text, path, &dir)
    }

    /// Parses manifest text; `path` is for messages, `dir` resolves relative model paths.
    pub fn parse(text: &str, path: &Path, dir: &Path) -> Result<Manifest, ManifestError> {
        Manifest::check(ManifestFile::parse(text, path)?, path, dir)
    }

    /// Every model, with the index of its group.
    pub fn models(&self) -> impl Iterator<Item = (usize, &ModelSpec)> {
        self.groups
            .iter()
            .enumerate()
            .flat_map(|(gi, g)| g.models.iter().map(move |m| (gi, m)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::organ::{DataSource, Organ};
    use crate::tta::TtaMode;

    fn with_models(names: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for n in names {
            std::fs::write(dir.path().join(n), b"onnx").unwrap();
        }
        dir
    }

    fn parse(text: &str, dir: &Path) -> Result<Manifest, ManifestError> {
        Manifest::parse(text, Path::new("m.toml"), dir)
    }

    const FULL: &str = r#"
        target_pixel_size = 0.4
        [tta]
        mode = "flips"
        scales = [0.8, 1.0, 1.2]
        [thresholds]
        default = 0.4
        kidney = 0.3
        lung = 0.6
        [thresholds.hubmap]
        lung = 0.06
        [[group]]
        size = 768
        weight = 0.2
        [[group.model]]
        path = "a.onnx"
        norm = "imagenet"
        channels = "bgr"
        [[group]]
        size = 1024
        weight = 0.8
        [[group.model]]
        path = "sub/b.onnx"
        weight = 2
        mean = [1, 2, 3]
        std = [4, 5, 6]
        output = "mask"
        activation = "softmax"
        channel = 1
        organs = ["kidney", "lung"]
        [[group.model]]
        path = "a.onnx"
        norm = "pm1"
        output = 1
        activation = "none"
    "#;

    #[test]
    fn a_full_manifest_parses_into_typed_fields() {
        let dir = with_models(&["a.onnx"]);
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/b.onnx"), b"x").unwrap();
        let m = parse(FULL, dir.path()).unwrap();
        assert_eq!(m.tta.mode, TtaMode::Flips);
        assert_eq!(m.tta.scales, [0.8, 1.0, 1.2]);
        assert_eq!(m.scaling.unwrap().reference_size, 3000.0);
        assert_eq!(m.groups.len(), 2);
        assert_eq!((m.groups[0].size, m.groups[0].weight), (768, 0.2));
        let a = &m.groups[0].models[0];
        assert_eq!(a.path, dir.path().join("a.onnx"));
        assert_eq!(a.weight, 1.0);
        assert_eq!(a.channels, ChannelOrder::Bgr);
        // ImageNet's blue mean comes first for a BGR model.
        assert!((a.norm.expect("a named norm").mean[0] - 0.406 * 255.0).abs() < 1e-4);
        assert_eq!(
            (a.output.clone(), a.activation, a.channel),
            (OutputRef::Index(0), Activation::Sigmoid, 0)
        );
        let b = &m.groups[1].models[0];
        assert_eq!(
            b.norm,
            Some(Normalisation {
                mean: [1.0, 2.0, 3.0],
                std: [4.0, 5.0, 6.0]
            })
        );
        assert_eq!(
            (b.output.clone(), b.activation, b.channel),
            (OutputRef::Name("mask".into()), Activation::Softmax, 1)
        );
        assert!(b.serves(Organ::Lung) && !b.serves(Organ::Spleen));
        assert_eq!(m.groups[1].models[1].output, OutputRef::Index(1));
        assert_eq!(
            m.groups[1].models[1].norm,
            Some(Normalisation {
                mean: [127.0; 3],
                std: [127.0; 3]
            })
        );
    }

    #[test]
    fn a_model_without_norm_is_left_to_its_own_metadata() {
        let dir = with_models(&["a.onnx"]);
        let m = parse(
            "[[group]]\nsize = 512\n[[group.model]]\npath = \"a.onnx\"\n",
            dir.path(),
        )
        .unwrap();
        assert_eq!(m.groups[0].models[0].norm, None);
    }

    #[test]
    fn the_cuda_table_parses_and_flags_override_it_one_by_one() {
        let dir = with_models(&["a.onnx"]);
        let model = "[[group]]\nsize = 256\n[[group.model]]\npath = \"a.onnx\"\nnorm = \"unit\"\n";
        assert_eq!(parse(model, dir.path()).unwrap().cuda, CudaSettings::default());
        let text = format!("[cuda]\nconv_search = \"heuristic\"\nmemory_limit_mib = 4096\ntf32 = false\n{model}");
        let m = parse(&text, dir.path()).unwrap();
        let file = CudaSettings {
            conv_search: Some(ConvSearch::Heuristic),
            memory_limit_mib: Some(4096),
            tf32: Some(false),
        };
        assert_eq!(m.cuda, file);
        let flags = CudaSettings {
            tf32: Some(true),
            ..CudaSettings::default()
        };
        assert_eq!(
            flags.or(m.cuda),
            CudaSettings {
                tf32: Some(true),
                ..file
            }
        );
    }

    #[test]
    fn tiles_tissue_and_postprocess_parse_into_typed_fields() {
        let dir = with_models(&["a.onnx"]);
        let text = "[tissue]\ndetect = false\nmin_fraction = 0.2\n\
            [postprocess.default]\nmin_area_px = 100\n\
            [postprocess.lung]\nmin_area_um2 = 2000\nmax_hole_px = 50\nerode_px = 10\n\
            [[group]]\nsize = 512\nmode = \"tiles\"\noverlap = 0.25\nscale = 0.5\nbatch = 2\n\
            [[group.model]]\npath = \"a.onnx\"\nnorm = \"unit\"\n\
            [[group]]\nsize = 256\n[[group.model]]\npath = \"a.onnx\"\nnorm = \"unit\"\n";
        let m = parse(text, dir.path()).unwrap();
        let spec = TileSpec {
            overlap: 0.25,
            scale: 0.5,
            batch: 2,
        };
        assert_eq!(m.groups[0].mode, GroupMode::Tiles(spec));
        assert_eq!(m.groups[1].mode, GroupMode::Resize);
        assert_eq!(
            m.tissue,
            TissueDetection {
                enabled: false,
                min_fraction: 0.2
            }
        );
        let lung = m.postprocess.get(Organ::Lung);
        assert_eq!(lung.min_area, Some(Area::SquareMicrons(2000.0)));
        assert_eq!((lung.max_hole, lung.dilate), (Some(Area::Pixels(50.0)), -10));
        // 2000 µm² at 0.5 µm/px is 8000 px.
        assert_eq!(lung.min_area.unwrap().pixels(0.5), 8000.0);
        assert_eq!(m.postprocess.get(Organ::Kidney).min_area, Some(Area::Pixels(100.0)));
        assert!(PostprocessTable::default().get(Organ::Kidney).is_identity());
        // Without target_pixel_size the window scale is the group's; with it, the slide's pixel
        // size decides: a 0.8 µm slide at target 0.4 and reference = size gives 2 model px per px.
        assert_eq!(spec.factor(512, None, 0.8), 0.5);
        let scaling = PixelScaling {
            target_pixel_size: 0.4,
            reference_size: 512.0,
        };
        assert_eq!(spec.factor(512, Some(&scaling), 0.8), 2.0);
    }

    #[test]
    fn thresholds_prefer_source_then_organ_then_default() {
        let dir = with_models(&["a.onnx"]);
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/b.onnx"), b"x").unwrap();
        let t = parse(FULL, dir.path()).unwrap().thresholds;
        assert_eq!(t.get(Organ::Lung, DataSource::Hubmap), 0.06);
        assert_eq!(t.get(Organ::Lung, DataSource::Hpa), 0.6);
        assert_eq!(t.get(Organ::Kidney, DataSource::Hubmap), 0.3);
        assert_eq!(t.get(Organ::Spleen, DataSource::Hpa), 0.4);
        assert_eq!(Thresholds::default().get(Organ::Spleen, DataSource::Hpa), 0.5);
    }

    #[test]
    fn pixel_scaling_maps_a_training_slide_to_the_group_size() {
        let s = PixelScaling {
            target_pixel_size: 0.4,
            reference_size: 3000.0,
        };
        assert_eq!(s.input_dims(768, 3000, 3000, 0.4), (768, 768));
        // Hubmap lung pixels (0.7562 µm) are 1.89× HPA's: 2000 × 1.89 × 768/3000 = 968 → 960.
        assert_eq!(s.input_dims(768, 2000, 1000, 0.7562), (960, 480));
        assert_eq!(s.input_dims(768, 10, 10, 0.4), (32, 32));
    }

    #[test]
    fn mistakes_are_refused_naming_the_field() {
        let dir = with_models(&["a.onnx"]);
        let model = "[[group]]\nsize = 512\n[[group.model]]\npath = \"a.onnx\"\nnorm = \"unit\"\n";
        let cases: &[(&str, &str)] = &[
            ("", "group"),
            ("[[group]]\nsize = 500\n[[group.model]]\npath = \"a.onnx\"\nnorm = \"unit\"\n", "group[0].size"),
            ("[[group]]\nsize = 512\nweight = 0\n[[group.model]]\npath = \"a.onnx\"\nnorm = \"unit\"\n", "group[0].weight"),
            ("[[group]]\nsize = 512\n", "group[0].model"),
            ("[[group]]\nsize = 512\n[[group.model]]\npath = \"missing.onnx\"\nnorm = \"unit\"\n", "group[0].model[0].path"),
            ("[[group]]\nsize = 512\n[[group.model]]\npath = \"a.onnx\"\nnorm = \"zscore\"\n", "group[0].model[0].norm"),
            ("[[group]]\nsize = 512\n[[group.model]]\npath = \"a.onnx\"\nmean = [1, 2]\nstd = [1, 1, 1]\n", "group[0].model[0].mean"),
            ("[[group]]\nsize = 512\n[[group.model]]\npath = \"a.onnx\"\nmean = [1, 2, 3]\nstd = [1, 0, 1]\n", "group[0].model[0].std"),
            ("[[group]]\nsize = 512\n[[group.model]]\npath = \"a.onnx\"\nmean = [1, 2, 3]\n", "group[0].model[0].mean"),
            ("[[group]]\nsize = 512\n[[group.model]]\npath = \"a.onnx\"\nnorm = \"unit\"\nchannels = \"rgba\"\n", "group[0].model[0].channels"),
            ("[[group]]\nsize = 512\n[[group.model]]\npath = \"a.onnx\"\nnorm = \"unit\"\nactivation = \"softmax\"\n", "group[0].model[0].channel"),
            ("[[group]]\nsize = 512\n[[group.model]]\npath = \"a.onnx\"\nnorm = \"unit\"\norgans = [\"liver\"]\n", "group[0].model[0].organs"),
            ("[[group]]\nsize = 512\n[[group.model]]\npath = \"a.onnx\"\nnorm = \"unit\"\nweight = -1\n", "group[0].model[0].weight"),
        ];
        for (text, field) in cases {
            let err = parse(text, dir.path()).unwrap_err().to_string();
            assert!(err.contains(&format!("{field}:")), "expected {field} in: {err}");
        }
        for (extra, field) in [
            ("[tta]\nmode = \"rot\"\n", "tta.mode"),
            ("[tta]\nscales = [0.1]\n", "tta.scales"),
            ("[thresholds]\nliver = 0.5\n", "thresholds.liver"),
            ("[thresholds]\nhubmap = 0.5\n", "thresholds.hubmap"),
            ("[thresholds.hubmap]\nliver = 0.5\n", "thresholds.hubmap.liver"),
            ("[thresholds]\nkidney = \"high\"\n", "thresholds.kidney"),
            ("target_pixel_size = -1\n", "target_pixel_size"),
            ("[tissue]\nmin_fraction = 2\n", "tissue.min_fraction"),
            ("[postprocess.liver]\nmin_area_px = 5\n", "postprocess.liver"),
            (
                "[postprocess.kidney]\nmin_area_px = -5\n",
                "postprocess.kidney.min_area_px",
            ),
            (
                "[postprocess.kidney]\nmin_area_px = 5\nmin_area_um2 = 5\n",
                "postprocess.kidney.min_area_px",
            ),
            (
                "[postprocess.lung]\nerode_px = 3\ndilate_px = 2\n",
                "postprocess.lung.erode_px",
            ),
            ("[postprocess.lung]\nerode_px = 999\n", "postprocess.lung.erode_px"),
            ("reference_size = 3000\n", "reference_size"),
            ("[cuda]\nconv_search = \"fast\"\n", "cuda.conv_search"),
            ("[cuda]\nmemory_limit_mib = 0\n", "cuda.memory_limit_mib"),
        ] {
            let err = parse(&format!("{extra}{model}"), dir.path()).unwrap_err().to_string();
            assert!(err.contains(&format!("{field}:")), "expected {field} in: {err}");
        }
        let tiles = |extra: &str| {
            format!("[[group]]\nsize = 512\n{extra}\n[[group.model]]\npath = \"a.onnx\"\nnorm = \"unit\"\n")
        };
        for (extra, field) in [
            ("mode = \"slide\"", "group[0].mode"),
            ("overlap = 0.5", "group[0].overlap"),
            ("mode = \"tiles\"\noverlap = 1.0", "group[0].overlap"),
            ("mode = \"tiles\"\nscale = 0", "group[0].scale"),
            ("mode = \"tiles\"\nbatch = 0", "group[0].batch"),
        ] {
            let err = parse(&tiles(extra), dir.path()).unwrap_err().to_string();
            assert!(err.contains(&format!("{field}:")), "expected {field} in: {err}");
        }
        let err = parse(
            &format!("target_pixel_size = 0.4\n{}", tiles("mode = \"tiles\"\nscale = 0.5")),
            dir.path(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("group[0].scale:"), "{err}");
        // Unknown keys are typos, not silently ignored.
        let err = parse(&format!("{model}sise = 3\n"), dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("sise"), "{err}");
    }
}
