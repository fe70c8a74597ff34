//! The default-domain opset an ONNX file imports, read from the protobuf without ONNX Runtime
//! (and without reading the graph).

use std::path::Path;

/// The default-domain opset an ONNX file imports: `ModelProto.opset_import` (field 8, each an
/// `OperatorSetIdProto` of domain = 1 and version = 2), found by walking the top-level fields
/// and seeking past the others, the graph included, so a large model is not read. `None` when
/// the file imports no default-domain opset or is not a protobuf this walk understands.
pub fn default_opset(path: &Path) -> std::io::Result<Option<u32>> {
    use std::io::{BufReader, Read, Seek, SeekFrom};
    fn varint(r: &mut impl Read) -> std::io::Result<Option<u64>> {
        let (mut value, mut shift) = (0u64, 0);
        let mut byte = [0u8];
        loop {
            if r.read(&mut byte)? == 0 {
                return Ok(None);
            }
            if shift > 63 {
                return Ok(None);
            }
            value |= u64::from(byte[0] & 0x7f) << shift;
            if byte[0] & 0x80 == 0 {
                return Ok(Some(value));
            }
            shift += 7;
        }
    }
    /// (domain, version) of one OperatorSetIdProto.
    fn opset_id(mut bytes: &[u8]) -> std::io::Result<Option<(String, u64)>> {
        let (mut domain, mut version) = (String::new(), None);
        while !bytes.is_empty() {
            let Some(key) = varint(&mut bytes)? else {
                return Ok(None);
            };
            match (key >> 3, key & 7) {
                (2, 0) => version = varint(&mut bytes)?,
                (_, 0) => drop(varint(&mut bytes)?),
                (field, 2) => {
                    let Some(len) = varint(&mut bytes)? else {
                        return Ok(None);
                    };
                    let Some(value) = usize::try_from(len).ok().and_then(|n| bytes.get(..n)) else {
                        return Ok(None);
                    };
                    if field == 1 {
                        domain = String::from_utf8_lossy(value).into_owned();
                    }
                    bytes = &bytes[value.len()..];
                }
                _ => return Ok(None),
            }
        }
        Ok(version.map(|v| (domain, v)))
    }
    let mut file = BufReader::new(std::fs::File::open(path)?);
    while let Some(key) = varint(&mut file)? {
        let skip = match key & 7 {
            0 => {
                varint(&mut file)?;
                0
            }
            1 => 8,
            5 => 4,
            2 => {
                let Some(len) = varint(&mut file)? else { return Ok(None) };
                if key >> 3 == 8 && len <= 1 << 16 {
                    let mut bytes = vec![0u8; len as usize];
                    file.read_exact(&mut bytes)?;
                    if let Some((domain, version)) = opset_id(&bytes)? {
                        if domain.is_empty() || domain == "ai.onnx" {
                            return Ok(u32::try_from(version).ok());
                        }
                    }
                    0
                } else {
                    len
                }
            }
            _ => return Ok(None),
        };
        if skip > 0 {
            let Ok(skip) = i64::try_from(skip) else { return Ok(None) };
            file.seek(SeekFrom::Current(skip))?;
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The opset walk: a default-domain import after a large skipped graph and another domain's
    /// import; "ai.onnx" counts as the default; a file without one, or cut short, gives None.
    #[test]
    fn default_opset_is_read_past_the_graph() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            path
        };
        let graph_len = 300_000usize;
        let import = |domain: &str, version: u8| {
            let mut inner = vec![0x0a, domain.len() as u8];
            inner.extend(domain.as_bytes());
            inner.extend([0x10, version]);
            let mut field = vec![0x42, inner.len() as u8];
            field.extend(inner);
            field
        };
        // ir_version = 8; a graph of 300 000 bytes (length varint e0 a7 12), skipped unread.
        let mut model = vec![0x08, 0x08];
        model.extend([0x3a, 0xe0, 0xa7, 0x12]);
        model.extend(std::iter::repeat_n(0u8, graph_len));
        model.extend(import("com.microsoft", 1));
        model.extend(import("", 17));
        model.extend([0x72, 0x00]); // metadata_props, empty
        assert_eq!(default_opset(&write("a.onnx", &model)).unwrap(), Some(17));
        let mut named = vec![0x08, 0x07];
        named.extend(import("ai.onnx", 13));
        assert_eq!(default_opset(&write("b.onnx", &named)).unwrap(), Some(13));
        let mut other = vec![0x08, 0x07];
        other.extend(import("com.microsoft", 1));
        assert_eq!(default_opset(&write("c.onnx", &other)).unwrap(), None);
        assert_eq!(default_opset(&write("d.onnx", &model[..5000])).unwrap(), None);
        assert_eq!(default_opset(&write("e.onnx", b"not a model at all")).unwrap(), None);
    }
}
