//! A mask as runs per row: memory follows the outlines, not the area, so a whole-slide mask of
//! 40000² pixels costs a few megabytes. Converts to and from dense masks, to the competition's
//! column-major RLE without a dense copy, and splits into connected components.

use crate::blocks::BlockMap;
use crate::mask::Mask;

/// Half-open column ranges `[start, end)` of one row, sorted and disjoint.
pub type Row = Vec<(u32, u32)>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunMask {
    pub width: usize,
    pub height: usize,
    pub rows: Vec<Row>,
}

/// One connected component: its runs as `(y, start, end)`, row by row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    pub runs: Vec<(u32, u32, u32)>,
    pub area: u64,
}

impl Component {
    /// (x0, y0, x1, y1), half-open.
    pub fn bbox(&self) -> (u32, u32, u32, u32) {
        let x0 = self.runs.iter().map(|r| r.1).min().unwrap_or(0);
        let x1 = self.runs.iter().map(|r| r.2).max().unwrap_or(0);
        let y0 = self.runs.first().map_or(0, |r| r.0);
        let y1 = self.runs.last().map_or(0, |r| r.0 + 1);
        (x0, y0, x1, y1)
    }
}

/// Runs of `true` in a row of booleans given as a predicate over `0..len`, offset by `base`.
fn push_runs(row: &mut Row, base: usize, len: usize, on: impl Fn(usize) -> bool) {
    let mut x = 0;
    while x < len {
        if on(x) {
            let start = x;
            while x < len && on(x) {
                x += 1;
            }
            let (s, e) = ((base + start) as u32, (base + x) as u32);
            match row.last_mut() {
                Some(last) if last.1 == s => last.1 = e,
                _ => row.push((s, e)),
            }
        } else {
            x += 1;
        }
    }
}

impl RunMask {
    pub fn empty(height: usize, width: usize) -> RunMask {
        RunMask {
            width,
            height,
            rows: vec![Vec::new(); height],
        }
    }

    pub fn from_mask(mask: &Mask) -> RunMask {
        let (h, w) = (mask.height(), mask.width());
        let data = mask.data();
        let rows = (0..h)
            .map(|y| {
                let mut row = Vec::new();
                push_runs(&mut row, 0, w, |x| data[y * w + x] != 0);
                row
            })
            .collect();
        RunMask {
            width: w,
            height: h,
            rows,
        }
    }

    /// Pixels of a block map above `threshold`; blocks that were never written read as 0.
    pub fn threshold(map: &BlockMap, threshold: f32) -> RunMask {
        let mut out = RunMask::empty(map.height, map.width);
        let mut buf = vec![0f32; map.width];
        for y in 0..map.height {
            out.rows[y] = threshold_row(map, y, threshold, &mut buf).0;
        }
        out
    }

    pub fn to_mask(&self) -> Mask {
        let mut data = vec![0u8; self.width * self.height];
        for (y, row) in self.rows.iter().enumerate() {
            for &(s, e) in row {
                data[y * self.width + s as usize..y * self.width + e as usize].fill(1);
            }
        }
        Mask::from_row_major(self.height, self.width, data).expect("rows fill the mask")
    }

    pub fn count(&self) -> u64 {
        self.rows.iter().flatten().map(|&(s, e)| (e - s) as u64).sum()
    }

    /// Pixels of a dense row-major map above `threshold`.
    pub fn from_map(map: &[f32], height: usize, width: usize, threshold: f32) -> RunMask {
        assert_eq!(map.len(), height * width, "a map of {width}×{height}");
        let rows = map
            .chunks_exact(width.max(1))
            .take(height)
            .map(|line| {
                let mut row = Vec::new();
                push_runs(&mut row, 0, width, |x| line[x] > threshold);
                row
            })
            .collect();
        RunMask { width, height, rows }
    }

    /// Pixels in both masks (of one size).
    pub fn overlap(&self, other: &RunMask) -> u64 {
        assert_eq!(
            (self.height, self.width),
            (other.height, other.width),
            "masks of one size"
        );
        let mut both = 0u64;
        for (a, b) in self.rows.iter().zip(&other.rows) {
            let (mut i, mut j) = (0, 0);
            while i < a.len() && j < b.len() {
                let (s, e) = (a[i].0.max(b[j].0), a[i].1.min(b[j].1));
                if s < e {
                    both += (e - s) as u64;
                }
                if a[i].1 < b[j].1 {
                    i += 1;
                } else {
                    j += 1;
                }
            }
        }
        both
    }

