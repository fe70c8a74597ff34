//! Whole-slide prediction for manifests with `mode = "tiles"` groups: windows of the model's
//! input size at the group's scale, background windows skipped by the tissue detector, windows
//! batched through the engine, Gaussian-blended into a block map at the slide's resolution, and
//! rows thresholded into runs (their blocks freed when every group is tiled) as they become final.

use std::time::Instant;

use serde::Serialize;

use crate::engine::{Engine, EngineError, SlideContext, Timings};
use ftu_formats::blocks::BlockMap;
use ftu_formats::manifest::{GroupMode, TileSpec};
use ftu_formats::mask::runs::{threshold_row, RunMask, RunSums};
use ftu_formats::slide::region::{LevelReader, PyramidLevel, SlideSource};
use ftu_formats::slide::{RgbImage, SlideLimits};
use ftu_formats::tiles;
use ftu_formats::tissue::{thumbnail_factor, TissueMap, TissueSummary, THUMBNAIL_SIDE};

/// What tiling did on one slide.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TileStats {
    pub windows: usize,
    /// Windows that ran (the rest were background).
    pub windows_run: usize,
    /// Wall time of the windows that ran (read, model, blend), over their number.
    pub seconds_per_window: f64,
    pub tissue: Option<TissueSummary>,
    pub thumbnail_seconds: f64,
    /// The pyramid page the thumbnail was made from, when the TIFF had a suitable one.
    pub thumbnail_level: Option<PyramidLevel>,
    /// The most memory the probability blocks held at once.
    pub map_peak_bytes: usize,
    /// Whether finished rows were thresholded and freed as the windows went down the slide.
    pub streamed: bool,
    /// The pyramid level tiled windows were read from, when not the full-resolution page
    /// (one per tiled group that used one).
    pub read_levels: Vec<PyramidLevel>,
    /// Pixels decoded to read the windows, over every page read (the thumbnail apart).
    pub pixels_decoded: u64,
}

/// A slide's prediction: the thresholded mask with each run's probability sum, the probability
/// map when it was kept, and the thumbnail the windows were planned on.
pub struct TiledPrediction {
    pub mask: RunSums,
    pub map: Option<BlockMap>,
    pub thumbnail: Option<(RgbImage, usize)>,
    pub stats: TileStats,
}

/// Progress within a slide: windows done, windows to run.
pub type WindowProgress<'a> = &'a mut dyn FnMut(usize, usize);

/// Thresholds rows of the block map as they become final.
struct Finisher {
    next_row: usize,
    threshold: f32,
    mask: RunSums,
    buf: Vec<f32>,
}

impl Finisher {
    fn new(width: usize, height: usize, threshold: f32) -> Finisher {
        Finisher {
            next_row: 0,
            threshold,
            mask: RunSums {
                mask: RunMask::empty(height, width),
                sums: vec![Vec::new(); height],
            },
            buf: vec![0f32; width],
        }
    }

    /// Thresholds rows up to `to` (exclusive); with `free`, drops the blocks wholly above it.
    fn advance(&mut self, map: &mut BlockMap, to: usize, free: bool) {
        for y in self.next_row..to {
            let (row, sums) = threshold_row(map, y, self.threshold, &mut self.buf);
            self.mask.mask.rows[y] = row;
            self.mask.sums[y] = sums;
        }
        self.next_row = self.next_row.max(to);
        if free {
            map.free_rows_above(to);
        }
    }
}

