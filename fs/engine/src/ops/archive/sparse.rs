//! GNU tar's PAX sparse files: the real name and size in PAX records, a map of data segments
//! at the start of the data.

use std::io::Read;

use crate::posix::{SetAttr, Workspace};

use super::{invalid, show, ArchiveResult, MAX_HEADER_BYTES};

/// GNU tar's PAX sparse format 1.0 (`--format=posix --sparse`, the default there): the
/// file's real name and size in PAX records, and at the start of its data a map of the data
/// segments (decimal lines: their count, then an offset and a size each), padded to 512
/// bytes, followed by the segments. Formats 0.0 and 0.1 are refused.
#[derive(Default)]
pub(super) struct PaxSparse {
    pub(super) major: Option<Vec<u8>>,
    pub(super) minor: Option<Vec<u8>>,
    pub(super) name: Option<Vec<u8>>,
    pub(super) real_size: Option<u64>,
    /// A 0.x record (`offset`, `numbytes`, `map`) was seen.
    pub(super) old_format: bool,
}

/// Writes a PAX 1.0 sparse file's segments into `ino` (holes stay holes) and sets its size. The map is bounded like any header ([`MAX_HEADER_BYTES`]).
pub(super) fn import_pax_sparse(
    ws: &Workspace,
    ino: u64,
    entry: &mut impl Read,
    sparse: &PaxSparse,
    in_data: &std::cell::Cell<bool>,
    buf: &mut [u8],
) -> ArchiveResult<()> {
    let real_size = sparse.real_size.expect("a sparse file");
    let bad = |what: &str| invalid(format!("a sparse file's map: {what}"));
    in_data.set(true);
    let result = (|| {
        let mut map = Vec::new();
        let numbers: Vec<u64> = loop {
            let mut block = [0u8; 512];
            entry
                .read_exact(&mut block)
                .map_err(|e| bad(&e.to_string()))?;
            map.extend_from_slice(&block);
            if map.len() as u64 > MAX_HEADER_BYTES {
                return Err(bad("larger than the most a header may be"));
            }
            let lines: Vec<&[u8]> = map.split(|b| *b == b'\n').collect();
            let complete = lines.len() - 1;
            if complete == 0 {
                continue;
            }
            let count: usize = parse_decimal(lines[0]).ok_or_else(|| bad("no count"))? as usize;
            if complete > count * 2 {
                break lines[..=count * 2]
                    .iter()
                    .map(|l| parse_decimal(l).ok_or_else(|| bad("not a number")))
                    .collect::<ArchiveResult<_>>()?;
            }
        };
        let mut end = 0u64;
        for pair in numbers[1..].chunks(2) {
            let (offset, len) = (pair[0], pair[1]);
            let stop = offset.checked_add(len).ok_or_else(|| bad("overflow"))?;
            if offset < end || stop > real_size {
                return Err(bad("segments out of order or past the file's size"));
            }
            let mut done = 0u64;
            while done < len {
                let n = ((len - done) as usize).min(buf.len());
                entry
                    .read_exact(&mut buf[..n])
                    .map_err(|e| invalid(format!("a sparse file's data: {e}")))?;
                if buf[..n].iter().any(|b| *b != 0) {
                    ws.write(ino, offset + done, &buf[..n])?;
                }
                done += n as u64;
            }
            end = stop;
        }
        std::io::copy(entry, &mut std::io::sink())
            .map_err(|e| invalid(format!("a sparse file's data: {e}")))?;
        Ok(())
    })();
    in_data.set(false);
    result?;
    let size = SetAttr {
        size: Some(real_size),
        ..Default::default()
    };
    ws.setattr(ino, &size)?;
    Ok(())
}

pub(super) fn parse_decimal(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.parse().ok()
}

impl PaxSparse {
    pub(super) fn field(&mut self, field: &str, value: &[u8]) {
        match field {
            "major" => self.major = Some(value.to_vec()),
            "minor" => self.minor = Some(value.to_vec()),
            "name" => self.name = Some(value.to_vec()),
            "realsize" | "size" => {
                self.real_size = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok())
            }
            _ => self.old_format = true,
        }
    }

    /// The file's real path if the entry is a sparse file; an error for a format not taken.
    pub(super) fn real_name(&self, stored: &[u8]) -> ArchiveResult<Option<Vec<u8>>> {
        let any = self.major.is_some() || self.real_size.is_some() || self.old_format;
        if !any {
            return Ok(None);
        }
        if self.old_format
            || self.major.as_deref() != Some(b"1")
            || self.minor.as_deref() != Some(b"0")
            || self.real_size.is_none()
        {
            return Err(invalid(format!(
                "{}: only PAX sparse format 1.0 is supported (GNU tar --sparse-version=1.0)",
                show(stored)
            )));
        }
        Ok(Some(self.name.clone().unwrap_or_else(|| stored.to_vec())))
    }
}
