//! A config as `key.sub = value` pairs, and the options in which two configs differ (what
//! a run folder's saved config.toml is compared by).

use std::collections::{BTreeMap, BTreeSet};

use super::TrainConfig;

/// One option that differs between two configs: its key, and the value in each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub key: String,
    pub ours: String,
    pub theirs: String,
}

/// A config as `key.sub = value` pairs (values as TOML writes them).
fn flatten(c: &TrainConfig) -> BTreeMap<String, String> {
    fn walk(prefix: &str, v: &toml::Value, out: &mut BTreeMap<String, String>) {
        match v {
            toml::Value::Table(t) if !t.is_empty() => {
                for (k, v) in t {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            other => {
                out.insert(prefix.to_string(), other.to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    let value = toml::Value::try_from(c).expect("the config serialises");
    walk("", &value, &mut out);
    out
}

impl TrainConfig {
    /// The config as `key.sub = value` pairs, values as TOML writes them (`optim.lr` → `0.003`).
    pub fn flattened(&self) -> BTreeMap<String, String> {
        flatten(self)
    }

    /// Every option whose value differs between `self` and `other`, by its key in config.toml
    /// (`optim.lr`), with both values as TOML writes them; in key order.
    pub fn differences(&self, other: &TrainConfig) -> Vec<Difference> {
        let (a, b) = (flatten(self), flatten(other));
        let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        keys.into_iter()
            .filter(|k| a.get(*k) != b.get(*k))
            .map(|k| Difference {
                key: k.clone(),
                ours: a.get(k).cloned().unwrap_or_else(|| "(unset)".into()),
                theirs: b.get(k).cloned().unwrap_or_else(|| "(unset)".into()),
            })
            .collect()
    }
}
