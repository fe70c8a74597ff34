//! From the file's shape to the checked manifest: every field's range and combination, with
//! errors naming the field (`group[1].model[0].norm`).

use std::collections::BTreeMap;
use std::path::Path;

use super::cuda::CudaSettings;
use super::file::{CudaFile, GroupFile, ManifestError, ManifestFile, ModelFile, OutputRef, PostprocessFile};
use super::group::{Group, GroupMode, TileSpec};
use super::model::{Activation, ChannelOrder, ModelSpec, Normalisation};
use super::postprocess::{Area, PostprocessSpec, PostprocessTable};
use super::scaling::PixelScaling;
use super::thresholds::Thresholds;
use super::tissue::TissueDetection;
use super::tta::Tta;
use super::{Manifest, SIZE_MULTIPLE};
use crate::organ::{DataSource, Organ};
use crate::tta::TtaMode;

impl Manifest {
    /// Checks a manifest file's fields; `path` is for messages, `dir` resolves relative model paths.
    pub fn check(raw: ManifestFile, path: &Path, dir: &Path) -> Result<Manifest, ManifestError> {
        let field = |field: &str, message: String| ManifestError::Field {
            path: path.to_path_buf(),
            field: field.to_string(),
            message,
        };

        let scaling = match (raw.target_pixel_size, raw.reference_size) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(field(
                    "reference_size",
                    "only means something with target_pixel_size".into(),
                ))
            }
            (Some(t), reference) => {
                if !(t.is_finite() && t > 0.0) {
                    return Err(field("target_pixel_size", format!("{t} is not a positive size in µm")));
                }
                let r = reference.unwrap_or(3000.0);
                if !(r.is_finite() && r >= 1.0) {
                    return Err(field("reference_size", format!("{r} is not a positive pixel count")));
                }
                Some(PixelScaling {
                    target_pixel_size: t,
                    reference_size: r,
                })
            }
        };

        let tta = match raw.tta {
            None => Tta::default(),
            Some(t) => {
                let mode = match t.mode {
                    None => TtaMode::None,
                    Some(m) => m
                        .parse()
                        .map_err(|e: crate::tta::UnknownTta| field("tta.mode", e.to_string()))?,
                };
                let scales = t.scales.unwrap_or_else(|| vec![1.0]);
                if scales.is_empty() {
                    return Err(field("tta.scales", "is empty; leave it out for [1.0]".into()));
                }
                for s in &scales {
                    if !(s.is_finite() && *s >= 0.25 && *s <= 4.0) {
                        return Err(field("tta.scales", format!("{s} is outside 0.25..=4")));
                    }
                }
                Tta {
                    mode,
                    scales: scales.into_iter().map(|s| s as f32).collect(),
                }
            }
        };

        let thresholds = match raw.thresholds {
            None => Thresholds::default(),
            Some(table) => parse_thresholds(&table).map_err(|(f, m)| field(&f, m))?,
        };

        if raw.group.is_empty() {
            return Err(field(
                "group",
                "no [[group]]: the ensemble needs at least one group of models".into(),
            ));
        }
        let mut groups = Vec::new();
        for (gi, g) in raw.group.into_iter().enumerate() {
            let gname = format!("group[{gi}]");
            if g.size < SIZE_MULTIPLE as i64 || g.size % SIZE_MULTIPLE as i64 != 0 || g.size > 16384 {
                return Err(field(
                    &format!("{gname}.size"),
                    format!("{} is not a multiple of {SIZE_MULTIPLE} between 32 and 16384", g.size),
                ));
            }
            let weight = positive(g.weight, &format!("{gname}.weight")).map_err(|(f, m)| field(&f, m))?;
            if g.model.is_empty() {
                return Err(field(
                    &format!("{gname}.model"),
                    "the group has no [[group.model]]".into(),
                ));
            }
            let mode = parse_mode(&g, &gname, scaling.is_some()).map_err(|(f, m)| field(&f, m))?;
            let mut models = Vec::new();
            for (mi, m) in g.model.into_iter().enumerate() {
                let mname = format!("{gname}.model[{mi}]");
                models.push(parse_model(m, &mname, dir).map_err(|(f, msg)| field(&f, msg))?);
            }
            groups.push(Group {
                size: g.size as usize,
                weight,
                mode,
                models,
            });
        }
        let tissue = match raw.tissue {
            None => TissueDetection::default(),
            Some(t) => {
                let min_fraction = t.min_fraction.unwrap_or(TissueDetection::default().min_fraction);
                if !(0.0..=1.0).contains(&min_fraction) {
                    return Err(field(
                        "tissue.min_fraction",
                        format!("{min_fraction} is not a fraction in 0..=1"),
                    ));
                }
                TissueDetection {
                    enabled: t.detect.unwrap_or(true),
                    min_fraction,
                }
            }
        };
        let postprocess = match raw.postprocess {
            None => PostprocessTable::default(),
            Some(tables) => parse_postprocess(tables).map_err(|(f, m)| field(&f, m))?,
        };
        let cuda = match raw.cuda {
            None => CudaSettings::default(),
            Some(c) => parse_cuda(c).map_err(|(f, m)| field(&f, m))?,
        };
        Ok(Manifest {
            path: path.to_path_buf(),
            groups,
            tta,
            thresholds,
            scaling,
            tissue,
            postprocess,
            cuda,
        })
    }
}

