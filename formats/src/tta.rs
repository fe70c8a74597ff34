//! Test-time augmentation: the dihedral transforms (flips, 90° rotations) applied to a model's
//! input planes and inverted on its output maps, and the sets of them a manifest can ask for.

use std::fmt;
use std::str::FromStr;

use ndarray::{ArrayView2, ArrayViewMut2, Axis};

/// One element of the dihedral group D4 acting on an image: flip rows and/or columns, then
/// optionally transpose (which swaps height and width).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Transform {
    pub flip_y: bool,
    pub flip_x: bool,
    pub transpose: bool,
}

impl Transform {
    pub const IDENTITY: Transform = Transform {
        flip_y: false,
        flip_x: false,
        transpose: false,
    };
    pub const HFLIP: Transform = Transform {
        flip_y: false,
        flip_x: true,
        transpose: false,
    };
    pub const VFLIP: Transform = Transform {
        flip_y: true,
        flip_x: false,
        transpose: false,
    };
    pub const ROT180: Transform = Transform {
        flip_y: true,
        flip_x: true,
        transpose: false,
    };

    /// All eight, identity first.
    pub fn d4() -> [Transform; 8] {
        let mut all = [Transform::IDENTITY; 8];
        for (i, t) in all.iter_mut().enumerate() {
            *t = Transform {
                transpose: i & 4 != 0,
                flip_y: i & 2 != 0,
                flip_x: i & 1 != 0,
            };
        }
        all
    }

    pub fn name(self) -> &'static str {
        match (self.transpose, self.flip_y, self.flip_x) {
            (false, false, false) => "identity",
            (false, false, true) => "hflip",
            (false, true, false) => "vflip",
            (false, true, true) => "rot180",
            (true, false, false) => "transpose",
            // Flip columns then transpose turns the image a quarter counter-clockwise (np.rot90).
            (true, false, true) => "rot90",
            (true, true, false) => "rot270",
            (true, true, true) => "antitranspose",
        }
    }

    /// Height and width of the transformed image.
    pub fn dims(self, height: usize, width: usize) -> (usize, usize) {
        if self.transpose {
            (width, height)
        } else {
            (height, width)
        }
    }

    /// This transform as a view of `image`, nothing copied: rows and/or columns reversed
    /// (`s![..;-1, ..]`, `s![.., ..;-1]`), then the axes swapped.
    pub fn view<'a, T>(self, image: ArrayView2<'a, T>) -> ArrayView2<'a, T> {
        let mut v = image;
        if self.flip_y {
            v.invert_axis(Axis(0));
        }
        if self.flip_x {
            v.invert_axis(Axis(1));
        }
        if self.transpose {
            v.reversed_axes()
        } else {
            v
        }
    }

    /// [`Transform::view`] of a row-major `height×width` plane copied into `out` (row-major, of
    /// the transformed shape) by ndarray; `benches/tta.rs` measures it against
    /// [`Transform::apply_into`].
    pub fn view_into<T: Copy>(self, plane: &[T], height: usize, width: usize, out: &mut [T]) {
        let image = ArrayView2::from_shape((height, width), plane).expect("a plane of height × width");
        let mut out =
            ArrayViewMut2::from_shape(self.dims(height, width), out).expect("an output of the plane's length");
        out.assign(&self.view(image));
    }

    /// Transforms one row-major `height×width` plane.
    pub fn apply<T: Copy + Default>(self, plane: &[T], height: usize, width: usize) -> Vec<T> {
        let mut out = vec![T::default(); plane.len()];
        self.apply_into(plane, height, width, &mut out);
        out
    }

    /// [`Transform::apply`] into `out` (of the plane's length), without allocating. Flips copy
    /// whole rows (reversed when the columns flip): 3× faster than ndarray's assign from a view
    /// with negative strides (`benches/tta.rs`); transposes go through [`Transform::view`],
    /// as fast as an index loop for f32.
    pub fn apply_into<T: Copy>(self, plane: &[T], height: usize, width: usize, out: &mut [T]) {
        assert_eq!(plane.len(), height * width, "plane of {height}×{width}");
        assert_eq!(out.len(), plane.len(), "output of the plane's length");
        if self.transpose {
            self.view_into(plane, height, width, out)
        } else {
            flip_rows(plane, height, width, self.flip_y, self.flip_x, out)
        }
    }

    /// Undoes [`Transform::apply`] on a map in the transformed frame (`height×width` there), for
    /// maps at any resolution: flips and transposes commute with uniform scaling.
    pub fn invert<T: Copy + Default>(self, map: &[T], height: usize, width: usize) -> Vec<T> {
        self.inverse().apply(map, height, width)
    }

    /// The transform that undoes this one. Flips alone are their own inverses; with a transpose,
    /// the row flip applied before it must be undone as a column flip after it, and vice versa.
    pub fn inverse(self) -> Transform {
        if self.transpose {
            Transform {
                flip_y: self.flip_x,
                flip_x: self.flip_y,
                transpose: true,
            }
        } else {
            self
        }
    }
}

/// A plane with its row order and/or each row reversed: whole-row copies, no per-pixel index math.
fn flip_rows<T: Copy>(plane: &[T], height: usize, width: usize, flip_y: bool, flip_x: bool, out: &mut [T]) {
    for (y, row) in out.chunks_exact_mut(width).enumerate() {
        let sy = if flip_y { height - 1 - y } else { y };
        let src = &plane[sy * width..(sy + 1) * width];
        if flip_x {
            row.iter_mut().zip(src.iter().rev()).for_each(|(d, s)| *d = *s);
        } else {
            row.copy_from_slice(src);
        }
    }
}

