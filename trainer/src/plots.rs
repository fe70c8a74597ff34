//! PNG plots of a fold's loss and Dice curves (plotters, bitmap backend). Text needs a TrueType
//! font: the first DejaVu/Liberation font found on the system is used; without one the curves
//! are drawn without labels.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;

const FONTS: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

fn font_available() -> bool {
    static FONT: OnceLock<bool> = OnceLock::new();
    *FONT.get_or_init(|| {
        for path in FONTS {
            if let Ok(bytes) = std::fs::read(path) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

/// One series: name and (epoch, value) points.
pub type Series<'a> = (&'a str, Vec<(f64, f64)>);

/// The colour of the best epoch's marker.
pub const BEST: RGBColor = RGBColor(255, 140, 0);

/// Line chart of `series` against epoch, written to `path` (temp file, then rename); `best`
/// marks an epoch (the one exported) with a vertical line.
pub fn line_chart(path: &Path, title: &str, series: &[Series], best: Option<f64>) -> Result<(), String> {
    let points: Vec<(f64, f64)> = series.iter().flat_map(|s| s.1.iter().copied()).collect();
    if points.is_empty() {
        return Ok(());
    }
    let (x_max, y_min, y_max) = points.iter().fold((1f64, f64::MAX, f64::MIN), |a, p| {
        (a.0.max(p.0), a.1.min(p.1), a.2.max(p.1))
    });
    let pad = ((y_max - y_min) * 0.05).max(1e-3);
    let tmp = ftu_formats::atomic::tmp_path(path).with_extension("tmp.png");
    let text = font_available();
    {
        let root = BitMapBackend::new(&tmp, (800, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut builder = ChartBuilder::on(&root);
        builder.margin(12);
        if text {
            builder
                .caption(title, ("sans-serif", 22))
                .x_label_area_size(36)
                .y_label_area_size(56);
        }
        let mut chart = builder
            .build_cartesian_2d(0f64..x_max, (y_min - pad)..(y_max + pad))
            .map_err(|e| e.to_string())?;
        if text {
            chart
                .configure_mesh()
                .x_desc("epoch")
                .draw()
                .map_err(|e| e.to_string())?;
        }
        let colours = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
        for (i, (name, pts)) in series.iter().enumerate() {
            let colour = colours[i % colours.len()];
            let line = chart
                .draw_series(LineSeries::new(pts.iter().copied(), colour.stroke_width(2)))
                .map_err(|e| e.to_string())?;
            if text {
                line.label(*name)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2)));
            }
        }
        if let Some(x) = best {
            let marker = chart
                .draw_series(LineSeries::new(
                    [(x, y_min - pad), (x, y_max + pad)],
                    BEST.stroke_width(2),
                ))
                .map_err(|e| e.to_string())?;
            if text {
                marker
                    .label(format!("best epoch {x}"))
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BEST.stroke_width(2)));
            }
        }
        if text {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_png_with_the_curves() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("curves.png");
        let series = [
            ("train", vec![(1.0, 0.9), (2.0, 0.5), (3.0, 0.3)]),
            ("val", vec![(1.0, 1.0), (2.0, 0.6), (3.0, 0.4)]),
        ];
        line_chart(&path, "loss", &series, None).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (800, 480));
        // Blue and red line pixels are there, and no marker.
        let has = |img: &image::RgbImage, c: [u8; 3]| img.pixels().any(|p| p.0 == c);
        assert!(has(&img, [0, 0, 255]) && has(&img, [255, 0, 0]));
        assert!(!has(&img, [255, 140, 0]));
        line_chart(&path, "loss", &series, Some(2.0)).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert!(has(&img, [255, 140, 0]), "the best epoch is marked");
    }
}