    /// The competition's Dice of this mask against `truth` (1 when both are empty).
    pub fn dice(&self, truth: &RunMask) -> f64 {
        let sum = self.count() + truth.count();
        if sum == 0 {
            1.0
        } else {
            2.0 * self.overlap(truth) as f64 / sum as f64
        }
    }

    pub fn get(&self, y: usize, x: usize) -> bool {
        let x = x as u32;
        let row = &self.rows[y];
        let i = row.partition_point(|r| r.1 <= x);
        i < row.len() && row[i].0 <= x
    }

    /// The background of each row, inside the slide.
    pub fn complement(&self) -> RunMask {
        let w = self.width as u32;
        let rows = self
            .rows
            .iter()
            .map(|row| {
                let mut out = Vec::with_capacity(row.len() + 1);
                let mut x = 0;
                for &(s, e) in row {
                    if s > x {
                        out.push((x, s));
                    }
                    x = e;
                }
                if x < w {
                    out.push((x, w));
                }
                out
            })
            .collect();
        RunMask {
            width: self.width,
            height: self.height,
            rows,
        }
    }

    /// The competition's RLE (column-major, 1-based starts), built by sweeping rows: a column's
    /// run starts where a row turns it on and ends where a later row turns it off.
    pub fn rle(&self) -> String {
        let h = self.height as u64;
        let mut open = vec![u32::MAX; self.width];
        // (column, first row, end row)
        let mut runs: Vec<(u32, u32, u32)> = Vec::new();
        let empty: Row = Vec::new();
        for y in 0..=self.height {
            let prev = if y == 0 { &empty } else { &self.rows[y - 1] };
            let cur = if y == self.height { &empty } else { &self.rows[y] };
            for_each_change(prev, cur, |x, on| {
                if on {
                    open[x as usize] = y as u32;
                } else {
                    runs.push((x, open[x as usize], y as u32));
                }
            });
        }
        // Each column's runs were pushed top to bottom: a stable sort by column keeps that.
        runs.sort_by_key(|r| r.0);
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(runs.len());
        for (x, y0, y1) in runs {
            let start = x as u64 * h + y0 as u64;
            let len = (y1 - y0) as u64;
            match merged.last_mut() {
                // A run that ends at the bottom of a column continues at the top of the next.
                Some(last) if last.0 + last.1 == start => last.1 += len,
                _ => merged.push((start, len)),
            }
        }
        let mut s = String::with_capacity(merged.len() * 12);
        for (i, (start, len)) in merged.iter().enumerate() {
            if i > 0 {
                s.push(' ');
            }
            s.push_str(&(start + 1).to_string());
            s.push(' ');
            s.push_str(&len.to_string());
        }
        s
    }

    /// Connected components (8-connected when `diagonal`, else 4-connected), in order of their
    /// first run.
    pub fn components(&self, diagonal: bool) -> Vec<Component> {
        let reach = u32::from(diagonal);
        // Runs numbered row by row; union-find over the numbers.
        let mut first = Vec::with_capacity(self.height + 1);
        let mut n = 0usize;
        for row in &self.rows {
            first.push(n);
            n += row.len();
        }
        first.push(n);
        let mut parent: Vec<usize> = (0..n).collect();
        fn find(parent: &mut [usize], mut i: usize) -> usize {
            while parent[i] != i {
                parent[i] = parent[parent[i]];
                i = parent[i];
            }
            i
        }
        for y in 1..self.height {
            let (up, cur) = (&self.rows[y - 1], &self.rows[y]);
            let mut j = 0;
            for (i, &(s, e)) in cur.iter().enumerate() {
                // Runs above touch this one when they overlap [s − reach, e + reach).
                while j < up.len() && up[j].1 + reach <= s {
                    j += 1;
                }
                let mut k = j;
                while k < up.len() && up[k].0 < e + reach {
                    let (a, b) = (find(&mut parent, first[y - 1] + k), find(&mut parent, first[y] + i));
                    if a != b {
                        parent[a.max(b)] = a.min(b);
                    }
                    k += 1;
                }
            }
        }
        let mut index = vec![usize::MAX; n];
        let mut out: Vec<Component> = Vec::new();
        for (y, row) in self.rows.iter().enumerate() {
            for (i, &(s, e)) in row.iter().enumerate() {
                let root = find(&mut parent, first[y] + i);
                if index[root] == usize::MAX {
                    index[root] = out.len();
                    out.push(Component {
                        runs: Vec::new(),
                        area: 0,
                    });
                }
                let c = &mut out[index[root]];
                c.runs.push((y as u32, s, e));
                c.area += (e - s) as u64;
            }
        }
        out
    }

