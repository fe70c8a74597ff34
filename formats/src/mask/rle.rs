//! Run-length encoding in the competition's convention: pixels numbered top to bottom, then left
//! to right (column-major), from 1; the string is sorted `start length` pairs.

use crate::mask::{transpose, Mask};
use std::fmt::Write as _;

/// One run of foreground pixels. `start` is the 0-based column-major index (the string's start − 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub start: usize,
    pub len: usize,
}

impl Run {
    pub fn end(&self) -> usize {
        self.start + self.len
    }
}

/// Why an RLE string is not valid for a mask of a given size. Token positions count from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RleError {
    #[error("RLE has {count} tokens; expected an even number (start length pairs)")]
    OddTokenCount { count: usize },
    #[error("RLE token {position} `{token}` is not a non-negative integer")]
    NotANumber { position: usize, token: String },
    #[error("RLE token {position}: start {start} is below 1 (pixels are numbered from 1)")]
    StartBelowOne { position: usize, start: u64 },
    #[error("RLE token {position}: run starting at {start} has length 0")]
    ZeroLength { position: usize, start: u64 },
    #[error("RLE token {position}: run {start}+{length} goes past the mask's {total} pixels")]
    PastEnd {
        position: usize,
        start: u64,
        length: u64,
        total: u64,
    },
    #[error("RLE token {position}: run starting at {start} begins before the previous run ends at {previous_end} (runs must be sorted and must not overlap)")]
    Unsorted {
        position: usize,
        start: u64,
        previous_end: u64,
    },
}

/// Parses and validates an RLE string for a mask of `total` pixels.
pub fn parse(rle: &str, total: usize) -> Result<Vec<Run>, RleError> {
    let tokens: Vec<&str> = rle.split_ascii_whitespace().collect();
    if tokens.len() % 2 != 0 {
        return Err(RleError::OddTokenCount { count: tokens.len() });
    }
    let number = |i: usize| -> Result<u64, RleError> {
        tokens[i].parse::<u64>().map_err(|_| RleError::NotANumber {
            position: i + 1,
            token: tokens[i].to_string(),
        })
    };
    let total = total as u64;
    let mut runs = Vec::with_capacity(tokens.len() / 2);
    let mut previous_end = 0u64; // 1-based index one past the last pixel of the previous run
    for i in (0..tokens.len()).step_by(2) {
        let (start, length) = (number(i)?, number(i + 1)?);
        let position = i + 1;
        if start < 1 {
            return Err(RleError::StartBelowOne { position, start });
        }
        if length == 0 {
            return Err(RleError::ZeroLength { position, start });
        }
        if start.checked_add(length).is_none_or(|end| end - 1 > total) {
            return Err(RleError::PastEnd {
                position,
                start,
                length,
                total,
            });
        }
        if start < previous_end {
            return Err(RleError::Unsorted {
                position,
                start,
                previous_end: previous_end - 1,
            });
        }
        previous_end = start + length;
        runs.push(Run {
            start: (start - 1) as usize,
            len: length as usize,
        });
    }
    Ok(runs)
}

/// Formats runs as the competition's string (1-based starts).
pub fn format(runs: &[Run]) -> String {
    let mut s = String::with_capacity(runs.len() * 14);
    for (i, r) in runs.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        let _ = write!(s, "{} {}", r.start + 1, r.len);
    }
    s
}

/// Runs of ones in a flat 0/1 buffer.
pub fn runs_of_flat(flat: &[u8]) -> Vec<Run> {
    let mut runs = Vec::new();
    let mut i = 0;
    while let Some(offset) = memchr::memchr(1, &flat[i..]) {
        let start = i + offset;
        let end = memchr::memchr(0, &flat[start..]).map_or(flat.len(), |o| start + o);
        runs.push(Run {
            start,
            len: end - start,
        });
        i = end;
    }
    runs
}

/// Runs of a mask in column-major order.
pub fn runs(mask: &Mask) -> Vec<Run> {
    let column_major = transpose(mask.data(), mask.height(), mask.width());
    runs_of_flat(&column_major)
}

