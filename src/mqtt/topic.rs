//! Topic names and topic filters (MQTT 5.0 §4.7, §4.8; 3.1.1 §4.7): validation, the
//! `$share/<group>/<filter>` form of shared subscriptions, and filter-against-name matching.
//!
//! Sans-IO and pure: no tokio, sockets, files or clocks, and no allocation on the matching
//! path (the broker calls it for every subscription on every PUBLISH). Both types wrap an
//! `MqttString`, so a topic decoded from the read buffer shares that buffer.

use bytes::Bytes;
use std::fmt;
use std::str::FromStr;

use crate::mqtt::string::{MqttString, StringError};

/// Separates the levels of a topic (MQTT 5.0 §4.7.1.1).
const LEVEL_SEPARATOR: u8 = b'/';
/// Matches any number of levels, including the parent (§4.7.1.2).
const MULTI_LEVEL_WILDCARD: u8 = b'#';
/// Matches exactly one level (§4.7.1.3).
const SINGLE_LEVEL_WILDCARD: u8 = b'+';
/// What starts a shared-subscription filter (MQTT 5.0 §4.8.2).
const SHARE_PREFIX: &str = "$share/";

/// Why a string is not a valid topic name or topic filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Zero-length topic name or filter.
    #[error("[MQTT-4.7.3-1] a topic name or topic filter must be at least one character long")]
    Empty,
    /// A topic name (what a PUBLISH carries) contains '+' or '#'.
    #[error("[MQTT-3.3.2-2] a topic name must not contain the wildcard characters '+' or '#'")]
    WildcardInTopicName,
    /// '#' is not alone in its level, or is not the last level.
    #[error(
        "[MQTT-4.7.1-1] '#' must occupy a whole level and be the last character of a topic filter"
    )]
    MisplacedMultiLevelWildcard,
    /// '+' shares its level with other characters.
    #[error("[MQTT-4.7.1-2] '+' must occupy an entire level of a topic filter")]
    MisplacedSingleLevelWildcard,
    /// `$share//...` or `$share/` : the share name is empty.
    #[error(
        "[MQTT-4.8.2-1] a shared subscription's share name must be at least one character long"
    )]
    EmptyShareName,
    /// The share name contains '+' or '#' (it cannot contain '/': that ends it).
    #[error("[MQTT-4.8.2-2] a shared subscription's share name must not contain '+' or '#'")]
    WildcardInShareName,
    /// `$share/<group>` or `$share/<group>/`: no topic filter follows the share name.
    #[error(
        "[MQTT-4.8.2-2] a shared subscription's share name must be followed by '/' and a topic filter"
    )]
    SharedWithoutFilter,
    /// The string itself cannot be carried by MQTT (only from the `&str` constructors).
    #[error(transparent)]
    String(#[from] StringError),
}

fn is_wildcard(b: u8) -> bool {
    b == SINGLE_LEVEL_WILDCARD || b == MULTI_LEVEL_WILDCARD
}

fn has_wildcard(s: &str) -> bool {
    // Both wildcards are ASCII, so a byte scan cannot hit the middle of a multi-byte char.
    // memchr2 scans a word at a time: this check is on every decoded PUBLISH.
    memchr::memchr2(b'+', b'#', s.as_bytes()).is_some()
}

/// The name a message is published to: no wildcards, never empty except in the one place
/// MQTT 5 allows it (a PUBLISH that relies on a Topic Alias).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(MqttString);

impl TopicName {
    /// Checks that `s` is a usable topic name: non-empty [MQTT-4.7.3-1], no '+' or '#'
    /// [MQTT-3.3.2-2]. A decoder that reads a zero-length topic must decide whether a Topic
    /// Alias makes it legal and then use [`TopicName::empty_for_alias`]; this refuses it.
    #[inline]
    pub fn new(s: MqttString) -> Result<Self, TopicError> {
        if s.is_empty() {
            return Err(TopicError::Empty);
        }
        if has_wildcard(&s) {
            return Err(TopicError::WildcardInTopicName);
        }
        Ok(TopicName(s))
    }