    /// Adds a component's runs (rows stay sorted and disjoint).
    pub fn add_runs(&mut self, runs: &[(u32, u32, u32)]) {
        for &(y, s, e) in runs {
            let row = &mut self.rows[y as usize];
            row.push((s, e));
            *row = normalised(std::mem::take(row));
        }
    }
}

/// Row `y` of a block map above `threshold`: its runs and each run's sum of probabilities.
/// `buf` holds `width` values.
pub fn threshold_row(map: &BlockMap, y: usize, threshold: f32, buf: &mut [f32]) -> (Row, Vec<f64>) {
    let mut row = Vec::new();
    if threshold < 0.0 {
        // Even never-written pixels (0) are above the threshold.
        map.row(y, buf);
        push_runs(&mut row, 0, map.width, |x| buf[x] > threshold);
    } else {
        for (x0, x1) in map.present_spans(y) {
            let values = map.block_row(y, x0 / crate::blocks::BLOCK).expect("a present block");
            push_runs(&mut row, x0, x1 - x0, |x| values[x] > threshold);
        }
    }
    let sums = row
        .iter()
        .map(|&(s, e)| (s as usize..e as usize).map(|x| map.get(y, x) as f64).sum())
        .collect();
    (row, sums)
}

/// A thresholded mask with each run's probability sum: the mean probability of any later mask's
/// component over the pixels it shares with this one.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSums {
    pub mask: RunMask,
    pub sums: Vec<Vec<f64>>,
}

impl RunSums {
    /// Each run's probability sum from a dense row-major map of the mask's size.
    pub fn of_dense(mask: RunMask, prob: &[f32]) -> RunSums {
        let w = mask.width;
        let sums = mask
            .rows
            .iter()
            .enumerate()
            .map(|(y, row)| {
                row.iter()
                    .map(|&(s, e)| {
                        prob[y * w + s as usize..y * w + e as usize]
                            .iter()
                            .map(|&p| p as f64)
                            .sum()
                    })
                    .collect()
            })
            .collect();
        RunSums { mask, sums }
    }

    /// Mean probability over the pixels of `runs` ((y, start, end), e.g. a component after
    /// postprocessing) that are in the thresholded mask; a run partly covered counts by its share.
    pub fn mean_over(&self, runs: &[(u32, u32, u32)]) -> f64 {
        let (mut sum, mut n) = (0f64, 0f64);
        for &(y, s, e) in runs {
            let row = &self.mask.rows[y as usize];
            let first = row.partition_point(|r| r.1 <= s);
            for (k, &(a, b)) in row.iter().enumerate().skip(first) {
                if a >= e {
                    break;
                }
                let shared = (b.min(e) - a.max(s)) as f64;
                sum += self.sums[y as usize][k] * shared / (b - a) as f64;
                n += shared;
            }
        }
        if n > 0.0 {
            sum / n
        } else {
            0.0
        }
    }
}