/// Encodes a mask as the competition's RLE string; an empty mask gives an empty string.
pub fn encode(mask: &Mask) -> String {
    format(&runs(mask))
}

/// Builds the mask that validated runs describe.
pub fn mask_from_runs(runs: &[Run], height: usize, width: usize) -> Mask {
    let mut column_major = vec![0u8; height * width];
    for r in runs {
        column_major[r.start..r.end()].fill(1);
    }
    Mask::from_row_major_normalised(height, width, transpose(&column_major, width, height))
}

/// Decodes an RLE string into a `height × width` mask, rejecting anything not in the convention.
pub fn decode(rle: &str, height: usize, width: usize) -> Result<Mask, RleError> {
    let runs = parse(rle, height * width)?;
    Ok(mask_from_runs(&runs, height, width))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The convention spelled out as plainly as possible, to check the fast path against.
    fn naive_encode(m: &Mask) -> String {
        let mut out = Vec::new();
        let mut run: Option<(usize, usize)> = None;
        let mut index = 1;
        for x in 0..m.width() {
            for y in 0..m.height() {
                match (m.get(y, x), run.as_mut()) {
                    (true, Some((_, len))) => *len += 1,
                    (true, None) => run = Some((index, 1)),
                    (false, Some(_)) => out.push(run.take().unwrap()),
                    (false, None) => {}
                }
                index += 1;
            }
        }
        out.extend(run);
        out.iter()
            .map(|(s, l)| format!("{s} {l}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn mask(h: usize, w: usize, ones: &[(usize, usize)]) -> Mask {
        let mut m = Mask::zeros(h, w);
        for &(y, x) in ones {
            m.set(y, x, true);
        }
        m
    }

    #[test]
    fn worked_example_from_the_context() {
        // H=3, W=2: rows "0 1", "1 1", "0 0" read column by column as 0 1 0 | 1 1 0.
        let m = mask(3, 2, &[(0, 1), (1, 0), (1, 1)]);
        assert_eq!(encode(&m), "2 1 4 2");
        assert_eq!(decode("2 1 4 2", 3, 2).unwrap(), m);
    }

    #[test]
    fn edge_masks_round_trip() {
        let (h, w) = (5, 7);
        let full = Mask::from_row_major(h, w, vec![1; h * w]).unwrap();
        assert_eq!(encode(&full), format!("1 {}", h * w));
        assert_eq!(encode(&Mask::zeros(h, w)), "");
        assert_eq!(decode("", h, w).unwrap(), Mask::zeros(h, w));
        assert_eq!(decode("  \n", h, w).unwrap(), Mask::zeros(h, w));
        // One pixel in each corner: top-left is 1, bottom-left h, top-right (w-1)h+1, bottom-right hw.
        let corners = mask(h, w, &[(0, 0), (h - 1, 0), (0, w - 1), (h - 1, w - 1)]);
        assert_eq!(
            encode(&corners),
            format!("1 1 {} 1 {} 1 {} 1", h, (w - 1) * h + 1, h * w)
        );
        // A full row runs across columns: one pixel per column; a full column is one run.
        let row = mask(h, w, &(0..w).map(|x| (2, x)).collect::<Vec<_>>());
        assert_eq!(runs(&row).len(), w);
        let column = mask(h, w, &(0..h).map(|y| (y, 3)).collect::<Vec<_>>());
        assert_eq!(encode(&column), format!("{} {}", 3 * h + 1, h));
        for m in [full, corners, row, column] {
            assert_eq!(decode(&encode(&m), h, w).unwrap(), m);
            assert_eq!(encode(&m), naive_encode(&m));
        }
    }

    #[test]
    fn single_row_and_single_column_masks() {
        for (h, w) in [(1, 9), (9, 1), (1, 1)] {
            let ones: Vec<_> = (0..h.max(w))
                .filter(|i| i % 3 != 1)
                .map(|i| if h == 1 { (0, i) } else { (i, 0) })
                .collect();
            let m = mask(h, w, &ones);
            assert_eq!(encode(&m), naive_encode(&m));
            assert_eq!(decode(&encode(&m), h, w).unwrap(), m);
        }
    }

    #[test]
    fn each_bad_input_class_is_rejected_with_its_token() {
        let total = 3 * 2;
        assert_eq!(parse("1 2 3", total), Err(RleError::OddTokenCount { count: 3 }));
        assert_eq!(
            parse("1 2 x 1", total),
            Err(RleError::NotANumber {
                position: 3,
                token: "x".into()
            })
        );
        assert!(matches!(
            parse("1 -2", total),
            Err(RleError::NotANumber { position: 2, .. })
        ));
        assert!(matches!(
            parse("1.5 2", total),
            Err(RleError::NotANumber { position: 1, .. })
        ));
        assert_eq!(
            parse("0 2", total),
            Err(RleError::StartBelowOne { position: 1, start: 0 })
        );
        assert_eq!(
            parse("1 1 3 0", total),
            Err(RleError::ZeroLength { position: 3, start: 3 })
        );
        assert_eq!(
            parse("5 3", total),
            Err(RleError::PastEnd {
                position: 1,
                start: 5,
                length: 3,
                total: 6
            })
        );
        assert_eq!(
            parse("7 1", total),
            Err(RleError::PastEnd {
                position: 1,
                start: 7,
                length: 1,
                total: 6
            })
        );
        assert!(matches!(
            parse("1 18446744073709551615", total),
            Err(RleError::PastEnd { .. })
        ));
        assert_eq!(
            parse("4 2 1 1", total),
            Err(RleError::Unsorted {
                position: 3,
                start: 1,
                previous_end: 5
            })
        );
        assert_eq!(
            parse("1 3 3 1", total),
            Err(RleError::Unsorted {
                position: 3,
                start: 3,
                previous_end: 3
            })
        );
        // The last pixel is in range; touching runs are not overlapping.
        assert_eq!(parse("6 1", total).unwrap(), vec![Run { start: 5, len: 1 }]);
        assert_eq!(decode("1 2 3 1", 3, 2).unwrap(), decode("1 3", 3, 2).unwrap());
        let message = parse("1 2 x 1", total).unwrap_err().to_string();
        assert!(message.contains("token 3") && message.contains("`x`"), "{message}");
    }

    fn arb_mask() -> impl Strategy<Value = Mask> {
        (1usize..40, 1usize..40, 0u8..=4).prop_flat_map(|(h, w, density)| {
            // density 0 gives empty masks, 4 full ones, the rest random speckle of varying fill.
            proptest::collection::vec(0u8..4, h * w).prop_map(move |v| {
                let data = v.into_iter().map(|r| (r < density) as u8).collect();
                Mask::from_row_major(h, w, data).unwrap()
            })
        })
    }

    proptest! {
        #[test]
        fn encode_matches_convention_and_round_trips(m in arb_mask()) {
            let s = encode(&m);
            prop_assert_eq!(&s, &naive_encode(&m));
            prop_assert_eq!(decode(&s, m.height(), m.width()).unwrap(), m);
        }

        #[test]
        fn any_sorted_disjoint_runs_decode_to_their_pixels(
            h in 1usize..30, w in 1usize..30, cuts in proptest::collection::vec(any::<u16>(), 0..20)
        ) {
            let total = h * w;
            let mut points: Vec<usize> = cuts.iter().map(|&c| c as usize % (total + 1)).collect();
            points.sort();
            points.dedup();
            let runs: Vec<Run> = points.chunks_exact(2).map(|p| Run { start: p[0], len: p[1] - p[0] }).collect();
            let m = decode(&format(&runs), h, w).unwrap();
            prop_assert_eq!(m.count(), runs.iter().map(|r| r.len).sum::<usize>());
            let flat = transpose(m.data(), h, w);
            for r in &runs {
                prop_assert!(flat[r.start..r.end()].iter().all(|&v| v == 1));
            }
        }
    }
}