type FieldError = (String, String);

fn parse_cuda(raw: CudaFile) -> Result<CudaSettings, (String, String)> {
    let conv_search = match raw.conv_search {
        None => None,
        Some(s) => Some(s.parse().map_err(|m| ("cuda.conv_search".to_string(), m))?),
    };
    let memory_limit_mib = match raw.memory_limit_mib {
        None => None,
        Some(m) if m > 0 => Some(m as usize),
        Some(m) => {
            return Err((
                "cuda.memory_limit_mib".to_string(),
                format!("{m} is not a positive number of MiB"),
            ))
        }
    };
    Ok(CudaSettings {
        conv_search,
        memory_limit_mib,
        tf32: raw.tf32,
    })
}

fn parse_mode(g: &GroupFile, gname: &str, scaled: bool) -> Result<GroupMode, FieldError> {
    let err = |f: &str, msg: String| (format!("{gname}.{f}"), msg);
    let tiles_only = [
        ("overlap", g.overlap.is_some()),
        ("scale", g.scale.is_some()),
        ("batch", g.batch.is_some()),
    ];
    match g.mode.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("resize") => {
            if let Some((name, _)) = tiles_only.iter().find(|(_, set)| *set) {
                return Err(err(name, "only applies to mode = \"tiles\"".into()));
            }
            Ok(GroupMode::Resize)
        }
        Some("tiles") => {
            let overlap = g.overlap.unwrap_or(0.5);
            if !(0.0..=0.95).contains(&overlap) {
                return Err(err("overlap", format!("{overlap} is outside 0..=0.95")));
            }
            if scaled && g.scale.is_some() {
                return Err(err(
                    "scale",
                    "target_pixel_size already sets the scale from each slide's pixel size".into(),
                ));
            }
            let scale = g.scale.unwrap_or(1.0);
            if !(scale.is_finite() && (1.0 / 64.0..=8.0).contains(&scale)) {
                return Err(err(
                    "scale",
                    format!("{scale} is outside 1/64..=8 model pixels per slide pixel"),
                ));
            }
            let batch = g.batch.unwrap_or(4);
            if !(1..=256).contains(&batch) {
                return Err(err("batch", format!("{batch} is outside 1..=256 windows")));
            }
            Ok(GroupMode::Tiles(TileSpec {
                overlap,
                scale,
                batch: batch as usize,
            }))
        }
        Some(other) => Err(err("mode", format!("`{other}`: expected resize or tiles"))),
    }
}

fn parse_postprocess(tables: BTreeMap<String, PostprocessFile>) -> Result<PostprocessTable, FieldError> {
    let mut out = PostprocessTable::default();
    for (key, raw) in tables {
        let f = format!("postprocess.{key}");
        let area = |px: Option<f64>, um2: Option<f64>, name: &str| -> Result<Option<Area>, FieldError> {
            let check = |v: f64, unit: &str| {
                if v.is_finite() && v >= 0.0 {
                    Ok(v)
                } else {
                    Err((format!("{f}.{name}_{unit}"), format!("{v} is not a non-negative area")))
                }
            };
            match (px, um2) {
                (None, None) => Ok(None),
                (Some(p), None) => Ok(Some(Area::Pixels(check(p, "px")?))),
                (None, Some(a)) => Ok(Some(Area::SquareMicrons(check(a, "um2")?))),
                (Some(_), Some(_)) => Err((
                    format!("{f}.{name}_px"),
                    format!("give {name}_px or {name}_um2, not both"),
                )),
            }
        };
        let dilate = match (raw.dilate_px, raw.erode_px) {
            (Some(_), Some(_)) => return Err((format!("{f}.erode_px"), "give dilate_px or erode_px, not both".into())),
            (Some(d), None) => d,
            (None, Some(e)) => -e,
            (None, None) => 0,
        };
        if !(-256..=256).contains(&dilate)
            || raw.erode_px.is_some_and(|e| e < 0)
            || raw.dilate_px.is_some_and(|d| d < 0)
        {
            let name = if raw.erode_px.is_some() {
                "erode_px"
            } else {
                "dilate_px"
            };
            return Err((format!("{f}.{name}"), "expected a radius of 0..=256 pixels".into()));
        }
        let spec = PostprocessSpec {
            min_area: area(raw.min_area_px, raw.min_area_um2, "min_area")?,
            max_hole: area(raw.max_hole_px, raw.max_hole_um2, "max_hole")?,
            dilate: dilate as i32,
        };
        if key == "default" {
            out.default = spec;
        } else {
            let organ = key.parse::<Organ>().map_err(|e| (f.clone(), e.to_string()))?;
            out.organ.insert(organ, spec);
        }
    }
    Ok(out)
}

