//! Telemetry payloads: `{"value": 21.5, "unit": "°C", "ts": "2026-11-22T08:00:00.123Z",
//! "quality": "good"}` on `<prefix>/<device>/<point>`.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::devices::{Quality, Value};

/// The JSON payload of one reading taken at `at`.
pub fn payload(value: Value, unit: Option<&str>, quality: Quality, at: SystemTime) -> String {
    let mut object = serde_json::Map::new();
    object.insert("value".into(), value.to_json());
    if let Some(unit) = unit {
        object.insert("unit".into(), unit.into());
    }
    object.insert("ts".into(), rfc3339(at).into());
    object.insert("quality".into(), quality.as_str().into());
    serde_json::Value::Object(object).to_string()
}

/// `2026-11-22T08:00:00.123Z` (UTC, milliseconds).
pub fn rfc3339(at: SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        since.subsec_millis()
    )
}

/// Reads `2026-11-22T08:00:00Z` or with fractional seconds (`.123Z`), UTC only (`Z` or
/// `+00:00`): the form [`rfc3339`] writes and commands may carry in `ts`.
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let text = text
        .strip_suffix('Z')
        .or_else(|| text.strip_suffix("+00:00"))?;
    let (date, time) = text.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, fraction) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<u64>().ok());
    let (h, m, s) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    let days = days_from_civil(year, month as u32, day as u32);
    let secs = u64::try_from(days).ok()? * 86_400 + h * 3600 + m * 60 + s;
    // Milliseconds: the first three digits of the fraction, however many there are.
    let millis = if fraction.is_empty() {
        0
    } else {
        let digits: String = fraction.chars().take(3).collect();
        let value: u64 = digits.parse().ok()?;
        value * 10u64.pow(3 - digits.len() as u32)
    };
    Some(UNIX_EPOCH + std::time::Duration::from_millis(secs * 1000 + millis))
}

/// The inverse of [`civil_from_days`] (same public-domain arithmetic).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day), after Howard
/// Hinnant's well-known algorithm (the arithmetic is public-domain mathematics).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_utc_with_milliseconds() {
        let at = UNIX_EPOCH + Duration::from_millis(1_795_334_400_123);
        assert_eq!(rfc3339(at), "2026-11-22T08:00:00.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // A leap day.
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn timestamps_read_back_to_the_same_instant() {
        for millis in [0u64, 951_782_400_000, 1_795_334_400_123, 4_102_444_799_999] {
            let at = UNIX_EPOCH + Duration::from_millis(millis);
            assert_eq!(parse_rfc3339(&rfc3339(at)), Some(at), "{}", rfc3339(at));
        }
        assert!(parse_rfc3339("2026-11-22T08:00:00+00:00").is_some());
        assert_eq!(parse_rfc3339("2026-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(parse_rfc3339("2026-11-22T08:00:00+02:00"), None, "UTC only");
    }

    #[test]
    fn a_payload_has_value_unit_timestamp_and_quality() {
        let at = UNIX_EPOCH + Duration::from_millis(1_795_334_400_123);
        let p = payload(Value::Number(21.5), Some("°C"), Quality::Good, at);
        let v: serde_json::Value = serde_json::from_str(&p).unwrap();
        assert_eq!(v["value"], 21.5);
        assert_eq!(v["unit"], "°C");
        assert_eq!(v["ts"], "2026-11-22T08:00:00.123Z");
        assert_eq!(v["quality"], "good");
    }
}
