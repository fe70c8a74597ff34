//! A TIFF's directory chain checked before the `tiff` crate reads it: every tag's values must
//! lie inside the file. The crate sizes its buffer for a tag from the count the file claims
//! (up to 256 MiB for one tag) before it reads a byte of it, so a few hundred bytes saying
//! "two million offsets" would take 64 MiB; here a claim is checked against the file's length
//! first, so what reading a TIFF allocates grows with what the file holds.

use std::collections::HashSet;
use std::io::{Read, Seek, SeekFrom};

use tiff::decoder::Decoder;

use super::error::SlideErrorKind;

/// More directories than any pyramid has (a chain longer than this is refused as a loop would be).
const MAX_DIRECTORIES: usize = 4096;

/// Walks the directory chain from the header, refusing a directory or a tag's values that reach
/// past `len` bytes, and a chain that loops or never ends. The reader is left anywhere.
pub(crate) fn check_directories<R: Read + Seek>(reader: &mut R, len: u64) -> Result<(), SlideErrorKind> {
    let corrupt = |what: String| SlideErrorKind::Corrupt(what);
    let mut header = [0u8; 16];
    reader.seek(SeekFrom::Start(0))?;
    let got = read_up_to(reader, &mut header)?;
    let little = match &header[..2] {
        b"II" => true,
        b"MM" => false,
        // Not a TIFF: the caller's decoder says so in its own words.
        _ => return Ok(()),
    };
    let u16_at = |b: &[u8]| {
        if little {
            u16::from_le_bytes([b[0], b[1]])
        } else {
            u16::from_be_bytes([b[0], b[1]])
        }
    };
    let u32_at = |b: &[u8]| {
        let b = [b[0], b[1], b[2], b[3]];
        if little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    let u64_at = |b: &[u8]| {
        let b: [u8; 8] = b[..8].try_into().expect("eight bytes");
        if little {
            u64::from_le_bytes(b)
        } else {
            u64::from_be_bytes(b)
        }
    };
    if got < 8 {
        return Ok(());
    }
    let big = match u16_at(&header[2..]) {
        42 => false,
        43 if got >= 16 => true,
        _ => return Ok(()),
    };
    // Classic: 2-byte entry count, 12-byte entries (4 bytes of values inline), 4-byte next link.
    // BigTIFF: 8-byte count, 20-byte entries (8 inline), 8-byte link. An entry of a type the
    // crate does not know is skipped as tiff 0.10.3 skips it (8 bytes after its tag and type,
    // also in BigTIFF), so the entries checked here are the ones the crate will read.
    let (count_bytes, inline, word) = if big { (8, 8u64, 8) } else { (2, 4u64, 4) };
    // A count, offset or link: 8 bytes in BigTIFF, 4 in classic.
    let word_at = |b: &[u8]| if big { u64_at(b) } else { u32_at(b) as u64 };
    let mut next = word_at(&header[if big { 8 } else { 4 }..]);
    let mut seen = HashSet::new();
    let mut buf = [0u8; 8];
    while next != 0 {
        if !seen.insert(next) || seen.len() > MAX_DIRECTORIES {
            return Err(corrupt(format!("the directory chain loops back to offset {next}")));
        }
        let start = next;
        read_at(reader, start, &mut buf[..count_bytes], len, "directory")?;
        let entries = if big { u64_at(&buf) } else { u16_at(&buf) as u64 };
        // Each entry takes at least 12 bytes: a count the file cannot hold is refused at once.
        if entries.saturating_mul(12) > len - start {
            return Err(corrupt(format!(
                "directory at offset {start} claims {entries} entries, past the end of the file ({len} bytes)"
            )));
        }
        let mut at = start + count_bytes as u64;
        for _ in 0..entries {
            read_at(reader, at, &mut buf[..4], len, "directory entry")?;
            let (tag, kind) = (u16_at(&buf), u16_at(&buf[2..]));
            at += 4;
            // Types the crate does not know it skips without allocating.
            let Some(size) = type_size(kind) else {
                at += 8;
                continue;
            };
            read_at(reader, at, &mut buf[..word], len, "directory entry")?;
            let values = word_at(&buf);
            read_at(reader, at + word as u64, &mut buf[..word], len, "directory entry")?;
            let offset = word_at(&buf);
            at += 2 * word as u64;
            let bytes = values.saturating_mul(size);
            if bytes > inline && offset.checked_add(bytes).is_none_or(|end| end > len) {
                return Err(corrupt(format!(
                    "tag {tag} claims {values} values ({bytes} bytes) at offset {offset}, past the end of the file ({len} bytes)"
                )));
            }
        }
        read_at(reader, at, &mut buf[..word], len, "directory link")?;
        next = word_at(&buf);
    }
    Ok(())
}

/// The `tiff` crate's decoder for a file of `len` bytes whose directories were checked first.
pub(crate) fn checked_decoder<R: Read + Seek>(mut reader: R, len: u64) -> Result<Decoder<R>, SlideErrorKind> {
    check_directories(&mut reader, len)?;
    reader.rewind()?;
    Ok(Decoder::new(reader)?)
}

/// Bytes per value of a TIFF field type (TIFF 6.0 and BigTIFF); `None` for an unknown type.
fn type_size(kind: u16) -> Option<u64> {
    match kind {
        1 | 2 | 6 | 7 => Some(1),              // BYTE, ASCII, SBYTE, UNDEFINED
        3 | 8 => Some(2),                      // SHORT, SSHORT
        4 | 9 | 11 | 13 => Some(4),            // LONG, SLONG, FLOAT, IFD
        5 | 10 | 12 | 16 | 17 | 18 => Some(8), // RATIONAL, SRATIONAL, DOUBLE, LONG8, SLONG8, IFD8
        _ => None,
    }
}

fn read_up_to<R: Read>(reader: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

fn read_at<R: Read + Seek>(
    reader: &mut R,
    at: u64,
    buf: &mut [u8],
    len: u64,
    what: &str,
) -> Result<(), SlideErrorKind> {
    if at.checked_add(buf.len() as u64).is_none_or(|end| end > len) {
        return Err(SlideErrorKind::Corrupt(format!(
            "{what} at offset {at} is past the end of the file ({len} bytes)"
        )));
    }
    reader.seek(SeekFrom::Start(at))?;
    reader.read_exact(buf)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A classic little-endian TIFF with one directory of `entries` (tag, type, count, value).
    fn tiff(entries: &[(u16, u16, u32, u32)]) -> Vec<u8> {
        let mut b = b"II\x2a\x00\x08\x00\x00\x00".to_vec();
        b.extend((entries.len() as u16).to_le_bytes());
        for &(tag, kind, count, value) in entries {
            b.extend(tag.to_le_bytes());
            b.extend(kind.to_le_bytes());
            b.extend(count.to_le_bytes());
            b.extend(value.to_le_bytes());
        }
        b.extend(0u32.to_le_bytes());
        b.extend([0u8; 64]);
        b
    }

    fn check(bytes: &[u8]) -> Result<(), SlideErrorKind> {
        check_directories(&mut Cursor::new(bytes), bytes.len() as u64)
    }

    #[test]
    fn values_inside_the_file_pass_and_claims_past_it_are_refused() {
        // Width inline, 16 strip offsets (64 bytes) at offset 26 + 12·2 + 4 = the padding.
        let ok = tiff(&[(256, 3, 1, 20), (273, 4, 16, 38)]);
        assert!(check(&ok).is_ok());
        // Two million LONG strip offsets in a file of about a hundred bytes.
        let claim = tiff(&[(256, 3, 1, 20), (273, 4, 2_000_000, 38)]);
        let err = check(&claim).unwrap_err().to_string();
        assert!(
            err.contains("tag 273 claims 2000000 values (8000000 bytes) at offset 38"),
            "{err}"
        );
        // A count that overflows u64 bytes.
        let huge = tiff(&[(273, 12, u32::MAX, 38)]);
        assert!(check(&huge).is_err());
    }

    #[test]
    fn entries_after_an_unknown_type_are_read_where_the_crate_reads_them() {
        // BigTIFF, one directory at 16 of two entries: an unknown type (99), which tiff 0.10.3
        // skips as 12 bytes, then at 36 (not 44, where a 20-byte entry would end) two million
        // LONG strip offsets in a file of 64 bytes.
        let mut b = b"II\x2b\x00\x08\x00\x00\x00".to_vec();
        b.extend(16u64.to_le_bytes());
        b.extend(2u64.to_le_bytes());
        b.extend(256u16.to_le_bytes());
        b.extend(99u16.to_le_bytes());
        b.extend([0u8; 8]);
        b.extend(273u16.to_le_bytes());
        b.extend(4u16.to_le_bytes());
        b.extend(2_000_000u64.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        b.resize(64, 0);
        let err = check(&b).unwrap_err().to_string();
        assert!(err.contains("tag 273 claims 2000000 values"), "{err}");
    }

    #[test]
    fn a_chain_that_loops_or_leaves_the_file_is_refused() {
        let mut looped = tiff(&[(256, 3, 1, 20)]);
        // The next-directory link (after one 12-byte entry) points back at the first directory.
        looped[8 + 2 + 12..8 + 2 + 12 + 4].copy_from_slice(&8u32.to_le_bytes());
        assert!(check(&looped).unwrap_err().to_string().contains("loops"));
        let mut away = tiff(&[(256, 3, 1, 20)]);
        away[8 + 2 + 12..8 + 2 + 12 + 4].copy_from_slice(&1_000_000u32.to_le_bytes());
        assert!(check(&away).unwrap_err().to_string().contains("past the end"));
        let mut many = tiff(&[(256, 3, 1, 20)]);
        many[8..10].copy_from_slice(&60_000u16.to_le_bytes());
        assert!(check(&many).unwrap_err().to_string().contains("claims 60000 entries"));
    }
}
