//! FTU outlines as a QuPath-compatible GeoJSON FeatureCollection: one polygon feature per
//! 8-connected component, holes as inner rings, with the organ and mean probability.
//!
//! Outlines come from marching squares over pixel centres, so vertices sit on pixel edges and
//! the polygon contains exactly the component's pixel centres: rasterising it gives the mask back.
//! Saddles join diagonal foreground (8-connectivity), so rings never touch themselves.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{json, Value};

use crate::atomic::{write_atomic, WriteError};
use crate::mask::runs::{Component, RunMask};
use crate::organ::Organ;

/// A closed ring in slide pixel coordinates (x right, y down; pixel (x, y) covers
/// `[x, x+1) × [y, y+1)`); the last point repeats the first.
pub type Ring = Vec<[f64; 2]>;

/// One FTU: its outer ring (counter-clockwise in x/y numbers), holes (clockwise), mean probability.
#[derive(Debug, Clone, PartialEq)]
pub struct Outline {
    pub outer: Ring,
    pub holes: Vec<Ring>,
    pub area: u64,
    pub mean_probability: f64,
}

impl Outline {
    /// Whether the point `(x, y)` (slide pixels, as the rings) lies inside the outline and
    /// outside its holes.
    pub fn contains(&self, x: f64, y: f64) -> bool {
        inside(std::iter::once(&self.outer).chain(&self.holes), x, y)
    }
}

/// Even-odd point-in-polygon over every ring (a polygon's outer ring and its holes, as GeoJSON
/// gives them): inside when a ray from the point crosses the rings an odd number of times.
pub fn inside<'a>(rings: impl IntoIterator<Item = &'a Ring>, x: f64, y: f64) -> bool {
    let mut odd = false;
    for ring in rings {
        for w in ring.windows(2) {
            let ([ax, ay], [bx, by]) = (w[0], w[1]);
            if (ay > y) != (by > y) && x < ax + (y - ay) * (bx - ax) / (by - ay) {
                odd = !odd;
            }
        }
    }
    odd
}

/// The outline of every 8-connected component, with its mean probability.
pub fn outlines(mask: &RunMask, mean_probability: impl Fn(&Component) -> f64) -> Vec<Outline> {
    mask.components(true)
        .into_iter()
        .map(|c| {
            let (outer, holes) = rings(&c);
            Outline {
                outer,
                holes,
                area: c.area,
                mean_probability: mean_probability(&c),
            }
        })
        .collect()
}

/// A point in doubled grid units.
type Point = (i32, i32);

/// Marching squares over one component's pixels (padded by one pixel so every ring closes).
fn rings(c: &Component) -> (Ring, Vec<Ring>) {
    let (x0, y0, x1, y1) = c.bbox();
    let (gw, gh) = ((x1 - x0 + 2) as usize, (y1 - y0 + 2) as usize);
    let mut grid = vec![false; gw * gh];
    for &(y, s, e) in &c.runs {
        let row = (y - y0 + 1) as usize * gw;
        for x in s..e {
            grid[row + (x - x0 + 1) as usize] = true;
        }
    }
    // Points in doubled grid units: sample (i, j) is (2i, 2j); edge midpoints are odd on one axis.
    let mut next: HashMap<(i32, i32), (i32, i32)> = HashMap::new();
    for j in 0..gh - 1 {
        for i in 0..gw - 1 {
            let at = |di: usize, dj: usize| grid[(j + dj) * gw + i + di];
            let case = (at(0, 0) as u8) << 3 | (at(1, 0) as u8) << 2 | (at(1, 1) as u8) << 1 | at(0, 1) as u8;
            let (ii, jj) = (2 * i as i32, 2 * j as i32);
            let t = (ii + 1, jj);
            let r = (ii + 2, jj + 1);
            let b = (ii + 1, jj + 2);
            let l = (ii, jj + 1);
            // Directed so that foreground lies on the left (x right, y down numbers).
            let segments: &[(Point, Point)] = match case {
                0b1000 => &[(t, l)],
                0b0100 => &[(r, t)],
                0b0010 => &[(b, r)],
                0b0001 => &[(l, b)],
                0b1100 => &[(r, l)],
                0b0110 => &[(b, t)],
                0b0011 => &[(l, r)],
                0b1001 => &[(t, b)],
                0b1110 => &[(b, l)],
                0b0111 => &[(l, t)],
                0b1011 => &[(t, r)],
                0b1101 => &[(r, b)],
                // Saddles: diagonal foreground is joined, the two background corners cut off.
                0b1010 => &[(t, r), (b, l)],
                0b0101 => &[(l, t), (r, b)],
                _ => &[],
            };
            for &(from, to) in segments {
                next.insert(from, to);
            }
        }
    }
    let to_slide = |(x, y): (i32, i32)| [x0 as f64 - 0.5 + x as f64 / 2.0, y0 as f64 - 0.5 + y as f64 / 2.0];
    let mut starts: Vec<(i32, i32)> = next.keys().copied().collect();
    starts.sort_unstable();
    let mut seen = std::collections::HashSet::new();
    let (mut outer, mut holes): (Option<Ring>, Vec<Ring>) = (None, Vec::new());
    for start in starts {
        if seen.contains(&start) {
            continue;
        }
        let mut points = Vec::new();
        let mut p = start;
        loop {
            seen.insert(p);
            points.push(p);
            p = next[&p];
            if p == start {
                break;
            }
        }
        let ring = simplify(&points);
        let mut coords: Ring = ring.iter().map(|&p| to_slide(p)).collect();
        coords.push(coords[0]);
        if signed_area(&coords) > 0.0 {
            outer = Some(coords);
        } else {
            holes.push(coords);
        }
    }
    (outer.expect("a non-empty component has an outer ring"), holes)
}