    /// Builds a topic name straight from wire bytes, sharing them. Same rules as
    /// [`TopicName::new`] plus the string rules; one scan finds NUL and both wildcards,
    /// because this runs for every PUBLISH the broker and client decode.
    #[inline]
    pub fn from_bytes(bytes: Bytes) -> Result<Self, TopicError> {
        if bytes.is_empty() {
            return Err(TopicError::Empty);
        }
        if let Some(i) = memchr::memchr3(0, b'+', b'#', &bytes) {
            return Err(match bytes[i] {
                0 => TopicError::String(StringError::NullCharacter),
                _ => TopicError::WildcardInTopicName,
            });
        }
        Ok(TopicName(MqttString::from_nul_free_bytes(bytes)?))
    }

    /// The zero-length topic of an MQTT 5 PUBLISH that names its topic with a Topic Alias
    /// (MQTT 5.0 §3.3.2.3.4). It is a separate constructor so that an empty name can only
    /// exist where someone decided an alias stands in for it; it matches no real topic and
    /// must be resolved through the alias before routing.
    pub const fn empty_for_alias() -> Self {
        TopicName(MqttString::empty())
    }

    /// The topic name.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The underlying string (shares the buffer it was decoded from).
    pub fn as_mqtt_string(&self) -> &MqttString {
        &self.0
    }

    /// Gives back the string, for an encoder or a caller that wants to keep just it.
    /// A copy that shares no read buffer (see [`MqttString::detach`]).
    pub fn detach(&self) -> Self {
        TopicName(self.0.detach())
    }

    pub fn into_inner(self) -> MqttString {
        self.0
    }

    /// True only for [`TopicName::empty_for_alias`].
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Names starting with '$' (e.g. `$SYS/...`) are server-specific and are not matched by
    /// filters that start with a wildcard [MQTT-4.7.2-1].
    pub fn is_system(&self) -> bool {
        self.0.starts_with('$')
    }

    /// The levels, split on '/'. Empty levels are kept: "/a" has levels "" and "a".
    pub fn levels(&self) -> std::str::Split<'_, char> {
        self.as_str().split('/')
    }
}

impl TryFrom<&str> for TopicName {
    type Error = TopicError;
    fn try_from(s: &str) -> Result<Self, TopicError> {
        TopicName::new(MqttString::try_from(s)?)
    }
}

impl FromStr for TopicName {
    type Err = TopicError;
    fn from_str(s: &str) -> Result<Self, TopicError> {
        TopicName::try_from(s)
    }
}

impl AsRef<str> for TopicName {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a client subscribes to: a topic pattern with optional '+' and '#' wildcards,
/// optionally shared by a group of subscribers as `$share/<group>/<filter>`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicFilter {
    /// The whole filter as on the wire, `$share/<group>/` prefix included, so the encoder
    /// and the subscription table can use it without rebuilding it.
    raw: MqttString,
    /// Byte offset of the matched part in `raw`: 0 for an ordinary filter, just past
    /// `$share/<group>/` for a shared one. Derived from `raw`, so deriving `Eq`/`Ord`/`Hash`
    /// over both fields is consistent with comparing `raw` alone.
    filter_start: usize,
}

impl TopicFilter {
    /// Checks the wildcard rules [MQTT-4.7.1-1] [MQTT-4.7.1-2] and non-emptiness
    /// [MQTT-4.7.3-1], and splits off a `$share/<group>/` prefix [MQTT-4.8.2-1]
    /// [MQTT-4.8.2-2]. Something like `$sharex/a` or `$share` is an ordinary filter.
    pub fn new(s: MqttString) -> Result<Self, TopicError> {
        let filter_start = match s.strip_prefix(SHARE_PREFIX) {
            Some(rest) => SHARE_PREFIX.len() + share_name_len(rest)? + 1,
            None => 0,
        };
        validate_filter(&s[filter_start..])?;
        Ok(TopicFilter {
            raw: s,
            filter_start,
        })
    }

    /// The whole filter as on the wire, `$share/<group>/` included.
    pub fn as_str(&self) -> &str {
        self.raw.as_str()
    }