/// Every group serving the slide's organ, weighted by group weight, thresholded at `threshold`.
/// When every serving group is tiled and `keep_map` is false, the groups' windows go down the
/// slide together and rows are thresholded and their blocks freed once no group's windows can
/// reach them, so memory holds a band of windows, not the slide's tissue. Otherwise the whole map
/// is built first (and returned with `keep_map`). Groups in resize mode need the whole slide in
/// memory (within `limits`).
#[allow(clippy::too_many_arguments)]
pub fn predict_slide(
    engine: &mut Engine,
    source: &mut SlideSource,
    info: &SlideContext,
    threshold: f32,
    keep_map: bool,
    limits: SlideLimits,
    t: &mut Timings,
    progress: WindowProgress,
) -> Result<TiledPrediction, EngineError> {
    let (width, height) = (source.width(), source.height());
    let serving: Vec<usize> = (0..engine.manifest().groups.len())
        .filter(|&gi| engine.group_serves(gi, info.organ))
        .collect();
    if serving.is_empty() {
        return Err(EngineError::NoModel(info.organ));
    }
    let mut stats = TileStats::default();
    let tiled = |gi: &usize| matches!(engine.manifest().groups[*gi].mode, GroupMode::Tiles(_));
    let any_tiled = serving.iter().any(tiled);
    let all_tiled = serving.iter().all(tiled);
    let detection = engine.manifest().tissue;
    let (thumbnail, tissue) = if any_tiled && detection.enabled {
        let start = Instant::now();
        let factor = thumbnail_factor(width, height, THUMBNAIL_SIDE);
        let (thumb, level) = source.thumbnail_with_level(factor)?;
        stats.thumbnail_level = level;
        let map = TissueMap::detect(&thumb, factor);
        stats.thumbnail_seconds = start.elapsed().as_secs_f64();
        t.read += start.elapsed();
        stats.tissue = Some(map.summary());
        (Some((thumb, factor)), Some(map))
    } else {
        (None, None)
    };
    let weight_sum: f32 = serving.iter().map(|&gi| engine.manifest().groups[gi].weight).sum();
    let mut map = BlockMap::new(width, height);
    let mut finisher = Finisher::new(width, height, threshold);
    stats.streamed = !keep_map && all_tiled;
    let mut plans = Vec::new();
    for &gi in &serving {
        let k = engine.manifest().groups[gi].weight / weight_sum;
        match engine.manifest().groups[gi].mode {
            GroupMode::Resize => {
                let start = Instant::now();
                let whole = source.whole(limits)?;
                t.read += start.elapsed();
                let dense = engine.resized_group(gi, &whole, info, t)?;
                map.add_window((0, 0, width, height), &dense, &vec![1.0; height], &vec![1.0; width], k);
            }
            GroupMode::Tiles(spec) => plans.push(GroupPlan::new(engine, gi, spec, source, info, tissue.as_ref(), k)?),
        }
    }
    stats.windows = plans.iter().map(GroupPlan::windows).sum();
    stats.windows_run = plans.iter().map(GroupPlan::to_run).sum();
    let start = Instant::now();
    let decoded_before = source.decoded_pixels();
    let mut done = 0;
    progress(0, stats.windows_run);
    // The group whose next window is highest runs next: all groups move down together.
    while let Some(plan) = plans
        .iter_mut()
        .filter(|p| !p.finished())
        .min_by_key(|p| p.next_row(height))
    {
        done += plan.run_batch(engine, source, info, &mut map, t)?;
        if stats.streamed {
            let begin = Instant::now();
            let final_rows = plans.iter().map(|p| p.next_row(height)).min().unwrap_or(height);
            finisher.advance(&mut map, final_rows, true);
            t.rle += begin.elapsed();
        }
        progress(done, stats.windows_run);
    }
    stats.seconds_per_window = start.elapsed().as_secs_f64() / stats.windows_run.max(1) as f64;
    stats.read_levels = plans.iter().filter_map(|p| p.level.as_ref().map(|l| l.level)).collect();
    stats.pixels_decoded = (source.decoded_pixels() - decoded_before)
        + plans
            .iter()
            .filter_map(|p| p.level.as_ref())
            .map(LevelReader::decoded_pixels)
            .sum::<u64>();
    let begin = Instant::now();
    finisher.advance(&mut map, height, stats.streamed);
    t.rle += begin.elapsed();
    stats.map_peak_bytes = map.peak_bytes();
    Ok(TiledPrediction {
        mask: finisher.mask,
        map: keep_map.then_some(map),
        thumbnail,
        stats,
    })
}

