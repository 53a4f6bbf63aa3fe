//! `MqttString`: a UTF-8 string that is valid on the MQTT wire (MQTT 5.0 §1.5.4, 3.1.1 §1.5.3).
//!
//! Owns the string rules only: well-formed UTF-8, no U+0000, at most 65,535 bytes. A value
//! of this type can always be encoded, so the encoder never has to re-check it. It shares
//! the read buffer (`Bytes`) when it comes from the decoder: no copy, no allocation.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

use bytes::Bytes;
use bytestring::ByteString;

/// Longest string the two-byte length prefix can describe.
pub const MAX_STRING_LEN: usize = u16::MAX as usize;

/// Why a string cannot be carried by MQTT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StringError {
    /// Not well-formed UTF-8 (this also covers encoded surrogates U+D800..U+DFFF).
    #[error("[MQTT-1.5.4-1] string is not well-formed UTF-8")]
    InvalidUtf8,
    /// Contains the null character.
    #[error("[MQTT-1.5.4-2] string contains U+0000")]
    NullCharacter,
    /// Longer than the two-byte length prefix allows.
    #[error("[MQTT-1.5.4] string of {0} bytes is longer than 65535")]
    TooLong(usize),
}

/// A string that satisfies the MQTT UTF-8 rules. Cheap to clone (reference counted).
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MqttString(ByteString);

impl MqttString {
    /// The empty string (valid: many MQTT strings may be empty, e.g. a client identifier).
    pub const fn empty() -> Self {
        MqttString(ByteString::from_static(""))
    }

    /// Checks `bytes` and wraps them without copying.
    #[inline]
    pub fn from_bytes(bytes: Bytes) -> Result<Self, StringError> {
        check_no_null(&bytes)?;
        Self::from_nul_free_bytes(bytes)
    }

    /// Like [`MqttString::from_bytes`] for a caller that has already proven `bytes` holds
    /// no 0x00 byte (a topic name scans for NUL and wildcards in one pass on the hot path).
    /// Passing bytes with a NUL breaks this type's promise, so it stays crate-private.
    #[inline]
    pub(crate) fn from_nul_free_bytes(bytes: Bytes) -> Result<Self, StringError> {
        if bytes.len() > MAX_STRING_LEN {
            return Err(StringError::TooLong(bytes.len()));
        }
        // Rust's UTF-8 validation rejects encoded surrogates, which is what [MQTT-1.5.4-1]
        // asks for.
        let s = ByteString::try_from(bytes).map_err(|_| StringError::InvalidUtf8)?;
        Ok(MqttString(s))
    }

    /// Checks a `'static` string (no allocation).
    pub fn from_static(s: &'static str) -> Result<Self, StringError> {
        check_len_and_null(s)?;
        Ok(MqttString(ByteString::from_static(s)))
    }

    /// A copy in an allocation of its own. A decoded string shares the read buffer it
    /// came from and keeps all of it alive; what is kept long (a subscription, a will, a
    /// retained topic) is detached so that an idle connection pins no read buffer.
    pub fn detach(&self) -> Self {
        MqttString(ByteString::from(self.as_str()))
    }

    /// The string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The UTF-8 bytes (a cheap clone of the shared buffer).
    pub fn as_bytes(&self) -> &Bytes {
        self.0.as_bytes()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn check_no_null(s: &[u8]) -> Result<(), StringError> {
    if memchr::memchr(0, s).is_some() {
        return Err(StringError::NullCharacter);
    }
    Ok(())
}

fn check_len_and_null(s: &str) -> Result<(), StringError> {
    if s.len() > MAX_STRING_LEN {
        return Err(StringError::TooLong(s.len()));
    }
    check_no_null(s.as_bytes())
}

impl TryFrom<&str> for MqttString {
    type Error = StringError;
    fn try_from(s: &str) -> Result<Self, StringError> {
        check_len_and_null(s)?;
        Ok(MqttString(ByteString::from(s)))
    }
}

impl TryFrom<String> for MqttString {
    type Error = StringError;
    fn try_from(s: String) -> Result<Self, StringError> {
        check_len_and_null(&s)?;
        Ok(MqttString(ByteString::from(s)))
    }
}

impl Deref for MqttString {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for MqttString {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for MqttString {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for MqttString {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for MqttString {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Debug for MqttString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for MqttString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_null_character_is_rejected() {
        assert_eq!(
            MqttString::try_from("a\0b"),
            Err(StringError::NullCharacter)
        );
    }

    #[test]
    fn an_encoded_surrogate_is_rejected() {
        // U+D800 encoded as if it were a scalar value (CESU-8 style).
        let bytes = Bytes::from_static(&[0xED, 0xA0, 0x80]);
        assert_eq!(MqttString::from_bytes(bytes), Err(StringError::InvalidUtf8));
    }

    #[test]
    fn a_string_longer_than_65535_bytes_is_rejected() {
        let long = "x".repeat(MAX_STRING_LEN + 1);
        assert_eq!(
            MqttString::try_from(long.as_str()),
            Err(StringError::TooLong(MAX_STRING_LEN + 1))
        );
        assert!(MqttString::try_from(&long[..MAX_STRING_LEN]).is_ok());
    }

    #[test]
    fn a_string_from_bytes_shares_the_buffer() {
        let buf = Bytes::from_static(b"sensors/temp");
        let s = MqttString::from_bytes(buf.clone()).unwrap();
        assert_eq!(s.as_bytes().as_ptr(), buf.as_ptr());
        assert_eq!(s, "sensors/temp");
    }
}