/// Sorts and merges overlapping or touching ranges.
pub fn normalised(mut row: Row) -> Row {
    row.sort_unstable();
    let mut out: Row = Vec::with_capacity(row.len());
    for (s, e) in row {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// Calls `f(x, on)` for each column whose state differs between two rows, in column order.
fn for_each_change(prev: &Row, cur: &Row, mut f: impl FnMut(u32, bool)) {
    // Boundaries of both rows, merged: between consecutive boundaries the state is constant.
    let (mut i, mut j) = (0, 0);
    let (mut in_prev, mut in_cur) = (false, false);
    let bound = |row: &Row, k: usize| -> Option<u32> {
        let r = row.get(k / 2)?;
        Some(if k.is_multiple_of(2) { r.0 } else { r.1 })
    };
    let mut x = 0u32;
    loop {
        let (bp, bc) = (bound(prev, i), bound(cur, j));
        let next = match (bp, bc) {
            (None, None) => break,
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (Some(a), Some(b)) => a.min(b),
        };
        if in_prev != in_cur {
            for c in x..next {
                f(c, in_cur);
            }
        }
        x = next;
        while bound(prev, i) == Some(next) {
            in_prev = !in_prev;
            i += 1;
        }
        while bound(cur, j) == Some(next) {
            in_cur = !in_cur;
            j += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::rle;
    use proptest::prelude::*;

    fn random_mask() -> impl Strategy<Value = Mask> {
        (1usize..24, 1usize..24).prop_flat_map(|(h, w)| {
            proptest::collection::vec(prop_oneof![3 => Just(0u8), 2 => Just(1u8)], h * w)
                .prop_map(move |d| Mask::from_row_major(h, w, d).unwrap())
        })
    }

    proptest! {
        #[test]
        fn rle_by_row_runs_equals_the_dense_encoder(mask in random_mask()) {
            let runs = RunMask::from_mask(&mask);
            prop_assert_eq!(runs.rle(), rle::encode(&mask));
            prop_assert_eq!(runs.to_mask(), mask.clone());
            prop_assert_eq!(runs.count(), mask.count() as u64);
            let back = runs.complement().complement();
            prop_assert_eq!(back, runs);
        }

        #[test]
        fn overlap_and_dice_on_runs_equal_the_dense_ones(a in random_mask(), seed in 0u64..1000) {
            // A second mask of the same size: `a` with pixels flipped by a seeded pattern.
            let (h, w) = (a.height(), a.width());
            let flipped: Vec<u8> = a
                .data()
                .iter()
                .enumerate()
                .map(|(i, &v)| v ^ u8::from((i as u64 * 2654435761 + seed) % 3 == 0))
                .collect();
            let b = Mask::from_row_major(h, w, flipped).unwrap();
            let both = a.data().iter().zip(b.data()).filter(|(x, y)| **x == 1 && **y == 1).count() as u64;
            let (ra, rb) = (RunMask::from_mask(&a), RunMask::from_mask(&b));
            prop_assert_eq!(ra.overlap(&rb), both);
            let sum = a.count() + b.count();
            let dice = if sum == 0 { 1.0 } else { 2.0 * both as f64 / sum as f64 };
            prop_assert!((ra.dice(&rb) - dice).abs() < 1e-12);
            let map: Vec<f32> = a.data().iter().map(|&v| v as f32 * 0.8 + 0.1).collect();
            prop_assert_eq!(RunMask::from_map(&map, h, w, 0.5), ra);
        }

        #[test]
        fn components_partition_the_mask_and_do_not_touch(mask in random_mask()) {
            let runs = RunMask::from_mask(&mask);
            for diagonal in [true, false] {
                let comps = runs.components(diagonal);
                let mut label = vec![usize::MAX; mask.height() * mask.width()];
                for (k, c) in comps.iter().enumerate() {
                    for &(y, s, e) in &c.runs {
                        for x in s..e {
                            label[y as usize * mask.width() + x as usize] = k;
                        }
                    }
                }
                let w = mask.width() as isize;
                let h = mask.height() as isize;
                for y in 0..h {
                    for x in 0..w {
                        let l = label[(y * w + x) as usize];
                        prop_assert_eq!(l != usize::MAX, mask.get(y as usize, x as usize));
                        if l == usize::MAX { continue; }
                        // Neighbours in the mask carry the same label.
                        for (dy, dx) in [(0, 1), (1, 0), (1, 1), (1, -1)] {
                            if !diagonal && dy != 0 && dx != 0 { continue; }
                            let (ny, nx) = (y + dy, x + dx);
                            if ny < h && nx >= 0 && nx < w {
                                let m = label[(ny * w + nx) as usize];
                                prop_assert!(m == usize::MAX || m == l);
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_block_map_thresholds_to_runs() {
        let mut map = BlockMap::new(600, 3);
        let values: Vec<f32> = (0..300)
            .map(|x| if (100..200).contains(&x) { 0.9 } else { 0.2 })
            .collect();
        map.add_window((250, 1, 300, 1), &values, &[1.0], &vec![1.0; 300], 1.0);
        let runs = RunMask::threshold(&map, 0.5);
        assert_eq!(runs.rows, [vec![], vec![(350, 450)], vec![]]);
        let all = RunMask::threshold(&map, -0.1);
        assert_eq!(all.count(), 1800);
        let mut buf = vec![0f32; 600];
        let (row, sums) = threshold_row(&map, 1, 0.5, &mut buf);
        assert_eq!(row, [(350, 450)]);
        assert!((sums[0] - 90.0).abs() < 1e-3, "{sums:?}");
        let rs = RunSums {
            mask: runs.clone(),
            sums: vec![vec![], sums, vec![]],
        };
        // Half of the run, and a stretch outside it (not counted): the mean stays 0.9.
        assert!((rs.mean_over(&[(1, 400, 500)]) - 0.9).abs() < 1e-6);
        assert_eq!(rs.mean_over(&[(0, 0, 10)]), 0.0);
        let mut dense = vec![0f32; 1800];
        map.add_into(&mut dense);
        assert_eq!(RunSums::of_dense(runs.clone(), &dense), rs);
        // Diagonal neighbours are one component with 8-connectivity, two with 4.
        let d = RunMask {
            width: 3,
            height: 2,
            rows: vec![vec![(0, 1)], vec![(1, 2)]],
        };
        assert_eq!(d.components(true).len(), 1);
        assert_eq!(d.components(false).len(), 2);
    }
}