/// Drops vertices in the middle of straight runs.
fn simplify(points: &[(i32, i32)]) -> Vec<(i32, i32)> {
    let n = points.len();
    (0..n)
        .filter(|&k| {
            let (a, b, c) = (points[(k + n - 1) % n], points[k], points[(k + 1) % n]);
            (b.0 - a.0) * (c.1 - b.1) != (b.1 - a.1) * (c.0 - b.0)
        })
        .map(|k| points[k])
        .collect()
}

/// Shoelace area; positive for counter-clockwise rings in x/y numbers.
pub fn signed_area(ring: &[[f64; 2]]) -> f64 {
    ring.windows(2)
        .map(|w| w[0][0] * w[1][1] - w[1][0] * w[0][1])
        .sum::<f64>()
        / 2.0
}

/// QuPath's colour for an organ's annotations.
fn colour(organ: Organ) -> [u8; 3] {
    match organ {
        Organ::Kidney => [230, 25, 75],
        Organ::Prostate => [60, 180, 75],
        Organ::LargeIntestine => [0, 130, 200],
        Organ::Spleen => [245, 130, 48],
        Organ::Lung => [145, 30, 180],
    }
}

/// The FeatureCollection QuPath imports (File › Import objects): annotations classified by organ.
pub fn feature_collection(id: &str, organ: Organ, outlines: &[Outline]) -> Value {
    let features: Vec<Value> = outlines
        .iter()
        .enumerate()
        .map(|(k, o)| {
            let mut rings = vec![o.outer.clone()];
            rings.extend(o.holes.iter().cloned());
            json!({
                "type": "Feature",
                "id": format!("{id}-{}", k + 1),
                "geometry": {"type": "Polygon", "coordinates": rings},
                "properties": {
                    "objectType": "annotation",
                    "name": format!("FTU {}", k + 1),
                    "classification": {"name": organ.to_string(), "color": colour(organ)},
                    "organ": organ.to_string(),
                    "mean_probability": o.mean_probability,
                    "area_px": o.area,
                    "measurements": {"mean probability": o.mean_probability, "area px": o.area},
                }
            })
        })
        .collect();
    json!({"type": "FeatureCollection", "features": features})
}