fn positive(v: Option<f64>, name: &str) -> Result<f32, FieldError> {
    let v = v.unwrap_or(1.0);
    if v.is_finite() && v > 0.0 {
        Ok(v as f32)
    } else {
        Err((name.to_string(), format!("{v} is not a positive weight")))
    }
}

fn parse_model(m: ModelFile, name: &str, dir: &Path) -> Result<ModelSpec, FieldError> {
    let err = |f: &str, msg: String| (format!("{name}.{f}"), msg);
    let path = dir.join(&m.path);
    if !path.is_file() {
        return Err(err("path", format!("{} does not exist", path.display())));
    }
    let weight = positive(m.weight, &format!("{name}.weight"))?;
    let channels = match m.channels.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("rgb") => ChannelOrder::Rgb,
        Some("bgr") => ChannelOrder::Bgr,
        Some(other) => return Err(err("channels", format!("`{other}`: expected rgb or bgr"))),
    };
    let norm = match (m.norm.as_deref().map(str::to_ascii_lowercase), m.mean, m.std) {
        (Some(n), None, None) => Some(
            Normalisation::named(&n, channels)
                .ok_or_else(|| err("norm", format!("`{n}`: expected imagenet, unit, pm1, or mean and std")))?,
        ),
        // The model's own `ftu.norm`, checked when the engine opens it.
        (None, None, None) => None,
        (None | Some(_), Some(mean), Some(std)) if m.norm.as_deref().is_none_or(|n| n == "custom") => {
            let three = |v: Vec<f64>, f: &str| -> Result<[f32; 3], FieldError> {
                let arr: [f64; 3] = v
                    .clone()
                    .try_into()
                    .map_err(|_| err(f, format!("{v:?}: expected three numbers, one per channel")))?;
                Ok(arr.map(|x| x as f32))
            };
            let mean = three(mean, "mean")?;
            let std = three(std, "std")?;
            if std.iter().any(|s| !(s.is_finite() && *s > 0.0)) || mean.iter().any(|v| !v.is_finite()) {
                return Err(err("std", format!("{std:?}: every std must be positive")));
            }
            Some(Normalisation { mean, std })
        }
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            return Err(err("norm", "give either a named norm or mean and std, not both".into()))
        }
        (None, _, _) => return Err(err("mean", "mean and std go together; one of them is missing".into())),
    };
    let activation = match m.activation.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("sigmoid") => Activation::Sigmoid,
        Some("softmax") => Activation::Softmax,
        Some("none") => Activation::None,
        Some(other) => {
            return Err(err(
                "activation",
                format!("`{other}`: expected sigmoid, softmax or none"),
            ))
        }
    };
    let channel = match m.channel {
        None if activation == Activation::Softmax => {
            return Err(err(
                "channel",
                "softmax needs the channel of the FTU class (usually 1)".into(),
            ))
        }
        None => 0,
        Some(c) if c >= 0 => c as usize,
        Some(c) => return Err(err("channel", format!("{c} is negative"))),
    };
    let organs = match m.organs {
        None => None,
        Some(list) if list.is_empty() => return Err(err("organs", "is empty; leave it out for every organ".into())),
        Some(list) => Some(
            list.iter()
                .map(|o| o.parse::<Organ>().map_err(|e| err("organs", e.to_string())))
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    Ok(ModelSpec {
        field: name.to_string(),
        path,
        weight,
        norm,
        channels,
        output: m.output.unwrap_or(OutputRef::Index(0)),
        activation,
        channel,
        organs,
    })
}

/// `default`, organ keys, and data-source sub-tables of organ keys.
fn parse_thresholds(table: &toml::Table) -> Result<Thresholds, FieldError> {
    let mut t = Thresholds::default();
    let value = |v: &toml::Value, f: &str| -> Result<f32, FieldError> {
        let x = v
            .as_float()
            .or_else(|| v.as_integer().map(|i| i as f64))
            .ok_or_else(|| (f.to_string(), format!("{v} is not a number")))?;
        if x.is_finite() {
            Ok(x as f32)
        } else {
            Err((f.to_string(), format!("{x} is not finite")))
        }
    };
    for (key, v) in table {
        let f = format!("thresholds.{key}");
        if key == "default" {
            t.default = value(v, &f)?;
        } else if let Ok(organ) = key.parse::<Organ>() {
            t.organ.insert(organ, value(v, &f)?);
        } else if let Ok(source) = key.parse::<DataSource>() {
            let sub = v.as_table().ok_or_else(|| {
                (
                    f.clone(),
                    "a data source takes a table of organ thresholds, e.g. [thresholds.hubmap]".to_string(),
                )
            })?;
            for (okey, ov) in sub {
                let of = format!("{f}.{okey}");
                let organ = okey.parse::<Organ>().map_err(|e| (of.clone(), e.to_string()))?;
                t.source.insert((source, organ), value(ov, &of)?);
            }
        } else {
            return Err((
                f,
                "expected default, an organ, or a data source (hpa, hubmap)".to_string(),
            ));
        }
    }
    Ok(t)
}
