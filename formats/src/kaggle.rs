//! The competition's folder layout: `train.csv` with `train_images/`, `test.csv` with
//! `test_images/`, one image per row named by its id. Both the trainer and the engine read
//! (and the synthetic data writer writes) through here.

use std::path::{Path, PathBuf};

/// Image extensions a slide may have, in the order they are looked for.
pub const IMAGE_EXTENSIONS: [&str; 5] = ["tiff", "tif", "png", "jpg", "jpeg"];

/// Which half of the data: the labelled training slides or the slides to predict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    /// The CSV's file name: `train.csv` or `test.csv`.
    pub fn csv_name(self) -> &'static str {
        match self {
            Split::Train => "train.csv",
            Split::Test => "test.csv",
        }
    }

    /// The images folder's name: `train_images` or `test_images`.
    pub fn images_name(self) -> &'static str {
        match self {
            Split::Train => "train_images",
            Split::Test => "test_images",
        }
    }

    /// `data/train.csv` or `data/test.csv`.
    pub fn csv(self, data: &Path) -> PathBuf {
        data.join(self.csv_name())
    }

    /// `data/train_images` or `data/test_images`.
    pub fn images(self, data: &Path) -> PathBuf {
        data.join(self.images_name())
    }

    /// The image file of `id`, whichever of [`IMAGE_EXTENSIONS`] it has; `None` when there is none.
    pub fn find_image(self, data: &Path, id: &str) -> Option<PathBuf> {
        IMAGE_EXTENSIONS
            .iter()
            .map(|ext| self.images(data).join(format!("{id}.{ext}")))
            .find(|p| p.is_file())
    }

    /// Where the image of `id` is written, and the path errors name when it is missing: `.tiff`,
    /// the competition's own extension.
    pub fn tiff_path(self, data: &Path, id: &str) -> PathBuf {
        self.images(data).join(format!("{id}.tiff"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_found_by_any_known_extension_tiff_first() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        std::fs::create_dir_all(Split::Train.images(data)).unwrap();
        assert_eq!(Split::Train.find_image(data, "a"), None);
        std::fs::write(data.join("train_images/a.png"), b"x").unwrap();
        assert_eq!(
            Split::Train.find_image(data, "a"),
            Some(data.join("train_images/a.png"))
        );
        std::fs::write(data.join("train_images/a.tiff"), b"x").unwrap();
        assert_eq!(
            Split::Train.find_image(data, "a"),
            Some(data.join("train_images/a.tiff"))
        );
        assert_eq!(
            Split::Test.find_image(data, "a"),
            None,
            "test images live in their own folder"
        );
        assert_eq!(Split::Test.csv(data), data.join("test.csv"));
        assert_eq!(Split::Test.tiff_path(data, "7"), data.join("test_images/7.tiff"));
    }
}
