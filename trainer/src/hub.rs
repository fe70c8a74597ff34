//! Pretrained files by Hugging Face Hub name, offline: `--pretrained timm/convnext_tiny.fb_in22k`
//! (or `nvidia/mit-b2`, or `ORG/NAME@REVISION`) is the `model.safetensors` that
//! `huggingface-cli download` (or `hf download`) left in the local hub cache, found as
//! huggingface_hub finds it: the cache folder is `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//! `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`; in it
//! `models--ORG--NAME/refs/REVISION` (default `main`) holds a commit and
//! `snapshots/COMMIT/model.safetensors` is the file. A REVISION that is a commit names its
//! snapshot directly. Nothing is downloaded.

use std::path::{Path, PathBuf};

/// Why a hub name did not resolve to a file.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(
        "{name} is neither a file nor a model in the Hugging Face cache ({looked}); download it \
         with `huggingface-cli download {repo} model.safetensors` (or `hf download`), set \
         HF_HOME or HF_HUB_CACHE to the cache that holds it, or give the file's path"
    )]
    NotCached { name: String, repo: String, looked: String },
    #[error("{name}: the Hugging Face cache's {path} cannot be read: {cause}")]
    Unreadable { name: String, path: PathBuf, cause: String },
}

/// `ORG/NAME` or `ORG/NAME@REVISION` split into repository and revision, if `arg` reads as one:
/// one `/` between two non-empty parts without path-like characters, and not a `.safetensors` file.
pub fn parse_name(arg: &str) -> Option<(&str, &str)> {
    let (repo, revision) = match arg.split_once('@') {
        Some((repo, rev)) if !rev.is_empty() && !rev.contains('/') => (repo, rev),
        Some(_) => return None,
        None => (arg, "main"),
    };
    let (org, name) = repo.split_once('/')?;
    let part_ok = |p: &str| {
        !p.is_empty() && !p.starts_with('.') && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    (part_ok(org) && part_ok(name) && !name.ends_with(".safetensors")).then_some((repo, revision))
}

/// The hub cache folder the environment names, in huggingface_hub's order of precedence.
pub fn cache_dir(var: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let set = |k: &str| var(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    set("HF_HUB_CACHE")
        .or_else(|| set("HF_HOME").map(|h| h.join("hub")))
        .or_else(|| set("XDG_CACHE_HOME").map(|c| c.join("huggingface").join("hub")))
        .or_else(|| set("HOME").map(|h| h.join(".cache").join("huggingface").join("hub")))
}

/// `arg` as a file: itself when it exists or does not read as a hub name, else the cached
/// `model.safetensors` of that name in the cache the environment names.
pub fn resolve(arg: &Path) -> Result<PathBuf, HubError> {
    resolve_in(arg, cache_dir(|k| std::env::var(k).ok()).as_deref())
}

/// [`resolve`] against the cache folder `cache` (none: no cache is known).
pub fn resolve_in(arg: &Path, cache: Option<&Path>) -> Result<PathBuf, HubError> {
    let Some((repo, revision)) = arg.to_str().filter(|_| !arg.exists()).and_then(parse_name) else {
        return Ok(arg.to_path_buf());
    };
    let name = arg.display().to_string();
    let not_cached = |looked: String| HubError::NotCached {
        name: name.clone(),
        repo: repo.to_string(),
        looked,
    };
    let Some(cache) = cache else {
        return Err(not_cached(
            "no cache folder: HF_HUB_CACHE, HF_HOME and HOME are unset".into(),
        ));
    };
    let model = cache.join(format!("models--{}", repo.replace('/', "--")));
    let reference = model.join("refs").join(revision);
    let commit = if reference.is_file() {
        let text = std::fs::read_to_string(&reference).map_err(|e| HubError::Unreadable {
            name: name.clone(),
            path: reference.clone(),
            cause: e.to_string(),
        })?;
        text.trim().to_string()
    } else {
        revision.to_string()
    };
    let file = model.join("snapshots").join(&commit).join("model.safetensors");
    if file.is_file() {
        return Ok(file);
    }
    let looked = if model.is_dir() {
        format!("{} has no snapshot {commit} with a model.safetensors", model.display())
    } else {
        format!("no {}", model.display())
    };
    Err(not_cached(looked))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(cache: &Path, repo: &str, commit: &str, refs: &[&str]) -> PathBuf {
        let model = cache.join(format!("models--{}", repo.replace('/', "--")));
        let dir = model.join("snapshots").join(commit);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(model.join("refs")).unwrap();
        for r in refs {
            std::fs::write(model.join("refs").join(r), commit).unwrap();
        }
        std::fs::write(dir.join("model.safetensors"), commit).unwrap();
        dir.join("model.safetensors")
    }

    #[test]
    fn names_and_paths_are_told_apart() {
        assert_eq!(
            parse_name("timm/convnext_tiny.fb_in22k"),
            Some(("timm/convnext_tiny.fb_in22k", "main"))
        );
        assert_eq!(parse_name("nvidia/mit-b2@v1.0"), Some(("nvidia/mit-b2", "v1.0")));
        for path in [
            "model.safetensors",
            "w/model.safetensors",
            "/abs/x",
            "./a/b",
            "a/b/c",
            "a/",
            "a/b@",
            "../x",
        ] {
            assert_eq!(parse_name(path), None, "{path}");
        }
    }

    #[test]
    fn the_cache_folder_follows_huggingface_hubs_precedence() {
        fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        }
        let all = [
            ("HF_HUB_CACHE", "/c"),
            ("HF_HOME", "/h"),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/u"),
        ];
        assert_eq!(cache_dir(env(&all)), Some("/c".into()));
        assert_eq!(cache_dir(env(&all[1..])), Some("/h/hub".into()));
        assert_eq!(cache_dir(env(&all[2..])), Some("/x/huggingface/hub".into()));
        assert_eq!(cache_dir(env(&all[3..])), Some("/u/.cache/huggingface/hub".into()));
        assert_eq!(
            cache_dir(env(&[("HF_HOME", ""), ("HOME", "/u")])),
            Some("/u/.cache/huggingface/hub".into())
        );
        assert_eq!(cache_dir(env(&[])), None);
    }

    #[test]
    fn a_cached_name_resolves_to_its_snapshots_file() {
        let cache = tempfile::tempdir().unwrap();
        let old = snapshot(cache.path(), "timm/resnet18.a1_in1k", "aaa111", &[]);
        let main = snapshot(cache.path(), "timm/resnet18.a1_in1k", "bbb222", &["main", "v2"]);
        let resolve = |arg: &str| resolve_in(Path::new(arg), Some(cache.path()));
        assert_eq!(resolve("timm/resnet18.a1_in1k").unwrap(), main);
        assert_eq!(resolve("timm/resnet18.a1_in1k@v2").unwrap(), main);
        assert_eq!(resolve("timm/resnet18.a1_in1k@aaa111").unwrap(), old);
        assert_eq!(
            std::fs::read_to_string(resolve("timm/resnet18.a1_in1k").unwrap()).unwrap(),
            "bbb222"
        );
        // Paths are left as they are: the caller says whether they are files.
        assert_eq!(resolve("w.safetensors").unwrap(), PathBuf::from("w.safetensors"));
    }

    #[test]
    fn a_name_not_in_the_cache_says_how_to_download_it() {
        let cache = tempfile::tempdir().unwrap();
        snapshot(cache.path(), "timm/resnet18.a1_in1k", "aaa111", &["main"]);
        let err = resolve_in(Path::new("nvidia/mit-b2"), Some(cache.path()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("huggingface-cli download nvidia/mit-b2 model.safetensors"),
            "{err}"
        );
        assert!(err.contains("models--nvidia--mit-b2"), "{err}");
        let err = resolve_in(Path::new("timm/resnet18.a1_in1k@v9"), Some(cache.path()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no snapshot v9"), "{err}");
        let err = resolve_in(Path::new("nvidia/mit-b2"), None).unwrap_err().to_string();
        assert!(err.contains("HF_HOME"), "{err}");
    }
}
