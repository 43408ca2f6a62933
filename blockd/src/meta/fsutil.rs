//! Small on-disk building blocks shared by the Raft log and the snapshot file: crc32c-framed
//! records (so a torn tail is detected, never misread) and atomic whole-file replacement.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

/// Bytes before each record's payload: little-endian `u32` payload length, then the
/// little-endian crc32c of the length bytes followed by the payload.
pub(crate) const FRAME_HEADER_BYTES: usize = 8;

/// Appends one framed record holding `payload` to `out`.
pub(crate) fn encode_frame(payload: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    let len = u32::try_from(payload.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "record larger than 4 GiB"))?;
    let len_bytes = len.to_le_bytes();
    let crc = crc32c::crc32c_append(crc32c::crc32c(&len_bytes), payload);
    out.extend_from_slice(&len_bytes);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// Why a scan of framed records stopped before the end of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameDefect {
    /// Fewer bytes left than a header.
    ShortHeader,
    /// The header names more bytes than remain, or more than the caller allows.
    BadLength,
    /// The checksum does not match.
    BadChecksum,
}

/// The outcome of scanning a buffer of framed records.
#[derive(Debug)]
pub(crate) struct FrameScan<'a> {
    /// `(offset of the record's header, payload)` for every intact record, in order.
    pub records: Vec<(usize, &'a [u8])>,
    /// Length of the intact prefix: everything after it is a torn or corrupt tail.
    pub valid_len: usize,
    /// Set when bytes remain after `valid_len`.
    pub defect: Option<FrameDefect>,
}

/// Splits `buf` into intact records, stopping at the first defect. Pure: the caller decides
/// whether a defect is a torn tail (truncate) or corruption (refuse).
pub(crate) fn scan_frames(buf: &[u8], max_payload: usize) -> FrameScan<'_> {
    let mut records = Vec::new();
    let mut pos = 0usize;
    let defect = loop {
        let rest = &buf[pos..];
        if rest.is_empty() {
            break None;
        }
        let Some((header, body)) = rest.split_first_chunk::<FRAME_HEADER_BYTES>() else {
            break Some(FrameDefect::ShortHeader);
        };
        let len_bytes = [header[0], header[1], header[2], header[3]];
        let stored_crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let len = u32::from_le_bytes(len_bytes) as usize;
        if len > max_payload || len > body.len() {
            break Some(FrameDefect::BadLength);
        }
        let payload = &body[..len];
        if crc32c::crc32c_append(crc32c::crc32c(&len_bytes), payload) != stored_crc {
            break Some(FrameDefect::BadChecksum);
        }
        records.push((pos, payload));
        pos += FRAME_HEADER_BYTES + len;
    };
    FrameScan {
        records,
        valid_len: pos,
        defect,
    }
}

/// Replaces `path` with `contents` so that a crash leaves either the old or the new file:
/// write a temporary file, fsync it, rename it over `path`, fsync the directory.
pub(crate) fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no parent"))?;
    let mut tmp_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?
        .to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    sync_dir(dir)
}

/// Makes creations, renames and removals in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Reads `path`, or `None` when it does not exist.
pub(crate) fn read_optional(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Encodes a small file: an 8-byte magic naming kind and version, then one framed record.
pub(crate) fn encode_file(magic: &[u8; 8], payload: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(magic.len() + FRAME_HEADER_BYTES + payload.len());
    out.extend_from_slice(magic);
    encode_frame(payload, &mut out)?;
    Ok(out)
}

/// Decodes a file written by [`encode_file`]. Such files are replaced atomically, so any defect
/// is corruption and is reported, never repaired.
pub(crate) fn decode_file<'a>(
    magic: &[u8; 8],
    bytes: &'a [u8],
    what: &str,
) -> io::Result<&'a [u8]> {
    let Some(body) = bytes.strip_prefix(magic.as_slice()) else {
        return Err(invalid(format!("{what}: unknown magic or format version")));
    };
    let scan = scan_frames(body, usize::MAX);
    match (scan.records.as_slice(), scan.defect) {
        ([(_, payload)], None) => Ok(payload),
        _ => Err(invalid(format!(
            "{what}: corrupt (checksum or length mismatch)"
        ))),
    }
}

/// An `InvalidData` I/O error with a message.
pub(crate) fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_stop_at_a_torn_tail() {
        let mut buf = Vec::new();
        encode_frame(b"one", &mut buf).unwrap();
        encode_frame(b"", &mut buf).unwrap();
        encode_frame(b"three", &mut buf).unwrap();
        let whole = scan_frames(&buf, 1 << 20);
        assert_eq!(whole.records.len(), 3);
        assert_eq!(whole.valid_len, buf.len());
        assert!(whole.defect.is_none());

        for cut in 0..buf.len() {
            let scan = scan_frames(&buf[..cut], 1 << 20);
            assert!(scan.valid_len <= cut);
            assert!(
                scan.records
                    .iter()
                    .all(|(_, p)| [&b"one"[..], b"", b"three"].contains(p))
            );
        }

        let mut flipped = buf.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        let scan = scan_frames(&flipped, 1 << 20);
        assert_eq!(scan.records.len(), 2);
        assert_eq!(scan.defect, Some(FrameDefect::BadChecksum));
    }

    #[test]
    fn atomic_file_round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_atomic(&path, &encode_file(b"TESTFIL1", b"hello").unwrap()).unwrap();
        let bytes = read_optional(&path).unwrap().unwrap();
        assert_eq!(decode_file(b"TESTFIL1", &bytes, "f").unwrap(), b"hello");
        assert!(decode_file(b"TESTFIL2", &bytes, "f").is_err());
        let mut bad = bytes.clone();
        bad[10] ^= 0xff;
        assert!(decode_file(b"TESTFIL1", &bad, "f").is_err());
        assert!(
            read_optional(&dir.path().join("missing"))
                .unwrap()
                .is_none()
        );
    }
}
