//! What a config can get wrong: a file that cannot be read or parsed, or an option out of its
//! range, named by its key in config.toml.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {cause}")]
    Read { path: PathBuf, cause: std::io::Error },
    #[error("config {path}: {cause}")]
    Parse { path: PathBuf, cause: toml::de::Error },
    #[error("config: {field}: {problem}")]
    Invalid { field: String, problem: String },
}

pub(crate) fn invalid(field: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.to_string(),
        problem: problem.into(),
    }
}
