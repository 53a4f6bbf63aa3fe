//! Frames: `length (u32 LE) | CRC-32 of the body (u32 LE) | body`, the unit both logs
//! append. A frame is whole or it is not there: a torn write leaves a frame that is
//! incomplete or fails its CRC, and readers stop at it. Also the field encoding used
//! inside bodies (little-endian integers, u16-length strings, u32-length MQTT 5.0
//! packets, so stored messages go through the one codec). Never panics on any bytes.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::mqtt::codec::{self, EncodeError};
use crate::mqtt::packet::{Packet, ProtocolVersion};

/// Bytes before the body: its length and its CRC.
pub const HEADER_LEN: usize = 8;

/// The largest body a reader accepts: a corrupt length must not make it allocate or
/// wait for gigabytes. Larger than any MQTT packet (256 MiB) with its fields.
pub const MAX_BODY: usize = 300 << 20;

/// What the start of a byte slice holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A frame whose CRC matches; `len` is the whole frame's size, header included.
    Whole { body: &'a [u8], len: usize },
    /// The start of a frame: more bytes are needed (or the tail was torn).
    Incomplete {
        /// The whole frame's size when the header is there.
        needs: Option<usize>,
    },
    /// A length above [`MAX_BODY`] or a CRC that does not match.
    Corrupt,
}

/// Reads the frame at the start of `bytes`.
pub fn read(bytes: &[u8]) -> Frame<'_> {
    let Some(mut header) = bytes.get(..HEADER_LEN) else {
        return Frame::Incomplete { needs: None };
    };
    let len = header.get_u32_le() as usize;
    let crc = header.get_u32_le();
    if len > MAX_BODY {
        return Frame::Corrupt;
    }
    let Some(body) = bytes.get(HEADER_LEN..HEADER_LEN + len) else {
        return Frame::Incomplete {
            needs: Some(HEADER_LEN + len),
        };
    };
    if crc32fast::hash(body) == crc {
        Frame::Whole {
            body,
            len: HEADER_LEN + len,
        }
    } else {
        Frame::Corrupt
    }
}

/// Appends one frame whose body `write_body` writes, in place (no copy of the body).
pub fn put_with(out: &mut BytesMut, write_body: impl FnOnce(&mut BytesMut)) {
    let start = out.len();
    out.put_u64_le(0);
    write_body(out);
    let body = &out[start + HEADER_LEN..];
    // A body is at most an MQTT packet and a few fields: far below 4 GiB.
    let len = body.len() as u32;
    let crc = crc32fast::hash(body);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
}

/// A string as u16 length + UTF-8 (cut at 65,535 bytes, which MQTT strings never pass).
pub fn put_str(out: &mut BytesMut, s: &str) {
    let len = s.len().min(usize::from(u16::MAX));
    out.put_u16_le(len as u16);
    out.put_slice(&s.as_bytes()[..len]);
}

/// A packet as u32 length + its MQTT 5.0 encoding; nothing is written on an error.
pub fn put_packet(out: &mut BytesMut, packet: &Packet) -> Result<(), EncodeError> {
    let start = out.len();
    out.put_u32_le(0);
    if let Err(e) = codec::encode(packet, ProtocolVersion::V5, out) {
        out.truncate(start);
        return Err(e);
    }
    // An encoded packet is at most 256 MiB (the codec refuses more).
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    Ok(())
}

/// The size [`put_packet`] writes for `packet`.
pub fn packet_len(packet: &Packet) -> Result<usize, EncodeError> {
    Ok(4 + codec::encoded_len(packet, ProtocolVersion::V5)?)
}

/// Reads the fields of a body; every getter returns `None` past the end.
#[derive(Debug)]
pub struct Fields(pub Bytes);

impl Fields {
    pub fn u8(&mut self) -> Option<u8> {
        (self.0.remaining() >= 1).then(|| self.0.get_u8())
    }
    pub fn u16(&mut self) -> Option<u16> {
        (self.0.remaining() >= 2).then(|| self.0.get_u16_le())
    }
    pub fn u32(&mut self) -> Option<u32> {
        (self.0.remaining() >= 4).then(|| self.0.get_u32_le())
    }
    pub fn u64(&mut self) -> Option<u64> {
        (self.0.remaining() >= 8).then(|| self.0.get_u64_le())
    }
    pub fn bytes(&mut self, len: usize) -> Option<Bytes> {
        (self.0.remaining() >= len).then(|| self.0.split_to(len))
    }
    pub fn string(&mut self) -> Option<String> {
        let len = usize::from(self.u16()?);
        String::from_utf8(self.bytes(len)?.to_vec()).ok()
    }
    /// A packet written by [`put_packet`]; its strings and payload share one copy of
    /// the packet's bytes (not the whole body's).
    pub fn packet(&mut self) -> Option<Packet> {
        let len = self.u32()? as usize;
        let mut buf = BytesMut::from(&self.bytes(len)?[..]);
        codec::decode(&mut buf, u32::MAX, ProtocolVersion::V5).ok()?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(body: &[u8]) -> BytesMut {
        let mut out = BytesMut::new();
        put_with(&mut out, |b| b.put_slice(body));
        out
    }

    #[test]
    fn a_frame_reads_back_whole_and_every_cut_of_it_is_incomplete() {
        let bytes = frame(b"hello");
        assert_eq!(
            read(&bytes),
            Frame::Whole {
                body: b"hello",
                len: 13
            }
        );
        for cut in 0..bytes.len() {
            assert!(
                matches!(read(&bytes[..cut]), Frame::Incomplete { .. }),
                "cut at {cut}"
            );
        }
        assert_eq!(read(&bytes[..9]), Frame::Incomplete { needs: Some(13) });
    }

    #[test]
    fn a_flipped_bit_or_an_absurd_length_is_corrupt() {
        let mut bytes = frame(b"hello");
        bytes[10] ^= 1;
        assert_eq!(read(&bytes), Frame::Corrupt);
        let mut huge = BytesMut::new();
        huge.put_u32_le(u32::MAX);
        huge.put_u32_le(0);
        assert_eq!(read(&huge), Frame::Corrupt);
    }

    #[test]
    fn fields_stop_at_the_end_instead_of_panicking() {
        let mut f = Fields(Bytes::from_static(&[1, 2, 3]));
        assert_eq!(f.u16(), Some(0x0201));
        assert_eq!(f.u16(), None);
        assert_eq!(f.u8(), Some(3));
        assert_eq!(f.u64(), None);
        assert!(Fields(Bytes::from_static(&[5, 0, b'a'])).string().is_none());
        assert!(
            Fields(Bytes::from_static(&[9, 0, 0, 0, 0x30]))
                .packet()
                .is_none()
        );
    }
}
