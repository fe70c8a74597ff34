//! Mask clean-up per organ, on row runs so whole-slide masks never go dense: drop components
//! smaller than an area, fill holes smaller than an area, then grow or shrink by a disc.

use crate::manifest::PostprocessSpec;
use crate::mask::runs::{normalised, RunMask};

/// Applies a spec; areas in µm² use the slide's `pixel_size`.
pub fn apply(mask: RunMask, spec: &PostprocessSpec, pixel_size: f64) -> RunMask {
    let mut mask = mask;
    if let Some(min) = spec.min_area {
        mask = remove_small(&mask, min.pixels(pixel_size));
    }
    if let Some(max) = spec.max_hole {
        mask = fill_holes(mask, max.pixels(pixel_size));
    }
    match spec.dilate {
        0 => mask,
        r if r > 0 => dilate(&mask, r as u32),
        r => erode(&mask, r.unsigned_abs()),
    }
}

/// Drops 8-connected components with fewer than `min_area` pixels.
pub fn remove_small(mask: &RunMask, min_area: f64) -> RunMask {
    let mut out = RunMask::empty(mask.height, mask.width);
    for c in mask.components(true) {
        if c.area as f64 >= min_area {
            for &(y, s, e) in &c.runs {
                out.rows[y as usize].push((s, e));
            }
        }
    }
    for row in &mut out.rows {
        row.sort_unstable();
    }
    out
}

/// Fills holes — 4-connected background regions that do not reach the slide's edge — with fewer
/// than `max_area` pixels.
pub fn fill_holes(mut mask: RunMask, max_area: f64) -> RunMask {
    let (w, h) = (mask.width as u32, mask.height as u32);
    for hole in mask.complement().components(false) {
        let touches_edge = hole
            .runs
            .iter()
            .any(|&(y, s, e)| y == 0 || y + 1 == h || s == 0 || e == w);
        if !touches_edge && (hole.area as f64) < max_area {
            mask.add_runs(&hole.runs);
        }
    }
    mask
}

/// Grows the mask by a disc of radius `r`: row `y` is the union of rows `y ± d` widened by
/// `⌊√(r² − d²)⌋`.
pub fn dilate(mask: &RunMask, r: u32) -> RunMask {
    let w = mask.width as i64;
    let half: Vec<i64> = (0..=r)
        .map(|d| (((r * r - d * d) as f64).sqrt().floor()) as i64)
        .collect();
    let rows = (0..mask.height as i64)
        .map(|y| {
            let mut row = Vec::new();
            for dy in -(r as i64)..=r as i64 {
                let src = y + dy;
                if src < 0 || src >= mask.height as i64 {
                    continue;
                }
                let k = half[dy.unsigned_abs() as usize];
                for &(s, e) in &mask.rows[src as usize] {
                    row.push(((s as i64 - k).max(0) as u32, (e as i64 + k).min(w) as u32));
                }
            }
            normalised(row)
        })
        .collect();
    RunMask {
        width: mask.width,
        height: mask.height,
        rows,
    }
}

/// Shrinks the mask by a disc of radius `r`; beyond the slide's edge counts as foreground, so
/// a mask that reaches the edge is not eaten from there (OpenCV's `erode` does the same).
pub fn erode(mask: &RunMask, r: u32) -> RunMask {
    dilate(&mask.complement(), r).complement()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Area;
    use crate::mask::Mask;

    fn mask_of(rows: &[&str]) -> RunMask {
        let (h, w) = (rows.len(), rows[0].len());
        let data = rows
            .iter()
            .flat_map(|r| r.bytes().map(|b| u8::from(b == b'#')))
            .collect();
        RunMask::from_mask(&Mask::from_row_major(h, w, data).unwrap())
    }

    #[test]
    fn small_components_go_and_large_ones_stay() {
        let m = mask_of(&["##.....", "##...#.", ".......", "...###.", "...###."]);
        let out = remove_small(&m, 4.0);
        assert_eq!(out, mask_of(&["##.....", "##.....", ".......", "...###.", "...###."]));
        let spec = PostprocessSpec {
            min_area: Some(Area::SquareMicrons(5.0)),
            ..Default::default()
        };
        // 5 µm² at 0.5 µm/px is 20 px: everything goes.
        assert_eq!(apply(m, &spec, 0.5).count(), 0);
    }

    #[test]
    fn small_holes_are_filled_and_open_bays_are_not() {
        let m = mask_of(&[
            "#####.....",
            "#.#.#.####",
            "#####.#..#",
            "......#..#",
            "......####",
            "..........",
        ]);
        let filled = fill_holes(m.clone(), 3.0);
        // The two 1-px holes fill; the 4-px hole is not smaller than 3 and stays.
        assert_eq!(
            filled,
            mask_of(&[
                "#####.....",
                "#####.####",
                "#####.#..#",
                "......#..#",
                "......####",
                "..........",
            ])
        );
        assert_eq!((m.count(), fill_holes(m, 5.0).count()), (25, 25 + 2 + 4));
        // Background reaching the edge is never a hole.
        let bay = mask_of(&["#.#", "#.#", "###"]);
        assert_eq!(fill_holes(bay.clone(), 100.0), bay);
    }

    #[test]
    fn dilation_grows_by_a_disc_and_erosion_undoes_it_for_a_square() {
        let mut dense = Mask::zeros(21, 21);
        dense.set(10, 10, true);
        let grown = dilate(&RunMask::from_mask(&dense), 3).to_mask();
        for y in 0..21 {
            for x in 0..21 {
                let (dy, dx) = (y as i64 - 10, x as i64 - 10);
                assert_eq!(grown.get(y, x), dy * dy + dx * dx <= 9, "({y},{x})");
            }
        }
        let mut square = Mask::zeros(30, 30);
        for y in 5..25 {
            for x in 5..25 {
                square.set(y, x, true);
            }
        }
        let sq = RunMask::from_mask(&square);
        let shrunk = erode(&sq, 2);
        assert_eq!(shrunk.count(), 16 * 16);
        assert!(shrunk.get(7, 7) && !shrunk.get(6, 10));
        // A mask touching the slide's edge is not eroded from the edge.
        let edge = mask_of(&["###..", "###..", "###.."]);
        assert_eq!(erode(&edge, 1), mask_of(&["##...", "##...", "##..."]));
        let spec = PostprocessSpec {
            dilate: -2,
            ..Default::default()
        };
        assert_eq!(apply(sq, &spec, 1.0), shrunk);
    }
}
