//! Segment files: `<first seq, 20 digits>.seg`, an 8-byte header (`FGSPOOL` and the
//! format version) and then frames in increasing sequence order. A segment is only ever
//! appended to, truncated once at recovery when its tail is torn, and deleted whole.
//! Reading is by `FrameReader`, in chunks, so neither recovery nor replay needs a
//! segment in memory; nothing here panics on any file content.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::storage::frame::{self, Frame};

use super::record;

/// `FGSPOOL` and the format version.
pub(super) const MAGIC: &[u8; 7] = b"FGSPOOL";
pub(super) const VERSION: u8 = 1;
pub(super) const HEADER_LEN: u64 = 8;
const SUFFIX: &str = ".seg";
/// How much a reader asks the file for at once.
const CHUNK: usize = 256 << 10;

pub(super) fn header() -> [u8; 8] {
    let mut h = [0u8; 8];
    h[..7].copy_from_slice(MAGIC);
    h[7] = VERSION;
    h
}

pub(super) fn file_name(first_seq: u64) -> String {
    // Zero-padded so names sort like their numbers (`ls` shows them in order).
    format!("{first_seq:020}{SUFFIX}")
}

pub(super) fn path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(file_name(first_seq))
}

fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|first| *first < record::MAX_SEQ)
}

/// The first sequence numbers of the segments in `dir`, in order. Other files are left
/// alone.
pub(super) fn list(dir: &Path) -> io::Result<Vec<u64>> {
    let mut firsts = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(first) = entry.file_name().to_str().and_then(parse_name) {
            firsts.push(first);
        }
    }
    firsts.sort_unstable();
    Ok(firsts)
}

/// What a segment's first bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Header {
    Ours,
    /// Shorter than a header: a crash right after the file was created.
    Torn,
    /// Our magic with another version: written by a newer fieldgate.
    Version(u8),
    /// Not a spool segment.
    Foreign,
}

pub(super) fn check_header(bytes: &[u8]) -> Header {
    match bytes.get(..HEADER_LEN as usize) {
        None if MAGIC.starts_with(bytes) => Header::Torn,
        None => Header::Foreign,
        Some(h) if &h[..7] != MAGIC => Header::Foreign,
        Some(h) if h[7] == VERSION => Header::Ours,
        Some(h) => Header::Version(h[7]),
    }
}

/// The next thing in a segment ([`FrameReader::offset`] says where).
#[derive(Debug)]
pub(super) enum Next<'a> {
    /// The body of a whole frame with a good CRC.
    Frame(&'a [u8]),
    /// The end of what is in the file now; bytes after the offset (if any) are a torn
    /// frame.
    End,
    /// The frame at the offset fails its CRC or has an impossible length.
    Corrupt,
}

/// Reads frames from a segment file in chunks.
#[derive(Debug)]
pub(super) struct FrameReader {
    file: File,
    /// File offset of `buf[0]`.
    buf_offset: u64,
    buf: Vec<u8>,
    /// Position of the next frame in `buf`.
    pos: usize,
}

impl FrameReader {
    /// Reads `file` from `offset` (just past the header, usually).
    pub(super) fn new(file: File, offset: u64) -> Self {
        FrameReader {
            file,
            buf_offset: offset,
            buf: Vec::new(),
            pos: 0,
        }
    }

    /// File offset of the next frame.
    pub(super) fn offset(&self) -> u64 {
        self.buf_offset + self.pos as u64
    }

