//! Which kind of file a slide is, from its first bytes (extensions lie).

use std::io::Read;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// TIFF or BigTIFF, either byte order.
    Tiff,
    Png,
    Jpeg,
}

/// The format its magic bytes say, if one of ours.
pub fn sniff(magic: &[u8]) -> Option<Format> {
    match magic {
        [b'I', b'I', 42 | 43, 0, ..] | [b'M', b'M', 0, 42 | 43, ..] => Some(Format::Tiff),
        [0x89, b'P', b'N', b'G', ..] => Some(Format::Png),
        [0xFF, 0xD8, 0xFF, ..] => Some(Format::Jpeg),
        _ => None,
    }
}

/// The file's first 8 bytes (fewer if it is shorter) and the format they say.
pub fn sniff_file(path: &Path) -> std::io::Result<(Vec<u8>, Option<Format>)> {
    let mut magic = Vec::with_capacity(8);
    std::fs::File::open(path)?.take(8).read_to_end(&mut magic)?;
    let format = sniff(&magic);
    Ok((magic, format))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_bytes_name_the_format() {
        assert_eq!(sniff(b"II*\0rest"), Some(Format::Tiff));
        assert_eq!(sniff(b"MM\0*"), Some(Format::Tiff));
        assert_eq!(sniff(b"II+\0"), Some(Format::Tiff), "BigTIFF");
        assert_eq!(sniff(b"MM\0+"), Some(Format::Tiff), "big-endian BigTIFF");
        assert_eq!(sniff(b"\x89PNG\r\n"), Some(Format::Png));
        assert_eq!(sniff(b"\xFF\xD8\xFF\xE0"), Some(Format::Jpeg));
        assert_eq!(sniff(b"II*"), None, "too short");
        assert_eq!(sniff(b"GIF89a"), None);
    }
}