    /// The underlying string (shares the buffer it was decoded from).
    pub fn as_mqtt_string(&self) -> &MqttString {
        &self.raw
    }

    /// A copy that shares no read buffer (see [`MqttString::detach`]).
    pub fn detach(&self) -> Self {
        TopicFilter {
            raw: self.raw.detach(),
            filter_start: self.filter_start,
        }
    }

    /// Gives back the string, `$share/<group>/` included.
    pub fn into_inner(self) -> MqttString {
        self.raw
    }

    /// The share name of a shared subscription: `Some("g")` for `$share/g/a/+`.
    pub fn share_group(&self) -> Option<&str> {
        if self.filter_start == 0 {
            return None;
        }
        // Between "$share/" and the '/' that ends the share name.
        self.raw.get(SHARE_PREFIX.len()..self.filter_start - 1)
    }

    /// The part that is matched against topic names: `a/+` for `$share/g/a/+`, otherwise
    /// the whole filter.
    pub fn filter(&self) -> &str {
        // `filter_start` is always a char boundary (it follows an ASCII '/'), so `get`
        // cannot fail; falling back to the whole string keeps this panic-free regardless.
        self.raw.get(self.filter_start..).unwrap_or(self.as_str())
    }

    /// True for `$share/<group>/<filter>`.
    pub fn is_shared(&self) -> bool {
        self.filter_start != 0
    }

    /// True if the filter contains '+' or '#' (a share name never does).
    pub fn has_wildcards(&self) -> bool {
        has_wildcard(self.filter())
    }

    /// Does this filter match `name`? A `$share/<group>/` prefix plays no part in matching.
    pub fn matches(&self, name: &TopicName) -> bool {
        matches(self.filter(), name.as_str())
    }
}

/// Checks the share name at the start of `rest` (what follows "$share/") and returns its
/// length in bytes. The share name runs up to the next '/', so it cannot contain one.
fn share_name_len(rest: &str) -> Result<usize, TopicError> {
    let (group, filter) = match rest.split_once('/') {
        Some((group, filter)) => (group, Some(filter)),
        None => (rest, None),
    };
    if group.is_empty() {
        return Err(TopicError::EmptyShareName);
    }
    if has_wildcard(group) {
        return Err(TopicError::WildcardInShareName);
    }
    match filter {
        // An empty filter after the separator would otherwise be reported as `Empty`,
        // which hides that the problem is the shared-subscription form.
        Some(f) if !f.is_empty() => Ok(group.len()),
        _ => Err(TopicError::SharedWithoutFilter),
    }
}

/// The wildcard rules for a filter without any `$share` prefix. Works on bytes: '/', '+'
/// and '#' are ASCII and never occur inside a multi-byte UTF-8 sequence.
fn validate_filter(filter: &str) -> Result<(), TopicError> {
    let bytes = filter.as_bytes();
    if bytes.is_empty() {
        return Err(TopicError::Empty);
    }
    for (i, &b) in bytes.iter().enumerate() {
        let starts_level = i == 0 || bytes[i - 1] == LEVEL_SEPARATOR;
        let next = bytes.get(i + 1).copied();
        if b == MULTI_LEVEL_WILDCARD {
            // Alone in its level and the very last character.
            if !starts_level || next.is_some() {
                return Err(TopicError::MisplacedMultiLevelWildcard);
            }
        } else if b == SINGLE_LEVEL_WILDCARD {
            let ends_level = next.is_none_or(|n| n == LEVEL_SEPARATOR);
            if !starts_level || !ends_level {
                return Err(TopicError::MisplacedSingleLevelWildcard);
            }
        }
    }
    Ok(())
}

impl TryFrom<&str> for TopicFilter {
    type Error = TopicError;
    fn try_from(s: &str) -> Result<Self, TopicError> {
        TopicFilter::new(MqttString::try_from(s)?)
    }
}

impl FromStr for TopicFilter {
    type Err = TopicError;
    fn from_str(s: &str) -> Result<Self, TopicError> {
        TopicFilter::try_from(s)
    }
}