    pub(super) fn next(&mut self) -> io::Result<Next<'_>> {
        loop {
            match frame::read(&self.buf[self.pos..]) {
                Frame::Whole { len, .. } => {
                    let start = self.pos;
                    self.pos += len;
                    return Ok(Next::Frame(
                        &self.buf[start + frame::HEADER_LEN..start + len],
                    ));
                }
                Frame::Corrupt => return Ok(Next::Corrupt),
                Frame::Incomplete { needs } => {
                    if !self.fill(needs.unwrap_or(frame::HEADER_LEN))? {
                        return Ok(Next::End);
                    }
                }
            }
        }
    }

    /// Reads more so that at least `needs` bytes follow `pos`; false when the file
    /// ends first (a length field pointing past the end is a torn frame, not a reason
    /// to allocate).
    fn fill(&mut self, needs: usize) -> io::Result<bool> {
        self.buf.drain(..self.pos);
        self.buf_offset += self.pos as u64;
        self.pos = 0;
        let file_len = self.file.metadata()?.len();
        let have_end = self.buf_offset + self.buf.len() as u64;
        if self.buf_offset + needs as u64 > file_len {
            return Ok(false);
        }
        let want = needs.saturating_sub(self.buf.len()).max(CHUNK);
        // The file may have shrunk under us (it is only ever cut at recovery, but it is
        // on a disk anyone can write to).
        let left = file_len.saturating_sub(have_end);
        let want = want.min(usize::try_from(left).unwrap_or(usize::MAX));
        let old = self.buf.len();
        self.buf.resize(old + want, 0);
        let mut got = 0;
        while got < want {
            match self
                .file
                .read_at(&mut self.buf[old + got..], have_end + got as u64)
            {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.buf.truncate(old);
                    return Err(e);
                }
            }
        }
        self.buf.truncate(old + got);
        Ok(self.buf.len() >= needs)
    }
}

/// What recovery found in one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Scan {
    pub(super) header: Header,
    /// Bytes up to the end of the last good frame (the header included).
    pub(super) good_len: u64,
    pub(super) file_len: u64,
    /// The last good record's sequence number.
    pub(super) last_seq: Option<u64>,
    /// True when something other than the end of the file stopped the scan.
    pub(super) corrupt: bool,
}

/// Reads a whole segment, calling `on_record` with each good record's sequence number.
/// A frame that fails its check, or whose number is out of place (not above the
/// previous one, below the file's name, or not below `before`: the next segment's
/// name), stops the scan there.
pub(super) fn scan(
    path: &Path,
    first: u64,
    before: Option<u64>,
    mut on_record: impl FnMut(u64),
) -> io::Result<Scan> {
    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut head = [0u8; HEADER_LEN as usize];
    let mut got = 0;
    while got < head.len() {
        match file.read_at(&mut head[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let header = check_header(&head[..got]);
    let mut result = Scan {
        header,
        good_len: 0,
        file_len,
        last_seq: None,
        corrupt: header != Header::Torn,
    };
    if header != Header::Ours {
        return Ok(result);
    }
    result.good_len = HEADER_LEN;
    result.corrupt = false;
    let mut reader = FrameReader::new(file, HEADER_LEN);
    loop {
        match reader.next()? {
            Next::Frame(body) => {
                let seq = record::seq_of(body);
                let in_order = seq.filter(|s| {
                    *s >= first
                        && before.is_none_or(|b| *s < b)
                        && result.last_seq.is_none_or(|last| *s > last)
                });
                let Some(seq) = in_order else {
                    result.corrupt = true;
                    break;
                };
                on_record(seq);
                result.last_seq = Some(seq);
                result.good_len = reader.offset();
            }
            Next::End => break,
            Next::Corrupt => {
                result.corrupt = true;
                break;
            }
        }
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_like_their_numbers_and_other_files_are_not_segments() {
        assert_eq!(file_name(42), "00000000000000000042.seg");
        assert_eq!(parse_name(&file_name(1 << 40)), Some(1 << 40));
        assert_eq!(
            parse_name(&file_name(u64::MAX)),
            None,
            "beyond any real number"
        );
        assert_eq!(parse_name("42.seg"), None);
        assert_eq!(parse_name("0000000000000000004x.seg"), None);
        assert_eq!(parse_name("cursor"), None);
    }

    #[test]
    fn a_header_is_ours_torn_newer_or_foreign() {
        assert_eq!(check_header(&header()), Header::Ours);
        assert_eq!(check_header(&header()[..3]), Header::Torn);
        assert_eq!(check_header(b""), Header::Torn);
        assert_eq!(check_header(b"GAR"), Header::Foreign);
        assert_eq!(check_header(b"FGSPOOL\x07"), Header::Version(7));
        assert_eq!(check_header(b"GARBAGE!"), Header::Foreign);
    }
}