pub fn write(path: &Path, collection: &Value) -> Result<(), WriteError> {
    write_atomic(path, |w| {
        serde_json::to_writer(&mut *w, collection).map_err(std::io::Error::other)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::Mask;
    use proptest::prelude::*;

    #[test]
    fn a_ring_with_a_hole_and_a_diagonal_rasterises_back_exactly() {
        let rows = [
            "..........",
            ".#####....",
            ".#...#....",
            ".#.#.#....",
            ".#...#....",
            ".#####....",
            "......#...",
            ".......##.",
        ];
        let data = rows
            .iter()
            .flat_map(|r| r.bytes().map(|b| u8::from(b == b'#')))
            .collect();
        let mask = Mask::from_row_major(8, 10, data).unwrap();
        let runs = RunMask::from_mask(&mask);
        // The mean "probability" is the mean row of the component's pixels.
        let out = outlines(&runs, |c| {
            c.runs.iter().map(|&(y, s, e)| y as f64 * (e - s) as f64).sum::<f64>() / c.area as f64
        });
        // The square ring with the diagonal tail is one component; the centre pixel another.
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].holes.len(), 1);
        assert_eq!(out[1].area, 1);
        assert_eq!(out[1].mean_probability, 3.0);
        for y in 0..8 {
            for x in 0..10 {
                let hit = out.iter().any(|o| o.contains(x as f64 + 0.5, y as f64 + 0.5));
                assert_eq!(hit, mask.get(y, x), "({y},{x})");
            }
        }
        for o in &out {
            assert_eq!(o.outer.first(), o.outer.last());
            assert!(signed_area(&o.outer) > 0.0);
        }
        let fc = feature_collection("s1", Organ::Kidney, &out);
        assert_eq!(
            fc["features"][0]["geometry"]["coordinates"].as_array().unwrap().len(),
            2
        );
        assert_eq!(fc["features"][1]["properties"]["classification"]["name"], "kidney");
    }

    /// Whether two closed segments share a point.
    fn segments_meet(a: [f64; 2], b: [f64; 2], c: [f64; 2], d: [f64; 2]) -> bool {
        let cross =
            |o: [f64; 2], p: [f64; 2], q: [f64; 2]| (p[0] - o[0]) * (q[1] - o[1]) - (p[1] - o[1]) * (q[0] - o[0]);
        let on = |p: [f64; 2], q: [f64; 2], r: [f64; 2]| {
            r[0] >= p[0].min(q[0]) && r[0] <= p[0].max(q[0]) && r[1] >= p[1].min(q[1]) && r[1] <= p[1].max(q[1])
        };
        let (d1, d2, d3, d4) = (cross(c, d, a), cross(c, d, b), cross(a, b, c), cross(a, b, d));
        if ((d1 > 0.0 && d2 < 0.0) || (d1 < 0.0 && d2 > 0.0)) && ((d3 > 0.0 && d4 < 0.0) || (d3 < 0.0 && d4 > 0.0)) {
            return true;
        }
        (d1 == 0.0 && on(c, d, a))
            || (d2 == 0.0 && on(c, d, b))
            || (d3 == 0.0 && on(a, b, c))
            || (d4 == 0.0 && on(a, b, d))
    }

    /// A closed ring is simple when no two non-adjacent edges meet.
    pub(crate) fn is_simple(ring: &Ring) -> bool {
        let n = ring.len() - 1;
        for i in 0..n {
            for j in i + 1..n {
                let adjacent = j == i + 1 || (i == 0 && j == n - 1);
                if !adjacent && segments_meet(ring[i], ring[i + 1], ring[j], ring[j + 1]) {
                    return false;
                }
            }
        }
        true
    }

    proptest! {
        #[test]
        fn random_masks_rasterise_back_from_simple_closed_rings(
            (h, w, data) in (1usize..14, 1usize..14).prop_flat_map(|(h, w)| {
                (Just(h), Just(w), proptest::collection::vec(0u8..2, h * w))
            })
        ) {
            let mask = Mask::from_row_major(h, w, data).unwrap();
            let out = outlines(&RunMask::from_mask(&mask), |_| 1.0);
            for y in 0..h {
                for x in 0..w {
                    let hits = out.iter().filter(|o| {
                        o.contains(x as f64 + 0.5, y as f64 + 0.5)
                    }).count();
                    prop_assert_eq!(hits, usize::from(mask.get(y, x)), "({},{})", y, x);
                }
            }
            for o in &out {
                prop_assert_eq!(o.outer.first(), o.outer.last());
                prop_assert!(is_simple(&o.outer));
                for hole in &o.holes {
                    prop_assert!(is_simple(hole) && signed_area(hole) < 0.0);
                }
            }
        }
    }
}