impl AsRef<str> for TopicFilter {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Does `filter` (already validated, without any `$share` prefix) match `name`?
///
/// Walks both strings level by level with no allocation. On an unvalidated filter it still
/// returns without panicking, but the answer is unspecified.
///
/// ```
/// use fieldgate::mqtt::topic::matches;
///
/// assert!(matches("plant/+/temperature", "plant/pump-3/temperature"));
/// assert!(matches("plant/#", "plant"));
/// assert!(!matches("#", "$SYS/broker/uptime"));
/// ```
pub fn matches(filter: &str, name: &str) -> bool {
    // [MQTT-4.7.2-1]: a wildcard in the first level must not reach server-specific
    // `$...` topics; a client that wants them names the first level explicitly.
    if name.starts_with('$') && filter.as_bytes().first().copied().is_some_and(is_wildcard) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut name_levels = name.split('/');
    loop {
        match (filter_levels.next(), name_levels.next()) {
            // '#' matches whatever is left, including nothing: "a/#" matches "a" [§4.7.1.2].
            (Some("#"), _) => return true,
            // '+' matches exactly one level, which may be empty.
            (Some("+"), Some(_)) => {}
            (Some(f), Some(n)) if f == n => {}
            // Both ran out together: every level matched.
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;

    fn name(s: &str) -> TopicName {
        TopicName::try_from(s).unwrap()
    }

    fn filter(s: &str) -> TopicFilter {
        TopicFilter::try_from(s).unwrap()
    }

    fn filter_err(s: &str) -> TopicError {
        TopicFilter::try_from(s).unwrap_err()
    }

    fn name_err(s: &str) -> TopicError {
        TopicName::try_from(s).unwrap_err()
    }

    // ---- Topic names --------------------------------------------------------------------

    #[test]
    fn a_topic_name_must_not_be_empty() {
        assert_eq!(name_err(""), TopicError::Empty);
        assert_eq!(
            TopicName::new(MqttString::empty()).unwrap_err(),
            TopicError::Empty
        );
    }

    #[test]
    fn the_only_empty_topic_name_is_the_one_for_a_topic_alias() {
        let alias = TopicName::empty_for_alias();
        assert!(alias.is_empty());
        assert_eq!(alias.as_str(), "");
        assert!(!name("a").is_empty());
    }

    #[test]
    fn a_topic_name_must_not_contain_wildcards() {
        for s in ["+", "#", "a/+", "a/#", "sport+", "a#b", "+/a", "$SYS/#"] {
            assert_eq!(name_err(s), TopicError::WildcardInTopicName, "{s:?}");
        }
    }

    #[test]
    fn a_topic_name_may_have_empty_levels() {
        for s in ["a//b", "/a", "a/", "/", "//"] {
            assert_eq!(name(s).as_str(), s);
        }
    }

    #[test]
    fn a_topic_name_starting_with_a_dollar_is_a_system_topic() {
        assert!(name("$SYS/broker/uptime").is_system());
        assert!(!name("a/$SYS").is_system());
        assert!(!TopicName::empty_for_alias().is_system());
    }

    #[test]
    fn a_topic_name_splits_into_levels_keeping_empty_ones() {
        let n = name("/a//b/");
        let levels: Vec<&str> = n.levels().collect();
        assert_eq!(levels, ["", "a", "", "b", ""]);
    }

    #[test]
    fn a_topic_name_built_from_bytes_shares_the_buffer() {
        let buf = Bytes::from_static(b"sensors/temp");
        let n = TopicName::new(MqttString::from_bytes(buf.clone()).unwrap()).unwrap();
        assert_eq!(n.as_mqtt_string().as_bytes().as_ptr(), buf.as_ptr());
        assert_eq!(n.into_inner().as_bytes().as_ptr(), buf.as_ptr());
    }

    #[test]
    fn a_topic_name_prints_as_its_string() {
        let n = name("a/b");
        assert_eq!(n.to_string(), "a/b");
        assert_eq!(format!("{n:?}"), "\"a/b\"");
        assert_eq!("a/b".parse::<TopicName>().unwrap(), n);
    }

    #[test]
    fn an_invalid_mqtt_string_is_reported_as_a_string_error() {
        assert_eq!(
            name_err("a\0b"),
            TopicError::String(StringError::NullCharacter)
        );
        assert_eq!(
            filter_err("a\0b"),
            TopicError::String(StringError::NullCharacter)
        );
    }

    // ---- Filter validation --------------------------------------------------------------

    #[test]
    fn a_topic_filter_must_not_be_empty() {
        assert_eq!(filter_err(""), TopicError::Empty);
    }

    #[test]
    fn a_topic_filter_may_have_empty_levels() {
        for s in ["a//b", "/a", "a/", "/", "/+", "+/", "//#"] {
            assert_eq!(filter(s).as_str(), s);
        }
    }

    #[test]
    fn a_hash_alone_or_as_the_last_level_is_valid() {
        for s in ["#", "sport/#", "sport/tennis/player1/#", "/#", "+/#"] {
            assert!(TopicFilter::try_from(s).is_ok(), "{s:?}");
        }
    }

    #[test]
    fn a_hash_that_shares_its_level_or_is_not_last_is_rejected() {
        for s in ["sport/tennis#", "sport/#/ranking", "#/", "##", "a/#b", "#+"] {
            assert_eq!(
                filter_err(s),
                TopicError::MisplacedMultiLevelWildcard,
                "{s:?}"
            );
        }
    }

    #[test]
    fn a_plus_occupying_a_whole_level_is_valid() {
        for s in [
            "+",
            "+/tennis/#",
            "sport/+/player1",
            "+/+",
            "/+",
            "+/",
            "+//+",
        ] {
            assert!(TopicFilter::try_from(s).is_ok(), "{s:?}");
        }
    }

    #[test]
    fn a_plus_that_shares_its_level_is_rejected() {
        for s in ["sport+", "+sport", "a/b+/c", "++", "a/+b"] {
            assert_eq!(
                filter_err(s),
                TopicError::MisplacedSingleLevelWildcard,
                "{s:?}"
            );
        }
    }

    #[test]
    fn every_error_message_names_the_spec_rule() {
        let errors = [
            TopicError::Empty,
            TopicError::WildcardInTopicName,
            TopicError::MisplacedMultiLevelWildcard,
            TopicError::MisplacedSingleLevelWildcard,
            TopicError::EmptyShareName,
            TopicError::WildcardInShareName,
            TopicError::SharedWithoutFilter,
            TopicError::String(StringError::NullCharacter),
        ];
        for e in errors {
            assert!(e.to_string().starts_with("[MQTT-"), "{e}");
        }
        assert_eq!(
            TopicError::MisplacedMultiLevelWildcard.to_string(),
            "[MQTT-4.7.1-1] '#' must occupy a whole level and be the last character of a topic filter"
        );
    }

    #[test]
    fn a_topic_filter_prints_as_its_whole_string() {
        let f = filter("$share/g/a/+");
        assert_eq!(f.to_string(), "$share/g/a/+");
        assert_eq!(format!("{f:?}"), "\"$share/g/a/+\"");
        assert_eq!("$share/g/a/+".parse::<TopicFilter>().unwrap(), f);
    }

    #[test]
    fn a_topic_filter_knows_whether_it_has_wildcards() {
        assert!(filter("a/+").has_wildcards());
        assert!(filter("#").has_wildcards());
        assert!(!filter("a/b").has_wildcards());
        assert!(!filter("$share/g/a/b").has_wildcards());
        assert!(filter("$share/g/a/#").has_wildcards());
    }

    // ---- Shared subscriptions -----------------------------------------------------------

    #[test]
    fn a_shared_subscription_splits_into_group_and_filter() {
        let f = filter("$share/g/a/+");
        assert!(f.is_shared());
        assert_eq!(f.share_group(), Some("g"));
        assert_eq!(f.filter(), "a/+");
        assert_eq!(f.as_str(), "$share/g/a/+");
        assert_eq!(f.as_mqtt_string(), "$share/g/a/+");
        assert_eq!(f.into_inner(), "$share/g/a/+");
    }

    #[test]
    fn an_ordinary_filter_has_no_share_group_and_matches_as_a_whole() {
        let f = filter("a/+");
        assert!(!f.is_shared());
        assert_eq!(f.share_group(), None);
        assert_eq!(f.filter(), "a/+");
    }

    #[test]
    fn a_shared_subscription_without_a_filter_is_rejected() {
        assert_eq!(filter_err("$share/g"), TopicError::SharedWithoutFilter);
        assert_eq!(filter_err("$share/g/"), TopicError::SharedWithoutFilter);
    }

    #[test]
    fn a_shared_subscription_with_an_empty_share_name_is_rejected() {
        assert_eq!(filter_err("$share//a"), TopicError::EmptyShareName);
        assert_eq!(filter_err("$share/"), TopicError::EmptyShareName);
    }

    #[test]
    fn a_share_name_with_a_wildcard_is_rejected() {
        assert_eq!(filter_err("$share/g+/a"), TopicError::WildcardInShareName);
        assert_eq!(filter_err("$share/#/a"), TopicError::WildcardInShareName);
        assert_eq!(filter_err("$share/+"), TopicError::WildcardInShareName);
    }

    #[test]
    fn the_filter_of_a_shared_subscription_obeys_the_wildcard_rules() {
        assert_eq!(
            filter_err("$share/g/a#"),
            TopicError::MisplacedMultiLevelWildcard
        );
        assert_eq!(
            filter_err("$share/g/a+"),
            TopicError::MisplacedSingleLevelWildcard
        );
    }

    #[test]
    fn a_filter_that_only_looks_like_a_share_prefix_is_ordinary() {
        for s in ["$sharex/a", "$share", "$SHARE/g/a", "a/$share/g/b"] {
            let f = filter(s);
            assert!(!f.is_shared(), "{s:?}");
            assert_eq!(f.filter(), s);
        }
        assert!(filter("$sharex/a").matches(&name("$sharex/a")));
    }

    #[test]
    fn a_shared_subscription_matches_by_its_filter_alone() {
        let f = filter("$share/g/a/+");
        assert!(f.matches(&name("a/b")));
        assert!(!f.matches(&name("$share/g/a/b")));
        let all = filter("$share/g/#");
        assert!(all.matches(&name("x/y")));
        // The filter part starts with '#', so [MQTT-4.7.2-1] still applies.
        assert!(!all.matches(&name("$SYS/x")));
    }

    // ---- Matching -----------------------------------------------------------------------

    #[test]
    fn a_hash_matches_the_parent_level() {
        assert!(matches("sport/#", "sport"));
        assert!(matches("sport/tennis/player1/#", "sport/tennis/player1"));
    }

    #[test]
    fn a_hash_matches_any_number_of_levels_below() {
        for n in [
            "sport/tennis/player1",
            "sport/tennis/player1/ranking",
            "sport/tennis/player1/score/wimbledon",
        ] {
            assert!(matches("sport/tennis/player1/#", n), "{n:?}");
        }
        assert!(matches("#", "a/b/c"));
        assert!(matches("sport/#", "sport/"));
        assert!(!matches("sport/#", "sports"));
        assert!(!matches("sport/tennis/#", "sport"));
    }

    #[test]
    fn a_plus_matches_exactly_one_level() {
        assert!(matches("sport/tennis/+", "sport/tennis/player1"));
        assert!(matches("sport/tennis/+", "sport/tennis/player2"));
        assert!(!matches("sport/tennis/+", "sport/tennis/player1/ranking"));
        assert!(!matches("sport/+", "sport"));
        assert!(matches("sport/+/player1", "sport/tennis/player1"));
    }

    #[test]
    fn a_plus_matches_an_empty_level() {
        assert!(matches("sport/+", "sport/"));
        assert!(matches("+/+", "/finance"));
        assert!(matches("/+", "/finance"));
        assert!(!matches("+", "/finance"));
        assert!(matches("a/+/b", "a//b"));
    }

    #[test]
    fn empty_levels_are_matched_literally() {
        assert!(matches("a//b", "a//b"));
        assert!(!matches("a//b", "a/b"));
        assert!(matches("/a", "/a"));
        assert!(!matches("/a", "a"));
        assert!(matches("a/", "a/"));
        assert!(!matches("a/", "a"));
    }

    #[test]
    fn a_leading_wildcard_does_not_match_a_dollar_topic() {
        assert!(!matches("#", "$SYS/x"));
        assert!(!matches("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(!matches("+", "$SYS"));
        assert!(!filter("#").matches(&name("$SYS/x")));
    }

    #[test]
    fn a_filter_naming_the_dollar_level_matches_a_dollar_topic() {
        assert!(matches("$SYS/#", "$SYS/x"));
        assert!(matches("$SYS/monitor/+", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/#", "$SYS"));
        assert!(filter("$SYS/#").matches(&name("$SYS/x")));
    }

    #[test]
    fn a_dollar_below_the_first_level_is_ordinary() {
        assert!(matches("#", "a/$SYS"));
        assert!(matches("+/+", "a/$SYS"));
    }

    #[test]
    fn matching_is_case_sensitive() {
        assert!(!matches("ACCOUNTS", "Accounts"));
        assert!(!matches("sport/#", "Sport/tennis"));
        assert!(matches("Accounts", "Accounts"));
    }

    #[test]
    fn a_filter_without_wildcards_matches_only_the_same_name() {
        assert!(matches("a/b", "a/b"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(!matches("a/b/c", "a/b"));
        assert!(!matches("a/b", "a/c"));
    }

    #[test]
    fn an_unvalidated_filter_does_not_panic_the_matcher() {
        // Not a contract on the answer, only that the hot path cannot bring the broker down.
        for f in ["", "a#", "+a/#/b", "##", "$", "/"] {
            for n in ["", "a", "$SYS/a", "/"] {
                let _ = matches(f, n);
            }
        }
    }

    // ---- Properties against a naive model -----------------------------------------------

    /// The reference matcher: the spec's wording turned into code as plainly as possible,
    /// collecting levels into Vecs and comparing them by index. It is written differently
    /// from `matches` on purpose (no level-by-level iterator walk), so that a shared
    /// mistake is less likely.
    fn model_matches(filter: &str, name: &str) -> bool {
        let f: Vec<&str> = filter.split('/').collect();
        let n: Vec<&str> = name.split('/').collect();
        if name.starts_with('$') && (f[0] == "+" || f[0] == "#") {
            return false;
        }
        let level_matches = |fl: &str, nl: &str| fl == "+" || fl == nl;
        if f.last() == Some(&"#") {
            // "#" stands for zero or more trailing levels, so the name needs at least
            // the levels before it.
            let prefix = &f[..f.len() - 1];
            n.len() >= prefix.len() && prefix.iter().zip(&n).all(|(a, b)| level_matches(a, b))
        } else {
            f.len() == n.len() && f.iter().zip(&n).all(|(a, b)| level_matches(a, b))
        }
    }

    /// The validity rules for a filter without a share prefix, stated per level.
    fn model_filter_is_valid(filter: &str) -> bool {
        if filter.is_empty() {
            return false;
        }
        let levels: Vec<&str> = filter.split('/').collect();
        levels.iter().enumerate().all(|(i, l)| {
            if *l == "#" {
                i == levels.len() - 1
            } else {
                *l == "+" || !l.contains(['+', '#'])
            }
        })
    }

    /// The validity rules including the `$share/<group>/<filter>` form.
    fn model_shared_filter_is_valid(s: &str) -> bool {
        match s.strip_prefix("$share/") {
            Some(rest) => match rest.split_once('/') {
                Some((group, f)) => {
                    !group.is_empty() && !group.contains(['+', '#']) && model_filter_is_valid(f)
                }
                None => false,
            },
            None => model_filter_is_valid(s),
        }
    }

    /// Valid filters over a small alphabet, so that they often match the generated names.
    fn valid_filter() -> impl Strategy<Value = String> {
        let level = prop::sample::select(vec!["", "a", "b", "$SYS", "+"]);
        (prop::collection::vec(level, 0..5), any::<bool>()).prop_map(|(mut levels, hash)| {
            if hash || levels.is_empty() {
                levels.push("#");
            }
            let f = levels.join("/");
            // A single empty level would be the empty filter, which is invalid.
            if f.is_empty() { "#".to_owned() } else { f }
        })
    }

    /// Names over the same alphabet, often starting with '$'; may be "" (one empty level).
    fn name_string() -> impl Strategy<Value = String> {
        let level = prop::sample::select(vec!["", "a", "b", "$SYS", "A"]);
        prop::collection::vec(level, 1..5).prop_map(|levels| levels.join("/"))
    }

    fn to_name(s: &str) -> TopicName {
        if s.is_empty() {
            TopicName::empty_for_alias()
        } else {
            TopicName::try_from(s).unwrap()
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn the_matcher_agrees_with_the_naive_model(f in valid_filter(), n in name_string()) {
            prop_assert_eq!(matches(&f, &n), model_matches(&f, &n), "filter {:?} name {:?}", f, n);
            let topic_filter = TopicFilter::try_from(f.as_str()).unwrap();
            prop_assert_eq!(topic_filter.matches(&to_name(&n)), model_matches(&f, &n));
        }

        #[test]
        fn a_shared_filter_matches_like_its_unshared_part(
            group in "[a-z$A-Z0-9]{1,4}",
            f in valid_filter(),
            n in name_string(),
        ) {
            let shared = TopicFilter::try_from(format!("$share/{group}/{f}").as_str()).unwrap();
            prop_assert_eq!(shared.matches(&to_name(&n)), model_matches(&f, &n));
        }

        #[test]
        fn every_valid_filter_round_trips(f in valid_filter(), group in "[a-z$A-Z0-9]{1,4}") {
            let plain = TopicFilter::try_from(f.as_str());
            prop_assert!(plain.is_ok(), "{:?} rejected: {:?}", f, plain);
            let plain = plain.unwrap();
            prop_assert_eq!(plain.as_str(), f.as_str());
            prop_assert_eq!(plain.filter(), f.as_str());
            prop_assert!(!plain.is_shared());

            let wire = format!("$share/{group}/{f}");
            let shared = TopicFilter::try_from(wire.as_str());
            prop_assert!(shared.is_ok(), "{:?} rejected: {:?}", wire, shared);
            let shared = shared.unwrap();
            prop_assert_eq!(shared.as_str(), wire.as_str());
            prop_assert_eq!(shared.share_group(), Some(group.as_str()));
            prop_assert_eq!(shared.filter(), f.as_str());
            let inner = shared.into_inner();
            prop_assert_eq!(inner.as_str(), wire.as_str());
        }

        #[test]
        fn a_string_with_a_wildcard_is_never_a_topic_name(
            before in "[^\u{0}]{0,8}",
            wildcard in prop::sample::select(vec!['+', '#']),
            after in "[^\u{0}]{0,8}",
        ) {
            let s = format!("{before}{wildcard}{after}");
            prop_assert_eq!(TopicName::try_from(s.as_str()), Err(TopicError::WildcardInTopicName));
        }

        #[test]
        fn a_topic_name_is_accepted_exactly_when_non_empty_and_wildcard_free(
            s in "[ab/$+#\u{e9}]{0,10}",
        ) {
            let expected = !s.is_empty() && !s.contains(['+', '#']);
            match TopicName::try_from(s.as_str()) {
                Ok(n) => {
                    prop_assert!(expected, "{:?} accepted", s);
                    prop_assert_eq!(n.as_str(), s.as_str());
                }
                Err(e) => prop_assert!(!expected, "{:?} rejected: {}", s, e),
            }
        }

        #[test]
        fn a_filter_is_accepted_exactly_when_the_rules_allow_it(
            s in "(\\$share/)?[ab/$+#\u{e9}]{0,10}",
        ) {
            let expected = model_shared_filter_is_valid(&s);
            match TopicFilter::try_from(s.as_str()) {
                Ok(f) => {
                    prop_assert!(expected, "{:?} accepted", s);
                    prop_assert_eq!(f.as_str(), s.as_str());
                }
                Err(e) => prop_assert!(!expected, "{:?} rejected: {}", s, e),
            }
        }
    }
}