/// Group `gi`'s map on its own (weight 1), over a slide in memory: what resize-mode code uses
/// when a tiled group meets a slide that was read whole.
pub fn group_sum(
    engine: &mut Engine,
    gi: usize,
    source: &mut SlideSource,
    info: &SlideContext,
    tissue: Option<&TissueMap>,
    t: &mut Timings,
) -> Result<BlockMap, EngineError> {
    let GroupMode::Tiles(spec) = engine.manifest().groups[gi].mode else {
        unreachable!("group_sum is for tiled groups");
    };
    let (width, height) = (source.width(), source.height());
    let mut map = BlockMap::new(width, height);
    let mut plan = GroupPlan::new(engine, gi, spec, source, info, tissue, 1.0)?;
    while !plan.finished() {
        plan.run_batch(engine, source, info, &mut map, t)?;
    }
    Ok(map)
}

/// One tiled group's windows over a slide ([`tiles::TilePlan`], shared with the trainer's
/// crops-mode validation) and how far it has got.
struct GroupPlan {
    gi: usize,
    spec: TileSpec,
    size: usize,
    tiles: tiles::TilePlan,
    /// The pyramid level windows are read from, when the slide has one at this group's scale.
    level: Option<LevelReader>,
    done: usize,
    /// This group's share of the ensemble.
    k: f32,
}

impl GroupPlan {
    fn new(
        engine: &Engine,
        gi: usize,
        spec: TileSpec,
        source: &SlideSource,
        info: &SlideContext,
        tissue: Option<&TissueMap>,
        k: f32,
    ) -> Result<GroupPlan, EngineError> {
        let (width, height) = (source.width(), source.height());
        let size = engine.manifest().groups[gi].size;
        let factor = spec.factor(size, engine.manifest().scaling.as_ref(), info.pixel_size);
        let side = ((size as f64 / factor).round() as usize).max(1);
        let min_fraction = engine.manifest().tissue.min_fraction;
        let tiles = tiles::TilePlan::new(width, height, side, spec.overlap, |w| {
            tissue.is_none_or(|m| m.fraction(w.x, w.y, w.width, w.height) >= min_fraction)
        });
        // A model pixel covers side / size slide pixels: a level at most that coarse serves.
        let level = match engine.read_levels() {
            true => source
                .level_for(side as f64 / size as f64)
                .map(|l| source.level_reader(l))
                .transpose()?,
            false => None,
        };
        Ok(GroupPlan {
            gi,
            spec,
            size,
            tiles,
            level,
            done: 0,
            k,
        })
    }

    fn windows(&self) -> usize {
        self.tiles.windows
    }

    fn to_run(&self) -> usize {
        self.tiles.to_run.len()
    }

    fn finished(&self) -> bool {
        self.done == self.to_run()
    }

    /// Rows above this are final for this group: no window left to run reaches them.
    fn next_row(&self, height: usize) -> usize {
        self.tiles.to_run.get(self.done).map_or(height, |w| w.y)
    }

    /// Runs the next `batch` windows and adds `k ·` their normalised blend to `map`; returns how
    /// many ran.
    fn run_batch(
        &mut self,
        engine: &mut Engine,
        source: &mut SlideSource,
        info: &SlideContext,
        map: &mut BlockMap,
        t: &mut Timings,
    ) -> Result<usize, EngineError> {
        let end = (self.done + self.spec.batch).min(self.to_run());
        let batch = &self.tiles.to_run[self.done..end];
        let start = Instant::now();
        let mut images = Vec::with_capacity(batch.len());
        for w in batch {
            images.push(match &mut self.level {
                Some(level) => level.window(w.x, w.y, w.width, w.height, self.tiles.side)?,
                None => tiles::pad_edge(source.region(w.x, w.y, w.width, w.height)?, self.tiles.side),
            });
        }
        t.read += start.elapsed();
        let size = self.size;
        let maps = engine.group_maps(self.gi, &images, (size, size), info.organ, self.spec.batch, t)?;
        let start = Instant::now();
        for (w, m) in batch.iter().zip(maps) {
            self.tiles.blend(map, w, m, size, self.k);
        }
        t.resize_back += start.elapsed();
        let ran = end - self.done;
        self.done = end;
        Ok(ran)
    }
}
