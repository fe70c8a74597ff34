//! `[thresholds]`: the probability above which a pixel is FTU, by data source and organ.

use std::collections::BTreeMap;

use crate::organ::{DataSource, Organ};

/// `[thresholds]`: a default, per organ, and per organ for one data source.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    pub default: f32,
    pub organ: BTreeMap<Organ, f32>,
    pub source: BTreeMap<(DataSource, Organ), f32>,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            default: 0.5,
            organ: BTreeMap::new(),
            source: BTreeMap::new(),
        }
    }
}

impl Thresholds {
    /// The most specific threshold: for this source and organ, else the organ, else the default.
    pub fn get(&self, organ: Organ, source: DataSource) -> f32 {
        self.source
            .get(&(source, organ))
            .or_else(|| self.organ.get(&organ))
            .copied()
            .unwrap_or(self.default)
    }
}
