//! The ack cursor file: one frame holding `fgcursor | below (u64 LE) | floor (u64 LE)`.
//! `below`: every record numbered below it is done (acknowledged upstream or dropped);
//! `floor`: no sequence number below it will be handed out again, so numbers stay
//! increasing across restarts even for records that never reached the disk (the writer
//! reserves numbers ahead, see `RESERVE`). Replaced atomically (temp file, sync,
//! rename, directory sync), so a crash keeps the old cursor or the new one.

use std::fs;
use std::io;
use std::path::Path;

use bytes::{BufMut, Bytes, BytesMut};

use crate::storage::frame::{self, Fields, Frame};
use crate::storage::replace_file;

use super::record::MAX_SEQ;

pub(super) const FILE: &str = "cursor";
pub(super) const TEMP: &str = "cursor.tmp";
const MAGIC: &[u8; 8] = b"fgcursor";
/// Sequence numbers reserved by one cursor write: a write per 16 M messages at most.
pub(super) const RESERVE: u64 = 1 << 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Cursor {
    pub(super) below: u64,
    pub(super) floor: u64,
}

/// What the cursor file held at open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CursorState {
    Loaded,
    /// No cursor file: everything on disk is replayed.
    Missing,
    /// A cursor file that does not check: everything on disk is replayed (duplicates,
    /// never loss).
    Corrupt,
}

pub(super) fn encode(cursor: Cursor) -> BytesMut {
    let mut out = BytesMut::new();
    frame::put_with(&mut out, |body| {
        body.put_slice(MAGIC);
        body.put_u64_le(cursor.below);
        body.put_u64_le(cursor.floor);
    });
    out
}

pub(super) fn decode(bytes: &[u8]) -> Option<Cursor> {
    let Frame::Whole { body, len } = frame::read(bytes) else {
        return None;
    };
    if len != bytes.len() {
        return None;
    }
    let mut fields = Fields(Bytes::copy_from_slice(body));
    if fields.bytes(MAGIC.len())? != MAGIC[..] {
        return None;
    }
    let below = fields.u64()?;
    let floor = fields.u64()?;
    (below < MAX_SEQ && floor < MAX_SEQ).then_some(Cursor { below, floor })
}

pub(super) fn load(dir: &Path) -> io::Result<(Option<Cursor>, CursorState)> {
    match fs::read(dir.join(FILE)) {
        Ok(bytes) => Ok(match decode(&bytes) {
            Some(cursor) => (Some(cursor), CursorState::Loaded),
            None => (None, CursorState::Corrupt),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok((None, CursorState::Missing)),
        Err(e) => Err(e),
    }
}

/// Writes the cursor atomically; returns the bytes written.
pub(super) fn store(dir: &Path, cursor: Cursor, durable: bool) -> io::Result<u64> {
    let bytes = encode(cursor);
    replace_file(dir, FILE, TEMP, &bytes, durable)?;
    Ok(bytes.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_and_any_damage_is_refused() {
        let cursor = Cursor {
            below: 1234,
            floor: 99_999,
        };
        let bytes = encode(cursor);
        assert_eq!(decode(&bytes), Some(cursor));
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut]), None, "cut at {cut}");
        }
        for i in 0..bytes.len() {
            let mut bad = bytes.to_vec();
            bad[i] ^= 0x10;
            assert_eq!(decode(&bad), None, "flipped byte {i}");
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert_eq!(decode(&longer), None);
        let absurd = encode(Cursor {
            below: u64::MAX,
            floor: u64::MAX,
        });
        assert_eq!(decode(&absurd), None, "well framed, but no real cursor");
    }
}