impl fmt::Display for Transform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which transforms a manifest's `[tta] mode` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TtaMode {
    #[default]
    None,
    /// Identity and horizontal flip.
    HFlip,
    /// Identity, horizontal, vertical, both (= 180°).
    Flips,
    /// All eight flips and quarter turns.
    D4,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown TTA mode `{0}` (expected none, hflip, flips or d4)")]
pub struct UnknownTta(pub String);

impl FromStr for TtaMode {
    type Err = UnknownTta;
    fn from_str(s: &str) -> Result<TtaMode, UnknownTta> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Ok(TtaMode::None),
            "hflip" => Ok(TtaMode::HFlip),
            "flips" => Ok(TtaMode::Flips),
            "d4" => Ok(TtaMode::D4),
            _ => Err(UnknownTta(s.to_string())),
        }
    }
}

impl TtaMode {
    pub fn transforms(self) -> Vec<Transform> {
        match self {
            TtaMode::None => vec![Transform::IDENTITY],
            TtaMode::HFlip => vec![Transform::IDENTITY, Transform::HFLIP],
            TtaMode::Flips => vec![
                Transform::IDENTITY,
                Transform::HFLIP,
                Transform::VFLIP,
                Transform::ROT180,
            ],
            TtaMode::D4 => Transform::d4().to_vec(),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TtaMode::None => "none",
            TtaMode::HFlip => "hflip",
            TtaMode::Flips => "flips",
            TtaMode::D4 => "d4",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// 2×3 plane  [0 1 2; 3 4 5]
    const PLANE: [u8; 6] = [0, 1, 2, 3, 4, 5];

    #[test]
    fn named_transforms_match_numpy() {
        let t = |t: Transform| t.apply(&PLANE, 2, 3);
        assert_eq!(t(Transform::HFLIP), [2, 1, 0, 5, 4, 3]); // np.fliplr
        assert_eq!(t(Transform::VFLIP), [3, 4, 5, 0, 1, 2]); // np.flipud
        assert_eq!(t(Transform::ROT180), [5, 4, 3, 2, 1, 0]);
        let by_name = |n: &str| *Transform::d4().iter().find(|t| t.name() == n).unwrap();
        // np.rot90([[0,1,2],[3,4,5]]) = [[2,5],[1,4],[0,3]]
        assert_eq!(t(by_name("rot90")), [2, 5, 1, 4, 0, 3]);
        // np.rot90(.., k=3) = [[3,0],[4,1],[5,2]]
        assert_eq!(t(by_name("rot270")), [3, 0, 4, 1, 5, 2]);
        assert_eq!(t(by_name("transpose")), [0, 3, 1, 4, 2, 5]);
        assert_eq!(by_name("rot90").dims(2, 3), (3, 2));
    }

    #[test]
    fn the_d4_elements_are_distinct_and_modes_nest() {
        let all = Transform::d4();
        let outs: std::collections::HashSet<Vec<u8>> = all.iter().map(|t| t.apply(&PLANE, 2, 3)).collect();
        assert_eq!(outs.len(), 8);
        assert_eq!(TtaMode::Flips.transforms().len(), 4);
        assert!(TtaMode::Flips.transforms().iter().all(|t| all.contains(t)));
        assert_eq!("D4".parse::<TtaMode>().unwrap(), TtaMode::D4);
        assert!("rot".parse::<TtaMode>().is_err());
    }

    proptest! {
        #[test]
        fn invert_undoes_apply(h in 1usize..9, w in 1usize..9, which in 0usize..8, seed in any::<u64>()) {
            let plane: Vec<u64> = (0..h * w).map(|i| seed.wrapping_mul(i as u64 + 1)).collect();
            let t = Transform::d4()[which];
            let (th, tw) = t.dims(h, w);
            let there = t.apply(&plane, h, w);
            prop_assert_eq!(there.len(), th * tw);
            prop_assert_eq!(t.invert(&there, th, tw), plane);
        }

        #[test]
        fn invert_commutes_with_downsampling(h2 in 1usize..6, w2 in 1usize..6, which in 0usize..8) {
            // A model whose output is its input at half resolution (2×2 means): the inverted
            // half-resolution output must equal the half-resolution input.
            let (h, w) = (2 * h2, 2 * w2);
            let plane: Vec<f32> = (0..h * w).map(|i| (i * 7 % 13) as f32).collect();
            let half = |p: &[f32], h: usize, w: usize| -> Vec<f32> {
                let mut out = vec![0.0; (h / 2) * (w / 2)];
                for y in 0..h / 2 {
                    for x in 0..w / 2 {
                        out[y * (w / 2) + x] = (p[2 * y * w + 2 * x] + p[2 * y * w + 2 * x + 1]
                            + p[(2 * y + 1) * w + 2 * x] + p[(2 * y + 1) * w + 2 * x + 1]) / 4.0;
                    }
                }
                out
            };
            let t = Transform::d4()[which];
            let (th, tw) = t.dims(h, w);
            let out = half(&t.apply(&plane, h, w), th, tw);
            prop_assert_eq!(t.invert(&out, th / 2, tw / 2), half(&plane, h, w));
        }
    }
}
